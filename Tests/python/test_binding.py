"""pytest for the Python binding (bindings/python/burst_attention), single process.

Runs against the library found by the binding's lookup; if BURST_ATTENTION_LIBRARY is
not set and the CMake install tree exists (build/install/lib), that one is used.
Multi-rank behaviour is driven through loopback contexts, one Python thread per rank
(ctypes releases the GIL during library calls). MPI runs live in mpi_check.py.
"""

from __future__ import annotations

import ctypes
import itertools
import os
import subprocess
import sys
import textwrap
import threading
import time

import numpy as np
import pytest

# importing _testenv also sets up sys.path and BURST_ATTENTION_LIBRARY
from _testenv import BINDING, CALL_TIMEOUT, JOIN_TIMEOUT, results_or_raise, run_ranks  # noqa: E402

import burst_attention as ba  # noqa: E402
from burst_attention import _lib  # noqa: E402
import reference as ref  # noqa: E402


# --------------------------------------------------------------------------- helpers

def distributed_run(world, counts, layout, mask, batch=2, heads=2, head_dim=8, seed=7,
                    softmax_scale=0.0):
    """Forward + backward of a global problem split contiguously into `counts` over
    `world` contexts (see `variant_run`). Returns per-rank (forward, backward) stats."""
    return variant_run(world, "contiguous", sum(counts), counts=counts, layout=layout,
                       causal=mask == "causal", batch=batch, heads_q=heads, heads_kv=heads,
                       head_dim=head_dim, seed=seed, softmax_scale=softmax_scale)


def variant_run(world, distribution, n_total, counts=None, layout="bshd", causal=False,
                window=(-1, -1), cu_seqlens=None, batch=2, heads_q=2, heads_kv=None,
                head_dim=8, seed=7, softmax_scale=0.0, pattern="burst", intra_group_size=0,
                softcap=0.0, sinks=None):
    """Forward + backward of one global problem over the `world` contexts (one thread a
    rank), every shard compared with the float64 reference (DESIGN §3 tolerances,
    relative to the max of the *global* reference), and every rank's counters checked
    exactly against the independent schedule simulation in reference.py: bytes and
    messages (`burst_traffic` on the brute-force needs matrix), ring steps and tiles
    (`step_tile_stats`).

    Shards come from reference.positions (the header's rules in numpy); `counts` gives
    a CONTIGUOUS split other than the balanced one. softcap / sinks (0.8; sinks: Hq
    floats) go to the plan and the reference; with sinks every rank's
    `sinks_gradient()` is checked against the reference's sum over its own rows (the
    gradient tolerance), and the ranks' partials summed against the full gradient. The
    modifiers move nothing, so the counters are checked against the same schedule.
    Returns per-rank (forward, backward) stats."""
    p = len(world)
    heads_kv = heads_q if heads_kv is None else heads_kv
    window_left, window_right = window
    pos = ref.all_positions(distribution, n_total, p, cu_seqlens, counts)
    n_local = [len(x) for x in pos]
    mask = "causal" if causal else "none"
    where = (f"P={p} {distribution} N={n_total} counts={n_local} {layout} {mask} "
             f"window={window} heads={heads_q}/{heads_kv} cu_seqlens={cu_seqlens} "
             f"pattern={pattern} softcap={softcap} sinks={sinks}")
    q, k, v, dout = ref.make_inputs(seed, batch, n_total, heads_q, heads_kv, head_dim, layout)
    masks = dict(window_left=window_left, window_right=window_right, cu_seqlens=cu_seqlens,
                 softcap=softcap, sinks=sinks)
    out_ref, lse_ref = ref.forward(q, k, v, causal, softmax_scale, layout, **masks)
    *grads_ref, dsink_rows = ref.backward_full(q, k, v, dout, causal, softmax_scale, layout,
                                               **masks)

    def rank_fn(ctx):
        mine = [ref.shard_at(x, pos[ctx.rank], layout) for x in (q, k, v, dout)]
        with ctx.plan(batch, n_local[ctx.rank], heads_q, head_dim, num_heads_kv=heads_kv,
                      layout=layout, mask=mask, distribution=distribution,
                      window_left=window_left, window_right=window_right,
                      cu_seqlens=cu_seqlens, softmax_scale=softmax_scale,
                      pattern=pattern, intra_group_size=intra_group_size,
                      timeout_seconds=CALL_TIMEOUT, softcap=softcap, sinks=sinks) as plan:
            out, lse = plan.forward(*mine[:3])
            fstats = plan.stats()
            dq, dk, dv = plan.backward(*mine[:3], out, lse, mine[3])
            bstats = plan.stats()
            dsinks = plan.sinks_gradient() if sinks is not None else None
        return out, lse, dq, dk, dv, fstats, bstats, dsinks

    per_rank = results_or_raise(run_ranks(world, rank_fn))
    if sinks is not None:
        partials = [ref.sinks_partial(dsink_rows, pos[r]) for r in range(p)]
        full = ref.sinks_partial(dsink_rows)
        scale = max([float(np.max(np.abs(x))) for x in partials + [full]]) or 1.0
        for r, result in enumerate(per_rank):
            got = result[7]
            assert got.dtype == np.float32 and got.shape == (heads_q,), (where, got)
            err = float(np.max(np.abs(got - partials[r]))) / scale
            assert err <= ref.GRAD_TOL, f"{where}: rank {r} dsinks error {err:.3g} > {ref.GRAD_TOL:g}"
        total = np.sum([result[7].astype(np.float64) for result in per_rank], axis=0)
        err = float(np.max(np.abs(total - full))) / scale
        assert err <= ref.GRAD_TOL, f"{where}: dsinks summed over ranks error {err:.3g}"
    per_rank = [result[:7] for result in per_rank]

    scales = (float(np.max(np.abs(out_ref), initial=0.0)) or 1.0,) + ref.grad_scales(*grads_ref)
    tols = (ref.OUT_TOL,) + (ref.GRAD_TOL,) * 3
    for r, (out, lse, dq, dk, dv, _, _) in enumerate(per_rank):
        for name, got, want, tol, scale in zip(("out", "dq", "dk", "dv"), (out, dq, dk, dv),
                                               (out_ref,) + tuple(grads_ref), tols, scales):
            want = ref.shard_at(want, pos[r], layout)
            assert got.shape == want.shape, (where, r, name, got.shape)
            err = float(np.max(np.abs(got - want))) / scale if got.size else 0.0
            assert err <= tol, f"{where}: rank {r} {name} error {err:.3g} > {tol:g}"
        lerr = ref.lse_error(lse, ref.shard_lse_at(lse_ref, pos[r]))
        assert lerr <= ref.LSE_TOL, f"{where}: rank {r} lse error {lerr:.3g}"

    for kind, i in (("forward", 5), ("backward", 6)):
        sent = sum(result[i]["bytes_sent"] for result in per_rank)
        assert sent == sum(result[i]["bytes_received"] for result in per_rank), (where, kind)
        if ba.Pattern[str(pattern).upper()] is not ba.Pattern.AUTO:
            assert all(result[i]["pattern"] == ba.Pattern[str(pattern).upper()] for result in per_rank)
    if str(pattern).lower() != "burst" or intra_group_size not in (0, p):
        return [(f, b) for *_, f, b in per_rank]  # the schedule simulation below is BURST's single ring
    visible = ref.visibility(n_total, causal, window_left, window_right, cu_seqlens)
    needs = ref.needs_matrix(pos, visible)
    for kind, i in (("forward", 5), ("backward", 6)):
        traffic = ref.burst_traffic(n_local, needs, batch * heads_q, batch * heads_kv,
                                    head_dim, kind)
        work = ref.step_tile_stats(pos, visible, batch * heads_q, kind)
        for r, result in enumerate(per_rank):
            got = result[i]
            for key in ("bytes_sent", "bytes_received", "messages_sent"):
                assert got[key] == traffic[key][r], f"{where}: rank {r} {kind} {key} {got[key]} != {traffic[key][r]}"
            for key, want in work[r].items():
                assert got[key] == want, f"{where}: rank {r} {kind} {key} {got[key]} != {want}"
            if n_local[r]:  # work exists: a dense schedule has tiles here
                assert got["tiles_computed"] + got["tiles_skipped"] > 0, (where, r, kind, got)
                assert got["tiles_computed"] > 0, (where, r, kind, got)  # its own keys
    return [(f, b) for *_, f, b in per_rank]


# --------------------------------------------------------------------------- library-level calls

def test_library_path_is_loaded():
    assert os.path.exists(ba.library_path) or "/" not in ba.library_path


def _import_in_subprocess(pythonpath, env_library):
    env = dict(os.environ)
    env.pop("BURST_ATTENTION_LIBRARY", None)
    if env_library is not None:
        env["BURST_ATTENTION_LIBRARY"] = env_library
    env["PYTHONPATH"] = pythonpath
    return subprocess.run([sys.executable, "-c", "import burst_attention as b; print(b.library_path)"],
                          capture_output=True, text=True, timeout=60, env=env, cwd=pythonpath)


def test_library_lookup_next_to_package(tmp_path):
    import shutil
    shutil.copytree(os.path.join(BINDING, "burst_attention"), tmp_path / "burst_attention",
                    ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ba.library_path, tmp_path / "burst_attention" / "libburst_attention.so")
    proc = _import_in_subprocess(str(tmp_path), None)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == str(tmp_path / "burst_attention" / "libburst_attention.so")


def test_library_lookup_failure_lists_what_was_tried(tmp_path):
    proc = _import_in_subprocess(BINDING, str(tmp_path / "missing.so"))
    assert proc.returncode != 0
    assert "ImportError" in proc.stderr and "missing.so: no such file" in proc.stderr
    assert "BURST_ATTENTION_LIBRARY" in proc.stderr


def test_version_matches_header():
    assert ba.version() == ba.VERSION_NUMBER == 900
    assert ba.version_info() == (ba.VERSION_MAJOR, ba.VERSION_MINOR, ba.VERSION_PATCH) == (0, 9, 0)
    assert ba.__version__ == "0.9.0"


def test_status_string_every_code():
    for status in ba.Status:
        expected = "BURST_OK" if status == ba.Status.OK else f"BURST_ERROR_{status.name}"
        assert ba.status_string(status) == expected
    assert ba.status_string(12345) == "BURST_ERROR_UNKNOWN"
    assert ba.status_string(-1) == "BURST_ERROR_UNKNOWN"


def test_status_values_are_abi():
    assert [int(s) for s in ba.Status] == list(range(10))
    assert (ba.LAYOUT_BSHD, ba.LAYOUT_BHSD, ba.DTYPE_F32, ba.MASK_NONE, ba.MASK_CAUSAL) == (0, 1, 0, 0, 1)
    assert [int(d) for d in ba.Distribution] == [0, 1, 2]
    assert [int(p) for p in ba.Pattern] == [0, 1, 2, 3, 4]


def test_burst_error_subclass_for_every_status():
    """BurstError(status) builds the subclass of each status — OUT_OF_MEMORY too, whose
    class is also a MemoryError (MemoryError.__new__ refuses such subclasses)."""
    builtin = {ba.Status.INVALID_ARGUMENT: ValueError, ba.Status.UNSUPPORTED: NotImplementedError,
               ba.Status.OUT_OF_MEMORY: MemoryError}
    for status in ba.Status:
        error = ba.BurstError(status, "message", "function")
        assert error.status == status and error.message == "message"
        if status != ba.Status.OK:
            assert type(error).status_code == status
        assert isinstance(error, builtin.get(status, ba.BurstError))
        assert isinstance(error, ba.BurstError)
    assert isinstance(ba.OutOfMemoryError(3, "x"), MemoryError)
    import pickle
    again = pickle.loads(pickle.dumps(ba.BurstError(ba.Status.OUT_OF_MEMORY, "full", "f")))
    assert isinstance(again, ba.OutOfMemoryError) and again.message == "full"


def test_last_error_after_failure():
    with ba.Context.self() as ctx:
        with pytest.raises(ba.BurstError) as info:
            ctx.plan(1, 4, 1, 0)
        message = ba.last_error()
    assert message and message == info.value.message
    assert info.value.status == ba.Status.INVALID_ARGUMENT
    assert "BURST_ERROR_INVALID_ARGUMENT" in str(info.value)


def test_last_error_is_thread_local():
    seen = {}

    def fail():
        with ba.Context.self() as ctx:
            with pytest.raises(ba.BurstError):
                ctx.plan(1, 4, 1, 0)
        seen["other"] = ba.last_error()

    t = threading.Thread(target=fail)
    t.start()
    t.join()
    assert seen["other"]


def test_config_init_defaults_and_layout():
    # burst_attention_config_init, called directly: struct layout must match the header.
    assert ctypes.sizeof(_lib.AttentionConfig) == 136
    assert _lib.CONFIG_SIZE_V0_6 == 120 and _lib.CONFIG_SIZE_V0_7 == 128
    assert _lib.AttentionConfig.softcap.offset == 124  # 0.7's reserved0
    assert ctypes.sizeof(_lib.Stats) == 112 and _lib.STATS_SIZE_V0_2 == 88 and _lib.STATS_SIZE_V0_1 == 72
    cfg = _lib.AttentionConfig()
    assert _lib.lib.burst_attention_config_init_sized(ctypes.byref(cfg), ctypes.sizeof(cfg)) == ba.Status.OK
    assert cfg.struct_size == ctypes.sizeof(_lib.AttentionConfig)
    assert (cfg.layout, cfg.dtype, cfg.mask, cfg.distribution, cfg.pattern) == (0, 0, 0, 0, 0)
    assert (cfg.window_left, cfg.window_right) == (-1, -1)
    assert not cfg.cu_seqlens and cfg.num_sequences == 0
    assert (cfg.batch, cfg.seq_len_local, cfg.num_heads_q, cfg.num_heads_kv, cfg.head_dim) == (0,) * 5
    assert (cfg.softmax_scale, cfg.num_threads, cfg.intra_group_size, cfg.timeout_seconds) == (0, 0, 0, 0)
    assert cfg.compute == 0  # BURST_COMPUTE_DEFAULT
    assert cfg.softcap == 0.0 and not cfg.sinks  # 0.8: no softcap, no sinks
    assert _lib.lib.burst_attention_config_init_sized(None, 136) == ba.Status.INVALID_ARGUMENT
    # Since 0.5: a size this library does not know writes nothing; a newer
    # header's larger one gets zeros past this version's fields; the released sizes
    # of 0.4-0.6 (120) and 0.7 (128, up to softcap, then reserved0) get exactly their bytes.
    room = (ctypes.c_ubyte * 256)(*([0xAB] * 256))
    room_cfg = ctypes.cast(room, ctypes.POINTER(_lib.AttentionConfig))
    for unknown in (112, 124, 132):
        assert _lib.lib.burst_attention_config_init_sized(room_cfg, unknown) == ba.Status.VERSION
    assert bytes(room) == bytes([0xAB] * 256)
    assert _lib.lib.burst_attention_config_init_sized(room_cfg, 120) == ba.Status.OK
    assert int.from_bytes(bytes(room[:4]), "little") == 120 and room[120] == 0xAB
    assert _lib.lib.burst_attention_config_init_sized(room_cfg, 128) == ba.Status.OK
    assert int.from_bytes(bytes(room[:4]), "little") == 128
    assert bytes(room[120:128]) == bytes(8) and room[128] == 0xAB
    assert _lib.lib.burst_attention_config_init_sized(room_cfg, 152) == ba.Status.OK
    assert int.from_bytes(bytes(room[:4]), "little") == 152
    assert bytes(room[120:152]) == bytes(32) and room[152] == 0xAB


