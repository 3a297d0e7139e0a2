# Call 1 (session g), issue 19's start-up: `python app.py`'s path on full-size random weights, unconstrained H200,
# a cold compile cache in a data folder that survives to the next call on this warm machine (artifacts/ is ignored).
source bench/runs/prefix.sh
timeout 560 python3 bench/startup_time.py --random-weights --data-dir artifacts/start --cold --out $OUT > $OUT/startup-cold.log 2>&1
echo "startup cold rc=$?"
grep -h "startup\|arm-up\|skipped\|Error" $OUT/startup-cold.log | cut -c1-300 | tail -30
