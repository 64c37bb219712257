"""PyTorch layer: exact distributed attention as an autograd function.

    import torch
    from mpi4py import MPI
    from burst_attention.torch import burst_attn

    # q: [batch, n_local, heads_q, d], k/v: [batch, n_local, heads_kv, d] (layout="bshd"),
    # this rank's shard of the sequence; CPU float32, bfloat16 or float16.
    out = burst_attn(q, k, v, causal=True, comm=MPI.COMM_WORLD, distribution="zigzag")
    out.sum().backward()          # q.grad, k.grad, v.grad: this rank's shard's gradients

Every rank calls with its own shard (see `shard_positions` / `shard` for how a
distribution deals the tokens); the result is exactly attention over the whole
sequence, restricted to this rank's queries, and the gradients are those of the whole
sequence's loss with respect to this rank's q, k, v. Both calls are collective: every
rank of the communicator must make them, in the same order, with the same arguments
(except the shard length).

Tensors are used zero-copy when they are CPU float32, bfloat16 or float16 and
contiguous (q, k, v of one dtype); a non-contiguous input is copied to a contiguous one
first (as torch kernels do). With bfloat16/float16 all accumulation is fp32 (lse is
float32) and out and the gradients are rounded once, to nearest even; they come back in
the input dtype. The tile products follow `compute=`: None/"default" multiplies in bf16
for bfloat16 tensors (as torch's bf16 SDPA does) and in fp32 for float32/float16,
"exact" always in fp32, "fast" always in bf16 (include/burst_attention.h, BURST_COMPUTE_*). Gradients flow to every input that requires
them; double backward is not supported.

Score modifiers (0.8): `softcap=c` (Gemma 2) caps every scaled score x to c·tanh(x/c);
`sinks=` (gpt-oss) is a [heads_q] tensor of per-head logits with no value that join
every softmax denominator. sinks is differentiable: its gradient is THIS RANK'S PARTIAL
(the sum over this rank's query rows), so a training loop sums it over the ranks like
the gradient of any other parameter replicated on them (the allreduce it already does).

Communicators (`comm=`):
  * an mpi4py communicator (MPI.COMM_WORLD, a split, ...);
  * a `torch.distributed` ProcessGroup (or `torch.distributed.group.WORLD`):
      - under mpirun (MPI already initialised in this process, or an MPI launcher's
        environment for a world of torch's size, where importing mpi4py.MPI initialises
        it as before 0.9) and with torch.distributed ranks = MPI ranks
        (init_process_group with rank = MPI rank, e.g. RANK=$OMPI_COMM_WORLD_RANK): the
        group is mapped to the MPI communicator of the same processes, the fast path;
        the gloo group itself carries no traffic of ours;
      - otherwise — a torchrun job, where nothing ever initialises MPI — the library
        talks through torch.distributed itself: a `burst_transport` (C ABI 0.9) over a
        gloo group of the same ranks (`Context.from_torch`; docs/torchrun.md has what
        it costs and its limits).
    The members of the group decide together (one all_gather_object over the group the
    first time it is used), so they never take different paths;
  * a `burst_attention.Context` (MPI, torch, self, or one of `Context.loopback(n)`'s ranks);
  * None: the default torch.distributed group when torch.distributed is initialised;
    else MPI.COMM_WORLD when mpi4py has initialised MPI and COMM_WORLD has more than one
    rank; else, in a job whose environment says WORLD_SIZE > 1 (torchrun) with
    torch.distributed not initialised, RuntimeError (call
    torch.distributed.init_process_group("gloo") first: a silent one-rank run would
    train an unsharded copy per process); else a one-rank context (whole-sequence
    attention in this process).

Inference over a `burst_attention.KVCache` (`ctx.kv_cache(...)`): `prefill(cache, layer,
plan, seq_ids, k, v)` stores a prompt shard's K,V, `decode(cache, layer, seq_ids, q, k,
v)` returns (out, lse) as tensors (no autograd: inference).

Plans (the library's per-shape workspace) are cached per context and shape, least
recently used first out (`set_plan_cache_size`, `clear_plan_cache`). On contexts of
several ranks each call first agrees on every rank's shard length (one small allgather
through mpi4py for MPI contexts, torch.distributed.all_gather_object for torch ones, an
in-process exchange for loopback ones), so ranks
never disagree on whether a plan is cached, even when shard lengths repeat across
different global lengths.
"""

from __future__ import annotations

import collections
import math
import os
import sys
import threading
import typing
import warnings
import weakref

import numpy as np
import torch

from ._context import Context
from ._errors import BurstError, MismatchError, Status
from ._enums import Compute, Distribution, Layout, Pattern, parse
from ._sharding import shard_counts as _shard_counts_np
from ._sharding import shard_positions as _shard_positions_np

__all__ = [
    "burst_attn", "burst_attn_varlen", "BurstAttnFunction", "context_for",
    "shard_positions", "shard", "unshard_positions", "set_plan_cache_size",
    "clear_plan_cache", "last_stats", "decode", "prefill",
]

CommLike = typing.Any  # mpi4py Comm | torch.distributed.ProcessGroup | Context | None


# --------------------------------------------------------------------------- #
# Communicators -> contexts


class _Group:
    """The context of one communicator plus what the layer caches for it."""

    def __init__(self, context: Context, keepalive=None, exchange=None):
        self.context = context
        self.keepalive = keepalive  # the mpi4py comm (or group) we were built from
        self.exchange = exchange    # callable(obj) -> [obj of every rank] (allgather)
        self.plans: "collections.OrderedDict[tuple, object]" = collections.OrderedDict()
        self.lock = threading.Lock()
        self.last_stats = self.forward_stats = self.backward_stats = None


