# Call 2 (session l), issue 15: Turbo distilled from call 1's Raw (carried in artifacts/raw-round5/, fp32) on the same
# mix with session k's 12,288 trajectories (24,576 hung in k-call3) and a longer cap (6.3 minutes, k's 4.8 gave 3.6
# minutes of steps), the style LoRA retrained on it, the checkpoints exported in the repos' layouts, demo.evaluate.
source bench/runs/prefix.sh
W=artifacts/demo-train
python3 -m demo.train --work $W --stages import > $OUT/turbo.log 2>&1 || { echo "import failed"; tail -5 $OUT/turbo.log; exit 1; }
cp artifacts/raw-round5/raw_transformer.safetensors artifacts/raw-round5/text_encoder.safetensors $W/
cp artifacts/raw-round5/raw-round5-report.json $W/report.json
python3 -m demo.train --work $W --stages turbo lora export --out demo/checkpoints --mix single=0.35,count=0.3,relation=0.35 \
    --steps turbo=4000 --minutes turbo=6.3,lora=0.9 >> $OUT/turbo.log 2>&1
echo "train rc=$?"
cp $W/report.json $OUT/turbo-report.json
mkdir -p $OUT/ck && for f in Krea-2-Raw-demo/transformer/diffusion_pytorch_model.safetensors \
    Krea-2-Turbo-demo/transformer/diffusion_pytorch_model.safetensors Krea-2-Turbo-demo/text_encoder/model.safetensors \
    loras/pixel-style.safetensors; do cp demo/checkpoints/$f $OUT/ck/$(echo $f | tr / _); done
timeout 170 python3 -m demo.evaluate --checkpoints demo/checkpoints --out $OUT/eval.json > $OUT/eval.log 2>&1
echo "eval rc=$?"
grep -v "it/s\]\|s/it\]" $OUT/turbo.log | grep "turbo:\|lora:\|steps fit\|stopped\|Error" | cut -c1-300 | tail -8
python3 -c "import json; d=json.load(open('$OUT/eval.json')); print({k: v['accuracy'] for k, v in d['settings'].items()})"
