#!/usr/bin/env python3
"""MPI check of the Python binding: run under mpirun with 2, 3 and 4 ranks.

    mpirun --allow-run-as-root --oversubscribe -n 2 python3 Tests/python/mpi_check.py
    mpirun --allow-run-as-root --oversubscribe -n 3 python3 Tests/python/mpi_check.py
    mpirun --allow-run-as-root --oversubscribe -n 4 python3 Tests/python/mpi_check.py

Every rank builds the same global q, k, v, dout (fixed seed), takes its contiguous
shard (unequal shard sizes, including 0- and 1-token ranks), runs forward and backward
on a COMM_WORLD context and compares with a float64 reference of the full sequence
(DESIGN §3 tolerances). It checks burst_stats.bytes_sent, bytes_received and
messages_sent exactly against the BURST schedule (reference.burst_traffic: with no mask
and no empty shard, forward 4·2·Z·d·Σ_{t=0}^{P−2} n_{(r−t) mod P}; a K,V block that no
rank further along the ring needs is not forwarded, the backward's query bundle travels
only as far as a rank needs it and dQ goes home from there).

Then the variants (0.2): zigzag + causal, striped + window, GQA 4/2 and MQA 4/1, packed
sequences (cu_seqlens) with causal + window, each sharded with the package's
ba.shard, checked row by row against the reference at the independent positions
(reference.positions), assembled with ba.unshard + an allreduce and checked whole, and
with exact bytes, messages, steps and tiles (reference.step_tile_stats).

Storage types bf16 / fp16 (compute="exact") under every pattern, and compute="fast"
(0.7: bf16 products) on f32 and bf16 storage against the float64 reference of the
bf16-rounded inputs within the FAST bounds of reference.py.

Score modifiers (0.8): attention sinks and softcap, alone and together, on variants under
several patterns: out, lse and the gradients as above, and every rank's dsinks
(`Plan.sinks_gradient`, its partial over its own rows) against the reference's sum over
those rows, then the partials summed over the ranks (an allreduce, as a training loop
does) against the full gradient.

It also checks the failure paths that must not hang: a config mismatch, a bad array on
one rank, an unparseable plan argument on one rank, ranks disagreeing on cu_seqlens, a
zigzag seq_len_local that is not the one the distribution deals, and MPI_COMM_NULL.

Prints one summary line per rank; exits non-zero on any failure on any rank (ranks
agree through an allreduce).
"""

from __future__ import annotations

import itertools
import os
import sys
import time
import traceback

import _testenv  # noqa: E402  (sys.path, BURST_ATTENTION_LIBRARY for a checkout)

import numpy as np  # noqa: E402
from mpi4py import MPI  # noqa: E402

import burst_attention as ba  # noqa: E402
import reference as ref  # noqa: E402

COMM = MPI.COMM_WORLD
RANK, P = COMM.rank, COMM.size
TIMEOUT = 120.0  # per library call: a bug fails the run instead of hanging it

BATCH, HEADS, HEAD_DIM = 2, 2, 16
Z = BATCH * HEADS

failures: list[str] = []
notes: list[str] = []
checks = 0
worst = {"out": 0.0, "grad": 0.0, "lse": 0.0}
bytes_checked = 0


def check(condition: bool, what: str) -> bool:
    global checks
    checks += 1
    if not condition:
        failures.append(what)
    return condition


def shard_sets(p: int) -> list:
    """Shard sizes to sweep: equal, a leading 0-token rank, and a 1-token last rank
    (with a 0-token rank in the middle when there are at least 3 ranks)."""
    sets = [[6] * p]
    if p == 1:
        return sets + [[1], [17]]
    sets.append([0] + [5 + 3 * r for r in range(1, p)])
    ragged = [9 + 2 * r for r in range(p)]
    ragged[-1] = 1
    if p > 2:
        ragged[1] = 0
    sets.append(ragged)
    return sets


def local(x: np.ndarray, counts, layout) -> np.ndarray:
    off = ref.offsets(counts)
    sl = [slice(None)] * x.ndim
    sl[ref.seq_axis(layout)] = slice(off[RANK], off[RANK + 1])
    return x[tuple(sl)]


