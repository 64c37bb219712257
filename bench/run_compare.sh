#!/usr/bin/env bash
# libburst_attention vs PyTorch CPU SDPA (issue 3): installs torch (CPU wheel),
# matplotlib and threadpoolctl, builds the library, runs bench/compare_torch.py with
# all arguments passed through, then bench/report.py on the same JSONL.
#   bench/run_compare.sh                 # full sweep (long: see bench/README.md)
#   bench/run_compare.sh --quick --n 1024
# OPENBLAS_CORETYPE is left as the environment sets it.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"

# The CPU-only wheel; a plain `pip install torch` would pull the CUDA build.
PIP_ROOT_USER_ACTION=ignore python3 -m pip install -q torch==2.13.0+cpu matplotlib threadpoolctl
./scripts/build.sh >&2  # stdout stays JSON lines only
swift build -c release --product burst-bench >&2  # its --gemm line: the tile GEMM rate of our kernels

export PYTHONPATH="$ROOT/bindings/python${PYTHONPATH:+:$PYTHONPATH}"
export BURST_ATTENTION_LIBRARY="$ROOT/build/install/lib/libburst_attention.so"

# report.py reads what compare_torch.py appended to: the same --out.
out="$ROOT/docs/perf/results.jsonl"
args=("$@")
for ((i = 0; i < ${#args[@]}; i++)); do
  case ${args[i]} in
    -h | --help) exec python3 bench/compare_torch.py --help ;;
    --out) out=${args[i + 1]:-$out} ;;
    --out=*) out=${args[i]#--out=} ;;
  esac
done

python3 bench/compare_torch.py "$@"
python3 bench/report.py --in "$out"
