#!/usr/bin/env bash
# A cluster of simulated nodes on one machine (issue 20): runs PROGRAM as an MPI job on
# NODES "nodes" (default 2: nodeA, nodeB) of RANKS-PER-NODE ranks each (default 2), in a
# private network namespace whose loopback is the only network, optionally rate-limited.
#
#   scripts/cluster.sh [options] [--] PROGRAM [ARGS...]
#   scripts/cluster.sh --rate 1gbit -- .build/release/burst-bench --mpi --seq-len 16384 ...
#
# What it sets up (docs/cluster.md says why):
#  - unshare -n -m -p -f: a network namespace (only `lo`, brought up), a mount namespace
#    whose /etc/hosts (bind-mounted) maps nodeA, nodeB, ... to 127.0.0.1, and a PID
#    namespace, so every process of the job dies with it (no strays after a fault or a
#    timeout). Nothing of the machine's own network or /etc/hosts is touched.
#  - mpirun --host nodeA:R,nodeB:R with its remote-shell agent (plm_rsh_agent) replaced by
#    a small script that starts the "remote" orted here, in a UTS namespace with that
#    node's hostname and with that node's own session directory (orte_tmpdir_base) and
#    shared-memory backing directory (btl_vader_backing_directory). mpirun maps the
#    ranks by slot, so ranks 0..R-1 are on nodeA, R..2R-1 on nodeB, ...; MPI_COMM_TYPE_SHARED
#    sees one node per host; ranks on one node talk through shared memory (vader) and
#    ranks on different nodes through TCP over lo (btl self,vader,tcp).
#  - --rate R: `tc qdisc add dev lo root tbf rate R burst B latency L`. Every packet on lo
#    — both directions of every inter-node TCP connection, ACKs and OpenMPI's own control
#    traffic — goes through this ONE token bucket: R is the total of all inter-node
#    traffic, not a per-direction or per-rank link (a full-duplex link of rate R carries R
#    each way; here two opposite flows get R/2 each). Shared-memory traffic does not
#    cross lo and is not shaped.
#
# Options:
#   --nodes K               simulated nodes (2..26, named nodeA, nodeB, ...; default 2)
#   --ranks-per-node R      ranks on each node (default 2)
#   --rate R                tbf rate of lo, tc units (10gbit, 2500mbit, 1gbit, 200mbit);
#                           default: no shaping
#   --burst B               tbf burst (default: max(128kb, R x 1 ms); >= 64 KiB because
#                           lo's MTU is 64 KiB)
#   --tc-latency L          tbf latency, the queue's length in time (default 50ms)
#   --timeout S             kill the whole job after S seconds (exit status 124)
#   --stacks-at S           S seconds after mpirun starts, if the job still runs, print on
#                           stderr every process left (ps) and, with gdb, the stack of
#                           every thread of each process that is not mpirun/orted/a shell
#                           (for a --timeout that should not fire: why did it hang?)
#   --fault SPEC            inject a fault during the job (see below); repeatable
#   --trigger FILE          the fault clock starts when FILE exists (the job creates it;
#                           default: when mpirun starts); exported as BURST_CLUSTER_TRIGGER
#   --mca KEY VALUE         passed to mpirun (repeatable); -x VAR likewise
#   --lo-stats              print lo's byte and packet counters before and after the job
#   --keep                  keep the state directory (/dev/shm/burst-cluster.*: agent
#                           script, hosts file, each node's session and backing dirs)
#   --verbose               print the mpirun command line and the agent's launches
# Fault SPEC: ACTION[@SECONDS][+DURATION], SECONDS after the trigger (default 0), for
# DURATION seconds (link faults; default: until the job ends). ACTION is one of
#   link-down          ip link set lo down (every TCP packet between nodes, OpenMPI's
#                      control traffic included, is lost until lo is up again)
#   link-cut           tc: lo's rate set to 8 bit/s (packets queue, nearly nothing passes)
#   kill-ranks:NODE    SIGKILL the MPI ranks of NODE (its orted lives on: the rest of the
#                      job goes on unless mpirun tears it down; add
#                      --mca orte_abort_on_non_zero_status 0 to keep the survivors alive)
#   stop-ranks:NODE    SIGSTOP the MPI ranks of NODE (a node that hangs: its sockets stay
#                      open and nothing fails, it just never answers; until the job ends)
#   kill-node:NODE     SIGKILL NODE's orted and its ranks (a node that vanishes; mpirun
#                      then ends the job)
# Every fault prints "cluster: fault ACTION at T s" on stderr (T since the trigger).
# The job sees BURST_CLUSTER_NODES, BURST_CLUSTER_RANKS_PER_NODE, BURST_CLUSTER_STATE and
# BURST_CLUSTER_TRIGGER in its environment, and can read lo's counters in /proc/net/dev:
# /proc/net/dev inside the namespace counts only this job's traffic.
# Exit status: the job's (mpirun's), 124 on --timeout, 2 on bad usage, 77 when this
# machine cannot run it (not root, no namespaces, no tc: CTest counts 77 as skipped).
# Needs root (namespaces, tc), OpenMPI 4.1 (mpirun/orted; Debian 12), iproute2.
set -uo pipefail

