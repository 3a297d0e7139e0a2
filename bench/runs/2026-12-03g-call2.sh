# Call 2 (session g; call 1's warm machine was lost before it could run, so the compile cache starts cold again):
# the app's plan on a GPU capped at 24 GB, Raw 1024² at 52 steps beside Turbo 1024² (the 24 GB targets), its
# inductor cache in the start-up benchmark's data folder so that call 3 (if the machine stays warm) restarts on it.
source bench/runs/prefix.sh
export TORCHINDUCTOR_CACHE_DIR=$PWD/artifacts/start/compile-cache/inductor TRITON_CACHE_DIR=$PWD/artifacts/start/compile-cache/triton
timeout 565 python3 bench/small_gpu_benchmark.py --caps 24 --paths plan --cases raw1024,turbo1024 --timeout 555 --out $OUT > $OUT/small-gpu-24.log 2>&1
echo "24 rc=$?"
grep -h "run: cap\|cap 24\|failed\|Error\|skipped\|warm-up done" $OUT/small-gpu-24.log | cut -c1-300 | tail -20
