"""burst_attention — Python binding of libburst_attention (exact distributed attention,
BurstAttention, arXiv 2403.09347) over its C ABI, with ctypes and numpy.

    from mpi4py import MPI
    import burst_attention as ba

    with ba.Context.from_mpi(MPI.COMM_WORLD) as ctx:
        with ctx.plan(batch, n_local, heads, head_dim, mask="causal") as plan:
            out, lse = plan.forward(q, k, v)
            dq, dk, dv = plan.backward(q, k, v, out, lse, dout)

Without MPI (0.9): `ba.Context.from_torch(group)` talks through a torch.distributed process
group (torchrun, gloo); `ba.Context.from_transport(obj)` through a transport of your own
(docs/torchrun.md, docs/transports.md).

Inference: `ctx.kv_cache(num_layers, heads, head_dim, ...)` gives a `KVCache` sharded
over the ranks: `cache.prefill(layer, plan, seq_ids, k, v)` stores a prompt's K,V where
the plan's forward had them, `cache.decode(layer, seq_ids, q, k, v)` attends new tokens
to everything stored before them.

`shard_positions`, `shard_counts`, `shard` and `unshard` deal a full-sequence array to
the ranks by a distribution ("contiguous", "zigzag", "striped") and gather it back.

Every C call that fails raises a `BurstError` (with `.status`, a `Status`): the subclass
for its status (`InvalidArgumentError`, `MismatchError`, `BurstTimeoutError`, ...). See
bindings/python/README.md and include/burst_attention.h (the manual).
"""

from ._lib import VERSION_MAJOR, VERSION_MINOR, VERSION_PATCH, VERSION_NUMBER
from ._lib import path as library_path
from ._lib import lib as _cdll
from ._errors import (
    BurstError, BurstTimeoutError, BusyError, CommunicationError, InternalError,
    InvalidArgumentError, MismatchError, OutOfMemoryError, Status, UnsupportedError,
    VersionError, last_error, status_string,
)
from ._enums import (
    Compute, DType, Distribution, Layout, Mask, Pattern,
    COMPUTE_DEFAULT, COMPUTE_EXACT, COMPUTE_FAST,
    DTYPE_BF16, DTYPE_F16, DTYPE_F32, LAYOUT_BHSD, LAYOUT_BSHD, MASK_CAUSAL, MASK_NONE,
    DISTRIBUTION_CONTIGUOUS, DISTRIBUTION_STRIPED, DISTRIBUTION_ZIGZAG,
    PATTERN_ALLGATHER, PATTERN_AUTO, PATTERN_BURST, PATTERN_RING, PATTERN_ULYSSES,
)
from ._context import Context
from ._plan import Plan, STATS_KEYS
from ._kvcache import KVCache
from ._sharding import shard, shard_counts, shard_positions, unshard

__version__ = f"{VERSION_MAJOR}.{VERSION_MINOR}.{VERSION_PATCH}"


def version() -> int:
    """burst_version(): the version of the library actually loaded, as
    MAJOR*10000 + MINOR*100 + PATCH. Compare with VERSION_NUMBER (this binding's
    header) to detect a mismatch."""
    return int(_cdll.burst_version())


def build_info() -> str:
    """burst_build_info(): the loaded library's version and the kernel code paths its
    run-time dispatch picked for this CPU, e.g. "libburst_attention 0.9.0; kernels
    cpx+avx512; convert avx512; bf16_products avx512_bf16; cpus 2" (bf16_products: how
    compute="fast" runs, "avx512_bf16" or "emulated")."""
    return _cdll.burst_build_info().decode("utf-8", "replace")


def version_info() -> tuple:
    """(major, minor, patch) of the library actually loaded."""
    v = version()
    return (v // 10000, v // 100 % 100, v % 100)


__all__ = [
    "BurstTimeoutError", "BusyError", "CommunicationError", "InternalError",
    "InvalidArgumentError", "MismatchError", "OutOfMemoryError", "UnsupportedError",
    "VersionError",
    "BurstError", "Compute", "Context", "KVCache", "build_info", "DType", "Distribution", "Layout", "Mask",
    "Pattern", "Plan",
    "STATS_KEYS", "Status", "VERSION_MAJOR", "VERSION_MINOR", "VERSION_NUMBER",
    "VERSION_PATCH", "last_error", "library_path", "status_string", "version", "version_info",
    "shard", "shard_counts", "shard_positions", "unshard",
    "DTYPE_BF16", "DTYPE_F16", "DTYPE_F32", "LAYOUT_BHSD", "LAYOUT_BSHD", "MASK_CAUSAL", "MASK_NONE",
    "DISTRIBUTION_CONTIGUOUS", "DISTRIBUTION_STRIPED", "DISTRIBUTION_ZIGZAG",
    "PATTERN_ALLGATHER", "PATTERN_AUTO", "PATTERN_BURST", "PATTERN_RING", "PATTERN_ULYSSES",
    "COMPUTE_DEFAULT", "COMPUTE_EXACT", "COMPUTE_FAST",
]