def test_kv_cache_config_layout():
    """burst_kv_cache_config (0.8: softcap, reserved0, sinks appended) mirrors the
    header: 104 bytes, 88 for the 0.6-0.7 struct that ended at timeout_seconds."""
    assert ctypes.sizeof(_lib.KVCacheConfig) == 104
    assert _lib.KV_CACHE_CONFIG_SIZE_V0_7 == 88
    assert (_lib.KVCacheConfig.reserved0.offset, _lib.KVCacheConfig.sinks.offset) == (92, 96)
    cfg = _lib.new_kv_cache_config()
    assert cfg.struct_size == 104 and cfg.softcap == 0.0 and cfg.reserved0 == 0 and not cfg.sinks
    room = (ctypes.c_ubyte * 160)(*([0xAB] * 160))
    room_cfg = ctypes.cast(room, ctypes.POINTER(_lib.KVCacheConfig))
    assert _lib.lib.burst_kv_cache_config_init_sized(room_cfg, 88) == ba.Status.OK
    assert int.from_bytes(bytes(room[:4]), "little") == 88 and room[88] == 0xAB


# --------------------------------------------------------------------------- contexts

def test_context_self():
    ctx = ba.Context.self()
    assert (ctx.rank, ctx.size, ctx.kind, ctx.closed) == (0, 1, "self", False)
    assert "rank=0 size=1" in repr(ctx)
    ctx.close()
    ctx.close()  # idempotent
    assert ctx.closed
    with pytest.raises(ValueError, match="closed"):
        ctx.plan(1, 1, 1, 1)


def test_context_rank_via_c():
    with ba.Context.self() as ctx:
        rank, size = ctypes.c_int32(-1), ctypes.c_int32(-1)
        assert _lib.lib.burst_context_rank(ctx._handle, ctypes.byref(rank), ctypes.byref(size)) == 0
        assert (rank.value, size.value) == (0, 1)
        # either pointer may be NULL
        assert _lib.lib.burst_context_rank(ctx._handle, None, None) == 0
    assert _lib.lib.burst_context_rank(None, ctypes.byref(rank), None) == ba.Status.INVALID_ARGUMENT


def test_context_constructor_is_private():
    with pytest.raises(TypeError):
        ba.Context(0, "self")


@pytest.mark.parametrize("world_size", [1, 2, 3, 8])
def test_context_loopback(world_size):
    contexts = ba.Context.loopback(world_size)
    try:
        assert [c.rank for c in contexts] == list(range(world_size))
        assert all(c.size == world_size and c.kind == "loopback" for c in contexts)
    finally:
        for c in contexts:
            c.close()


@pytest.mark.parametrize("world_size", [0, -1, 1025])
def test_context_loopback_invalid_size(world_size):
    with pytest.raises(ba.BurstError) as info:
        ba.Context.loopback(world_size)
    assert info.value.status == ba.Status.INVALID_ARGUMENT


def test_context_loopback_type_errors():
    with pytest.raises(TypeError):
        ba.Context.loopback("2")
    with pytest.raises(ValueError):
        ba.Context.loopback(2**40)


def test_context_from_mpi_type_errors():
    with pytest.raises(TypeError):
        ba.Context.from_mpi("COMM_WORLD")
    with pytest.raises(ValueError):
        ba.Context.from_mpi(2**70)


