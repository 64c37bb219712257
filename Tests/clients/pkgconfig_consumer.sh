#!/bin/sh
# pkgconfig_consumer.sh <install prefix>
#
# Builds the demos the way a user would, with nothing but the installed
# pkg-config file (burst_attention.pc), checks that the binaries carry an
# rpath to the library, and runs them under mpirun with LD_LIBRARY_PATH unset.
# Environment: MPIEXEC (default: mpirun), CC (default: cc), CXX (default: c++).
set -eu

if [ $# -ne 1 ]; then
  echo "usage: $0 <install prefix>" >&2
  exit 2
fi
prefix=$(cd "$1" && pwd) || { echo "pkgconfig_consumer: no such prefix: $1" >&2; exit 2; }
repo=$(cd "$(dirname "$0")/../.." && pwd)
MPIEXEC=${MPIEXEC:-mpirun}
CC=${CC:-cc}
CXX=${CXX:-c++}

export PKG_CONFIG_PATH="$prefix/lib/pkgconfig"
unset LD_LIBRARY_PATH

fail() {
  echo "pkgconfig_consumer: FAIL: $*" >&2
  exit 1
}

[ -f "$PKG_CONFIG_PATH/burst_attention.pc" ] ||
  fail "$PKG_CONFIG_PATH/burst_attention.pc not found"
pkg-config --exists --print-errors burst_attention ||
  fail "pkg-config cannot resolve module burst_attention (Requires: ompi-c?)"
cflags=$(pkg-config --cflags burst_attention)
libs=$(pkg-config --libs burst_attention)
echo "pkg-config --cflags burst_attention: $cflags"
echo "pkg-config --libs burst_attention:   $libs"

work=$(mktemp -d "${TMPDIR:-/tmp}/burst_pkgconfig.XXXXXX")
trap 'rm -rf "$work"' EXIT INT TERM

# C: the main demo, strict warnings (the header is not a system header here).
# shellcheck disable=SC2086  # word splitting of pkg-config output is intended
"$CC" -std=c99 -Wall -Wextra -Werror -pedantic "$repo/examples/c/burst_demo.c" \
  -o "$work/burst_demo_c" $cflags $libs -lm ||
  fail "C compile of examples/c/burst_demo.c with pkg-config flags"
# C++
# shellcheck disable=SC2086
"$CXX" -std=c++17 -Wall -Wextra -Werror "$repo/examples/cpp/burst_demo.cpp" \
  -o "$work/burst_demo_cpp" $cflags $libs ||
  fail "C++ compile of examples/cpp/burst_demo.cpp with pkg-config flags"

for exe in "$work/burst_demo_c" "$work/burst_demo_cpp"; do
  rpath=$(readelf -d "$exe" | grep -E '\((RUNPATH|RPATH)\)' || true)
  [ -n "$rpath" ] || fail "$(basename "$exe") has no RUNPATH/RPATH (pkg-config Libs should carry -Wl,-rpath,\${libdir})"
  echo "$(basename "$exe"): $rpath"
  # The dynamic loader must find libburst_attention without LD_LIBRARY_PATH.
  if ldd "$exe" | grep 'libburst_attention' | grep -q 'not found'; then
    fail "$(basename "$exe"): libburst_attention.so not found by the loader without LD_LIBRARY_PATH"
  fi
  ldd "$exe" | grep 'libburst_attention' || true
done

"$MPIEXEC" --allow-run-as-root --oversubscribe -n 2 "$work/burst_demo_c" 96 ||
  fail "mpirun -n 2 burst_demo_c 96"
"$MPIEXEC" --allow-run-as-root --oversubscribe -n 2 "$work/burst_demo_c" 65 causal ||
  fail "mpirun -n 2 burst_demo_c 65 causal"
"$MPIEXEC" --allow-run-as-root --oversubscribe -n 2 "$work/burst_demo_cpp" 96 ||
  fail "mpirun -n 2 burst_demo_cpp 96"
echo "pkgconfig_consumer: OK"
