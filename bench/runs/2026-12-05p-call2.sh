# Call 2 (session p), issue 15: call 1's better arm (session n's recipe A + --shape-map-loss 0.5) alone on the GPU for
# 7 minutes (~3,000-4,000 steps: ~7 steps/s beside another run in call 1, ~10 alone without the objective), probes
# every 1,000: do the shape kinds keep rising past step 2,000, and does the held-out accuracy follow them?
# bench/NOTES.md, session p, has the prediction.
source bench/runs/prefix.sh
base=artifacts/p-base
rm -rf artifacts/p-*
python -m demo.train --work $base --stages import --out demo/checkpoints > $OUT/import.log 2>&1 || exit 1
mkdir -p artifacts/p-S5 && cp $base/vae.* artifacts/p-S5/
timeout 560 python -m demo.train --work artifacts/p-S5 --stages raw --transformer 192x6 --batch raw=512 --raw-lr 2e-3 \
  --zero-init --structure-loss 0.05 --mix single=0.6,count=0.2,relation=0.2 --pool 49152,0 --probe-every 1000 \
  --steps raw=6000 --minutes raw=7 --shape-map-loss 0.5 > $OUT/S5.log 2>&1
cp artifacts/p-S5/report.json $OUT/S5-report.json 2>/dev/null
echo "== S5"; grep "probe\|steps fit\|stopped\|Error" $OUT/S5.log | cut -c1-330 | tail -10