_lock = threading.RLock()
_by_key: "dict[object, _Group]" = {}
# id(process group) -> (the group object, its _Group); the object is kept so that the
# id is never reused while the entry exists.
_by_torch_group: "dict[int, tuple]" = {}
_by_context: "weakref.WeakKeyDictionary[Context, _Group]" = weakref.WeakKeyDictionary()
_plan_cache_size = 8
_self_group: "_Group | None" = None


def _mpi_group(comm) -> _Group:
    fhandle = int(comm.py2f())
    key = ("mpi", fhandle)
    with _lock:
        group = _by_key.get(key)
        if group is not None and group.keepalive == comm:
            return group
    # Collective over comm (every rank of it takes this path at the same call).
    context = Context.from_mpi(comm)
    mpi_comm = comm.Dup()  # our own, for the shard-length agreement

    def exchange(item) -> list:
        return mpi_comm.allgather(item)

    group = _Group(context, keepalive=comm, exchange=exchange)  # exchange keeps mpi_comm
    with _lock:
        _by_key[key] = group
        _by_context[context] = group
    return group


# The environment an MPI launcher gives its processes: (world size, rank) variables.
_MPI_LAUNCH_ENV = (("OMPI_COMM_WORLD_SIZE", "OMPI_COMM_WORLD_RANK"),  # Open MPI
                   ("PMI_SIZE", "PMI_RANK"),                          # MPICH, Intel MPI
                   ("MV2_COMM_WORLD_SIZE", "MV2_COMM_WORLD_RANK"))    # MVAPICH


def _mpi_initialised():
    """mpi4py's MPI module if MPI is initialised (and not finalised) in this process,
    else None. Never imports mpi4py.MPI (importing it initialises MPI)."""
    mpi = sys.modules.get("mpi4py.MPI")
    try:
        if mpi is not None and mpi.Is_initialized() and not mpi.Is_finalized():
            return mpi
    except Exception:  # noqa: BLE001 - a broken mpi4py is no MPI
        pass
    return None


def _mpi_launch_size() -> "int | None":
    """The world size an MPI launcher (mpirun, mpiexec) gave this process, or None."""
    for size_var, _ in _MPI_LAUNCH_ENV:
        value = os.environ.get(size_var)
        if value:
            try:
                return int(value)
            except ValueError:
                return None
    return None


def _mpi_for_torch(world_size: int):
    """mpi4py's MPI when this process's MPI may carry a torch world of `world_size`:
    MPI is initialised already, or an MPI launcher started this process in a world of
    that size (then importing mpi4py.MPI initialises MPI, as this layer always did under
    mpirun). None otherwise: under torchrun MPI is never initialised here."""
    mpi = _mpi_initialised()
    if mpi is not None:
        return mpi
    if _mpi_launch_size() != world_size:
        return None
    try:
        from mpi4py import MPI
    except ImportError:
        return None
    return _mpi_initialised()


def _torch_group(pg) -> _Group:
    """The _Group of a torch.distributed process group: its MPI communicator when every
    member's torch rank is its MPI rank (mpirun), else a torch.distributed transport.
    Collective over the group's members the first time."""
    import torch.distributed as dist

    if not dist.is_initialized():
        raise ValueError("comm: torch.distributed is not initialised")
    with _lock:
        entry = _by_torch_group.get(id(pg))
        if entry is not None and entry[0] is pg and not entry[1].context.closed:
            return entry[1]
    ranks = [int(r) for r in dist.get_process_group_ranks(pg)]
    me = dist.get_rank()
    if me not in ranks:
        raise ValueError(f"comm: this process (rank {me}) is not a member of the process "
                         f"group (ranks {ranks})")
    MPI = _mpi_for_torch(dist.get_world_size())
    vote = None  # no MPI here
    if MPI is not None:
        world = MPI.COMM_WORLD
        vote = (world.Get_size(), world.Get_rank())
    votes = [None] * len(ranks)
    dist.all_gather_object(votes, vote, group=pg)  # every member decides alike
    if all(v == (dist.get_world_size(), r) for v, r in zip(votes, ranks)):
        world = MPI.COMM_WORLD
        if ranks == list(range(world.Get_size())):
            comm = world
        else:
            # MPI_Comm_create_group: collective over the group's members only.
            comm = world.Create_group(world.Get_group().Incl(ranks))
        group = _mpi_group(comm)
    else:
        if any(v is not None for v in votes):
            warnings.warn(
                "burst_attention.torch: the process group's torch.distributed ranks are not "
                f"its MPI ranks (MPI world size and rank per member: {votes}); using the "
                "torch.distributed transport instead of MPI (slower; start torch.distributed "
                "with rank = MPI rank, e.g. RANK=$OMPI_COMM_WORLD_RANK, for the MPI path)",
                RuntimeWarning, stacklevel=4)
        group = _transport_group(pg)
    with _lock:
        _by_torch_group[id(pg)] = (pg, group)
    return group


def _transport_group(pg) -> _Group:
    """A context over the process group's own torch.distributed (gloo) traffic, and the
    shard-length agreement over the same (dedicated) group. Collective over the group."""
    context = Context.from_torch(pg)
    transport = context._transport

    def exchange(item) -> list:
        try:
            return transport.allgather_object(item)
        except RuntimeError as exc:  # a closed group (after a failure): as the library says
            raise BurstError(int(Status.COMMUNICATION),
                             f"torch.distributed all_gather_object: {exc}",
                             "burst_attention.torch") from exc

    group = _Group(context, keepalive=pg, exchange=exchange)
    with _lock:
        _by_context[context] = group
    return group