def test_context_from_mpi_singleton():
    """Context.from_mpi in a separate process (MPI singleton, no mpirun), so this
    process never initialises MPI. Also: COMM_NULL and out-of-range handles are
    rejected locally with INVALID_ARGUMENT; the caller's comm may be freed."""
    pytest.importorskip("mpi4py")
    script = textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {BINDING!r})
        from mpi4py import MPI
        import burst_attention as ba
        import numpy as np
        comm = MPI.COMM_WORLD.Dup()
        with ba.Context.from_mpi(comm) as ctx:
            comm.Free()                      # allowed: the context owns a dup
            assert (ctx.rank, ctx.size, ctx.kind) == (0, 1, "mpi"), (ctx.rank, ctx.size)
            with ctx.plan(1, 3, 1, 4, timeout_seconds=30) as plan:
                x = np.ones(plan.q_shape, np.float32)
                out, lse = plan.forward(x, x, x)
                assert np.allclose(out, 1.0) and plan.stats()["bytes_sent"] == 0
        for bad in (MPI.COMM_NULL, 2**40, -5):
            try:
                ba.Context.from_mpi(bad)
            except ba.BurstError as e:
                assert e.status == ba.Status.INVALID_ARGUMENT, e
            else:
                raise AssertionError(f"from_mpi({{bad!r}}) did not fail")
        print("ok")
    """)
    env = dict(os.environ)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=180, env=env)
    assert proc.returncode == 0 and "ok" in proc.stdout, proc.stdout + proc.stderr


# --------------------------------------------------------------------------- plans

def test_plan_properties_and_shapes():
    with ba.Context.self() as ctx:
        with ctx.plan(2, 5, 4, 8, layout="bhsd", mask=ba.Mask.CAUSAL) as plan:
            assert plan.q_shape == (2, 4, 5, 8) and plan.kv_shape == (2, 4, 5, 8)
            assert plan.lse_shape == (2, 4, 5)
            assert plan.layout is ba.Layout.BHSD and plan.mask is ba.Mask.CAUSAL
            assert (plan.batch, plan.seq_len_local, plan.num_heads_q, plan.num_heads_kv,
                    plan.head_dim) == (2, 5, 4, 4, 8)
            assert plan.context is ctx and "BHSD" in repr(plan)
        assert plan.closed and "closed" in repr(plan)
        with ctx.plan(2, 5, 4, 8) as plan:
            assert plan.q_shape == (2, 5, 4, 8) and plan.layout is ba.Layout.BSHD
            assert plan.distribution is ba.Distribution.CONTIGUOUS and plan.cu_seqlens is None
        with ctx.plan(2, 5, 4, 8, num_heads_kv=1, distribution="zigzag", pattern=0,
                      window_left=3, window_right=0, cu_seqlens=[0, 2, 5]) as plan:
            assert plan.q_shape == (2, 5, 4, 8) and plan.kv_shape == (2, 5, 1, 8)
            assert plan.distribution is ba.Distribution.ZIGZAG and plan.pattern is ba.Pattern.BURST
            assert (plan.window_left, plan.window_right) == (3, 0)
            assert plan.cu_seqlens.dtype == np.int64 and plan.cu_seqlens.tolist() == [0, 2, 5]
            plan.cu_seqlens[0] = 9  # a copy
            assert plan.cu_seqlens[0] == 0 and "ZIGZAG" in repr(plan)


def test_plan_create_via_c():
    # burst_plan_create + burst_plan_destroy called directly (NULL destroy is ignored).
    with ba.Context.self() as ctx:
        cfg = _lib.new_config()
        cfg.batch, cfg.seq_len_local, cfg.num_heads_q, cfg.num_heads_kv, cfg.head_dim = 1, 2, 1, 1, 4
        out = _lib.c_handle()
        assert _lib.lib.burst_plan_create(ctx._handle, ctypes.byref(cfg), ctypes.byref(out)) == 0
        assert out.value
        _lib.lib.burst_plan_destroy(out.value)
        _lib.lib.burst_plan_destroy(None)
        assert _lib.lib.burst_plan_create(ctx._handle, None, ctypes.byref(out)) == ba.Status.INVALID_ARGUMENT
        cfg.struct_size = 4
        assert _lib.lib.burst_plan_create(ctx._handle, ctypes.byref(cfg), ctypes.byref(out)) == ba.Status.VERSION
    _lib.lib.burst_context_destroy(None)


def test_plan_keeps_context_alive_and_close_order():
    ctx = ba.Context.self()
    plan = ctx.plan(1, 2, 1, 4)
    del ctx  # the plan holds a reference
    x = np.ones(plan.q_shape, np.float32)
    plan.forward(x, x, x)
    context = plan.context
    context.close()  # closes the plan first
    assert plan.closed and context.closed
    with pytest.raises(ValueError, match="closed"):
        plan.forward(x, x, x)


def test_plan_del_destroys():
    ctx = ba.Context.self()
    for _ in range(50):
        plan = ctx.plan(1, 16, 2, 8)
        del plan
    assert len(ctx._plans) == 0
    ctx.close()


def test_unclosed_objects_are_cleaned_up_at_exit():
    """Contexts and plans never closed are destroyed by __del__ / the atexit hook,
    plans before their contexts, without crashing the interpreter."""
    script = textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {BINDING!r})
        import numpy as np
        import burst_attention as ba
        ctx = ba.Context.self()
        plan = ctx.plan(1, 5, 2, 8)
        x = np.ones(plan.q_shape, np.float32)
        plan.forward(x, x, x)
        loop = ba.Context.loopback(3)  # destroyed at exit too
        print("ok")
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=120, env=dict(os.environ))
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stdout + proc.stderr


# --------------------------------------------------------------------------- forward / backward, self

SELF_SHAPES = [  # batch, seq, heads, head_dim
    (1, 1, 1, 1),
    (2, 1, 2, 16),  # one token: dq = dk = 0 exactly, float32 leaves rounding noise
    (2, 37, 3, 16),
    (1, 64, 2, 64),
    (1, 130, 1, 80),
    (3, 17, 2, 5),
]


@pytest.mark.parametrize("layout", ["bshd", "bhsd"])
@pytest.mark.parametrize("mask", ["none", "causal"])
@pytest.mark.parametrize("shape", SELF_SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_self_forward_backward(layout, mask, shape):
    batch, n, heads, d = shape
    distributed_run([ba.Context.self()], [n], layout, mask, batch, heads, d, seed=n * 31 + d)


def test_self_forward_custom_scale():
    distributed_run([ba.Context.self()], [23], "bshd", "causal", 1, 2, 16, softmax_scale=0.37)


def test_forward_fills_given_buffers():
    with ba.Context.self() as ctx, ctx.plan(1, 9, 2, 8) as plan:
        q, k, v, dout = ref.make_inputs(3, 1, 9, 2, 2, 8)
        out = np.full(plan.q_shape, np.nan, np.float32)
        lse = np.full(plan.lse_shape, np.nan, np.float32)
        out2, lse2 = plan.forward(q, k, v, out=out, lse=lse)
        assert out2 is out and lse2 is lse and np.isfinite(out).all()
        dq, dk, dv = (np.full(s, np.nan, np.float32) for s in (plan.q_shape, plan.kv_shape, plan.kv_shape))
        r = plan.backward(q, k, v, out, lse, dout, dq=dq, dk=dk, dv=dv)
        assert r[0] is dq and r[1] is dk and r[2] is dv and np.isfinite(dq).all()
        # overwritten, not accumulated
        plan.backward(q, k, v, out, lse, dout, dq=dq, dk=dk, dv=dv)
        assert np.array_equal(r[0], plan.backward(q, k, v, out, lse, dout)[0])


def test_results_are_bitwise_deterministic():
    q, k, v, dout = ref.make_inputs(11, 2, 70, 2, 2, 32)
    with ba.Context.self() as ctx, ctx.plan(2, 70, 2, 32, mask="causal") as plan:
        a = plan.forward(q, k, v)
        b = plan.forward(q, k, v)
        ga = plan.backward(q, k, v, *a, dout)
        gb = plan.backward(q, k, v, *b, dout)
    for x, y in zip(a + ga, b + gb):
        assert np.array_equal(x, y)


def test_large_logits_stay_finite():
    q, k, v, _ = ref.make_inputs(5, 1, 48, 1, 1, 16)
    q *= 40.0
    k *= 40.0  # logits ~ 1e4
    with ba.Context.self() as ctx, ctx.plan(1, 48, 1, 16, mask="causal") as plan:
        out, lse = plan.forward(q, k, v)
    out_ref, lse_ref = ref.forward(q, k, v, True)
    assert np.isfinite(out).all() and np.isfinite(lse).all()
    assert float(np.max(np.abs(lse - lse_ref) / np.abs(lse_ref))) < 1e-5


def test_nan_input_propagates_without_crash():
    q, k, v, _ = ref.make_inputs(5, 1, 8, 1, 1, 4)
    q[0, 3, 0, 1] = np.nan
    with ba.Context.self() as ctx, ctx.plan(1, 8, 1, 4) as plan:
        out, lse = plan.forward(q, k, v)
    # DESIGN §3: NaN propagates as IEEE says — it shows in row 3 and nowhere else.
    assert np.isnan(out[0, 3]).any() or np.isnan(lse[0, 0, 3])
    assert np.isfinite(np.delete(out, 3, axis=1)).all()
    assert np.isfinite(np.delete(lse, 3, axis=2)).all()


def test_zero_token_self_plan():
    with ba.Context.self() as ctx, ctx.plan(1, 0, 2, 4) as plan:
        x = np.empty(plan.q_shape, np.float32)
        out, lse = plan.forward(x, x, x)
        assert out.shape == (1, 0, 2, 4) and lse.shape == (1, 2, 0)
        dq, dk, dv = plan.backward(x, x, x, out, lse, x)
        assert dq.shape == (1, 0, 2, 4)


# --------------------------------------------------------------------------- loopback (threads as ranks)

LOOPBACK_COUNTS = {
    2: [[0, 7], [1, 6], [5, 5], [9, 1]],
    3: [[5, 0, 1], [0, 1, 9], [1, 12, 0], [4, 4, 4]],
}


@pytest.mark.parametrize("layout", ["bshd", "bhsd"])
@pytest.mark.parametrize("mask", ["none", "causal"])
@pytest.mark.parametrize("world_size,counts",
                         [(p, c) for p, cs in LOOPBACK_COUNTS.items() for c in cs],
                         ids=lambda x: str(x))
def test_loopback_forward_backward(world_size, counts, layout, mask):
    contexts = ba.Context.loopback(world_size)
    try:
        stats = distributed_run(contexts, counts, layout, mask, batch=2, heads=2, head_dim=8,
                                seed=sum(counts) * 7 + world_size)
    finally:
        for c in contexts:
            c.close()
    causal = mask == "causal"
    for r, (fstats, bstats) in enumerate(stats):
        for kind, s in (("forward", fstats), ("backward", bstats)):
            want = ref.contiguous_traffic(counts, 2 * 2, 8, kind, causal)
            for key in ("bytes_sent", "bytes_received", "messages_sent"):
                assert s[key] == want[key][r], (r, kind, key, s, want)
            if not causal and 0 not in counts:  # the closed form without skipping
                assert want["bytes_sent"][r] == ref.plain_bytes_sent(counts, r, 2 * 2, 8, kind)


def test_loopback_larger_shards():
    contexts = ba.Context.loopback(3)
    try:
        distributed_run(contexts, [70, 33, 129], "bshd", "causal", batch=1, heads=2, head_dim=64)
    finally:
        for c in contexts:
            c.close()


def test_error_does_not_grow_with_world():
    """DESIGN §3: error at P ranks <= 2 x error at P = 1 + 1e-6 (relative to max|ref|)."""
    batch, heads, d, counts = 1, 2, 32, [40, 25, 31]
    q, k, v, dout = ref.make_inputs(21, batch, sum(counts), heads, heads, d)
    refs = ref.forward(q, k, v, True)[:1] + ref.backward(q, k, v, dout, True)

    def errors(world, shard_counts):
        def rank_fn(ctx):
            r = ctx.rank
            xs = [ref.shard(x, shard_counts, r) for x in (q, k, v, dout)]
            with ctx.plan(batch, shard_counts[r], heads, d, mask="causal",
                          timeout_seconds=CALL_TIMEOUT) as plan:
                out, lse = plan.forward(*xs[:3])
                return (out,) + plan.backward(*xs[:3], out, lse, xs[3])
        per_rank = results_or_raise(run_ranks(world, rank_fn))
        full = [np.concatenate([p[i] for p in per_rank], axis=1) for i in range(4)]
        scales = (float(np.max(np.abs(refs[0]))),) + ref.grad_scales(*refs[1:])
        return [float(np.max(np.abs(g - w))) / s for g, w, s in zip(full, refs, scales)]

    single = errors([ba.Context.self()], [sum(counts)])
    world = ba.Context.loopback(3)
    try:
        multi = errors(world, counts)
    finally:
        for c in world:
            c.close()
    for name, e1, ep in zip(("out", "dq", "dk", "dv"), single, multi):
        assert ep <= 2 * e1 + 1e-6, f"{name}: error at P=3 {ep:.3g} vs P=1 {e1:.3g}"


def test_loopback_mismatched_config_fails_everywhere():
    contexts = ba.Context.loopback(2)

    def rank_fn(ctx):
        ctx.plan(1, 4, 2, 8 if ctx.rank == 0 else 16, timeout_seconds=CALL_TIMEOUT)

    try:
        results = run_ranks(contexts, rank_fn)
    finally:
        for c in contexts:
            c.close()
    for r, (_, exc) in enumerate(results):
        assert isinstance(exc, ba.BurstError) and exc.status == ba.Status.MISMATCH, (r, exc)
        assert "head_dim" in exc.message, exc.message


@pytest.mark.parametrize("bad", ["dtype", "shape"])
def test_loopback_validation_failure_on_one_rank_fails_all(bad):
    """A rank whose arrays fail validation still calls the library (with NULL
    buffers), so the other ranks get an error rather than a hang."""
    contexts = ba.Context.loopback(3)

    def rank_fn(ctx):
        with ctx.plan(1, 4, 1, 8, timeout_seconds=CALL_TIMEOUT) as plan:
            x = np.ones(plan.q_shape, np.float32)
            q = x
            if ctx.rank == 1:
                q = x.astype(np.float64) if bad == "dtype" else np.ones((1, 5, 1, 8), np.float32)
            plan.forward(q, x, x)

    try:
        results = run_ranks(contexts, rank_fn)
    finally:
        for c in contexts:
            c.close()
    expected = TypeError if bad == "dtype" else ValueError
    assert isinstance(results[1][1], expected), results[1]
    assert "q:" in str(results[1][1]) and "library" in str(results[1][1])
    for r in (0, 2):
        assert isinstance(results[r][1], ba.BurstError), (r, results[r])


def test_loopback_plan_config_problem_on_one_rank_fails_all():
    contexts = ba.Context.loopback(2)

    def rank_fn(ctx):
        return ctx.plan(1, 4, 1, 8, layout="bogus" if ctx.rank == 0 else "bshd",
                        timeout_seconds=CALL_TIMEOUT)

    try:
        results = run_ranks(contexts, rank_fn)
    finally:
        for c in contexts:
            c.close()
    assert isinstance(results[0][1], ValueError) and "layout" in str(results[0][1])
    assert isinstance(results[1][1], ba.BurstError), results[1]


def test_loopback_timeout_makes_plan_unusable():
    contexts = ba.Context.loopback(2)
    try:
        plans = results_or_raise(run_ranks(contexts, lambda c: c.plan(1, 2, 1, 4, timeout_seconds=0.5)))
        x = np.ones(plans[0].q_shape, np.float32)
        t0 = time.monotonic()
        with pytest.raises(ba.BurstError) as info:
            plans[0].forward(x, x, x)  # rank 1 never joins
        assert info.value.status == ba.Status.TIMEOUT
        assert time.monotonic() - t0 < 30
        with pytest.raises(ba.BurstError) as info:
            plans[0].forward(x, x, x)
        assert info.value.status == ba.Status.TIMEOUT
        for p in plans:
            p.close()
    finally:
        for c in contexts:
            c.close()


def test_loopback_concurrent_use_of_one_plan_is_busy():
    contexts = ba.Context.loopback(2)
    try:
        plans = results_or_raise(run_ranks(contexts, lambda c: c.plan(1, 2, 1, 4, timeout_seconds=CALL_TIMEOUT)))
        x = np.ones(plans[0].q_shape, np.float32)
        first = {}
        entering = threading.Event()

        def rank0():
            try:
                entering.set()
                first["result"] = plans[0].forward(x, x, x)
            except BaseException as exc:  # noqa: BLE001
                first["error"] = exc

        t = threading.Thread(target=rank0, daemon=True)
        t.start()
        entering.wait(JOIN_TIMEOUT)
        # The thread is about to call burst_forward, where it waits for rank 1;
        # the pause only covers the few instructions between set() and the call.
        time.sleep(0.5)
        with pytest.raises(ba.BurstError) as info:
            plans[0].forward(x, x, x)
        assert info.value.status == ba.Status.BUSY
        with pytest.raises(ba.BurstError):
            plans[0].close()  # the binding refuses to destroy a plan in use
        plans[1].forward(x, x, x)  # completes rank 0's call
        t.join(JOIN_TIMEOUT)
        assert "result" in first, first
        for p in plans:
            p.close()
    finally:
        for c in contexts:
            c.close()


# --------------------------------------------------------------------------- argument errors

@pytest.fixture
def self_plan():
    with ba.Context.self() as ctx, ctx.plan(1, 4, 2, 8, timeout_seconds=CALL_TIMEOUT) as plan:
        yield plan


def test_forward_wrong_dtype(self_plan):
    x = np.ones(self_plan.q_shape, np.float32)
    with pytest.raises(TypeError, match="k: expected dtype float32"):
        self_plan.forward(x, x.astype(np.float64), x)


def test_forward_not_an_array(self_plan):
    x = np.ones(self_plan.q_shape, np.float32)
    with pytest.raises(TypeError, match="q: expected a numpy.ndarray"):
        self_plan.forward(x.tolist(), x, x)


def test_forward_wrong_shape(self_plan):
    x = np.ones(self_plan.q_shape, np.float32)
    with pytest.raises(ValueError, match=r"v: expected shape \(1, 4, 2, 8\)"):
        self_plan.forward(x, x, np.ones((1, 4, 2, 9), np.float32))
    with pytest.raises(ValueError, match="lse: expected shape"):
        self_plan.forward(x, x, x, lse=np.ones((1, 4, 2), np.float32))


def test_forward_non_contiguous(self_plan):
    x = np.ones(self_plan.q_shape, np.float32)
    y = np.ones((1, 2, 4, 8), np.float32).transpose(0, 2, 1, 3)
    with pytest.raises(ValueError, match="q: must be C-contiguous"):
        self_plan.forward(y, x, x)


def test_forward_output_problems(self_plan):
    x = np.ones(self_plan.q_shape, np.float32)
    with pytest.raises(ValueError, match="out: must not overlap q"):
        self_plan.forward(x, x.copy(), x.copy(), out=x)
    ro = np.ones(self_plan.q_shape, np.float32)
    ro.setflags(write=False)
    with pytest.raises(ValueError, match="out: must be writable"):
        self_plan.forward(x, x, x, out=ro)
    # read-only inputs are fine
    self_plan.forward(ro, ro, ro)


def test_backward_argument_errors(self_plan):
    x = np.ones(self_plan.q_shape, np.float32)
    out, lse = self_plan.forward(x, x, x)
    with pytest.raises(TypeError, match="lse: expected dtype float32"):
        self_plan.backward(x, x, x, out, lse.astype(np.float64), x)
    dout = x.copy()
    with pytest.raises(ValueError, match="dq: must not overlap dout"):
        self_plan.backward(x, x, x, out, lse, dout, dq=dout)
    with pytest.raises(ValueError, match="dk: must not overlap dv"):
        g = np.empty(self_plan.kv_shape, np.float32)
        self_plan.backward(x, x, x, out, lse, x, dk=g, dv=g)


def test_bad_config_head_dim_zero():
    with ba.Context.self() as ctx:
        with pytest.raises(ba.BurstError) as info:
            ctx.plan(1, 4, 2, 0)
    assert info.value.status == ba.Status.INVALID_ARGUMENT
    assert info.value.function == "burst_plan_create"


@pytest.mark.parametrize("kwargs", [
    dict(batch=0), dict(num_heads_q=0), dict(seq_len_local=-1), dict(layout=7), dict(mask=5),
    dict(softmax_scale=float("nan")), dict(softmax_scale=float("inf")),
    dict(timeout_seconds=-1.0), dict(distribution=9), dict(pattern=-3),
], ids=lambda k: "-".join(f"{a}={b}" for a, b in k.items()))
def test_bad_config_invalid_argument(kwargs):
    args = dict(batch=1, seq_len_local=4, num_heads_q=2, head_dim=8)
    args.update(kwargs)
    with ba.Context.self() as ctx:
        with pytest.raises(ba.BurstError) as info:
            ctx.plan(**args)
    assert info.value.status == ba.Status.INVALID_ARGUMENT, info.value


@pytest.mark.parametrize("pattern", ["ring", "allgather", "ulysses", "auto"])
@pytest.mark.parametrize("world_size,distribution,causal,window,heads", [
    (2, "contiguous", False, (-1, -1), (4, 4)),
    (3, "zigzag", True, (-1, -1), (6, 3)),
    (4, "striped", True, (5, 0), (4, 2)),
    (4, "contiguous", False, (3, 7), (8, 4)),
])
def test_loopback_every_pattern(pattern, world_size, distribution, causal, window, heads):
    # Every pattern against the float64 reference, with the stats naming it and the
    # bytes sent over all ranks equal to those received.
    if pattern == "ulysses" and heads[1] % world_size:
        pytest.skip("ULYSSES needs num_heads_kv divisible by the world size (tested apart)")
    contexts = ba.Context.loopback(world_size)
    try:
        variant_run(contexts, distribution, 29, causal=causal, window=window,
                    heads_q=heads[0], heads_kv=heads[1], pattern=pattern)
    finally:
        for c in contexts:
            c.close()


def test_loopback_double_ring_4_as_2x2():
    contexts = ba.Context.loopback(4)
    try:
        stats = variant_run(contexts, "zigzag", 40, causal=True, intra_group_size=2)
        assert all(b["intra_group_size"] == 2 for _, b in stats)
    finally:
        for c in contexts:
            c.close()


def test_ulysses_needs_divisible_heads_on_every_rank():
    # Every pattern is implemented since 0.3; ULYSSES refuses num_heads_kv that the
    # world size does not divide, on every rank, naming the condition.
    contexts = ba.Context.loopback(2)
    try:
        results = run_ranks(contexts, lambda ctx: ctx.plan(1, 4, 3, 8, pattern="ulysses"))
        for _, exc in results:
            assert isinstance(exc, ba.UnsupportedError), exc
            assert "num_heads_kv (3) divisible by the number of ranks (2)" in exc.message, exc.message
    finally:
        for c in contexts:
            c.close()


@pytest.mark.parametrize("kwargs", [
    dict(num_heads_kv=1), dict(num_heads_kv=2), dict(distribution="zigzag"),
    dict(distribution="striped"), dict(window_left=3), dict(window_right=0),
    dict(window_left=0, window_right=0, mask="causal"), dict(cu_seqlens=[0, 2, 4]),
    dict(cu_seqlens=[0, 0, 4, 4]), dict(pattern="burst"),
    dict(distribution=ba.Distribution.ZIGZAG, mask="causal", num_heads_kv=1, window_left=2,
         cu_seqlens=np.array([0, 1, 4], np.int32)),
], ids=lambda k: "-".join(f"{a}={b}" for a, b in k.items()).replace(" ", ""))
def test_variant_configs_are_supported(kwargs):
    # Formerly UNSUPPORTED (0.1): GQA/MQA, zigzag/striped, windows and packing. With one
    # rank the distribution deals every token to rank 0, so seq_len_local = 4 is right.
    with ba.Context.self() as ctx:
        with ctx.plan(1, 4, 2, 8, **kwargs) as plan:
            q = np.ones(plan.q_shape, np.float32)
            kv = np.ones(plan.kv_shape, np.float32)
            out, lse = plan.forward(q, kv, kv)
            assert np.allclose(out, 1.0) and np.isfinite(lse).all()


def test_plan_argument_type_errors():
    with ba.Context.self() as ctx:
        with pytest.raises(ValueError, match="layout: unknown value 'bsdh'"):
            ctx.plan(1, 4, 2, 8, layout="bsdh")
        with pytest.raises(TypeError, match="batch: expected an int"):
            ctx.plan(1.0, 4, 2, 8)
        with pytest.raises(TypeError, match="mask: expected a Mask"):
            ctx.plan(1, 4, 2, 8, mask=ba.Layout.BSHD)
        with pytest.raises(ValueError, match="num_threads: .* out of range"):
            ctx.plan(1, 4, 2, 8, num_threads=2**31)
        # enum members, names and ints are all accepted
        ctx.plan(1, 4, 2, 8, layout=ba.LAYOUT_BHSD, mask="CAUSAL").close()
        ctx.plan(np.int64(1), 4, 2, 8, layout=1, mask=1).close()


# --------------------------------------------------------------------------- stats

def test_stats_keys_and_self_context_sends_nothing():
    with ba.Context.self() as ctx, ctx.plan(1, 16, 2, 8) as plan:
        before = plan.stats()
        assert tuple(before) == ba.STATS_KEYS
        assert before.pop("pattern") is ba.Pattern.BURST and before.pop("intra_group_size") == 1
        assert all(v == 0 for v in before.values()), before
        q, k, v, dout = ref.make_inputs(1, 1, 16, 2, 2, 8)
        out, lse = plan.forward(q, k, v)
        s = plan.stats()
        assert s["bytes_sent"] == 0 and s["bytes_received"] == 0 and s["messages_sent"] == 0
        assert isinstance(s["bytes_sent"], int) and isinstance(s["total_seconds"], float)
        assert s["steps_computed"] >= 1 and s["total_seconds"] >= 0
        plan.backward(q, k, v, out, lse, dout)
        assert plan.stats()["bytes_sent"] == 0


def test_stats_via_c_respects_struct_size():
    with ba.Context.self() as ctx, ctx.plan(1, 4, 1, 4) as plan:
        stats = _lib.Stats()
        stats.struct_size = 0
        assert _lib.lib.burst_plan_stats(plan._handle, ctypes.byref(stats)) == ba.Status.VERSION
        assert _lib.lib.burst_plan_stats(plan._handle, None) == ba.Status.INVALID_ARGUMENT
        for unknown in (ctypes.sizeof(_lib.Stats) - 8, 4097, 1 << 31):
            stats.struct_size = unknown
            assert _lib.lib.burst_plan_stats(plan._handle, ctypes.byref(stats)) == ba.Status.VERSION
        # Since 0.5: a newer header's larger struct (room for it really there) gets
        # this version's fields, zeros past them and struct_size = what was written.
        room = (ctypes.c_ubyte * 200)(*([0xAB] * 200))
        room[0:4] = list((150).to_bytes(4, "little"))
        assert _lib.lib.burst_plan_stats(plan._handle, ctypes.cast(room, ctypes.POINTER(_lib.Stats))) == ba.Status.OK
        assert int.from_bytes(bytes(room[:4]), "little") == ctypes.sizeof(_lib.Stats)
        assert bytes(room[112:150]) == bytes(38) and room[150] == 0xAB
        x = np.ones(plan.q_shape, np.float32)
        plan.forward(x, x, x)
        # The 0.1 struct (72 bytes, up to total_seconds) is still accepted, and the
        # library writes nothing past it: the tiles_* fields keep their sentinels.
        sentinel = 0xDEADBEEF
        old = _lib.Stats(struct_size=_lib.STATS_SIZE_V0_1, tiles_computed=sentinel,
                         tiles_skipped=sentinel)
        assert _lib.lib.burst_plan_stats(plan._handle, ctypes.byref(old)) == ba.Status.OK
        assert old.struct_size == 72 and old.steps_computed == 1
        assert (old.tiles_computed, old.tiles_skipped) == (sentinel, sentinel)
        new = _lib.new_stats()
        assert _lib.lib.burst_plan_stats(plan._handle, ctypes.byref(new)) == ba.Status.OK
        assert (new.steps_computed, new.tiles_computed, new.tiles_skipped) == (1, 1, 0)


# --------------------------------------------------------------------------- the reference itself

def test_reference_matches_finite_differences():
    rng = np.random.default_rng(0)
    b, n, h, d = 1, 5, 2, 3
    q, k, v, do = (rng.standard_normal((b, h, n, d)) for _ in range(4))
    for causal in (False, True):
        dq, dk, dv = ref.backward(q, k, v, do, causal, None, "bhsd")
        eps = 1e-6
        for x, g in ((q, dq), (k, dk), (v, dv)):
            num = np.zeros_like(x)
            for idx in np.ndindex(x.shape):
                orig = x[idx]
                x[idx] = orig + eps
                fp = np.sum(ref.forward(q, k, v, causal, None, "bhsd")[0] * do)
                x[idx] = orig - eps
                fm = np.sum(ref.forward(q, k, v, causal, None, "bhsd")[0] * do)
                x[idx] = orig
                num[idx] = (fp - fm) / (2 * eps)
            assert np.max(np.abs(num - g)) < 1e-6
    # layout round trip and GQA shapes
    out_b, _ = ref.forward(np.swapaxes(q, 1, 2), np.swapaxes(k, 1, 2), np.swapaxes(v, 1, 2))
    out_h, _ = ref.forward(q, k, v, layout="bhsd")
    assert np.allclose(np.swapaxes(out_b, 1, 2), out_h)


# --------------------------------------------------------------------------- variants (0.2)
# Every combination of world size x distribution x causal x window x GQA x packing,
# forward and backward against the float64 reference, counters checked exactly
# (variant_run). The remaining shape parameters (total length, batch, head_dim,
# layout, the contiguous split) are drawn per case from a generator seeded by the
# case's index, so the run is deterministic. The score modifiers (0.8) take turns by
# the case's index: none, sinks, softcap, both, so every variant meets each of them.

SWEEP_WORLDS = (1, 2, 3, 4)
SWEEP_WINDOWS = ((-1, -1), (5, 0), (3, 7))
SWEEP_HEADS = ((4, 4), (4, 2), (4, 1))
# Packings of the odd totals, with an empty and a one-token sequence.
SWEEP_PACKING = {37: [0, 5, 5, 20, 21, 37], 61: [0, 1, 30, 44, 44, 61]}


def _contiguous_split_with_empty_rank(rng, n_total, p):
    """A CONTIGUOUS split of n_total over p ranks in which one rank holds 0 tokens."""
    empty = int(rng.integers(p))
    cuts = np.sort(rng.integers(0, n_total + 1, size=p - 2)) if p > 2 else np.array([], int)
    sizes = np.diff(np.concatenate(([0], cuts, [n_total]))).tolist()
    return sizes[:empty] + [0] + sizes[empty:]


# The score modifiers of 0.8, by name: sinks (ref.make_sinks), softcap SOFTCAP. A cap
# of 2 bends scores of unit-scale inputs (|x| up to ~3) well into tanh's curve.
MODIFIERS = ("plain", "sinks", "softcap", "sinks+softcap")
SOFTCAP = 2.0


def _modifier_args(name: str, heads_q: int, seed: int) -> dict:
    """variant_run's softcap= and sinks= for a MODIFIERS name."""
    return dict(softcap=SOFTCAP if "softcap" in name else 0.0,
                sinks=ref.make_sinks(seed, heads_q) if "sinks" in name else None)