def run_case(ctx, counts, layout, mask, seed) -> None:
    global bytes_checked
    tag = f"[{layout} {mask} counts={counts}]"
    n_total = sum(counts)
    q, k, v, dout = ref.make_inputs(seed, BATCH, n_total, HEADS, HEADS, HEAD_DIM, layout)
    causal = mask == "causal"
    out_ref, lse_ref = ref.forward(q, k, v, causal, None, layout)
    grads_ref = ref.backward(q, k, v, dout, causal, None, layout)
    mine = [np.ascontiguousarray(local(x, counts, layout)) for x in (q, k, v, dout)]

    with ctx.plan(BATCH, counts[RANK], HEADS, HEAD_DIM, layout=layout, mask=mask,
                  timeout_seconds=TIMEOUT) as plan:
        out, lse = plan.forward(*mine[:3])
        fstats = plan.stats()
        dq, dk, dv = plan.backward(*mine[:3], out, lse, mine[3])
        bstats = plan.stats()

    scale = float(np.max(np.abs(out_ref))) or 1.0
    err = float(np.max(np.abs(out - local(out_ref, counts, layout)))) / scale if out.size else 0.0
    worst["out"] = max(worst["out"], err)
    check(err <= ref.OUT_TOL, f"{tag} out error {err:.3g} > {ref.OUT_TOL}")
    off = ref.offsets(counts)
    lerr = ref.lse_error(lse, lse_ref[:, :, off[RANK]:off[RANK + 1]])
    worst["lse"] = max(worst["lse"], lerr)
    check(lerr <= ref.LSE_TOL, f"{tag} lse error {lerr:.3g} > {ref.LSE_TOL}")
    for name, got, want, scale in zip(("dq", "dk", "dv"), (dq, dk, dv), grads_ref,
                                      ref.grad_scales(*grads_ref)):
        err = float(np.max(np.abs(got - local(want, counts, layout)))) / scale if got.size else 0.0
        worst["grad"] = max(worst["grad"], err)
        check(err <= ref.GRAD_TOL, f"{tag} {name} error {err:.3g} > {ref.GRAD_TOL}")

    # Exact byte and message counts (reference.burst_traffic documents the rule); the
    # closed form without skipping is reported when it differs.
    for kind, stats in (("forward", fstats), ("backward", bstats)):
        want = ref.contiguous_traffic(counts, Z, HEAD_DIM, kind, causal)
        for key in ("bytes_sent", "bytes_received", "messages_sent"):
            check(stats[key] == want[key][RANK],
                  f"{tag} {kind} {key} {stats[key]} != schedule {want[key][RANK]}")
        bytes_checked += 2
        plain = ref.plain_bytes_sent(counts, RANK, Z, HEAD_DIM, kind)
        if plain != stats["bytes_sent"]:
            notes.append(f"{tag} {kind}: bytes_sent {stats['bytes_sent']} differs from the "
                         f"no-skip closed form {plain} (blocks nobody ahead needs are not sent)")
        if not causal and 0 not in counts:
            check(plain == want["bytes_sent"][RANK],
                  f"{tag} {kind}: closed form {plain} != rule {want['bytes_sent'][RANK]}")


# (name, distribution, N, causal, (window_left, window_right), heads_q, heads_kv,
#  cu_seqlens, layout)
VARIANTS = [
    ("zigzag causal", "zigzag", 53, True, (-1, -1), 2, 2, None, "bshd"),
    ("zigzag causal packed", "zigzag", 47, True, (-1, -1), 2, 2, [0, 9, 9, 30, 47], "bhsd"),
    ("striped window", "striped", 45, False, (3, 7), 2, 2, None, "bshd"),
    ("striped causal window GQA", "striped", 41, True, (6, 0), 4, 2, None, "bhsd"),
    ("contiguous causal GQA 4/2", "contiguous", 39, True, (-1, -1), 4, 2, None, "bshd"),
    ("zigzag MQA 4/1", "zigzag", 37, False, (-1, -1), 4, 1, None, "bshd"),
    ("contiguous window MQA 4/1", "contiguous", 43, False, (2, 5), 4, 1, None, "bhsd"),
    ("varlen causal window contiguous", "contiguous", 50, True, (5, 0), 2, 2,
     [0, 1, 17, 17, 33, 50], "bshd"),
    ("varlen causal window zigzag GQA", "zigzag", 57, True, (4, 0), 4, 2,
     [0, 12, 13, 40, 57], "bshd"),
    ("varlen causal window striped MQA", "striped", 44, True, (3, 2), 4, 1,
     [0, 20, 21, 44], "bhsd"),
]
V_BATCH, V_HEAD_DIM = 2, 8


