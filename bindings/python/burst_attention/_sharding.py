"""Token distribution helpers: which global positions a rank holds, and copying a
full-sequence array to a rank's shard and back.

They wrap burst_shard_positions, burst_shard and burst_unshard, so they follow the
library's own rules (include/burst_attention.h, BURST_DISTRIBUTION_*), for N tokens on
P ranks:
  CONTIGUOUS  the balanced split: floor(N/P) tokens each, ranks 0 .. (N mod P)-1 one
              more, in rank order (a plan accepts any split; these helpers propose
              this one);
  ZIGZAG      2P chunks of floor(N/2P) tokens, chunk c one more if c < N mod 2P; rank
              r holds chunks r and 2P-1-r — with packing, of every sequence separately;
  STRIPED     token t on rank t mod P.
A rank's rows are its tokens in increasing global position.

All of them are local (no context, no MPI) and thread-safe. Arguments are checked
here first (TypeError / ValueError naming the argument); what the library still
rejects raises BurstError.
"""

from __future__ import annotations

import ctypes
import math
import numbers
import typing

import numpy as np

from . import _lib
from ._enums import Distribution, parse
from ._errors import _check

_INT32_MAX = 2**31 - 1
_INT64_MAX = 2**63 - 1

DistributionLike = typing.Union[Distribution, str, int]


# --------------------------------------------------------------------------- argument checks

def _int(name: str, value, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name}: expected an int, got {type(value).__name__}")
    value = int(value)
    if not low <= value <= high:
        raise ValueError(f"{name}: {value} is out of range [{low}, {high}]")
    return value


def _distribution(value) -> int:
    # Like Context.plan: members, names and ints; an int out of the enum's range is
    # handed to the library, which rejects it (BurstError INVALID_ARGUMENT).
    v = parse(Distribution, value, "distribution")
    if not -(2**31) <= v <= _INT32_MAX:
        raise ValueError(f"distribution: {v} is out of range")
    return v


def _world_and_rank(world_size, rank) -> tuple[int, int]:
    world_size = _int("world_size", world_size, 1, _INT32_MAX)
    rank = _int("rank", rank, 0, _INT32_MAX)
    if rank >= world_size:
        raise ValueError(f"rank: {rank} is not below world_size {world_size}")
    return world_size, rank


def _cu_seqlens(cu_seqlens, total_tokens: int) -> "np.ndarray | None":
    """cu_seqlens as a C-contiguous int64 array (or None), checked against the header's
    rules: num_sequences + 1 offsets, starting at 0, non-decreasing, ending at N."""
    if cu_seqlens is None:
        return None
    if isinstance(cu_seqlens, (str, bytes)):
        raise TypeError(f"cu_seqlens: expected a 1-D sequence of ints, got {type(cu_seqlens).__name__}")
    arr = np.asarray(cu_seqlens)
    if arr.ndim != 1:
        raise ValueError(f"cu_seqlens: expected a 1-D sequence of ints, got {arr.ndim} dimensions")
    if arr.size < 2:
        raise ValueError(f"cu_seqlens: needs num_sequences + 1 >= 2 offsets, got {arr.size} "
                         f"(pass None for no packing)")
    if not np.issubdtype(arr.dtype, np.integer):
        raise TypeError(f"cu_seqlens: expected integers, got dtype {arr.dtype}")
    if arr.dtype == np.uint64 and int(arr.max()) > _INT64_MAX:
        raise ValueError("cu_seqlens: an offset does not fit in int64")
    arr = np.ascontiguousarray(arr, dtype=np.int64)
    if arr[0] != 0:
        raise ValueError(f"cu_seqlens: must start at 0, starts at {int(arr[0])}")
    steps = np.diff(arr)
    if (steps < 0).any():
        i = int(np.argmax(steps < 0))
        raise ValueError(f"cu_seqlens: must be non-decreasing, but cu_seqlens[{i + 1}] = "
                         f"{int(arr[i + 1])} < cu_seqlens[{i}] = {int(arr[i])}")
    if arr[-1] != total_tokens:
        raise ValueError(f"cu_seqlens: must end at the total token count {total_tokens}, "
                         f"ends at {int(arr[-1])}")
    return arr