def _context_group(context: Context) -> _Group:
    if context.closed:
        raise ValueError("comm: the Context is closed")
    with _lock:
        group = _by_context.get(context)
        if group is None:
            exchange = None
            transport = getattr(context, "_transport", None)
            if context.size > 1 and hasattr(transport, "allgather_object"):
                exchange = transport.allgather_object  # Context.from_torch
            elif context.size > 1:
                exchange = _LoopbackExchange.for_context(context)
            group = _Group(context, exchange=exchange)
            _by_context[context] = group
        return group


class _LoopbackExchange:
    """An allgather among the Python threads driving one loopback group.

    Every rank's k-th exchange is the same collective (collective calls are made in
    the same order on all ranks), so a round is identified by the per-rank count."""

    _by_token: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()
    _tokens_lock = threading.Lock()

    def __init__(self, size: int):
        self.size = size
        self.cond = threading.Condition()
        self.rounds: "dict[int, list]" = {}
        self.calls = [0] * size

    @classmethod
    def for_context(cls, context: Context):
        token = getattr(context, "_loopback_group", None)
        if context.kind != "loopback" or token is None:
            raise ValueError(f"comm: a {context.size}-rank {context.kind} Context: pass the "
                             "communicator or process group it was made from instead")
        with cls._tokens_lock:
            ex = cls._by_token.get(token)
            if ex is None:
                ex = cls._by_token[token] = cls(context.size)
        rank = context.rank
        return lambda item: ex.allgather(rank, item)

    def allgather(self, rank: int, value, timeout: float = 300.0) -> list:
        with self.cond:
            k = self.calls[rank]
            self.calls[rank] += 1
            slot = self.rounds.setdefault(k, [{}, 0])  # values by rank, ranks done
            slot[0][rank] = value
            self.cond.notify_all()
            if not self.cond.wait_for(lambda: len(slot[0]) == self.size, timeout):
                raise BurstError(8, f"loopback shard-length agreement: only {len(slot[0])} of "
                                    f"{self.size} ranks arrived within {timeout:.0f} s",
                                 "burst_attention.torch")
            result = [slot[0][r] for r in range(self.size)]
            slot[1] += 1
            if slot[1] == self.size:
                del self.rounds[k]
            return result


def context_for(comm: CommLike = None) -> Context:
    """The `burst_attention.Context` the layer uses for `comm` (see the module
    docstring for what `comm` may be). Collective the first time for a given MPI
    communicator or process group."""
    return _group_for(comm).context


def _group_for(comm: CommLike) -> _Group:
    global _self_group
    if isinstance(comm, Context):
        return _context_group(comm)
    if comm is None:
        try:
            import torch.distributed as dist
            if dist.is_available() and dist.is_initialized():
                return _torch_group(dist.group.WORLD)
        except ImportError:  # pragma: no cover
            pass
        mpi = _mpi_initialised()
        if mpi is not None and mpi.COMM_WORLD.Get_size() > 1:
            return _mpi_group(mpi.COMM_WORLD)
        size = _launcher_world_size()
        if size is not None and size > 1:
            raise RuntimeError(
                f"comm=None: this process is one of WORLD_SIZE={size} (torchrun) but "
                "torch.distributed is not initialised; call "
                "torch.distributed.init_process_group('gloo') first (or pass comm=), "
                "else every process would attend over its own shard alone")
        with _lock:
            if _self_group is None or _self_group.context.closed:
                _self_group = _Group(Context.self())
            return _self_group
    if hasattr(comm, "py2f") and hasattr(comm, "Get_size"):
        return _mpi_group(comm)
    try:
        import torch.distributed as dist
        if dist.is_available() and isinstance(comm, dist.ProcessGroup):
            return _torch_group(comm)
    except ImportError:  # pragma: no cover
        pass
    raise TypeError(f"comm: expected an mpi4py communicator, a torch.distributed "
                    f"ProcessGroup, a burst_attention.Context or None, got {type(comm).__name__}")


def _launcher_world_size() -> "int | None":
    """WORLD_SIZE from the environment (torchrun, torch.distributed.launch), or None."""
    value = os.environ.get("WORLD_SIZE")
    if not value:
        return None
    try:
        return int(value)
    except ValueError:
        return None


def set_plan_cache_size(n: int) -> None:
    """How many plans each communicator keeps (default 8, at least 1). Plans hold the
    library's workspace for one shape; a plan still needed by a pending backward stays
    alive until that backward is done."""
    global _plan_cache_size
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"set_plan_cache_size: expected an int >= 1, got {n!r}")
    _plan_cache_size = n


def clear_plan_cache() -> None:
    """Drop every cached plan and forget every communicator (local; pending backwards
    keep their plans). The next call on an MPI communicator or a process group creates
    its context again, collectively — which is how a torchrun job starts over after a
    TIMEOUT or COMMUNICATION error (the torch transport's context is finished then:
    call this on every rank)."""
    global _self_group
    with _lock:
        for group in set(_by_key.values()) | set(_by_context.values()):
            with group.lock:
                group.plans.clear()
        _by_key.clear()
        _by_torch_group.clear()
        _by_context.clear()
        _self_group = None


