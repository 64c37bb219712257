#!/usr/bin/env bash
# Communication benchmark of the patterns (BURST, RING, ALLGATHER, ULYSSES, AUTO) on
# in-process loopback ranks, with and without a simulated network. Appends JSON lines
# to $OUT/results.jsonl (a header, then burst-bench's "burst", "comm" and "calibration"
# lines, each tagged with "run" and "part") and echoes them to stdout; progress on stderr.
#   bench/run_comm.sh                        # everything (~45 min on a 2-core machine)
#   bench/run_comm.sh --quick --out /tmp/c   # smoke test: every N / 16 (b: 2048), 1 repeat, 0 warm-up
#   bench/run_comm.sh --parts a,c            # some parts only
# Options: --quick, --out DIR (default docs/comm), --parts LIST (a,b,c,d), --no-build,
#   --bandwidths "8e10 ..." (part c's list, bytes/s), --repeats R (b, c, d), --warmup W (d).
# Parts:
#   a  bytes table: P = 2, 4, 8, every pattern, fwd+bwd, N = 512·P, H = 8, d = 128,
#      non-causal (contiguous) and causal (zigzag); 1 repeat, 0 warm-up.
#   b  overlap: P = 8, N = 32768, H = 8, d = 128, BURST, non-causal, 1 thread per rank;
#      latency 5e-6 and the bandwidth calibrated so one step's K,V block takes 0.8× one
#      step's compute, single ring; then 2 groups of 4 whose inter-group links are 8×
#      slower (same intra bandwidth): the double ring (intra_group_size 4) and the single
#      ring (intra_group_size 8) on that network.
#   c  bandwidth sweep: P = 8, N = 8192, non-causal, BURST RING ALLGATHER ULYSSES,
#      latency 5e-6, bandwidth 8e10 … 1e8 bytes/s (6 points, log-spaced).
#   d  pattern table: P = 8, N = 8192, causal (zigzag) and not, the four patterns, with no
#      network and on the network calibrated (0.8) for this shape.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"

command_line="bench/run_comm.sh $*"
quick=0 build=1 out="$ROOT/docs/comm" parts="a,b,c,d"
bandwidths="8e10 1.45e9 1e8 2.6e7 1e7 4e6"
repeats="" warmup=""
while (($#)); do
  case $1 in
    --quick) quick=1 ;;
    --no-build) build=0 ;;
    --out) out=$2; shift ;;
    --parts) parts=$2; shift ;;
    --bandwidths) bandwidths=$2; shift ;;
    --repeats) repeats=$2; shift ;;
    --warmup) warmup=$2; shift ;;
    -h|--help) sed -n '2,26p' "$0"; exit 0 ;;
    *) echo "run_comm.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
  shift
done
mkdir -p "$out"
out=$(cd "$out" && pwd)
JSONL="$out/results.jsonl"

# Sizes: --quick divides every N by 16 (part b: 32768 -> 2048) and runs 1 call, no warm-up.
# Parts b and c: 1 timed call, no warm-up (b's calls take minutes); d: 1 warm-up, 2 timed.
if ((quick)); then
  scale=16; repeats_d=${repeats:-1}; warmup_d=${warmup:-0}
else
  scale=1; repeats_d=${repeats:-2}; warmup_d=${warmup:-1}
fi
repeats=${repeats:-1}
n() { echo $(($1 / scale)); }

if ((build)); then
  echo "run_comm.sh: swift build -c release --product burst-bench" >&2
  swift build -c release --product burst-bench >&2
fi
BIN="$ROOT/.build/release/burst-bench"
[[ -x $BIN ]] || { echo "run_comm.sh: $BIN is missing (build without --no-build)" >&2; exit 1; }

RUN="$(date -u +%Y%m%dT%H%M%SZ)-$$"
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
failures=0

# bench PART ARGS...: runs burst-bench, tags its JSON lines with the run and part,
# appends them to the JSONL and stdout. The last output stays in $TMP/last.
# A failing run is recorded as an "error" line and the sweep goes on.
bench() {
  local part=$1; shift
  echo "run_comm.sh [$part] burst-bench $*" >&2
  local t0=$SECONDS
  if "$BIN" "$@" >"$TMP/raw" 2>"$TMP/err"; then
    sed -n "s/^{/{\"run\":\"$RUN\",\"part\":\"$part\",/p" "$TMP/raw" >"$TMP/last"
  else
    local msg
    msg=$(tail -n 3 "$TMP/err" | tr '\n"\\' '  /')
    echo "{\"run\":\"$RUN\",\"part\":\"$part\",\"bench\":\"error\",\"args\":\"$*\",\"message\":\"$msg\"}" >"$TMP/last"
    echo "run_comm.sh [$part] FAILED: $msg" >&2
    failures=$((failures + 1))
  fi
  tee -a "$JSONL" <"$TMP/last"
  echo "run_comm.sh [$part] $((SECONDS - t0)) s" >&2
}