die() { echo "cluster.sh: $*" >&2; exit 2; }
skip() { echo "cluster.sh: cannot run here: $*" >&2; exit 77; }

# ---------------------------------------------------------------- options
ARGS_ORIG=("$@")
nodes=2 rpn=2 rate="" burst="" tclat=50ms timeout_s="" stacks_at="" trigger="" keep=0 verbose=0 lostats=0
faults=() mpi_extra=() inside=0
while (($#)); do
  case $1 in
    --nodes) nodes=$2; shift ;;
    --ranks-per-node) rpn=$2; shift ;;
    --rate) rate=$2; shift ;;
    --burst) burst=$2; shift ;;
    --tc-latency) tclat=$2; shift ;;
    --timeout) timeout_s=$2; shift ;;
    --stacks-at) stacks_at=$2; shift ;;
    --fault) faults+=("$2"); shift ;;
    --trigger) trigger=$2; shift ;;
    --mca) mpi_extra+=(--mca "$2" "$3"); shift 2 ;;
    -x) mpi_extra+=(-x "$2"); shift ;;
    --lo-stats) lostats=1 ;;
    --keep) keep=1 ;;
    --verbose) verbose=1 ;;
    --inside) inside=1 ;;                      # internal: we are in the namespaces
    -h|--help) sed -n '2,/^set -uo/p' "$0" | sed '$d'; exit 0 ;;
    --) shift; break ;;
    -*) die "unknown option $1 (see --help)" ;;
    *) break ;;
  esac
  shift
