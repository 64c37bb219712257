#!/usr/bin/env bash
# Installs what libburst_attention needs on Debian 12 (run as root):
# OpenMPI, libxsmm (JIT tile kernels), CMake + Ninja (CMake builds Swift with Ninja), pkg-config,
# Python headers, and numpy + mpi4py for the Python package.
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
if ! "$PYTHON" -c "import numpy, mpi4py, pytest" >/dev/null 2>&1; then
  "$PYTHON" -m pip install -q numpy mpi4py pytest
fi
command -v swift >/dev/null || { echo "setup: swift is not on PATH (Swift 6.3 is required)" >&2; exit 1; }
