# Call 3 (session p), issue 17's owed run (bench/NOTES.md "Next device session" item 3): Turbo 1024² img2img at
# strength 0.6 against stock diffusers, full size, random weights, in exact mode (compiled, warm-ups no longer racing)
# and then padfree (the denoiser graphs without compile). Prediction in bench/NOTES.md, session p.
source bench/runs/prefix.sh
for pair in exact:240 padfree:160; do  # each mode's time cap, within the session's device time left
  mode=${pair%%:*}
  timeout ${pair##*:} python bench/img2img_benchmark.py --cases turbo1024 --strength 0.6 --mode $mode --out $OUT \
    > $OUT/img2img-$mode.log 2>&1
  echo "== $mode rc $?"; grep -c "capture failed\|recompile_limit" $OUT/img2img-$mode.log
done
ls $OUT
