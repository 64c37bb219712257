#!/usr/bin/env bash
# Decode over a KV cache (issue 17): ours (`burst-bench --decode`: the step and, in the
# same process, a read of a buffer of the rank's shard size) next to torch SDPA decode
# over the same cache shape in one process (bench/decode_torch.py), one after the other
# in one run; then P = 2 under mpirun, the merge's cost alone (a 64-token cache: P = 2
# under mpirun, P = 8 loopback ranks on a simulated network), and the prefill
# (first-token) latency of one layer next to torch SDPA.
#   bench/run_decode.sh [--quick] [--out DIR] [--dtypes "f32 bf16"] [--decode-only]
#   (default DIR: docs/perf/decode; --decode-only skips the merge and prefill parts)
# Then: python3 bench/decode_report.py DIR  (table + plot).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
OUT=$ROOT/docs/perf/decode
QUICK=0
DTYPES="f32 bf16"
DECODE_ONLY=0
while [ $# -gt 0 ]; do
  case "$1" in
    --quick) QUICK=1 ;;
    --out) OUT=$2; shift ;;
    --dtypes) DTYPES=$2; shift ;;
    --decode-only) DECODE_ONLY=1 ;;
    *) echo "usage: $0 [--quick] [--out DIR] [--dtypes \"f32 bf16\"] [--decode-only]" >&2; exit 2 ;;
  esac
  shift
done
mkdir -p "$OUT"
LOG=$OUT/results.jsonl
: > "$LOG"
BENCH=$ROOT/.build/release/burst-bench
(cd "$ROOT" && swift build -c release --product burst-bench >/dev/null)
MPIRUN=(mpirun --allow-run-as-root --oversubscribe --bind-to none)
SHAPE=(--heads 32 --heads-kv 8 --head-dim 128)
echo "{\"bench\":\"machine\",\"cpu\":\"$(lscpu | sed -n 's/^Model name: *//p')\",\"flags_avx512\":$(grep -c avx512f /proc/cpuinfo | head -1),\"date\":\"$(date -u +%FT%TZ)\"}" >> "$LOG"

if [ "$QUICK" = 1 ]; then B1=16384,65536; B8=16384; else B1=16384,65536,262144,1048576; B8=16384,65536; fi
for dtype in $DTYPES; do
  for batch in 1 8; do
    lengths=$B1; [ "$batch" = 8 ] && lengths=$B8
    for threads in 1 2; do
      echo "== decode $dtype B=$batch threads=$threads L=$lengths" >&2
      "$BENCH" --decode "${SHAPE[@]}" --dtype "$dtype" --batch "$batch" --threads "$threads" \
        --cache-lengths "$lengths" --repeats 7 | tee -a "$LOG"
      python3 "$ROOT/bench/decode_torch.py" "${SHAPE[@]}" --dtype "$dtype" --batch "$batch" \
        --threads "$threads" --cache-lengths "$lengths" --repeats 3 | tee -a "$LOG"
    done
    echo "== decode $dtype B=$batch P=2 (mpirun, 1 thread a rank)" >&2
    "${MPIRUN[@]}" -n 2 "$BENCH" --decode --mpi "${SHAPE[@]}" --dtype "$dtype" --batch "$batch" \
      --threads 1 --cache-lengths "$lengths" --repeats 7 | tee -a "$LOG"
  done
done

if [ "$DECODE_ONLY" = 1 ]; then echo "results: $LOG" >&2; exit 0; fi
echo "== merge alone: a 64-token cache" >&2
"${MPIRUN[@]}" -n 2 "$BENCH" --decode --mpi "${SHAPE[@]}" --cache-lengths 64 --repeats 51 | sed 's/"bench":"decode"/"bench":"merge","transport":"mpi"/' | tee -a "$LOG"
"$BENCH" --decode "${SHAPE[@]}" --ranks 8 --cache-lengths 64 --repeats 51 \
  --network "latency=5e-6,bandwidth=1.25e9" | sed 's/"bench":"decode"/"bench":"merge","transport":"simulated 10 Gbit\/s, 5 us"/' | tee -a "$LOG"

echo "== prefill (first token), one layer: h_q 8, h_kv 2, d 128, causal, zigzag" >&2
PREFILL=32768,65536; [ "$QUICK" = 1 ] && PREFILL=16384
for n in ${PREFILL//,/ }; do
  "$BENCH" --seq-len "$n" --heads 8 --heads-kv 2 --head-dim 128 --causal --distribution zigzag \
    --threads 2 --mode fwd --repeats 1 | grep '"bench":"burst"' | sed 's/"bench":"burst"/"bench":"prefill"/' | tee -a "$LOG"
  "${MPIRUN[@]}" -n 2 "$BENCH" --mpi --seq-len "$n" --heads 8 --heads-kv 2 --head-dim 128 --causal \
    --distribution zigzag --threads 1 --mode fwd --repeats 1 | grep '"bench":"burst"' | sed 's/"bench":"burst"/"bench":"prefill"/' | tee -a "$LOG"
  python3 - "$n" <<'PY' | tee -a "$LOG"
import json, sys, time, torch, torch.nn.functional as F
n = int(sys.argv[1]); torch.set_num_threads(2)
q = torch.randn(1, 8, n, 128); k = torch.randn(1, 2, n, 128); v = torch.randn(1, 2, n, 128)
with torch.inference_mode():
    t0 = time.perf_counter(); F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True); t = time.perf_counter() - t0
print(json.dumps({"bench": "prefill_torch", "seq_len": n, "heads": 8, "heads_kv": 2, "head_dim": 128, "threads": 2, "median_s": t}))
PY
done
echo "results: $LOG" >&2
