# Call 3 (session g), the last ~400 s of device time, too few for a cold compile warm-up: the app's plans on an H200
# capped at 16 and 12 GB without torch.compile (an upper bound on the plans' times: compile only adds speed-ups on
# the resident blocks), Turbo 1024² (16 GB target <= 3 s) and Raw 1024² at 8 steps.
source bench/runs/prefix.sh
timeout 270 python3 bench/small_gpu_benchmark.py --no-compile --caps 16,12 --paths plan --cases turbo1024,raw1024 --raw-steps 8 --timeout 130 --out $OUT > $OUT/small-gpu-16-12.log 2>&1
echo "16,12 rc=$?"
grep -h "run: cap\|cap 16\|cap 12\|failed\|Error\|skipped" $OUT/small-gpu-16-12.log | cut -c1-300 | tail -20
