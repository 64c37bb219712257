"""`Plan`: one attention shape on one context; forward, backward and counters.

Buffers are numpy arrays of the plan's storage type (dtype="f32": float32;
"f16": float16; "bf16": ml_dtypes.bfloat16 when ml_dtypes is importable, else
uint16 arrays holding the bfloat16 bits — both are accepted, outputs are allocated
as bfloat16 if ml_dtypes is there), C-contiguous, of exactly the plan's shapes
(lse is always float32):
  q, out, dout, dq        [batch, seq_len_local, num_heads_q,  head_dim]  (BSHD)
  k, v, dk, dv            [batch, seq_len_local, num_heads_kv, head_dim]  (BSHD)
  lse                     [batch, num_heads_q, seq_len_local]
(BHSD swaps the sequence and head axes of the four-dimensional tensors.)

Forward and backward are collective. If an argument fails validation here on a
context of several ranks, the C function is still called, with NULL buffers, so the
library's agreement makes *every* rank fail instead of leaving the others waiting;
this rank then raises TypeError/ValueError carrying both messages. (One exception:
on a rank that holds 0 tokens NULL buffers are valid, so the call completes on every
rank and only this rank raises.)
"""

from __future__ import annotations

import ctypes

import numpy as np

from . import _lib
from ._args import float_vector, raise_problems
from ._enums import Compute, Distribution, DType, Layout, Mask, Pattern
from ._errors import Status, _check
from ._handle import Handle

try:  # optional: a numpy dtype for bfloat16
    import ml_dtypes as _ml_dtypes
    BFLOAT16 = np.dtype(_ml_dtypes.bfloat16)
except ImportError:  # pragma: no cover - depends on the environment
    BFLOAT16 = None


def storage_dtypes(dtype: int) -> tuple:
    """The numpy dtypes accepted for a storage type; the first is what outputs use."""
    if dtype == DType.F16:
        return (np.dtype(np.float16),)
    if dtype == DType.BF16:
        return (BFLOAT16, np.dtype(np.uint16)) if BFLOAT16 is not None else (np.dtype(np.uint16),)
    return (np.dtype(np.float32),)


STATS_KEYS = ("bytes_sent", "bytes_received", "messages_sent", "steps_computed",
              "steps_skipped", "compute_seconds", "comm_wait_seconds", "total_seconds",
              "tiles_computed", "tiles_skipped", "bytes_sent_inter_group",
              "bytes_received_inter_group", "pattern", "intra_group_size")