def run_variant(ctx, name, distribution, n_total, causal, window, hq, hkv, cu, layout,
                seed, pattern="burst", intra_group_size=0, softcap=0.0, sinks=None) -> None:
    global bytes_checked
    tag = (f"[{name}: {distribution} N={n_total} {layout} {pattern} G={intra_group_size}"
           f"{' sinks' if sinks is not None else ''}{f' softcap={softcap}' if softcap else ''}]")
    axis = ref.seq_axis(layout)
    q, k, v, dout = ref.make_inputs(seed, V_BATCH, n_total, hq, hkv, V_HEAD_DIM, layout)
    masks = dict(window_left=window[0], window_right=window[1], cu_seqlens=cu,
                 softcap=softcap, sinks=sinks)
    out_ref, lse_ref = ref.forward(q, k, v, causal, None, layout, **masks)
    *grads_ref, dsink_rows = ref.backward_full(q, k, v, dout, causal, None, layout, **masks)

    # The package's shard against the independent positions.
    pos = ref.all_positions(distribution, n_total, P, cu)
    lib_pos = ba.shard_positions(distribution, n_total, P, RANK, cu)
    check(np.array_equal(lib_pos, pos[RANK]), f"{tag} shard_positions {lib_pos} != {pos[RANK]}")
    mine = [ba.shard(x, distribution, P, RANK, axis, cu) for x in (q, k, v, dout)]
    check(np.array_equal(mine[0], ref.shard_at(q, pos[RANK], layout)), f"{tag} shard(q)")

    with ctx.plan(V_BATCH, len(pos[RANK]), hq, V_HEAD_DIM, num_heads_kv=hkv, layout=layout,
                  mask="causal" if causal else "none", distribution=distribution,
                  window_left=window[0], window_right=window[1], cu_seqlens=cu,
                  pattern=pattern, intra_group_size=intra_group_size,
                  timeout_seconds=TIMEOUT, softcap=softcap, sinks=sinks) as plan:
        out, lse = plan.forward(*mine[:3])
        fstats = plan.stats()
        dq, dk, dv = plan.backward(*mine[:3], out, lse, mine[3])
        bstats = plan.stats()
        dsinks = plan.sinks_gradient() if sinks is not None else None

    if sinks is not None:
        # This rank's partial over its own rows, then the sum over the ranks.
        mine_ref, full_ref = ref.sinks_partial(dsink_rows, pos[RANK]), ref.sinks_partial(dsink_rows)
        scale = max(float(np.max(np.abs(ref.sinks_partial(dsink_rows, x)))) for x in pos)
        scale = max(scale, float(np.max(np.abs(full_ref)))) or 1.0
        err = float(np.max(np.abs(dsinks - mine_ref))) / scale
        worst["grad"] = max(worst["grad"], err)
        check(err <= ref.GRAD_TOL, f"{tag} dsinks (this rank's partial) error {err:.3g} > {ref.GRAD_TOL}")
        total = COMM.allreduce(dsinks.astype(np.float64), op=MPI.SUM)
        err = float(np.max(np.abs(total - full_ref))) / scale
        check(err <= ref.GRAD_TOL, f"{tag} dsinks summed over the ranks error {err:.3g} > {ref.GRAD_TOL}")

    # This rank's rows, then the whole tensors assembled from every rank's shard.
    scales = (float(np.max(np.abs(out_ref))),) + ref.grad_scales(*grads_ref)
    for label, got, want, tol, scale in zip(("out", "dq", "dk", "dv"), (out, dq, dk, dv),
                                            (out_ref,) + tuple(grads_ref),
                                            (ref.OUT_TOL,) + (ref.GRAD_TOL,) * 3, scales):
        rows = ref.shard_at(want, pos[RANK], layout)
        err = float(np.max(np.abs(got - rows))) / scale if got.size else 0.0
        worst["out" if label == "out" else "grad"] = max(worst["out" if label == "out" else "grad"], err)
        check(err <= tol, f"{tag} {label} error {err:.3g} > {tol}")
        full = np.zeros(want.shape, np.float32)
        ba.unshard(got, full, distribution, P, RANK, axis, cu)
        full = COMM.allreduce(full, op=MPI.SUM)  # every row is written by exactly one rank
        err = float(np.max(np.abs(full - want))) / scale
        check(err <= tol, f"{tag} assembled {label} error {err:.3g} > {tol}")
    lerr = ref.lse_error(lse, ref.shard_lse_at(lse_ref, pos[RANK]))
    worst["lse"] = max(worst["lse"], lerr)
    check(lerr <= ref.LSE_TOL, f"{tag} lse error {lerr:.3g} > {ref.LSE_TOL}")
    lse_full = np.zeros(lse_ref.shape, np.float32)
    ba.unshard(lse, lse_full, distribution, P, RANK, 2, cu)
    lse_full = COMM.allreduce(lse_full, op=MPI.SUM)
    lerr = ref.lse_error(lse_full, lse_ref)
    check(lerr <= ref.LSE_TOL, f"{tag} assembled lse error {lerr:.3g}")

    for kind, stats in (("forward", fstats), ("backward", bstats)):
        sent = COMM.allreduce(stats["bytes_sent"], op=MPI.SUM)
        check(sent == COMM.allreduce(stats["bytes_received"], op=MPI.SUM),
              f"{tag} {kind}: bytes sent over all ranks != bytes received")
        if pattern != "auto":
            check(stats["pattern"] == ba.Pattern[pattern.upper()], f"{tag} stats pattern {stats['pattern']}")
    if pattern != "burst" or intra_group_size not in (0, P):
        return  # the schedule simulation below is BURST's single ring
    visible = ref.visibility(n_total, causal, window[0], window[1], cu)
    needs = ref.needs_matrix(pos, visible)
    counts = [len(x) for x in pos]
    for kind, stats in (("forward", fstats), ("backward", bstats)):
        traffic = ref.burst_traffic(counts, needs, V_BATCH * hq, V_BATCH * hkv, V_HEAD_DIM, kind)
        work = ref.step_tile_stats(pos, visible, V_BATCH * hq, kind)[RANK]
        for key in ("bytes_sent", "bytes_received", "messages_sent"):
            check(stats[key] == traffic[key][RANK],
                  f"{tag} {kind} {key} {stats[key]} != schedule {traffic[key][RANK]}")
        for key, want in work.items():
            check(stats[key] == want, f"{tag} {kind} {key} {stats[key]} != {want}")
        if counts[RANK]:
            check(stats["tiles_computed"] + stats["tiles_skipped"] > 0, f"{tag} {kind} no tiles")
        bytes_checked += 3


