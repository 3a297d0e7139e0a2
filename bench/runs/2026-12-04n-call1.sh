# Call 1 (session n), issue 15: two Raw round-0 recipes from nothing, side by side on one H200 (two processes at
# once: the compile and the pool are CPU work, so they overlap; the step rates are shared and not compared here).
# Both read the committed VAE (imported), so neither pays for a VAE; judged by the probes at steps 500-2,000 against
# session m's 0 / 3.1 % at steps 1,000 / 2,000 (its own 2,000-step VAE). bench/NOTES.md, session n, has the
# prediction. A: adaLN-Zero init, peak learning rate 2e-3, a singles-heavy mix, 256² only; B: the same with 70 % of
# the steps on 128² pictures (four times the pictures per step at the same image tokens).
source bench/runs/prefix.sh
base=artifacts/n-base
rm -rf artifacts/n-*
python -m demo.train --work $base --stages import --out demo/checkpoints > $OUT/import.log 2>&1 || exit 1
common="--stages raw --transformer 192x6 --batch raw=512 --raw-lr 2e-3 --zero-init --structure-loss 0.05
  --mix single=0.6,count=0.2,relation=0.2 --probe-every 500 --steps raw=2000 --minutes raw=8"
for name in A B; do
  mkdir -p artifacts/n-$name && cp $base/vae.* artifacts/n-$name/
done
timeout 530 python -m demo.train --work artifacts/n-A $common --pool 49152,0 > $OUT/A.log 2>&1 &
timeout 530 python -m demo.train --work artifacts/n-B $common --pool 128=98304,256=24576 \
  --size-mix 128=0.7,256=0.3 > $OUT/B.log 2>&1 &
wait
for name in A B; do
  cp artifacts/n-$name/report.json $OUT/$name-report.json 2>/dev/null
  echo "== $name"; grep "probe\|raw: \|steps fit\|stopped\|Error" $OUT/$name.log | cut -c1-330 | tail -8
done
