# Call 3 (session q), issue 17's owed run in exact mode alone (session p's call 3 without padfree, to fit the device
# time left after issue 15's two calls): Turbo 1024² img2img at strength 0.6 against stock diffusers, full size,
# random weights. Prediction in bench/NOTES.md, session p ("Issue 17's owed run").
source bench/runs/prefix.sh
timeout ${CAP:-220} python bench/img2img_benchmark.py --cases turbo1024 --strength 0.6 --mode exact --out $OUT \
  > $OUT/img2img-exact.log 2>&1
echo "== exact rc $?"; grep -c "capture failed\|recompile_limit" $OUT/img2img-exact.log
ls $OUT; tail -5 $OUT/img2img-exact.log
