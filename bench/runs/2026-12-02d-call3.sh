# Call 3 (session d): the VAE's encode against its decode (issue 17), then the LoRA benchmark (issue 16) alone, on a
# cold compile cache (the machine of calls 1-2 was given back).
source bench/runs/prefix.sh
timeout 100 python3 bench/vae_benchmark.py --out $OUT > $OUT/vae-bench.log 2>&1; echo "vae rc=$?"
timeout 470 python3 bench/lora_benchmark.py --out $OUT > $OUT/lora-bench.log 2>&1; echo "lora rc=$?"
grep -i "VAE 1024\|warm-up done\|folded\|benchmark:\|Error" $OUT/*.log | cut -c1-600 | tail -14
