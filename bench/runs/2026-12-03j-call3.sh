# Call 3 (session j), after calls 1-2 on the same machine (their caches), kernel tuning off: the 16 GB plan with
# compile on its resident blocks (issue 19: "every exact speed-up compatible with the plan stays on"; sessions h-i
# measured it without compile, 2.06 s), then issue 16's GPU tests (the manager test's threshold never ran on a GPU).
source bench/runs/prefix.sh >/dev/null
export TORCHINDUCTOR_CACHE_DIR=$PWD/artifacts/start/compile-cache/inductor TRITON_CACHE_DIR=$PWD/artifacts/start/compile-cache/triton
export KREA2_KERNEL_TUNING=0
timeout 400 python3 bench/small_gpu_benchmark.py --caps 16 --paths plan --cases turbo1024 --repeats 3 --timeout 390 --out $OUT > $OUT/small-gpu-16-compiled.log 2>&1
echo "16 compiled rc=$? at ${SECONDS}s"
grep -h "cap \|failed\|Error\|Traceback\|skipped" $OUT/small-gpu-16-compiled.log | cut -c1-300 | tail -12
timeout $((585 - SECONDS)) python3 -m pytest -m gpu tests/gpu -q -p no:cacheprovider 2>&1 | tail -15
echo "gpu tests done at ${SECONDS}s"
