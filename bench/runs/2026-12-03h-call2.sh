# Call 2 (session h), issue 19's small plans without compile (no warm-up fits a call beside them): the 16 GB plan's
# Turbo alone, so that its failure in session g (reason not logged then) is read from the child's error, then the
# 12 GB plan, Turbo 1024² and Raw 1024² at 8 steps.
source bench/runs/prefix.sh
timeout 200 python3 bench/small_gpu_benchmark.py --no-compile --caps 16 --paths plan --cases turbo1024 --timeout 180 --out $OUT > $OUT/small-gpu-16.log 2>&1
echo "16 rc=$?"
grep -h "run: cap\|cap 16\|failed\|Error\|error\|skipped\|Traceback\|plan " $OUT/small-gpu-16.log | cut -c1-400 | tail -25
timeout $((585 - SECONDS)) python3 bench/small_gpu_benchmark.py --no-compile --caps 12 --paths plan --cases turbo1024,raw1024 --raw-steps 8 --timeout $((560 - SECONDS)) --out $OUT > $OUT/small-gpu-12.log 2>&1
echo "12 rc=$?"
grep -h "run: cap\|cap 12\|failed\|Error\|error\|skipped\|Traceback\|plan " $OUT/small-gpu-12.log | cut -c1-400 | tail -25
