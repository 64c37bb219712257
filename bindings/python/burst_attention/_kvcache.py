"""`KVCache`: the past keys and values of many sequences, sharded over the ranks of a
context, with prefill (store a prompt's K,V where a plan's forward had them) and decode
(T new tokens per sequence attend to everything stored before them, exactly).

    with ctx.kv_cache(num_layers, heads_q, head_dim, num_heads_kv=heads_kv) as cache:
        cache.add([0, 1])                                  # two empty sequences
        for layer in range(num_layers):                    # the prompt, sharded
            out, lse = plan.forward(q[layer], k[layer], v[layer])
            cache.prefill(layer, plan, [0, 1], k[layer], v[layer])
        out, lse = cache.decode(layer, [0, 1], q1, k1, v1)  # q1: [2, T, heads_q, d]

Positions: a sequence's tokens have positions 0, 1, 2, ... in every layer. Prefill
stores a prompt at 0 .. L-1; decode's T tokens take p0 .. p0+T-1, p0 being the
sequence's length in that layer (or its entry of `positions`, which may skip ahead but
never go back). The new token at position p is stored on rank p mod P. A new token at
position i sees the stored keys at positions j with i - window_left <= j <= i
(window_left = -1: unbounded), the new tokens before it and itself included.

Decode's tensors are replicated: every rank passes the same q, k, v (the library
compares a digest: MismatchError otherwise) and gets the same out and lse, bitwise.
Shapes, in the cache's storage type (`storage_dtype`, as for plans: float32, float16,
or bfloat16 as ml_dtypes.bfloat16 / uint16 bits), C-contiguous:
  q, out   [num_seqs, T, num_heads_q,  head_dim]   (layout "bshd"; "bhsd": heads before T)
  k, v     [num_seqs, T, num_heads_kv, head_dim]
  lse      [num_seqs, num_heads_q, T]  float32
num_seqs and T are read from q.

Every call but `length`, `nbytes`, `stats` and `close` is collective: every rank makes
it, in the same order. The library agrees on each call's outcome: a bad call (an
unknown or duplicate id, a layer out of range, positions going back, ranks passing
different inputs, a full cache) raises the same BurstError on every rank and leaves
the cache unchanged. An argument that fails the checks here (a wrong type, shape or
dtype) on one rank of several still makes the C call, with arguments the library must
reject (layer -1, count -1), so that every rank fails instead of waiting; this rank
raises TypeError/ValueError carrying both messages (as `Plan` does).
"""

from __future__ import annotations

import contextlib
import ctypes
import numbers

import numpy as np

from . import _lib
from ._args import (INT32, INT64, create_collectively, enum_field, float_vector, integer,
                    raise_problems, real)
from ._enums import DType, Layout, parse
from ._errors import _check
from ._handle import Handle
from ._plan import STATS_KEYS, Plan, _check_aliasing, _check_array, _output_array, storage_dtypes

# The config fields a KVCache remembers (and exposes as attributes).
_FIELDS = ("layout", "dtype", "num_threads", "num_layers", "num_heads_q", "num_heads_kv",
           "head_dim", "softmax_scale", "window_left", "block_tokens", "max_bytes_local",
           "timeout_seconds", "softcap")


# --------------------------------------------------------------------------- arguments

def parse_dtype(value, argument: str = "dtype") -> int:
    """A storage type from "f32"/"bf16"/"f16", a `DType`, an int, a numpy dtype
    (numpy.float32, numpy.float16, ml_dtypes.bfloat16) or a torch dtype
    (torch.float32, torch.bfloat16, torch.float16). uint16 is not accepted here: it
    holds bfloat16 bits in arrays, but as a type name it says nothing."""
    if isinstance(value, (str, DType, numbers.Integral)):
        return parse(DType, value, argument)  # bools: TypeError there
    if type(value).__module__ == "torch":
        by_name = {"torch.float32": DType.F32, "torch.bfloat16": DType.BF16,
                   "torch.float16": DType.F16}
        if str(value) in by_name:
            return int(by_name[str(value)])
        raise ValueError(f"{argument}: {value} is not a storage type; expected "
                         "torch.float32, torch.bfloat16 or torch.float16")
    try:
        dt = np.dtype(value)
    except TypeError:
        raise TypeError(f"{argument}: expected 'f32', 'bf16', 'f16', a DType, an int or a "
                        f"numpy dtype, got {type(value).__name__}") from None
    if dt == np.float32:
        return int(DType.F32)
    if dt == np.float16:
        return int(DType.F16)
    if dt.name == "bfloat16":
        return int(DType.BF16)
    raise ValueError(f"{argument}: numpy dtype {dt} is not a storage type; expected "
                     "float32, float16 or bfloat16")


