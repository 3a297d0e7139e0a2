# Call 3 (session h): issue 16's last GPU check (the LoRA tests, the manager test's threshold never ran on a GPU),
# then issue 17's open question, img2img at strength 0.6 on the exact path.
source bench/runs/prefix.sh >/dev/null
timeout 330 python3 -m pytest -m gpu tests/gpu -q -p no:cacheprovider 2>&1 | grep -v "^  \|Warning\|warn" | tail -20
echo "gpu tests done at ${SECONDS}s"
timeout $((585 - SECONDS)) python3 bench/img2img_benchmark.py --cases turbo1024 --strength 0.6 --mode exact --out $OUT > $OUT/img2img-exact.log 2>&1
echo "img2img rc=$?"
tail -5 $OUT/img2img-exact.log | cut -c1-300
