# Call 4 (session j), after calls 1-3 on the same machine: Turbo 1024² unconstrained with kernel tuning ON (the
# default until now), cold caches of its own, to set beside call 2's tuning-off run on this machine (1.04 s): what
# the tuning's start-up time buys at full speed. The small-GPU benchmark's child also logs its warm-up's seconds.
source bench/runs/prefix.sh >/dev/null
export TORCHINDUCTOR_CACHE_DIR=$PWD/artifacts/tuned/inductor TRITON_CACHE_DIR=$PWD/artifacts/tuned/triton
export KREA2_KERNEL_TUNING=1
timeout 500 python3 bench/small_gpu_benchmark.py --caps none --paths plan --cases turbo1024 --repeats 5 --timeout 490 --out $OUT > $OUT/small-gpu-none-tuned.log 2>&1
echo "tuned rc=$? at ${SECONDS}s"
grep -h "cap \|failed\|Error\|Traceback\|skipped\|warm-up done" $OUT/small-gpu-none-tuned.log | cut -c1-300 | tail -12
