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
#     from napari_flex3d.mesh.build import save_mesh; c = consensus_at_box('SIM/consensus.mrc', 128, 1.5, 128);
#     save_mesh(build_mask_and_mesh(c, 1.5, C())[1], '.devcarry/meshes/sim128_both.npz')"   # the mesh training builds
#
# Steps (each with its own time limit; a failed smoke stops the run early):
#  1. CUDA-parametrised tests of the suite (background);
#  2. smoke: the whole recovery path on 512 particles at box 128 (simulate, 2 epochs with latent
#     inference, write, evaluate);
#  3. recovery at box 128 on the 20,000-particle simulation: MAX_PARTICLES (default 20000) for
#     16 epochs, inference at box 64, stopped at LIMIT seconds from the start (default 585);
#  4. gpu_scale (training at 128/180, reconstruction at 256) with --profile, if time is left.
# Assembled from the steps run on 2026-11-27 (docs/training.md); not yet run as a whole.
# Measured on one H100 (2026-11-27, before the SVD-free rigidity): recovery at box 128 trained
# about 420 particles/s per epoch, so 20,000 x 16 epochs needs about 13 minutes there.
set -u
: "${OUT:?set OUT to a folder for the logs}"
mkdir -p "$OUT"
T0=$(date +%s)
LIMIT=${LIMIT:-585}
WHEELS=${WHEELS:-.whl}
M=${MESHES:-.devcarry/meshes}
N=${MAX_PARTICLES:-20000}
el() { echo $(( $(date +%s) - T0 )); }
export PYTHONUNBUFFERED=1 OMP_WAIT_POLICY=PASSIVE
if compgen -G "$WHEELS/*.whl" > /dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site "$WHEELS"/*.whl || exit 3
  export PYTHONPATH=/tmp/site:${PYTHONPATH:-}
fi
export PYTHONPATH=$PWD/src:$PWD/benchmarks:${PYTHONPATH:-}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -c "import torch, napari_flex3d, mrcfile, starfile, tetgen; print('torch', torch.__version__, torch.cuda.get_device_name(0))" || exit 4
echo "== set-up done at $(el) s"

( python3 -m napari_flex3d.cli simulate --out /tmp/sim128 --n-particles 20000 --box 128 --apix 1.5 --snr 0.05 \
    --motion both --seed 0 --quiet --device cuda > "$OUT/sim.log" 2>&1; echo "sim rc=$? at $(el) s" >> "$OUT/sim.log" ) &
SIM=$!
( OMP_NUM_THREADS=2 timeout 150 python3 -m pytest -q -p no:cacheprovider -o 'filterwarnings=ignore::DeprecationWarning' \
    tests/model/test_flow.py tests/ops tests/mesh/test_mesh_rigidity.py tests/mesh/test_mesh_barycentric.py \
    tests/reconstruct/test_rigid.py -k cuda > "$OUT/pytest_cuda.log" 2>&1; echo "pytest rc=$? at $(el) s" >> "$OUT/pytest_cuda.log" ) &

OMP_NUM_THREADS=4 timeout 150 python3 benchmarks/recovery.py --out /tmp/smoke --n-particles 512 --box 128 --epochs 2 \
    --warmup-epochs 0 --batch 128 --mesh "$M/sim128_both.npz" --latent-box 64 --device cuda > "$OUT/smoke.log" 2>&1
rc=$?
echo "== smoke rc=$rc at $(el) s"
tail -22 "$OUT/smoke.log"
if [ $rc -ne 0 ]; then kill $SIM 2>/dev/null; exit 5; fi

wait $SIM
echo "== simulation finished at $(el) s"
tail -3 "$OUT/sim.log"
tail -3 "$OUT/pytest_cuda.log"
echo "== recovery on $N particles from $(el) s"
OMP_NUM_THREADS=8 timeout $(( LIMIT - $(el) - 5 )) python3 benchmarks/recovery.py --out /tmp/rec128 --sim /tmp/sim128 \
    --mesh "$M/sim128_both.npz" --train-box 128 --latent-box 64 --device cuda --max-particles "$N" > "$OUT/recovery.log" 2>&1
echo "== recovery rc=$? at $(el) s"
grep -v "^\s*$" "$OUT/recovery.log" | tr '\r' '\n' | grep -v "batch/s" | tail -32
(cd /tmp/rec128 && tar czf "$OUT/rec128.tgz" run/history.json run/config.json run/latents.npy train.log 2>/dev/null)

LEFT=$(( LIMIT - $(el) ))
if [ $LEFT -gt 90 ]; then
  timeout $(( LEFT - 5 )) python3 benchmarks/gpu_scale.py --mesh-dir "$M" --latent-box 64 --profile > "$OUT/gpu_scale.log" 2>&1
  echo "== gpu_scale rc=$? at $(el) s"
  grep -E "train box|reconstruct box|bandwidth|device|^profile" "$OUT/gpu_scale.log"
fi
echo "== done at $(el) s"
