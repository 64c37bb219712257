"""`Context`: a group of ranks (an MPI communicator, a transport the caller supplies such
as a torch.distributed process group, one process, or in-process threads).

Ownership: a Context owns its C handle; every `Plan` and `KVCache` keeps a reference to
its Context, so a context is never destroyed under a live plan or cache, and
`Context.close()` closes its plans and caches first (the C ABI requires plans to be
destroyed before their context).
"""

from __future__ import annotations

import atexit
import ctypes
import numbers
import threading
import weakref

import typing

import numpy as np

from . import _lib
from ._args import INT32, INT64, create_collectively, enum_field, float_vector, integer, real
from ._enums import Compute, DType, Distribution, Layout, Mask, Pattern
from ._errors import _check

if typing.TYPE_CHECKING:
    from ._kvcache import KVCache
    from ._plan import Plan

# Every open context, so that interpreter exit closes them in reverse creation order
# *before* mpi4py finalizes MPI (mpi4py finalizes from Py_AtExit, which runs after the
# `atexit` handlers). Ranks that created the same contexts close them in the same order,
# which keeps the collective destroy of MPI contexts matched.
_open_contexts: "dict[int, weakref.ref[Context]]" = {}
_open_lock = threading.Lock()
_serial = iter(range(1 << 62))


@atexit.register
def _close_all_at_exit() -> None:
    with _open_lock:
        refs = [ref for _, ref in sorted(_open_contexts.items(), reverse=True)]
    for ref in refs:
        ctx = ref()
        if ctx is not None:
            try:
                ctx.close()
            except Exception:  # noqa: BLE001 - nothing sensible to do at exit
                pass


