#!/usr/bin/env bash
# Set up napari-flex3d on a fresh Debian/Ubuntu machine: system libraries for the napari GUI
# (and its tests under Xvfb), a virtual environment in .venv, the CPU build of torch 2.13.0,
# then the project with its test extras (triton 3.6 among them, ~190 MB, so that the Triton splat's
# tests run on the CPU under its interpreter). Safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."

if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
    xvfb xauth libgl1 libgl1-mesa-dri libglx-mesa0 libegl1 libxkbcommon-x11-0 \
    libxcb-icccm4 libxcb-image0 libxcb-keysyms1 libxcb-randr0 libxcb-render-util0 \
    libxcb-shape0 libxcb-xinerama0 libxcb-xfixes0 libxcb-xkb1 libxcb-cursor0 \
    libfontconfig1 libdbus-1-3 >/dev/null
else
  echo "setup.sh: not root or no apt-get; skipping system packages (GUI tests need Xvfb and the xcb libraries)" >&2
fi

PY=${PYTHON:-python3}
[ -d .venv ] || "$PY" -m venv .venv
. .venv/bin/activate
python -m pip install -q --upgrade pip >/dev/null 2>&1 || true
# torch first: the CPU build from local disk; the project's range keeps it.
python -m pip install -q "torch==2.13.0"
python -m pip install -q -e '.[dev]'
python -c "import napari_flex3d, torch; print('napari-flex3d', napari_flex3d.__version__, 'torch', torch.__version__)"