def _sweep_cases():
    cases = []
    product = itertools.product(SWEEP_WORLDS, ref.DISTRIBUTIONS, (False, True), SWEEP_WINDOWS,
                                SWEEP_HEADS, (False, True))
    for i, (p, dist, causal, window, (hq, hkv), varlen) in enumerate(product):
        rng = np.random.default_rng(10_000 + i)
        n_total = int(rng.choice([37, 61]))
        counts = None
        if dist == "contiguous" and p > 1:
            counts = _contiguous_split_with_empty_rank(rng, n_total, p)
        modifiers = MODIFIERS[i % len(MODIFIERS)]
        case = dict(world_size=p, distribution=dist, n_total=n_total, counts=counts,
                    causal=causal, window=window, heads_q=hq, heads_kv=hkv,
                    cu_seqlens=SWEEP_PACKING[n_total] if varlen else None,
                    batch=int(rng.integers(1, 3)), head_dim=int(rng.choice([8, 16])),
                    layout=str(rng.choice(["bshd", "bhsd"])), seed=i,
                    **_modifier_args(modifiers, hq, i))
        name = (f"P{p}-{dist}-{'causal' if causal else 'full'}-w{window[0]}.{window[1]}-"
                f"h{hq}.{hkv}-{'varlen' if varlen else 'dense'}-N{n_total}-{modifiers}")
        cases.append(pytest.param(case, id=name))
    return cases


@pytest.mark.parametrize("case", _sweep_cases())
def test_variant_sweep(case):
    case = dict(case)
    world = ba.Context.loopback(case.pop("world_size"))
    try:
        stats = variant_run(world, **case)
    finally:
        for c in world:
            c.close()
    if len(world) > 1 and case["counts"] is None:
        # The library deals the same positions as the independent implementation.
        for r in range(len(world)):
            assert np.array_equal(
                ba.shard_positions(case["distribution"], case["n_total"], len(world), r,
                                   case["cu_seqlens"]),
                ref.positions(case["distribution"], case["n_total"], len(world), r,
                              case["cu_seqlens"]))
    assert len(stats) == len(world)


@pytest.mark.parametrize("distribution,counts,causal,window,heads", [
    ("contiguous", [300, 130, 270], True, (-1, -1), (2, 1)),
    ("contiguous", [0, 290, 410], False, (150, 20), (2, 2)),
    ("striped", None, True, (40, 0), (2, 1)),
    ("zigzag", None, True, (-1, -1), (4, 2)),
], ids=["contiguous-causal", "contiguous-window", "striped-window", "zigzag-causal"])
def test_variant_multi_tile(distribution, counts, causal, window, heads):
    """Shards longer than one tile (256 queries x 128 keys): tiles_computed counts
    exactly the tiles with a visible pair, and masked tiles inside a computed step
    are skipped."""
    p = 3 if counts else 2
    n_total = sum(counts) if counts else 700
    world = ba.Context.loopback(p)
    try:
        variant_run(world, distribution, n_total, counts=counts, causal=causal, window=window,
                    cu_seqlens=[0, 333, 700] if distribution == "zigzag" else None,
                    batch=1, heads_q=heads[0], heads_kv=heads[1], head_dim=8, seed=3)
    finally:
        for c in world:
            c.close()


@pytest.mark.parametrize("distribution", ref.DISTRIBUTIONS)
@pytest.mark.parametrize("n_total,cu_seqlens", [(0, None), (1, None), (3, [0, 1, 1, 3]),
                                                (7, None), (7, [0, 7])])
def test_variant_fewer_tokens_than_ranks(distribution, n_total, cu_seqlens):
    """N < 2P: zigzag and striped leave ranks empty (N = 0: every rank); forward and
    backward still agree with the reference and move exactly the scheduled bytes."""
    world = ba.Context.loopback(4)
    try:
        variant_run(world, distribution, n_total, causal=True, window=(2, 0),
                    cu_seqlens=cu_seqlens, batch=1, heads_q=2, heads_kv=1, head_dim=8,
                    seed=n_total)
    finally:
        for c in world:
            c.close()


def test_variant_error_does_not_grow_with_world():
    """DESIGN §3 for a variant: zigzag + causal + window + GQA + packing at P = 4 vs
    P = 1 (same global problem)."""
    n, cu, hq, hkv, d = 75, [0, 20, 20, 51, 75], 4, 2, 16
    q, k, v, dout = ref.make_inputs(77, 1, n, hq, hkv, d)
    masks = dict(window_left=9, window_right=2, cu_seqlens=cu)
    refs = ref.forward(q, k, v, True, None, "bshd", **masks)[:1] + \
        ref.backward(q, k, v, dout, True, None, "bshd", **masks)
    scales = (float(np.max(np.abs(refs[0]))),) + ref.grad_scales(*refs[1:])

    def errors(world):
        p = len(world)

        def rank_fn(ctx):
            xs = [ba.shard(x, "zigzag", p, ctx.rank, 1, cu) for x in (q, k, v, dout)]
            with ctx.plan(1, xs[0].shape[1], hq, d, num_heads_kv=hkv, mask="causal",
                          distribution="zigzag", window_left=9, window_right=2,
                          cu_seqlens=cu, timeout_seconds=CALL_TIMEOUT) as plan:
                out, lse = plan.forward(*xs[:3])
                return (out,) + plan.backward(*xs[:3], out, lse, xs[3])

        per_rank = results_or_raise(run_ranks(world, rank_fn))
        full = [np.zeros_like(w, dtype=np.float32) for w in refs]
        for r, tensors in enumerate(per_rank):
            for f, t in zip(full, tensors):
                ba.unshard(t, f, "zigzag", p, r, 1, cu)
        return [float(np.max(np.abs(g - w))) / s for g, w, s in zip(full, refs, scales)]

    single = errors([ba.Context.self()])
    world = ba.Context.loopback(4)
    try:
        multi = errors(world)
    finally:
        for c in world:
            c.close()
    for name, e1, ep in zip(("out", "dq", "dk", "dv"), single, multi):
        assert e1 <= (ref.OUT_TOL if name == "out" else ref.GRAD_TOL), (name, e1)
        assert ep <= 2 * e1 + 1e-6, f"{name}: error at P=4 {ep:.3g} vs P=1 {e1:.3g}"


# --------------------------------------------------------------------------- shard helpers

def _random_packing(rng, n_total):
    """cu_seqlens for n_total tokens: 1..5 sequences, empty ones allowed."""
    cuts = np.sort(rng.integers(0, n_total + 1, size=int(rng.integers(0, 5))))
    return [0] + cuts.tolist() + [n_total]


def _shard_grid():
    """(n_total, world_size, cu_seqlens or None) for N in 0..40, P in 1..5, unpacked
    and packed (a deterministic random packing)."""
    rng = np.random.default_rng(2403)
    for n_total in range(41):
        for p in range(1, 6):
            yield n_total, p, None
            yield n_total, p, _random_packing(rng, n_total)


@pytest.mark.parametrize("distribution", ref.DISTRIBUTIONS)
def test_shard_positions_match_reference(distribution):
    """burst_shard_positions against the header's rules in numpy: every rank's
    positions, and together a partition of 0..N-1; shard_counts agrees."""
    for n_total, p, cu in _shard_grid():
        got = [ba.shard_positions(distribution, n_total, p, r, cu) for r in range(p)]
        want = ref.all_positions(distribution, n_total, p, cu)
        where = (distribution, n_total, p, cu)
        for r in range(p):
            assert got[r].dtype == np.int64 and got[r].ndim == 1, where
            assert np.array_equal(got[r], want[r]), (where, r, got[r], want[r])
        assert np.array_equal(np.sort(np.concatenate(got)), np.arange(n_total)), where
        assert ba.shard_counts(distribution, n_total, p, cu) == [len(x) for x in want], where