def variant_error_paths(ctx) -> None:
    if P == 1:
        return
    # Ranks disagree on cu_seqlens (by content): MISMATCH everywhere, naming the field.
    n_local = 5

    def bad_packing():
        cu = [0, 2 + (RANK == P - 1), n_local * P]
        ctx.plan(1, n_local, 2, 8, cu_seqlens=cu, timeout_seconds=TIMEOUT)
    expect_error("cu_seqlens differ", bad_packing, [ba.Status.MISMATCH])

    # cu_seqlens not ending at N (known only collectively): INVALID_ARGUMENT everywhere.
    def short_packing():
        ctx.plan(1, n_local, 2, 8, cu_seqlens=[0, 1, n_local * P - 1], timeout_seconds=TIMEOUT)
    expect_error("cu_seqlens short of N", short_packing, [ba.Status.INVALID_ARGUMENT])

    # Zigzag with a contiguous-style count on every rank but the last: INVALID_ARGUMENT.
    n_total = 6 * P + 1
    counts = ba.shard_counts("zigzag", n_total, P)
    wrong = list(counts)
    wrong[0] += 1
    wrong[-1] -= 1

    def bad_zigzag():
        ctx.plan(1, wrong[RANK], 2, 8, distribution="zigzag", mask="causal",
                 timeout_seconds=TIMEOUT)
    expect_error("zigzag seq_len_local", bad_zigzag, [ba.Status.INVALID_ARGUMENT])

    # GQA with num_heads_q not a multiple of num_heads_kv.
    expect_error("num_heads_kv", lambda: ctx.plan(1, 3, 4, 8, num_heads_kv=3, timeout_seconds=TIMEOUT),
                 [ba.Status.INVALID_ARGUMENT])