def _int64_vector(problems: list, name: str, value):
    """An int, or a 1-D sequence/array of ints -> a C-contiguous int64 array (a copy),
    or None after appending the problem. Values are not judged here (the library does,
    collectively: ids >= 0, lengths >= 0, ...), only whether they fit in int64."""
    if isinstance(value, (bool, np.bool_)):
        problems.append((TypeError, f"{name}: expected ints, got a bool"))
        return None
    try:
        arr = np.asarray(value)
    except Exception as exc:  # noqa: BLE001 - anything numpy cannot take
        problems.append((TypeError, f"{name}: expected ints: {exc}"))
        return None
    if arr.ndim == 0:
        arr = arr.reshape(1)
    if arr.ndim != 1:
        problems.append((ValueError, f"{name}: expected one dimension, got shape {arr.shape}"))
        return None
    if arr.size == 0:
        return np.zeros(0, np.int64)
    if arr.dtype == object and all(isinstance(x, numbers.Integral) and not isinstance(x, bool)
                                   for x in arr):
        if not all(INT64[0] <= int(x) <= INT64[1] for x in arr):
            problems.append((ValueError, f"{name}: a value does not fit in int64"))
            return None
        return np.array([int(x) for x in arr], np.int64)
    if arr.dtype == np.bool_ or not np.issubdtype(arr.dtype, np.integer):
        problems.append((TypeError, f"{name}: expected ints, got dtype {arr.dtype}"))
        return None
    if arr.dtype == np.uint64 and int(arr.max()) > INT64[1]:
        problems.append((ValueError, f"{name}: a value does not fit in int64"))
        return None
    return np.array(arr, np.int64)  # a copy: the caller's array may change meanwhile


def _one_per_id(problems: list, name: str, values, ids) -> None:
    """Append the problem if `values` (lengths, positions) and `ids`, both checked
    (None: already failed), do not have one value per sequence id."""
    if values is not None and ids is not None and len(values) != len(ids):
        problems.append((ValueError, f"{name}: expected {len(ids)} values (one per "
                                     f"sequence id), got {len(values)}"))


def create(context, *, num_layers, num_heads_q, head_dim, num_heads_kv, dtype, layout,
           softmax_scale, window_left, block_tokens, max_bytes_local, num_threads,
           timeout_seconds, softcap=0.0, sinks=None) -> "KVCache":
    """burst_kv_cache_create for `Context.kv_cache` (which documents the arguments)."""
    handle = context._require_handle()
    cfg = _lib.new_kv_cache_config()
    problems: list = []

    if num_heads_kv is None:
        num_heads_kv = num_heads_q
    fields = {
        "layout": enum_field(problems, "layout", layout, Layout),
        "dtype": enum_field(problems, "dtype", dtype, parse_dtype),
        "num_threads": integer(problems, "num_threads", num_threads, INT32),
        "num_layers": integer(problems, "num_layers", num_layers),
        "num_heads_q": integer(problems, "num_heads_q", num_heads_q),
        "num_heads_kv": integer(problems, "num_heads_kv", num_heads_kv),
        "head_dim": integer(problems, "head_dim", head_dim),
        "softmax_scale": real(problems, "softmax_scale", softmax_scale),
        "window_left": integer(problems, "window_left", window_left),
        "block_tokens": integer(problems, "block_tokens", block_tokens),
        "max_bytes_local": integer(problems, "max_bytes_local", max_bytes_local),
        "timeout_seconds": real(problems, "timeout_seconds", timeout_seconds),
        "softcap": real(problems, "softcap", softcap),
    }
    for name, value in fields.items():
        if value is not None:
            setattr(cfg, name, value)
    sink_values = None
    if sinks is not None:
        layers, heads = fields["num_layers"], fields["num_heads_q"]
        shape = None if layers is None or heads is None or min(layers, heads) < 0 else (layers, heads)
        # The library copies them during burst_kv_cache_create; keep them alive until then.
        sink_values = float_vector(problems, "sinks", sinks, shape)
        if sink_values is not None:
            cfg.sinks = _lib.float_ptr(sink_values)

    cache_handle = create_collectively(handle, context.size, problems, cfg,
                                       _lib.lib.burst_kv_cache_create,
                                       _lib.lib.burst_kv_cache_destroy, "burst_kv_cache_create")
    cache = KVCache(context, cache_handle, {name: getattr(cfg, name) for name in _FIELDS})
    context._caches.add(cache)
    return cache


