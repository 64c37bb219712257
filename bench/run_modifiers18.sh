#!/usr/bin/env bash
# Issue 18's benchmark: what attention sinks and logit soft-capping cost, against
# plain attention, at the kernel tables' shape (N = 4096, H = 8, d = 128, causal,
# batch 1, one rank). Each configuration is one `burst-bench --modifiers` process
# that times five plans — plain, sinks, softcap (cap 50, Gemma 2's), both, and
# softcap_tight (cap 1: these inputs' logits reach it, so the kernels' tanh takes its
# general branch instead of the short series it uses when |x/c| <= 1/4) — round-robin, forward and forward+backward, one call of each per round in a
# rotating order (ModifierBench.swift), and prints their medians and the ratios to
# plain from the same run. Target: every ratio <= 1.05.
#   configurations: fp32 on this CPU's path with 1 and 2 threads; fp32 on the AVX2
#   path (LIBXSMM_TARGET=hsw) with 1 thread; bf16 storage with DEFAULT products
#   (bf16 products where the CPU has them) with 1 thread.
#   bench/run_modifiers18.sh                 # ~6 min
#   bench/run_modifiers18.sh --repeats 3     # fewer rounds (default 9)
# Options: --repeats R, --n N, --out DIR (default docs/perf/modifiers18), --no-build.
# Writes $OUT/modifiers18.jsonl (appends) and $OUT/modifiers18.md (the latest sweep).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
repeats=9 n=4096 out="$ROOT/docs/perf/modifiers18" build=1
while (($#)); do
  case $1 in
    --repeats) repeats=$2; shift ;;
    --n) n=$2; shift ;;
    --out) out=$2; shift ;;
    --no-build) build=0 ;;
    -h|--help) sed -n '2,16p' "$0"; exit 0 ;;
    *) echo "run_modifiers18.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
  shift
done
if ((build)); then
  ./scripts/setup.sh >&2
  swift build -c release --product burst-bench >&2
fi
bench="$ROOT/.build/release/burst-bench"
mkdir -p "$out"
jsonl="$out/modifiers18.jsonl"
sweep=$(date +%Y%m%dT%H%M%S)-$$
cpu=$(lscpu | sed -n 's/^Model name: *//p' | head -1)
flags=$(grep -o -w -E 'avx512f|avx512_bf16|avx2' /proc/cpuinfo | sort -u | tr '\n' ' ')
echo "{\"bench\":\"sweep\",\"sweep\":\"$sweep\",\"commit\":\"$(git rev-parse --short HEAD)\",\"cpu\":\"$cpu\",\"flags\":\"$flags\",\"date\":\"$(date -u +%FT%TZ)\"}" >> "$jsonl"
run() {  # label, env..., then burst-bench options after --
  local label=$1; shift
  local envs=()
  while [ "$1" != "--" ]; do envs+=("$1"); shift; done; shift
  echo "== $label" >&2
  env "${envs[@]}" "$bench" --modifiers --seq-len "$n" --heads 8 --head-dim 128 --causal --warmup 1 --repeats "$repeats" "$@" \
    | sed "s/^{/{\"sweep\":\"$sweep\",\"label\":\"$label\",/" | tee -a "$jsonl"
}
run "fp32 native, 1 thread" BURST_CONFIG=native -- --threads 1
run "fp32 native, 2 threads" BURST_CONFIG=native -- --threads 2
run "fp32 AVX2, 1 thread" LIBXSMM_TARGET=hsw -- --threads 1
run "bf16 default, 1 thread" BURST_CONFIG=native -- --threads 1 --dtype bf16

python3 - "$jsonl" "$sweep" > "$out/modifiers18.md" <<'PY'
import json, sys
path, sweep = sys.argv[1:]
rows = [json.loads(l) for l in open(path) if l.strip()]
head = next(r for r in rows if r.get("bench") == "sweep" and r["sweep"] == sweep)
rows = [r for r in rows if r.get("sweep") == sweep and r.get("bench") == "modifiers"]
print("# Sinks and soft-capping: cost against plain attention (issue 18)\n")
print(f"`bench/run_modifiers18.sh`, sweep {sweep}, commit {head['commit']}, {head['cpu']} ({head['flags'].strip()}), {head['date']}.")
print("N = 4096, H = 8, d = 128, causal, batch 1, one rank; softcap 50 (softcap_tight: 1, logits near the cap); medians of "
      f"{rows[0]['runs']} round-robin rounds per variant; ratio = variant / plain from the same run. Target: <= 1.05.\n")
print("| configuration | code path | products | variant | fwd ms | fwd+bwd ms | fwd ratio | fwd+bwd ratio |")
print("|---|---|---|---|--:|--:|--:|--:|")
for r in rows:
    mark = lambda x: f"{x:.3f}" + ("" if x <= 1.05 else " ✗")
    print(f"| {r['label']} | {r['code_path']} | {r['products']} | {r['variant']} | {r['fwd_median_s']*1e3:.1f} | "
          f"{r['fwdbwd_median_s']*1e3:.1f} | {mark(r['fwd_ratio_to_plain'])} | {mark(r['fwdbwd_ratio_to_plain'])} |")
PY
cat "$out/modifiers18.md"
