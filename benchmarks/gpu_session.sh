#!/bin/bash
# The GPU checks as one prepared run, for a machine lent for a few minutes: run from the
# repository root there, with OUT set to a folder for the logs.
#
#   OUT=/tmp/gpu bash benchmarks/gpu_session.sh
#
# Where Python packages cannot be installed there, put their wheels in WHEELS (default .whl;
# mrcfile, starfile, tetgen and the teamtomo torch-* libraries; torch is the machine's).
# pyvista (VTK) is too large to carry, so the meshes come prebuilt from MESHES (default
# .devcarry/meshes), made where pyvista is:
#   python benchmarks/gpu_scale.py --save-meshes .devcarry/meshes          # mesh_128/180/256.npz
#   flex3d simulate --out SIM --n-particles 20000 --box 128 --apix 1.5 --snr 0.05 --motion both
#   python -c "from napari_flex3d.config import TrainConfig as C; from napari_flex3d.training.setup import *;
#     from napari_flex3d.mesh.mesh import save_mesh; c = consensus_at_box('SIM/consensus.mrc', 128, 1.5, 128);
#     save_mesh(build_mask_and_mesh(c, 1.5, C())[1], '.devcarry/meshes/sim128_both.npz')"   # the mesh training builds
#
# Steps (each with its own time limit; a failed step stops the run early):
#  1. the 20,000-particle --motion both simulation at box 128 (half maps on the GPU), with the
#     CUDA-parametrised tests of the suite beside it;
#  2. gpu_scale at training box 128: particles/s and peak memory of a training step (about 25 s);
#  2b. the Triton splat against the torch path (convect_project.py --triton, box 128, batches 64 and 256):
#     times, peak memory, launches and agreement of the splat alone. Where triton imports, every
#     CUDA step of this session (gpu_scale, smoke, recovery) splats through the Triton kernels
#     (ops/triton_splat.py; a failed first-use check warns in the logs and keeps torch); FLEX3D_TRITON=0
#     gives the torch path;
#  3. smoke, which also measures the rate: the whole recovery path (train, write, evaluate) on the
#     first SMOKE_N particles of that simulation for 3 epochs at batch 256;
#  4. recovery at box 128, inference at box 64, EPOCHS (16) epochs on as many particles as the
#     smoke's rate fits before LIMIT seconds from the start (at most MAX_PARTICLES, 20000);
#     the run's history is copied to OUT while it trains, so a stopped run still reports, and
#     the model comes back in rec128.tgz (benchmarks/recovery.py --evaluate-only reads it).
# Other settings: DEVICE (cuda), SIM_N (20000), SMOKE_N (2048), LIMIT (570 s).
# Run whole on one H100 on 2026-11-27 (LIMIT=565): set-up 9 s, simulation done at 54 s, smoke at
# 101 s (its rate, 295 particles/s, was low: the recovery trained at about 370), recovery on
# 7,000 particles done at 387 s, gpu_scale (then last) done at 413 s (benchmarks/RESULTS.md, "recovery-gpu"). All
# 20,000 particles x 16 epochs at box 128 need about 13 minutes of training at that rate.
set -u
: "${OUT:?set OUT to a folder for the logs}"
mkdir -p "$OUT"
T0=$(date +%s)
LIMIT=${LIMIT:-570}
WHEELS=${WHEELS:-.whl}
M=${MESHES:-.devcarry/meshes}
CAP=${MAX_PARTICLES:-20000}
DEVICE=${DEVICE:-cuda}
SIM_N=${SIM_N:-20000}
SMOKE_N=${SMOKE_N:-2048}
EPOCHS=${EPOCHS:-16}
SIM=${SIM_DIR:-/tmp/sim128}
rm -rf /tmp/smoke /tmp/rec128 "$SIM"  # this script's own folders: a recovery folder left over would be resumed
el() { echo $(( $(date +%s) - T0 )); }
export PYTHONUNBUFFERED=1 OMP_WAIT_POLICY=PASSIVE
if compgen -G "$WHEELS/*.whl" > /dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site "$WHEELS"/*.whl || exit 3
  export PYTHONPATH=/tmp/site:${PYTHONPATH:-}
fi
export PYTHONPATH=$PWD/src:$PWD/benchmarks:${PYTHONPATH:-}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null
python3 -c "import torch, napari_flex3d, mrcfile, starfile, tetgen; print('torch', torch.__version__, torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'no GPU')" || exit 4
echo "== set-up done at $(el) s"

# 1. the simulation, with the CUDA tests beside it
( OMP_NUM_THREADS=2 timeout 150 python3 -m pytest -q -p no:cacheprovider -o 'filterwarnings=ignore::DeprecationWarning' \
    tests/model/test_flow.py tests/ops tests/mesh/test_mesh_rigidity.py tests/mesh/test_mesh_barycentric.py \
    tests/reconstruct/test_rigid.py -k "cuda or triton" > "$OUT/pytest_cuda.log" 2>&1; echo "pytest rc=$? at $(el) s" >> "$OUT/pytest_cuda.log" ) &
timeout 200 python3 -m napari_flex3d.cli simulate --out "$SIM" --n-particles "$SIM_N" --box 128 --apix 1.5 --snr 0.05 \
    --motion both --seed 0 --quiet --device "$DEVICE" > "$OUT/sim.log" 2>&1
rc=$?
echo "== simulation rc=$rc at $(el) s"
tail -3 "$OUT/sim.log"
[ $rc -eq 0 ] || exit 5

# 2. gpu_scale at training box 128: throughput and peak memory of a training step
OMP_NUM_THREADS=8 timeout 90 python3 benchmarks/gpu_scale.py --mesh-dir "$M" --train-boxes 128 --latent-box 64 --steps 6 \
    --no-reconstruction --device "$DEVICE" > "$OUT/gpu_scale.log" 2>&1
echo "== gpu_scale rc=$? at $(el) s"
grep -E "train box|bandwidth|device" "$OUT/gpu_scale.log"

# 2b. the Triton splat against the torch path: the splat alone, forward and forward + backward
OMP_NUM_THREADS=8 timeout 90 python3 benchmarks/convect_project.py --device "$DEVICE" --triton --boxes 128 \
    > "$OUT/triton.log" 2>&1
echo "== triton splat rc=$? at $(el) s"
grep -E "^  |first-use" "$OUT/triton.log" | tail -8

# 3. smoke and rate: 3 epochs of the first SMOKE_N particles, evaluated as the full run is
OMP_NUM_THREADS=8 timeout 150 python3 benchmarks/recovery.py --out /tmp/smoke --sim "$SIM" --max-particles "$SMOKE_N" \
    --epochs 3 --warmup-epochs 0 --mesh "$M/sim128_both.npz" --train-box 128 --latent-box 64 --device "$DEVICE" \
    > "$OUT/smoke.log" 2>&1
rc=$?
echo "== smoke rc=$rc at $(el) s"
grep -v "^\s*$" "$OUT/smoke.log" | tr '\r' '\n' | grep -v "batch/s" | tail -20
[ $rc -eq 0 ] || exit 6

# 4. recovery, sized by the smoke: its trained epochs after the first give particles/s (their mean;
# on 2026-11-27 the smoke's slowest read 295 where the run trained at about 370); the smoke's time
# outside its epochs (set-up, checkpoints: twice; evaluation: once) is added; 2 warm-up epochs cost
# about 0.4 of one; 15 % margin
N=$(python3 - "$LIMIT" "$(el)" "$CAP" "$EPOCHS" <<'EOF'
import json, os, re, sys
limit, now, cap, epochs = (float(x) for x in sys.argv[1:])
hist = json.load(open("/tmp/smoke/run/history.json"))
n_train = int(re.search(r"\((\d+) train", open("/tmp/smoke/train.log").read()).group(1))
rate = n_train * len(hist[1:]) / sum(h["seconds"] for h in hist[1:])
smoke = open(os.environ["OUT"] + "/smoke.log").read()
total = float(re.search(r"benchmark (\d+) s", smoke).group(1))
trained = float(re.search(r"training in all (\d+) s", smoke).group(1))
extra = trained - sum(h["seconds"] for h in hist)  # set-up, checkpoints, per-epoch FSC: counted twice
overhead = 2 * extra + (total - trained)  # and the evaluation once
left = limit - now - overhead - 10
eff = (epochs - 2) + 2 * 0.4 if epochs > 2 else epochs
n = int(min(cap, 0.85 * rate * left / eff / 0.95) // 1000 * 1000)
print(max(n, min(1000, int(cap))))
print(f"rate {rate:.0f} particles/s, overhead {overhead:.0f} s, {left:.0f} s for training", file=sys.stderr)
EOF
)
echo "== recovery on $N particles from $(el) s"
( while sleep 15; do cp /tmp/rec128/run/history.json "$OUT/history_live.json" 2>/dev/null; done ) &
COPIER=$!
OMP_NUM_THREADS=8 timeout $(( LIMIT - $(el) - 5 )) python3 benchmarks/recovery.py --out /tmp/rec128 --sim "$SIM" \
    --mesh "$M/sim128_both.npz" --train-box 128 --latent-box 64 --device "$DEVICE" --max-particles "$N" \
    --epochs "$EPOCHS" > "$OUT/recovery.log" 2>&1
echo "== recovery rc=$? at $(el) s"
kill $COPIER 2>/dev/null
cp /tmp/rec128/run/history.json "$OUT/history_live.json" 2>/dev/null
grep -v "^\s*$" "$OUT/recovery.log" | tr '\r' '\n' | grep -v "batch/s" | tail -30
(cd /tmp/rec128 && tar czf "$OUT/rec128.tgz" run/history.json run/config.json run/latents.npy run/canonical.mrc \
    run/mesh.npz run/checkpoints/last.pt train.log 2>/dev/null)  # the model too: evaluate it again anywhere
tail -3 "$OUT/pytest_cuda.log"

echo "== done at $(el) s"