# --------------------------------------------------------------------------- the cache

class KVCache(Handle):
    """Created by `Context.kv_cache(...)`; use as a context manager or call `close()`.
    See the module docstring for positions, placement and shapes. Its config fields
    read as attributes (num_layers, num_heads_q, head_dim, layout, dtype, ...)."""

    _KIND, _NOUN = "KVCache", "cache"
    _ENUMS = {"layout": Layout, "dtype": DType}
    _COMPLETED = "the library accepted the call made to fail every rank: it completed on the others"

    def __init__(self, context, handle: int, config: dict):
        super().__init__(context, handle, config)
        self._dtypes = storage_dtypes(config["dtype"])

    # ------------------------------------------------------------------ properties
    @property
    def storage_dtype(self) -> np.dtype:
        """The numpy dtype of decode's q, k, v, out (outputs are allocated with it)."""
        return self._dtypes[0]

    def q_shape(self, num_seqs: int, tokens: int) -> tuple:
        """Shape of decode's q and out for num_seqs sequences of `tokens` new tokens."""
        return self._shape(num_seqs, tokens, self._config["num_heads_q"])

    def kv_shape(self, num_seqs: int, tokens: int) -> tuple:
        """Shape of decode's k and v."""
        return self._shape(num_seqs, tokens, self._config["num_heads_kv"])

    def lse_shape(self, num_seqs: int, tokens: int) -> tuple:
        return (num_seqs, self._config["num_heads_q"], tokens)

    def _shape(self, s, t, heads):
        d = self._config["head_dim"]
        return (s, heads, t, d) if self._config["layout"] == Layout.BHSD else (s, t, heads, d)

    def __repr__(self) -> str:
        if self.closed:
            return "<burst_attention.KVCache closed>"
        c = self._config
        return (f"<burst_attention.KVCache rank={self._context.rank}/{self._context.size} "
                f"{Layout(c['layout']).name} {DType(c['dtype']).name} layers={c['num_layers']} "
                f"heads={c['num_heads_q']}/{c['num_heads_kv']} head_dim={c['head_dim']} "
                f"window_left={c['window_left']}>")

    # ------------------------------------------------------------------ sequences
    def add(self, seq_ids) -> None:
        """Collective. Add new, empty sequences (ids >= 0, distinct, not in the cache;
        an int or a sequence of ints, possibly empty)."""
        self._ids_call("burst_kv_cache_add", _lib.lib.burst_kv_cache_add, seq_ids)

    def drop(self, seq_ids) -> None:
        """Collective. Remove sequences (each must exist) and free their blocks."""
        self._ids_call("burst_kv_cache_drop", _lib.lib.burst_kv_cache_drop, seq_ids)

    def _ids_call(self, function, fn, seq_ids) -> None:
        problems: list = []
        ids = _int64_vector(problems, "seq_ids", seq_ids)
        if problems:
            self._reject(problems, function)
        with self._in_call() as handle:
            _check(fn(handle, _lib.int64_ptr(ids), len(ids)), function)

    def truncate(self, seq_ids, lengths) -> None:
        """Collective. Keep only the tokens at positions < lengths[i] of sequence
        seq_ids[i], in every layer (a layer already shorter is left as it is)."""
        problems: list = []
        ids = _int64_vector(problems, "seq_ids", seq_ids)
        lens = _int64_vector(problems, "lengths", lengths)
        _one_per_id(problems, "lengths", lens, ids)
        if problems:
            self._reject(problems, "burst_kv_cache_truncate")
        with self._in_call() as handle:
            _check(_lib.lib.burst_kv_cache_truncate(handle, _lib.int64_ptr(ids),
                                                    _lib.int64_ptr(lens), len(ids)),
                   "burst_kv_cache_truncate")

    # ------------------------------------------------------------------ prefill / decode
    def prefill(self, layer, plan, seq_ids, k, v) -> None:
        """Collective. Store this rank's shard of a prompt's keys and values — the k
        and v it passed to `plan.forward` — into `layer`, where they are (no token
        moves). The plan must come from this cache's context with its heads, head_dim
        and dtype; k and v have `plan.kv_shape` in the plan's layout. seq_ids: one id per
        prompt sequence (batch row b: seq_ids[b]; with cu_seqlens, sequence s of row b:
        seq_ids[b * num_sequences + s]), each existing and empty in this layer."""
        problems: list = []
        layer = integer(problems, "layer", layer)
        ids = _int64_vector(problems, "seq_ids", seq_ids)
        plan_ok = isinstance(plan, Plan)
        if not plan_ok:
            problems.append((TypeError, f"plan: expected a burst_attention.Plan, got "
                                        f"{type(plan).__name__}"))
        elif plan.closed:
            problems.append((ValueError, "plan: the Plan is closed"))
            plan_ok = False
        if plan_ok:
            dtypes = plan._dtypes
            k = _check_array(problems, "k", k, plan.kv_shape, writable=False, dtypes=dtypes)
            v = _check_array(problems, "v", v, plan.kv_shape, writable=False, dtypes=dtypes)
            cu = plan.cu_seqlens
            expected = plan.batch * max(1, 0 if cu is None else len(cu) - 1)
            if ids is not None and len(ids) != expected:
                problems.append((ValueError, f"seq_ids: the plan holds {expected} sequences "
                                             f"(batch x max(1, num_sequences)), got {len(ids)} ids"))
        if problems:
            self._reject(problems, "burst_kv_cache_prefill")
        with self._in_call() as handle, contextlib.ExitStack() as stack:
            try:  # hold the plan open during the call
                plan_handle = stack.enter_context(plan._in_call())
            except ValueError as exc:  # closed by another thread since the check
                self._reject([(ValueError, f"plan: {exc}")], "burst_kv_cache_prefill")
            _check(_lib.lib.burst_kv_cache_prefill(handle, layer, plan_handle, _lib.int64_ptr(ids),
                                                   _lib.void_ptr(k), _lib.void_ptr(v)),
                   "burst_kv_cache_prefill")

    def decode(self, layer, seq_ids, q, k, v, positions=None, out=None, lse=None):
        """Collective. T >= 1 new tokens for each of num_seqs >= 1 sequences attend to
        `layer`: their K,V are appended first (position p on rank p mod P), then each
        new token attends causally to every stored key in its window. q, k, v are the
        same on every rank; num_seqs and T come from q's shape. positions: None (each
        sequence continues at its length in this layer) or one start position per
        sequence, each >= that length.

        Returns (out, lse), the same on every rank: out like q, lse [num_seqs,
        num_heads_q, T] float32; allocated when not given, else filled in place (they
        must not overlap q, k, v)."""
        problems: list = []
        layer = integer(problems, "layer", layer)
        ids = _int64_vector(problems, "seq_ids", seq_ids)
        pos = None if positions is None else _int64_vector(problems, "positions", positions)
        bhsd = self._config["layout"] == Layout.BHSD
        s = t = 0
        if isinstance(q, np.ndarray) and q.ndim == 4:
            s, t = q.shape[0], q.shape[2 if bhsd else 1]
        elif isinstance(q, np.ndarray):
            problems.append((ValueError, f"q: expected 4 dimensions "
                                         f"({'[seqs, heads, T, d]' if bhsd else '[seqs, T, heads, d]'}), "
                                         f"got shape {q.shape}"))
            q = None
        dt = self._dtypes
        if q is not None:
            q = _check_array(problems, "q", q, self.q_shape(s, t), writable=False, dtypes=dt)
        k = _check_array(problems, "k", k, self.kv_shape(s, t), writable=False, dtypes=dt)
        v = _check_array(problems, "v", v, self.kv_shape(s, t), writable=False, dtypes=dt)
        out = _output_array(problems, "out", out, self.q_shape(s, t), dtypes=dt)
        lse = _output_array(problems, "lse", lse, self.lse_shape(s, t))
        _check_aliasing(problems, {"out": out, "lse": lse}, {"q": q, "k": k, "v": v})
        if ids is not None and q is not None and len(ids) != s:
            problems.append((ValueError, f"seq_ids: q holds {s} sequences, got {len(ids)} ids"))
        _one_per_id(problems, "positions", pos, ids)

        if problems:
            self._reject(problems, "burst_kv_cache_decode")
        with self._in_call() as handle:
            status = _lib.lib.burst_kv_cache_decode(
                handle, layer, _lib.int64_ptr(ids), s, t, _lib.int64_ptr(pos), _lib.void_ptr(q),
                _lib.void_ptr(k), _lib.void_ptr(v), _lib.void_ptr(out), _lib.float_ptr(lse))
            _check(status, "burst_kv_cache_decode")
        return out, lse

    # ------------------------------------------------------------------ local queries
    def length(self, seq_id, layer=0) -> "tuple[int, int]":
        """Local. (length, local_tokens) of a sequence in a layer: its next position (the
        largest stored position + 1, over all ranks) and the tokens of it this rank
        stores."""
        problems: list = []
        seq_id = integer(problems, "seq_id", seq_id)
        layer = integer(problems, "layer", layer)
        if problems:
            raise_problems(problems, "")
        length, local = ctypes.c_int64(-1), ctypes.c_int64(-1)
        with self._in_call() as handle:
            _check(_lib.lib.burst_kv_cache_sequence_length(handle, seq_id, layer,
                                                           ctypes.byref(length),
                                                           ctypes.byref(local)),
                   "burst_kv_cache_sequence_length")
        return length.value, local.value

    @property
    def nbytes(self) -> int:
        """Local. Bytes of the blocks this rank's cache holds now (K, V and positions)."""
        n = ctypes.c_uint64(0)
        with self._in_call() as handle:
            _check(_lib.lib.burst_kv_cache_bytes(handle, ctypes.byref(n)), "burst_kv_cache_bytes")
        return n.value

    def stats(self) -> dict:
        """Local. Counters of this rank's last prefill or decode, with the keys of
        `Plan.stats()`: bytes_sent / bytes_received count the partials (out, lse) of the
        merge as their allgather payload, tiles_computed / tiles_skipped the (sequence,
        kv head, block) units read / skipped by the window; steps_* are 0 and pattern
        is -1 (an int: no `Pattern`)."""
        stats = _lib.new_stats()
        with self._in_call() as handle:
            _check(_lib.lib.burst_kv_cache_stats(handle, ctypes.byref(stats)), "burst_kv_cache_stats")
        return {key: getattr(stats, key) for key in STATS_KEYS}

    # The call each collective function makes when this rank's arguments failed the
    # checks here: arguments the library rejects, so that its agreement fails every rank.
    _REJECTED = {
        "burst_kv_cache_add": ("count -1", lambda h: _lib.lib.burst_kv_cache_add(h, None, -1)),
        "burst_kv_cache_drop": ("count -1", lambda h: _lib.lib.burst_kv_cache_drop(h, None, -1)),
        "burst_kv_cache_truncate": ("count -1", lambda h: _lib.lib.burst_kv_cache_truncate(
            h, None, None, -1)),
        "burst_kv_cache_prefill": ("layer -1", lambda h: _lib.lib.burst_kv_cache_prefill(
            h, -1, None, None, None, None)),
        "burst_kv_cache_decode": ("layer -1", lambda h: _lib.lib.burst_kv_cache_decode(
            h, -1, None, 0, 0, None, None, None, None, None, None)),
    }

    def _reject(self, problems: list, function: str):
        """Raise for a validation failure of a collective call ((exception type,
        message) pairs); first, when this rank is not alone, make the call with
        arguments the library rejects (_REJECTED) so that every rank fails together
        (`Handle._fail_collectively`). For bindings built on this one
        (burst_attention.torch)."""
        how, call = KVCache._REJECTED[function]

        def call_rejected():
            with self._in_call() as handle:
                return call(handle)

        self._fail_collectively(problems, function, how, call_rejected)

    # ------------------------------------------------------------------ lifetime
    def close(self) -> None:
        """Free the cache and every block. Local. Idempotent."""
        super().close()

    def _release(self, handle: int) -> None:
        _lib.lib.burst_kv_cache_destroy(handle)
        self._context._caches.discard(self)
