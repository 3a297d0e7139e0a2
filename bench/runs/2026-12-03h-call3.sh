# Call 3 (session h): the 16 GB plan's failure ("cannot pin 'CUDAFloat8_e4m3fnType'"). The probe runs the plan's
# Residency on 4 full-width blocks as committed (streamed blocks reach group offloading unpinned) and as before (pinned
# first); then the 16 GB plan at full size, Turbo 1024² and Raw 1024² at 8 steps, and the 12 GB plan, no compile.
# The LoRA GPU tests planned for this call were dropped to leave room for this.
source bench/runs/prefix.sh >/dev/null
timeout 150 python3 bench/runs/2026-12-03h-probe16.py 2>&1 | grep -v "Warning\|warn(" | tail -40
echo "probe done at ${SECONDS}s"
timeout 200 python3 bench/small_gpu_benchmark.py --no-compile --caps 16 --paths plan --cases turbo1024,raw1024 --raw-steps 8 --timeout 190 --out $OUT > $OUT/small-gpu-16.log 2>&1
echo "16 rc=$? at ${SECONDS}s"
grep -h "cap 16\|failed\|Error\|Traceback" $OUT/small-gpu-16.log | cut -c1-300 | tail -12
timeout $((540 - SECONDS)) python3 bench/small_gpu_benchmark.py --no-compile --caps 12 --paths plan --cases turbo1024 --timeout $((530 - SECONDS)) --out $OUT > $OUT/small-gpu-12.log 2>&1
echo "12 rc=$? at ${SECONDS}s"
grep -h "cap 12\|failed\|Error\|Traceback" $OUT/small-gpu-12.log | cut -c1-300 | tail -12