def test_shard_counts_follow_the_header():
    # A few hand-checked cases of the rules (header comment above BURST_DISTRIBUTION_*).
    assert ba.shard_counts("contiguous", 11, 3) == [4, 4, 3]
    assert ba.shard_counts("striped", 11, 3) == [4, 4, 3]
    # zigzag 11 over 2P = 6 chunks: sizes 2,2,2,2,2,1 -> rank r has chunks r, 5-r
    assert ba.shard_counts("zigzag", 11, 3) == [3, 4, 4]
    assert ba.shard_positions("zigzag", 11, 3, 0).tolist() == [0, 1, 10]
    # packed zigzag: every sequence separately ([0,5) -> chunks 2,1,1,1; [5,13) -> 2 each)
    assert ba.shard_positions("zigzag", 13, 2, 0, [0, 5, 5, 13]).tolist() == [0, 1, 4, 5, 6, 11, 12]
    assert ba.shard_positions("zigzag", 13, 2, 1, [0, 5, 5, 13]).tolist() == [2, 3, 7, 8, 9, 10]
    # packing does not change striped or contiguous
    assert ba.shard_counts("striped", 13, 2, [0, 5, 13]) == ba.shard_counts("striped", 13, 2)
    assert ba.shard_counts("contiguous", 13, 4, [0, 5, 13]) == [4, 3, 3, 3]
    assert ba.shard_counts("zigzag", 0, 4) == [0, 0, 0, 0]


@pytest.mark.parametrize("packed", [False, True], ids=["dense", "packed"])
@pytest.mark.parametrize("distribution", ref.DISTRIBUTIONS)
def test_shard_unshard_round_trip(distribution, packed):
    """shard gives exactly the rows at the reference positions (BSHD, BHSD and lse
    shapes, float32 and int64), and unsharding every rank's shard rebuilds the array
    bit for bit; each unshard touches only its own rows."""
    rng = np.random.default_rng(7)
    for n_total, p, cu in _shard_grid():
        if (cu is not None) != packed:
            continue
        pos = ref.all_positions(distribution, n_total, p, cu)
        for shape, axis, dtype in (((2, n_total, 3, 4), 1, np.float32),
                                   ((2, 3, n_total, 4), 2, np.float32),
                                   ((2, 3, n_total), -1, np.float32),
                                   ((n_total,), 0, np.int64)):
            full = rng.standard_normal(shape).astype(dtype) if dtype == np.float32 else \
                rng.integers(-99, 99, size=shape).astype(dtype)
            rebuilt = np.full_like(full, -7)
            for r in range(p):
                local = ba.shard(full, distribution, p, r, axis, cu)
                assert local.flags.c_contiguous and local.dtype == full.dtype
                assert np.array_equal(local, ref.take(full, pos[r], axis % full.ndim)), \
                    (distribution, n_total, p, cu, shape, r)
                before = rebuilt.copy()
                assert ba.unshard(local, rebuilt, distribution, p, r, axis, cu) is rebuilt
                untouched = np.ones(full.shape[axis], bool)
                untouched[pos[r]] = False
                assert np.array_equal(np.compress(untouched, rebuilt, axis),
                                      np.compress(untouched, before, axis))
            assert np.array_equal(rebuilt, full), (distribution, n_total, p, cu, shape)


def test_shard_non_contiguous_and_accepted_spellings():
    rng = np.random.default_rng(1)
    full = rng.standard_normal((3, 4, 29, 2)).astype(np.float32)
    view = np.swapaxes(full, 1, 2)                       # [3, 29, 4, 2], not C-contiguous
    assert not view.flags.c_contiguous
    pos = ref.positions("zigzag", 29, 3, 1)
    want = np.ascontiguousarray(view[:, pos])
    for spelling in ("zigzag", "ZigZag", ba.Distribution.ZIGZAG, ba.DISTRIBUTION_ZIGZAG, 1,
                     np.int32(1)):
        got = ba.shard(view, spelling, 3, 1, 1)
        assert got.flags.c_contiguous and np.array_equal(got, want)
        assert np.array_equal(ba.shard_positions(spelling, 29, 3, 1), pos)
    # unshard into a non-contiguous full array, and from a non-contiguous local
    target = np.zeros((3, 4, 29, 2), np.float32)
    ba.unshard(want, np.swapaxes(target, 1, 2), "zigzag", 3, 1, 1)
    assert np.array_equal(np.swapaxes(target, 1, 2)[:, pos], want)
    local_view = np.swapaxes(np.ascontiguousarray(np.swapaxes(want, 1, 2)), 1, 2)
    assert not local_view.flags.c_contiguous
    out = np.zeros_like(view, order="C")
    ba.unshard(local_view, out, "zigzag", 3, 1, 1)
    assert np.array_equal(out[:, pos], want)
    # local overlapping full is read before full is written
    full2 = np.arange(10, dtype=np.float64)
    ba.unshard(full2[:5], full2, "striped", 2, 1, 0)  # rows 1,3,5,7,9 <- 0..4
    assert full2.tolist() == [0, 0, 2, 1, 4, 2, 6, 3, 8, 4]
    # zero-sized shards and arrays
    assert ba.shard(np.zeros((2, 0, 3), np.float32), "striped", 4, 3, 1).shape == (2, 0, 3)
    assert ba.shard(np.zeros((0, 5, 3), np.float32), "zigzag", 2, 0, 1).shape == (0, 3, 3)
    assert ba.shard(np.zeros((2, 1, 3), np.float32), "contiguous", 4, 3, 1).shape == (2, 0, 3)


def test_shard_argument_errors():
    x = np.zeros((2, 10, 3), np.float32)
    with pytest.raises(ValueError, match="distribution: unknown value 'zig'"):
        ba.shard(x, "zig", 2, 0, 1)
    with pytest.raises(TypeError, match="distribution: expected a Distribution"):
        ba.shard_positions(1.0, 10, 2, 0)
    with pytest.raises(TypeError, match="distribution: expected a Distribution"):
        ba.shard(x, ba.Mask.CAUSAL, 2, 0, 1)
    with pytest.raises(ValueError, match="rank: 2 is not below world_size 2"):
        ba.shard(x, "striped", 2, 2, 1)
    with pytest.raises(ValueError, match="rank: -1 is out of range"):
        ba.shard_positions("striped", 10, 2, -1)
    with pytest.raises(ValueError, match="world_size: 0 is out of range"):
        ba.shard_positions("striped", 10, 0, 0)
    with pytest.raises(TypeError, match="world_size: expected an int"):
        ba.shard_counts("striped", 10, 2.0)
    with pytest.raises(ValueError, match="total_tokens: -1 is out of range"):
        ba.shard_positions("striped", -1, 2, 0)
    with pytest.raises(TypeError, match="total_tokens: expected an int"):
        ba.shard_positions("striped", True, 2, 0)
    with pytest.raises(ValueError, match="seq_axis: 3 is out of range"):
        ba.shard(x, "striped", 2, 0, 3)
    with pytest.raises(TypeError, match="seq_axis: expected an int"):
        ba.shard(x, "striped", 2, 0, None)
    with pytest.raises(TypeError, match="full: expected a numpy.ndarray"):
        ba.shard(x.tolist(), "striped", 2, 0, 1)
    with pytest.raises(ValueError, match="full: needs at least one dimension"):
        ba.shard(np.array(1.0, np.float32), "striped", 2, 0, 0)
    with pytest.raises(TypeError, match="full: arrays of Python objects"):
        ba.shard(np.empty(4, object), "striped", 2, 0, 0)
    for cu, match in (([1, 10], "cu_seqlens: must start at 0"),
                      ([0, 6, 4, 10], r"cu_seqlens: must be non-decreasing, but cu_seqlens\[2\]"),
                      ([0, 9], "cu_seqlens: must end at the total token count 10"),
                      ([0], "cu_seqlens: needs num_sequences"),
                      ([[0, 10]], "cu_seqlens: expected a 1-D sequence")):
        with pytest.raises(ValueError, match=match):
            ba.shard(x, "zigzag", 2, 0, 1, cu)
    with pytest.raises(TypeError, match="cu_seqlens: expected integers"):
        ba.shard_positions("zigzag", 10, 2, 0, [0.0, 10.0])
    # unshard: local must fit full
    local = ba.shard(x, "striped", 3, 0, 1)
    with pytest.raises(ValueError, match=r"local: expected shape \(2, 4, 3\)"):
        ba.unshard(local[:, :3], x, "striped", 3, 0, 1)
    with pytest.raises(TypeError, match="local: expected dtype float32"):
        ba.unshard(local.astype(np.float64), x, "striped", 3, 0, 1)
    with pytest.raises(TypeError, match="local: expected a numpy.ndarray"):
        ba.unshard(local.tolist(), x, "striped", 3, 0, 1)
    ro = x.copy()
    ro.setflags(write=False)
    with pytest.raises(ValueError, match="full: must be writable"):
        ba.unshard(local, ro, "striped", 3, 0, 1)
    # an int out of the enum's range reaches the library, like Context.plan's fields
    for call in (lambda: ba.shard_positions(7, 10, 2, 0), lambda: ba.shard(x, 7, 2, 0, 1),
                 lambda: ba.unshard(local, x, -1, 3, 0, 1)):
        with pytest.raises(ba.BurstError) as info:
            call()
        assert info.value.status == ba.Status.INVALID_ARGUMENT
        assert "distribution" in info.value.message
        assert info.value.function == "burst_shard_positions"


def test_shard_helpers_via_c():
    """The three C functions called directly: the count-only query, a capacity below
    the count, bad packing (the Python wrapper checks these first), burst_shard and
    burst_unshard, and the NULL pointers the library must reject."""
    lib = _lib.lib
    count = ctypes.c_int64(-1)
    assert lib.burst_shard_positions(2, 11, None, 0, 3, 1, None, 0, ctypes.byref(count)) == 0
    assert count.value == 4
    small = np.zeros(3, np.int64)
    assert lib.burst_shard_positions(2, 11, None, 0, 3, 1, _lib.int64_ptr(small), 3,
                                     ctypes.byref(count)) == ba.Status.INVALID_ARGUMENT
    assert "capacity" in ba.last_error()
    room = np.full(6, -1, np.int64)
    assert lib.burst_shard_positions(2, 11, None, 0, 3, 1, _lib.int64_ptr(room), 6,
                                     ctypes.byref(count)) == 0
    assert count.value == 4 and room.tolist() == [1, 4, 7, 10, -1, -1]
    assert lib.burst_shard_positions(2, 11, None, 0, 3, 1, None, 0, None) == ba.Status.INVALID_ARGUMENT
    for cu, field in (([0, 6, 4, 11], "cu_seqlens"), ([2, 11], "cu_seqlens"),
                      ([0, 10], "cu_seqlens"), ([0, 12], "cu_seqlens")):
        arr = np.array(cu, np.int64)
        for dist in range(3):
            status = lib.burst_shard_positions(dist, 11, _lib.int64_ptr(arr), len(arr) - 1, 2, 0,
                                               None, 0, ctypes.byref(count))
            assert status == ba.Status.INVALID_ARGUMENT, (cu, dist)
            assert field in ba.last_error(), ba.last_error()
    arr = np.array([0, 11], np.int64)
    assert lib.burst_shard_positions(1, 11, _lib.int64_ptr(arr), 0, 2, 0, None, 0,
                                     ctypes.byref(count)) == ba.Status.INVALID_ARGUMENT
    assert lib.burst_shard_positions(1, 11, None, 1, 2, 0, None, 0,
                                     ctypes.byref(count)) == ba.Status.INVALID_ARGUMENT
    full = np.arange(2 * 11 * 3, dtype=np.float32).reshape(2, 11, 3)
    local = np.zeros((2, 4, 3), np.float32)
    assert lib.burst_shard(2, 11, None, 0, 3, 1, 2, 12, _lib.void_ptr(full), _lib.void_ptr(local)) == 0
    assert np.array_equal(local, full[:, 1::3])
    back = np.zeros_like(full)
    assert lib.burst_unshard(2, 11, None, 0, 3, 1, 2, 12, _lib.void_ptr(local), _lib.void_ptr(back)) == 0
    assert np.array_equal(back[:, 1::3], local) and not back[:, 0::3].any()
    for fn in (lib.burst_shard, lib.burst_unshard):
        assert fn(2, 11, None, 0, 3, 1, 2, 12, None, _lib.void_ptr(local)) == ba.Status.INVALID_ARGUMENT
        assert fn(2, 11, None, 0, 3, 1, 2, 12, _lib.void_ptr(full), None) == ba.Status.INVALID_ARGUMENT
        assert fn(2, 11, None, 0, 3, 1, -1, 12, _lib.void_ptr(full), _lib.void_ptr(local)) == \
            ba.Status.INVALID_ARGUMENT
        assert fn(2, 11, None, 0, 3, 3, 2, 12, _lib.void_ptr(full), _lib.void_ptr(local)) == \
            ba.Status.INVALID_ARGUMENT


# --------------------------------------------------------------------------- variant config errors

def _plan_everywhere(world_size, kwargs_of_rank):
    """Create a plan on every rank of a loopback group with per-rank keyword arguments;
    returns the exception of each rank (None where the plan was created)."""
    world = ba.Context.loopback(world_size)

    def rank_fn(ctx):
        ctx.plan(**kwargs_of_rank(ctx.rank), timeout_seconds=CALL_TIMEOUT).close()

    try:
        results = run_ranks(world, rank_fn)
    finally:
        for c in world:
            c.close()
    return [exc for _, exc in results]


def _assert_all_fail(errors, status, *words):
    for r, exc in enumerate(errors):
        assert isinstance(exc, ba.BurstError), (r, exc)
        assert exc.status == status, (r, exc)
        assert exc.function == "burst_plan_create"
        for word in words:
            assert word in exc.message, (r, word, exc.message)


BASE = dict(batch=1, num_heads_q=4, head_dim=8)


