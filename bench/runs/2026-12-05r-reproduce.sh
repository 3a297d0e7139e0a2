# Issue 15's one script on the device, one part per call: PART=1, then 2, then 3, then evaluate.
#     WHEELS=.whl-train PART=1 bash bench/runs/2026-12-05r-reproduce.sh     (run's carry: .whl-train, artifacts/handoff)
# Each part reads the WORK folder the earlier ones left in artifacts/. A machine stays warm only 30 s after a call,
# so parts 1 and 2 also bring back a hand-off (what the next part needs, as a tar in 15 MB pieces): here, replace
# artifacts/handoff with the pieces of the last call (`rm -rf artifacts/handoff; mkdir artifacts/handoff; cp
# FILES_AT/handoff.tar.part-* artifacts/handoff/`) and carry it: on a fresh machine it restores WORK. After part 1 the VAE,
# after part 2 Raw too, are rounded to bf16 in WORK itself (the precision the export ships them in; fp32 would not fit the
# 64 MiB a call carries), so part 3 starts from the same weights on a warm machine and a fresh one. The wheels less
# torchao make the room: `mkdir .whl-train && ln .whl/diffusers* .whl/transformers* .whl/tokenizers* .whl-train/`.
# At most 8 files come back per call (16 MB each): the part's log, the report and times, the last probe sheet, the
# hand-off; part 3 and evaluate bring the exported checkpoints as a tar in 15 MB pieces (join with cat, then tar -x).
# The call's exit status is the part's. bench/NOTES.md, session q, has the prediction.
PART=${PART:?PART=1, 2, 3 or evaluate}
HANDOFF=${HANDOFF:-artifacts/handoff}  # where a fresh machine finds the part before's hand-off (carried or committed)
source bench/runs/prefix.sh
export WORK=artifacts/demo-reproduce EXPORT=artifacts/demo-reproduced PYTHON=python
[ "$PART" = 1 ] && rm -rf $WORK $EXPORT
needs=$( [ "$PART" = 2 ] && echo vae.safetensors; [ "$PART" = 3 ] && echo raw_transformer.safetensors )
if [ -n "$needs" ] && [ ! -e "$WORK/$needs" ]; then  # a fresh machine: the carried hand-off of the part before
  mkdir -p $WORK
  cat "$HANDOFF"/handoff.tar.part-* 2>/dev/null | tar -x -C $WORK 2>/dev/null
  [ -e "$WORK/$needs" ] || { echo "== no $needs here and no hand-off holding it ($HANDOFF)"; exit 3; }
  echo "== WORK restored from the hand-off"; ls -la $WORK
fi
bash demo/reproduce.sh $PART > $OUT/part-$PART.log 2>&1
rc=$?
echo "== part $PART rc $rc"
cp $WORK/report.json $WORK/times.txt $OUT/ 2>/dev/null
sheet=$(ls $WORK/probes/raw-*.png 2>/dev/null | sort -V | tail -1)
if [ "$PART" = 2 ] && [ -n "$sheet" ]; then cp $sheet $OUT/; fi
if [ "$PART" = evaluate ]; then cp $WORK/eval.json $OUT/; fi
if [ "$rc" = 0 ] && { [ "$PART" = 1 ] || [ "$PART" = 2 ]; }; then  # the VAE (part 1), Raw (part 2) in bf16, in WORK
  python - "$WORK" $( [ "$PART" = 2 ] && echo raw_transformer ) vae <<'PY'
import sys
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
for name in sys.argv[2:]:
    path = f"{sys.argv[1]}/{name}.safetensors"
    with safe_open(path, framework="pt") as file:
        metadata = file.metadata()
    weights = {k: v.to(torch.bfloat16) if v.is_floating_point() else v for k, v in load_file(path).items()}
    save_file(weights, path, metadata=metadata)
PY
  rc=$?  # a failed cast ships no hand-off and fails the call
  echo "== bf16 cast rc $rc"
fi
if [ "$rc" = 0 ] && { [ "$PART" = 1 ] || [ "$PART" = 2 ]; }; then  # the hand-off: WORK less the probe sheets
  files="vae.json vae.safetensors report.json times.txt"
  [ "$PART" = 2 ] && files="$files raw_transformer.safetensors text_encoder.safetensors tokenizer"
  tar -cf - -C $WORK $files | split -b 15M - $OUT/handoff.tar.part-
fi
if [ "$PART" = 3 ] || [ "$PART" = evaluate ]; then  # the checkpoints come back as soon as they exist
  [ -d $EXPORT ] && tar -cf - -C artifacts demo-reproduced | split -b 15M - $OUT/demo-reproduced.tar.part-
fi
cat $WORK/times.txt 2>/dev/null
grep "probe\|steps fit\|stopped\|Error\|accuracy" $OUT/part-$PART.log | cut -c1-400 | tail -12
ls -la $OUT
exit $rc
