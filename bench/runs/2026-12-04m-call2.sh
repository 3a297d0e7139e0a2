# Call 2 (session m), issue 15: part 2 of demo/reproduce.sh (Raw round 1 with the text encoder frozen, Turbo
# distilled from it, the style LoRA, export) on call 1's work folder (restored from artifacts/reproduce-part1, carried,
# if the machine went cold in between). The exported checkpoints come back in $OUT.
source bench/runs/prefix.sh
export WORK=artifacts/demo-reproduce EXPORT=artifacts/demo-reproduced
[ -f $WORK/raw_transformer.safetensors ] || { echo "restoring part 1"; rm -rf $WORK; cp -r artifacts/reproduce-part1 $WORK; }
bash demo/reproduce.sh 2 > $OUT/part2.log 2>&1
echo "part 2 rc=$?"
cp -r $EXPORT $OUT/export && cp $WORK/report.json $WORK/times.txt $OUT/
grep -v "it/s\]\|s/it\]" $OUT/part2.log | grep "raw:\|turbo:\|lora:\|export:\|steps fit\|stopped\|Error\|error\|part 2" | cut -c1-300 | tail -14
cat $WORK/times.txt
