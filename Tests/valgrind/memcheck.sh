#!/usr/bin/env bash
# valgrind memcheck of one MPI program at one rank count, one valgrind per rank:
#
#   memcheck.sh [--expect-leak BYTES] RANKS MPI_BARE OUTDIR PROGRAM [ARGS...]
#
# Suppressions: OUTDIR/openmpi-npRANKS.supp, generated on first use from MPI_BARE (a
# bare MPI_Init/MPI_Finalize program, Tests/valgrind/mpi_bare.c) run at the same rank
# count under --gen-suppressions=all, so only what OpenMPI itself loses (and the errors
# it makes) in its init and finalize is suppressed; and Tests/valgrind/swift-runtime.supp
# (documented entries, each with its reason).
#
# Prints one line: the program, the rank count, and over all ranks the errors and the
# definitely / indirectly / possibly lost bytes. Exit status: 0 if mpirun succeeded and
# every rank has 0 errors and 0 bytes definitely, indirectly and possibly lost; 1
# otherwise. With --expect-leak BYTES (the negative control): 0 only if every rank
# reports at least BYTES definitely lost.
#
# mpirun is $MPIEXEC (default: mpirun); valgrind is $VALGRIND (default: valgrind).
set -euo pipefail
expect_leak=""
if [ "${1:-}" = --expect-leak ]; then expect_leak=$2; shift 2; fi
if [ $# -lt 4 ]; then sed -n '2,18p' "$0" >&2; exit 2; fi
ranks=$1 bare=$2 out=$3 program=$4
shift 4
here=$(cd "$(dirname "$0")" && pwd)
mpiexec=${MPIEXEC:-mpirun}
valgrind=${VALGRIND:-valgrind}
mkdir -p "$out"
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
launch=("$mpiexec" --oversubscribe --bind-to none -n "$ranks")
kinds=definite,indirect,possible

# OpenMPI's own init/finalize losses at this rank count, as a suppression file.
supp=$out/openmpi-np$ranks.supp
if [ ! -s "$supp" ]; then
  gen=$(mktemp -d "$out/gen-np$ranks.XXXXXX")
  "${launch[@]}" "$valgrind" --leak-check=full --show-leak-kinds=$kinds --gen-suppressions=all \
    --log-file="$gen/bare.%p.log" "$bare" >"$gen/bare.out" 2>&1 \
    || { echo "memcheck.sh: the bare MPI program failed under valgrind (see $gen)" >&2; exit 1; }
  # Valgrind writes each suppression as a {...} block between its own log lines; name
  # them and drop duplicates (the ranks lose the same things). A leak's kind is widened
  # to every kind: the same OpenMPI block (e.g. orte_init's strdup'd strings behind
  # unsymbolised plugin frames) is "definitely" lost in one run and "possibly" in the
  # next, depending on whether a stale pointer into it is still on the stack at exit
  # (seen once in memcheck_c_variants_np2: 689 bytes "possibly lost", all under MPI_Init).
  awk -v tag="openmpi_np$ranks" '
    /^\{$/ { body = ""; inside = 1; next }
    inside && /^\}$/ { inside = 0; if (!(body in seen)) { seen[body] = 1; n++; printf "{\n   %s_%d\n%s}\n", tag, n, body } next }
    inside && /<insert_a_suppression_name_here>/ { next }
    inside && /match-leak-kinds:/ { body = body "   match-leak-kinds: definite,indirect,possible\n"; next }
    inside { body = body $0 "\n" }
  ' "$gen"/bare.*.log >"$gen/openmpi.supp"
  mv "$gen/openmpi.supp" "$supp.tmp.$$" && mv "$supp.tmp.$$" "$supp"
  rm -rf "$gen"
fi

name=$(basename "$program")-np$ranks
rm -f "$out/$name".*.log
status=0
"${launch[@]}" "$valgrind" --leak-check=full --show-leak-kinds=$kinds --errors-for-leak-kinds=$kinds \
  --error-exitcode=9 --suppressions="$supp" --suppressions="$here/swift-runtime.supp" \
  --log-file="$out/$name.%p.log" "$program" "$@" >"$out/$name.out" 2>&1 || status=$?

# Per rank: "ERROR SUMMARY: n errors" and the LEAK SUMMARY lines (absent when nothing
# was allocated and lost: then 0).
python3 - "$name" "$ranks" "$status" "${expect_leak:-}" "$out/$name".*.log <<'EOF'
import re, sys
name, ranks, status, expect = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
logs = sys.argv[5:]
def number(pattern, text):
    m = re.search(pattern, text)
    return int(m.group(1).replace(",", "")) if m else 0
per = []
for path in logs:
    text = open(path, errors="replace").read()
    if "ERROR SUMMARY" not in text:
        per.append(None)   # valgrind did not finish on this rank
        continue
    per.append({k: number(p, text) for k, p in (
        ("errors", r"ERROR SUMMARY: ([\d,]+) errors"),
        ("definite", r"definitely lost: ([\d,]+) bytes"),
        ("indirect", r"indirectly lost: ([\d,]+) bytes"),
        ("possible", r"possibly lost: ([\d,]+) bytes"),
        ("suppressed", r"suppressed: ([\d,]+) bytes"))})
done = [p for p in per if p]
total = {k: sum(p[k] for p in done) for k in ("errors", "definite", "indirect", "possible", "suppressed")}
print(f"{name:<18} ranks {ranks}  mpirun exit {status:<2}  errors {total['errors']:<3} "
      f"definitely lost {total['definite']:>6} B  indirectly {total['indirect']:>6} B  "
      f"possibly {total['possible']:>6} B  (suppressed {total['suppressed']} B)")
if len(done) != ranks:
    print(f"  {name}: {len(done)} of {ranks} valgrind logs complete", file=sys.stderr)
    sys.exit(1)
if expect:
    ok = all(p["definite"] >= int(expect) for p in done)
    print(f"  negative control: {'reported' if ok else 'NOT reported'} ({expect} B expected definitely lost on every rank)")
    sys.exit(0 if ok else 1)
clean = status == 0 and all(p[k] == 0 for p in done for k in ("errors", "definite", "indirect", "possible"))
sys.exit(0 if clean else 1)
EOF