def _packing(seqlens: "np.ndarray | None") -> tuple:
    """(const int64_t *cu_seqlens, int64_t num_sequences) for the C calls."""
    if seqlens is None:
        return None, 0
    return _lib.int64_ptr(seqlens), len(seqlens) - 1


def _seq_axis(seq_axis, ndim: int) -> int:
    if isinstance(seq_axis, bool) or not isinstance(seq_axis, numbers.Integral):
        raise TypeError(f"seq_axis: expected an int, got {type(seq_axis).__name__}")
    axis = int(seq_axis)
    if not -ndim <= axis < ndim:
        raise ValueError(f"seq_axis: {axis} is out of range for an array of {ndim} dimensions")
    return axis % ndim


def _array(name: str, array) -> np.ndarray:
    if not isinstance(array, np.ndarray):
        raise TypeError(f"{name}: expected a numpy.ndarray, got {type(array).__name__}")
    if array.ndim == 0:
        raise ValueError(f"{name}: needs at least one dimension (the sequence axis)")
    if array.dtype.hasobject:
        raise TypeError(f"{name}: arrays of Python objects cannot be copied as bytes")
    return array


def _count(distribution: int, total_tokens: int, seqlens, world_size: int, rank: int) -> int:
    cu, num = _packing(seqlens)
    count = ctypes.c_int64(-1)
    _check(_lib.lib.burst_shard_positions(distribution, total_tokens, cu, num, world_size,
                                          rank, None, 0, ctypes.byref(count)),
           "burst_shard_positions")
    return count.value


# --------------------------------------------------------------------------- public API

def shard_positions(distribution: DistributionLike, total_tokens: int, world_size: int,
                    rank: int, cu_seqlens=None) -> np.ndarray:
    """The global positions (int64, increasing) of the tokens rank `rank` of
    `world_size` holds when `total_tokens` tokens are dealt by `distribution`
    (burst_shard_positions). Its length is the seq_len_local that rank passes to
    `Context.plan`. With packing, `cu_seqlens` holds num_sequences + 1 offsets
    (flash-attn varlen: starts at 0, non-decreasing, ends at total_tokens)."""
    distribution = _distribution(distribution)
    total_tokens = _int("total_tokens", total_tokens, 0, _INT64_MAX)
    world_size, rank = _world_and_rank(world_size, rank)
    seqlens = _cu_seqlens(cu_seqlens, total_tokens)
    cu, num = _packing(seqlens)
    count = _count(distribution, total_tokens, seqlens, world_size, rank)
    positions = np.empty(count, np.int64)
    written = ctypes.c_int64(-1)
    _check(_lib.lib.burst_shard_positions(distribution, total_tokens, cu, num, world_size, rank,
                                          _lib.int64_ptr(positions), count, ctypes.byref(written)),
           "burst_shard_positions")
    if written.value != count:  # pragma: no cover - a library bug
        raise RuntimeError(f"burst_shard_positions: count {written.value} != {count} asked before")
    return positions


def shard_counts(distribution: DistributionLike, total_tokens: int, world_size: int,
                 cu_seqlens=None) -> list:
    """seq_len_local of every rank (a list of `world_size` ints) for this
    distribution — what each rank must pass for ZIGZAG and STRIPED."""
    distribution = _distribution(distribution)
    total_tokens = _int("total_tokens", total_tokens, 0, _INT64_MAX)
    world_size = _int("world_size", world_size, 1, _INT32_MAX)
    seqlens = _cu_seqlens(cu_seqlens, total_tokens)
    return [_count(distribution, total_tokens, seqlens, world_size, r) for r in range(world_size)]


