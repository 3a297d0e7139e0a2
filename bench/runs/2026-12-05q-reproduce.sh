# Issue 15's one script on the device, one part per call on the same warm machine (each part reads the WORK folder the
# earlier ones left in artifacts/, which a machine given back loses): PART=1, then 2, then 3, then evaluate.
#     PART=1 bash bench/runs/2026-12-05q-reproduce.sh
# At most 8 files come back per call (16 MB each): the part's log, the report and times, the last probe sheet; the
# part 3 and evaluate calls also bring the exported checkpoints as a tar cut into 15 MB pieces (join with cat, then
# tar -x): part 3's in case the machine is gone before evaluate.
# bench/NOTES.md, session q, has the prediction.
source bench/runs/prefix.sh
export WORK=artifacts/demo-reproduce EXPORT=artifacts/demo-reproduced PYTHON=python
[ "${PART:-}" = 1 ] && rm -rf $WORK $EXPORT
bash demo/reproduce.sh ${PART:?PART=1, 2, 3 or evaluate} > $OUT/part-$PART.log 2>&1
echo "== part $PART rc $?"
cp $WORK/report.json $WORK/times.txt $OUT/ 2>/dev/null
sheet=$(ls $WORK/probes/raw-*.png 2>/dev/null | sort -V | tail -1)
[ "$PART" = 2 ] && [ -n "$sheet" ] && cp $sheet $OUT/
[ "$PART" = evaluate ] && cp $WORK/eval.json $OUT/
if [ "$PART" = 3 ] || [ "$PART" = evaluate ]; then  # the checkpoints come back as soon as they exist
  tar -cf - -C artifacts demo-reproduced | split -b 15M - $OUT/demo-reproduced.tar.part-
fi
cat $WORK/times.txt 2>/dev/null
grep "probe\|steps fit\|stopped\|Error\|accuracy" $OUT/part-$PART.log | cut -c1-400 | tail -12
ls -la $OUT
