# Call 3 (session f), issue 19: the app's own plan on a GPU capped at 24 GB, Turbo 1024² only (3 repeats), with the
# whole call's time for the cold fp8 compile warm-up (session e's 400 s was not enough). The offload path on the same
# cap is session e's (results/2026-12-02T2101_*_24GB_offload.json).
source bench/runs/prefix.sh
timeout 575 python3 bench/small_gpu_benchmark.py --caps 24 --paths plan --cases turbo1024 --timeout 560 --out $OUT > $OUT/small-gpu-plan.log 2>&1
echo "plan rc=$?"
grep -h "run: cap\|cap 24\|failed\|Error\|arm-up\|plan\|status" $OUT/small-gpu-plan.log | cut -c1-400 | tail -25
