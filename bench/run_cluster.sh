#!/usr/bin/env bash
# The two-node cluster of scripts/cluster.sh (issue 20) against the simulated network's
# prediction. P = 4 as 2 nodes x 2 ranks, N = 16384, H = 8, d = 128, causal zigzag,
# forward + backward, 1 thread per rank, at each --rates link rate (tbf on the
# namespace's lo; default 10gbit 2500mbit 1gbit), four cases:
#   single     BURST, intra_group_size 4 (one ring over both nodes)
#   double     BURST, intra_group_size 0 (the double ring: 2 groups of 2, detected)
#   ulysses    ULYSSES
#   allgather  ALLGATHER
# For each rate: first bench/cluster_probe.c on the cluster (one K,V block's bytes
# exchanged by all pairs at once inside the nodes and across them; 1-byte ping-pongs),
# then each case twice:
#   measured   scripts/cluster.sh --rate R -- burst-bench --mpi ... (every rank's
#              counters, comm wait included)
#   predicted  burst-bench --ranks 4 --network "latency=Li,bandwidth=Bi,inter_latency=Le,
#              inter_bandwidth=Be,group=2" (in-process loopback ranks, the same shape)
# with Li, Bi, Le from the probe at that rate (intra-node latency and per-flow bandwidth
# of vader with every rank transferring at once; inter-node latency) and the link's
# capacity L = min(R, C): the tbf rate R, or C = what TCP over lo carried in the probe
# (all four flows) if that is lower (the CPU's limit). tbf on lo is one bucket for both
# directions and every flow. --model says how the prediction models that:
#   link     (default) inter_port=link, inter_bandwidth=L: every inter-node message
#            queues for one port of capacity L in both directions — the bucket itself
#            (SimulatedNetwork's `link` port, added for this comparison);
#   perflow  the first approximation: each rank keeps its own inter-node port (the
#            simulated network's default) with L / F, F = the ranks that send across
#            nodes at once (single ring: 2; the other cases: 4).
# Lines go to $OUT/results.jsonl (tagged run, part "cluster", rate, case, kind), then
# bench/cluster_report.py writes $OUT/cluster20.md and prints the table: per case the
# fwd+bwd time and the exposed communication wait (max over ranks), measured and
# predicted, and predicted/measured.
#   bench/run_cluster.sh                 # the sweep: 1 warm-up + 2 timed calls (~40 min on 2 cores)
#   bench/run_cluster.sh --quick         # N = 2048, 1 call, no warm-up, into build/cluster20-quick
# Options: --quick, --out DIR (default docs/perf/cluster20; --quick: build/cluster20-quick),
#   --rates "10gbit 2500mbit 1gbit", --cases "single double ulysses allgather", --n N,
#   --repeats R (2), --warmup W (1), --model link|perflow (link), --no-build.
#   Needs root (scripts/cluster.sh).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"

command_line="bench/run_cluster.sh $*"
quick=0 build=1 out="" n="" repeats="" warmup="" model=link
rates="10gbit 2500mbit 1gbit" cases="single double ulysses allgather"
while (($#)); do
  case $1 in
    --quick) quick=1 ;;
    --no-build) build=0 ;;
    --out) out=$2; shift ;;
    --rates) rates=$2; shift ;;
    --cases) cases=$2; shift ;;
    --n) n=$2; shift ;;
    --repeats) repeats=$2; shift ;;
    --warmup) warmup=$2; shift ;;
    --model) model=$2; shift ;;
    -h|--help) sed -n '2,40p' "$0"; exit 0 ;;
    *) echo "run_cluster.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
  shift
done
if ((quick)); then n=${n:-2048}; repeats=${repeats:-1}; warmup=${warmup:-0}; out=${out:-$ROOT/build/cluster20-quick}
else n=${n:-16384}; repeats=${repeats:-2}; warmup=${warmup:-1}; out=${out:-$ROOT/docs/perf/cluster20}; fi
P=4 H=8 D=128 NODES=2 RPN=2
mkdir -p "$out"
out=$(cd "$out" && pwd)
JSONL="$out/results.jsonl"

if ((build)); then
  echo "run_cluster.sh: swift build -c release --product burst-bench" >&2
  swift build -c release --product burst-bench >&2
fi
BIN="$ROOT/.build/release/burst-bench"
[[ -x $BIN ]] || { echo "run_cluster.sh: $BIN is missing" >&2; exit 1; }
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
mpicc -O2 -std=c99 -o "$TMP/cluster_probe" "$ROOT/bench/cluster_probe.c"
CLUSTER=("$ROOT/scripts/cluster.sh" --nodes $NODES --ranks-per-node $RPN --timeout 3600)

RUN="$(date -u +%Y%m%dT%H%M%SZ)-$$"
BURST_CLUSTER_MODEL=$model python3 - "$RUN" "$command_line" "$n" "$rates" "$cases" "$repeats" "$warmup" >>"$JSONL" <<'EOF'
import json, subprocess, sys, datetime, os
run, command, n, rates, cases, repeats, warmup = sys.argv[1:8]
def sh(*a):
    try: return subprocess.run(a, capture_output=True, text=True).stdout.strip()
    except OSError: return ""
