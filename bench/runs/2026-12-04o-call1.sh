# Call 1 (session o), issue 15: session n's recipe A (adaLN-Zero, peak learning rate 2e-3, singles-heavy, 256² only,
# batch 512, 2,000 steps, probes every 500, the committed VAE) with the new shape-map objective at two weights, side
# by side on one H200 (two processes at once; step rates shared, not compared). The control is session n's call 1 A,
# the same command without --shape-map-loss (its kinds stayed at chance: probes 0 / 0 / 0 / 1.6 %).
# bench/NOTES.md, session o, has the prediction.
source bench/runs/prefix.sh
base=artifacts/o-base
rm -rf artifacts/o-*
python -m demo.train --work $base --stages import --out demo/checkpoints > $OUT/import.log 2>&1 || exit 1
common="--stages raw --transformer 192x6 --batch raw=512 --raw-lr 2e-3 --zero-init --structure-loss 0.05
  --mix single=0.6,count=0.2,relation=0.2 --pool 49152,0 --probe-every 500 --steps raw=2000 --minutes raw=8"
for name in S1 S5; do
  mkdir -p artifacts/o-$name && cp $base/vae.* artifacts/o-$name/
done
timeout 540 python -m demo.train --work artifacts/o-S1 $common --shape-map-loss 0.1 > $OUT/S1.log 2>&1 &
timeout 540 python -m demo.train --work artifacts/o-S5 $common --shape-map-loss 0.5 > $OUT/S5.log 2>&1 &
wait
for name in S1 S5; do
  cp artifacts/o-$name/report.json $OUT/$name-report.json 2>/dev/null
  echo "== $name"; grep "probe\|raw: \|steps fit\|stopped\|Error" $OUT/$name.log | cut -c1-330 | tail -8
done
