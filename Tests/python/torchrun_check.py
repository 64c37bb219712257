#!/usr/bin/env python3
"""pytest for burst_attention.torch under torchrun, with gloo and no MPI: run with 2 and
3 processes.

    torchrun --standalone --nproc-per-node 2 -m pytest -q Tests/python/torchrun_check.py
    torchrun --standalone --nproc-per-node 3 -m pytest -q Tests/python/torchrun_check.py

(The file name keeps it out of the single-process pytest run, which collects test_*.py.)
Nothing here imports mpi4py, and the first test checks that nothing else did either: the
layer must reach the other ranks through torch.distributed itself (the 0.9 callback
transport over a gloo process group, `Context.from_torch`).

Every test is collective: every rank runs the same tests in the same order, and each
test ends by gathering every rank's failures (all_gather_object over the default group),
so a failure on one rank fails the test on all ranks and the ranks stay in step.

Every rank builds the same whole-sequence q, k, v and output gradient (fixed seed),
takes its shard, runs burst_attn forward and autograd backward, and the shards are
gathered and compared on every rank with float64 SDPA / eager attention on the whole
sequence (torch_reference.py, DESIGN §3 tolerances): out, dq, dk, dv (and the sinks'
gradient summed over the ranks). Cases: causal zigzag GQA with every pattern (ULYSSES
where the heads divide), non-causal contiguous bhsd, striped + window MQA, varlen,
sinks + softcap, bf16, a sub-group (3 ranks), comm=None / group.WORLD / a Context.
Failures: a differing causal flag and a differing shape on one rank (every rank raises,
quickly, and the group stays usable), a plan whose config differs on one rank
(MismatchError from the library over the transport), and a transport callback that
raises on one rank (every rank fails well before the call's deadline; the context is
finished, a new one works).
"""

from __future__ import annotations

import os
import sys
import time
import traceback

import pytest

import _testenv  # noqa: E402,F401  (sys.path, BURST_ATTENTION_LIBRARY for a checkout)

import faulthandler  # noqa: E402
# A hang shows where it is (tracebacks, then exit) before CTest's own timeout.
faulthandler.dump_traceback_later(float(os.environ.get("BURST_FAULTHANDLER_S", "100")), exit=True)
import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402

import burst_attention as ba  # noqa: E402
import burst_attention.torch as bt  # noqa: E402
from torch_reference import (GRAD_TOL, OUT_TOL, half_excess, reference,  # noqa: E402
                             reference_given_out, reference_modified, rel_err)

P = int(os.environ["WORLD_SIZE"])
RANK = int(os.environ["RANK"])
torch.set_num_threads(1)
failures: list = []  # this rank's failures in the current test
TIMEOUT = 30.0       # per library call: a hang becomes an error well inside CTest's limit


def fail(what: str) -> None:
    failures.append(what)


def collective(test):
    """Runs the test body, turning an exception into a failure of this rank, then
    gathers every rank's failures: the test fails on every rank if it failed on any."""
    import functools

    @functools.wraps(test)
    def wrapper(*args, **kwargs):
        failures.clear()
        try:
            test(*args, **kwargs)
        except BaseException:  # noqa: BLE001
            fail("exception:\n" + traceback.format_exc())
        everyone = [None] * P
        dist.all_gather_object(everyone, list(failures))
        bad = [f"rank {r}: {f}" for r, fs in enumerate(everyone) for f in fs]
        assert not bad, "\n".join(bad)
    return wrapper


@pytest.fixture(scope="module", autouse=True)
def torch_distributed():
    dist.init_process_group("gloo")  # torchrun's env:// (MASTER_ADDR, MASTER_PORT, ...)
    yield
    bt.clear_plan_cache()
    dist.destroy_process_group()


def gather_full(part: torch.Tensor, pos: torch.Tensor, dim: int, like: torch.Tensor,
                members=None) -> torch.Tensor:
    """The whole-sequence tensor from every member's shard (all_gather_object over the
    world; non-members contribute nothing)."""
    everyone = [None] * P
    dist.all_gather_object(everyone, (pos, part.detach()))
    full = torch.zeros_like(like)
    for r, item in enumerate(everyone):
        if item is not None and (members is None or r in members):
            full.index_copy_(dim, item[0], item[1].to(full.dtype))
    return full


def sum_over(t: torch.Tensor, members) -> torch.Tensor:
    everyone = [None] * P
    dist.all_gather_object(everyone, t.detach().double())
    return sum(everyone[r] for r in members)


