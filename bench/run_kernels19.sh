#!/usr/bin/env bash
# Issue 19's benchmark: three parts, each one bench/compare_torch.py process, all
# appending to $OUT/kernels19.jsonl; then bench/kernels19_report.py writes
# $OUT/kernels19.md and $OUT/kernels19.png.
#   part a  fp32 on the code path this CPU picks: ours (exact products) vs torch SDPA
#   part b  fp32 on AVX2: ours with LIBXSMM_TARGET=hsw vs torch with
#           ATEN_CPU_CAPABILITY=avx2 MKL_ENABLE_INSTRUCTIONS=AVX2 ONEDNN_MAX_CPU_ISA=AVX2
#           (set before Python starts, i.e. before torch is imported; both sides see them)
#   part c  bf16 storage: torch's bf16 SDPA vs ours fast (bf16 products) vs ours exact
#           (fp32 products), errors of all three against float64 of the same rounded inputs
# Sweep: N in {1024, 4096, 16384}, d in {64, 128}, H in {1, 8}, causal off/on, threads 1
# and 2; one warm-up and --repeats timed calls, but one call without warm-up at N = 16384.
#   bench/run_kernels19.sh                          # all parts: ~25-35 min (bench/README.md)
#   bench/run_kernels19.sh --quick                  # N = 1024, 1 repeat: ~1 min
# Options: --parts LIST (a,b,c), --quick (N = 1024 and 1 repeat; explicit options win),
#   --n LIST, --threads LIST (commas), --repeats R (default 3), --out DIR (default
#   docs/perf/kernels19), --no-build (no pip install, no builds: use what is there).
# BURST_BENCH=path picks the burst-bench binary for the tile GEMM lines (default the one
# this script builds). A part that fails becomes an "error" line and the others still run
# (exit status 1 at the end).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
command_line="bench/run_kernels19.sh $*"
parts="a,b,c" quick=0 build=1 out="$ROOT/docs/perf/kernels19" ns="" threads="" repeats=""
while (($#)); do
  case $1 in
    --parts) parts=$2; shift ;;
    --quick) quick=1 ;;
    --n) ns=$2; shift ;;
    --threads) threads=$2; shift ;;
    --repeats) repeats=$2; shift ;;
    --out) out=$2; shift ;;
    --no-build) build=0 ;;
    -h|--help) sed -n '2,20p' "$0"; exit 0 ;;
    *) echo "run_kernels19.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
  shift
done
if ((quick)); then ns=${ns:-1024}; repeats=${repeats:-1}; fi
ns=${ns:-1024,4096,16384} threads=${threads:-1,2} repeats=${repeats:-3}

if ((build)); then
  # What run_compare.sh installs and builds, nothing more.
  PIP_ROOT_USER_ACTION=ignore python3 -m pip install -q torch==2.13.0+cpu matplotlib threadpoolctl
  ./scripts/build.sh >&2
  swift build -c release --product burst-bench >&2  # the tile GEMM rate lines
fi
export PYTHONPATH="$ROOT/bindings/python${PYTHONPATH:+:$PYTHONPATH}"
export BURST_ATTENTION_LIBRARY="$ROOT/build/install/lib/libburst_attention.so"
bench=${BURST_BENCH:-$ROOT/.build/release/burst-bench}

mkdir -p "$out"
jsonl="$out/kernels19.jsonl"
sweep=$(date +%Y%m%dT%H%M%S)-$$
# One "sweep" line first: what was asked for and the commit; each
# part's header (compare_torch.py) then records versions, build_info and its environment.
python3 - "$jsonl" "$sweep" "$command_line" "$parts" "$ns" "$threads" "$repeats" <<'EOF'
import datetime, json, subprocess, sys
path, sweep, command, parts, ns, threads, repeats = sys.argv[1:]
def run(*cmd):
    try:
        return subprocess.run(cmd, capture_output=True, text=True).stdout.strip()
    except OSError:
        return ""
commit = run("git", "rev-parse", "--short", "HEAD")
if commit and run("git", "status", "--porcelain", "--untracked-files=no"):
    commit += "-dirty"
record = {"record": "sweep", "sweep_id": sweep, "time": datetime.datetime.now().astimezone()
          .isoformat(timespec="seconds"), "command": command, "commit": commit,
          "parts": parts.split(","), "N": [int(n) for n in ns.split(",")],
          "threads": [int(t) for t in threads.split(",")], "repeats": int(repeats)}
line = json.dumps(record)
print(line)
with open(path, "a", encoding="utf-8") as f:
    f.write(line + "\n")
EOF

avx2_env=(LIBXSMM_TARGET=hsw ATEN_CPU_CAPABILITY=avx2 MKL_ENABLE_INSTRUCTIONS=AVX2 ONEDNN_MAX_CPU_ISA=AVX2)
common=(--n "$ns" --threads "$threads" --repeats "$repeats" --d 64,128 --heads 1,8
        --causal off,on --one-call-from 16384 --burst-bench "$bench" --out "$jsonl"
        --tag "sweep_id=$sweep")
failed=0
part() {  # part NAME [ENV=VALUE...] -- compare_torch.py arguments...
  local name=$1 env=(); shift
  while [[ $1 != -- ]]; do env+=("$1"); shift; done; shift
  echo "== part $name: ${env[*]} bench/compare_torch.py $*" >&2
  if ! env "${env[@]}" python3 bench/compare_torch.py "${common[@]}" --tag "part=$name" "$@"; then
    failed=1
    printf '{"record":"error","sweep_id":"%s","part":"%s"}\n' "$sweep" "$name" | tee -a "$jsonl"
    echo "== part $name failed; going on" >&2
  fi
}
if [[ ,$parts, == *,a,* ]]; then
  part a -- --tag path=native --dtype f32 --compute exact
fi
if [[ ,$parts, == *,b,* ]]; then
  part b "${avx2_env[@]}" -- --tag path=avx2 --dtype f32 --compute exact
fi
if [[ ,$parts, == *,c,* ]]; then
  part c -- --tag path=native --dtype bf16 --compute exact,fast --no-sgemm
fi

python3 bench/kernels19_report.py "$out" || failed=1
exit $failed
