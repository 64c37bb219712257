#!/usr/bin/env bash
# Packaging test of the Python binding: `pip install ./bindings/python` into a fresh
# venv, then the installed package must load the library bundled inside it (from a
# neutral directory, with BURST_ATTENTION_LIBRARY and PYTHONPATH unset) and pass
# `python -m burst_attention`.
#
#   Tests/python/test_packaging.sh [python3]
#
# Environment:
#   BURST_PACKAGING_PREBUILT_LIBRARY  path of an already built libburst_attention.so:
#       bundled (-C cmake.define.BURST_PREBUILT_LIBRARY=...) instead of compiling the
#       Swift sources again. Unset (the default): the library is built from source.
#   BURST_PACKAGING_KEEP=1            keep the temporary directory (venv, logs).
# pip needs PyPI (or PIP_FIND_LINKS / PIP_INDEX_URL) for scikit-build-core, which it
# installs into its isolated build environment.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
PYTHON=${1:-${PYTHON:-python3}}
WORK=$(mktemp -d "${TMPDIR:-/tmp}/burst_packaging.XXXXXX")
cleanup() {
  if [[ ${BURST_PACKAGING_KEEP:-0} == 1 ]]; then
    echo "kept $WORK"
  else
    rm -rf "$WORK"
  fi
}
trap cleanup EXIT

# Nothing may point the import at another library or another copy of the package.
unset BURST_ATTENTION_LIBRARY PYTHONPATH PYTHONHOME PIP_USER PIP_TARGET PIP_PREFIX
export PYTHONDONTWRITEBYTECODE=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PYTHONNOUSERSITE=1

echo "== venv ($PYTHON, --system-site-packages) in $WORK/venv"
"$PYTHON" -m venv --system-site-packages "$WORK/venv"
VPY=$WORK/venv/bin/python

pip_args=()
if [[ -n ${BURST_PACKAGING_PREBUILT_LIBRARY:-} ]]; then
  echo "== bundling the prebuilt $BURST_PACKAGING_PREBUILT_LIBRARY"
  pip_args+=(-C "cmake.define.BURST_PREBUILT_LIBRARY=$BURST_PACKAGING_PREBUILT_LIBRARY")
else
  echo "== building libburst_attention from source"
fi
start=$SECONDS
(cd "$ROOT" && "$VPY" -m pip install "${pip_args[@]}" ./bindings/python)
echo "== pip install took $((SECONDS - start)) s"

mkdir "$WORK/neutral"
cd "$WORK/neutral"
echo "== import from $PWD"
"$VPY" - "$WORK/venv" "$ROOT" <<'EOF'
import os
import re
import stat
import sys
import sysconfig
from importlib import metadata

venv, root = (os.path.realpath(p) for p in sys.argv[1:3])
import burst_attention as ba

def inside(path, top):
    return os.path.commonpath([os.path.realpath(path), top]) == top

platlib = os.path.realpath(sysconfig.get_paths()["platlib"])
package_dir = os.path.dirname(os.path.realpath(ba.__file__))
print("package:", package_dir)
print("library:", ba.library_path)
print("build info:", ba.build_info())
assert inside(platlib, venv), (platlib, venv)
assert package_dir == os.path.join(platlib, "burst_attention"), (package_dir, platlib)
assert not inside(package_dir, root), "imported the checkout, not the installed package"
want = os.path.join(package_dir, "libburst_attention.so")
assert os.path.realpath(ba.library_path) == want, (ba.library_path, want)
mode = os.lstat(ba.library_path).st_mode
assert stat.S_ISREG(mode), "the bundled library must be a real file, not a symbolic link"

# Versions: header == binding == distribution metadata == loaded library (MAJOR.MINOR).
header = open(os.path.join(root, "include", "burst_attention.h"), encoding="utf-8").read()
hv = ".".join(re.search(rf"^#define BURST_VERSION_{p} (\d+)$", header, re.M).group(1)
              for p in ("MAJOR", "MINOR", "PATCH"))
assert ba.__version__ == hv, (ba.__version__, hv)
assert metadata.version("burst-attention") == hv, metadata.version("burst-attention")
assert ba.version() // 100 == ba.VERSION_NUMBER // 100, ba.version()

# What the wheel installed (its RECORD): the package, one library file, the metadata;
# none of the root project's install tree (lib/, include/, pkgconfig, cmake files).
files = sorted(str(f) for f in metadata.files("burst-attention"))
print("installed files:\n  " + "\n  ".join(files))
libs = [f for f in files if os.path.basename(f).startswith("libburst_attention")]
assert libs == ["burst_attention/libburst_attention.so"], libs
for f in files:
    top = f.split("/")[0]
    assert top == "burst_attention" or top.endswith(".dist-info") or f.startswith(".."), f
    assert not re.search(r"(^|/)(include|pkgconfig|cmake)/|\.h$|\.pc$|\.cmake$", f), f
for module in ("__init__.py", "__main__.py", "_lib.py", "_selfcheck.py"):
    assert f"burst_attention/{module}" in files, module
print("install layout OK")
EOF

if command -v readelf >/dev/null; then
  lib=$("$VPY" -c 'import burst_attention as b; print(b.library_path)')
  readelf -d "$lib" | grep -q 'RUNPATH.*\[\$ORIGIN\]' || { echo "RUNPATH of $lib is not \$ORIGIN"; readelf -d "$lib"; exit 1; }
fi

echo "== python -m burst_attention"
"$VPY" -m burst_attention
echo "== packaging test passed"
