# Call 1 (session d): train the demo style LoRA on the GPU while the LoRA benchmark's two compile warm-ups fill the
# inductor cache (its timings here overlap the training and are not the result; call 2 reruns it alone), then the
# gpu suite's LoRA tests.
source bench/runs/prefix.sh
python3 -m demo.train --work artifacts/w --stages import > $OUT/import.log 2>&1 || { tail -20 $OUT/import.log; exit 1; }
(python3 -m demo.train --work artifacts/w --stages lora --minutes lora=5 --steps lora=9000 > $OUT/lora-train.log 2>&1;
 cp artifacts/w/lora/*.safetensors artifacts/w/report.json $OUT/) &
TRAIN=$!
timeout 470 python3 bench/lora_benchmark.py --out $OUT/warm > $OUT/lora-bench-warm.log 2>&1; echo "lora bench rc=$?"
wait $TRAIN
timeout 90 python3 -m pytest -m gpu tests/gpu/test_gpu_loras.py -q -x > $OUT/gpu-loras.log 2>&1; echo "gpu loras rc=$?"
tail -5 $OUT/lora-train.log; tail -3 $OUT/lora-bench-warm.log; tail -5 $OUT/gpu-loras.log; du -sh .cache
