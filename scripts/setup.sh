#!/usr/bin/env bash
# Installs what libburst_attention needs on Debian 12 (run as root):
# OpenMPI, libxsmm (JIT tile kernels), CMake + Ninja (CMake builds Swift with Ninja), pkg-config,
# Python headers, and numpy + mpi4py + the CPU-only torch (+ pytest, tqdm, matplotlib)
# for the Python package, its tests and examples.
# Swift 6.3 itself must already be on PATH.
set -euo pipefail
need_apt=0
for pkg in libopenmpi-dev openmpi-bin libxsmm-dev cmake ninja-build pkg-config python3-dev; do
  dpkg -s "$pkg" >/dev/null 2>&1 || need_apt=1
done
if [ "$need_apt" = 1 ]; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends \
    libopenmpi-dev openmpi-bin libxsmm-dev cmake ninja-build pkg-config python3-dev >/dev/null
fi
PYTHON=${PYTHON:-python3}
if ! "$PYTHON" -c "import numpy, mpi4py, pytest, tqdm, matplotlib" >/dev/null 2>&1; then
  "$PYTHON" -m pip install -q --root-user-action=ignore numpy mpi4py pytest tqdm matplotlib
fi
# The CPU-only torch, pinned: a plain `pip install torch` would pull the CUDA build.
# (These machines carry the 2.13.0+cpu wheel locally through pip's find-links; elsewhere
# it comes from https://download.pytorch.org/whl/cpu.)
TORCH_VERSION=2.13.0+cpu
if [ "$("$PYTHON" -c 'import torch; print(torch.__version__)' 2>/dev/null)" != "$TORCH_VERSION" ]; then
  "$PYTHON" -m pip install -q --root-user-action=ignore "torch==$TORCH_VERSION" \
    || "$PYTHON" -m pip install -q --root-user-action=ignore "torch==$TORCH_VERSION" \
         --index-url https://download.pytorch.org/whl/cpu
fi
command -v swift >/dev/null || { echo "setup: swift is not on PATH (Swift 6.3 is required)" >&2; exit 1; }