done
(($#)) || die "no program given (see --help)"
[[ $nodes =~ ^[0-9]+$ ]] && ((nodes >= 2 && nodes <= 26)) || die "--nodes must be 2..26"
[[ $rpn =~ ^[0-9]+$ ]] && ((rpn >= 1)) || die "--ranks-per-node must be >= 1"
names=()
for ((i = 0; i < nodes; ++i)); do names+=("node$(printf "\\$(printf '%03o' $((65 + i)))")"); done

# ---------------------------------------------------------------- outside: enter the namespaces
if ((!inside)); then
  ((EUID == 0)) || skip "needs root (network, mount and PID namespaces; tc)"
  for tool in unshare ip tc mpirun orted; do command -v $tool >/dev/null || skip "$tool not found"; done
  unshare --net --mount --pid --fork --mount-proc true 2>/dev/null || skip "unshare --net --mount --pid fails"
  for f in "${faults[@]}"; do
    [[ $f =~ ^(link-down|link-cut|kill-ranks:node[A-Z]|stop-ranks:node[A-Z]|kill-node:node[A-Z])(@[0-9.]+)?(\+[0-9.]+)?$ ]] ||
      die "bad --fault '$f' (ACTION[@SECONDS][+DURATION], see --help)"
  done
  # On tmpfs: the vader backing files of both nodes live here (shared memory).
  state=$(mktemp -d /dev/shm/burst-cluster.XXXXXX 2>/dev/null || mktemp -d /tmp/burst-cluster.XXXXXX)
  export BURST_CLUSTER_STATE=$state
  export BURST_CLUSTER_TRIGGER=${trigger:-$state/trigger}
  [[ -n $trigger ]] && rm -f "$trigger"
  cleanup() { ((keep)) && echo "cluster.sh: state kept in $state" >&2 || rm -rf "$state"; }
  trap cleanup EXIT
  guard=()
  # SIGKILL at once: unshare ignores SIGTERM while it waits for its child, and the
  # namespace's init (bash) gets no signal it has no handler for from outside.
  [[ -n $timeout_s ]] && guard=(timeout -s KILL "$timeout_s")
  # PID namespace: when its first process (the bash below) exits or is killed, the
  # kernel kills every process left in it (orteds, ranks, fault runners); --kill-child
  # kills that process when unshare itself is killed (by --timeout, or ctest's).
  started=$SECONDS
  "${guard[@]}" unshare --net --mount --pid --fork --kill-child --mount-proc --propagation private \
    bash "$0" --inside "${ARGS_ORIG[@]}"
  rc=$?
  if [[ -n $timeout_s ]] && ((rc == 124 || rc == 137)) && ((SECONDS - started >= ${timeout_s%.*})); then
    echo "cluster.sh: the job did not end within --timeout $timeout_s s: killed" >&2
    rc=124
  fi
  exit $rc
fi

# ---------------------------------------------------------------- inside the namespaces
state=$BURST_CLUSTER_STATE
log() { ((verbose)) && echo "cluster.sh: $*" >&2; return 0; }

# /etc/hosts of this mount namespace only.
{ echo "127.0.0.1 localhost $(hostname) ${names[*]}"; echo "::1 localhost ip6-localhost"; } >"$state/hosts"
mount --bind "$state/hosts" /etc/hosts || skip "cannot bind-mount $state/hosts on /etc/hosts"
ip link set lo up || skip "cannot bring lo up"

# Rate in bit/s from tc's units (for the default burst).
rate_bits() {
  awk -v r="$1" 'BEGIN {
    n = r + 0; u = tolower(substr(r, length(n "") + 1))
    m["bit"] = 1; m["kbit"] = 1e3; m["mbit"] = 1e6; m["gbit"] = 1e9; m["tbit"] = 1e12
    m["bps"] = 8; m["kbps"] = 8e3; m["mbps"] = 8e6; m["gbps"] = 8e9
    if (!(u in m)) exit 1
    printf "%.0f", n * m[u] }'
}
shape() {   # shape RATE: the tbf on lo (replaces any earlier one)
  local r=$1 b=$burst bits
  bits=$(rate_bits "$r") || die "bad rate '$r' (tc units: 10gbit, 200mbit, 8bit, ...)"
  if [[ -z $b ]]; then   # max(128 KiB, one millisecond of the rate)
    b=$(awk -v x="$bits" 'BEGIN { b = x / 8 / 1000; if (b < 131072) b = 131072; printf "%.0f", b }')
  fi
  tc qdisc replace dev lo root tbf rate "$r" burst "$b" latency "$tclat"
}
if [[ -n $rate ]]; then
  shape "$rate" || skip "tc tbf on lo failed (sch_tbf missing?)"
  log "lo: $(tc qdisc show dev lo)"
fi

# The remote-shell agent: mpirun runs `agent HOST COMMAND...` for every node; this
# starts COMMAND (the orted) here, as HOST: its own UTS namespace (hostname HOST), its
# own session directory and shared-memory backing directory (which also tell a fault
# which processes are that node's).
cat >"$state/agent" <<AGENT
#!/bin/sh
host=\$1; shift
dir=$state/nodes/\$host
mkdir -p "\$dir/tmp" "\$dir/shm"
$( ((verbose)) && echo 'echo "cluster.sh: agent: $host: $*" >&2' )
export OMPI_MCA_orte_tmpdir_base="\$dir/tmp" OMPI_MCA_btl_vader_backing_directory="\$dir/shm"
exec unshare --uts sh -c 'hostname "\$0" && exec sh -c "\$1"' "\$host" "\$*"
AGENT
chmod +x "$state/agent"

# Faults: ACTION[@SECONDS][+DURATION] after the trigger file appears.
now() { date +%s.%N; }
fault_runner() {
  local spec=$1 action at=0 dur="" t0 node pid
  action=${spec%%[@+]*}
  [[ $spec =~ @([0-9.]+) ]] && at=${BASH_REMATCH[1]}
  [[ $spec =~ \+([0-9.]+) ]] && dur=${BASH_REMATCH[1]}
  while [[ ! -e $BURST_CLUSTER_TRIGGER ]]; do sleep 0.01; done
  t0=$(now)
  sleep "$at"
  echo "cluster.sh: fault $action at $(awk -v a="$t0" -v b="$(now)" 'BEGIN { printf "%.2f", b - a }') s" >&2
  case $action in
    link-down) ip link set lo down ;;
    link-cut) shape 8bit ;;
    kill-ranks:*|stop-ranks:*|kill-node:*)
      node=${action#*:}
      # The orted daemonizes (it leaves the agent): find it, and the ranks it started,
      # by the session directory in their environment.
      local p orted="" ranks=""
      for p in $(pgrep -d ' ' .); do
        tr '\0' '\n' </proc/$p/environ 2>/dev/null | grep -qx "OMPI_MCA_orte_tmpdir_base=$state/nodes/$node/tmp" || continue
        if [[ $(cat /proc/$p/comm 2>/dev/null) == orted ]]; then orted+=" $p"; else ranks+=" $p"; fi
      done
      [[ $action == kill-node:* && -n $orted ]] && kill -KILL $orted 2>/dev/null
      if [[ $action == stop-ranks:* ]]; then
        [[ -n $ranks ]] && kill -STOP $ranks 2>/dev/null
        echo "cluster.sh: stopped ranks of $node:${ranks:- none}" >&2
      else
        [[ -n $ranks ]] && kill -KILL $ranks 2>/dev/null
        echo "cluster.sh: killed ${action%%:*} of $node: ranks${ranks:- none}$([[ $action == kill-node:* ]] && echo ", orted${orted:- none}")" >&2
      fi ;;
  esac
  if [[ -n $dur ]]; then
    sleep "$dur"
    case $action in
      link-down) ip link set lo up ;;
      link-cut) if [[ -n $rate ]]; then shape "$rate"; else tc qdisc del dev lo root; fi ;;
    esac
    echo "cluster.sh: fault $action ended after $dur s" >&2
  fi
}
[[ -z $trigger ]] && : >"$BURST_CLUSTER_TRIGGER"
for f in "${faults[@]}"; do fault_runner "$f" & done

