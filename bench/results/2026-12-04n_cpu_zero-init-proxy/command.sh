cd /work/main
for v in default zero; do
  rm -rf /tmp/p$v; mkdir -p /tmp/p$v; cp /tmp/pbase/vae.* /tmp/p$v/
  flag=""; [ $v = zero ] && flag="--zero-init"
  /usr/bin/time -v .venv/bin/python -m demo.train --work /tmp/p$v --stages raw --device cpu --pool 128=2048 --size-mix 128=1.0 \
    --batch raw=16 --steps raw=500 --probe-every 250 --structure-loss 0.05 --mix single=0.6,count=0.2,relation=0.2 $flag > /tmp/p$v.log 2>&1
done
