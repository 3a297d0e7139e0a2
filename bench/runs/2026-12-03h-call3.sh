# Call 3 (session h): why the 16 GB plan fails (a 4-block probe of its Residency, with streaming variants). The
# LoRA GPU tests planned here were dropped: the device time left had to keep room for a run of the fix.
source bench/runs/prefix.sh >/dev/null
timeout 150 python3 bench/runs/2026-12-03h-probe16.py 2>&1 | grep -v "Warning\|warn(" | tail -80
echo "probe done at ${SECONDS}s"
