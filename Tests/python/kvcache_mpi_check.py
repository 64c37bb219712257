#!/usr/bin/env python3
"""MPI check of burst_attention.KVCache (prefill and decode over a sharded KV cache):
run under mpirun with 2, 3 and 4 ranks.

    mpirun --allow-run-as-root --oversubscribe -n 3 python3 Tests/python/kvcache_mpi_check.py

On a COMM_WORLD context, every rank plays the scenario of kvcache_reference.py (the
same script on every rank) for (h_q, h_kv) in {(4,4), (4,2), (4,1)} x window_left in
{-1, 5} x {f32, bf16} x prefill {contiguous, zigzag} (causal plans over packed
sequences of lengths 13, 2 and 0, so some rank holds no token of a sequence), then
decode steps of T = 1, 3 and 17 in a row on both layers, a start position that skips
ahead, truncate then decode, drop, and a re-added id. Each decode is checked against
the float64 model (out within 1e-5 max|ref| + the storage rounding, lse within 1e-4),
every rank's lengths, local tokens and bytes after every call, and the partials'
bytes in stats. Every rank's outputs must hash the same (allgather of the digests),
and a second run of one scenario must reproduce them bitwise.

Then the failure paths, each of which must raise on every rank and leave the cache as
it was: an unknown id, a duplicate id, positions going backwards, T differing between
ranks (MismatchError), max_bytes_local exceeded on rank 0 only (OutOfMemoryError), a
plan from another context in prefill, and a bad Python argument on one rank only
(TypeError there, BurstError on the others — never a hang).

Prints one summary line per rank; exits non-zero on any failure on any rank.
"""

from __future__ import annotations

import itertools
import sys
import time
import traceback

import _testenv  # noqa: E402  (sys.path, BURST_ATTENTION_LIBRARY for a checkout)

import numpy as np  # noqa: E402
from mpi4py import MPI  # noqa: E402

import burst_attention as ba  # noqa: E402
import kvcache_reference as kref  # noqa: E402

COMM = MPI.COMM_WORLD
RANK, P = COMM.rank, COMM.size
TIMEOUT = 120.0  # per library call: a bug fails the run instead of hanging it
HEAD_DIM = 8

failures: "list[str]" = []
checks = 0
worst: "dict[str, float]" = {}  # max|err|/max|ref| of out by dtype, and lse


def check(condition, what: str) -> bool:
    global checks
    checks += 1
    if not condition:
        failures.append(what)
    return bool(condition)


def run_scenario(ctx, heads, window_left, dtype, distribution, seed, layout="bshd"):
    where = f"heads={heads} window_left={window_left} {dtype} {distribution} {layout}"
    model = kref.Model(P, 2, heads[0], heads[1], HEAD_DIM, window_left=window_left,
                       block_tokens=4, dtype=dtype)
    with ctx.kv_cache(2, heads[0], HEAD_DIM, num_heads_kv=heads[1], dtype=dtype,
                      layout=layout, window_left=window_left, block_tokens=4,
                      timeout_seconds=TIMEOUT) as cache:
        runner = kref.Runner(ctx, cache, model, dtype=dtype, layout=layout, timeout=TIMEOUT,
                             where=where)
        kref.scenario(runner, distribution, seed)
        check(cache.nbytes == 0, f"{where}: bytes left after every drop: {cache.nbytes}")
    global checks
    checks += runner.checks
    failures.extend(runner.failures)
    for key, name in (("out", f"out {dtype}"), ("lse", "lse")):
        worst[name] = max(worst.get(name, 0.0), runner.worst[key])
    everyone = COMM.allgather(runner.digests)
    check(all(d == everyone[0] for d in everyone),
          f"{where}: the ranks' outputs differ (digests by rank differ)")
    return runner.digests


def ones(*shape):
    return np.ones(shape, np.float32)


def fresh(ctx, **kw):
    """A cache with sequences 0 (5 tokens in both layers) and 1 (empty)."""
    kw.setdefault("timeout_seconds", TIMEOUT)
    cache = ctx.kv_cache(2, 4, HEAD_DIM, num_heads_kv=2, block_tokens=4, **kw)
    cache.add([0, 1])
    for layer in range(2):
        cache.decode(layer, [0], ones(1, 5, 4, HEAD_DIM), ones(1, 5, 2, HEAD_DIM), ones(1, 5, 2, HEAD_DIM))
    return cache


def state(cache):
    return [cache.length(s, l) for s in (0, 1) for l in (0, 1)] + [cache.nbytes]


def bad_call(ctx, name, call, error_type, **cache_kw):
    """call(cache) must raise error_type on every rank and change nothing; the cache
    must still work afterwards."""
    cache = fresh(ctx, **cache_kw)
    before = state(cache)
    error = None
    try:
        call(cache)
    except Exception as exc:  # noqa: BLE001
        error = exc
    check(isinstance(error, error_type), f"{name}: expected {error_type.__name__}, got {error!r}")
    check(state(cache) == before, f"{name}: the cache changed: {before} -> {state(cache)}")
    cache.decode(0, [1], ones(1, 1, 4, HEAD_DIM), ones(1, 1, 2, HEAD_DIM), ones(1, 1, 2, HEAD_DIM))
    cache.close()