class Context:
    """A group of ranks that computes attention together.

    Create one with `Context.from_mpi(comm)`, `Context.from_torch(group)` (a
    torch.distributed process group: torchrun without MPI), `Context.from_transport(obj)`
    (callbacks of your own), `Context.self()` or `Context.loopback(world_size)`; never
    call the constructor directly.
    Use as a context manager or call `close()`; `__del__` closes a forgotten one.
    """

    def __init__(self, handle: int, kind: str, _token=None):
        if _token is not _PRIVATE:
            raise TypeError("use Context.from_mpi(), Context.from_torch(), "
                            "Context.from_transport(), Context.self() or Context.loopback()")
        self._handle = handle
        self._kind = kind
        self._lock = threading.Lock()
        self._plans: "weakref.WeakSet" = weakref.WeakSet()
        self._caches: "weakref.WeakSet" = weakref.WeakSet()
        rank, size = ctypes.c_int32(-1), ctypes.c_int32(-1)
        try:
            _check(_lib.lib.burst_context_rank(handle, ctypes.byref(rank), ctypes.byref(size)),
                   "burst_context_rank")
        except BaseException:
            _lib.lib.burst_context_destroy(handle)
            self._handle = None
            raise
        self._rank, self._size = rank.value, size.value
        self._transport = None  # the Python transport of a "transport"/"torch" context
        self._serial = next(_serial)
        with _open_lock:
            _open_contexts[self._serial] = weakref.ref(self)

    # ------------------------------------------------------------------ factories
    @classmethod
    def from_mpi(cls, comm) -> "Context":
        """Collective over `comm` (an mpi4py communicator, or a Fortran handle as int).

        The context owns an MPI_Comm_dup of the communicator; `comm` may be freed
        afterwards. MPI must be initialised (importing mpi4py.MPI does that).
        An invalid or null communicator raises BurstError(INVALID_ARGUMENT) on the
        calling rank only.
        """
        if hasattr(comm, "py2f"):
            fhandle = comm.py2f()
        elif isinstance(comm, numbers.Integral) and not isinstance(comm, bool):
            fhandle = int(comm)
        else:
            raise TypeError(f"comm: expected an mpi4py communicator or an int Fortran "
                            f"handle, got {type(comm).__name__}")
        if not INT64[0] <= fhandle <= INT64[1]:
            raise ValueError(f"comm: Fortran handle {fhandle} does not fit in int64")
        out = _lib.c_handle()
        _check(_lib.lib.burst_context_create_mpi(fhandle, ctypes.byref(out)),
               "burst_context_create_mpi")
        return cls(out.value, "mpi", _PRIVATE)

    @classmethod
    def from_transport(cls, transport, nodes=None, timeout_seconds: float = 0.0,
                       single_threaded: bool = True, _kind: str = "transport") -> "Context":
        """Collective over the ranks `transport` connects: a context that talks through
        the caller's own Python transport (C ABI 0.9, burst_context_create_transport).

        `transport` has `rank`, `size` and the methods isend, irecv, iallgather, test,
        release and close described in burst_attention._transport (addresses as ints,
        requests as any Python object); include/burst_attention.h, "Transports the
        caller supplies", is the contract. nodes: None (the library allgathers a host id)
        or `size` ints, equal for ranks that share a node. timeout_seconds bounds the
        creation round (0 = 300 s). single_threaded (default): one library call at a
        time on the context and its plans (another thread gets BusyError).

        The library calls the methods only from the thread inside a library call on
        this context; an exception raised by one fails that call with
        CommunicationError carrying its text (never escapes into C). `close()` is
        called once the context and everything made on it are destroyed; if creation
        fails the transport is closed here (the library did not take it).
        """
        from . import _transport

        for name in ("rank", "size", "isend", "irecv", "iallgather", "test", "release", "close"):
            if not hasattr(transport, name):
                raise TypeError(f"transport: {type(transport).__name__} has no {name!r}")
        adapter = _transport._Adapter(transport, nodes=nodes, timeout_seconds=timeout_seconds,
                                      single_threaded=single_threaded)
        adapter.register()
        out = _lib.c_handle()
        status = _lib.lib.burst_context_create_transport(ctypes.byref(adapter.struct),
                                                         ctypes.byref(out))
        if status != 0:
            message = _lib.lib.burst_last_error()
            adapter._destroy(None)  # the library did not take it: ours to close
            from ._errors import BurstError
            raise BurstError(status, message.decode("utf-8", "replace") if message else "",
                             "burst_context_create_transport")
        ctx = cls(out.value, _kind, _PRIVATE)
        ctx._transport = transport
        return ctx

    @classmethod
    def from_torch(cls, group=None, dedicated: "bool | None" = None,
                   timeout_seconds: float = 0.0) -> "Context":
        """Collective over a torch.distributed process group (None: the default group):
        a context whose messages travel through torch.distributed (gloo) — for jobs
        started by torchrun, with no MPI at all. torch.distributed must be initialised
        (init_process_group("gloo")).

        dedicated (default True): the context talks over a new gloo group of the same
        ranks, made here (collective over the world when `group` is the whole world,
        else among its members), so that its traffic never mixes with the caller's on
        `group`; False: over `group` itself, which must be a gloo group.

        Costs and limits (docs/torchrun.md): every message is copied once into or out
        of the transport's own buffer and waited for by a helper thread; one library
        call at a time per context; gloo cannot cancel a message, so after a
        TIMEOUT or COMMUNICATION error destroy the plan (and rather the context too).
        """
        from . import _torchdist

        pg, owned = _torchdist.make_group(group, dedicated)
        transport = _torchdist.TorchTransport(pg, owned=owned)
        ctx = cls.from_transport(transport, timeout_seconds=timeout_seconds, _kind="torch")
        ctx._torch_group = group
        return ctx

    @classmethod
    def self(cls) -> "Context":
        """A context of world size 1 that uses no MPI. Local."""
        out = _lib.c_handle()
        _check(_lib.lib.burst_context_create_self(ctypes.byref(out)), "burst_context_create_self")
        return cls(out.value, "self", _PRIVATE)

    @classmethod
    def loopback(cls, world_size: int) -> "list[Context]":
        """`world_size` in-process contexts that talk through memory; context i is rank i.

        Drive each from its own thread (collective calls block until every context of
        the group has made the call, or the plan's timeout passes). ctypes releases
        the GIL during library calls, so Python threads run the ranks in parallel.
        """
        if isinstance(world_size, bool) or not isinstance(world_size, numbers.Integral):
            raise TypeError(f"world_size: expected an int, got {type(world_size).__name__}")
        n = int(world_size)
        if not INT32[0] <= n <= INT32[1]:
            raise ValueError(f"world_size: {n} does not fit in int32")
        handles = (_lib.c_handle * max(n, 1))()
        _check(_lib.lib.burst_context_create_loopback(n, handles), "burst_context_create_loopback")
        contexts = []
        group_token = _LoopbackGroupToken()  # one per group (burst_attention.torch)
        try:
            for i in range(n):
                contexts.append(cls(handles[i], "loopback", _PRIVATE))
                contexts[-1]._loopback_group = group_token
        except BaseException:
            for c in contexts:
                c.close()
            for i in range(len(contexts) + 1, n):
                _lib.lib.burst_context_destroy(handles[i])
            raise
        return contexts

    # ------------------------------------------------------------------ properties
    @property
    def rank(self) -> int:
        return self._rank

    @property
    def size(self) -> int:
        return self._size

    @property
    def kind(self) -> str:
        """"mpi", "torch" (`from_torch`), "transport" (`from_transport`), "self" or
        "loopback"."""
        return self._kind

    @property
    def closed(self) -> bool:
        return self._handle is None

    def _require_handle(self) -> int:
        handle = self._handle
        if handle is None:
            raise ValueError("operation on a closed Context")
        return handle

    def __repr__(self) -> str:
        state = "closed" if self.closed else f"rank={self._rank} size={self._size}"
        return f"<burst_attention.Context {self._kind} {state}>"

    # ------------------------------------------------------------------ plans
    def plan(self, batch, seq_len_local, num_heads_q, head_dim, num_heads_kv=None,
             layout="bshd", mask="none", softmax_scale=0.0, num_threads=0,
             timeout_seconds=0.0, distribution="contiguous", pattern="burst",
             window_left=-1, window_right=-1, cu_seqlens=None, intra_group_size=0,
             dtype="f32", compute=None, softcap=0.0, sinks=None) -> "Plan":
        """Collective: create a plan for one attention shape on this context.

        Every argument except seq_len_local, num_threads and timeout_seconds must be
        equal on all ranks (else BurstError(MISMATCH) on every rank). Enumerations
        accept the IntEnum members, their names as strings ("bshd", "causal", ...) or
        ints. num_heads_kv defaults to num_heads_q (a divisor of it: GQA, 1 = MQA).
        softmax_scale 0 means 1/sqrt(head_dim); num_threads 0 the library default;
        timeout_seconds 0 the library default (300 s) per call.

        Variants combine freely: distribution "contiguous" (any split), "zigzag" or
        "striped" (then seq_len_local must be this rank's entry of
        `shard_counts(distribution, N, world_size, cu_seqlens)`), mask "causal",
        window_left/window_right (-1 unbounded; inclusive, as flash-attn), and
        cu_seqlens (flash-attn varlen offsets into the global sequence, the same on
        every rank; the library checks it collectively against N = the sum of the
        ranks' seq_len_local).

        dtype is the storage type of q, k, v, out, dout and the gradients: "f32"
        (float32), "f16" (numpy.float16) or "bf16" (ml_dtypes.bfloat16 arrays when
        ml_dtypes is importable, else uint16 arrays holding the bfloat16 bits; see
        `Plan.storage_dtype`). lse stays float32 and all accumulation is fp32; outputs
        are rounded once (to nearest even).

        compute is the precision of the tile products (a `Compute`, its name or int;
        must agree on all ranks): None or "default" (the library's choice: "fast" for
        dtype "bf16", "exact" for "f32" and "f16"), "exact" (fp32 products, the
        numerics of DESIGN §3) or "fast" (q, k, v, dout and the probabilities rounded
        to bf16, products accumulated in fp32, softmax and accumulators fp32 —
        FlashAttention's recipe; allowed with any dtype). The header states both
        contracts; `build_info()` says whether "fast" runs on AVX512-BF16 or emulated.

        Score modifiers (0.8; both must agree on all ranks): softcap c (0 = off; else
        finite and > 0, Gemma 2's logit soft-capping) replaces every scaled score x by
        c * tanh(x / c) before the softmax. sinks (None = no sinks; else num_heads_q
        floats, a sequence or array, taken as float32; gpt-oss's attention sinks) adds
        exp(sinks[h]) to every softmax denominator of query head h, a logit with no
        value: lse = log(sum_j exp(x_j) + exp(sinks[h])), and a row that sees no key has
        out 0 and lse sinks[h]. The library copies the values at creation;
        `Plan.set_sinks` replaces them between calls, and `Plan.sinks_gradient()` returns
        this rank's dL/dsinks after a backward. A wrong number of sinks raises
        ValueError here (on every rank, as the other argument problems); a NaN or
        infinite sink or a negative, NaN or infinite softcap is the library's
        InvalidArgumentError.

        An argument that cannot even be put in the C struct (a wrong type, an unknown
        name) raises TypeError/ValueError; on a context of several ranks the library is
        still called (with an invalid config) so that every rank fails together.
        """
        from ._plan import Plan  # circular: Plan refers to Context

        handle = self._require_handle()
        cfg = _lib.new_config()
        problems: list[tuple[type, str]] = []

        if num_heads_kv is None:
            num_heads_kv = num_heads_q
        if compute is None:
            compute = Compute.DEFAULT
        fields = {
            "layout": enum_field(problems, "layout", layout, Layout),
            "dtype": enum_field(problems, "dtype", dtype, DType),
            "mask": enum_field(problems, "mask", mask, Mask),
            "distribution": enum_field(problems, "distribution", distribution, Distribution),
            "pattern": enum_field(problems, "pattern", pattern, Pattern),
            "batch": integer(problems, "batch", batch),
            "seq_len_local": integer(problems, "seq_len_local", seq_len_local),
            "num_heads_q": integer(problems, "num_heads_q", num_heads_q),
            "num_heads_kv": integer(problems, "num_heads_kv", num_heads_kv),
            "head_dim": integer(problems, "head_dim", head_dim),
            "softmax_scale": real(problems, "softmax_scale", softmax_scale),
            "window_left": integer(problems, "window_left", window_left),
            "window_right": integer(problems, "window_right", window_right),
            "num_threads": integer(problems, "num_threads", num_threads, INT32),
            "intra_group_size": integer(problems, "intra_group_size", intra_group_size, INT32),
            "timeout_seconds": real(problems, "timeout_seconds", timeout_seconds),
            "compute": enum_field(problems, "compute", compute, Compute),
            "softcap": real(problems, "softcap", softcap),
        }
        for name, value in fields.items():
            if value is not None:
                setattr(cfg, name, value)

        seqlens = None
        if cu_seqlens is not None:
            arr = np.asarray(cu_seqlens)
            if arr.ndim != 1 or not (arr.size == 0 or np.issubdtype(arr.dtype, np.integer)):
                problems.append((ValueError, "cu_seqlens: expected a 1-D sequence of ints"))
            else:
                # The library copies it during burst_plan_create; keep it alive until then.
                seqlens = np.ascontiguousarray(arr, dtype=np.int64)
                cfg.cu_seqlens = seqlens.ctypes.data_as(ctypes.POINTER(ctypes.c_int64))
                cfg.num_sequences = max(len(seqlens) - 1, 0)

        sink_values = None
        if sinks is not None:
            heads = fields["num_heads_q"]
            # The library copies them during burst_plan_create; keep them alive until then.
            sink_values = float_vector(problems, "sinks", sinks,
                                       None if heads is None or heads < 0 else (heads,))
            if sink_values is not None:
                cfg.sinks = _lib.float_ptr(sink_values)

        plan_handle = create_collectively(handle, self._size, problems, cfg,
                                          _lib.lib.burst_plan_create, _lib.lib.burst_plan_destroy,
                                          "burst_plan_create")
        plan = Plan(self, plan_handle, {name: getattr(cfg, name) for name in fields},
                    None if seqlens is None else seqlens.copy(), has_sinks=sinks is not None)
        self._plans.add(plan)
        return plan

    # ------------------------------------------------------------------ KV caches
    def kv_cache(self, num_layers, num_heads_q, head_dim, num_heads_kv=None, dtype="f32",
                 layout="bshd", softmax_scale=0.0, window_left=-1, block_tokens=0,
                 max_bytes_local=0, num_threads=0, timeout_seconds=0.0,
                 timeout=None, softcap=0.0, sinks=None) -> "KVCache":
        """Collective: create a KV cache sharded over the ranks of this context, for
        prefill and decode (inference; see `KVCache`).

        num_layers attention layers that share one shape: num_heads_q, head_dim,
        num_heads_kv (default num_heads_q; a divisor of it), dtype (the storage type
        of the cache and of decode's q, k, v, out: "f32", "bf16", "f16", a `DType`, an
        int, or a numpy dtype such as numpy.float32 / numpy.float16 /
        ml_dtypes.bfloat16), layout of decode's tensors ("bshd": [seqs, T, heads, d];
        "bhsd": [seqs, heads, T, d]), softmax_scale (0 = 1/sqrt(head_dim)) and
        window_left (-1 = unbounded: a new token at position i sees keys i - window_left
        .. i). block_tokens: tokens per storage block (0 = 256). max_bytes_local: this
        rank's limit on the bytes of its blocks (0 = no limit); a call that would pass
        it raises OutOfMemoryError on every rank and leaves the cache unchanged.
        num_threads (0 = the library default) and timeout_seconds (0 = 300 s per
        call; `timeout` is an alias) may differ between ranks, and so may
        max_bytes_local; every other argument must be equal on all ranks (else
        MismatchError on every rank naming the field).

        Score modifiers (0.8), as for `plan`: softcap (0 = off, else > 0) and sinks
        (None, or one float32 logit per query head of every layer: shape [num_layers,
        num_heads_q], or the same values flat, layer-major), copied at creation. Decode
        applies them exactly as a plan's forward does; a model that has them prefills
        with plans created with the same softcap and the layer's sinks.

        An argument that cannot be put in the C struct raises TypeError/ValueError; on
        a context of several ranks the library is still called (with an invalid
        config) so that every rank fails together.
        """
        from ._kvcache import create  # circular: KVCache refers to Context

        if timeout is not None:
            timeout_seconds = timeout
        return create(self, num_layers=num_layers, num_heads_q=num_heads_q,
                      head_dim=head_dim, num_heads_kv=num_heads_kv, dtype=dtype,
                      layout=layout, softmax_scale=softmax_scale, window_left=window_left,
                      block_tokens=block_tokens, max_bytes_local=max_bytes_local,
                      num_threads=num_threads, timeout_seconds=timeout_seconds,
                      softcap=softcap, sinks=sinks)

    # ------------------------------------------------------------------ lifetime
    def close(self) -> None:
        """Destroy the plans and KV caches of this context, then the context.
        Collective for MPI contexts (every rank must close it). Idempotent."""
        for plan in list(self._plans):
            plan.close()
        for cache in list(self._caches):
            cache.close()
        with self._lock:
            handle, self._handle = self._handle, None
        if handle is not None:
            with _open_lock:
                _open_contexts.pop(self._serial, None)
            _lib.lib.burst_context_destroy(handle)

    def __enter__(self) -> "Context":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self):
        try:
            if getattr(self, "_handle", None) is not None:
                self.close()
        except Exception:  # noqa: BLE001 - never raise from a finaliser
            pass


_PRIVATE = object()


class _LoopbackGroupToken:
    """Shared by the contexts of one Context.loopback() group (weak-referenceable)."""

