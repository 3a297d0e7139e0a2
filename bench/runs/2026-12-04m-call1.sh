# Calls 1 and 2 (session m), issue 15: the one script from nothing, part 1 (demo/reproduce.sh 1: the VAE, Raw round 0
# at 256² with the caption-structure objective). Run twice: first with the script's VAE at --minutes vae=2.0 (and
# raw=6.7), then with --steps vae=2000 --minutes vae=3.6,raw=5.6 as committed. Part 2 was not run (bench/NOTES.md,
# session m, says why). The work folder would stay on the warm machine for part 2; its Raw, text encoder, VAE and
# tokenizer also come back in $OUT (fp32, ~25 MB) in case the machine goes cold in between.
source bench/runs/prefix.sh
export WORK=artifacts/demo-reproduce EXPORT=artifacts/demo-reproduced
rm -rf "$WORK" "$EXPORT"
bash demo/reproduce.sh 1 > $OUT/part1.log 2>&1
echo "part 1 rc=$?"
cp -r "$WORK" "$OUT/work-part1"
grep -v "it/s\]\|s/it\]" $OUT/part1.log | grep "probe\|vae:\|raw:\|raw structure\|steps fit\|stopped\|Error\|error\|part 1" | cut -c1-400 | tail -16