def run_case(name, comm, *, b=1, n=97, hq=4, hkv=4, d=16, causal=False, window=(-1, -1),
             distribution="contiguous", layout="bshd", cu_seqlens=None, pattern="burst",
             members=None, sinks=False, softcap=None, dtype=torch.float32):
    """One forward+backward on `comm`, checked against the whole-sequence reference.
    Every rank takes part in the gathers; only `members` call burst_attn."""
    members = list(range(P)) if members is None else members
    inside = RANK in members
    size, me = len(members), (members.index(RANK) if inside else 0)
    g = torch.Generator().manual_seed(len(name))
    varlen = cu_seqlens is not None
    if varlen:
        q, k, v, dout = (torch.randn(n, h, d, generator=g) for h in (hq, hkv, hkv, hq))
        dim = 0
    else:
        shape = (lambda h: (b, n, h, d)) if layout == "bshd" else (lambda h: (b, h, n, d))
        q, k, v, dout = (torch.randn(shape(h), generator=g) for h in (hq, hkv, hkv, hq))
        dim = 1 if layout == "bshd" else 2
    q, k, v, dout = (t.to(dtype) for t in (q, k, v, dout))
    pos = bt.shard_positions(distribution, n, size, me, cu_seqlens=cu_seqlens)
    sink_values = (torch.rand(hq, generator=g) * 3.5 - 1.0) if sinks else None
    got = [None] * 4
    dsinks = torch.zeros(hq, dtype=torch.float64)
    if inside:
        ql, kl, vl = (t.index_select(dim, pos).clone().requires_grad_() for t in (q, k, v))
        sl = None if sink_values is None else sink_values.clone().requires_grad_()
        options = dict(causal=causal, window=window, comm=comm, distribution=distribution,
                       timeout_seconds=TIMEOUT, pattern=pattern, sinks=sl, softcap=softcap,
                       compute="exact")
        if varlen:
            out = bt.burst_attn_varlen(ql, kl, vl, cu_seqlens, **options)
        else:
            out = bt.burst_attn(ql, kl, vl, layout=layout, **options)
        out.backward(dout.index_select(dim, pos))
        got = [out.detach(), ql.grad, kl.grad, vl.grad]
        if sl is not None:
            dsinks = sl.grad.double()
        if out.dtype != dtype:
            fail(f"{name}: out dtype {out.dtype}, expected {dtype}")
    else:
        pos = torch.zeros(0, dtype=torch.long)
        got = [torch.zeros(0)] * 4
    full = [gather_full(t, pos, dim, like, members) for t, like in zip(got, (q, q, k, v))]
    total_dsinks = sum_over(dsinks, members) if sinks else None
    if not inside:
        return
    if dtype != torch.float32:
        ref = reference_given_out(q, k, v, dout, full[0], causal=causal, window=window,
                                  layout=layout)
        for label, a, r, tol in zip(("out", "dq", "dk", "dv"), full, ref,
                                    (OUT_TOL, GRAD_TOL, GRAD_TOL, GRAD_TOL)):
            e = half_excess(a, r, dtype, tol)
            if not e <= 1:
                fail(f"{name}: {label} error / allowed = {e:.3g}")
        return
    if varlen or sinks or softcap:
        args = (q[None], k[None], v[None], dout[None]) if varlen else (q, k, v, dout)
        ref = reference_modified(*args, sinks=sink_values, softcap=softcap, causal=causal,
                                 window=window, cu_seqlens=cu_seqlens,
                                 **({} if varlen else {"layout": layout}))
        dsinks_ref = ref[4]
        ref = [t[0] for t in ref[:4]] if varlen else ref[:4]
        if sinks:
            err = rel_err(total_dsinks, dsinks_ref)
            if not err <= GRAD_TOL:
                fail(f"{name}: dsinks (summed over the ranks) error {err:.3g} > {GRAD_TOL:g}")
    else:
        ref = reference(q, k, v, dout, causal=causal, window=window, layout=layout)
    for label, a, r, tol in zip(("out", "dq", "dk", "dv"), full, ref,
                                (OUT_TOL, GRAD_TOL, GRAD_TOL, GRAD_TOL)):
        err = rel_err(a, r)
        if not err <= tol:
            fail(f"{name}: {label} error {err:.3g} > {tol:g}")


