# Call 3 (planned in session n, not run there: no device left), issue 15: call 2's recipe with a larger transformer
# (256 wide, 8 blocks: about twice the work per step), alone for ~8 minutes on the committed VAE, probes every 1,000
# steps. BATCH (default 256) is the batch call 2 settles on. Judged against call 2 by the probes' recorded seconds
# (their steps differ).
source bench/runs/prefix.sh
# The training stops by 570 s into the call, so that the copies after it come back.
work=artifacts/n-D
rm -rf artifacts/n-*
python -m demo.train --work $work --stages import --out demo/checkpoints > $OUT/import.log 2>&1 || exit 1
rm -f $work/raw_transformer.safetensors $work/turbo_transformer.safetensors $work/text_encoder.safetensors
rm -rf $work/tokenizer $work/lora $work/report.json
timeout $((570 - SECONDS)) python -m demo.train --work $work --stages raw --transformer 256x8 \
  --batch raw=${BATCH:-256} --raw-lr 2e-3 --zero-init --structure-loss 0.05 --mix single=0.6,count=0.2,relation=0.2 \
  --pool 49152,0 --probe-every 1000 --steps raw=20000 --minutes raw=8.0 > $OUT/D.log 2>&1
echo "rc=$?"
cp -r $work $OUT/work-D
grep "probe\|raw: \|steps fit\|stopped\|Error" $OUT/D.log | cut -c1-330 | tail -14
