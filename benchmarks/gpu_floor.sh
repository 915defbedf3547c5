#!/bin/bash
# Rigidity floor 0.5 against 0.1 at box 128 (inference 64) on the first N particles of the
# 20,000-particle --motion both simulation, both runs at once on one GPU, as one prepared call:
#
#   OUT=/tmp/gpu LIMIT=555 N=6000 bash benchmarks/gpu_floor.sh
#
# Needs the wheels in .whl and the prebuilt mesh in .devcarry/meshes/sim128_both.npz, as
# benchmarks/gpu_session.sh (which says how to make them). On one H100 on 2026-11-27 it took
# 463 s: simulation 63 s, then the two runs side by side at 268-272 training particles/s each
# after warm-up (one run alone, second session: about 370, so two at once train 1.45x as many
# particles per second; the GPU read 96-99 % busy), benchmark 388-393 s each. benchmarks/RESULTS.md ("recovery-gpu") has the figures.
set -u
T0=$(date +%s); el() { echo $(( $(date +%s) - T0 )); }
LIMIT=${LIMIT:-560}; N=${N:-6000}
export PYTHONUNBUFFERED=1 OMP_WAIT_POLICY=PASSIVE
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 3
export PYTHONPATH=/tmp/site:$PWD/src:$PWD/benchmarks
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
M=.devcarry/meshes
timeout 150 python3 -m napari_flex3d.cli simulate --out /tmp/sim128 --n-particles 20000 --box 128 --apix 1.5 --snr 0.05 \
    --motion both --seed 0 --quiet --device cuda > $OUT/sim.log 2>&1 || { tail $OUT/sim.log; exit 5; }
echo "== sim at $(el) s"
rm -rf /tmp/r05 /tmp/r01
( while sleep 10; do cp /tmp/r05/run/history.json $OUT/h05.json 2>/dev/null; cp /tmp/r01/run/history.json $OUT/h01.json 2>/dev/null; done ) &
C=$!
for f in 05 01; do
  OMP_NUM_THREADS=7 timeout $(( LIMIT - $(el) - 5 )) python3 benchmarks/recovery.py --out /tmp/r$f --sim /tmp/sim128 --mesh $M/sim128_both.npz \
    --train-box 128 --latent-box 64 --device cuda --max-particles $N --rigidity-floor 0.${f#0} > $OUT/rec$f.log 2>&1 &
  PIDS="${PIDS:-} $!"
done
( while sleep 60; do nvidia-smi --query-gpu=utilization.gpu,memory.used --format=csv,noheader; done ) > $OUT/smi.log &
S=$!
for p in $PIDS; do wait $p; echo "rc=$? "; done
echo "== both done at $(el) s"
kill $C $S 2>/dev/null
for f in 05 01; do echo "---- floor 0.${f#0}"; grep -v "^\s*$" $OUT/rec$f.log | tr '\r' '\n' | grep -v "batch/s" | tail -24; done
for f in 05 01; do (cd /tmp/r$f/run 2>/dev/null && tar czf $OUT/r$f.tgz history.json config.json latents.npy); done
cat $OUT/smi.log; echo "== done at $(el) s"
