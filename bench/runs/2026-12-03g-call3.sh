# Call 3 (session g), on the same warm machine and inductor cache: the app's plan on a GPU capped at 24 GB, Raw 1024²
# at 52 steps beside Turbo 1024² (the 24 GB targets), then 16 GB with Raw at 8 steps if time is left.
source bench/runs/prefix.sh
export TORCHINDUCTOR_CACHE_DIR=$PWD/artifacts/start/compile-cache/inductor TRITON_CACHE_DIR=$PWD/artifacts/start/compile-cache/triton
timeout 330 python3 bench/small_gpu_benchmark.py --caps 24 --paths plan --cases raw1024,turbo1024 --timeout 320 --out $OUT > $OUT/small-gpu-24.log 2>&1
echo "24 rc=$?"
grep -h "run: cap\|cap 24\|failed\|Error\|skipped" $OUT/small-gpu-24.log | cut -c1-300 | tail -20
timeout 230 python3 bench/small_gpu_benchmark.py --caps 16 --paths plan --cases turbo1024,raw1024 --raw-steps 8 --timeout 220 --out $OUT > $OUT/small-gpu-16.log 2>&1
echo "16 rc=$?"
grep -h "run: cap\|cap 16\|failed\|Error\|skipped" $OUT/small-gpu-16.log | cut -c1-300 | tail -20
