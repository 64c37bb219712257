#!/usr/bin/env python3
"""pytest for burst_attention.torch under mpirun: run with 2 and 3 ranks.

    mpirun --allow-run-as-root --oversubscribe -n 2 python3 -m pytest -q Tests/python/torch_mpi_check.py
    mpirun --allow-run-as-root --oversubscribe -n 3 python3 -m pytest -q Tests/python/torch_mpi_check.py

(The file name keeps it out of the single-process pytest run, which collects test_*.py.)
Every test is collective: every rank runs the same tests in the same order, and each
test ends by gathering every rank's failures, so a failure on one rank fails the test on
all ranks and the ranks stay in step.

Every rank builds the same whole-sequence q, k, v and output gradient (fixed seed),
takes its shard with burst_attention.torch.shard_positions, runs burst_attn forward and
autograd backward, and the shards are gathered (allgather) and compared on every rank
with float64 SDPA on the whole sequence (torch_reference.py, DESIGN §3 tolerances):
out, dq, dk, dv. Communicators: MPI.COMM_WORLD, a torch.distributed gloo process group
(the default group and a sub-group of ranks 0..1), and comm=None (the default group).
Cases: zigzag + causal + GQA, striped + window, contiguous with an empty rank, varlen
with zigzag per sequence, a shard length that repeats across global lengths, a bad
tensor on one rank and a differing argument (both must fail on every rank, quickly).
Score modifiers (0.8): sinks and softcap alone and together, dense and varlen; each
rank's sinks.grad is its partial, summed over the ranks with an MPI allreduce (as a
training loop does) and compared with the float64 eager reference's gradient.

"""

from __future__ import annotations

import os
import socket
import time
import traceback

import pytest

import _testenv  # noqa: E402,F401  (sys.path, BURST_ATTENTION_LIBRARY for a checkout)

import faulthandler  # noqa: E402
# A hang shows where it is (tracebacks, then exit) before CTest's own timeout.
faulthandler.dump_traceback_later(float(os.environ.get("BURST_FAULTHANDLER_S", "240")), exit=True)
from mpi4py import MPI  # noqa: E402
import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402

import burst_attention as ba  # noqa: E402
import burst_attention.torch as bt  # noqa: E402
from torch_reference import (FAST_GRAD_TOL, FAST_OUT_TOL, GRAD_TOL, OUT_TOL,  # noqa: E402
                             half_excess, reference, reference_given_out, reference_modified,
                             rel_err)

world = MPI.COMM_WORLD
P, RANK = world.Get_size(), world.Get_rank()
torch.set_num_threads(1)
failures: list = []  # this rank's failures in the current test
checks = 0


def fail(what: str) -> None:
    failures.append(what)


def collective(test):
    """Runs the test body, turning an exception into a failure of this rank, then
    gathers every rank's failures: the test fails on every rank if it failed on any
    (and every rank reaches the allgather, so the ranks stay in step)."""
    import functools

    @functools.wraps(test)
    def wrapper(*args, **kwargs):
        failures.clear()
        try:
            test(*args, **kwargs)
        except BaseException:  # noqa: BLE001
            fail("exception:\n" + traceback.format_exc())
        everyone = world.allgather(list(failures))
        bad = [f"rank {r}: {f}" for r, fs in enumerate(everyone) for f in fs]
        assert not bad, "\n".join(bad)
    return wrapper


@pytest.fixture(scope="module", autouse=True)
def torch_distributed():
    init_torch_distributed()
    yield
    dist.destroy_process_group()


def init_torch_distributed() -> None:
    """gloo with the MPI ranks: rank 0 picks a free port and tells the others."""
    port = None
    if RANK == 0:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
    port = world.bcast(port, root=0)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=RANK,
                            world_size=P)


def gather_full(part: torch.Tensor, pos: torch.Tensor, dim: int, like: torch.Tensor,
                comm=world) -> torch.Tensor:
    full = torch.zeros_like(like)
    for p, t in comm.allgather((pos, part)):
        full.index_copy_(dim, p, t)
    return full


