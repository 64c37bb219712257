#!/usr/bin/env bash
# Parallel efficiency of forward+backward under MPI (the issue's target: `mpirun -n 2`,
# 1 thread per rank, N = 16384, d = 128, H = 8: efficiency >= 0.90 and communication
# wait <= 5% of the call). In one invocation, for each case:
#   t1 = burst-bench --ranks 1 --threads 1 on the whole sequence (one per mask, shared),
#   t2 = scripts/mpirun.sh -n 2 --bind-to core burst-bench --mpi --threads 1,
# then one "mpi_efficiency" line: efficiency = t1 / (2·t2) (medians of fwd+bwd calls) and
# comm_wait_share = max over ranks of (fwd + bwd comm_wait_s) / (fwd + bwd total_s) of the
# last call. Cases: BURST and RING, non-causal (contiguous) and causal (zigzag); BURST
# non-causal again with BURST_PROGRESS=0 (no polling of transfers between tiles).
# Lines are appended to $OUT/results.jsonl (tagged "part":"mpi") and echoed to stdout.
#   bench/run_mpi_efficiency.sh                 # N = 16384, 1 warm-up + 2 calls (~10 min)
#   bench/run_mpi_efficiency.sh --quick --out /tmp/c   # N = 2048, 1 call, no warm-up
# Options: --quick, --out DIR (default docs/comm), --n N, --repeats R (2), --warmup W (1),
#   --no-build.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"

command_line="bench/run_mpi_efficiency.sh $*"
quick=0 build=1 out="$ROOT/docs/comm" n="" repeats="" warmup=""
while (($#)); do
  case $1 in
    --quick) quick=1 ;;
    --no-build) build=0 ;;
    --out) out=$2; shift ;;
    --n) n=$2; shift ;;
    --repeats) repeats=$2; shift ;;
    --warmup) warmup=$2; shift ;;
    -h|--help) sed -n '2,17p' "$0"; exit 0 ;;
    *) echo "run_mpi_efficiency.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
  shift
done
if ((quick)); then n=${n:-2048}; repeats=${repeats:-1}; warmup=${warmup:-0}
else n=${n:-16384}; repeats=${repeats:-2}; warmup=${warmup:-1}; fi
mkdir -p "$out"
out=$(cd "$out" && pwd)
JSONL="$out/results.jsonl"

if ((build)); then
  echo "run_mpi_efficiency.sh: swift build -c release --product burst-bench" >&2
  swift build -c release --product burst-bench >&2
fi
BIN="$ROOT/.build/release/burst-bench"
[[ -x $BIN ]] || { echo "run_mpi_efficiency.sh: $BIN is missing" >&2; exit 1; }

RUN="$(date -u +%Y%m%dT%H%M%SZ)-$$"
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
shape=(--seq-len "$n" --heads 8 --head-dim 128 --threads 1 --mode fwdbwd --repeats "$repeats" --warmup "$warmup")

# tag CASE FILE: the file's JSON lines with run, part and case, appended and echoed.
tag() { sed -n "s/^{/{\"run\":\"$RUN\",\"part\":\"mpi\",\"case\":\"$1\",/p" "$2" | tee -a "$JSONL"; }

python3 - "$RUN" "$command_line" "$n" >>"$JSONL" <<'EOF'
import json, subprocess, sys, datetime, os
run, command, n = sys.argv[1:4]
def sh(*a):
    try: return subprocess.run(a, capture_output=True, text=True).stdout.strip()
    except OSError: return ""
cpu = next((l.split(":", 1)[1].strip() for l in sh("lscpu").splitlines() if l.startswith("Model name")), "")
print(json.dumps({"run": run, "part": "mpi", "bench": "header",
    "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    "git_commit": sh("git", "rev-parse", "HEAD"), "git_dirty": bool(sh("git", "status", "--porcelain", "--untracked-files=no")),
    "cpu": cpu, "cpus": os.cpu_count(), "mpirun": sh("mpirun", "--version").splitlines()[0] if sh("mpirun", "--version") else "",
    "command": command, "seq_len": int(n)}))
EOF
tail -n 1 "$JSONL"

# One rank on the whole sequence, per mask (the library on a group of 1: no communication).
for mask in noncausal causal; do
  extra=(); [[ $mask == causal ]] && extra=(--causal)
  echo "run_mpi_efficiency.sh: t1 $mask: burst-bench --ranks 1 ${shape[*]} ${extra[*]}" >&2
  BURST_PROGRESS=1 "$BIN" --ranks 1 "${shape[@]}" "${extra[@]}" >"$TMP/t1_$mask"
  tag "t1_$mask" "$TMP/t1_$mask" >/dev/null
done

# case name, pattern, mask, progress
cases=("burst_noncausal burst noncausal 1" "burst_causal burst causal 1"
       "ring_noncausal ring noncausal 1" "ring_causal ring causal 1"
       "burst_noncausal_noprogress burst noncausal 0")
for c in "${cases[@]}"; do
  read -r name pattern mask progress <<<"$c"
  extra=(); [[ $mask == causal ]] && extra=(--causal --distribution zigzag)
  echo "run_mpi_efficiency.sh: $name: mpirun -n 2 burst-bench --mpi --pattern $pattern ${shape[*]} ${extra[*]} (BURST_PROGRESS=$progress)" >&2
  BURST_PROGRESS=$progress "$ROOT/scripts/mpirun.sh" -n 2 --bind-to core -x BURST_PROGRESS \
    "$BIN" --mpi --pattern "$pattern" "${shape[@]}" "${extra[@]}" >"$TMP/t2_$name"
  tag "$name" "$TMP/t2_$name" >/dev/null
  python3 - "$RUN" "$name" "$pattern" "$mask" "$progress" "$TMP/t1_$mask" "$TMP/t2_$name" <<'EOF' | tee -a "$JSONL"
import json, sys
run, name, pattern, mask, progress, f1, f2 = sys.argv[1:8]
def lines(f): return [json.loads(l) for l in open(f) if l.startswith("{")]
t1 = next(l for l in lines(f1) if l["bench"] == "burst")
two = lines(f2)
t2 = next(l for l in two if l["bench"] == "burst")
ranks = [l for l in two if l["bench"] == "rank"]
share = [(r["fwd_comm_wait_s"] + r["bwd_comm_wait_s"]) / (r["fwd_total_s"] + r["bwd_total_s"]) for r in ranks]
eff = t1["median_s"] / (2 * t2["median_s"])
print(json.dumps({"run": run, "part": "mpi", "case": name, "bench": "mpi_efficiency", "pattern": pattern,
    "causal": mask == "causal", "distribution": t2["distribution"], "progress": progress == "1",
    "seq_len": t2["seq_len"], "heads": t2["heads"], "head_dim": t2["head_dim"], "threads": 1, "ranks": t2["ranks"],
    "runs": t2["runs"], "t1_s": t1["median_s"], "t2_s": t2["median_s"], "efficiency": eff,
    "comm_wait_share": max(share), "comm_wait_share_per_rank": share,
    "cpu_s_per_call_per_rank": [r["cpu_s_per_call"] for r in ranks],
    "target_efficiency_ok": eff >= 0.90, "target_comm_wait_ok": max(share) <= 0.05}))
EOF
done
echo "run_mpi_efficiency.sh: results in $JSONL (run $RUN)" >&2
