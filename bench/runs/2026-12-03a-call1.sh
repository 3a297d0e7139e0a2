# Call 1 (session f), issue 15: a fourth Raw round from the committed demo checkpoints, with the learning curve on
# (64 held-out prompts scored every 1000 steps), 8 minutes including the latent pool. The fp32 results come back in
# $OUT and travel to call 2 (carried as artifacts/raw-round3/), which distils Turbo from them.
source bench/runs/prefix.sh
W=artifacts/demo-train
python3 -m demo.train --work $W --stages import raw --raw-round 3 --raw-lr 6e-4 --batch raw=512 --pool 49152,8192 \
    --probe-every 1000 --minutes raw=8.0 > $OUT/raw-round3.log 2>&1
echo "train rc=$?"
cp $W/raw_transformer.safetensors $W/text_encoder.safetensors $OUT/ && cp $W/report.json $OUT/raw-round3-report.json
grep -v "it/s\]\|s/it\]" $OUT/raw-round3.log | grep "probe\|raw:\|steps fit\|stopped\|Error\|error" | cut -c1-400 | tail -20
