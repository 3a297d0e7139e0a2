# Call 2 (session i), issue 19's small-GPU plans after the streaming fix, no compile (no cold warm-up fits a call
# beside them): 16 GB, today's offload path and the plan in one run (the same-run ratio the issue asks for); 12 GB,
# the plan (`swap+stream 14` ran out of memory before the fix); then the probe of the fix against the old pinning on 4
# blocks (session h's, never run).
source bench/runs/prefix.sh >/dev/null
timeout 300 python3 bench/small_gpu_benchmark.py --no-compile --caps 16 --paths offload,plan --cases turbo1024 --repeats 2 --timeout 145 --out $OUT > $OUT/small-gpu-16.log 2>&1
echo "16 rc=$? at ${SECONDS}s"
grep -h "cap 16\|failed\|Error\|Traceback" $OUT/small-gpu-16.log | cut -c1-300 | tail -12
timeout $((470 - SECONDS)) python3 bench/small_gpu_benchmark.py --no-compile --caps 12 --paths plan --cases turbo1024 --repeats 2 --timeout 160 --out $OUT > $OUT/small-gpu-12.log 2>&1
echo "12 rc=$? at ${SECONDS}s"
grep -h "cap 12\|failed\|Error\|Traceback" $OUT/small-gpu-12.log | cut -c1-300 | tail -12
timeout $((560 - SECONDS)) python3 bench/runs/2026-12-03h-probe16.py 2>&1 | grep -v "Warning\|warn(" | tail -30
echo "probe done at ${SECONDS}s"
