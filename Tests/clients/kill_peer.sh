#!/usr/bin/env bash
# A rank SIGKILLed mid-job (issue 9), under mpirun with 3 ranks, both ways
# OpenMPI can treat it:
#  1. default: mpirun tears the whole job down when a rank dies on a signal;
#     the survivors never return from the library. Checked: the job ends (no
#     hang) well within the plan's timeout.
#  2. --mca orte_abort_on_non_zero_status 0: the survivors keep running; each
#     must get BURST_ERROR_TIMEOUT (or COMMUNICATION) from its next forward
#     within the timeout plus slack, and a later call must answer at once.
#  3. (see below) an MPI error surfaces as COMMUNICATION with MPI's string.
# The bounds are hang guards (timeout + 10 s), not speed checks.
# Usage: kill_peer.sh MPIEXEC PROGRAM
set -uo pipefail
# gt A B: A > B for decimals (awk: no bc on a bare Debian)
gt() { awk -v a="$1" -v b="$2" 'BEGIN { exit !(a > b) }'; }
now() { date +%s.%N; }
elapsed() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.2f", b - a }'; }
mpiexec=$1 program=$2 timeout_s=3
out=$(mktemp)
trap 'rm -f "$out"' EXIT
fail=0

start=$(now)
timeout 60 "$mpiexec" --allow-run-as-root --oversubscribe --bind-to none -n 3 "$program" "$timeout_s" >"$out" 2>&1
rc=$?
took=$(elapsed "$start")
echo "default mpirun: exit $rc after ${took}s"; grep -E '^(rank|survivor)' "$out"
if [ "$rc" = 124 ]; then echo "FAIL: the job hung (mpirun still running after 60 s)"; fail=1; fi
if gt "$took" $((timeout_s + 10)); then echo "FAIL: the job took ${took}s to end"; fail=1; fi

start=$(now)
timeout 60 "$mpiexec" --allow-run-as-root --oversubscribe --bind-to none --mca orte_abort_on_non_zero_status 0 \
  -n 3 "$program" "$timeout_s" >"$out" 2>&1
rc=$?
took=$(elapsed "$start")
echo "survivors kept alive: exit $rc after ${took}s"; grep -E '^(rank|survivor)' "$out"
if [ "$rc" = 124 ]; then echo "FAIL: the job hung"; fail=1; fi
for r in 0 1; do
  line=$(grep -E "^survivor rank $r: BURST_" "$out" | head -1)
  again=$(grep -E "^survivor rank $r: again" "$out" | head -1)
  if ! [[ $line =~ (BURST_ERROR_TIMEOUT|BURST_ERROR_COMMUNICATION)\ after\ ([0-9.]+)\ s ]]; then
    echo "FAIL: survivor rank $r did not report TIMEOUT/COMMUNICATION: '${line}'"; fail=1; continue
  fi
  waited=${BASH_REMATCH[2]}
  if gt "$waited" $((timeout_s + 10)); then echo "FAIL: rank $r waited ${waited}s"; fail=1; fi
  if ! [[ $again =~ again\ BURST_ERROR_(TIMEOUT|COMMUNICATION)\ after\ ([0-9.]+)\ s ]] || \
     gt "${BASH_REMATCH[2]}" 1; then
    echo "FAIL: rank $r's later call on the poisoned plan: '${again}'"; fail=1
  fi
done
# 3. An MPI call that fails for real (fault injection: rank 0 sends to a rank
#    that does not exist): rank 0 gets COMMUNICATION with MPI's own error
#    string, rank 1 TIMEOUT or COMMUNICATION; both plans are poisoned after.
timeout 60 env BURST_TEST_MPI_FAULT_RANK=0 "$mpiexec" --allow-run-as-root --oversubscribe --bind-to none \
  --mca orte_abort_on_non_zero_status 0 -n 2 "$program" "$timeout_s" mpi-fault >"$out" 2>&1
echo "MPI error injected on rank 0: exit $?"; grep -E '^fault' "$out"
if ! grep -qE '^fault rank 0: BURST_ERROR_COMMUNICATION .*MPI_Isend failed: .*MPI error' "$out"; then
  echo "FAIL: rank 0 did not report COMMUNICATION with the MPI error string"; fail=1
fi
if ! grep -qE '^fault rank 1: BURST_ERROR_(TIMEOUT|COMMUNICATION)' "$out"; then echo "FAIL: rank 1 did not fail"; fail=1; fi
for r in 0 1; do
  grep -qE "^fault rank $r: again BURST_ERROR_(TIMEOUT|COMMUNICATION)" "$out" || { echo "FAIL: rank $r's plan not poisoned"; fail=1; }
done
[ "$fail" = 0 ] && echo "kill_peer: passed"
exit "$fail"
