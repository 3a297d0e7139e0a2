# Call 2 (session g), on call 1's warm machine: the restart (same data folder, its caches filled), then Raw 1024² at
# 52 steps with no cap (the 24 GB target's yardstick), on the same inductor cache.
source bench/runs/prefix.sh
timeout 240 python3 bench/startup_time.py --random-weights --data-dir artifacts/start --out $OUT > $OUT/startup-warm.log 2>&1
echo "startup warm rc=$?"
grep -h "startup\|arm-up\|skipped\|Error" $OUT/startup-warm.log | cut -c1-300 | tail -20
export TORCHINDUCTOR_CACHE_DIR=$PWD/artifacts/start/compile-cache/inductor TRITON_CACHE_DIR=$PWD/artifacts/start/compile-cache/triton
timeout 330 python3 bench/small_gpu_benchmark.py --caps none --paths plan --cases raw1024,turbo1024 --timeout 320 --out $OUT > $OUT/small-gpu-none.log 2>&1
echo "none rc=$?"
grep -h "run: cap\|cap none\|failed\|Error\|skipped" $OUT/small-gpu-none.log | cut -c1-300 | tail -20
