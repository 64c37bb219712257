"""Loading libburst_attention and declaring its C ABI for ctypes.

This is the only module that knows the C signatures. It mirrors
include/burst_attention.h (version 0.9.0) one declaration at a time; the structs
keep the header's field order, and ctypes gives them the same natural alignment as
the C compiler on the platforms we support (x86-64 / aarch64 Linux), so
`sizeof(burst_attention_config) == 136` (128 through softcap, the 0.7 struct; 120 up to
timeout_seconds, the 0.4-0.6 struct; the library still accepts both),
`sizeof(burst_stats) == 112` (88 up to tiles_skipped, 0.2; 72 up to total_seconds,
0.1), `sizeof(burst_kv_cache_config) == 104` (88 up to timeout_seconds, 0.6-0.7) and
`sizeof(burst_transport) == 96` (0.9: the callbacks of a caller-supplied transport,
see `Transport` and _transport.py).

Lookup order for the shared library (first hit wins):
  1. the path in the environment variable BURST_ATTENTION_LIBRARY;
  2. libburst_attention.so next to this package's files (where `pip install` puts it);
  3. ctypes.util.find_library("burst_attention");
  4. /usr/local/lib/libburst_attention.so.

After loading, the library's burst_version() must have this binding's MAJOR and MINOR
version (a different PATCH is accepted); otherwise the import fails with ImportError.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

# The header version this binding was written against (BURST_VERSION_*).
VERSION_MAJOR = 0
VERSION_MINOR = 9
VERSION_PATCH = 0
VERSION_NUMBER = VERSION_MAJOR * 10000 + VERSION_MINOR * 100 + VERSION_PATCH
# The package version (the wheel's metadata is read from the three lines above).
VERSION = f"{VERSION_MAJOR}.{VERSION_MINOR}.{VERSION_PATCH}"

_LIBNAME = "libburst_attention.dylib" if sys.platform == "darwin" else "libburst_attention.so"
ENV_VAR = "BURST_ATTENTION_LIBRARY"


def _candidates():
    """(description, path-or-None) in lookup order."""
    env = os.environ.get(ENV_VAR)
    yield f"${ENV_VAR}", (env or None)
    here = os.path.dirname(os.path.abspath(__file__))
    yield "next to the package", os.path.join(here, _LIBNAME)
    yield 'ctypes.util.find_library("burst_attention")', ctypes.util.find_library("burst_attention")
    yield "/usr/local/lib", os.path.join("/usr/local/lib", _LIBNAME)


def _load() -> tuple[ctypes.CDLL, str]:
    tried = []
    for what, path in _candidates():
        explicit = what.startswith("$")
        if not path:
            tried.append(f"  {what}: not set" if explicit else f"  {what}: not found")
            continue
        if (explicit or os.path.sep in path) and not os.path.exists(path):
            tried.append(f"  {what}: {path}: no such file")
        else:
            try:
                # CDLL (not PyDLL): ctypes releases the GIL for the duration of every
                # call, so loopback ranks can be driven from Python threads.
                return ctypes.CDLL(path), path
            except OSError as exc:
                tried.append(f"  {what}: {path}: {exc}")
        if explicit:
            break  # an explicit choice that fails must not silently fall back
    raise ImportError(
        "burst_attention: cannot load libburst_attention. Tried, in order:\n"
        + "\n".join(tried)
        + f"\nSet {ENV_VAR} to the full path of {_LIBNAME} "
        "(e.g. build/install/lib/libburst_attention.so)."
    )


# --------------------------------------------------------------------------- #
# Types from the header.

burst_status = ctypes.c_int  # a C enum: int on every ABI we target
c_handle = ctypes.c_void_p   # burst_context*, burst_plan* (opaque)


class AttentionConfig(ctypes.Structure):
    """`burst_attention_config` — field order is ABI; new fields are only appended."""

    _fields_ = [
        ("struct_size", ctypes.c_uint32),
        ("layout", ctypes.c_int32),
        ("dtype", ctypes.c_int32),
        ("mask", ctypes.c_int32),
        ("distribution", ctypes.c_int32),
        ("pattern", ctypes.c_int32),
        ("batch", ctypes.c_int64),
        ("seq_len_local", ctypes.c_int64),
        ("num_heads_q", ctypes.c_int64),
        ("num_heads_kv", ctypes.c_int64),
        ("head_dim", ctypes.c_int64),
        ("softmax_scale", ctypes.c_float),
        ("window_left", ctypes.c_int64),
        ("window_right", ctypes.c_int64),
        ("cu_seqlens", ctypes.POINTER(ctypes.c_int64)),
        ("num_sequences", ctypes.c_int64),
        ("num_threads", ctypes.c_int32),
        ("intra_group_size", ctypes.c_int32),
        ("timeout_seconds", ctypes.c_double),
        ("compute", ctypes.c_int32),    # since 0.7: BURST_COMPUTE_*
        ("softcap", ctypes.c_float),    # since 0.8 (0.7: reserved0, 0): 0 = off, else > 0
        ("sinks", ctypes.POINTER(ctypes.c_float)),  # since 0.8: NULL or num_heads_q floats
    ]

# sizeof(burst_attention_config) of versions 0.4-0.6, which ended at timeout_seconds,
# and of 0.7, which ended at softcap (then named reserved0).
CONFIG_SIZE_V0_6 = AttentionConfig.compute.offset
CONFIG_SIZE_V0_7 = AttentionConfig.sinks.offset


class Stats(ctypes.Structure):
    """`burst_stats` — the caller sets struct_size (tiles_* appended in 0.2, the
    inter-group bytes, pattern and intra_group_size in 0.3)."""

    _fields_ = [
        ("struct_size", ctypes.c_uint32),
        ("bytes_sent", ctypes.c_uint64),
        ("bytes_received", ctypes.c_uint64),
        ("messages_sent", ctypes.c_uint64),
        ("steps_computed", ctypes.c_uint64),
        ("steps_skipped", ctypes.c_uint64),
        ("compute_seconds", ctypes.c_double),
        ("comm_wait_seconds", ctypes.c_double),
        ("total_seconds", ctypes.c_double),
        ("tiles_computed", ctypes.c_uint64),
        ("tiles_skipped", ctypes.c_uint64),
        ("bytes_sent_inter_group", ctypes.c_uint64),
        ("bytes_received_inter_group", ctypes.c_uint64),
        ("pattern", ctypes.c_int32),
        ("intra_group_size", ctypes.c_int32),
    ]

# sizeof(burst_stats) of version 0.1, which ended at total_seconds, and 0.2,
# which ended at tiles_skipped.
STATS_SIZE_V0_1 = Stats.tiles_computed.offset
STATS_SIZE_V0_2 = Stats.bytes_sent_inter_group.offset


class KVCacheConfig(ctypes.Structure):
    """`burst_kv_cache_config` (0.6; softcap and sinks appended in 0.8) — field order is
    ABI; new fields are only appended."""

    _fields_ = [
        ("struct_size", ctypes.c_uint32),
        ("layout", ctypes.c_int32),
        ("dtype", ctypes.c_int32),
        ("num_threads", ctypes.c_int32),
        ("num_layers", ctypes.c_int64),
        ("num_heads_q", ctypes.c_int64),
        ("num_heads_kv", ctypes.c_int64),
        ("head_dim", ctypes.c_int64),
        ("softmax_scale", ctypes.c_float),
        ("window_left", ctypes.c_int64),
        ("block_tokens", ctypes.c_int64),
        ("max_bytes_local", ctypes.c_int64),
        ("timeout_seconds", ctypes.c_double),
        # since 0.8
        ("softcap", ctypes.c_float),    # 0 = off, else > 0
        ("reserved0", ctypes.c_int32),  # 0 (padding)
        ("sinks", ctypes.POINTER(ctypes.c_float)),  # NULL or num_layers x num_heads_q floats
    ]

# sizeof(burst_kv_cache_config) of versions 0.6-0.7, which ended at timeout_seconds.
KV_CACHE_CONFIG_SIZE_V0_7 = KVCacheConfig.softcap.offset


# Transports the caller supplies (0.9): the five callbacks (plus release, error_message
# and destroy) of `burst_transport`, as ctypes function types. The library calls them
# only from the thread that is inside a library call on the context (ctypes takes the
# GIL for the callback's duration); a Python exception must never escape one (ctypes
# would print it and return 0, i.e. success): _transport.py catches everything.
#   int  isend(void *user, const void *buffer, size_t bytes, int32_t peer, int32_t tag, void **request)
#   int  irecv(void *user, void *buffer, size_t bytes, int32_t peer, int32_t tag, void **request)
#   int  iallgather(void *user, const void *send, size_t bytes, void *receive, int32_t tag, void **request)
#   int  test(void *user, void *request, int32_t *done)
#   void release(void *user, void *request)
#   const char *error_message(void *user)   -- declared c_void_p here: a c_char_p result of
#        a ctypes callback would point into a bytes object freed on return; the binding
#        returns the address of a buffer it keeps alive instead
#   void destroy(void *user)
TRANSPORT_ISEND = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t,
                                   ctypes.c_int32, ctypes.c_int32, ctypes.POINTER(ctypes.c_void_p))
TRANSPORT_IRECV = TRANSPORT_ISEND
TRANSPORT_IALLGATHER = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p,
                                        ctypes.c_size_t, ctypes.c_void_p, ctypes.c_int32,
                                        ctypes.POINTER(ctypes.c_void_p))
TRANSPORT_TEST = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p,
                                  ctypes.POINTER(ctypes.c_int32))
TRANSPORT_RELEASE = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_void_p)
TRANSPORT_ERROR_MESSAGE = ctypes.CFUNCTYPE(ctypes.c_void_p, ctypes.c_void_p)
TRANSPORT_DESTROY = ctypes.CFUNCTYPE(None, ctypes.c_void_p)

# burst_transport.flags
TRANSPORT_SINGLE_THREADED = 1


class Transport(ctypes.Structure):
    """`burst_transport` (0.9) — copied by burst_context_create_transport (and `nodes`
    with it); the callbacks must stay alive until destroy(user) is called."""

    _fields_ = [
        ("struct_size", ctypes.c_uint32),
        ("rank", ctypes.c_int32),
        ("size", ctypes.c_int32),
        ("flags", ctypes.c_uint32),
        ("nodes", ctypes.POINTER(ctypes.c_int32)),  # NULL or `size` node ids
        ("user", ctypes.c_void_p),
        ("isend", TRANSPORT_ISEND),
        ("irecv", TRANSPORT_IRECV),
        ("iallgather", TRANSPORT_IALLGATHER),
        ("test", TRANSPORT_TEST),
        ("release", TRANSPORT_RELEASE),              # NULL: nothing to do
        ("error_message", TRANSPORT_ERROR_MESSAGE),  # NULL: a generic text
        ("destroy", TRANSPORT_DESTROY),              # NULL: nothing to do
        ("timeout_seconds", ctypes.c_double),        # creation round; 0 = 300 s
    ]


_c_float_p = ctypes.POINTER(ctypes.c_float)
_c_int64_p = ctypes.POINTER(ctypes.c_int64)

# name: (restype, argtypes) — one line per function of the header.
_SIGNATURES = {
    "burst_version": (ctypes.c_uint32, []),
    "burst_status_string": (ctypes.c_char_p, [burst_status]),
    "burst_last_error": (ctypes.c_char_p, []),
    "burst_build_info": (ctypes.c_char_p, []),
    "burst_attention_config_init_sized": (burst_status, [ctypes.POINTER(AttentionConfig), ctypes.c_uint64]),
    "burst_context_create_mpi": (burst_status, [ctypes.c_int64, ctypes.POINTER(c_handle)]),
    "burst_context_create_self": (burst_status, [ctypes.POINTER(c_handle)]),
    "burst_context_create_loopback": (burst_status, [ctypes.c_int32, ctypes.POINTER(c_handle)]),
    # 0.9: a context over the caller's callbacks (the struct is copied during the call)
    "burst_context_create_transport": (burst_status, [ctypes.POINTER(Transport),
                                                      ctypes.POINTER(c_handle)]),
    "burst_context_rank": (burst_status, [c_handle, ctypes.POINTER(ctypes.c_int32),
                                          ctypes.POINTER(ctypes.c_int32)]),
    "burst_context_destroy": (None, [c_handle]),
    "burst_plan_create": (burst_status, [c_handle, ctypes.POINTER(AttentionConfig),
                                         ctypes.POINTER(c_handle)]),
    "burst_forward": (burst_status, [c_handle, ctypes.c_void_p, ctypes.c_void_p,
                                     ctypes.c_void_p, ctypes.c_void_p, _c_float_p]),
    "burst_backward": (burst_status, [c_handle, ctypes.c_void_p, ctypes.c_void_p,
                                      ctypes.c_void_p, ctypes.c_void_p, _c_float_p,
                                      ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p,
                                      ctypes.c_void_p]),
    # Score modifiers (0.8): plan, sinks (num_heads_q floats, or NULL) / dsinks (out)
    "burst_plan_set_sinks": (burst_status, [c_handle, _c_float_p]),
    "burst_plan_sinks_gradient": (burst_status, [c_handle, _c_float_p]),
    "burst_plan_stats": (burst_status, [c_handle, ctypes.POINTER(Stats)]),
    "burst_plan_destroy": (None, [c_handle]),
    # The KV cache (0.6): cache handles are c_handle too.
    "burst_kv_cache_config_init_sized": (burst_status, [ctypes.POINTER(KVCacheConfig), ctypes.c_uint64]),
    "burst_kv_cache_create": (burst_status, [c_handle, ctypes.POINTER(KVCacheConfig),
                                             ctypes.POINTER(c_handle)]),
    "burst_kv_cache_destroy": (None, [c_handle]),
    "burst_kv_cache_add": (burst_status, [c_handle, _c_int64_p, ctypes.c_int64]),
    "burst_kv_cache_drop": (burst_status, [c_handle, _c_int64_p, ctypes.c_int64]),
    "burst_kv_cache_truncate": (burst_status, [c_handle, _c_int64_p, _c_int64_p, ctypes.c_int64]),
    # cache, layer, plan, seq_ids, k, v
    "burst_kv_cache_prefill": (burst_status, [c_handle, ctypes.c_int64, c_handle, _c_int64_p,
                                              ctypes.c_void_p, ctypes.c_void_p]),
    # cache, layer, seq_ids, num_seqs, tokens, positions, q, k, v, out, lse
    "burst_kv_cache_decode": (burst_status, [c_handle, ctypes.c_int64, _c_int64_p, ctypes.c_int64,
                                             ctypes.c_int64, _c_int64_p, ctypes.c_void_p,
                                             ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p,
                                             _c_float_p]),
    "burst_kv_cache_sequence_length": (burst_status, [c_handle, ctypes.c_int64, ctypes.c_int64,
                                                      _c_int64_p, _c_int64_p]),
    "burst_kv_cache_bytes": (burst_status, [c_handle, ctypes.POINTER(ctypes.c_uint64)]),
    "burst_kv_cache_stats": (burst_status, [c_handle, ctypes.POINTER(Stats)]),
    # distribution, total_tokens, cu_seqlens, num_sequences, world_size, rank, ...
    "burst_shard_positions": (burst_status, [ctypes.c_int32, ctypes.c_int64, _c_int64_p,
                                             ctypes.c_int64, ctypes.c_int32, ctypes.c_int32,
                                             _c_int64_p, ctypes.c_int64, _c_int64_p]),
    "burst_shard": (burst_status, [ctypes.c_int32, ctypes.c_int64, _c_int64_p, ctypes.c_int64,
                                   ctypes.c_int32, ctypes.c_int32, ctypes.c_int64,
                                   ctypes.c_int64, ctypes.c_void_p, ctypes.c_void_p]),
    "burst_unshard": (burst_status, [ctypes.c_int32, ctypes.c_int64, _c_int64_p, ctypes.c_int64,
                                     ctypes.c_int32, ctypes.c_int32, ctypes.c_int64,
                                     ctypes.c_int64, ctypes.c_void_p, ctypes.c_void_p]),
}


def _declare(cdll: ctypes.CDLL) -> None:
    missing = []
    for name, (restype, argtypes) in _SIGNATURES.items():
        try:
            fn = getattr(cdll, name)
        except AttributeError:
            missing.append(name)
            continue
        fn.restype = restype
        fn.argtypes = argtypes
    if missing:
        raise ImportError(f"burst_attention: {path} lacks symbols: {', '.join(missing)}")


def _version_string(number: int) -> str:
    return f"{number // 10000}.{number // 100 % 100}.{number % 100}"


def _check_version(cdll: ctypes.CDLL, where: str) -> None:
    """ImportError unless the loaded library has this binding's MAJOR.MINOR (the C ABI
    only grows within a minor version; a different PATCH is accepted)."""
    found = int(cdll.burst_version())
    if found // 100 != VERSION_NUMBER // 100:
        raise ImportError(
            f"burst_attention: version mismatch: this binding is {VERSION} "
            f"(VERSION_NUMBER {VERSION_NUMBER}) but {where} is libburst_attention "
            f"{_version_string(found)} (burst_version() = {found}); MAJOR and MINOR must "
            f"agree. Install a matching library or point {ENV_VAR} at one.")


lib, path = _load()
_declare(lib)
_check_version(lib, path)


def float_ptr(array) -> "ctypes._Pointer | None":
    """A `float*` to a numpy array's data, or NULL for None."""
    if array is None:
        return None
    return array.ctypes.data_as(_c_float_p)


