# Call 1 (session k), issue 15: a fifth Raw round (round 4) from the committed demo checkpoints, on the new count
# layout (two or three shapes in a row or a column, demo/scenes.py) and a pool with more counts and relations
# (single=0.4,count=0.3,relation=0.3), learning curve on. The fp32 results come back in $OUT and travel to call 2
# (carried as artifacts/raw-round4/), which distils Turbo from them.
source bench/runs/prefix.sh
W=artifacts/demo-train
python3 -m demo.train --work $W --stages import raw --raw-round 4 --raw-lr 6e-4 --batch raw=512 --pool 49152,8192 \
    --mix single=0.4,count=0.3,relation=0.3 --probe-every 1000 --minutes raw=8.3 > $OUT/raw-round4.log 2>&1
echo "train rc=$?"
cp $W/raw_transformer.safetensors $W/text_encoder.safetensors $OUT/ && cp $W/report.json $OUT/raw-round4-report.json
grep -v "it/s\]\|s/it\]" $OUT/raw-round4.log | grep "probe\|raw:\|steps fit\|stopped\|Error\|error" | cut -c1-400 | tail -20