def error_paths(ctx):
    q1, kv1 = ones(1, 1, 4, HEAD_DIM), ones(1, 1, 2, HEAD_DIM)
    q2, kv2 = ones(2, 1, 4, HEAD_DIM), ones(2, 1, 2, HEAD_DIM)
    bad_call(ctx, "unknown id", lambda c: c.decode(0, [9], q1, kv1, kv1), ba.BurstError)
    bad_call(ctx, "unknown id drop", lambda c: c.drop([0, 9]), ba.BurstError)
    bad_call(ctx, "duplicate id decode", lambda c: c.decode(0, [0, 0], q2, kv2, kv2), ba.BurstError)
    bad_call(ctx, "duplicate id add", lambda c: c.add([5, 5]), ba.BurstError)
    bad_call(ctx, "positions backwards", lambda c: c.decode(0, [0], q1, kv1, kv1, positions=[4]),
             ba.BurstError)
    t = 1 + (RANK == P - 1)
    bad_call(ctx, "T differs between ranks", lambda c: c.decode(
        0, [0], ones(1, t, 4, HEAD_DIM), ones(1, t, 2, HEAD_DIM), ones(1, t, 2, HEAD_DIM)),
        ba.MismatchError)
    q_diff = ones(1, 1, 4, HEAD_DIM)
    q_diff[0, 0, 0, 0] += RANK
    bad_call(ctx, "q differs between ranks", lambda c: c.decode(0, [0], q_diff, kv1, kv1),
             ba.MismatchError)
    block = 4 * (2 * 2 * HEAD_DIM * 4 + 8)
    bad_call(ctx, "max_bytes_local on rank 0", lambda c: c.decode(
        0, [0], ones(1, 64, 4, HEAD_DIM), ones(1, 64, 2, HEAD_DIM), ones(1, 64, 2, HEAD_DIM)),
        ba.OutOfMemoryError, max_bytes_local=4 * block if RANK == 0 else 0)

    # A plan from another context (a second context on the same communicator).
    with ba.Context.from_mpi(COMM) as other, \
            other.plan(1, 3, 4, HEAD_DIM, num_heads_kv=2, mask="causal", timeout_seconds=TIMEOUT) as plan:
        bad_call(ctx, "plan of another context", lambda c: c.prefill(1, plan, [1], ones(1, 3, 2, HEAD_DIM),
                                                                     ones(1, 3, 2, HEAD_DIM)),
                 ba.BurstError)

    # A bad Python argument on the last rank only.
    def one_rank_bad(c):
        q = q1.astype(np.float64) if RANK == P - 1 else q1
        c.decode(0, [0], q, kv1, kv1)
    cache = fresh(ctx)
    try:
        one_rank_bad(cache)
        error = None
    except Exception as exc:  # noqa: BLE001
        error = exc
    if RANK == P - 1:
        check(isinstance(error, TypeError) and "every rank fails together" in str(error),
              f"bad dtype on this rank: {error!r}")
    else:
        check(isinstance(error, ba.BurstError), f"bad dtype on rank {P - 1}: {error!r}")
    cache.close()


def main() -> int:
    t0 = time.perf_counter()
    try:
        with ba.Context.from_mpi(COMM) as ctx:
            seed = 100
            for heads, window_left, dtype, distribution in itertools.product(
                    [(4, 4), (4, 2), (4, 1)], [-1, 5], ["f32", "bf16"], ["contiguous", "zigzag"]):
                seed += 1
                run_scenario(ctx, heads, window_left, dtype, distribution, seed)
            first = run_scenario(ctx, (4, 2), 5, "bf16", "zigzag", 7, layout="bhsd")
            again = run_scenario(ctx, (4, 2), 5, "bf16", "zigzag", 7, layout="bhsd")
            check(first == again, "a second run with the same inputs is not bitwise identical")
            error_paths(ctx)
    except Exception:  # noqa: BLE001 - report, then let the allreduce decide
        failures.append("exception: " + traceback.format_exc())

    elapsed = time.perf_counter() - t0
    total_failures = COMM.allreduce(len(failures), op=MPI.SUM)
    lines = [f"kvcache_mpi_check rank {RANK}/{P}: FAIL {f}" for f in failures[:50]]
    lines.append(
        f"kvcache_mpi_check rank {RANK}/{P}: {checks} checks, {len(failures)} failed here, "
        f"{total_failures} failed in all; worst error (x max|ref|; bf16 includes its rounding) "
        + ", ".join(f"{k} {v:.2e}" for k, v in sorted(worst.items()))
        + f"; {elapsed:.2f} s; library {ba.library_path}")
    _testenv.print_in_rank_order(COMM, lines)
    return 1 if total_failures else 0


if __name__ == "__main__":
    sys.exit(main())
