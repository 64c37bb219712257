"""pytest for burst_attention.KVCache (the 0.6 burst_kv_cache_* ABI), single process.

Multi-rank behaviour runs on loopback contexts, one Python thread per rank (as
test_binding.py does). Every decode is checked against the float64 model of
kvcache_reference.py (the whole history, window, GQA), every rank's lengths, local
tokens and bytes after every call, and the results must be bitwise the same on every
rank and from run to run. MPI runs: kvcache_mpi_check.py.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest

# importing _testenv also sets up sys.path and BURST_ATTENTION_LIBRARY
from _testenv import CALL_TIMEOUT, results_or_raise, run_ranks  # noqa: E402

import burst_attention as ba  # noqa: E402
import kvcache_reference as kref  # noqa: E402
import reference as ref  # noqa: E402

HEAD_DIM = 8


# --------------------------------------------------------------------------- helpers

@pytest.fixture
def world(request):
    contexts = ba.Context.loopback(request.param)
    yield contexts
    for c in contexts:
        c.close()


def make_cache(ctx, heads=(4, 2), num_layers=2, **kw):
    kw.setdefault("timeout_seconds", CALL_TIMEOUT)
    return ctx.kv_cache(num_layers, heads[0], HEAD_DIM, num_heads_kv=heads[1], **kw)


def play(contexts, heads, window_left, dtype, distribution, seed, layout="bshd",
         block_tokens=4, t_values=(1, 3, 17), num_threads=0, softmax_scale=0.0,
         softcap=0.0, sinks=None):
    """The scenario of kvcache_reference on every rank; asserts no check failed and
    that every rank got the same bytes. Returns rank 0's digests. sinks: None or
    [2 layers, heads_q] floats (0.8)."""
    where = (f"P={len(contexts)} heads={heads} window_left={window_left} {dtype} "
             f"{distribution} {layout} block_tokens={block_tokens} softcap={softcap} "
             f"sinks={'yes' if sinks is not None else 'no'}")

    def fn(ctx):
        model = kref.Model(ctx.size, 2, heads[0], heads[1], HEAD_DIM, window_left=window_left,
                           softmax_scale=softmax_scale, block_tokens=block_tokens, dtype=dtype,
                           softcap=softcap, sinks=sinks)
        with make_cache(ctx, heads, dtype=dtype, layout=layout, window_left=window_left,
                        block_tokens=block_tokens, num_threads=num_threads,
                        softmax_scale=softmax_scale, softcap=softcap, sinks=sinks) as cache:
            runner = kref.Runner(ctx, cache, model, dtype=dtype, layout=layout,
                                 timeout=CALL_TIMEOUT, where=where)
            kref.scenario(runner, distribution, seed, t_values)
            assert cache.nbytes == 0  # every sequence dropped
        return runner

    runners = results_or_raise(run_ranks(contexts, fn))
    failures = [f for r in runners for f in r.failures]
    assert not failures, "\n".join(failures[:20])
    assert all(r.checks > 0 for r in runners)
    for r in runners[1:]:
        assert r.digests == runners[0].digests, f"{where}: rank {r.ctx.rank} differs from rank 0"
    return runners[0].digests


def expect_every_rank(results, error_type, match=None):
    """Every rank raised error_type (and `match` in its message)."""
    for rank, (value, exc) in enumerate(results):
        assert isinstance(exc, error_type), f"rank {rank}: expected {error_type.__name__}, got {exc!r} / {value!r}"
        if match is not None:
            assert match in str(exc), f"rank {rank}: {match!r} not in {exc}"


# --------------------------------------------------------------------------- the sweep

SWEEP = list(itertools.product([(4, 4), (4, 2), (4, 1)], [-1, 5], ["f32", "bf16"]))


@pytest.mark.parametrize("world", [2, 3], indirect=True)
@pytest.mark.parametrize("heads,window_left,dtype", SWEEP)
def test_decode_sweep(world, heads, window_left, dtype):
    """(h_q, h_kv) x window x dtype at P = 2 and 3, T in {1, 3, 17}, zigzag prefill at
    P = 2 and contiguous at P = 3 (a short sequence then lies on one rank only)."""
    distribution = "zigzag" if len(world) == 2 else "contiguous"
    play(world, heads, window_left, dtype, distribution, seed=11)


@pytest.mark.parametrize("world", [1, 2, 3], indirect=True)
@pytest.mark.parametrize("modifiers", ["sinks", "softcap", "sinks+softcap"])
def test_decode_sinks_softcap(world, modifiers):
    """0.8: the cache's softcap and per-layer sinks ([num_layers, heads_q], here given
    flat once) in decode as in the prompt's plans (the same softcap, each layer's sinks
    set on the plan before its forward), against the float64 model."""
    sinks = None
    if "sinks" in modifiers:
        sinks = np.concatenate([ref.make_sinks(layer, 4) for layer in range(2)])
        if len(world) == 2:
            sinks = sinks.reshape(2, 4)
    play(world, (4, 2), 6 if len(world) == 3 else -1, "f32",
         "zigzag" if len(world) > 1 else "contiguous", seed=15,
         softcap=2.0 if "softcap" in modifiers else 0.0, sinks=sinks)


@pytest.mark.parametrize("world", [1, 4], indirect=True)
@pytest.mark.parametrize("distribution", ["contiguous", "zigzag"])
def test_decode_one_and_four_ranks(world, distribution):
    play(world, (4, 2), 6, "f32", distribution, seed=12)
    play(world, (4, 1), -1, "bf16", distribution, seed=13)


@pytest.mark.parametrize("world", [3], indirect=True)
def test_decode_bhsd_f16_custom_scale_default_blocks(world):
    play(world, (4, 2), 7, "f16", "zigzag", seed=14, layout="bhsd", block_tokens=0,
         softmax_scale=0.3)


@pytest.mark.parametrize("world", [2], indirect=True)
def test_bitwise_repeat_and_thread_count(world):
    """Same inputs twice -> identical bytes; num_threads does not change them."""
    a = play(world, (4, 2), 5, "f32", "zigzag", seed=21)
    b = play(world, (4, 2), 5, "f32", "zigzag", seed=21)
    c = play(world, (4, 2), 5, "f32", "zigzag", seed=21, num_threads=1)
    assert a == b == c
    d = play(world, (4, 2), 5, "bf16", "zigzag", seed=21)
    assert d == play(world, (4, 2), 5, "bf16", "zigzag", seed=21, num_threads=2)


@pytest.mark.parametrize("world", [3], indirect=True)
@pytest.mark.parametrize("distribution", ["striped", "zigzag", "contiguous"])
def test_prefill_batch_rows_one_layer_then_truncate_to_zero(world, distribution):
    """A plan with batch 2 and no packing (row b is seq_ids[b]) prefills layer 0 only;
    layer 1 starts empty; truncate to 0 and decode again; prefill into a non-empty layer
    and duplicate ids in prefill fail on every rank."""
    n, heads = 10, (4, 2)

    def fn(ctx):
        model = kref.Model(ctx.size, 2, *heads, HEAD_DIM, window_left=6, block_tokens=4)
        with make_cache(ctx, heads, window_left=6, block_tokens=4) as cache:
            runner = kref.Runner(ctx, cache, model, where=f"batch {distribution}")
            runner.add([5, 9])
            pos = ref.all_positions(distribution, n, ctx.size)
            owner = np.empty(n, np.int64)
            for r, rows in enumerate(pos):
                owner[rows] = r
            rng = np.random.default_rng(8)
            k, v = (rng.standard_normal((2, n, heads[1], HEAD_DIM)).astype(np.float32) for _ in range(2))
            kl, vl = (np.ascontiguousarray(x[:, pos[ctx.rank]]) for x in (k, v))
            with ctx.plan(2, len(pos[ctx.rank]), *heads[:1], HEAD_DIM, num_heads_kv=heads[1],
                          mask="causal", distribution=distribution, timeout_seconds=CALL_TIMEOUT) as plan:
                cache.prefill(0, plan, [5, 9], kl, vl)
                for b, s in enumerate((5, 9)):
                    model.prefill(0, [s], [0, n], k[b:b + 1].astype(np.float64),
                                  v[b:b + 1].astype(np.float64), owner)
                runner.verify("batched prefill")
                errors = []
                for ids in ([5, 9], [9, 9]):  # 5, 9 are not empty in layer 0; a duplicate
                    try:
                        cache.prefill(0, plan, ids, kl, vl)
                    except ba.BurstError as exc:
                        errors.append(exc)
                runner.check(len(errors) == 2, f"prefill errors {errors}")
                runner.verify("failed prefills")
            for layer in (0, 1):
                runner.decode(layer, [9, 5], 3, seed=layer)
            runner.truncate([5, 9], [0, 4])
            runner.decode(0, [5, 9], 2, seed=7)
            runner.decode(1, [5], 1, seed=8, positions=[20])
        return runner

    runners = results_or_raise(run_ranks(world, fn))
    failures = [f for r in runners for f in r.failures]
    assert not failures, "\n".join(failures[:20])
    assert all(r.digests == runners[0].digests for r in runners)


def test_self_context_prefill_decode():
    with ba.Context.self() as ctx:
        model = kref.Model(1, 2, 4, 2, HEAD_DIM, window_left=-1, block_tokens=3)
        with make_cache(ctx, block_tokens=3) as cache:
            runner = kref.Runner(ctx, cache, model, where="self")
            kref.scenario(runner, "contiguous", 5, (1, 2))
        assert not runner.failures, runner.failures


# --------------------------------------------------------------------------- bad calls

def _fresh(ctx, **kw):
    """A cache with sequences 0 (5 tokens in both layers) and 1 (empty)."""
    cache = make_cache(ctx, block_tokens=4, **kw)
    cache.add([0, 1])
    x = np.ones((1, 5, 2, HEAD_DIM), np.float32)
    for layer in range(2):
        cache.decode(layer, [0], np.ones((1, 5, 4, HEAD_DIM), np.float32), x, x)
    return cache


def _state(cache):
    return [cache.length(s, l) for s in (0, 1) for l in (0, 1)] + [cache.nbytes]


def _bad_call(contexts, call, error_type, match=None, **cache_kw):
    """Each rank: a fresh cache, call(cache, ctx) must raise error_type on every rank,
    and leave every length and the bytes as they were; the cache still works."""
    def fn(ctx):
        cache = _fresh(ctx, **cache_kw)
        before = _state(cache)
        try:
            call(cache, ctx)
        except BaseException as exc:  # noqa: BLE001
            error = exc
        else:
            error = None
        after = _state(cache)
        cache.decode(0, [1], *(np.ones(s, np.float32) for s in ((1, 1, 4, 8), (1, 1, 2, 8), (1, 1, 2, 8))))
        cache.close()
        if error is not None:
            raise _Wrapped(error, before, after)
        return before, after

    results = run_ranks(contexts, fn)
    for rank, (value, exc) in enumerate(results):
        assert isinstance(exc, _Wrapped), f"rank {rank}: no error (or another failure): {exc!r}"
        assert isinstance(exc.error, error_type), f"rank {rank}: expected {error_type.__name__}, got {exc.error!r}"
        if match is not None:
            assert match in str(exc.error), f"rank {rank}: {match!r} not in {exc.error}"
        assert exc.before == exc.after, f"rank {rank}: the cache changed: {exc.before} -> {exc.after}"


class _Wrapped(Exception):
    def __init__(self, error, before, after):
        super().__init__(repr(error))
        self.error, self.before, self.after = error, before, after


def _ones(*shape):
    return np.ones(shape, np.float32)


@pytest.mark.parametrize("world", [1, 3], indirect=True)
@pytest.mark.parametrize("case", [
    "unknown id decode", "unknown id drop", "unknown id truncate", "duplicate id decode",
    "duplicate id add", "existing id add", "positions backwards", "layer out of range",
    "negative id add", "negative length"])
def test_bad_calls_fail_everywhere_and_change_nothing(world, case):
    q1, kv1 = _ones(1, 1, 4, HEAD_DIM), _ones(1, 1, 2, HEAD_DIM)
    q2, kv2 = _ones(2, 1, 4, HEAD_DIM), _ones(2, 1, 2, HEAD_DIM)
    calls = {
        "unknown id decode": lambda c, x: c.decode(0, [9], q1, kv1, kv1),
        "unknown id drop": lambda c, x: c.drop([0, 9]),
        "unknown id truncate": lambda c, x: c.truncate([9], [0]),
        "duplicate id decode": lambda c, x: c.decode(0, [0, 0], q2, kv2, kv2),
        "duplicate id add": lambda c, x: c.add([5, 5]),
        "existing id add": lambda c, x: c.add([6, 0]),
        "positions backwards": lambda c, x: c.decode(0, [0], q1, kv1, kv1, positions=[4]),
        "layer out of range": lambda c, x: c.decode(2, [0], q1, kv1, kv1),
        "negative id add": lambda c, x: c.add([-1]),
        "negative length": lambda c, x: c.truncate([0], [-1]),
    }
    _bad_call(world, calls[case], ba.BurstError)


@pytest.mark.parametrize("world", [2, 3], indirect=True)
def test_tokens_differing_between_ranks_is_mismatch_everywhere(world):
    def call(cache, ctx):
        t = 1 + (ctx.rank == 1)
        cache.decode(0, [0], _ones(1, t, 4, HEAD_DIM), _ones(1, t, 2, HEAD_DIM), _ones(1, t, 2, HEAD_DIM))
    _bad_call(world, call, ba.MismatchError)


@pytest.mark.parametrize("world", [2, 3], indirect=True)
def test_inputs_or_ids_differing_between_ranks_is_mismatch_everywhere(world):
    def values(cache, ctx):
        q = _ones(1, 1, 4, HEAD_DIM)
        q[0, 0, 0, 0] += ctx.rank == 1
        cache.decode(0, [0], q, _ones(1, 1, 2, HEAD_DIM), _ones(1, 1, 2, HEAD_DIM))

    def ids(cache, ctx):
        cache.decode(0, [int(ctx.rank == 1)], _ones(1, 1, 4, HEAD_DIM), _ones(1, 1, 2, HEAD_DIM),
                     _ones(1, 1, 2, HEAD_DIM))
    _bad_call(world, values, ba.MismatchError)
    _bad_call(world, ids, ba.MismatchError)


@pytest.mark.parametrize("world", [1, 2, 3, 4], indirect=True)
def test_max_bytes_local_exceeded_is_out_of_memory_everywhere(world):
    """Rank 0 may hold 4 blocks of 4 tokens (the other ranks have no limit): _fresh
    fits (2 layers x ceil(5 tokens there / 4) blocks at most), 64 more tokens do not
    (at least 16 of them go to rank 0 for P <= 4); every rank raises
    OutOfMemoryError and nothing changes."""
    block = 4 * (2 * 2 * HEAD_DIM * 4 + 8)

    def call(cache, ctx):
        cache.decode(0, [0], _ones(1, 64, 4, HEAD_DIM), _ones(1, 64, 2, HEAD_DIM), _ones(1, 64, 2, HEAD_DIM))

    contexts = world
    limit = {0: 4 * block}

    def fn(ctx):
        cache = _fresh(ctx, max_bytes_local=limit.get(ctx.rank, 0))
        before = _state(cache)
        try:
            call(cache, ctx)
            error = None
        except BaseException as exc:  # noqa: BLE001
            error = exc
        after = _state(cache)
        cache.close()
        return error, before, after

    for rank, (error, before, after) in enumerate(results_or_raise(run_ranks(contexts, fn))):
        assert isinstance(error, ba.OutOfMemoryError), f"rank {rank}: {error!r}"
        assert before == after, f"rank {rank}: {before} -> {after}"


@pytest.mark.parametrize("world", [2], indirect=True)
def test_prefill_plan_of_another_context_fails_everywhere(world):
    other = ba.Context.loopback(len(world))

    def fn(ctx):
        mine, theirs = ctx, other[ctx.rank]
        with make_cache(mine) as cache, \
                theirs.plan(1, 3, 4, HEAD_DIM, num_heads_kv=2, mask="causal",
                            timeout_seconds=CALL_TIMEOUT) as plan:
            cache.add([0])
            kv = _ones(1, 3, 2, HEAD_DIM)
            try:
                cache.prefill(0, plan, [0], kv, kv)
            except ba.BurstError as exc:
                assert cache.length(0, 0) == (0, 0)
                return exc
            return None

    try:
        errors = results_or_raise(run_ranks(world, fn))
    finally:
        for c in other:
            c.close()
    assert all(isinstance(e, ba.BurstError) for e in errors), errors


@pytest.mark.parametrize("world", [2], indirect=True)
def test_prefill_plan_of_another_shape_fails_everywhere(world):
    def fn(ctx):
        with make_cache(ctx) as cache, ctx.plan(1, 3, 4, HEAD_DIM, num_heads_kv=4,
                                                timeout_seconds=CALL_TIMEOUT) as plan:
            cache.add([0])
            kv = _ones(1, 3, 4, HEAD_DIM)
            cache.prefill(0, plan, [0], kv, kv)

    expect_every_rank(run_ranks(world, fn), ba.BurstError)


@pytest.mark.parametrize("world", [2, 3], indirect=True)
def test_python_validation_on_one_rank_fails_every_rank(world):
    """A bad argument on rank 1 only: TypeError/ValueError there, a BurstError from the
    library everywhere else — never a hang."""
    cases = {
        "decode dtype": lambda c: c.decode(0, [0], _ones(1, 1, 4, HEAD_DIM).astype(np.float64),
                                           _ones(1, 1, 2, HEAD_DIM), _ones(1, 1, 2, HEAD_DIM)),
        "decode shape": lambda c: c.decode(0, [0], _ones(1, 1, 3, HEAD_DIM),
                                           _ones(1, 1, 2, HEAD_DIM), _ones(1, 1, 2, HEAD_DIM)),
        "decode ids": lambda c: c.decode(0, [0, 1], _ones(1, 1, 4, HEAD_DIM),
                                         _ones(1, 1, 2, HEAD_DIM), _ones(1, 1, 2, HEAD_DIM)),
        "decode layer": lambda c: c.decode("0", [0], _ones(1, 1, 4, HEAD_DIM),
                                           _ones(1, 1, 2, HEAD_DIM), _ones(1, 1, 2, HEAD_DIM)),
        "add ids": lambda c: c.add(["x"]),
        "drop ids": lambda c: c.drop([[0]]),
        "truncate lengths": lambda c: c.truncate([0], [1, 2]),
        "prefill plan": lambda c: c.prefill(0, "plan", [0], None, None),
    }
    good = {
        "decode dtype": lambda c: c.decode(0, [0], _ones(1, 1, 4, HEAD_DIM), _ones(1, 1, 2, HEAD_DIM),
                                           _ones(1, 1, 2, HEAD_DIM)),
        "add ids": lambda c: c.add([5]),
        "drop ids": lambda c: c.drop([0]),
        "truncate lengths": lambda c: c.truncate([0], [1]),
    }
    for name, bad in cases.items():
        ok = good.get(name, good["decode dtype"])

        def fn(ctx):
            with make_cache(ctx) as cache:
                cache.add([0, 1])
                if name == "prefill plan" and ctx.rank != 1:
                    with ctx.plan(1, 0, 4, HEAD_DIM, num_heads_kv=2, timeout_seconds=CALL_TIMEOUT) as plan:
                        empty = np.zeros((1, 0, 2, HEAD_DIM), np.float32)
                        return cache.prefill(0, plan, [0], empty, empty)
                if name == "prefill plan":  # rank 1 passes no plan, so it makes none
                    with ctx.plan(1, 0, 4, HEAD_DIM, num_heads_kv=2, timeout_seconds=CALL_TIMEOUT):
                        return bad(cache)
                (bad if ctx.rank == 1 else ok)(cache)

        results = run_ranks(world, fn)
        for rank, (value, exc) in enumerate(results):
            if rank == 1:
                assert isinstance(exc, (TypeError, ValueError)) and not isinstance(exc, ba.BurstError), \
                    f"{name}: rank 1: {exc!r}"
                assert "every rank fails together" in str(exc), f"{name}: {exc}"
            else:
                assert isinstance(exc, ba.BurstError), f"{name}: rank {rank}: {exc!r} / {value!r}"


@pytest.mark.parametrize("world", [2], indirect=True)
def test_create_mismatch_and_bad_config_on_one_rank(world):
    def mismatch(ctx):
        make_cache(ctx, window_left=3 if ctx.rank else -1).close()
    expect_every_rank(run_ranks(world, mismatch), ba.MismatchError, "window")

    def bad(ctx):
        make_cache(ctx, dtype="f64" if ctx.rank == 1 else "f32").close()
    results = run_ranks(world, bad)
    assert isinstance(results[1][1], ValueError) and "dtype" in str(results[1][1])
    assert isinstance(results[0][1], ba.BurstError)

    def different_limits(ctx):  # num_threads, max_bytes_local, timeout may differ
        with make_cache(ctx, num_threads=1 + ctx.rank, max_bytes_local=ctx.rank * 10**6,
                        timeout_seconds=30.0 + ctx.rank) as cache:
            return cache.max_bytes_local
    assert results_or_raise(run_ranks(world, different_limits)) == [0, 10**6]


# --------------------------------------------------------------------------- local API

def test_config_spellings_and_properties():
    with ba.Context.self() as ctx:
        for spelling, dtype in (("f32", ba.DType.F32), (np.float32, ba.DType.F32), ("bf16", ba.DType.BF16),
                                (ba.DType.F16, ba.DType.F16), (np.float16, ba.DType.F16), (1, ba.DType.BF16)):
            with ctx.kv_cache(3, 4, 16, num_heads_kv=1, dtype=spelling) as cache:
                assert cache.dtype == dtype
                assert cache.storage_dtype == ba._plan.storage_dtypes(dtype)[0]
                assert (cache.num_layers, cache.num_heads_q, cache.num_heads_kv, cache.head_dim) == (3, 4, 1, 16)
                assert cache.window_left == -1 and cache.layout == ba.Layout.BSHD
                assert cache.q_shape(2, 5) == (2, 5, 4, 16) and cache.kv_shape(2, 5) == (2, 5, 1, 16)
                assert cache.lse_shape(2, 5) == (2, 4, 5)
                assert cache.nbytes == 0 and "KVCache" in repr(cache)
        with ctx.kv_cache(1, 2, 8, layout="bhsd", timeout=5.0) as cache:
            assert cache.q_shape(2, 5) == (2, 2, 5, 8) and cache.timeout_seconds == 5.0
            assert cache.softcap == 0.0
        with ctx.kv_cache(2, 2, 8, softcap=30.0, sinks=[[0.0, 1.0], [2.0, 3.0]]) as cache:
            assert cache.softcap == 30.0
        for kwargs, exc in (({"dtype": np.float64}, ValueError), ({"dtype": "f64"}, ValueError),
                            ({"dtype": object()}, TypeError), ({"num_layers": 1.5}, TypeError),
                            ({"window_left": "x"}, TypeError), ({"softmax_scale": "x"}, TypeError),
                            ({"layout": "bsdh"}, ValueError), ({"softcap": "x"}, TypeError),
                            ({"sinks": np.zeros(3)}, ValueError), ({"sinks": np.zeros((2, 1))}, ValueError),
                            ({"sinks": "ab"}, TypeError)):
            args = dict(num_layers=1, num_heads_q=2, head_dim=8)
            args.update(kwargs)
            with pytest.raises(exc):
                ctx.kv_cache(**args)
        for kwargs in ({"num_layers": 0}, {"num_heads_kv": 3}, {"head_dim": 0}, {"window_left": -2},
                       {"block_tokens": 65537}, {"block_tokens": -1}, {"softmax_scale": -1.0},
                       {"softmax_scale": float("nan")}, {"dtype": 3}, {"layout": 2},
                       {"max_bytes_local": -1}, {"timeout_seconds": -1.0}, {"softcap": -1.0},
                       {"softcap": float("inf")}, {"sinks": [0.0, float("nan")]},
                       {"sinks": [[float("inf"), 0.0]]}):
            args = dict(num_layers=1, num_heads_q=2, head_dim=8)
            args.update(kwargs)
            with pytest.raises(ba.InvalidArgumentError):
                ctx.kv_cache(**args)


def test_lifetime_length_bytes_stats():
    ctx = ba.Context.self()
    cache = make_cache(ctx, block_tokens=2)
    assert set(cache.stats()) == set(ba.STATS_KEYS)
    cache.add(0)  # an int is one id
    cache.add([])
    assert cache.length(0) == (0, 0) and cache.length(0, layer=1) == (0, 0)
    q, kv = _ones(1, 3, 4, HEAD_DIM), _ones(1, 3, 2, HEAD_DIM)
    out, lse = cache.decode(1, 0, q, kv, kv)
    # q = k = 1: every score is d / sqrt(d); token t sees t + 1 keys
    assert np.allclose(out, 1.0)
    assert np.allclose(lse[0], np.sqrt(HEAD_DIM) + np.log([1, 2, 3]))
    assert cache.length(0, 1) == (3, 3) and cache.length(0, 0) == (0, 0)
    per_token = 2 * 2 * HEAD_DIM * 4 + 8
    assert cache.nbytes == 2 * 2 * per_token  # two blocks of 2 tokens
    st = cache.stats()
    assert st["bytes_sent"] == 0 and st["pattern"] == -1 and st["tiles_computed"] > 0
    out2 = np.zeros_like(out)
    lse2 = np.zeros_like(lse)
    r = cache.decode(1, [0], q, kv, kv, out=out2, lse=lse2)
    assert r[0] is out2 and r[1] is lse2
    with pytest.raises(ValueError, match="overlap"):
        cache.decode(1, [0], q, kv, kv, out=q)
    with pytest.raises(ba.InvalidArgumentError):
        cache.length(5)
    with pytest.raises(TypeError):
        cache.length("0")
    cache.truncate([0], [1])
    assert cache.length(0, 1) == (1, 1) and cache.nbytes == 2 * per_token
    cache.drop(0)
    assert cache.nbytes == 0
    cache.add([0])
    ctx.close()  # closes the cache first
    assert cache.closed
    with pytest.raises(ValueError, match="closed KVCache"):
        cache.add([1])
    cache.close()  # idempotent


def test_del_destroys_and_context_survives():
    ctx = ba.Context.self()
    cache = make_cache(ctx)
    cache.add([0])
    del cache
    with make_cache(ctx) as again:
        again.add([0])
    ctx.close()


def test_bf16_as_uint16_and_ml_dtypes_agree():
    with ba.Context.self() as ctx, make_cache(ctx, dtype="bf16") as a, make_cache(ctx, dtype="bf16") as b:
        a.add([0]), b.add([0])
        rng = np.random.default_rng(3)
        q = ref.to_bf16_bits(rng.standard_normal((1, 2, 4, HEAD_DIM)))
        kv = ref.to_bf16_bits(rng.standard_normal((1, 2, 2, HEAD_DIM)))
        out, lse = a.decode(0, [0], q, kv, kv)
        assert out.dtype == a.storage_dtype
        if ba._plan.BFLOAT16 is not None:
            out_b, _ = b.decode(0, [0], q.view(ba._plan.BFLOAT16), kv.view(ba._plan.BFLOAT16),
                                kv.view(ba._plan.BFLOAT16))
            assert np.array_equal(out.view(np.uint16), out_b.view(np.uint16))


# --------------------------------------------------------------------------- torch

@pytest.mark.parametrize("world", [2], indirect=True)
@pytest.mark.parametrize("dtype", ["f32", "bf16"])
def test_torch_prefill_and_decode_match_numpy(world, dtype):
    torch = pytest.importorskip("torch")
    import burst_attention.torch as bt
    tdt = {"f32": torch.float32, "bf16": torch.bfloat16}[dtype]
    n = 9

    def fn(ctx):
        g = torch.Generator().manual_seed(4)
        q, k, v = (torch.randn(1, n, h, HEAD_DIM, generator=g).to(tdt) for h in (4, 2, 2))
        pos = bt.shard_positions("zigzag", n, ctx.size, ctx.rank)
        results = []
        for use_torch in (True, False):
            with make_cache(ctx, dtype=dtype) as cache, \
                    ctx.plan(1, len(pos), 4, HEAD_DIM, num_heads_kv=2, mask="causal",
                             distribution="zigzag", dtype=dtype, timeout_seconds=CALL_TIMEOUT) as plan:
                cache.add([0])
                kl, vl = k[:, pos].contiguous(), v[:, pos].contiguous()
                if use_torch:
                    bt.prefill(cache, 0, plan, [0], kl, vl)
                    out, lse = bt.decode(cache, 0, [0], q[:, :2], k[:, :2], v[:, :2])
                    assert out.dtype == tdt and lse.dtype == torch.float32
                    assert tuple(out.shape) == (1, 2, 4, HEAD_DIM) and tuple(lse.shape) == (1, 4, 2)
                    results.append((bt._np(out).copy(), lse.numpy().copy()))
                else:
                    cache.prefill(0, plan, [0], bt._np(kl), bt._np(vl))
                    out, lse = cache.decode(0, [0], bt._np(q[:, :2].contiguous()),
                                            bt._np(k[:, :2].contiguous()), bt._np(v[:, :2].contiguous()))
                    results.append((out, lse))
                # decode stores position p on rank p mod P
                extra = sum(1 for p in (n, n + 1) if p % ctx.size == ctx.rank)
                assert cache.length(0) == (n + 2, len(pos) + extra)
        (a, la), (b, lb) = results
        assert np.array_equal(a.view(np.uint8), b.view(np.uint8)) and np.array_equal(la, lb)
        return a

    outs = results_or_raise(run_ranks(world, fn))
    assert np.array_equal(outs[0].view(np.uint8), outs[1].view(np.uint8))


@pytest.mark.parametrize("world", [2], indirect=True)
def test_torch_decode_wrong_dtype_on_one_rank_fails_every_rank(world):
    torch = pytest.importorskip("torch")
    import burst_attention.torch as bt

    def fn(ctx):
        with make_cache(ctx) as cache:
            cache.add([0])
            dt = torch.float64 if ctx.rank == 1 else torch.float32
            q = torch.ones(1, 1, 4, HEAD_DIM, dtype=dt)
            kv = torch.ones(1, 1, 2, HEAD_DIM)
            bt.decode(cache, 0, [0], q, kv, kv)

    results = run_ranks(world, fn)
    assert isinstance(results[1][1], TypeError) and "torch.float32" in str(results[1][1])
    assert isinstance(results[0][1], ba.BurstError)
