# Call 1 (session i), issue 19's start-up with the compilation beside requests, as session h's call 1, now
# logging each compile-stage shape's seconds and new graphs, and dynamo's time per phase:
# `python app.py`'s path on full-size random weights, unconstrained H200. A cold start, then a restart on the caches
# it left (the data folder's torch artifacts and inductor/Triton folders, as the app keeps them), in one call so
# that the restart cannot lose the machine in between.
source bench/runs/prefix.sh
unset TORCHINDUCTOR_CACHE_DIR TRITON_CACHE_DIR  # the app's own: <data>/compile-cache/{inductor,triton}
timeout 370 python3 bench/startup_time.py --random-weights --data-dir artifacts/start --cold --out $OUT > $OUT/startup-cold.log 2>&1
echo "startup cold rc=$?"
grep -h "startup\|arm-up\|beside\|skipped\|Error" $OUT/startup-cold.log | grep -v "during the warm-up" | cut -c1-200 | tail -30
timeout $((585 - SECONDS)) python3 bench/startup_time.py --random-weights --data-dir artifacts/start --out $OUT > $OUT/startup-warm.log 2>&1
echo "startup warm rc=$?"
grep -h "startup\|arm-up\|beside\|skipped\|Error\|cache" $OUT/startup-warm.log | grep -v "during the warm-up" | cut -c1-200 | tail -30
