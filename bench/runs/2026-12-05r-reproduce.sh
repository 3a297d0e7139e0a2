# Issue 15's one script on the device, one part per call: PART=1, then 2, then 3, then evaluate.
#     PART=1 bash bench/runs/2026-12-05r-reproduce.sh
# Each part reads the WORK folder the earlier ones left in artifacts/. A machine stays warm only 30 s after a call,
# so each call also brings back a hand-off (what the next part needs, as a tar in 15 MB pieces): copied to
# artifacts/handoff/ and carried, it restores WORK on a fresh machine. After part 2 the hand-off holds Raw and the VAE
# in bf16, the precision the export ships them in (fp32 would not fit the 64 MiB a call carries); such a call carries
# .whl-train (WHEELS=.whl-train), the wheels without torchao, for the same reason.
# At most 8 files come back per call (16 MB each): the part's log, the report and times, the last probe sheet, the
# hand-off; part 3 and evaluate bring the exported checkpoints as a tar in 15 MB pieces (join with cat, then tar -x).
# bench/NOTES.md, session q, has the prediction.
source bench/runs/prefix.sh
export WORK=artifacts/demo-reproduce EXPORT=artifacts/demo-reproduced PYTHON=python
PART=${PART:?PART=1, 2, 3 or evaluate}
[ "$PART" = 1 ] && rm -rf $WORK $EXPORT
if { [ "$PART" = 2 ] || [ "$PART" = 3 ]; } && [ ! -e $WORK/vae.safetensors ]; then  # a fresh machine: the carried hand-off
  mkdir -p $WORK && cat artifacts/handoff/handoff.tar.part-* | tar -x -C $WORK && echo "== WORK restored from hand-off"
  ls -la $WORK
fi
bash demo/reproduce.sh $PART > $OUT/part-$PART.log 2>&1
echo "== part $PART rc $?"
cp $WORK/report.json $WORK/times.txt $OUT/ 2>/dev/null
sheet=$(ls $WORK/probes/raw-*.png 2>/dev/null | sort -V | tail -1)
[ "$PART" = 2 ] && [ -n "$sheet" ] && cp $sheet $OUT/
[ "$PART" = evaluate ] && cp $WORK/eval.json $OUT/
if [ "$PART" = 1 ] || [ "$PART" = 2 ]; then  # the hand-off: WORK without the probe sheets, Raw and the VAE in bf16
  rm -rf /tmp/handoff && mkdir /tmp/handoff && (cd $WORK && cp -r vae.json vae.safetensors report.json times.txt \
    $( [ "$PART" = 2 ] && echo raw_transformer.safetensors text_encoder.safetensors tokenizer ) /tmp/handoff/)
  [ "$PART" = 2 ] && python - <<'PY'
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
for name in ("raw_transformer", "vae"):
    path = f"/tmp/handoff/{name}.safetensors"
    with safe_open(path, framework="pt") as file:
        metadata = file.metadata()
    weights = {k: v.to(torch.bfloat16) if v.is_floating_point() else v for k, v in load_file(path).items()}
    save_file(weights, path, metadata=metadata)
PY
  tar -cf - -C /tmp/handoff . | split -b 15M - $OUT/handoff.tar.part-
fi
if [ "$PART" = 3 ] || [ "$PART" = evaluate ]; then  # the checkpoints come back as soon as they exist
  tar -cf - -C artifacts demo-reproduced | split -b 15M - $OUT/demo-reproduced.tar.part-
fi
cat $WORK/times.txt 2>/dev/null
grep "probe\|steps fit\|stopped\|Error\|accuracy" $OUT/part-$PART.log | cut -c1-400 | tail -12
ls -la $OUT