def last_stats(comm: CommLike = None, which: str = "last") -> dict:
    """Counters of this rank's last call on `comm` (`Plan.stats()`: bytes_sent,
    bytes_received, messages_sent, steps_computed/skipped, tiles_computed/skipped,
    compute/comm_wait/total_seconds). `which`: "last" (the last forward or backward,
    whichever ran last), "forward" (the last forward) or "backward" (the last backward)."""
    if which not in ("last", "forward", "backward"):
        raise ValueError(f"which: expected 'last', 'forward' or 'backward', got {which!r}")
    group = _group_for(comm)
    stats = getattr(group, f"{which}_stats", None)
    if stats is None:
        raise ValueError(f"last_stats: no {'' if which == 'last' else which + ' '}call has "
                         "run on this communicator yet")
    return dict(stats)


# --------------------------------------------------------------------------- #
# Argument checks


# Storage types: torch dtype -> the plan's dtype name. lse is float32 and all
# accumulation fp32 whatever the type; outputs and gradients come back in it.
_STORAGE = {torch.float32: "f32", torch.bfloat16: "bf16", torch.float16: "f16"}


def _check_tensor(name: str, t, ndim: int) -> None:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor, got {type(t).__name__}")
    if t.device.type != "cpu":
        raise ValueError(f"{name}: burst_attention runs on CPU tensors; got device {t.device}")
    if t.dtype not in _STORAGE:
        raise TypeError(f"{name}: expected dtype torch.float32, torch.bfloat16 or torch.float16, got {t.dtype}")
    if t.layout != torch.strided:
        raise ValueError(f"{name}: expected a dense (strided) tensor, got {t.layout}")
    if t.dim() != ndim:
        raise ValueError(f"{name}: expected {ndim} dimensions, got shape {tuple(t.shape)}")