lo_counters() {   # lo counts every packet once sent and once received: tx = rx = traffic
  awk -F'[: ]+' '{ sub(/^ +/, "") } $1 == "lo" { print "bytes " $2 " packets " $3 }' /proc/net/dev
}
((lostats)) && echo "cluster.sh: lo before: $(lo_counters)" >&2

hosts=""
for n in "${names[@]}"; do hosts+="${hosts:+,}$n:$rpn"; done
export BURST_CLUSTER_NODES=$nodes BURST_CLUSTER_RANKS_PER_NODE=$rpn
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
cmd=(mpirun --oversubscribe --bind-to none -n $((nodes * rpn)) --host "$hosts" --map-by slot
     --mca plm_rsh_agent "$state/agent" --mca plm_rsh_no_tree_spawn 1 --mca routed direct
     --mca if_base_do_not_resolve 1   # else nodeA and nodeB resolve to lo's address: "local", one node
     --mca pml ob1 --mca btl self,vader,tcp --mca btl_tcp_if_include lo --mca oob_tcp_if_include lo
     "${mpi_extra[@]}" "$@")
# --stacks-at: what is left, and where each program's threads are.
stacks() {
  sleep "$1"
  echo "cluster.sh: still running after $1 s:" >&2
  ps -eo pid,ppid,stat,etime,comm,args --sort pid | sed 's/^/cluster.sh:   /' >&2
  command -v gdb >/dev/null || { echo "cluster.sh: (no gdb: no stacks)" >&2; return; }
  local p
  for p in $(pgrep -d ' ' .); do
    case $(cat /proc/$p/comm 2>/dev/null) in mpirun|orted|bash|sh|sleep|ps|pgrep|timeout|gdb|tee) continue ;; esac
    echo "cluster.sh: stacks of $p ($(tr '\0' ' ' </proc/$p/cmdline 2>/dev/null)), $(tr '\0' '\n' </proc/$p/environ 2>/dev/null | grep -m1 '^OMPI_COMM_WORLD_RANK=')" >&2
    timeout 60 gdb -p "$p" -batch -nx -ex 'set pagination off' -ex 'thread apply all bt 30' 2>&1 |
      grep -E '^(#|Thread )' | sed 's/^/cluster.sh:   /' >&2
  done
}
[[ -n $stacks_at ]] && { stacks "$stacks_at" & }
log "${cmd[*]}"
"${cmd[@]}"
rc=$?
((lostats)) && echo "cluster.sh: lo after: $(lo_counters)" >&2
exit $rc