cpu = next((l.split(":", 1)[1].strip() for l in sh("lscpu").splitlines() if l.startswith("Model name")), "")
print(json.dumps({"run": run, "part": "cluster", "bench": "header",
    "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    "git_commit": sh("git", "rev-parse", "HEAD"), "git_dirty": bool(sh("git", "status", "--porcelain", "--untracked-files=no")),
    "cpu": cpu, "cpus": os.cpu_count(), "mpirun": (sh("mpirun", "--version").splitlines() or [""])[0],
    "kernel": sh("uname", "-r"), "load_average": os.getloadavg(),
    "command": command, "seq_len": int(n), "ranks": 4, "nodes": 2, "heads": 8, "head_dim": 128,
    "rates": rates.split(), "cases": cases.split(), "repeats": int(repeats), "warmup": int(warmup),
    "model": os.environ.get("BURST_CLUSTER_MODEL", "")}))
EOF
tail -n 1 "$JSONL"

# tag RATE CASE KIND FILE: the file's JSON lines with run, part, rate, case and kind.
tag() { sed -n "s/^{/{\"run\":\"$RUN\",\"part\":\"cluster\",\"rate\":\"$1\",\"case\":\"$2\",\"kind\":\"$3\",/p" "$4" | tee -a "$JSONL"; }
# rate_bytes RATE: tc's units -> bytes/s
rate_bytes() {
  awk -v r="$1" 'BEGIN { n = r + 0; u = tolower(substr(r, length(n "") + 1))
    m["bit"] = 1; m["kbit"] = 1e3; m["mbit"] = 1e6; m["gbit"] = 1e9; m["tbit"] = 1e12
    if (!(u in m)) exit 1; printf "%.6g", n * m[u] / 8 }'
}
field() { python3 -c 'import json,sys; print(json.loads(open(sys.argv[1]).read().splitlines()[-1])[sys.argv[2]])' "$1" "$2"; }

shape=(--seq-len "$n" --heads $H --head-dim $D --threads 1 --causal --distribution zigzag --mode fwdbwd
       --repeats "$repeats" --warmup "$warmup")
block=$((2 * H * (n / P) * D * 4))   # one K,V block of a rank, fp32
for rate in $rates; do
  R=$(rate_bytes "$rate") || { echo "run_cluster.sh: bad rate $rate" >&2; exit 2; }
  echo "run_cluster.sh: $rate: probe ($block bytes)" >&2
  "${CLUSTER[@]}" --rate "$rate" -- "$TMP/cluster_probe" "$block" 3 >"$TMP/probe" 2>"$TMP/probe.err" ||
    { cat "$TMP/probe.err" >&2; exit 1; }
  grep '^{' "$TMP/probe" >"$TMP/probe.json"
  tag "$rate" probe probe "$TMP/probe.json" >/dev/null
  li=$(field "$TMP/probe.json" intra_latency) bi=$(field "$TMP/probe.json" intra_bandwidth)
  le=$(field "$TMP/probe.json" inter_latency) be=$(field "$TMP/probe.json" inter_bandwidth)
  flows=$(field "$TMP/probe.json" inter_flows)
  link=$(awk -v r="$R" -v b="$be" -v f="$flows" 'BEGIN { c = b * f; printf "%.6g", (c < r ? c : r) }')
  echo "run_cluster.sh: $rate: intra ${bi} B/s ${li} s, inter ${be} B/s per flow x ${flows} ${le} s; link ${link} B/s" >&2
  for c in $cases; do
    case $c in
      single)    args=(--pattern burst --intra-group-size $P); F=$NODES ;;
      double)    args=(--pattern burst --intra-group-size 0); F=$P ;;
      ulysses)   args=(--pattern ulysses); F=$P ;;
      allgather) args=(--pattern allgather); F=$P ;;
      *) echo "run_cluster.sh: unknown case $c" >&2; exit 2 ;;
    esac
    echo "run_cluster.sh: $rate $c: measured (cluster, --mpi)" >&2
    "${CLUSTER[@]}" --rate "$rate" -- "$BIN" --mpi "${shape[@]}" "${args[@]}" >"$TMP/m" 2>"$TMP/m.err" ||
      { cat "$TMP/m.err" >&2; exit 1; }
    tag "$rate" "$c" measured "$TMP/m" >/dev/null
    case $model in
      link) net=$(awk -v li="$li" -v bi="$bi" -v le="$le" -v l="$link" -v g=$RPN \
        'BEGIN { printf "latency=%.6g,bandwidth=%.6g,inter_latency=%.6g,inter_bandwidth=%.6g,group=%d,inter_port=link", li, bi, le, l, g }') ;;
      perflow) net=$(awk -v li="$li" -v bi="$bi" -v le="$le" -v l="$link" -v f="$F" -v g=$RPN \
        'BEGIN { printf "latency=%.6g,bandwidth=%.6g,inter_latency=%.6g,inter_bandwidth=%.6g,group=%d", li, bi, le, l / f, g }') ;;
      *) echo "run_cluster.sh: --model must be link or perflow" >&2; exit 2 ;;
    esac
    echo "run_cluster.sh: $rate $c: predicted (--ranks $P --network $net)" >&2
    "$BIN" --ranks $P "${shape[@]}" "${args[@]}" --network "$net" >"$TMP/p" 2>"$TMP/p.err" ||
      { cat "$TMP/p.err" >&2; exit 1; }
    tag "$rate" "$c" predicted "$TMP/p" >/dev/null
  done
done
python3 "$ROOT/bench/cluster_report.py" --run "$RUN" "$JSONL" "$out/cluster20.md"
