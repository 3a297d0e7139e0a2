# Call 3 (session k), issue 15: Turbo distilled again from call 1's Raw (artifacts/raw-round4/, fp32), twice the
# trajectories (24576, so longer training does not repeat them ~300 times) and ~5.5 minutes of steps instead of 3.6;
# Raw and the LoRA as call 2 left them. demo.evaluate on Turbo at 8 steps only (Raw is unchanged).
source bench/runs/prefix.sh
W=artifacts/demo-train
python3 -m demo.train --work $W --stages import > $OUT/turbo.log 2>&1 || { echo "import failed"; tail -5 $OUT/turbo.log; exit 1; }
cp artifacts/raw-round4/raw_transformer.safetensors artifacts/raw-round4/text_encoder.safetensors $W/
python3 -m demo.train --work $W --stages turbo export --out demo/checkpoints --mix single=0.4,count=0.3,relation=0.3 \
    --trajectories 24576 --steps turbo=8000 --minutes turbo=7.8 >> $OUT/turbo.log 2>&1
echo "train rc=$?"
cp $W/report.json $OUT/turbo-report.json
mkdir -p $OUT/ck && cp demo/checkpoints/Krea-2-Turbo-demo/transformer/diffusion_pytorch_model.safetensors $OUT/ck/turbo.safetensors
timeout 60 python3 -m demo.evaluate --checkpoints demo/checkpoints --settings turbo_8 --out $OUT/eval.json > $OUT/eval.log 2>&1
echo "eval rc=$?"
grep -v "it/s\]\|s/it\]" $OUT/turbo.log | grep "turbo:\|steps fit\|stopped\|Error" | cut -c1-300 | tail -8
python3 -c "import json; d=json.load(open('$OUT/eval.json')); print({k: v['accuracy'] for k, v in d['settings'].items()})"
