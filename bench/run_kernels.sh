#!/usr/bin/env bash
# Kernel efficiency against this machine's own tile GEMM (issue 10), one burst-bench
# process per case so every line carries the tile rate measured in the same process:
#   part e  efficiency: N in {4096, 16384}, d in {64, 128}, H in {1, 8}, non-causal,
#           threads 1 and 2 (the 2-thread tile rate is 2 threads running tiles at once)
#   part s  small and odd shapes: N = 1024 with d in {64, 80, 96, 128}; shards of 256
#           and 512 tokens (what one rank holds at large P), H = 8, d = 128
#   part r  peak RSS of forward+backward at N = 8192, 16384, 32768 (H = 1, d = 128)
# Every burst-bench JSON line is appended to $OUT/kernels.jsonl with "part" and a
# "case" id; a header line records the machine and the commit. Then
#   python3 bench/kernel_report.py $OUT   writes $OUT/kernels.md.
#   bench/run_kernels.sh                 # all parts (~15 min on 2 cores)
#   bench/run_kernels.sh --parts e --quick --out /tmp/k
# Options: --parts LIST (e,s,r), --quick (N = 2048 for part e, 1 call), --out DIR
#   (default docs/perf), --repeats R (default 2), --no-build.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
command_line="bench/run_kernels.sh $*"
parts="e,s,r" quick=0 build=1 out="$ROOT/docs/perf" repeats=2
while (($#)); do
  case $1 in
    --parts) parts=$2; shift ;;
    --quick) quick=1 ;;
    --no-build) build=0 ;;
    --out) out=$2; shift ;;
    --repeats) repeats=$2; shift ;;
    -h|--help) sed -n '2,16p' "$0"; exit 0 ;;
    *) echo "run_kernels.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
  shift
done
if ((build)); then swift build -c release --product burst-bench >&2; fi
BENCH="$ROOT/.build/release/burst-bench"
mkdir -p "$out"
JSONL="$out/kernels.jsonl"
commit=$(git rev-parse --short HEAD)$(git diff --quiet HEAD -- Sources || echo "-dirty")
cpu=$(lscpu | sed -n 's/^Model name: *//p' | head -1)
flags=$(grep -o -w -E 'avx512f|avx512_bf16|avx2|f16c' /proc/cpuinfo | sort -u | tr '\n' ' ')
printf '{"bench":"header","command":"%s","commit":"%s","time":"%s","cpu":"%s","flags":"%s","nproc":%s}\n' \
  "$command_line" "$commit" "$(date -Is)" "$cpu" "$flags" "$(nproc)" | tee -a "$JSONL"

run() {  # run PART CASE burst-bench-args...
  local part=$1 id=$2; shift 2
  echo "== part $part case $id: burst-bench $*" >&2
  "$BENCH" "$@" | grep -v '"bench":"comm"' | sed "s/^{/{\"part\":\"$part\",\"case\":\"$id\",/" | tee -a "$JSONL"
}

if [[ ,$parts, == *,e,* ]]; then
  ns="4096 16384"; reps=$repeats; warm=1
  if ((quick)); then ns=2048; reps=1; warm=0; fi
  for n in $ns; do for d in 64 128; do for h in 1 8; do for t in 1 2; do
    # H = 8 at N = 16384 is 8x the H = 1 work; one timed call keeps the part near 15 min.
    r=$reps; w=$warm
    if ((n >= 16384 && h == 8)); then r=1; w=0; fi
    run e "n$n-d$d-h$h-t$t" --seq-len "$n" --head-dim "$d" --heads "$h" --threads "$t" \
      --gemm --repeats "$r" --warmup "$w" --mode both
  done; done; done; done
fi
if [[ ,$parts, == *,s,* ]]; then
  for d in 64 80 96 128; do for t in 1 2; do
    run s "n1024-d$d-t$t" --seq-len 1024 --head-dim "$d" --heads 8 --threads "$t" --gemm --repeats 3 --mode both
  done; done
  for n in 256 512; do for t in 1 2; do
    run s "shard$n-t$t" --seq-len "$n" --head-dim 128 --heads 8 --threads "$t" --gemm --repeats 5 --mode both
  done; done
fi
if [[ ,$parts, == *,r,* ]]; then
  for n in 8192 16384 32768; do
    run r "rss$n" --seq-len "$n" --head-dim 128 --heads 1 --threads 2 --repeats 1 --warmup 0 --mode fwdbwd
  done
fi
echo "appended to $JSONL; now: python3 bench/kernel_report.py $out" >&2
