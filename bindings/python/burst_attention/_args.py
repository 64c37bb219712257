"""Checks of Python arguments before a C call, shared by `Context.plan`,
`Context.kv_cache` and the methods of `Plan` and `KVCache`.

Each check appends (exception type, message) to a `problems` list instead of raising,
so that a collective call can still be made (with arguments the library rejects) and
every rank fails together; `raise_problems` then raises the first problem's type with
every message.
"""

from __future__ import annotations

import ctypes
import numbers

import numpy as np

from . import _lib
from ._enums import parse
from ._errors import BurstError, Status, _check, last_error, status_string

INT32 = (-(2**31), 2**31 - 1)
INT64 = (-(2**63), 2**63 - 1)


def integer(problems: list, name: str, value, bounds=INT64):
    """An int within `bounds` (bools rejected), or None after appending the problem."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        problems.append((TypeError, f"{name}: expected an int, got {type(value).__name__}"))
        return None
    value = int(value)
    if not bounds[0] <= value <= bounds[1]:
        problems.append((ValueError, f"{name}: {value} is out of range"))
        return None
    return value


def real(problems: list, name: str, value):
    """A float (from any real but a bool), or None after appending the problem."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        problems.append((TypeError, f"{name}: expected a float, got {type(value).__name__}"))
        return None
    return float(value)


def float_vector(problems: list, name: str, value, shape: "tuple | None"):
    """A C-contiguous float32 copy of `value` (a sequence, numpy array, or anything
    numpy.asarray takes) for a `const float*` argument the library reads `prod(shape)`
    floats from, or None after appending the problem. Accepted: exactly `shape`, or the
    same number of values in one dimension. Only what ctypes needs is checked here (real
    numbers, the count); the values themselves (NaN, inf) are the library's to judge.
    shape None (its sizes failed their own checks): the conversion alone is checked."""
    if isinstance(value, (str, bytes)):
        problems.append((TypeError, f"{name}: expected a sequence of floats, got {type(value).__name__}"))
        return None
    try:
        arr = np.asarray(value)
    except Exception as exc:  # noqa: BLE001 - anything numpy cannot take
        problems.append((TypeError, f"{name}: expected a sequence of floats: {exc}"))
        return None
    if arr.dtype == np.bool_ or not (np.issubdtype(arr.dtype, np.floating)
                                     or np.issubdtype(arr.dtype, np.integer)):
        problems.append((TypeError, f"{name}: expected floats, got dtype {arr.dtype}"))
        return None
    if shape is not None:
        count = int(np.prod(shape, dtype=np.int64))
        if arr.shape != tuple(shape) and arr.shape != (count,):
            want = f"shape {tuple(shape)}" + (f" or ({count},)" if len(shape) > 1 else "")
            problems.append((ValueError, f"{name}: expected {want} (one value per query head"
                                         f"{' of each layer' if len(shape) > 1 else ''}), "
                                         f"got shape {arr.shape}"))
            return None
    with np.errstate(over="ignore"):  # beyond float32: inf, which the library rejects
        return np.array(arr, dtype=np.float32, order="C").reshape(-1)  # a copy


def enum_field(problems: list, name: str, value, kind):
    """An enumeration field of a C config, within int32, or None after appending the
    problem. kind: an IntEnum type (parsed by `_enums.parse`) or a function
    (value, name) -> int that raises TypeError/ValueError."""
    try:
        v = parse(kind, value, name) if isinstance(kind, type) else kind(value, name)
    except (TypeError, ValueError) as exc:
        problems.append((type(exc), str(exc)))
        return None
    if not INT32[0] <= v <= INT32[1]:
        problems.append((ValueError, f"{name}: {v} is out of range"))
        return None
    return v


def raise_problems(problems: list, function: str, status=None, message: str = "",
                   how: str = "", completed: "str | None" = None):
    """Raise the first problem's type with every problem's message.

    status None: the library was not called (one rank alone). Otherwise it was called
    `how` (with NULL buffers, an invalid config, ...) so that every rank fails: say so
    and chain its BurstError — unless it returned OK and `completed` is given, which
    then says why the call could complete on the other ranks."""
    exc_type = problems[0][0]
    text = "; ".join(msg for _, msg in problems)
    if status is None:
        raise exc_type(text)
    if status == Status.OK and completed is not None:
        raise exc_type(f"{text} [{completed}]")
    text += (f" [the library was called with {how} so that every rank fails together: "
             f"{status_string(status)}: {message}]")
    raise exc_type(text) from BurstError(status, message, function)


def create_collectively(handle: int, size: int, problems: list, cfg, create, destroy,
                        function: str) -> int:
    """Call `create(handle, &cfg, &out)` (burst_plan_create, burst_kv_cache_create on
    a context handle of `size` ranks) and return the new handle, raising BurstError for
    its error.

    If the arguments failed the checks here (`problems`), raise them instead; on a
    context of several ranks first keep the collective call collective: give the
    library a config it must reject (an out-of-range dtype), so that every rank
    returns an error."""
    out = _lib.c_handle()
    if problems:
        if size > 1:
            cfg.dtype = -1
            status = create(handle, ctypes.byref(cfg), ctypes.byref(out))
            message = last_error()
            if status == Status.OK:  # cannot happen with a sane library; do not leak
                destroy(out.value)
            raise_problems(problems, function, status, message, "an invalid config")
        raise_problems(problems, function)
    _check(create(handle, ctypes.byref(cfg), ctypes.byref(out)), function)
    return out.value