class Plan(Handle):
    """Created by `Context.plan(...)`; use as a context manager or call `close()`.
    Its config fields read as attributes (batch, seq_len_local, num_heads_q, ...)."""

    _KIND, _NOUN = "Plan", "plan"
    _ENUMS = {"layout": Layout, "mask": Mask, "distribution": Distribution,
              "pattern": Pattern, "dtype": DType, "compute": Compute}
    _COMPLETED = "this rank holds no tokens, so the collective call completed on the other ranks"

    def __init__(self, context, handle: int, config: dict, cu_seqlens, has_sinks: bool = False):
        super().__init__(context, handle, config)
        self._cu_seqlens = cu_seqlens
        self._has_sinks = has_sinks
        b, n, hq, hkv, d = (config[k] for k in
                            ("batch", "seq_len_local", "num_heads_q", "num_heads_kv", "head_dim"))
        if config["layout"] == Layout.BHSD:
            self._q_shape, self._kv_shape = (b, hq, n, d), (b, hkv, n, d)
        else:
            self._q_shape, self._kv_shape = (b, n, hq, d), (b, n, hkv, d)
        self._lse_shape = (b, hq, n)
        self._dtypes = storage_dtypes(config.get("dtype", 0))

    # ------------------------------------------------------------------ properties
    @property
    def cu_seqlens(self) -> "np.ndarray | None":
        """A copy of the packing offsets (int64) the plan was created with, or None."""
        return None if self._cu_seqlens is None else self._cu_seqlens.copy()

    @property
    def has_sinks(self) -> bool:
        """Whether the plan has sink logits now (created with sinks=, or given them by
        the last successful `set_sinks`)."""
        return self._has_sinks

    @property
    def q_shape(self) -> tuple:
        """Shape of q, out, dout and dq on this rank."""
        return self._q_shape

    @property
    def kv_shape(self) -> tuple:
        """Shape of k, v, dk and dv on this rank."""
        return self._kv_shape

    @property
    def lse_shape(self) -> tuple:
        return self._lse_shape

    @property
    def storage_dtype(self) -> np.dtype:
        """The numpy dtype of q, k, v, out, dout and the gradients (outputs are
        allocated with it): float32, float16, or bfloat16 (ml_dtypes) / uint16."""
        return self._dtypes[0]

    def __repr__(self) -> str:
        if self.closed:
            return "<burst_attention.Plan closed>"
        c = self._config
        return (f"<burst_attention.Plan rank={self._context.rank}/{self._context.size} "
                f"{Layout(c['layout']).name} {Mask(c['mask']).name} "
                f"{Distribution(c['distribution']).name} batch={c['batch']} "
                f"seq_len_local={c['seq_len_local']} heads={c['num_heads_q']}/"
                f"{c['num_heads_kv']} head_dim={c['head_dim']}>")

    # ------------------------------------------------------------------ calls
    def forward(self, q, k, v, out=None, lse=None):
        """Collective. Attention of this rank's queries against all ranks' keys/values.

        Returns (out, lse); `out`/`lse` are allocated when not given, else filled in
        place and returned. lse is the natural-log softmax denominator (with sinks, the
        sink's exp(sinks[h]) included), -inf for a row that sees no key (sinks[h] with
        sinks); its out row is 0.
        """
        problems: list = []
        t = self._dtypes
        q = _check_array(problems, "q", q, self._q_shape, writable=False, dtypes=t)
        k = _check_array(problems, "k", k, self._kv_shape, writable=False, dtypes=t)
        v = _check_array(problems, "v", v, self._kv_shape, writable=False, dtypes=t)
        out = _output_array(problems, "out", out, self._q_shape, dtypes=t)
        lse = _output_array(problems, "lse", lse, self._lse_shape)
        _check_aliasing(problems, {"out": out, "lse": lse}, {"q": q, "k": k, "v": v})

        with self._in_call() as handle:
            if problems:
                self._fail_collectively(problems, "burst_forward", "NULL buffers",
                                        lambda: _lib.lib.burst_forward(handle, None, None, None,
                                                                       None, None))
            status = _lib.lib.burst_forward(handle, _lib.void_ptr(q), _lib.void_ptr(k),
                                            _lib.void_ptr(v), _lib.void_ptr(out),
                                            _lib.float_ptr(lse))
            _check(status, "burst_forward")
        return out, lse

    def backward(self, q, k, v, out, lse, dout, dq=None, dk=None, dv=None):
        """Collective. Gradients w.r.t. this rank's q, k, v given the forward's out and
        lse and the output gradient dout. Returns (dq, dk, dv), allocated when not
        given, else overwritten in place (not accumulated) and returned."""
        problems: list = []
        t = self._dtypes
        q = _check_array(problems, "q", q, self._q_shape, writable=False, dtypes=t)
        k = _check_array(problems, "k", k, self._kv_shape, writable=False, dtypes=t)
        v = _check_array(problems, "v", v, self._kv_shape, writable=False, dtypes=t)
        out = _check_array(problems, "out", out, self._q_shape, writable=False, dtypes=t)
        lse = _check_array(problems, "lse", lse, self._lse_shape, writable=False)
        dout = _check_array(problems, "dout", dout, self._q_shape, writable=False, dtypes=t)
        dq = _output_array(problems, "dq", dq, self._q_shape, dtypes=t)
        dk = _output_array(problems, "dk", dk, self._kv_shape, dtypes=t)
        dv = _output_array(problems, "dv", dv, self._kv_shape, dtypes=t)
        _check_aliasing(problems, {"dq": dq, "dk": dk, "dv": dv},
                        {"q": q, "k": k, "v": v, "out": out, "lse": lse, "dout": dout})

        with self._in_call() as handle:
            if problems:
                self._fail_collectively(problems, "burst_backward", "NULL buffers",
                                        lambda: _lib.lib.burst_backward(handle, None, None, None,
                                                                        None, None, None, None,
                                                                        None, None))
            status = _lib.lib.burst_backward(
                handle, _lib.void_ptr(q), _lib.void_ptr(k), _lib.void_ptr(v),
                _lib.void_ptr(out), _lib.float_ptr(lse), _lib.void_ptr(dout),
                _lib.void_ptr(dq), _lib.void_ptr(dk), _lib.void_ptr(dv))
            _check(status, "burst_backward")
        return dq, dk, dv

    def set_sinks(self, sinks) -> None:
        """Local. Replace the plan's sink logits for the calls that follow (a training
        loop calls it after every optimizer step): num_heads_q floats (a sequence or
        array, taken as float32, copied), or None to remove the sinks. Every rank must
        set the same values: the next forward or backward compares a digest of them
        (MismatchError on every rank otherwise).

        A wrong number of values raises ValueError and leaves the plan as it was. A NaN
        or infinite value raises InvalidArgumentError, and the plan keeps the bad values:
        its next forward or backward fails with InvalidArgumentError on every rank until
        valid values are set. BusyError while another thread is inside a call on it."""
        values = None
        if sinks is not None:
            problems: list = []
            values = float_vector(problems, "sinks", sinks, (self._config["num_heads_q"],))
            if problems:
                raise_problems(problems, "burst_plan_set_sinks")
        with self._in_call() as handle:
            status = _lib.lib.burst_plan_set_sinks(handle, _lib.float_ptr(values))
            # Rejected values are kept by the plan (its calls fail until valid ones come).
            if status == Status.OK or (status == Status.INVALID_ARGUMENT and values is not None):
                self._has_sinks = values is not None
            _check(status, "burst_plan_set_sinks")

    def sinks_gradient(self) -> np.ndarray:
        """Local. dL/dsinks of the last successful backward on this plan: num_heads_q
        float32 values, THIS RANK'S PARTIAL -sum_i exp(sinks[h] - lse_i) * D_i
        (D_i = rowsum(dout_i * out_i)) over its own query rows and batch. Sum it over the
        ranks as any replicated parameter's gradient (the library does not: a job
        reduces all its gradients in one collective of its own).

        InvalidArgumentError if the plan had no sinks at that backward, or no backward
        has succeeded since the plan was created or its sinks were last set."""
        dsinks = np.empty(self._config["num_heads_q"], np.float32)
        with self._in_call() as handle:
            _check(_lib.lib.burst_plan_sinks_gradient(handle, _lib.float_ptr(dsinks)),
                   "burst_plan_sinks_gradient")
        return dsinks

    def stats(self) -> dict:
        """Counters of this rank's last forward/backward on this plan (zeros before the
        first): bytes_sent, bytes_received, messages_sent, steps_computed,
        steps_skipped, tiles_computed, tiles_skipped, bytes_sent_inter_group,
        bytes_received_inter_group (ints), compute_seconds, comm_wait_seconds,
        total_seconds (floats, measured), and, set from plan creation on, pattern
        (the `Pattern` the plan runs, AUTO resolved) and intra_group_size (ranks per
        group of the ring; the world size for one ring).

        A tile is (one head) x (up to 256 queries) x (up to 128 keys);
        tiles_computed + tiles_skipped is what a dense schedule would compute."""
        stats = _lib.new_stats()
        with self._in_call() as handle:
            _check(_lib.lib.burst_plan_stats(handle, ctypes.byref(stats)), "burst_plan_stats")
        result = {key: getattr(stats, key) for key in STATS_KEYS}
        result["pattern"] = Pattern(result["pattern"])
        return result

    # ------------------------------------------------------------------ lifetime
    def close(self) -> None:
        """Destroy the plan and its workspace. Local. Idempotent. A plan whose call
        failed with TIMEOUT or COMMUNICATION must still be closed."""
        super().close()

    def _release(self, handle: int) -> None:
        _lib.lib.burst_plan_destroy(handle)
        self._context._plans.discard(self)