def expect_every_rank_fails(name, make_call, bad_exc, others_exc, limit=15.0):
    """make_call(bad) on every rank (bad on the last rank): every rank must raise the
    expected kind, well before the call's timeout."""
    start = time.monotonic()
    bad = RANK == P - 1
    try:
        make_call(bad)
        fail(f"{name}: no error raised")
    except BaseException as exc:  # noqa: BLE001
        want = bad_exc if bad else others_exc
        if not isinstance(exc, want):
            fail(f"{name}: expected {want}, got {type(exc).__name__}: {exc}")
    if time.monotonic() - start > limit:
        fail(f"{name}: the failure took {time.monotonic() - start:.1f} s")


# ----------------------------------------------------------------------------- tests

@collective
def test_the_world_is_torchruns_and_mpi_is_not_initialised():
    ctx = bt.context_for(None)
    if ctx.size != P or ctx.rank != RANK:
        fail(f"context_for(None): rank {ctx.rank} of {ctx.size}; torchrun: {RANK} of {P}")
    if ctx.size != dist.get_world_size():
        fail(f"context size {ctx.size} != torch world size {dist.get_world_size()}")
    if ctx.kind != "torch":
        fail(f"context kind {ctx.kind!r}, expected 'torch' (the torch.distributed transport)")
    if bt.context_for(dist.group.WORLD) is not ctx:
        fail("comm=None and group.WORLD do not share one context")
    mpi = sys.modules.get("mpi4py.MPI")
    if mpi is not None:
        fail(f"mpi4py.MPI was imported (initialised: {mpi.Is_initialized()})")
    # one call (not causal: every rank needs every other's keys): the bytes say that
    # the other ranks took part
    x = torch.randn(1, 8, 2, 8)
    bt.burst_attn(x, x, x, timeout_seconds=TIMEOUT)
    stats = bt.last_stats(None)
    if P > 1 and stats["bytes_received"] == 0:
        fail(f"no bytes received from the other ranks: {stats}")
    if stats["intra_group_size"] != P:
        fail(f"intra_group_size {stats['intra_group_size']}, expected {P} (one node)")


@collective
@pytest.mark.parametrize("pattern", ["burst", "ring", "allgather", "ulysses", "auto"])
def test_causal_zigzag_gqa_every_pattern(pattern):
    # 12 query heads over 6 kv heads: ULYSSES needs the kv heads to divide by P (2, 3)
    run_case(f"causal zigzag GQA 12/6 {pattern}", None, b=2, n=131, hq=12, hkv=6,
             causal=True, distribution="zigzag", pattern=pattern)


@collective
def test_causal_zigzag_gqa_8_2_on_group_world():
    run_case("causal zigzag GQA 8/2 on group.WORLD", dist.group.WORLD, b=1, n=160, hq=8,
             hkv=2, causal=True, distribution="zigzag")


@collective
@pytest.mark.parametrize("pattern", ["burst", "ring", "allgather"])
def test_non_causal_contiguous_bhsd(pattern):
    run_case(f"non-causal contiguous bhsd {pattern}", None, b=2, n=77, layout="bhsd",
             pattern=pattern)


@collective
def test_striped_window_mqa():
    run_case("striped window (20,0) causal MQA", None, n=120, hq=4, hkv=1, causal=True,
             window=(20, 0), distribution="striped")


@collective
def test_varlen_zigzag_causal():
    run_case("varlen zigzag causal", None, n=150, hq=4, hkv=2, causal=True,
             distribution="zigzag", cu_seqlens=[0, 31, 31, 90, 150])


@collective
def test_sinks_softcap_zigzag_causal_gqa():
    run_case("sinks + softcap, zigzag causal GQA 8/2", None, b=2, n=131, hq=8, hkv=2,
             causal=True, distribution="zigzag", sinks=True, softcap=2.0)


@collective
def test_bf16_zigzag_causal():
    run_case("bf16 zigzag causal GQA 4/2", None, n=67, hq=4, hkv=2, causal=True,
             distribution="zigzag", dtype=torch.bfloat16)


@collective
@pytest.mark.parametrize("dedicated", [True, False])
def test_a_context_from_torch_as_comm(dedicated):
    """Context.from_torch over its own gloo group (default) or over the default group
    itself (dedicated=False)."""
    ctx = ba.Context.from_torch(dedicated=dedicated)
    try:
        if ctx.size != P or ctx.kind != "torch":
            fail(f"Context.from_torch(): {ctx}")
        if (ctx._transport.group is dist.group.WORLD) == dedicated:
            fail(f"dedicated={dedicated}: the transport's group is "
                 f"{'' if dedicated else 'not '}the default group")
        run_case(f"comm = Context.from_torch(dedicated={dedicated})", ctx, n=64, hq=4,
                 hkv=2, causal=True, distribution="zigzag")
    finally:
        ctx.close()