# The "network" of the last comm line bench wrote (the calibrated one).
last_network() {
  python3 -c 'import json,sys
lines=[json.loads(l) for l in open(sys.argv[1]) if l.strip()]
nets=[l["network"] for l in lines if l.get("bench")=="comm" and l.get("network")]
print(nets[-1] if nets else "")' "$TMP/last"
}
# One item of a SimulatedNetwork description.
net_item() { tr ',' '\n' <<<"$1" | sed -n "s/^$2=//p"; }

# Header: when, which commit, which CPU, which kernels (the tile GEMM line gives the code path).
"$BIN" --gemm --ranks 1 --seq-len 128 --heads 1 --repeats 1 --warmup 0 --mode fwd >"$TMP/gemm"
python3 - "$RUN" "$command_line" "$quick" "$TMP/gemm" >>"$JSONL" <<'EOF'
import json, subprocess, sys, datetime, os
run, command, quick, gemm = sys.argv[1:5]
def sh(*a):
    try: return subprocess.run(a, capture_output=True, text=True).stdout.strip()
    except OSError: return ""
cpu = next((l.split(":", 1)[1].strip() for l in sh("lscpu").splitlines() if l.startswith("Model name")), "")
tile = next((json.loads(l) for l in open(gemm) if '"tile_gemm"' in l), {})
print(json.dumps({"run": run, "part": "header", "bench": "header",
    "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    "git_commit": sh("git", "rev-parse", "HEAD"), "git_dirty": bool(sh("git", "status", "--porcelain", "--untracked-files=no")),
    "cpu": cpu, "cpus": os.cpu_count(), "code_path": tile.get("code_path"), "tile_gemm_gflops": tile.get("gflops"),
    "command": command, "quick": quick == "1", "burst_progress": os.environ.get("BURST_PROGRESS")}))
EOF
tail -n 1 "$JSONL"

has() { [[ ",$parts," == *",$1,"* ]]; }
common=(--heads 8 --head-dim 128 --threads 1 --mode fwdbwd)

if has a; then
  for p in 2 4 8; do
    for pat in burst ring allgather ulysses auto; do
      bench a "${common[@]}" --ranks $p --seq-len $(n $((512 * p))) --pattern $pat --repeats 1 --warmup 0
      bench a "${common[@]}" --ranks $p --seq-len $(n $((512 * p))) --pattern $pat --repeats 1 --warmup 0 \
        --causal --distribution zigzag
    done
  done
fi

if has b; then
  nb=$(n 32768)
  bench b "${common[@]}" --ranks 8 --seq-len $nb --pattern burst --repeats $repeats --warmup 0 \
    --network "latency=5e-6" --calibrate-transfer 0.8 --intra-group-size 8
  net=$(last_network)
  if [[ -n $net ]]; then
    bw=$(net_item "$net" bandwidth)
    inter=$(python3 -c "print($bw / 8)")
    two="latency=5e-6,bandwidth=$bw,inter_bandwidth=$inter,group=4"
    bench b "${common[@]}" --ranks 8 --seq-len $nb --pattern burst --repeats $repeats --warmup 0 \
      --network "$two" --intra-group-size 4
    bench b "${common[@]}" --ranks 8 --seq-len $nb --pattern burst --repeats $repeats --warmup 0 \
      --network "$two" --intra-group-size 8
  fi
fi

if has c; then
  for pat in burst ring allgather ulysses; do
    for bw in $bandwidths; do
      bench c "${common[@]}" --ranks 8 --seq-len $(n 8192) --pattern $pat --repeats $repeats --warmup 0 \
        --network "latency=5e-6,bandwidth=$bw"
    done
  done
fi

if has d; then
  nd=$(n 8192)
  # The calibrated network of this shape (non-causal BURST; the same for every row).
  bench d "${common[@]}" --ranks 8 --seq-len $nd --pattern burst --repeats $repeats_d --warmup $warmup_d \
    --network "latency=5e-6" --calibrate-transfer 0.8
  net=$(last_network)
  for causal in off on; do
    mask=(); [[ $causal == on ]] && mask=(--causal --distribution zigzag)
    for pat in burst ring allgather ulysses; do
      bench d "${common[@]}" --ranks 8 --seq-len $nd --pattern $pat --repeats $repeats_d --warmup $warmup_d "${mask[@]}"
      if [[ -n $net ]] && ! [[ $causal == off && $pat == burst ]]; then
        bench d "${common[@]}" --ranks 8 --seq-len $nd --pattern $pat --repeats $repeats_d --warmup $warmup_d "${mask[@]}" \
          --network "$net"
      fi
    done
  done
fi

echo "run_comm.sh: results in $JSONL (run $RUN); table: python3 bench/comm_report.py $out" >&2
((failures == 0)) || { echo "run_comm.sh: $failures run(s) failed (see the \"error\" lines)" >&2; exit 1; }