def shard(full: np.ndarray, distribution: DistributionLike, world_size: int, rank: int,
          seq_axis: int, cu_seqlens=None) -> np.ndarray:
    """A C-contiguous copy of rank `rank`'s rows of `full` along `seq_axis`.

    `full` has total_tokens = full.shape[seq_axis] tokens in global order; the result
    has the same shape with that axis cut to the rank's count, rows in increasing
    global position (as `shard_positions`). Works for any dtype. For BSHD tensors
    seq_axis = 1, for BHSD and for lse [batch, heads, seq] seq_axis = 2 (or -1).
    C-contiguous inputs are copied by burst_shard with outer = prod(shape[:seq_axis])
    and row_bytes = prod(shape[seq_axis+1:]) * itemsize; others by numpy indexing at
    the same positions."""
    full = _array("full", full)
    axis = _seq_axis(seq_axis, full.ndim)
    distribution = _distribution(distribution)
    world_size, rank = _world_and_rank(world_size, rank)
    total = full.shape[axis]
    seqlens = _cu_seqlens(cu_seqlens, total)
    count = _count(distribution, total, seqlens, world_size, rank)
    shape = full.shape[:axis] + (count,) + full.shape[axis + 1:]
    if not full.flags.c_contiguous:
        positions = shard_positions(distribution, total, world_size, rank, seqlens)
        return np.ascontiguousarray(np.take(full, positions, axis=axis))
    local = np.empty(shape, full.dtype)
    if local.size == 0:
        return local  # nothing to copy (and a zero-sized buffer need not be addressable)
    outer = math.prod(full.shape[:axis])
    row_bytes = math.prod(full.shape[axis + 1:]) * full.itemsize
    cu, num = _packing(seqlens)
    _check(_lib.lib.burst_shard(distribution, total, cu, num, world_size, rank, outer, row_bytes,
                                _lib.void_ptr(full), _lib.void_ptr(local)),
           "burst_shard")
    return local


def unshard(local: np.ndarray, full: np.ndarray, distribution: DistributionLike,
            world_size: int, rank: int, seq_axis: int, cu_seqlens=None) -> np.ndarray:
    """The inverse of `shard`: writes rank `rank`'s rows from `local` into their places
    in `full` along `seq_axis`, in place; other rows are left untouched, so doing it
    for every rank's shard assembles the full array. Returns `full`.

    `local` must have full's dtype and full's shape with seq_axis cut to the rank's
    count. C-contiguous `full` is written by burst_unshard."""
    local = _array("local", local)
    full = _array("full", full)
    axis = _seq_axis(seq_axis, full.ndim)
    distribution = _distribution(distribution)
    world_size, rank = _world_and_rank(world_size, rank)
    if not full.flags.writeable:
        raise ValueError("full: must be writable")
    if local.dtype != full.dtype:
        raise TypeError(f"local: expected dtype {full.dtype} (full's), got {local.dtype}")
    total = full.shape[axis]
    seqlens = _cu_seqlens(cu_seqlens, total)
    count = _count(distribution, total, seqlens, world_size, rank)
    shape = full.shape[:axis] + (count,) + full.shape[axis + 1:]
    if local.shape != shape:
        raise ValueError(f"local: expected shape {shape} (full's with seq_axis {axis} cut to "
                         f"rank {rank}'s {count} tokens), got {local.shape}")
    if local.size == 0:
        return full
    if not full.flags.c_contiguous:
        positions = shard_positions(distribution, total, world_size, rank, seqlens)
        index = (slice(None),) * axis + (positions,)
        full[index] = local
        return full
    if np.may_share_memory(local, full):
        local = local.copy()  # burst_unshard's buffers must not overlap
    else:
        local = np.ascontiguousarray(local)
    outer = math.prod(full.shape[:axis])
    row_bytes = math.prod(full.shape[axis + 1:]) * full.itemsize
    cu, num = _packing(seqlens)
    _check(_lib.lib.burst_unshard(distribution, total, cu, num, world_size, rank, outer,
                                  row_bytes, _lib.void_ptr(local), _lib.void_ptr(full)),
           "burst_unshard")
    return full
