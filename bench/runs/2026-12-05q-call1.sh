# Call 1 (session q), issue 15: session p's better arm (session n's recipe A + --shape-map-loss 0.5, 192 wide, 6
# blocks) against the same recipe on a wider, deeper transformer (256 wide, 8 blocks), side by side on one H200 for
# ~8 minutes each, probes every 1,000 steps with their pictures (work/probes/raw-N.png, now kept): does the kind keep
# rising past step 2,000, does width buy more per minute, and what makes singles wrong when their colour and kind are
# right (session p: colour 90 %, kind 46 %, correct 6 %)? bench/NOTES.md, session q, has the prediction.
source bench/runs/prefix.sh
base=artifacts/q-base
rm -rf artifacts/q-*
python -m demo.train --work $base --stages import --out demo/checkpoints > $OUT/import.log 2>&1 || exit 1
common="--stages raw --batch raw=512 --raw-lr 2e-3 --zero-init --structure-loss 0.05 --shape-map-loss 0.5
  --mix single=0.6,count=0.2,relation=0.2 --pool 49152,0 --probe-every 1000 --steps raw=20000 --minutes raw=8"
for name in S5 W5; do
  mkdir -p artifacts/q-$name && cp $base/vae.* artifacts/q-$name/
done
left=$((575 - SECONDS))
timeout $left python -m demo.train --work artifacts/q-S5 $common --transformer 192x6 > $OUT/S5.log 2>&1 &
timeout $left python -m demo.train --work artifacts/q-W5 $common --transformer 256x8 > $OUT/W5.log 2>&1 &
wait
for name in S5 W5; do
  cp artifacts/q-$name/report.json $OUT/$name-report.json 2>/dev/null
  mkdir -p $OUT/$name-probes && cp artifacts/q-$name/probes/*.png $OUT/$name-probes/ 2>/dev/null
  echo "== $name"; grep "probe\|raw: \|steps fit\|stopped\|Error" $OUT/$name.log | cut -c1-400 | tail -8
done