@pytest.mark.parametrize("world_size", [1, 2, 3])
@pytest.mark.parametrize("kwargs,field", [
    (dict(num_heads_kv=3), "num_heads_kv"), (dict(num_heads_kv=8), "num_heads_kv"),
    (dict(num_heads_kv=0), "num_heads_kv"), (dict(window_left=-2), "window_left"),
    (dict(window_right=-5), "window_right"), (dict(window_left=-2, mask="causal"), "window_left"),
], ids=["hq4-hkv3", "hq4-hkv8", "hkv0", "window_left-2", "window_right-5", "window_left-2-causal"])
def test_bad_variant_config_invalid_everywhere(world_size, kwargs, field):
    errors = _plan_everywhere(world_size, lambda r: dict(BASE, seq_len_local=3, **kwargs))
    _assert_all_fail(errors, ba.Status.INVALID_ARGUMENT, field)


def test_bad_window_on_one_rank_fails_everywhere():
    # Only rank 1 has a bad window_left: every rank fails, and the others name rank 1.
    errors = _plan_everywhere(3, lambda r: dict(BASE, seq_len_local=3,
                                                window_left=-2 if r == 1 else 4))
    _assert_all_fail(errors, ba.Status.INVALID_ARGUMENT, "window_left")
    assert "rank 1" in errors[0].message and "rank 1" in errors[2].message


@pytest.mark.parametrize("distribution", ref.DISTRIBUTIONS)
@pytest.mark.parametrize("cu_seqlens,words", [
    ([0, 6, 4, 11], ("cu_seqlens", "decrease")),
    ([1, 4, 11], ("cu_seqlens[0]",)),
    ([0, 4, 10], ("cu_seqlens", "11")),     # ends before the global length 11
    ([0, 4, 12], ("cu_seqlens", "11")),     # ends after it
    ([0], ("cu_seqlens", "num_sequences")),
], ids=["decreasing", "not-from-0", "short", "long", "no-sequence"])
def test_bad_cu_seqlens_invalid_everywhere(distribution, cu_seqlens, words):
    # N = 11 is only known collectively (sum of the ranks' seq_len_local).
    n_local = {"contiguous": [5, 6, 0]}.get(distribution) or ba.shard_counts(distribution, 11, 3)
    errors = _plan_everywhere(3, lambda r: dict(BASE, seq_len_local=n_local[r],
                                                distribution=distribution, cu_seqlens=cu_seqlens))
    _assert_all_fail(errors, ba.Status.INVALID_ARGUMENT, *words)


@pytest.mark.parametrize("per_rank", [
    [[0, 4, 11], [0, 5, 11], [0, 4, 11]],
    [[0, 11], [0, 4, 11], [0, 11]],
    [None, [0, 4, 11], None],
    [[0, 4, 11], [0, 4, 11], None],
], ids=["content", "length", "null-vs-set", "set-vs-null"])
def test_cu_seqlens_disagreeing_is_mismatch_everywhere(per_rank):
    errors = _plan_everywhere(3, lambda r: dict(BASE, seq_len_local=[5, 6, 0][r],
                                                cu_seqlens=per_rank[r]))
    _assert_all_fail(errors, ba.Status.MISMATCH, "cu_seqlens")


@pytest.mark.parametrize("distribution,world_size,n_local,cu_seqlens", [
    ("zigzag", 2, [6, 5], None),             # zigzag of 11 over 2 deals [5, 6]
    ("zigzag", 3, [4, 4, 3], None),          # [3, 4, 4] expected: rank 0 is named
    ("zigzag", 3, [3, 5, 3], None),          # [3, 4, 4]: rank 1
    ("zigzag", 2, [5, 6], [0, 1, 11]),       # packed: [6, 5] expected
    ("zigzag", 3, [11, 0, 0], None),         # a contiguous split is no zigzag
    ("striped", 3, [4, 3, 4], None),         # [4, 4, 3] expected: rank 1
], ids=["zigzag-P2", "zigzag-P3-rank0", "zigzag-P3-rank1", "zigzag-packed",
        "zigzag-contiguous-split", "striped-P3"])
def test_wrong_seq_len_local_invalid_everywhere(distribution, world_size, n_local, cu_seqlens):
    errors = _plan_everywhere(world_size, lambda r: dict(BASE, seq_len_local=n_local[r],
                                                         distribution=distribution,
                                                         cu_seqlens=cu_seqlens))
    expected = ba.shard_counts(distribution, sum(n_local), world_size, cu_seqlens)
    bad_rank = next(r for r in range(world_size) if expected[r] != n_local[r])
    _assert_all_fail(errors, ba.Status.INVALID_ARGUMENT, "seq_len_local", f"rank {bad_rank}",
                     str(expected[bad_rank]))


def test_right_seq_len_local_from_shard_counts_is_accepted():
    for distribution, cu in (("zigzag", None), ("zigzag", [0, 1, 11]), ("striped", [0, 1, 11])):
        n_local = ba.shard_counts(distribution, 11, 3, cu)
        errors = _plan_everywhere(3, lambda r: dict(BASE, seq_len_local=n_local[r],
                                                    distribution=distribution, cu_seqlens=cu))
        assert errors == [None, None, None], (distribution, cu, errors)


# --------------------------------------------------------------------------- the reference's masks

def test_reference_visibility_is_the_header_rule():
    n, cu = 13, [0, 4, 4, 9, 13]
    for causal, wl, wr, packed in itertools.product((False, True), (-1, 0, 2), (-1, 0, 3),
                                                    (False, True)):
        got = ref.visibility(n, causal, wl, wr, cu if packed else None)
        seq = [next(s for s in range(len(cu) - 1) if cu[s] <= t < cu[s + 1]) for t in range(n)]
        for i in range(n):
            for j in range(n):
                want = ((wl == -1 or i - wl <= j) and (wr == -1 or j <= i + wr)
                        and (not causal or j <= i) and (not packed or seq[i] == seq[j]))
                assert got[i, j] == want, (causal, wl, wr, packed, i, j)
            assert got[i, i]  # with these masks every query sees its own key


def test_reference_packing_is_attention_per_sequence():
    """Packed attention (window, causal, GQA) = each sequence on its own, concatenated."""
    cu = [0, 3, 3, 10, 16]
    q, k, v, dout = ref.make_inputs(4, 2, 16, 4, 2, 5)
    args = (True, None, "bshd")
    out, lse = ref.forward(q, k, v, *args, window_left=2, window_right=1, cu_seqlens=cu)
    grads = ref.backward(q, k, v, dout, *args, window_left=2, window_right=1, cu_seqlens=cu)
    for a, b in zip(cu[:-1], cu[1:]):
        if a == b:
            continue
        part = [x[:, a:b] for x in (q, k, v, dout)]
        o, l = ref.forward(*part[:3], *args, window_left=2, window_right=1)
        g = ref.backward(*part, *args, window_left=2, window_right=1)
        assert np.allclose(out[:, a:b], o, atol=1e-12) and np.allclose(lse[:, :, a:b], l, atol=1e-12)
        for x, y in zip(grads, g):
            assert np.allclose(x[:, a:b], y, atol=1e-12)
    # GQA = MHA with repeated kv heads (dK, dV summed over the group)
    rep = [np.repeat(x, 2, axis=2) for x in (k, v)]
    out_mha, _ = ref.forward(q, *rep, *args, window_left=2, window_right=1, cu_seqlens=cu)
    assert np.allclose(out, out_mha, atol=1e-12)
    g_mha = ref.backward(q, *rep, dout, *args, window_left=2, window_right=1, cu_seqlens=cu)
    assert np.allclose(grads[0], g_mha[0], atol=1e-12)
    for x, y in zip(grads[1:], g_mha[1:]):
        assert np.allclose(x, y.reshape(2, 16, 2, 2, 5).sum(axis=3), atol=1e-12)


def test_reference_masked_gradients_match_finite_differences():
    rng = np.random.default_rng(3)
    b, n, hq, hkv, d = 1, 7, 2, 1, 3
    q = rng.standard_normal((b, hq, n, d))
    k, v = (rng.standard_normal((b, hkv, n, d)) for _ in range(2))
    do = rng.standard_normal((b, hq, n, d))
    masks = dict(window_left=2, window_right=1, cu_seqlens=[0, 4, 7])
    grads = ref.backward(q, k, v, do, True, None, "bhsd", **masks)
    eps = 1e-6
    for x, g in zip((q, k, v), grads):
        num = np.zeros_like(x)
        for idx in np.ndindex(x.shape):
            orig = x[idx]
            x[idx] = orig + eps
            fp = np.sum(ref.forward(q, k, v, True, None, "bhsd", **masks)[0] * do)
            x[idx] = orig - eps
            fm = np.sum(ref.forward(q, k, v, True, None, "bhsd", **masks)[0] * do)
            x[idx] = orig
            num[idx] = (fp - fm) / (2 * eps)
        assert np.max(np.abs(num - g)) < 1e-6


def test_reference_traffic_rules():
    """The schedule simulation on cases worked by hand (P = 3, Z = 1, d = 1)."""
    counts = [2, 0, 3]
    # rank 0 sees only itself; rank 2 sees 0 and itself
    needs = [[True, False, False], [False, False, False], [True, False, True]]
    fwd = ref.burst_traffic(counts, needs, 1, 1, 1, "forward")
    # t=0: rank 0 holds its block; rank 1 or 2 need it -> 2 needs it: send 2*2*4 = 16.
    #      rank 2 holds its block; ranks 0, 1 need it? no -> nothing.
    # t=1: rank 1 holds block 0; rank 2 needs it -> send 16. rank 0 holds block 2: 1 needs? no.
    assert fwd["bytes_sent"] == [16, 16, 0] and fwd["messages_sent"] == [1, 1, 0]
    assert fwd["bytes_received"] == [0, 16, 16]
    bwd = ref.burst_traffic(counts, needs, 1, 1, 1, "backward")
    # owner 0: needs[0][1], needs[0][2] false -> last 0, nothing travels.
    # owner 2: needs[2][0] (t=1) -> last 1: rank 2 sends bundle 3*4*4=48 + dQ 12 to 0,
    #          then rank 0 sends dQ 12 home to 2.
    assert bwd["bytes_sent"] == [12, 0, 60] and bwd["messages_sent"] == [1, 0, 2]
    assert bwd["bytes_received"] == [60, 0, 12]
    assert ref.burst_traffic([5], [[True]], 2, 2, 4, "forward")["bytes_sent"] == [0]


# --------------------------------------------------------------------------- storage types

@pytest.mark.parametrize("dtype", ["bf16", "f16"])
@pytest.mark.parametrize("world,pattern,causal,heads", [(1, "burst", True, (2, 2)), (3, "burst", True, (4, 2)),
                                                        (2, "ring", False, (2, 1)), (3, "allgather", True, (3, 3)),
                                                        (2, "ulysses", False, (4, 2))])
def test_half_storage_loopback(dtype, world, pattern, causal, heads):
    """numpy API with dtype="bf16" (uint16 bfloat16 bits) / "f16" (float16), compute="exact"
    (the default for bf16 is "fast"): every element
    within the storage contract of the float64 reference from the same rounded inputs,
    outputs in the storage dtype, and exact byte halving of the forward (plan.stats())
    against the same plan in f32 (ring patterns and ALLGATHER)."""
    hq, hkv = heads
    counts = [13, 8, 11][:world]
    n_total = sum(counts)
    q, k, v, dout = (ref.from_storage(ref.to_storage(x, dtype), dtype)
                     for x in ref.make_inputs(3, 1, n_total, hq, hkv, 8))
    out_ref, lse_ref = ref.forward(q, k, v, causal=causal)
    contexts = ba.Context.loopback(world)

    def fn(ctx):
        r = ctx.rank
        local = [ref.shard(x, counts, r) for x in (q, k, v, dout)]
        stats = {}
        results = {}
        for t in ("f32", dtype):
            arrays = [np.ascontiguousarray(x, np.float32) if t == "f32" else ref.to_storage(x, t) for x in local]
            with ctx.plan(1, counts[r], hq, 8, num_heads_kv=hkv, mask="causal" if causal else "none",
                          pattern=pattern, dtype=t, compute="exact", timeout_seconds=CALL_TIMEOUT) as plan:
                out, lse = plan.forward(*arrays[:3])
                assert out.dtype == plan.storage_dtype and lse.dtype == np.float32
                fwd = plan.stats()
                results[t] = (out, lse)
                stats[t] = fwd
        return results, stats, local

    per_rank = results_or_raise(run_ranks(contexts, fn))
    # The backward's reference uses the rounded out the library returned (gathered).
    outs = [res[dtype][0] for res, _, _ in per_rank]
    given = np.concatenate([ref.from_storage(o, dtype) for o in outs], axis=1)
    dq_ref, dk_ref, dv_ref = ref.backward(q, k, v, dout, causal=causal, given_out=given)

    def bwd(ctx):
        r = ctx.rank
        local = [ref.to_storage(ref.shard(x, counts, r), dtype) for x in (q, k, v, dout)]
        with ctx.plan(1, counts[r], hq, 8, num_heads_kv=hkv, mask="causal" if causal else "none",
                      pattern=pattern, dtype=dtype, compute="exact", timeout_seconds=CALL_TIMEOUT) as plan:
            out, lse = plan.forward(*local[:3])
            grads = plan.backward(local[0], local[1], local[2], out, lse, local[3])
            assert all(g.dtype == plan.storage_dtype for g in grads)
            return grads

    grads = results_or_raise(run_ranks(contexts, bwd))
    for c in contexts:
        c.close()
    for r, ((res, stats, _), (dq, dk, dv)) in enumerate(zip(per_rank, grads)):
        out, lse = res[dtype]
        assert ref.half_excess(out, ref.shard(out_ref, counts, r), dtype, 1e-5) <= 1
        assert ref.lse_error(lse, ref.shard_lse(lse_ref, counts, r)) <= 1e-4
        for got, want in ((dq, dq_ref), (dk, dk_ref), (dv, dv_ref)):
            assert ref.half_excess(got, ref.shard(want, counts, r), dtype, 1e-4, floor=1e-3) <= 1
        if pattern != "ulysses":
            assert 2 * stats[dtype]["bytes_sent"] == stats["f32"]["bytes_sent"]
            assert 2 * stats[dtype]["bytes_received"] == stats["f32"]["bytes_received"]
    if world > 1:  # something travelled (a causal last rank may send nothing)
        assert sum(stats[dtype]["bytes_sent"] for _, stats, _ in per_rank) > 0


