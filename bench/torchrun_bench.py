#!/usr/bin/env python3
"""One timing of burst_attention.torch.burst_attn forward+backward (causal, zigzag) on
the ranks of whatever launched it — torchrun (the torch.distributed transport over
gloo), mpirun (MPI) or nothing (one rank, the whole sequence) — printed by rank 0 as one
JSON line. bench/run_torchrun.sh runs it under the three and compares them.

    python3 bench/torchrun_bench.py --tokens 16384                      # t1: one rank
    mpirun -n 2 --bind-to none python3 bench/torchrun_bench.py --tokens 16384
    torchrun --standalone --nproc-per-node 2 bench/torchrun_bench.py --tokens 16384

Every call: a barrier, then burst_attn + backward on every rank; the call's time is the
slowest rank's. Reported: the median over --repeats calls after --warmup, the last
call's communication wait (the largest over the ranks of forward + backward
comm_wait_seconds) and its share of the call, and the bytes sent by rank 0.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.abspath(os.path.join(HERE, ".."))
try:
    import burst_attention  # noqa: F401  (pip-installed package)
except ImportError:  # a checkout: the package and the CMake install tree
    sys.path.insert(0, os.path.join(ROOT, "bindings", "python"))
    lib = os.path.join(ROOT, "build", "install", "lib", "libburst_attention.so")
    if "BURST_ATTENTION_LIBRARY" not in os.environ and os.path.exists(lib):
        os.environ["BURST_ATTENTION_LIBRARY"] = lib

import torch  # noqa: E402

import burst_attention as ba  # noqa: E402
import burst_attention.torch as bt  # noqa: E402

MPI_SIZE_ENV = ("OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "MV2_COMM_WORLD_SIZE")


class Ranks:
    """rank, size, comm for burst_attn, barrier(), gather(x) -> list (on every rank)."""

    def __init__(self):
        if "TORCHELASTIC_RUN_ID" in os.environ or (
                "WORLD_SIZE" in os.environ and not any(os.environ.get(v) for v in MPI_SIZE_ENV)):
            import torch.distributed as dist
            dist.init_process_group("gloo")
            self.launcher, self.dist = "torchrun", dist
            self.rank, self.size = dist.get_rank(), dist.get_world_size()
            self.comm = dist.group.WORLD
        elif any(os.environ.get(v) for v in MPI_SIZE_ENV):
            from mpi4py import MPI
            self.launcher, self.mpi = "mpirun", MPI.COMM_WORLD
            self.rank, self.size = self.mpi.Get_rank(), self.mpi.Get_size()
            self.comm = self.mpi
        else:
            self.launcher, self.rank, self.size, self.comm = "none", 0, 1, None

    def barrier(self) -> None:
        if self.launcher == "torchrun":
            self.dist.barrier()
        elif self.launcher == "mpirun":
            self.mpi.Barrier()

    def gather(self, x) -> list:
        if self.launcher == "torchrun":
            out = [None] * self.size
            self.dist.all_gather_object(out, x)
            return out
        if self.launcher == "mpirun":
            return self.mpi.allgather(x)
        return [x]

    def close(self) -> None:
        if self.launcher == "torchrun":
            bt.clear_plan_cache()
            self.dist.destroy_process_group()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tokens", type=int, default=16384,
                    help="total tokens N (not --n: torchrun would take it for its own --nnodes)")
    ap.add_argument("--heads", type=int, default=8)
    ap.add_argument("--head-dim", type=int, default=128)
    ap.add_argument("--threads", type=int, default=1, help="compute threads per rank")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--pattern", default="burst")
    ap.add_argument("--bind", action="store_true",
                    help="pin each rank to CPU (local rank mod CPUs), as mpirun --bind-to core")
    ap.add_argument("--label", default="")
    args = ap.parse_args()

    ranks = Ranks()
    if args.bind and hasattr(os, "sched_setaffinity"):
        local = int(os.environ.get("LOCAL_RANK", os.environ.get("OMPI_COMM_WORLD_LOCAL_RANK",
                                                                 ranks.rank)))
        cpus = sorted(os.sched_getaffinity(0))
        os.sched_setaffinity(0, {cpus[local % len(cpus)]})
    torch.set_num_threads(args.threads)
    counts = bt.shard_counts("zigzag", args.tokens, ranks.size)
    n_local = counts[ranks.rank]
    g = torch.Generator().manual_seed(ranks.rank)
    q, k, v, dout = (torch.randn(1, n_local, args.heads, args.head_dim, generator=g)
                     for _ in range(4))
    q.requires_grad_(), k.requires_grad_(), v.requires_grad_()

    times, waits, shares = [], [], []
    for i in range(args.warmup + args.repeats):
        q.grad = k.grad = v.grad = None
        ranks.barrier()
        start = time.perf_counter()
        out = bt.burst_attn(q, k, v, causal=True, comm=ranks.comm, distribution="zigzag",
                            num_threads=args.threads, pattern=args.pattern,
                            timeout_seconds=600)
        out.backward(dout)
        elapsed = time.perf_counter() - start
        fwd, bwd = bt.last_stats(ranks.comm, "forward"), bt.last_stats(ranks.comm, "backward")
        wait = fwd["comm_wait_seconds"] + bwd["comm_wait_seconds"]
        total = fwd["total_seconds"] + bwd["total_seconds"]
        everyone = ranks.gather((elapsed, wait, wait / total if total else 0.0))
        if i >= args.warmup:
            times.append(max(e[0] for e in everyone))
            waits.append(max(e[1] for e in everyone))
            shares.append(max(e[2] for e in everyone))
    if ranks.rank == 0:
        print(json.dumps({
            "bench": "torchrun", "label": args.label, "launcher": ranks.launcher,
            "world": ranks.size, "n": args.tokens, "heads": args.heads, "head_dim": args.head_dim,
            "threads": args.threads, "pattern": args.pattern, "bind": args.bind,
            "context": bt.context_for(ranks.comm).kind,
            "fwdbwd_s": statistics.median(times), "fwdbwd_all_s": times,
            "comm_wait_s": waits[-1], "comm_wait_share": shares[-1],
            "bytes_sent_rank0": fwd["bytes_sent"] + bwd["bytes_sent"],
            "build_info": ba.build_info(), "torch": torch.__version__}), flush=True)
    ranks.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
