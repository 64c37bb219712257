#!/usr/bin/env bash
# Variant benchmarks of issue 6 (docs/variants.md): causal load balance of the
# three distributions at P = 4, a sliding window against full causal at P = 2,
# and GQA against MHA bytes. Writes docs/variants/*.jsonl, then the table.
# Takes ~6 minutes on 2 cores. Under mpirun the ranks share the 2 cores, so
# per-rank CPU time (not wall time) is the measure of work.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
swift build -c release --product burst-bench >/dev/null
BENCH=.build/release/burst-bench
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
MPIRUN="mpirun --oversubscribe --bind-to none"
mkdir -p docs/variants
for dist in contiguous zigzag striped; do
  $MPIRUN -n 4 $BENCH --mpi --seq-len 16384 --heads 8 --head-dim 128 --causal --distribution $dist \
    --mode fwdbwd --threads 1 --warmup 0 --repeats 2
done > docs/variants/balance.jsonl
for window in "--window-left 4096 --window-right 0" ""; do
  for dist in contiguous zigzag; do
    $MPIRUN -n 2 $BENCH --mpi --seq-len 65536 --heads 1 --head-dim 128 --causal $window --distribution $dist \
      --mode fwdbwd --threads 1 --warmup 0 --repeats 1
  done
done > docs/variants/window.jsonl
for kv in 8 32; do
  $BENCH --ranks 4 --seq-len 4096 --heads 32 --heads-kv $kv --head-dim 128 --mode fwdbwd --warmup 0 --repeats 1 --rank-lines
done > docs/variants/gqa.jsonl
python3 bench/variants_report.py > docs/variants.md
echo "wrote docs/variants.md"
