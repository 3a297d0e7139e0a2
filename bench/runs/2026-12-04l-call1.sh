# Call 1 (session l), issue 15: a sixth Raw round (round 5) from the committed demo checkpoints with the
# caption-structure objective on the text side (--structure-loss, demo.train.CaptionStructure: the text features must
# tell a relation's direction and which colour and kind are the subject's), a pool with more relations
# (single=0.35,count=0.3,relation=0.35), learning curve on (its direction_difference: 0.0014 before). The fp32
# results come back in $OUT and travel to call 2 (carried as artifacts/raw-round5/), which distils Turbo from them.
source bench/runs/prefix.sh
W=artifacts/demo-train
python3 -m demo.train --work $W --stages import raw --raw-round 5 --raw-lr 6e-4 --batch raw=512 --pool 49152,8192 \
    --mix single=0.35,count=0.3,relation=0.35 --structure-loss 0.05 --probe-every 1000 --minutes raw=8.3 \
    > $OUT/raw-round5.log 2>&1
echo "train rc=$?"
cp $W/raw_transformer.safetensors $W/text_encoder.safetensors $OUT/ && cp $W/report.json $OUT/raw-round5-report.json
grep -v "it/s\]\|s/it\]" $OUT/raw-round5.log | grep "probe\|raw:\|raw structure\|steps fit\|stopped\|Error\|error" | cut -c1-400 | tail -24