def _window(window) -> "tuple[int, int]":
    try:
        left, right = window
    except (TypeError, ValueError):
        raise TypeError(f"window: expected a pair (left, right), got {window!r}") from None
    out = []
    for side, value in (("left", left), ("right", right)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
            raise TypeError(f"window: {side} must be an int, got {type(value).__name__}")
        if value < -1:
            raise ValueError(f"window: {side} must be >= -1 (-1 = unbounded), got {value}")
        out.append(int(value))
    return out[0], out[1]


def _scale(softmax_scale, head_dim: int) -> float:
    if softmax_scale is None:
        return 0.0  # the library's 1/sqrt(head_dim)
    if isinstance(softmax_scale, bool) or not isinstance(softmax_scale, (int, float)):
        raise TypeError(f"softmax_scale: expected a float or None, got {type(softmax_scale).__name__}")
    value = float(softmax_scale)
    if not math.isfinite(value) or value <= 0.0:
        raise ValueError(f"softmax_scale: expected a finite value > 0, got {softmax_scale!r}")
    return value


def _cu_seqlens_tuple(cu_seqlens) -> "tuple[int, ...]":
    if isinstance(cu_seqlens, torch.Tensor):
        if cu_seqlens.dim() != 1 or cu_seqlens.dtype not in (torch.int32, torch.int64):
            raise TypeError("cu_seqlens: expected a 1-D int32/int64 tensor, got "
                            f"{cu_seqlens.dtype} of shape {tuple(cu_seqlens.shape)}")
        values = cu_seqlens.detach().cpu().tolist()
    else:
        arr = np.asarray(cu_seqlens)
        if arr.ndim != 1 or not (arr.size == 0 or np.issubdtype(arr.dtype, np.integer)):
            raise TypeError("cu_seqlens: expected a 1-D sequence of ints")
        values = arr.tolist()
    if len(values) < 2:
        raise ValueError(f"cu_seqlens: expected at least 2 offsets (one sequence), got {values}")
    return tuple(int(v) for v in values)


# --------------------------------------------------------------------------- #
# Plans


def _plan_for(group: _Group, key: tuple, lengths: tuple, kwargs: dict):
    """The cached plan for this call (collective on a miss; every rank misses or hits
    together because `lengths`, every rank's shard length, is part of the key)."""
    full_key = key + (lengths,)
    with group.lock:
        plan = group.plans.get(full_key)
        if plan is not None and not plan.closed:
            group.plans.move_to_end(full_key)
            return plan
    plan = group.context.plan(seq_len_local=lengths[group.context.rank], **kwargs)
    with group.lock:
        group.plans[full_key] = plan
        while len(group.plans) > _plan_cache_size:
            group.plans.popitem(last=False)  # a pending backward keeps its own reference
    return plan


# The arguments every rank must pass alike (the library checks the rest of the config
# again; num_threads and timeout_seconds may differ between ranks).
_AGREED = ("batch", "num_heads_q", "num_heads_kv", "head_dim", "layout", "causal",
           "window", "softmax_scale", "distribution", "cu_seqlens", "pattern",
           "intra_group_size", "dtype", "compute", "softcap", "sinks")


def _differs(a, b) -> bool:
    """a != b, except that NaN equals NaN: a NaN softcap on every rank is the library's
    InvalidArgumentError to raise, not a disagreement."""
    nan = lambda x: isinstance(x, float) and math.isnan(x)  # noqa: E731
    return not (nan(a) and nan(b)) and a != b


def _agree(group: _Group, n_local: int, agreed: "dict | None", problem: "Exception | None"):
    """One allgather over the ranks: every rank's shard length, its agreed arguments
    and whether it failed validation. Raises on every rank if any rank failed or the
    ranks disagree; returns the shard lengths."""
    if group.exchange is None:
        if problem is not None:
            raise problem
        return (n_local,)
    text = None if problem is None else f"{type(problem).__name__}: {problem}"
    items = group.exchange((n_local if problem is None else -1, agreed, text))
    rank = group.context.rank
    failed = [(r, t) for r, (_, _, t) in enumerate(items) if t is not None]
    if problem is not None:
        others = [f"rank {r}: {t}" for r, t in failed if r != rank]
        if others:
            raise type(problem)(f"{problem} (also {'; '.join(others)})") from problem
        raise problem
    if failed:
        raise MismatchError(int(Status.MISMATCH),
                            "; ".join(f"rank {r} failed argument validation: {t}" for r, t in failed),
                            "burst_attention.torch")
    diffs = []
    for name in _AGREED:
        values = [item[1][name] for item in items]
        if any(_differs(v, values[0]) for v in values):
            diffs.append(f"{name} differs between ranks: " +
                         ", ".join(f"rank {r}: {v!r}" for r, v in enumerate(values)))
    if diffs:
        raise MismatchError(int(Status.MISMATCH), "; ".join(diffs), "burst_attention.torch")
    return tuple(int(item[0]) for item in items)


def _contiguous(t: torch.Tensor) -> torch.Tensor:
    t = t.detach()
    return t if t.is_contiguous() else t.contiguous()


def _np(t: torch.Tensor) -> np.ndarray:
    """A zero-copy numpy view of a contiguous CPU tensor: float32 and float16 as
    they are, bfloat16 as uint16 holding its bits (numpy has no bfloat16)."""
    if t.dtype == torch.bfloat16:
        return t.view(torch.int16).numpy().view(np.uint16)
    return t.numpy()


class BurstAttnFunction(torch.autograd.Function):
    """autograd.Function(q, k, v, plan, group[, sinks]) -> (out, lse). Prefer `burst_attn`.

    With sinks (a [heads_q] tensor; the plan must have been created with sinks), their
    float32 values are set on the plan before the forward and again before the backward
    (one plan serves every layer of a shape, each with its own sinks), and the sinks'
    gradient is this rank's partial (`Plan.sinks_gradient`), in sinks' dtype."""

    @staticmethod
    def forward(ctx, q, k, v, plan, group, sinks=None):
        qc, kc, vc = _contiguous(q), _contiguous(k), _contiguous(v)
        out = torch.empty(plan.q_shape, dtype=qc.dtype)
        lse = torch.empty(plan.lse_shape, dtype=torch.float32)
        sink_values = _sink_values(sinks)
        if sink_values is not None:
            plan.set_sinks(sink_values)
        plan.forward(_np(qc), _np(kc), _np(vc), out=_np(out), lse=_np(lse))
        group.last_stats = group.forward_stats = plan.stats()
        ctx.save_for_backward(qc, kc, vc, out, lse)
        ctx.plan, ctx.group = plan, group
        ctx.sink_values = sink_values
        ctx.sinks_dtype = None if sinks is None else sinks.dtype
        ctx.mark_non_differentiable(lse)
        return out, lse

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, dout, _dlse):
        qc, kc, vc, out, lse = ctx.saved_tensors
        plan = ctx.plan
        dout = _contiguous(dout)
        dq = torch.empty_like(qc)
        dk = torch.empty_like(kc)
        dv = torch.empty_like(vc)
        if ctx.sink_values is not None:
            plan.set_sinks(ctx.sink_values)
        plan.backward(_np(qc), _np(kc), _np(vc), _np(out), _np(lse), _np(dout),
                      dq=_np(dq), dk=_np(dk), dv=_np(dv))
        ctx.group.last_stats = ctx.group.backward_stats = plan.stats()
        need = ctx.needs_input_grad
        dsinks = None
        if len(need) > 5 and need[5]:
            dsinks = torch.from_numpy(plan.sinks_gradient()).to(ctx.sinks_dtype)
        grads = (dq if need[0] else None, dk if need[1] else None,
                 dv if need[2] else None, None, None, dsinks)
        return grads[:len(need)]


def _softcap(softcap) -> float:
    """None -> 0.0 (off); a real number as float. Its value (> 0, finite) is the
    library's to check: it raises InvalidArgumentError on every rank at plan creation."""
    if softcap is None:
        return 0.0
    if isinstance(softcap, bool) or not isinstance(softcap, (int, float, np.floating, np.integer)):
        raise TypeError(f"softcap: expected a float or None, got {type(softcap).__name__}")
    return float(softcap)


def _check_sinks(sinks, heads_q: int) -> None:
    """sinks: None or a CPU floating tensor of shape [heads_q] (any float dtype)."""
    if sinks is None:
        return
    if not isinstance(sinks, torch.Tensor):
        raise TypeError(f"sinks: expected a torch.Tensor or None, got {type(sinks).__name__}")
    if not sinks.dtype.is_floating_point:
        raise TypeError(f"sinks: expected a floating-point tensor, got {sinks.dtype}")
    if sinks.device.type != "cpu":
        raise ValueError(f"sinks: burst_attention runs on CPU tensors; got device {sinks.device}")
    if tuple(sinks.shape) != (heads_q,):
        raise ValueError(f"sinks: expected shape ({heads_q},) (one logit per query head), "
                         f"got {tuple(sinks.shape)}")


def _sink_values(sinks) -> "np.ndarray | None":
    """The values handed to the library: a float32 copy, taken at this call (the
    optimizer may change the tensor in place before the backward runs)."""
    if sinks is None:
        return None
    return sinks.detach().to(torch.float32, copy=True).contiguous().numpy()