def expect_error(what, fn, kinds) -> None:
    """fn() must raise one of `kinds` (a BurstError kind may be given as a Status)."""
    try:
        fn()
    except Exception as exc:  # noqa: BLE001
        for kind in kinds:
            if isinstance(kind, ba.Status):
                if isinstance(exc, ba.BurstError) and exc.status == kind:
                    return
            elif isinstance(exc, kind):
                return
        check(False, f"{what}: expected {kinds}, got {type(exc).__name__}: {exc}")
        return
    check(False, f"{what}: expected {kinds}, no error")
    return


def error_paths(ctx) -> None:
    # 1. Ranks disagree on head_dim: MISMATCH everywhere, naming the field.
    def mismatch():
        ctx.plan(1, 3, 1, 8 if RANK == 0 else 16, timeout_seconds=TIMEOUT)
    if P > 1:
        expect_error("mismatched head_dim", mismatch, [ba.Status.MISMATCH])

    # 2. The last rank passes a float64 q: TypeError there, BurstError elsewhere, no hang.
    def bad_array():
        with ctx.plan(1, 3, 1, 8, timeout_seconds=TIMEOUT) as plan:
            x = np.ones(plan.q_shape, np.float32)
            q = x.astype(np.float64) if RANK == P - 1 else x
            plan.forward(q, x, x)
    if P > 1:
        expect_error("bad array on the last rank", bad_array,
                     [TypeError] if RANK == P - 1 else [ba.BurstError])
    else:
        expect_error("bad array", bad_array, [TypeError])

    # 3. Rank 0 gives an unknown layout name: ValueError there, BurstError elsewhere.
    def bad_layout():
        ctx.plan(1, 3, 1, 8, layout="bogus" if RANK == 0 else "bshd", timeout_seconds=TIMEOUT)
    expect_error("unknown layout on rank 0", bad_layout,
                 [ValueError] if RANK == 0 else [ba.BurstError])

    # 4. The plan is still usable afterwards: a tiny forward on the same context.
    with ctx.plan(1, 2, 1, 4, timeout_seconds=TIMEOUT) as plan:
        x = np.full(plan.q_shape, 0.5, np.float32)
        out, _ = plan.forward(x, x, x)
        check(np.allclose(out, 0.5), "forward after failed calls")

    # 5. Local failures.
    expect_error("COMM_NULL", lambda: ba.Context.from_mpi(MPI.COMM_NULL), [ba.Status.INVALID_ARGUMENT])
    expect_error("out-of-range handle", lambda: ba.Context.from_mpi(2**40), [ba.Status.INVALID_ARGUMENT])


