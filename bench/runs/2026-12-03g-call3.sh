# Call 3 (session g), on call 2's warm machine and inductor cache: Raw 1024² at 52 steps with no cap (the 24 GB
# target's yardstick), then the app's start-up on that cache (a restart: inductor's and Triton's caches filled, no
# mega-cache file yet).
source bench/runs/prefix.sh
export TORCHINDUCTOR_CACHE_DIR=$PWD/artifacts/start/compile-cache/inductor TRITON_CACHE_DIR=$PWD/artifacts/start/compile-cache/triton
timeout 300 python3 bench/small_gpu_benchmark.py --caps none --paths plan --cases raw1024,turbo1024 --timeout 290 --out $OUT > $OUT/small-gpu-none.log 2>&1
echo "none rc=$?"
grep -h "run: cap\|cap none\|failed\|Error\|skipped\|warm-up done" $OUT/small-gpu-none.log | cut -c1-300 | tail -20
timeout 250 python3 bench/startup_time.py --random-weights --data-dir artifacts/start --out $OUT > $OUT/startup-warm.log 2>&1
echo "startup warm rc=$?"
grep -h "startup\|arm-up\|skipped\|Error" $OUT/startup-warm.log | cut -c1-300 | tail -20