def _validate(q, k, v, *, causal, window, softmax_scale, layout, distribution,
              cu_seqlens, num_threads, timeout_seconds, pattern="burst", intra_group_size=0,
              compute=None, softcap=None, sinks=None):
    """(n_local, agreed arguments, plan kwargs, local key) or a raised TypeError /
    ValueError naming the argument. Whether sinks are used is part of the key, not
    their values (set on the plan before every call)."""
    for name, t in (("q", q), ("k", k), ("v", v)):
        _check_tensor(name, t, 4)
    layout_v = Layout(parse(Layout, layout, "layout"))
    seq_axis, head_axis = (1, 2) if layout_v == Layout.BSHD else (2, 1)
    b, n, hq, d = q.shape[0], q.shape[seq_axis], q.shape[head_axis], q.shape[3]
    if not q.dtype == k.dtype == v.dtype:
        raise TypeError(f"q, k, v: expected one dtype, got {q.dtype}, {k.dtype} and {v.dtype}")
    if k.shape != v.shape:
        raise ValueError(f"k and v: expected the same shape, got {tuple(k.shape)} and {tuple(v.shape)}")
    hkv = k.shape[head_axis]
    if k.shape[0] != b or k.shape[seq_axis] != n or k.shape[3] != d:
        axes = "[batch, seq, heads, dim]" if layout_v == Layout.BSHD else "[batch, heads, seq, dim]"
        raise ValueError(f"k: shape {tuple(k.shape)} does not match q's {tuple(q.shape)} "
                         f"in batch, sequence or head_dim (layout {layout_v.name.lower()}: {axes})")
    if hkv == 0 or hq % hkv:
        raise ValueError(f"k: {hkv} key/value heads must divide the {hq} query heads (GQA)")
    left, right = _window(window)
    if not isinstance(causal, bool):
        raise TypeError(f"causal: expected a bool, got {type(causal).__name__}")
    dist_v = Distribution(parse(Distribution, distribution, "distribution"))
    scale = _scale(softmax_scale, d)
    pattern_v = Pattern(parse(Pattern, pattern, "pattern"))
    compute_v = Compute(parse(Compute, "default" if compute is None else compute, "compute"))
    if isinstance(intra_group_size, bool) or not isinstance(intra_group_size, int):
        raise TypeError(f"intra_group_size: expected an int, got {type(intra_group_size).__name__}")
    if intra_group_size < 0:
        raise ValueError(f"intra_group_size: must be >= 0 (0 = detect), got {intra_group_size}")
    cap = _softcap(softcap)
    _check_sinks(sinks, hq)
    agreed = dict(batch=b, num_heads_q=hq, num_heads_kv=hkv, head_dim=d,
                  layout=layout_v.name.lower(), causal=causal, window=(left, right),
                  softmax_scale=scale, distribution=dist_v.name.lower(), cu_seqlens=cu_seqlens,
                  pattern=pattern_v.name.lower(), intra_group_size=intra_group_size,
                  dtype=_STORAGE[q.dtype], compute=compute_v.name.lower(), softcap=cap,
                  sinks=sinks is not None)
    kwargs = dict(batch=b, num_heads_q=hq, head_dim=d, num_heads_kv=hkv, layout=layout_v,
                  mask="causal" if causal else "none", softmax_scale=scale,
                  distribution=dist_v, window_left=left, window_right=right,
                  cu_seqlens=None if cu_seqlens is None else np.asarray(cu_seqlens, np.int64),
                  num_threads=num_threads, timeout_seconds=timeout_seconds,
                  pattern=pattern_v, intra_group_size=intra_group_size, dtype=_STORAGE[q.dtype],
                  compute=compute_v, softcap=cap, sinks=_sink_values(sinks))
    key = tuple(agreed.values()) + (num_threads, timeout_seconds)  # sinks: used or not
    return n, agreed, kwargs, key


def _run(q, k, v, *, comm, return_lse, varlen=False, **options):
    group = _group_for(comm)  # a bad comm is local: there is nobody to tell
    try:
        if varlen:  # [n, h, d] -> [1, n, h, d]
            for name, t in (("q", q), ("k", k), ("v", v)):
                _check_tensor(name, t, 3)
            options["cu_seqlens"] = _cu_seqlens_tuple(options["cu_seqlens"])
            q, k, v = q.unsqueeze(0), k.unsqueeze(0), v.unsqueeze(0)
        n, agreed, kwargs, key = _validate(q, k, v, **options)
        problem = None
    except (TypeError, ValueError) as exc:
        n, agreed, kwargs, key, problem = -1, None, None, None, exc
    lengths = _agree(group, n, agreed, problem)
    plan = _plan_for(group, key, lengths, kwargs)
    sinks = options.get("sinks")
    if sinks is None:
        out, lse = BurstAttnFunction.apply(q, k, v, plan, group)
    else:
        out, lse = BurstAttnFunction.apply(q, k, v, plan, group, sinks)
    return (out, lse) if return_lse else out