def other_contexts() -> None:
    # A context on a duplicated communicator that is freed right away (the context
    # owns its own dup), and two plans interleaved on it (plans never cross messages).
    dup = COMM.Dup()
    ctx = ba.Context.from_mpi(dup)
    dup.Free()
    counts = [3 + r for r in range(P)]
    q, k, v, dout = ref.make_inputs(99, 1, sum(counts), 1, 1, 8)
    mine = [np.ascontiguousarray(local(x, counts, "bshd")) for x in (q, k, v, dout)]
    with ctx, ctx.plan(1, counts[RANK], 1, 8, timeout_seconds=TIMEOUT) as a, \
            ctx.plan(1, counts[RANK], 1, 8, mask="causal", timeout_seconds=TIMEOUT) as b:
        oa, la = a.forward(*mine[:3])
        ob, lb = b.forward(*mine[:3])
        ga = a.backward(*mine[:3], oa, la, mine[3])
        for name, got, want in (("dup ctx out", oa, ref.forward(q, k, v)[0]),
                                ("dup ctx causal out", ob, ref.forward(q, k, v, True)[0]),
                                ("dup ctx dq", ga[0], ref.backward(q, k, v, dout)[0])):
            scale = float(np.max(np.abs(want)))
            err = float(np.max(np.abs(got - local(want, counts, "bshd")))) / scale
            check(err <= ref.GRAD_TOL, f"{name} error {err:.3g}")  # (no degenerate shard here)

    # A context on a split communicator (even and odd ranks apart).
    sub = COMM.Split(RANK % 2, RANK)
    with ba.Context.from_mpi(sub) as ctx:
        check((ctx.rank, ctx.size) == (sub.rank, sub.size),
              f"split ctx rank/size {(ctx.rank, ctx.size)} != {(sub.rank, sub.size)}")
        counts = [4] * sub.size
        q, k, v, _ = ref.make_inputs(5, 1, sum(counts), 1, 1, 4)
        off = ref.offsets(counts)
        with ctx.plan(1, 4, 1, 4, mask="causal", timeout_seconds=TIMEOUT) as plan:
            out, _ = plan.forward(*(np.ascontiguousarray(x[:, off[sub.rank]:off[sub.rank + 1]])
                                    for x in (q, k, v)))
        want = ref.forward(q, k, v, True)[0][:, off[sub.rank]:off[sub.rank + 1]]
        err = float(np.max(np.abs(out - want)))
        check(err <= ref.OUT_TOL * float(np.max(np.abs(want))), f"split ctx out error {err:.3g}")
    sub.Free()


def run_half(ctx, dtype, pattern, seed) -> None:
    """bf16 / fp16 storage (numpy API) on MPI, compute="exact" (the default for bf16 is
    "fast"): every element within the storage contract against float64 of the same
    rounded inputs (the backward's reference with the rounded out, gathered), outputs in
    the storage dtype, forward bytes exactly half of the same plan in f32 (ring
    patterns, ALLGATHER)."""
    global bytes_checked
    tag = f"[{dtype} {pattern}]"
    counts = [7 + 3 * r for r in range(P)]
    n_total, hq, hkv = sum(counts), 2 * P, P
    q, k, v, dout = (ref.from_storage(ref.to_storage(x, dtype), dtype)
                     for x in ref.make_inputs(seed, 1, n_total, hq, hkv, HEAD_DIM))
    out_ref, lse_ref = ref.forward(q, k, v, True)
    mine = [np.ascontiguousarray(local(x, counts, "bshd")) for x in (q, k, v, dout)]
    half = [ref.to_storage(x, dtype) for x in mine]
    with ctx.plan(1, counts[RANK], hq, HEAD_DIM, num_heads_kv=hkv, mask="causal", pattern=pattern,
                  dtype=dtype, compute="exact", timeout_seconds=TIMEOUT) as plan:
        out, lse = plan.forward(*half[:3])
        fbytes = plan.stats()["bytes_sent"]
        dq, dk, dv = plan.backward(*half[:3], out, lse, half[3])
    with ctx.plan(1, counts[RANK], hq, HEAD_DIM, num_heads_kv=hkv, mask="causal", pattern=pattern,
                  timeout_seconds=TIMEOUT) as plan32:
        plan32.forward(*(x.astype(np.float32) for x in mine[:3]))
        f32bytes = plan32.stats()["bytes_sent"]
    given = np.concatenate(COMM.allgather(ref.from_storage(out, dtype)), axis=1)
    grads_ref = ref.backward(q, k, v, dout, True, given_out=given)
    check(out.dtype == plan.storage_dtype and dq.dtype == plan.storage_dtype, f"{tag} output dtypes")
    e = ref.half_excess(out, local(out_ref, counts, "bshd"), dtype, ref.OUT_TOL)
    check(e <= 1, f"{tag} out error / allowed {e:.3g}")
    off = ref.offsets(counts)
    check(ref.lse_error(lse, lse_ref[:, :, off[RANK]:off[RANK + 1]]) <= ref.LSE_TOL, f"{tag} lse")
    for name, got, want in zip(("dq", "dk", "dv"), (dq, dk, dv), grads_ref):
        e = ref.half_excess(got, local(want, counts, "bshd"), dtype, ref.GRAD_TOL, floor=1e-3)
        check(e <= 1, f"{tag} {name} error / allowed {e:.3g}")
    if pattern != "ulysses":
        check(2 * fbytes == f32bytes, f"{tag} forward bytes {fbytes} vs f32 {f32bytes}")
        bytes_checked += 1