def test_half_storage_dtype_checks():
    with ba.Context.self() as ctx:
        for spelling in ("bf16", "BF16", ba.DType.BF16, 1):
            with ctx.plan(1, 4, 1, 8, dtype=spelling) as plan:
                assert plan.dtype == ba.DType.BF16
                assert plan.storage_dtype in (np.dtype(np.uint16),) + (
                    (ba._plan.BFLOAT16,) if ba._plan.BFLOAT16 is not None else ())
        with ctx.plan(1, 4, 1, 8, dtype="f16") as plan:
            assert plan.storage_dtype == np.float16
            x = np.ones((1, 4, 1, 8), np.float32)
            with pytest.raises(TypeError, match="q: expected dtype float16, got float32"):
                plan.forward(x, x.astype(np.float16), x.astype(np.float16))
            out, lse = plan.forward(*(x.astype(np.float16),) * 3)
            assert out.dtype == np.float16 and np.all(out == 1)
        with pytest.raises(ba.BurstError, match="BURST_DTYPE_BF16 = 1"):
            ctx.plan(1, 4, 1, 8, dtype=3)
    assert (ba.DTYPE_F32, ba.DTYPE_BF16, ba.DTYPE_F16) == (0, 1, 2)


def test_half_storage_ml_dtypes_bfloat16():
    ml_dtypes = pytest.importorskip("ml_dtypes")
    with ba.Context.self() as ctx, ctx.plan(1, 6, 2, 8, dtype="bf16", mask="causal") as plan:
        assert plan.storage_dtype == np.dtype(ml_dtypes.bfloat16)
        rng = np.random.default_rng(1)
        q, k, v = (rng.standard_normal((1, 6, 2, 8)).astype(ml_dtypes.bfloat16) for _ in range(3))
        out, _ = plan.forward(q, k, v)
        bits, _ = plan.forward(q.view(np.uint16), k.view(np.uint16), v.view(np.uint16))
        assert out.dtype == ml_dtypes.bfloat16 and np.array_equal(out.view(np.uint16), bits.view(np.uint16))


# --------------------------------------------------------------------------- compute (0.7)

def test_compute_spellings():
    """compute=None / "default" / "exact" / "fast" (any case), the Compute members and ints
    become burst_attention_config.compute (BURST_COMPUTE_*), readable as plan.compute."""
    assert (ba.COMPUTE_DEFAULT, ba.COMPUTE_EXACT, ba.COMPUTE_FAST) == (0, 1, 2)
    with ba.Context.self() as ctx:
        with ctx.plan(1, 4, 1, 8) as plan:
            assert plan.compute is ba.Compute.DEFAULT
        for spelling, want in ((None, ba.Compute.DEFAULT), ("default", ba.Compute.DEFAULT),
                               ("exact", ba.Compute.EXACT), ("EXACT", ba.Compute.EXACT),
                               ("fast", ba.Compute.FAST), (" Fast ", ba.Compute.FAST),
                               (ba.Compute.FAST, ba.Compute.FAST), (ba.COMPUTE_EXACT, ba.Compute.EXACT),
                               (1, ba.Compute.EXACT), (np.int32(2), ba.Compute.FAST)):
            for dtype in ("f32", "bf16", "f16"):
                with ctx.plan(1, 4, 1, 8, dtype=dtype, compute=spelling) as plan:
                    assert plan.compute is want, (spelling, dtype)
                    assert plan.config["compute"] == want


def test_compute_bad_values():
    """An unknown name is ValueError, a wrong type TypeError (both naming the argument,
    before the library is called); an int out of range reaches the library, which
    rejects it with INVALID_ARGUMENT naming the field and its values."""
    with ba.Context.self() as ctx:
        with pytest.raises(ValueError, match="compute: unknown value 'fastest'; expected one of 'default', 'exact', 'fast'"):
            ctx.plan(1, 4, 1, 8, compute="fastest")
        with pytest.raises(ValueError, match="compute"):
            ctx.plan(1, 4, 1, 8, compute="")
        with pytest.raises(TypeError, match="compute"):
            ctx.plan(1, 4, 1, 8, compute=2.0)
        with pytest.raises(TypeError, match="compute: expected a Compute"):
            ctx.plan(1, 4, 1, 8, compute=ba.Pattern.RING)
        for bad in (3, -1):
            with pytest.raises(ba.InvalidArgumentError, match="compute: unknown value .*BURST_COMPUTE_FAST = 2"):
                ctx.plan(1, 4, 1, 8, compute=bad)


def test_compute_on_one_rank_fails_everywhere():
    # An unparseable name on rank 1: it raises ValueError, the others fail with the library's error.
    errors = _plan_everywhere(3, lambda r: dict(BASE, seq_len_local=3, compute="quick" if r == 1 else "fast"))
    assert isinstance(errors[1], ValueError) and "compute" in str(errors[1]), errors
    assert all(isinstance(e, ba.BurstError) for r, e in enumerate(errors) if r != 1), errors
    # compute = 3 on rank 2 only: INVALID_ARGUMENT on every rank, naming the field.
    _assert_all_fail(_plan_everywhere(3, lambda r: dict(BASE, seq_len_local=3, compute=3 if r == 2 else 0)),
                     ba.Status.INVALID_ARGUMENT, "compute")
    # Ranks that disagree (also "default" vs "fast" with bf16, which resolve alike): MISMATCH.
    for values, dtype in ((("exact", "fast", "exact"), "f32"), (("default", "default", "fast"), "bf16")):
        errors = _plan_everywhere(3, lambda r: dict(BASE, seq_len_local=3, dtype=dtype, compute=values[r]))
        _assert_all_fail(errors, ba.Status.MISMATCH, "compute")


FAST_CASES = [
    # world, pattern, distribution, causal, window, (hq, hkv), layout
    (1, "burst", "contiguous", True, (-1, -1), (2, 2), "bshd"),
    (3, "burst", "zigzag", True, (-1, -1), (4, 2), "bshd"),
    (2, "ring", "striped", False, (5, 2), (2, 1), "bhsd"),
    (3, "allgather", "contiguous", True, (6, 0), (3, 3), "bshd"),
    (2, "ulysses", "zigzag", True, (-1, -1), (4, 2), "bhsd"),
]


@pytest.mark.parametrize("dtype,compute", [("f32", "fast"), ("bf16", "fast"), ("bf16", None)])
@pytest.mark.parametrize("world,pattern,distribution,causal,window,heads,layout", FAST_CASES)
def test_fast_compute_loopback(dtype, compute, world, pattern, distribution, causal, window, heads, layout):
    """compute="fast" (and the default with bf16 storage) on f32 and bf16 storage,
    forward and backward, against the float64 reference of the bf16-rounded inputs
    (the backward's with D from the out the library returned), within the FAST bounds
    of reference.py. (While the library's bf16 products are a stub that computes in
    fp32 this passes too: the bounds are what the real kernels must meet.)"""
    hq, hkv = heads
    n_total = 37
    # Uniform in [-1, 1), as the Swift and C tests: the bounds are for inputs of unit
    # scale. (Standard normal ones reach |x| ~ 4; then fp32 products of the unrounded
    # f32 inputs, what the stub computes, differ from the rounded reference's lse by
    # ~1e-2, while bf16 products of rounded inputs would not.)
    rng = np.random.default_rng(5)
    q, k, v, dout = (rng.uniform(-1, 1, x.shape).astype(np.float32)
                     for x in ref.make_inputs(5, 2, n_total, hq, hkv, 8, layout))
    rq, rk, rv, rdo = (ref.round_bf16(x) for x in (q, k, v, dout))
    pos = ref.all_positions(distribution, n_total, world)
    masks = dict(window_left=window[0], window_right=window[1])
    out_ref, lse_ref = ref.forward(rq, rk, rv, causal, layout=layout, **masks)

    def stored(x):
        return np.ascontiguousarray(x, np.float32) if dtype == "f32" else ref.to_storage(x, "bf16")

    def as64(x):
        return np.asarray(x, np.float64) if dtype == "f32" else ref.from_storage(x, "bf16")

    def fn(ctx):
        mine = [stored(ref.shard_at(x, pos[ctx.rank], layout)) for x in (q, k, v, dout)]
        with ctx.plan(2, len(pos[ctx.rank]), hq, 8, num_heads_kv=hkv, layout=layout,
                      mask="causal" if causal else "none", distribution=distribution,
                      pattern=pattern, dtype=dtype, compute=compute, timeout_seconds=CALL_TIMEOUT,
                      **masks) as plan:
            assert plan.compute == (ba.Compute.DEFAULT if compute is None else ba.Compute.FAST)
            out, lse = plan.forward(*mine[:3])
            grads = plan.backward(*mine[:3], out, lse, mine[3])
        return out, lse, grads

    contexts = ba.Context.loopback(world)
    try:
        per_rank = results_or_raise(run_ranks(contexts, fn))
    finally:
        for c in contexts:
            c.close()
    axis = ref.seq_axis(layout)
    given = np.zeros(out_ref.shape)
    for r, (out, _, _) in enumerate(per_rank):
        index = [slice(None)] * 4
        index[axis] = pos[r]
        given[tuple(index)] = as64(out)
    grads_ref = ref.backward(rq, rk, rv, rdo, causal, layout=layout, given_out=given, **masks)
    out_scale = float(np.max(np.abs(out_ref)))
    grad_scales = [max(float(np.max(np.abs(g))), 1e-3) for g in grads_ref]
    for r, (out, lse, grads) in enumerate(per_rank):
        where = f"{dtype} compute={compute} P={world} {pattern} {distribution} rank {r}"
        err = float(np.max(np.abs(as64(out) - ref.shard_at(out_ref, pos[r], layout)), initial=0.0))
        assert err <= ref.FAST_OUT_TOL * out_scale, f"{where}: out error {err:.3g}"
        assert ref.lse_error(lse, ref.shard_lse_at(lse_ref, pos[r])) <= ref.FAST_LSE_TOL, where
        for name, got, want, scale in zip(("dq", "dk", "dv"), grads, grads_ref, grad_scales):
            err = float(np.max(np.abs(as64(got) - ref.shard_at(want, pos[r], layout)), initial=0.0))
            assert err <= ref.FAST_GRAD_TOL * scale, f"{where}: {name} error {err:.3g} > {ref.FAST_GRAD_TOL} * {scale:.3g}"


# --------------------------------------------------------------------------- score modifiers (0.8)
# Attention sinks (gpt-oss) and logit soft-capping (Gemma 2): every world size 1-5 and
# every pattern (ULYSSES where the kv heads divide by the world size) x sinks on/off x
# softcap on/off, on a mix of causal zigzag, GQA, windows and packing, against the float64
# reference (forward out and lse, backward dq, dk, dv and each rank's dsinks), then the
# ABI's error cases from Python.

# world -> (distribution, n_total, window, heads (q, kv), cu_seqlens, layout)
MODIFIER_MIX = {
    1: ("contiguous", 23, (5, 0), (2, 1), None, "bshd"),
    2: ("zigzag", 41, (-1, -1), (4, 2), [0, 13, 13, 41], "bshd"),
    3: ("zigzag", 44, (7, 0), (6, 3), None, "bhsd"),
    4: ("striped", 47, (6, 2), (8, 4), [0, 1, 30, 47], "bshd"),
    5: ("zigzag", 53, (9, 0), (10, 5), [0, 20, 21, 53], "bshd"),
}


@pytest.mark.parametrize("modifiers", MODIFIERS)
@pytest.mark.parametrize("pattern", ["burst", "ring", "allgather", "ulysses"])
@pytest.mark.parametrize("world_size", sorted(MODIFIER_MIX))
def test_modifier_sweep(world_size, pattern, modifiers):
    distribution, n_total, window, (hq, hkv), cu, layout = MODIFIER_MIX[world_size]
    if pattern == "ulysses" and hkv % world_size:
        pytest.skip("ULYSSES needs num_heads_kv divisible by the world size")
    contexts = ba.Context.loopback(world_size)
    try:
        variant_run(contexts, distribution, n_total, causal=True, window=window, cu_seqlens=cu,
                    heads_q=hq, heads_kv=hkv, layout=layout, pattern=pattern, head_dim=8,
                    seed=100 * world_size + len(pattern), **_modifier_args(modifiers, hq, world_size))
    finally:
        for c in contexts:
            c.close()


def test_modifiers_with_fewer_tokens_than_ranks():
    """Ranks with no token (N = 2 over 4 ranks, zigzag: ranks 2 and 3 are empty) return
    a zero sinks gradient; the others' partials still sum to the reference."""
    world = ba.Context.loopback(4)
    try:
        variant_run(world, "zigzag", 2, causal=True, batch=1, heads_q=2, heads_kv=1,
                    softcap=1.5, sinks=np.array([0.5, -1.0], np.float32))
    finally:
        for c in world:
            c.close()


def test_plan_softcap_and_sinks_arguments():
    """softcap reads back as a plan attribute; sinks are copied at creation (changing
    the caller's array afterwards changes nothing) and accept any real sequence."""
    q, k, v, _ = ref.make_inputs(3, 1, 12, 2, 2, 8)
    sinks = np.array([1.0, -0.5], np.float32)
    want, _ = ref.forward(q, k, v, True, sinks=sinks, softcap=3.0)
    with ba.Context.self() as ctx:
        for spelling in (sinks, [1.0, -0.5], (1, -0.5), np.array([1.0, -0.5], np.float64)):
            arg = spelling.copy() if isinstance(spelling, np.ndarray) else spelling
            with ctx.plan(1, 12, 2, 8, mask="causal", softcap=3.0, sinks=arg) as plan:
                assert plan.softcap == 3.0 and plan.has_sinks
                if isinstance(arg, np.ndarray):
                    arg[:] = 100.0  # copied by the library at creation
                out, _ = plan.forward(q, k, v)
                assert ref.rel_error(out, want) <= ref.OUT_TOL, spelling
        with ctx.plan(1, 12, 2, 8) as plan:
            assert plan.softcap == 0.0 and not plan.has_sinks


def test_set_sinks_replaces_and_removes_them():
    """set_sinks(values) between calls changes the results as the reference says (a
    training loop after each optimizer step); set_sinks(None) removes them; a plan
    created without sinks takes them later."""
    q, k, v, dout = ref.make_inputs(4, 2, 20, 4, 2, 8)
    first, second = ref.make_sinks(1, 4), ref.make_sinks(2, 4)
    with ba.Context.self() as ctx:
        with ctx.plan(2, 20, 4, 8, num_heads_kv=2, mask="causal", sinks=first) as plan:
            for sinks in (first, second, None, first):
                plan.set_sinks(sinks)
                assert plan.has_sinks == (sinks is not None)
                out, lse = plan.forward(q, k, v)
                want, want_lse = ref.forward(q, k, v, True, sinks=sinks)
                assert ref.rel_error(out, want) <= ref.OUT_TOL
                assert ref.lse_error(lse, want_lse) <= ref.LSE_TOL
                plan.backward(q, k, v, out, lse, dout)
                if sinks is None:
                    with pytest.raises(ba.InvalidArgumentError):
                        plan.sinks_gradient()
                else:
                    rows = ref.backward_full(q, k, v, dout, True, sinks=sinks)[3]
                    full = ref.sinks_partial(rows)
                    assert ref.rel_error(plan.sinks_gradient(), full) <= ref.GRAD_TOL
        with ctx.plan(2, 20, 4, 8, num_heads_kv=2) as plan:
            plan.set_sinks(second)
            out, _ = plan.forward(q, k, v)
            assert ref.rel_error(out, ref.forward(q, k, v, sinks=second)[0]) <= ref.OUT_TOL


