# Call 3 (session l), issue 15: a seventh Raw round (round 6) from call 1's Raw (artifacts/raw-round5/, fp32) with the
# text encoder frozen (--freeze-text-encoder: call 2's Turbo, distilled on it and now in demo/checkpoints, stays
# valid), the structure objective kept on the transformer's text fusion, a relation-heavy pool
# (single=0.3,count=0.3,relation=0.4); the LoRA retrained on it; export; demo.evaluate. Call 2 gave Raw 52 89.0 %.
source bench/runs/prefix.sh
W=artifacts/demo-train
python3 -m demo.train --work $W --stages import > $OUT/raw-round6.log 2>&1 || { echo "import failed"; exit 1; }
cp artifacts/raw-round5/raw_transformer.safetensors artifacts/raw-round5/text_encoder.safetensors $W/
cp artifacts/raw-round5/raw-round5-report.json $W/report.json
python3 -m demo.train --work $W --stages raw lora export --out demo/checkpoints --raw-round 6 --freeze-text-encoder \
    --raw-lr 6e-4 --batch raw=512 --pool 49152,8192 --mix single=0.3,count=0.3,relation=0.4 --structure-loss 0.05 \
    --probe-every 1000 --minutes raw=5.2,lora=0.8 >> $OUT/raw-round6.log 2>&1
echo "train rc=$?"
cp $W/report.json $OUT/raw-round6-report.json
mkdir -p $OUT/ck && for f in Krea-2-Raw-demo/transformer/diffusion_pytorch_model.safetensors \
    Krea-2-Turbo-demo/text_encoder/model.safetensors loras/pixel-style.safetensors; do
    cp demo/checkpoints/$f $OUT/ck/$(echo $f | tr / _); done
grep -v "it/s\]\|s/it\]" $OUT/raw-round6.log | grep "probe\|raw:\|lora:\|steps fit\|stopped\|Error" | cut -c1-300 | tail -12
timeout 120 python3 -m demo.evaluate --checkpoints demo/checkpoints --out $OUT/eval.json > $OUT/eval.log 2>&1
echo "eval rc=$?"
python3 -c "import json; d=json.load(open('$OUT/eval.json')); print({k: v['accuracy'] for k, v in d['settings'].items()})"
