# Call 2 (session q), issue 15: call 1's W5 (256 wide, 8 blocks, --shape-map-loss 0.5) drew the background the caption
# names for 4-10 % of held-out singles (chance: the sheets show a random colour, and checks for plain prompts), while
# the subject's colour, which the caption-structure objective reads, came out right for 94-100 %. Two arms side by
# side, ~8 minutes each: B, W5 with the structure objective now reading the background's colour and texture too (this
# commit's default); C, B plus --colour-map-loss 0.5 (each image token's palette colour, so a background token's from
# the caption's background words). The control is call 1's W5. bench/NOTES.md, session q, has the prediction.
# At most 8 files come back: each arm's report, log and two probe sheets.
source bench/runs/prefix.sh
base=artifacts/q-base
rm -rf artifacts/q-*
python -m demo.train --work $base --stages import --out demo/checkpoints > /tmp/import.log 2>&1 || { tail /tmp/import.log; exit 1; }
common="--stages raw --transformer 256x8 --batch raw=512 --raw-lr 2e-3 --zero-init --structure-loss 0.05
  --shape-map-loss 0.5 --mix single=0.6,count=0.2,relation=0.2 --pool 49152,0 --probe-every 1000 --steps raw=20000
  --minutes raw=8"
for name in B C; do
  mkdir -p artifacts/q-$name && cp $base/vae.* artifacts/q-$name/
done
left=$((575 - SECONDS))
timeout $left python -m demo.train --work artifacts/q-B $common > $OUT/B.log 2>&1 &
timeout $left python -m demo.train --work artifacts/q-C $common --colour-map-loss 0.5 > $OUT/C.log 2>&1 &
wait
for name in B C; do
  cp artifacts/q-$name/report.json $OUT/$name-report.json 2>/dev/null
  for sheet in $(ls artifacts/q-$name/probes/raw-*.png | sort -V | tail -2); do cp $sheet $OUT/$name-$(basename $sheet); done
  echo "== $name"; grep "probe\|raw: \|steps fit\|stopped\|Error" $OUT/$name.log | cut -c1-420 | tail -8
done
