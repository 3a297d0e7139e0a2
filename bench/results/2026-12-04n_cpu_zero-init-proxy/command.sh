# Session n's CPU proxy of --zero-init (2 cores; ~15 minutes per run): the committed VAE imported into a base work
# folder, then the same from-scratch Raw round with the default init and with adaLN-Zero.
cd "$(dirname "$0")/../../.."
python=${PYTHON:-.venv/bin/python}
rm -rf /tmp/pbase && $python -m demo.train --work /tmp/pbase --stages import --out demo/checkpoints --device cpu
for v in default zero; do
  rm -rf /tmp/p$v; mkdir -p /tmp/p$v; cp /tmp/pbase/vae.* /tmp/p$v/
  flag=""; [ $v = zero ] && flag="--zero-init"
  $python -m demo.train --work /tmp/p$v --stages raw --device cpu --pool 128=2048 --size-mix 128=1.0 \
    --batch raw=16 --steps raw=500 --probe-every 250 --structure-loss 0.05 \
    --mix single=0.6,count=0.2,relation=0.2 $flag > /tmp/p$v.log 2>&1
done
