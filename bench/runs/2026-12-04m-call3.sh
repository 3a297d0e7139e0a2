# Call 3 (session m): issue 15's evaluation of the reproduced checkpoints (demo/reproduce.sh evaluate), then issue 17's
# open question (img2img's exact mode at strength 0.6, NOTES "Next device session" item 3) in what is left of the call.
source bench/runs/prefix.sh
export WORK=artifacts/demo-reproduce EXPORT=artifacts/demo-reproduced
[ -d $EXPORT ] || { echo "restoring the export"; mkdir -p $WORK; cp -r artifacts/reproduced-export $EXPORT; }
timeout 200 bash demo/reproduce.sh evaluate > $OUT/eval.log 2>&1
echo "eval rc=$?"
cp $WORK/eval.json $OUT/ 2>/dev/null
python3 -c "import json; d=json.load(open('$OUT/eval.json')); print({k: v['accuracy'] for k, v in d['settings'].items()})"
timeout 300 python3 bench/img2img_benchmark.py --cases turbo1024 --strength 0.6 --mode exact --out $OUT > $OUT/img2img.log 2>&1
echo "img2img rc=$?"
tail -5 $OUT/img2img.log
