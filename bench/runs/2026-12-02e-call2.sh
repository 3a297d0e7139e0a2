# Call 2 (session e), issue 19 on a GPU capped at 24 GB, on the inductor cache call 1 filled (same machine, kept
# warm): the app's own plan for the card (Turbo and Raw 52 steps, 3 repeats each), then today's offload path on the
# same cap, Turbo only (Raw 52 steps streamed would take ~1 min an image and has no target of its own).
# As it ran: the machine had been given back before this call (warm: false), so the cache was cold, and the plan
# run timed out at 400 s; the offload run finished (results/2026-12-02T2101_*_24GB_offload.json).
source bench/runs/prefix.sh
timeout 420 python3 bench/small_gpu_benchmark.py --caps 24 --paths plan --timeout 400 --out $OUT > $OUT/small-gpu-plan.log 2>&1
echo "plan rc=$?"
timeout 150 python3 bench/small_gpu_benchmark.py --caps 24 --paths offload --cases turbo1024 --timeout 140 --out $OUT > $OUT/small-gpu-offload.log 2>&1
echo "offload rc=$?"
grep -h "run: cap\|cap 24\|failed\|Error\|Warm-up\|warm-up done\|plan" $OUT/small-gpu-*.log | cut -c1-400 | tail -20
ls $OUT