def run_case(name, comm, *, b=1, n=97, hq=4, hkv=4, d=16, causal=False, window=(-1, -1),
             distribution="contiguous", layout="bshd", cu_seqlens=None, positions=None,
             members=None, sinks=False, softcap=None):
    """One forward+backward on `comm`, checked against the whole-sequence reference
    (with sinks=True: sinks of the heads drawn from the seed, their gradient summed over
    the members with an allreduce and checked too; softcap: a float or None)."""
    global checks
    members = list(range(P)) if members is None else members
    # the members' communicator for gathering (Split is collective over every rank)
    sub = world if len(members) == P else world.Split(0 if RANK in members else MPI.UNDEFINED, RANK)
    if RANK not in members:
        return
    size, me = len(members), members.index(RANK)
    g = torch.Generator().manual_seed(len(name))
    varlen = cu_seqlens is not None
    if varlen:
        q, k, v, dout = (torch.randn(n, h, d, generator=g) for h in (hq, hkv, hkv, hq))
        dim = 0
    else:
        shape = (lambda h: (b, n, h, d)) if layout == "bshd" else (lambda h: (b, h, n, d))
        q, k, v, dout = (torch.randn(shape(h), generator=g) for h in (hq, hkv, hkv, hq))
        dim = 1 if layout == "bshd" else 2
    pos = (positions[me] if positions is not None else
           bt.shard_positions(distribution, n, size, me, cu_seqlens=cu_seqlens))
    ql, kl, vl = (t.index_select(dim, pos).clone().requires_grad_() for t in (q, k, v))
    sink_values = (torch.rand(hq, generator=g) * 3.5 - 1.0) if sinks else None
    sl = None if sink_values is None else sink_values.clone().requires_grad_()
    modifiers = dict(sinks=sl, softcap=softcap)
    if varlen:
        out = bt.burst_attn_varlen(ql, kl, vl, cu_seqlens, causal=causal, window=window,
                                   comm=comm, distribution=distribution, timeout_seconds=60,
                                   **modifiers)
    else:
        out = bt.burst_attn(ql, kl, vl, causal=causal, window=window, comm=comm,
                            distribution=distribution, layout=layout, timeout_seconds=60,
                            **modifiers)
    out.backward(dout.index_select(dim, pos))
    got = [gather_full(t, pos, dim, like, sub) for t, like in
           ((out.detach(), q), (ql.grad, q), (kl.grad, k), (vl.grad, v))]
    dsinks_ref = None
    if varlen:
        ref = reference_modified(q[None], k[None], v[None], dout[None], sinks=sink_values,
                                 softcap=softcap, causal=causal, window=window,
                                 cu_seqlens=cu_seqlens)
        dsinks_ref = ref[4]
        ref = [t[0] for t in ref[:4]]
    elif sinks or softcap:
        ref = reference_modified(q, k, v, dout, sinks=sink_values, softcap=softcap,
                                 causal=causal, window=window, layout=layout)
        dsinks_ref, ref = ref[4], ref[:4]
    else:
        ref = reference(q, k, v, dout, causal=causal, window=window, layout=layout)
    if sl is not None:
        # this rank's partial; the training loop's allreduce makes the full gradient
        total = torch.from_numpy(sub.allreduce(sl.grad.double().numpy(), op=MPI.SUM))
        checks += 1
        err = rel_err(total, dsinks_ref)
        if not err <= GRAD_TOL:
            fail(f"{name}: dsinks (summed over the ranks) error {err:.3g} > {GRAD_TOL:g}")
    for label, a, r, tol in zip(("out", "dq", "dk", "dv"), got, ref,
                                (OUT_TOL, GRAD_TOL, GRAD_TOL, GRAD_TOL)):
        checks += 1
        err = rel_err(a, r)
        if not err <= tol:
            fail(f"{name}: {label} error {err:.3g} > {tol:g}")


def expect_collective_failure(name, comm, bad_rank, make_call, bad_exc, others_exc):
    global checks
    start = time.monotonic()
    try:
        make_call(RANK == bad_rank)
        fail(f"{name}: no error raised")
    except BaseException as exc:  # noqa: BLE001
        want = bad_exc if RANK == bad_rank else others_exc
        checks += 1
        if not isinstance(exc, want):
            fail(f"{name}: expected {want.__name__}, got {type(exc).__name__}: {exc}")
    if time.monotonic() - start > 30:  # the call timeout is 60 s: this was no wait
        fail(f"{name}: the failure took {time.monotonic() - start:.1f} s")


