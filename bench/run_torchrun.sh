#!/usr/bin/env bash
# torchrun (the torch.distributed transport over gloo, 0.9) against mpirun (MPI) on one
# node: burst_attn forward+backward, causal zigzag, N = 16384, H = 8, d = 128, 1 compute
# thread per rank, through the PyTorch layer (bench/torchrun_bench.py) in all three runs:
#   t1        one process on the whole sequence (no launcher, no communication);
#   t2 mpirun   mpirun -n P --bind-to none, each rank pinned to its own CPU;
#   t2 torchrun torchrun --standalone --nproc-per-node P, each rank pinned the same way.
# Prints each time, the P-rank efficiency t1 / (P·t2) of each launcher, the
# communication wait share of the call, and the ratio t2(torchrun) / t2(mpirun).
# The JSON lines go to $OUT/torchrun.jsonl (default docs/perf) as well.
#   bench/run_torchrun.sh                       # N = 16384, P = 2, 1 warm-up + 3 calls
#   bench/run_torchrun.sh --quick --out /tmp/t  # N = 1024, 1 call: checks the script
# Options: --quick, --n N, --ranks P (2), --repeats R (3), --warmup W (1),
#   --pattern burst|ring|allgather|ulysses|auto (burst), --no-bind, --out DIR.
# Needs the library built and installed (scripts/build.sh) and mpi4py + torch.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"

quick=0 n="" ranks=2 repeats="" warmup="" pattern=burst bind=--bind out="$ROOT/docs/perf"
while (($#)); do
  case $1 in
    --quick) quick=1 ;;
    --n) n=$2; shift ;;
    --ranks) ranks=$2; shift ;;
    --repeats) repeats=$2; shift ;;
    --warmup) warmup=$2; shift ;;
    --pattern) pattern=$2; shift ;;
    --no-bind) bind="" ;;
    --out) out=$2; shift ;;
    -h|--help) sed -n '2,17p' "$0"; exit 0 ;;
    *) echo "run_torchrun.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
  shift
done
if ((quick)); then n=${n:-1024}; repeats=${repeats:-1}; warmup=${warmup:-0}
else n=${n:-16384}; repeats=${repeats:-3}; warmup=${warmup:-1}; fi
mkdir -p "$out"
JSONL="$(cd "$out" && pwd)/torchrun.jsonl"

PY=${PYTHON:-python3}
export PYTHONPATH="$ROOT/bindings/python${PYTHONPATH:+:$PYTHONPATH}"
export BURST_ATTENTION_LIBRARY=${BURST_ATTENTION_LIBRARY:-$ROOT/build/install/lib/libburst_attention.so}
[[ -f $BURST_ATTENTION_LIBRARY ]] || { echo "run_torchrun.sh: $BURST_ATTENTION_LIBRARY is missing (scripts/build.sh)" >&2; exit 1; }
export OMP_NUM_THREADS=1
MPIRUN=${MPIRUN:-mpirun}
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
# Neither run may see the other launcher's environment.
clean_env=(env -u WORLD_SIZE -u RANK -u LOCAL_RANK -u MASTER_ADDR -u MASTER_PORT -u TORCHELASTIC_RUN_ID
           -u OMPI_COMM_WORLD_SIZE -u OMPI_COMM_WORLD_RANK -u PMI_SIZE -u PMI_RANK)
bench=("$ROOT/bench/torchrun_bench.py" --tokens "$n" --threads 1 --repeats "$repeats" --warmup "$warmup"
       --pattern "$pattern" $bind)

run() {  # label, command...
  local label=$1; shift
  echo "run_torchrun.sh: $label: $*" >&2
  "${clean_env[@]}" "$@" --label "$label" >"$TMP/$label.out" 2>"$TMP/$label.err" || {
    cat "$TMP/$label.err" >&2; echo "run_torchrun.sh: $label failed" >&2; exit 1; }
  grep '^{' "$TMP/$label.out" | tail -n 1 | tee -a "$JSONL" >"$TMP/$label.json"
}

run t1 "$PY" "${bench[@]}"
run t2_mpirun "$MPIRUN" --allow-run-as-root --oversubscribe --bind-to none -n "$ranks" "$PY" "${bench[@]}"
run t2_torchrun "$PY" -m torch.distributed.run --standalone --nproc-per-node "$ranks" "${bench[@]}"

"$PY" - "$TMP" "$ranks" <<'EOF'
import json, sys
tmp, p = sys.argv[1], int(sys.argv[2])
r = {k: json.load(open(f"{tmp}/{k}.json")) for k in ("t1", "t2_mpirun", "t2_torchrun")}
t1 = r["t1"]["fwdbwd_s"]
print(f"N = {r['t1']['n']}, H = {r['t1']['heads']}, d = {r['t1']['head_dim']}, causal zigzag "
      f"{r['t1']['pattern']}, fwd+bwd, 1 thread per rank, median of {len(r['t1']['fwdbwd_all_s'])}")
print(f"t1 (1 rank)            {t1:9.3f} s")
for k, name in (("t2_mpirun", "mpirun  "), ("t2_torchrun", "torchrun")):
    x = r[k]
    assert x["world"] == p, f"{k}: world {x['world']}, expected {p}"
    print(f"t{p} {name} ({x['context']:>5})  {x['fwdbwd_s']:9.3f} s   efficiency t1/({p}·t{p}) = "
          f"{t1 / (p * x['fwdbwd_s']):.3f}   comm wait {100 * x['comm_wait_share']:.1f}% of the call")
ratio = r["t2_torchrun"]["fwdbwd_s"] / r["t2_mpirun"]["fwdbwd_s"]
print(f"torchrun / mpirun time: {ratio:.3f}")
EOF
