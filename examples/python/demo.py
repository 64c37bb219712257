#!/usr/bin/env python3
"""Distributed attention from Python: shard a sequence across MPI ranks, run forward and
backward with libburst_attention, and check the result against plain numpy.

    mpirun -n 2 python3 examples/python/demo.py            # add --allow-run-as-root as root
    mpirun -n 3 python3 examples/python/demo.py --seq 3000 --heads 8 --head-dim 64 --causal

Needs numpy and mpi4py, and the library: set BURST_ATTENTION_LIBRARY to the path of
libburst_attention.so (or install it where the binding finds it, see
bindings/python/README.md) and put bindings/python on PYTHONPATH.
"""

import argparse
import math
import os
import sys
import time

import numpy as np
from mpi4py import MPI

# Running from a source checkout: find the binding and the CMake install tree.
_ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
sys.path.insert(0, os.path.join(_ROOT, "bindings", "python"))
_BUILT = os.path.join(_ROOT, "build", "install", "lib", "libburst_attention.so")
if "BURST_ATTENTION_LIBRARY" not in os.environ and os.path.exists(_BUILT):
    os.environ["BURST_ATTENTION_LIBRARY"] = _BUILT

import burst_attention as ba  # noqa: E402


def reference_attention(q, k, v, dout, causal):
    """Float64 attention and its gradients on the full sequence, [batch, seq, heads, dim]."""
    q, k, v, dout = (np.swapaxes(x.astype(np.float64), 1, 2) for x in (q, k, v, dout))
    scale = 1.0 / math.sqrt(q.shape[-1])
    s = scale * q @ np.swapaxes(k, -1, -2)                     # [b, h, n, n]
    if causal:
        n = s.shape[-1]
        s = np.where(np.tril(np.ones((n, n), bool)), s, -np.inf)
    lse = np.log(np.exp(s - s.max(-1, keepdims=True)).sum(-1)) + s.max(-1)
    p = np.exp(s - lse[..., None])
    out = p @ v
    ds = p * (dout @ np.swapaxes(v, -1, -2) - (dout * out).sum(-1, keepdims=True))
    dq, dk, dv = scale * ds @ k, scale * np.swapaxes(ds, -1, -2) @ q, np.swapaxes(p, -1, -2) @ dout
    back = lambda x: np.swapaxes(x, 1, 2)                       # noqa: E731
    return back(out), lse, back(dq), back(dk), back(dv)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--seq", type=int, default=1000, help="global sequence length")
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--head-dim", type=int, default=64)
    parser.add_argument("--causal", action="store_true")
    args = parser.parse_args()

    comm = MPI.COMM_WORLD
    rank, size = comm.rank, comm.size

    # 1. Every rank makes the same global inputs (same seed) and keeps its own slice of
    #    the sequence. Shards may differ in length; here the remainder goes to the first ranks.
    rng = np.random.default_rng(2024)
    shape = (args.batch, args.seq, args.heads, args.head_dim)          # BSHD
    q, k, v, dout = (rng.standard_normal(shape).astype(np.float32) for _ in range(4))
    counts = [args.seq // size + (r < args.seq % size) for r in range(size)]
    start = sum(counts[:rank])
    mine = slice(start, start + counts[rank])
    q_r, k_r, v_r, dout_r = (np.ascontiguousarray(x[:, mine]) for x in (q, k, v, dout))

    # 2. A context over the communicator, and a plan for this attention shape.
    #    Both are collective: every rank makes these calls in the same order.
    with ba.Context.from_mpi(comm) as ctx, \
            ctx.plan(args.batch, counts[rank], args.heads, args.head_dim,
                     layout="bshd", mask="causal" if args.causal else "none") as plan:
        comm.Barrier()
        t0 = time.perf_counter()
        out, lse = plan.forward(q_r, k_r, v_r)
        t_fwd = time.perf_counter() - t0
        fwd_stats = plan.stats()

        t0 = time.perf_counter()
        dq, dk, dv = plan.backward(q_r, k_r, v_r, out, lse, dout_r)
        t_bwd = time.perf_counter() - t0
        bwd_stats = plan.stats()

    # 3. Compare this rank's shard with a float64 reference of the whole sequence
    #    (relative to the largest reference value; DESIGN §3 asks 1e-5 / 1e-4).
    ref_out, ref_lse, ref_dq, ref_dk, ref_dv = reference_attention(q, k, v, dout, args.causal)

    def rel(got, want):
        return float(np.max(np.abs(got - want[:, mine]))) / float(np.max(np.abs(want))) if got.size else 0.0

    errors = {"out": rel(out, ref_out), "dq": rel(dq, ref_dq), "dk": rel(dk, ref_dk), "dv": rel(dv, ref_dv)}
    lse_err = float(np.max(np.abs(lse - ref_lse[:, :, mine]))) if lse.size else 0.0
    ok = errors["out"] <= 1e-5 and max(errors["dq"], errors["dk"], errors["dv"]) <= 1e-4 and lse_err <= 1e-4

    line = (f"rank {rank}/{size}: {counts[rank]} tokens | forward {t_fwd * 1e3:.1f} ms, "
            f"sent {fwd_stats['bytes_sent'] / 2**20:.2f} MiB | backward {t_bwd * 1e3:.1f} ms, "
            f"sent {bwd_stats['bytes_sent'] / 2**20:.2f} MiB | rel. error out {errors['out']:.1e} "
            f"dq {errors['dq']:.1e} dk {errors['dk']:.1e} dv {errors['dv']:.1e} lse {lse_err:.1e} "
            f"| {'OK' if ok else 'TOO LARGE'}")
    for r in range(size):  # print in rank order
        if r == rank:
            print(line, flush=True)
        comm.Barrier()
    all_ok = comm.allreduce(ok, op=MPI.LAND)
    return 0 if all_ok else 1


if __name__ == "__main__":
    sys.exit(main())
