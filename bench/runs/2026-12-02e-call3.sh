# Call 3 (session e): issue 16's LoRA benchmark again, alone this time (call 1 ran the gpu LoRA tests beside it, and
# its switch timings, 3.0-5.9 s, overlapped their compilation: the cycles after the tests ended folded in 0.6-0.9 s),
# with LoRAs strong enough to stand out of fp8's error; then the gpu LoRA tests, whose thresholds were fixed.
source bench/runs/prefix.sh
timeout 400 python3 bench/lora_benchmark.py --out $OUT > $OUT/lora-bench.log 2>&1; echo "lora bench rc=$?"
timeout 175 python3 -m pytest -m gpu tests/gpu/test_gpu_loras.py -q -p no:cacheprovider -x > $OUT/gpu-loras.log 2>&1
echo "gpu loras rc=$?"
grep -i "warm-up done\|benchmark:\|Error\|Traceback" $OUT/lora-bench.log | cut -c1-1500 | tail -6
grep -A3 "errors" $OUT/*loras.json | head -8
tail -4 $OUT/gpu-loras.log
