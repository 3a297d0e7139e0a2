# Call 1 (session e): issue 16's LoRA benchmark alone on a cold compile cache (it needs ~540 s: the fp8 warm-up alone
# took 230 s last time), with the gpu suite's LoRA tests started beside it: they only assert properties (no
# recompile, fp8 + LoRA against bf16 + LoRA) and end during the benchmark's warm-up, before anything is timed.
source bench/runs/prefix.sh
(timeout 400 python3 -m pytest -m gpu tests/gpu/test_gpu_loras.py -q -p no:cacheprovider > $OUT/gpu-loras.log 2>&1;
 echo "gpu loras rc=$?" >> $OUT/gpu-loras.log) &
TESTS=$!
timeout 560 python3 bench/lora_benchmark.py --out $OUT > $OUT/lora-bench.log 2>&1; echo "lora bench rc=$?"
wait $TESTS
tail -6 $OUT/gpu-loras.log
grep -i "warm-up done\|benchmark:\|Error\|Traceback" $OUT/lora-bench.log | cut -c1-1500 | tail -8
ls $OUT