def run_fast(ctx, dtype, compute, pattern, distribution, window, seed) -> None:
    """compute="fast" (or the default, with bf16) on MPI: f32 or bf16 storage, forward and
    backward against float64 of the bf16-rounded inputs (unit scale: uniform in [-1, 1)),
    the backward's with the out the ranks returned (gathered), within the FAST bounds."""
    tag = f"[{dtype} compute={compute} {pattern} {distribution} window={window}]"
    n_total, hq, hkv = 9 * P + 4, 2 * P, P
    rng = np.random.default_rng(seed)
    q, k, v, dout = (rng.uniform(-1, 1, x.shape).astype(np.float32)
                     for x in ref.make_inputs(seed, 1, n_total, hq, hkv, HEAD_DIM))
    rounded = [ref.round_bf16(x) for x in (q, k, v, dout)]
    pos = ref.all_positions(distribution, n_total, P)
    masks = dict(window_left=window[0], window_right=window[1])
    mine = [ref.shard_at(x, pos[RANK], "bshd") for x in (q, k, v, dout)]
    arrays = mine if dtype == "f32" else [ref.to_storage(x, "bf16") for x in mine]

    def as64(x):
        return np.asarray(x, np.float64) if dtype == "f32" else ref.from_storage(x, "bf16")

    with ctx.plan(1, len(pos[RANK]), hq, HEAD_DIM, num_heads_kv=hkv, mask="causal",
                  distribution=distribution, pattern=pattern, dtype=dtype, compute=compute,
                  timeout_seconds=TIMEOUT, **masks) as plan:
        check(plan.compute == ba.Compute[(compute or "default").upper()], f"{tag} plan.compute {plan.compute!r}")
        out, lse = plan.forward(*arrays[:3])
        grads = plan.backward(*arrays[:3], out, lse, arrays[3])
    out_ref, lse_ref = ref.forward(*rounded[:3], True, **masks)
    given = np.zeros(out_ref.shape)
    for p_, o in COMM.allgather((pos[RANK], as64(out))):
        given[:, p_] = o
    grads_ref = ref.backward(*rounded, True, given_out=given, **masks)
    err = float(np.max(np.abs(as64(out) - ref.shard_at(out_ref, pos[RANK], "bshd")), initial=0.0))
    check(err <= ref.FAST_OUT_TOL * float(np.max(np.abs(out_ref))), f"{tag} out error {err:.3g}")
    check(ref.lse_error(lse, ref.shard_lse_at(lse_ref, pos[RANK])) <= ref.FAST_LSE_TOL, f"{tag} lse")
    for name, got, want in zip(("dq", "dk", "dv"), grads, grads_ref):
        err = float(np.max(np.abs(as64(got) - ref.shard_at(want, pos[RANK], "bshd")), initial=0.0))
        scale = max(float(np.max(np.abs(want))), 1e-3)
        check(err <= ref.FAST_GRAD_TOL * scale, f"{tag} {name} error {err:.3g} vs {scale:.3g}")