def int64_ptr(array) -> "ctypes._Pointer | None":
    """An `int64_t*` to a numpy int64 array's data, or NULL for None."""
    if array is None:
        return None
    return array.ctypes.data_as(_c_int64_p)


def void_ptr(array) -> int | None:
    """A `void*` (as int) to a numpy array's data, or NULL for None."""
    if array is None:
        return None
    return array.ctypes.data


def new_config() -> AttentionConfig:
    """A config with the library's defaults (burst_attention_config_init_sized).

    The sized init writes exactly sizeof(our struct), so a newer library never
    writes past what this binding allocated; fields it appended later keep their
    defaults (zero)."""
    cfg = AttentionConfig()
    status = lib.burst_attention_config_init_sized(ctypes.byref(cfg), ctypes.sizeof(AttentionConfig))
    if status != 0:
        raise RuntimeError(f"burst_attention_config_init_sized: {lib.burst_last_error().decode(errors='replace')}")
    return cfg


def new_kv_cache_config() -> KVCacheConfig:
    """A KV cache config with the library's defaults (burst_kv_cache_config_init_sized:
    BSHD, F32, window_left = -1, everything else 0), as `new_config`."""
    cfg = KVCacheConfig()
    status = lib.burst_kv_cache_config_init_sized(ctypes.byref(cfg), ctypes.sizeof(KVCacheConfig))
    if status != 0:
        raise RuntimeError(f"burst_kv_cache_config_init_sized: {lib.burst_last_error().decode(errors='replace')}")
    return cfg


def new_stats() -> Stats:
    stats = Stats()
    stats.struct_size = ctypes.sizeof(Stats)
    return stats