def burst_attn(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool = False,
               window: "tuple[int, int]" = (-1, -1), softmax_scale: "float | None" = None,
               layout: str = "bshd", comm: CommLike = None, distribution: str = "contiguous",
               num_threads: int = 0, timeout_seconds: float = 0.0,
               return_lse: bool = False, pattern: str = "burst", intra_group_size: int = 0,
               compute: "str | None" = None, sinks: "torch.Tensor | None" = None,
               softcap: "float | None" = None):
    """Exact attention over the whole sequence sharded across the ranks of `comm`.

    Args:
        q: [batch, n_local, heads_q, head_dim] ("bshd", flash-attn) or
           [batch, heads_q, n_local, head_dim] ("bhsd", torch SDPA): this rank's queries.
        k, v: the same with heads_kv heads (a divisor of heads_q: GQA; 1 = MQA).
        causal: key j visible to query i only if j <= i, in global positions.
        window: (left, right) as flash-attn's window_size: query i sees keys
            i - left .. i + right (inclusive, global positions); -1 = unbounded.
        softmax_scale: None = 1/sqrt(head_dim).
        layout: "bshd" or "bhsd".
        comm: the ranks that share the sequence (module docstring).
        distribution: how the sequence was dealt: "contiguous" (rank r holds one run of
            tokens, ranks in order, any lengths), "zigzag" (2P chunks, rank r holds
            chunks r and 2P-1-r: balanced causal work) or "striped" (token t on rank
            t mod P); see `shard_positions`.
        num_threads: compute threads per rank (0 = the library's default).
        timeout_seconds: per-call deadline for the other ranks (0 = 300 s).
        return_lse: also return lse [batch, heads_q, n_local] (natural log of the softmax
            denominator; -inf for a query that sees no key), not differentiable.
        pattern: what travels between the ranks: "burst" (default; the BurstAttention
            ring), "ring" (K, V, dK, dV travel), "allgather", "ulysses" (heads_kv must
            divide by the world size) or "auto" (the library's cost model picks;
            `last_stats(comm)["pattern"]` says which). The same results either way.
        intra_group_size: ranks per group of the double ring for "burst"/"ring" (must
            divide the world size; 0 = the MPI shared-memory nodes, else one ring).
        compute: the precision of the tile products, forward and backward alike: None
            or "default" (bf16 products for bfloat16 tensors, fp32 for float32/float16),
            "exact" (fp32) or "fast" (q, k, v, dout and the probabilities rounded to
            bf16, fp32 accumulation and softmax; any dtype). The same on every rank.
        sinks: None, or attention sinks (gpt-oss): a [heads_q] CPU tensor of any float
            dtype, one logit per query head with no value, added to every softmax
            denominator of its head: lse_i = log(sum_j exp(x_ij) + exp(sinks[h])), so a
            query that sees no key gets out 0 and lse sinks[h]. The same values on
            every rank (the library compares them: MismatchError). Used as float32; the
            values are read at every call, so an optimizer may update them between
            steps. Differentiable: sinks.grad receives THIS RANK'S PARTIAL,
            -sum_i exp(sinks[h] - lse_i) * rowsum(dout_i * out_i) over this rank's
            queries (and batch), in sinks' dtype. The full gradient is the sum over the
            ranks: sum sinks.grad over the ranks together with every other replicated
            parameter's gradient (e.g. the data-parallel allreduce the loop already
            does); the layer does not, so nothing is counted twice.
        softcap: None or 0 (off), or logit soft-capping (Gemma 2): every scaled score x
            becomes softcap * tanh(x / softcap) before the softmax (and the backward
            applies its derivative). A float > 0, the same on every rank; a negative,
            NaN or infinite value raises InvalidArgumentError on every rank.

    Returns:
        out, shaped like q (and lse when return_lse). Differentiable w.r.t. q, k, v
        and sinks.

    Raises:
        TypeError / ValueError naming the argument for a bad tensor or option;
        burst_attention.BurstError subclasses (MismatchError, BurstTimeoutError, ...)
        for what the library reports; every rank fails together.
    """
    return _run(q, k, v, causal=causal, window=window, softmax_scale=softmax_scale,
                layout=layout, comm=comm, distribution=distribution, cu_seqlens=None,
                num_threads=num_threads, timeout_seconds=timeout_seconds,
                return_lse=return_lse, pattern=pattern, intra_group_size=intra_group_size,
                compute=compute, sinks=sinks, softcap=softcap)


def burst_attn_varlen(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cu_seqlens,
                      causal: bool = False, window: "tuple[int, int]" = (-1, -1),
                      softmax_scale: "float | None" = None, comm: CommLike = None,
                      distribution: str = "contiguous", num_threads: int = 0,
                      timeout_seconds: float = 0.0, return_lse: bool = False,
                      pattern: str = "burst", intra_group_size: int = 0,
                      compute: "str | None" = None, sinks: "torch.Tensor | None" = None,
                      softcap: "float | None" = None):
    """Packed sequences (flash-attn varlen): several sequences laid end to end in one
    global token stream, with no attention across sequences.

    Args:
        q: [n_local, heads_q, head_dim]; k, v: [n_local, heads_kv, head_dim] — this
            rank's tokens of the packed stream as `distribution` deals it (per sequence
            for zigzag: `shard_positions(..., cu_seqlens=cu_seqlens)`).
        cu_seqlens: the global offsets, num_sequences + 1 ints starting at 0,
            non-decreasing, ending at the total token count (a list, numpy array or
            int32/int64 tensor), the same on every rank.
        causal, window, softmax_scale, comm, distribution, num_threads, timeout_seconds,
        return_lse, pattern, intra_group_size, compute: as in `burst_attn` (positions are within each
            sequence's stream, which is the same thing since sequences never see
            each other).
        sinks, softcap: as in `burst_attn` (every row of every sequence gets its head's
            sink; sinks.grad is this rank's partial over its tokens of every sequence,
            summed over the ranks by the training loop).

    Returns:
        out [n_local, heads_q, head_dim] (and lse [heads_q, n_local] when return_lse).
    """
    result = _run(q, k, v, varlen=True, causal=causal, window=window,
                  softmax_scale=softmax_scale, layout="bshd", comm=comm,
                  distribution=distribution, cu_seqlens=cu_seqlens, num_threads=num_threads,
                  timeout_seconds=timeout_seconds, return_lse=return_lse, pattern=pattern,
                  intra_group_size=intra_group_size, compute=compute, sinks=sinks,
                  softcap=softcap)
    if return_lse:
        out, lse = result
        return out.squeeze(0), lse.squeeze(0)
    return result.squeeze(0)


