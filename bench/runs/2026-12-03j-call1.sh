# Call 1 (session j), issue 19's start-up with inductor's coordinate-descent kernel tuning OFF (KREA2_KERNEL_TUNING=0;
# session i found it was 38.7 s of a restart's ~52 s of compiling, and every earlier start-up ran with it): a cold
# start, then a restart on the caches it left, in one call (the restart cannot lose the machine in between).
# startup_time.py reads the environment's settings since session j (before, its random-weights path used the
# defaults, so an exported KREA2_KERNEL_TUNING would have been ignored).
source bench/runs/prefix.sh
unset TORCHINDUCTOR_CACHE_DIR TRITON_CACHE_DIR  # the app's own: <data>/compile-cache/{inductor,triton}
export KREA2_KERNEL_TUNING=0
timeout 330 python3 bench/startup_time.py --random-weights --data-dir artifacts/start --cold --out $OUT > $OUT/startup-cold.log 2>&1
echo "startup cold rc=$? at ${SECONDS}s"
grep -h "startup\|arm-up\|beside\|skipped\|Error\|compil" $OUT/startup-cold.log | grep -v "during the warm-up" | cut -c1-220 | tail -30
timeout $((585 - SECONDS)) python3 bench/startup_time.py --random-weights --data-dir artifacts/start --out $OUT > $OUT/startup-warm.log 2>&1
echo "startup warm rc=$? at ${SECONDS}s"
grep -h "startup\|arm-up\|beside\|skipped\|Error\|cache\|compil" $OUT/startup-warm.log | grep -v "during the warm-up" | cut -c1-220 | tail -30
