# Call 4 (session g), the session's last ~600 s of device time on a cold machine: the app's plan on a GPU capped at
# 16 GB (predicted `swap+stream 6`), Turbo 1024² (target <= 3 s) and Raw 1024² at 8 steps (52 do not fit the call
# beside a cold compile warm-up).
source bench/runs/prefix.sh
timeout 510 python3 bench/small_gpu_benchmark.py --caps 16 --paths plan --cases turbo1024,raw1024 --raw-steps 8 --timeout 500 --out $OUT > $OUT/small-gpu-16.log 2>&1
echo "16 rc=$?"
grep -h "run: cap\|cap 16\|failed\|Error\|skipped\|warm-up done" $OUT/small-gpu-16.log | cut -c1-300 | tail -20
