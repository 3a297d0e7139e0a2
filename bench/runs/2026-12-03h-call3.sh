# Call 3 (session h): why the 16 GB plan fails (a 4-block probe of its Residency, with streaming variants), then
# issue 16's last GPU check (the LoRA tests; the manager test's threshold never ran on a GPU).
source bench/runs/prefix.sh >/dev/null
timeout 120 python3 bench/runs/2026-12-03h-probe16.py 2>&1 | grep -v "Warning\|warn(" | tail -60
echo "probe done at ${SECONDS}s"
timeout $((400 - SECONDS)) python3 -m pytest -m gpu tests/gpu/test_gpu_loras.py -q -p no:cacheprovider 2>&1 | grep -v "^  \|Warning\|warn" | tail -15
echo "gpu tests done at ${SECONDS}s"