def main() -> int:
    t0 = time.perf_counter()
    check(ba.version() == ba.VERSION_NUMBER, f"version {ba.version()} != {ba.VERSION_NUMBER}")
    try:
        with ba.Context.from_mpi(COMM) as ctx:
            check((ctx.rank, ctx.size, ctx.kind) == (RANK, P, "mpi"),
                  f"context rank/size {(ctx.rank, ctx.size)} != {(RANK, P)}")
            seed = 1000
            for counts in shard_sets(P):
                for layout in ("bshd", "bhsd"):
                    for mask in ("none", "causal"):
                        seed += 1
                        run_case(ctx, counts, layout, mask, seed)
            for i, variant in enumerate(VARIANTS):
                run_variant(ctx, *variant, seed=2000 + i)
            # Every other pattern (ULYSSES where the kv heads divide), and the
            # double ring in 2-rank groups, on the variants.
            for i, variant in enumerate(VARIANTS):
                for pattern in ("ring", "allgather", "ulysses", "auto"):
                    if pattern == "ulysses" and variant[6] % P:
                        continue
                    run_variant(ctx, *variant, seed=3000 + i, pattern=pattern)
                if P % 2 == 0 and P > 2:
                    run_variant(ctx, *variant, seed=4000 + i, intra_group_size=2)
                    run_variant(ctx, *variant, seed=4000 + i, pattern="ring", intra_group_size=2)
            # Score modifiers (0.8): sinks, softcap and both, on a spread of variants
            # under every pattern (ULYSSES where the kv heads divide).
            modifiers = (dict(sinks=True), dict(softcap=2.0), dict(sinks=True, softcap=2.0))
            for i, variant in enumerate(VARIANTS[1::3] + VARIANTS[-1:]):
                for j, (mod, pattern) in enumerate(itertools.product(
                        modifiers, ("burst", "ring", "allgather", "ulysses"))):
                    if pattern == "ulysses" and variant[6] % P:
                        continue
                    seed = 7000 + 100 * i + j
                    sinks = ref.make_sinks(seed, variant[5]) if mod.get("sinks") else None
                    run_variant(ctx, *variant, seed=seed, pattern=pattern,
                                softcap=mod.get("softcap", 0.0), sinks=sinks)
            for i, (dtype, pattern) in enumerate(itertools.product(("bf16", "f16"),
                                                                   ("burst", "ring", "allgather", "ulysses"))):
                run_half(ctx, dtype, pattern, seed=5000 + i)
            fast_cases = [("f32", "fast", "burst", "zigzag", (-1, -1)), ("bf16", None, "burst", "zigzag", (-1, -1)),
                          ("bf16", "fast", "ring", "striped", (6, 0)), ("f32", "fast", "allgather", "contiguous", (5, 5)),
                          ("bf16", "fast", "ulysses", "contiguous", (-1, -1))]
            for i, case in enumerate(fast_cases):
                run_fast(ctx, *case, seed=6000 + i)
            error_paths(ctx)
            variant_error_paths(ctx)
        other_contexts()
    except Exception:  # noqa: BLE001 - report, then let the allreduce decide
        failures.append("exception: " + traceback.format_exc())

    elapsed = time.perf_counter() - t0
    total_failures = COMM.allreduce(len(failures), op=MPI.SUM)
    lines = [f"mpi_check rank {RANK}/{P}: FAIL {f}" for f in failures]
    if os.environ.get("MPI_CHECK_VERBOSE"):
        lines += [f"mpi_check rank {RANK}/{P}: note {n}" for n in notes]
    lines.append(
        f"mpi_check rank {RANK}/{P}: {checks} checks, {len(failures)} failed here, "
        f"{total_failures} failed in all; worst error out {worst['out']:.2e} "
        f"grad {worst['grad']:.2e} lse {worst['lse']:.2e}; {bytes_checked} byte counts "
        f"checked ({len(notes)} differ from the no-skip closed form, as documented; "
        f"MPI_CHECK_VERBOSE=1 lists them); {elapsed:.2f} s; library {ba.library_path}")
    _testenv.print_in_rank_order(COMM, lines)
    return 1 if total_failures else 0


if __name__ == "__main__":
    sys.exit(main())
