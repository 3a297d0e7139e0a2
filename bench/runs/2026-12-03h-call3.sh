# Call 3 (session h): the 16 GB plan after the fix for its failure ("cannot pin 'CUDAFloat8_e4m3fnType'": streamed
# blocks now reach group offloading unpinned), at full size, Turbo 1024², no compile, 2 timed runs; then, with what is
# left, the probe running the plan's Residency on 4 full-width blocks as committed and as before (pinned first).
# Failed machine starts left ~350 s of device time: the LoRA GPU tests, Raw and 12 GB planned here were dropped.
source bench/runs/prefix.sh >/dev/null
timeout 160 python3 bench/small_gpu_benchmark.py --no-compile --caps 16 --paths plan --cases turbo1024 --repeats 2 --timeout 155 --out $OUT > $OUT/small-gpu-16.log 2>&1
echo "16 rc=$? at ${SECONDS}s"
grep -h "cap 16\|failed\|Error\|Traceback" $OUT/small-gpu-16.log | cut -c1-300 | tail -12
timeout $((178 - SECONDS)) python3 bench/runs/2026-12-03h-probe16.py 2>&1 | grep -v "Warning\|warn(" | tail -40
echo "probe done at ${SECONDS}s"
