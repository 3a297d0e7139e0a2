# Call 2 (session n), issue 15: call 1's recipe A (adaLN-Zero, peak learning rate 2e-3, singles-heavy, 256²) at
# batch 256 instead of 512, alone on the GPU for ~8 minutes, on the committed VAE: how many more steps per second
# the smaller batch buys, and whether the shape kinds (at chance through call 1's 2,000 steps) come within the time
# the script can give Raw. The work folder (fp32 Raw, text encoder, tokenizer, VAE: ~25 MB) comes back in $OUT so a
# later call can carry it on to part 2.
source bench/runs/prefix.sh
# The training stops by 570 s into the call, so that the copies after it come back.
work=artifacts/n-C
rm -rf artifacts/n-*
python -m demo.train --work $work --stages import --out demo/checkpoints > $OUT/import.log 2>&1 || exit 1
rm -f $work/raw_transformer.safetensors $work/turbo_transformer.safetensors $work/text_encoder.safetensors
rm -rf $work/tokenizer $work/lora $work/report.json
timeout $((570 - SECONDS)) python -m demo.train --work $work --stages raw --transformer 192x6 --batch raw=256 \
  --raw-lr 2e-3 --zero-init --structure-loss 0.05 --mix single=0.6,count=0.2,relation=0.2 --pool 49152,0 \
  --probe-every 1000 --steps raw=20000 --minutes raw=8.0 > $OUT/C.log 2>&1
echo "rc=$?"
cp -r $work $OUT/work-C
grep "probe\|raw: \|steps fit\|stopped\|Error" $OUT/C.log | cut -c1-330 | tail -14
