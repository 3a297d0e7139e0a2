# Call 2 (session j), right after call 1 on the same machine, kernel tuning off as there (its inductor and Triton
# caches reused): Raw 1024² at 52 steps unconstrained and on a 24 GB cap in one run (issue 19's target: the capped
# time <= 2x the unconstrained one, owed since session g), Turbo 1024² beside it, and Raw 1024² x 2 in one request
# (on the 24 GB plan now one image per pipeline call; one call of two ran out of memory there in session g).
source bench/runs/prefix.sh >/dev/null
export TORCHINDUCTOR_CACHE_DIR=$PWD/artifacts/start/compile-cache/inductor TRITON_CACHE_DIR=$PWD/artifacts/start/compile-cache/triton
export KREA2_KERNEL_TUNING=0
timeout 580 python3 bench/small_gpu_benchmark.py --caps none,24 --paths plan --cases turbo1024,raw1024,raw1024x2 --repeats 2 --timeout 280 --out $OUT > $OUT/small-gpu-none-24.log 2>&1
echo "none,24 rc=$? at ${SECONDS}s"
grep -h "cap \|failed\|Error\|Traceback\|skipped" $OUT/small-gpu-none-24.log | cut -c1-300 | tail -16