@pytest.mark.skipif(P < 3, reason="a proper sub-group needs 3 ranks")
@collective
def test_a_sub_group():
    sub = dist.new_group([0, 1])  # collective over every rank, used by ranks 0, 1
    for _ in range(2):
        run_case("a sub-group (ranks 0, 1)", sub if RANK in (0, 1) else None, n=50,
                 causal=True, distribution="zigzag", members=[0, 1])
    if RANK in (0, 1):
        ctx = bt.context_for(sub)
        if ctx is not bt.context_for(sub) or ctx.size != 2 or ctx.kind != "torch":
            fail(f"the sub-group's context: {ctx}")


@collective
def test_a_differing_causal_flag_fails_on_every_rank_and_the_group_stays_usable():
    q, k, v = (torch.randn(1, 8, 2, 8) for _ in range(3))
    expect_every_rank_fails(
        "causal on the last rank only",
        lambda bad: bt.burst_attn(q, k, v, causal=bad, timeout_seconds=TIMEOUT),
        ba.MismatchError, ba.MismatchError)
    run_case("still usable after the mismatch", None, n=33, causal=True,
             distribution="zigzag")


@collective
def test_a_differing_shape_fails_on_every_rank():
    def call(bad):
        q = torch.randn(1, 8, 4 if bad else 2, 8)
        k = torch.randn(1, 8, 2, 8)
        return bt.burst_attn(q, k, k, timeout_seconds=TIMEOUT)
    expect_every_rank_fails("4 query heads on the last rank", call,
                            ba.MismatchError, ba.MismatchError)
    expect_every_rank_fails(
        "a float64 q on the last rank",
        lambda bad: bt.burst_attn(torch.randn(1, 8, 2, 8, dtype=torch.float64 if bad else
                                              torch.float32), *(torch.randn(1, 8, 2, 8),) * 2,
                                  timeout_seconds=TIMEOUT),
        TypeError, ba.MismatchError)


@collective
def test_a_plan_config_mismatch_is_the_librarys_over_the_transport():
    """Past the layer: Context.from_torch and plans whose head_dim differs on one rank.
    The library's agreement round runs over the transport's allgather."""
    with ba.Context.from_torch() as ctx:
        expect_every_rank_fails(
            "head_dim differing on the last rank",
            lambda bad: ctx.plan(1, 4, 2, 16 if bad else 8, timeout_seconds=TIMEOUT),
            ba.MismatchError, ba.MismatchError)
        with ctx.plan(1, 4, 2, 8, timeout_seconds=TIMEOUT) as plan:  # still usable
            x = torch.randn(1, 4, 2, 8).numpy()
            plan.forward(x, x, x)


@pytest.mark.skipif(P < 2, reason="needs 2 ranks")
@collective
def test_a_failing_transport_fails_every_rank_before_the_deadline():
    """The last rank's isend raises on the forward: it gets CommunicationError with the
    callback's text; the others CommunicationError (their transport sees the group
    closed) or BurstTimeoutError at the 8 s deadline, never a hang. The context is
    finished; a new one works."""
    ctx = ba.Context.from_torch()
    try:
        # not causal: every rank needs the keys of every other, the broken one's too
        plan = ctx.plan(1, 64, 2, 8, timeout_seconds=8.0)
        if RANK == P - 1:
            def broken(*args):
                raise OSError("injected failure in isend")
            ctx._transport.isend = broken
        x = torch.randn(1, 64, 2, 8).numpy()
        start = time.monotonic()
        try:
            plan.forward(x, x, x)
            if RANK == P - 1:
                fail("the broken rank's forward succeeded")
        except ba.CommunicationError as exc:
            if RANK == P - 1 and "injected failure in isend" not in str(exc):
                fail(f"the callback's text is not in the error: {exc}")
        except ba.BurstTimeoutError:
            if RANK == P - 1:
                fail("the broken rank timed out instead of failing at once")
        elapsed = time.monotonic() - start
        if elapsed > 8.0 + 5.0:
            fail(f"the failure took {elapsed:.1f} s (deadline 8 s)")
        plan.close()
    finally:
        ctx.close()
    run_case("a new context after the failure", None, n=40, causal=True,
             distribution="zigzag")