@collective
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_storage_on_comm_world(dtype):
    """bf16/fp16 tensors under mpirun, compute="exact" (the default for bf16 is "fast"):
    the same dtype out and in the gradients, every element within the storage contract
    of float64 SDPA from the same rounded inputs (the backward's reference uses the
    rounded out), forward bytes half of float32's."""
    global checks
    g = torch.Generator().manual_seed(11)
    n, hq, hkv, d = 67, 4, 2, 16
    q, k, v, dout = (torch.randn((1, n, h, d), generator=g).to(dtype) for h in (hq, hkv, hkv, hq))
    pos = bt.shard_positions("zigzag", n, P, RANK)
    ql, kl, vl = (t.index_select(1, pos).clone().requires_grad_() for t in (q, k, v))
    out = bt.burst_attn(ql, kl, vl, causal=True, comm=world, distribution="zigzag", timeout_seconds=60,
                        compute="exact")
    out.backward(dout.index_select(1, pos))
    half_bytes = bt.last_stats(world, "forward")["bytes_sent"]
    got = [gather_full(t, pos, 1, like) for t, like in
           ((out.detach(), q), (ql.grad, q), (kl.grad, k), (vl.grad, v))]
    ref = reference_given_out(q, k, v, dout, got[0], causal=True)
    for label, a, r, tol in zip(("out", "dq", "dk", "dv"), got, ref, (OUT_TOL, GRAD_TOL, GRAD_TOL, GRAD_TOL)):
        checks += 1
        if a.dtype != dtype:
            fail(f"{dtype} {label}: dtype {a.dtype}")
        e = half_excess(a, r, dtype, tol)
        if not e <= 1:
            fail(f"{dtype} {label}: error / allowed = {e:.3g}")
    bt.burst_attn(*(t.detach().float() for t in (ql, kl, vl)), causal=True, comm=world,
                  distribution="zigzag", timeout_seconds=60)
    checks += 1
    if 2 * half_bytes != bt.last_stats(world, "forward")["bytes_sent"]:
        fail(f"{dtype}: forward bytes {half_bytes}, float32 {bt.last_stats(world, 'forward')['bytes_sent']}")


@collective
@pytest.mark.parametrize("dtype,compute", [(torch.float32, "fast"), (torch.bfloat16, None)])
def test_fast_on_comm_world(dtype, compute):
    """compute="fast" (or the default, with bfloat16 tensors) under mpirun: out and the
    gradients within the FAST bounds of float64 attention of the bf16-rounded inputs
    (unit scale: uniform in [-1, 1); the backward's reference takes D from the out)."""
    global checks
    g = torch.Generator().manual_seed(13)
    n, hq, hkv, d = 61, 4, 2, 16
    q, k, v, dout = (torch.empty((1, n, h, d)).uniform_(-1, 1, generator=g).to(dtype) for h in (hq, hkv, hkv, hq))
    pos = bt.shard_positions("zigzag", n, P, RANK)
    ql, kl, vl = (t.index_select(1, pos).clone().requires_grad_() for t in (q, k, v))
    out = bt.burst_attn(ql, kl, vl, causal=True, window=(9, 0), comm=world, distribution="zigzag",
                        timeout_seconds=60, compute=compute)
    out.backward(dout.index_select(1, pos))
    got = [gather_full(t, pos, 1, like) for t, like in
           ((out.detach(), q), (ql.grad, q), (kl.grad, k), (vl.grad, v))]
    rounded = [t.to(torch.bfloat16).double() for t in (q, k, v, dout)]
    ref = reference_given_out(*rounded, got[0], causal=True, window=(9, 0))
    for label, a, r, tol in zip(("out", "dq", "dk", "dv"), got, ref,
                                (FAST_OUT_TOL, FAST_GRAD_TOL, FAST_GRAD_TOL, FAST_GRAD_TOL)):
        checks += 1
        e = rel_err(a, r)
        if not e <= tol:
            fail(f"{dtype} compute={compute} {label}: error {e:.3g} > {tol}")


@collective
def test_zigzag_causal_gqa_on_comm_world():
    run_case("zigzag causal GQA 8/2 on COMM_WORLD", world, b=2, n=131, hq=8, hkv=2,
             causal=True, distribution="zigzag")


@collective
def test_striped_window_mqa_on_the_torch_group():
    run_case("striped window (20,0) causal MQA on the torch group", dist.group.WORLD, n=120,
             hq=4, hkv=1, causal=True, window=(20, 0), distribution="striped")


@collective
def test_comm_none_is_the_default_torch_group_bhsd():
    run_case("contiguous bhsd, comm=None (default torch group)", None, b=2, n=77,
             layout="bhsd", window=(9, 9))