def test_sinks_gradient_needs_a_backward_with_sinks():
    """INVALID_ARGUMENT before any backward, on a plan without sinks, after set_sinks
    (the gradient of the old values is gone) and after a failed backward."""
    q, k, v, dout = ref.make_inputs(5, 1, 8, 2, 2, 8)
    with ba.Context.self() as ctx:
        with ctx.plan(1, 8, 2, 8, sinks=[0.0, 1.0]) as plan:
            with pytest.raises(ba.InvalidArgumentError) as info:
                plan.sinks_gradient()
            assert info.value.function == "burst_plan_sinks_gradient"
            out, lse = plan.forward(q, k, v)
            with pytest.raises(ba.InvalidArgumentError):
                plan.sinks_gradient()  # a forward is not a backward
            plan.backward(q, k, v, out, lse, dout)
            g = plan.sinks_gradient()
            assert g.dtype == np.float32 and g.shape == (2,)
            assert np.array_equal(g, plan.sinks_gradient())  # reading it changes nothing
            plan.set_sinks([0.0, 1.0])
            with pytest.raises(ba.InvalidArgumentError):
                plan.sinks_gradient()
            plan.backward(q, k, v, out, lse, dout)
            assert np.array_equal(plan.sinks_gradient(), g)  # bitwise the same backward
            with pytest.raises(TypeError):
                plan.backward(q, k, v, out, lse, dout.astype(np.float64))  # fails here
            assert np.array_equal(plan.sinks_gradient(), g)  # ... before the library ran
            assert _lib.lib.burst_backward(plan._handle, *([None] * 9)) == ba.Status.INVALID_ARGUMENT
            with pytest.raises(ba.InvalidArgumentError):
                plan.sinks_gradient()  # a failed backward clears it
        with ctx.plan(1, 8, 2, 8) as plan:
            out, lse = plan.forward(q, k, v)
            plan.backward(q, k, v, out, lse, dout)
            with pytest.raises(ba.InvalidArgumentError):
                plan.sinks_gradient()


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_sink_is_invalid(bad):
    """A NaN or infinite sink: INVALID_ARGUMENT at plan creation; from set_sinks, which
    the plan keeps, so its next forward and backward fail with INVALID_ARGUMENT too
    until valid values are set."""
    q, k, v, dout = ref.make_inputs(6, 1, 8, 2, 2, 8)
    with ba.Context.self() as ctx:
        with pytest.raises(ba.InvalidArgumentError) as info:
            ctx.plan(1, 8, 2, 8, sinks=[0.0, bad])
        assert info.value.status == ba.Status.INVALID_ARGUMENT and "sinks" in info.value.message
        with ctx.plan(1, 8, 2, 8, sinks=[0.0, 1.0]) as plan:
            out, lse = plan.forward(q, k, v)
            with pytest.raises(ba.InvalidArgumentError) as info:
                plan.set_sinks([bad, 0.0])
            assert info.value.function == "burst_plan_set_sinks"
            with pytest.raises(ba.InvalidArgumentError):
                plan.forward(q, k, v)
            with pytest.raises(ba.InvalidArgumentError):
                plan.backward(q, k, v, out, lse, dout)
            plan.set_sinks([0.0, 1.0])
            again, _ = plan.forward(q, k, v)
            assert np.array_equal(again, out)


def test_non_finite_sink_from_set_sinks_fails_every_rank():
    """One rank's set_sinks rejects a NaN: its collective calls then fail on every rank
    (never a hang); with valid values everywhere the group works again."""
    q, k, v, _ = ref.make_inputs(7, 1, 12, 2, 2, 8)

    def fn(ctx):
        pos = ref.positions("contiguous", 12, 2, ctx.rank)
        mine = [ref.shard_at(x, pos) for x in (q, k, v)]
        with ctx.plan(1, len(pos), 2, 8, sinks=[0.5, 0.5], timeout_seconds=CALL_TIMEOUT) as plan:
            if ctx.rank == 1:
                with pytest.raises(ba.InvalidArgumentError):
                    plan.set_sinks([0.5, float("nan")])
            with pytest.raises(ba.BurstError) as info:
                plan.forward(*mine)
            plan.set_sinks([0.5, 0.5])
            out, _ = plan.forward(*mine)
            return info.value.status, out

    contexts = ba.Context.loopback(2)
    try:
        results = results_or_raise(run_ranks(contexts, fn))
    finally:
        for c in contexts:
            c.close()
    assert [status for status, _ in results] == [ba.Status.INVALID_ARGUMENT] * 2, results
    want = ref.forward(q, k, v, sinks=[0.5, 0.5])[0]
    assert ref.rel_error(np.concatenate([out for _, out in results], axis=1), want) <= ref.OUT_TOL


@pytest.mark.parametrize("softcap", [-1.0, -1e-30, float("nan"), float("inf"), -float("inf")])
def test_bad_softcap_is_invalid(softcap):
    with ba.Context.self() as ctx:
        with pytest.raises(ba.InvalidArgumentError) as info:
            ctx.plan(1, 8, 2, 8, softcap=softcap)
        assert "softcap" in info.value.message, info.value.message
        with pytest.raises(ba.InvalidArgumentError):
            ctx.kv_cache(1, 2, 8, softcap=softcap)
    # ... on every rank of a group, naming the field
    _assert_all_fail(_plan_everywhere(2, lambda r: dict(BASE, seq_len_local=3, softcap=softcap)),
                     ba.Status.INVALID_ARGUMENT, "softcap")


def test_modifier_argument_errors():
    """What ctypes needs is checked in Python (the number of sinks, their type):
    ValueError/TypeError naming the argument; the library never sees the call."""
    with ba.Context.self() as ctx:
        with pytest.raises(ValueError, match=r"sinks: expected shape \(2,\)"):
            ctx.plan(1, 8, 2, 8, sinks=[0.0, 1.0, 2.0])
        with pytest.raises(ValueError, match="sinks"):
            ctx.plan(1, 8, 2, 8, sinks=np.zeros((1, 2), np.float32))
        with pytest.raises(TypeError, match="sinks"):
            ctx.plan(1, 8, 2, 8, sinks="ab")
        with pytest.raises(TypeError, match="sinks"):
            ctx.plan(1, 8, 2, 8, sinks=[True, False])
        with pytest.raises(TypeError, match="softcap: expected a float"):
            ctx.plan(1, 8, 2, 8, softcap="1")
        with pytest.raises(TypeError, match="softcap"):
            ctx.plan(1, 8, 2, 8, softcap=None)
        with ctx.plan(1, 8, 2, 8, sinks=[0.0, 1.0]) as plan:
            with pytest.raises(ValueError, match=r"sinks: expected shape \(2,\)"):
                plan.set_sinks([1.0])
            with pytest.raises(TypeError, match="sinks"):
                plan.set_sinks(["a", "b"])
            assert plan.has_sinks  # unchanged
        with pytest.raises(ValueError, match=r"sinks: expected shape \(3, 2\) or \(6,\)"):
            ctx.kv_cache(3, 2, 8, sinks=np.zeros(5))


def test_modifiers_disagreeing_or_bad_on_one_rank_fail_everywhere():
    """softcap or sinks that differ between ranks: MISMATCH on every rank naming the
    field; sinks of the wrong length on one rank: its ValueError there, the others
    fail too (the binding calls the library with a config it rejects)."""
    _assert_all_fail(_plan_everywhere(3, lambda r: dict(BASE, seq_len_local=3,
                                                        softcap=30.0 if r == 2 else 50.0)),
                     ba.Status.MISMATCH, "softcap")
    _assert_all_fail(_plan_everywhere(2, lambda r: dict(BASE, seq_len_local=3,
                                                        sinks=[0.0, 0.0, 0.0, float(r)])),
                     ba.Status.MISMATCH, "sinks")
    _assert_all_fail(_plan_everywhere(2, lambda r: dict(BASE, seq_len_local=3,
                                                        sinks=None if r else [0.0] * 4)),
                     ba.Status.MISMATCH, "sinks")
    errors = _plan_everywhere(3, lambda r: dict(BASE, seq_len_local=3,
                                                sinks=[0.0] * (3 if r == 1 else 4)))
    assert isinstance(errors[1], ValueError) and "sinks" in str(errors[1]), errors
    assert all(isinstance(e, ba.BurstError) for r, e in enumerate(errors) if r != 1), errors


def test_set_sinks_differing_between_ranks_is_mismatch_everywhere():
    """set_sinks is local; the next forward and backward compare a digest of the
    values: MISMATCH on every rank. Agreeing again, the plan works again."""
    q, k, v, dout = ref.make_inputs(8, 1, 10, 2, 2, 8)

    def fn(ctx):
        pos = ref.positions("contiguous", 10, 3, ctx.rank)
        mine = [ref.shard_at(x, pos) for x in (q, k, v, dout)]
        with ctx.plan(1, len(pos), 2, 8, sinks=[1.0, 2.0], timeout_seconds=CALL_TIMEOUT) as plan:
            out, lse = plan.forward(*mine[:3])
            plan.set_sinks([1.0, 2.0 + (ctx.rank == 2) * 1e-3])
            errors = []
            for call in (lambda: plan.forward(*mine[:3]),
                         lambda: plan.backward(*mine[:3], out, lse, mine[3])):
                with pytest.raises(ba.MismatchError) as info:
                    call()
                errors.append(info.value.status)
            plan.set_sinks([1.0, 2.0])
            plan.backward(*mine[:3], out, lse, mine[3])
            return errors, plan.sinks_gradient()

    contexts = ba.Context.loopback(3)
    try:
        results = results_or_raise(run_ranks(contexts, fn))
    finally:
        for c in contexts:
            c.close()
    assert all(errors == [ba.Status.MISMATCH] * 2 for errors, _ in results)
    rows = ref.backward_full(q, k, v, dout, sinks=[1.0, 2.0])[3]
    total = np.sum([g for _, g in results], axis=0)
    assert ref.rel_error(total, ref.sinks_partial(rows)) <= ref.GRAD_TOL


def test_modifier_calls_via_c():
    """burst_plan_set_sinks / burst_plan_sinks_gradient called directly: NULL plan or
    NULL output is INVALID_ARGUMENT; a 0.7-sized config (128 bytes: no sinks field) gets
    no sinks whatever lies past its end."""
    lib = _lib.lib
    two = np.array([0.0, 1.0], np.float32)
    assert lib.burst_plan_set_sinks(None, _lib.float_ptr(two)) == ba.Status.INVALID_ARGUMENT
    assert lib.burst_plan_sinks_gradient(None, _lib.float_ptr(two)) == ba.Status.INVALID_ARGUMENT
    q, k, v, dout = ref.make_inputs(9, 1, 6, 2, 2, 8)
    with ba.Context.self() as ctx, ctx.plan(1, 6, 2, 8, sinks=two) as plan:
        out, lse = plan.forward(q, k, v)
        plan.backward(q, k, v, out, lse, dout)
        assert lib.burst_plan_sinks_gradient(plan._handle, None) == ba.Status.INVALID_ARGUMENT
        assert lib.burst_plan_set_sinks(plan._handle, None) == ba.Status.OK  # removes them
        assert not np.array_equal(plan.forward(q, k, v)[0], out)
    with ba.Context.self() as ctx:
        cfg = _lib.new_config()
        cfg.batch, cfg.seq_len_local, cfg.num_heads_q, cfg.num_heads_kv, cfg.head_dim = 1, 6, 2, 2, 8
        nan = np.array([np.nan, np.nan], np.float32)
        cfg.sinks = _lib.float_ptr(nan)  # past a 0.7 struct's end: never read
        cfg.struct_size = _lib.CONFIG_SIZE_V0_7
        handle = _lib.c_handle()
        assert lib.burst_plan_create(ctx._handle, ctypes.byref(cfg), ctypes.byref(handle)) == ba.Status.OK
        got = np.empty((1, 6, 2, 8), np.float32)
        lse = np.empty((1, 2, 6), np.float32)
        assert lib.burst_forward(handle, _lib.void_ptr(q), _lib.void_ptr(k), _lib.void_ptr(v),
                                 _lib.void_ptr(got), _lib.float_ptr(lse)) == ba.Status.OK
        assert ref.rel_error(got, ref.forward(q, k, v)[0]) <= ref.OUT_TOL
        lib.burst_plan_destroy(handle)


def test_reference_modifiers_match_finite_differences():
    """The float64 reference with sinks and softcap, every mask at once: its dq, dk, dv
    and dsinks are the central differences of its forward (so the library is checked
    against a reference that is itself checked)."""
    rng = np.random.default_rng(0)
    b, n, hq, hkv, d = 1, 6, 4, 2, 3
    q = rng.standard_normal((b, hq, n, d))
    k, v = (rng.standard_normal((b, hkv, n, d)) for _ in range(2))
    do = rng.standard_normal((b, hq, n, d))
    sinks = rng.standard_normal(hq)
    kw = dict(causal=True, scale=None, layout="bhsd", window_left=2, window_right=0,
              cu_seqlens=[0, 1, 1, 6], softcap=0.7, sinks=sinks)
    dq, dk, dv, rows = ref.backward_full(q, k, v, do, **kw)
    eps = 1e-6
    for x, g in ((q, dq), (k, dk), (v, dv), (sinks, ref.sinks_partial(rows))):
        num = np.zeros_like(x)
        for idx in np.ndindex(x.shape):
            orig = x[idx]
            x[idx] = orig + eps
            fp = np.sum(ref.forward(q, k, v, **kw)[0] * do)
            x[idx] = orig - eps
            fm = np.sum(ref.forward(q, k, v, **kw)[0] * do)
            x[idx] = orig
            num[idx] = (fp - fm) / (2 * eps)
        assert np.max(np.abs(num - g)) < 1e-6
    # a row that sees only itself in its own sequence still has the sink in its lse
    _, lse = ref.forward(q, k, v, **kw)
    assert np.all(lse[0, :, 0] > sinks)