# --------------------------------------------------------------------------- #
# Sharding tensors


def shard_positions(distribution: str, total_tokens: int, world_size: int, rank: int,
                    cu_seqlens=None) -> torch.Tensor:
    """The global positions (int64 tensor, increasing) of the tokens `rank` holds when
    `total_tokens` are dealt by `distribution` — index a full-sequence tensor with it
    (`x.index_select(seq_dim, positions)`) to get that rank's shard."""
    seqlens = None if cu_seqlens is None else list(_cu_seqlens_tuple(cu_seqlens))
    return torch.from_numpy(_shard_positions_np(distribution, total_tokens, world_size,
                                                rank, cu_seqlens=seqlens))


def shard(x: torch.Tensor, dim: int, distribution: str, world_size: int, rank: int,
          cu_seqlens=None) -> torch.Tensor:
    """This rank's shard of a full-sequence tensor along `dim` (any dtype; autograd
    flows through it)."""
    positions = shard_positions(distribution, x.shape[dim], world_size, rank, cu_seqlens)
    return x.index_select(dim, positions)


def unshard_positions(distribution: str, total_tokens: int, world_size: int,
                      cu_seqlens=None) -> "list[torch.Tensor]":
    """Every rank's positions: to rebuild a full tensor from gathered shards,
    `full.index_copy_(dim, positions[r], shard_r)` for each rank r."""
    return [shard_positions(distribution, total_tokens, world_size, r, cu_seqlens)
            for r in range(world_size)]


def shard_counts(distribution: str, total_tokens: int, world_size: int,
                 cu_seqlens=None) -> "list[int]":
    """The shard length of every rank (what each rank passes as n_local)."""
    seqlens = None if cu_seqlens is None else list(_cu_seqlens_tuple(cu_seqlens))
    return [int(c) for c in _shard_counts_np(distribution, total_tokens, world_size,
                                             cu_seqlens=seqlens)]


# --------------------------------------------------------------------------- KV cache (inference)

# The cache's storage type -> the torch dtype of its tensors.
_CACHE_TORCH_DTYPE = {0: torch.float32, 1: torch.bfloat16, 2: torch.float16}


def _cache_arrays(cache, tensors, problems: list) -> list:
    """Zero-copy numpy views of CPU tensors of the cache's dtype (contiguous copies of
    non-contiguous ones), or None for a tensor that fails the checks (its problem is
    appended; the caller then makes every rank fail through `KVCache._reject`)."""
    want = _CACHE_TORCH_DTYPE.get(int(cache.dtype))
    arrays = []
    for name, t in tensors:
        try:
            _check_tensor(name, t, 4)
            if t.dtype != want:
                raise TypeError(f"{name}: the cache holds {want}, got {t.dtype}")
            arrays.append(_np(_contiguous(t)))
        except (TypeError, ValueError) as exc:
            problems.append((type(exc), str(exc)))
            arrays.append(None)
    return arrays


def prefill(cache, layer: int, plan, seq_ids, k: torch.Tensor, v: torch.Tensor) -> None:
    """Collective. `KVCache.prefill` with tensors: store this rank's shard of a prompt's
    keys and values (the k, v it gave `plan.forward`, of `plan.kv_shape`, CPU, the
    cache's dtype) into `layer` of `cache`, where they are."""
    problems: list = []
    kn, vn = _cache_arrays(cache, (("k", k), ("v", v)), problems)
    if problems:
        cache._reject(problems, "burst_kv_cache_prefill")
    cache.prefill(layer, plan, seq_ids, kn, vn)


def decode(cache, layer: int, seq_ids, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
           positions=None) -> "tuple[torch.Tensor, torch.Tensor]":
    """Collective. `KVCache.decode` with tensors: T new tokens per sequence attend to
    `layer` of `cache` (their K,V appended first). q: [num_seqs, T, heads_q, d]
    ("bshd" caches; [num_seqs, heads_q, T, d] for "bhsd"), k, v likewise with heads_kv;
    CPU tensors of the cache's dtype (torch.float32 / bfloat16 / float16), the same on
    every rank. Returns (out like q in that dtype, lse [num_seqs, heads_q, T] float32),
    the same on every rank. No autograd (inference)."""
    problems: list = []
    qn, kn, vn = _cache_arrays(cache, (("q", q), ("k", k), ("v", v)), problems)
    if problems:
        cache._reject(problems, "burst_kv_cache_decode")
    s = q.shape[0]
    t = q.shape[2 if int(cache.layout) == int(Layout.BHSD) else 1]
    out = torch.empty(tuple(q.shape), dtype=q.dtype)
    lse = torch.empty((s, cache.num_heads_q, t), dtype=torch.float32)
    cache.decode(layer, seq_ids, qn, kn, vn, positions=positions, out=_np(out), lse=_np(lse))
    return out, lse