_FLOAT32 = (np.dtype(np.float32),)


def _output_array(problems: list, name: str, array, shape: tuple, dtypes: tuple = _FLOAT32):
    """A fresh array of `shape` and dtypes[0] when `array` is None, else `array`
    checked as a writable output."""
    if array is None:
        return np.empty(shape, dtypes[0])
    return _check_array(problems, name, array, shape, writable=True, dtypes=dtypes)


def _check_array(problems: list, name: str, array, shape: tuple, writable: bool, dtypes: tuple = _FLOAT32):
    """Append (exception type, message) to problems if `array` is not a C-contiguous,
    aligned ndarray of one of `dtypes` (float32 unless the plan's storage type says
    otherwise) of exactly `shape` (and writable if asked).
    Returns the array, or None when it cannot be used at all."""
    if not isinstance(array, np.ndarray):
        problems.append((TypeError, f"{name}: expected a numpy.ndarray, got {type(array).__name__}"))
        return None
    bad = len(problems)
    if array.dtype not in dtypes:
        names = " or ".join(str(t) for t in dtypes)
        problems.append((TypeError, f"{name}: expected dtype {names}, got {array.dtype}"))
    if array.shape != tuple(shape):
        problems.append((ValueError, f"{name}: expected shape {tuple(shape)}, got {array.shape}"))
    if not array.flags.c_contiguous:
        problems.append((ValueError, f"{name}: must be C-contiguous (use numpy.ascontiguousarray)"))
    if not array.flags.aligned:
        problems.append((ValueError, f"{name}: must be aligned"))
    if writable and not array.flags.writeable:
        problems.append((ValueError, f"{name}: must be writable"))
    return array if len(problems) == bad else None


def _check_aliasing(problems: list, outputs: dict, inputs: dict) -> None:
    """Outputs must not overlap inputs or each other (the library reads inputs while
    it writes outputs)."""
    outs = [(n, a) for n, a in outputs.items() if a is not None and a.size]
    ins = [(n, a) for n, a in inputs.items() if a is not None and a.size]
    for i, (name, array) in enumerate(outs):
        for other, arr in ins + outs[i + 1:]:
            if np.may_share_memory(array, arr):
                problems.append((ValueError, f"{name}: must not overlap {other}"))