@collective
def test_contiguous_with_an_empty_rank():
    counts = [0] + [40 // (P - 1) + (r < 40 % (P - 1)) for r in range(P - 1)]
    starts = [sum(counts[:r]) for r in range(P)]
    run_case("contiguous with an empty rank 0", world, n=40, causal=True,
             positions=[torch.arange(s, s + c) for s, c in zip(starts, counts)])


@collective
def test_varlen_zigzag_causal():
    run_case("varlen zigzag causal", world, n=150, hq=4, hkv=2, causal=True,
             distribution="zigzag", cu_seqlens=[0, 31, 31, 90, 150])


@collective
def test_varlen_striped_window_on_the_torch_group():
    run_case("varlen striped window", dist.group.WORLD, n=64, window=(5, 5),
             distribution="striped", cu_seqlens=[0, 20, 64])


@collective
def test_a_torch_sub_group():
    sub = dist.new_group([0, 1])  # collective over every rank, used by ranks 0, 1
    for _ in range(2):
        run_case("a sub-group (ranks 0, 1) of the torch world", sub, n=50, causal=True,
                 distribution="zigzag", members=[0, 1])
    if RANK in (0, 1):
        # mapped once: the same MPI communicator, context and plan on the second call
        ctx = bt.context_for(sub)
        if ctx is not bt.context_for(sub) or ctx.size != 2:
            fail("a sub-group's context is not cached")
    if bt.context_for(dist.group.WORLD) is not bt.context_for(world):
        fail("the default torch group and COMM_WORLD do not share one context")


@collective
def test_shard_length_that_repeats_across_global_lengths():
    # Rank 0 holds 5 tokens every time; the global lengths differ.
    for n in (5 * P, 5 * P - 1, 5 * P):
        counts = [5] + [(n - 5) // (P - 1) + (r < (n - 5) % (P - 1)) for r in range(P - 1)]
        starts = [sum(counts[:r]) for r in range(P)]
        run_case(f"repeated shard length, N = {n}", world, n=n, causal=True,
                 positions=[torch.arange(s, s + c) for s, c in zip(starts, counts)])


@collective
def test_a_bad_tensor_on_one_rank_fails_on_every_rank():
    q, k, v = (torch.randn(1, 8, 2, 8) for _ in range(3))
    expect_collective_failure(
        "a float64 q on the last rank", world, P - 1,
        lambda bad: bt.burst_attn(q.double() if bad else q, k, v, comm=world, timeout_seconds=60),
        TypeError, ba.MismatchError)


@collective
def test_a_differing_argument_fails_on_every_rank_and_the_group_stays_usable():
    q, k, v = (torch.randn(1, 8, 2, 8) for _ in range(3))
    expect_collective_failure(
        "causal on rank 0 only", dist.group.WORLD, 0,
        lambda bad: bt.burst_attn(q, k, v, causal=bad, comm=dist.group.WORLD, timeout_seconds=60),
        ba.MismatchError, ba.MismatchError)
    run_case("still usable after the failures", world, n=33, causal=True,
             distribution="zigzag")


@collective
def test_sinks_softcap_zigzag_causal_gqa_on_comm_world():
    run_case("sinks + softcap, zigzag causal GQA 8/2 on COMM_WORLD", world, b=2, n=131, hq=8,
             hkv=2, causal=True, distribution="zigzag", sinks=True, softcap=2.0)


@collective
def test_sinks_striped_window_on_the_torch_group():
    run_case("sinks, striped window (20,0) causal MQA on the torch group", dist.group.WORLD,
             n=120, hq=4, hkv=1, causal=True, window=(20, 0), distribution="striped", sinks=True)


@collective
def test_softcap_contiguous_bhsd_comm_none():
    run_case("softcap, contiguous bhsd window, comm=None", None, b=2, n=77, layout="bhsd",
             window=(9, 9), softcap=1.5)


@collective
def test_sinks_softcap_varlen_zigzag_causal():
    run_case("sinks + softcap, varlen zigzag causal window", world, n=150, hq=4, hkv=2,
             causal=True, window=(30, 0), distribution="zigzag", cu_seqlens=[0, 31, 31, 90, 150],
             sinks=True, softcap=3.0)


@collective
def test_sinks_on_a_rank_with_no_tokens():
    """An empty rank still joins the call and contributes a zero partial."""
    counts = [0] + [40 // (P - 1) + (r < 40 % (P - 1)) for r in range(P - 1)]
    starts = [sum(counts[:r]) for r in range(P)]
    run_case("sinks, contiguous with an empty rank 0", world, n=40, causal=True, sinks=True,
             positions=[torch.arange(s, s + c) for s, c in zip(starts, counts)])


@collective
def test_sinks_values_differing_fail_on_every_rank():
    q, k, v = (torch.randn(1, 8, 2, 8) for _ in range(3))
    expect_collective_failure(
        "sinks differing on the last rank", world, P - 1,
        lambda bad: bt.burst_attn(q, k, v, comm=world, timeout_seconds=60,
                                  sinks=torch.full((2,), 1.0 if bad else 0.0)),
        ba.MismatchError, ba.MismatchError)
