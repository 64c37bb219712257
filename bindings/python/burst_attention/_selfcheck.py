"""The self-check of `python -m burst_attention`: small forward + backward runs on a
self context and on a 2-rank loopback context (one thread per rank), compared with a
float64 numpy reference of its own (nothing here comes from the repository's tests).

Math (per batch b and head h, BSHD arrays, s = softmax scale, causal: key j <= query i):
    S = s · Q Kᵀ (masked entries -inf),  lse = log Σ_j exp(S),  P = exp(S − lse)
    O = P V,  D = rowsum(dO ∘ O),  dS = P ∘ (dO Vᵀ − D)
    dQ = s · dS K,  dK = s · dSᵀ Q,  dV = Pᵀ dO
"""

from __future__ import annotations

import math
import threading

import numpy as np

# The problem: batch, tokens, heads, head dimension (BSHD); the loopback split.
B, N, H, D = 1, 64, 2, 16
LOOPBACK_COUNTS = (27, 37)
TOLERANCE = 1e-5          # max |got − ref| / max |ref|, per array
CALL_TIMEOUT = 60.0       # seconds, per library call (the plan's timeout)
JOIN_TIMEOUT = 3 * CALL_TIMEOUT


def reference(q, k, v, dout, causal):
    """Float64 (out, lse, dq, dk, dv) of full attention; q, k, v, dout are BSHD,
    lse is [B, H, N]; scale 1/sqrt(d)."""
    q, k, v, do = (np.swapaxes(np.asarray(x, np.float64), 1, 2) for x in (q, k, v, dout))
    n, d = q.shape[2], q.shape[3]
    scale = 1.0 / math.sqrt(d)
    s = scale * np.einsum("bhid,bhjd->bhij", q, k)
    if causal:
        s = np.where(np.tril(np.ones((n, n), bool)), s, -np.inf)
    m = s.max(axis=-1, keepdims=True)
    lse = np.log(np.exp(s - m).sum(axis=-1)) + m[..., 0]
    p = np.exp(s - lse[..., None])
    out = p @ v
    dd = (do * out).sum(axis=-1, keepdims=True)
    ds = p * (do @ np.swapaxes(v, -1, -2) - dd)
    dq = scale * ds @ k
    dk = scale * np.swapaxes(ds, -1, -2) @ q
    dv = np.swapaxes(p, -1, -2) @ do
    bshd = lambda x: np.swapaxes(x, 1, 2)  # noqa: E731
    return bshd(out), lse, bshd(dq), bshd(dk), bshd(dv)


def relative_error(got, want) -> float:
    want = np.asarray(want, np.float64)
    scale = float(np.max(np.abs(want))) if want.size else 0.0
    err = float(np.max(np.abs(np.asarray(got, np.float64) - want))) if want.size else 0.0
    return err / scale if scale > 0 else err


def problem(seed):
    rng = np.random.default_rng(seed)
    return [rng.standard_normal((B, N, H, D)).astype(np.float32) for _ in range(4)]


def _compare(got, want, tol):
    names = ("out", "lse", "dq", "dk", "dv")
    errors = {name: relative_error(g, w) for name, g, w in zip(names, got, want)}
    ok = all(e <= tol for e in errors.values()) and all(
        np.all(np.isfinite(g)) for g in got)
    detail = ", ".join(f"{name} {e:.1e}" for name, e in errors.items())
    return ok, f"max rel err {detail} (tolerance {tol:.0e})"


def check_self(ba, causal, tol=TOLERANCE):
    q, k, v, dout = problem(1 + causal)
    with ba.Context.self() as ctx:
        with ctx.plan(B, N, H, D, layout="bshd", mask="causal" if causal else "none",
                      timeout_seconds=CALL_TIMEOUT) as plan:
            out, lse = plan.forward(q, k, v)
            dq, dk, dv = plan.backward(q, k, v, out, lse, dout)
    return _compare((out, lse, dq, dk, dv), reference(q, k, v, dout, causal), tol)


def check_loopback(ba, causal, counts=LOOPBACK_COUNTS, tol=TOLERANCE):
    """Contiguous shards of the same problem on len(counts) loopback ranks, one thread
    each; the gathered results against the reference."""
    assert sum(counts) == N
    q, k, v, dout = problem(3 + causal)
    offsets = np.concatenate([[0], np.cumsum(counts)]).astype(int)
    shard = lambda x, r: np.ascontiguousarray(x[:, offsets[r]:offsets[r + 1]])  # noqa: E731
    results = [None] * len(counts)
    errors = [None] * len(counts)
    contexts = ba.Context.loopback(len(counts))

    def rank(r):
        try:
            with contexts[r].plan(B, counts[r], H, D, layout="bshd",
                                  mask="causal" if causal else "none",
                                  timeout_seconds=CALL_TIMEOUT) as plan:
                args = [shard(x, r) for x in (q, k, v)]
                out, lse = plan.forward(*args)
                grads = plan.backward(*args, out, lse, shard(dout, r))
            results[r] = (out, lse, *grads)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors[r] = exc

    threads = [threading.Thread(target=rank, args=(r,), daemon=True) for r in range(len(counts))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(JOIN_TIMEOUT)
    if any(t.is_alive() for t in threads):
        return False, f"a rank did not finish within {JOIN_TIMEOUT:.0f} s"
    for c in contexts:
        c.close()
    for r, exc in enumerate(errors):
        if exc is not None:
            return False, f"rank {r}: {type(exc).__name__}: {exc}"
    got = [np.concatenate([res[i] for res in results], axis=2 if i == 1 else 1)
           for i in range(5)]
    return _compare(got, reference(q, k, v, dout, causal), tol)


def check_torch(causal, tol=TOLERANCE):
    """burst_attention.torch.burst_attn (one rank) forward + autograd backward."""
    import torch

    import burst_attention.torch as bt

    q, k, v, dout = (torch.from_numpy(x) for x in problem(5 + causal))
    import burst_attention as ba

    leaves = [x.clone().requires_grad_() for x in (q, k, v)]
    with ba.Context.self() as ctx:
        out, lse = bt.burst_attn(*leaves, causal=causal, return_lse=True, comm=ctx,
                                 timeout_seconds=CALL_TIMEOUT)
        out.backward(dout)
    got = [out.detach().numpy(), lse.numpy()] + [x.grad.numpy() for x in leaves]
    return _compare(got, reference(q.numpy(), k.numpy(), v.numpy(), dout.numpy(), causal), tol)


def torch_available() -> bool:
    try:
        import torch  # noqa: F401
    except ImportError:
        return False
    return True


def run(ba, report, tol=TOLERANCE) -> bool:
    """Runs every check; report(ok, line) gets one PASS/FAIL line each. True when all
    passed."""
    checks = []
    for causal in (False, True):
        mask = "causal" if causal else "none"
        checks.append((f"self context, forward+backward, B={B} N={N} H={H} d={D} mask={mask}",
                       lambda causal=causal: check_self(ba, causal, tol)))
    for causal in (False, True):
        mask = "causal" if causal else "none"
        checks.append((f"loopback(2) context, 2 threads, tokens {LOOPBACK_COUNTS[0]}+"
                       f"{LOOPBACK_COUNTS[1]}, mask={mask}",
                       lambda causal=causal: check_loopback(ba, causal, tol=tol)))
    if torch_available():
        for causal in (False, True):
            mask = "causal" if causal else "none"
            checks.append((f"torch layer burst_attn, autograd backward, mask={mask}",
                           lambda causal=causal: check_torch(causal, tol)))
    all_ok = True
    for name, fn in checks:
        try:
            ok, detail = fn()
        except Exception as exc:  # noqa: BLE001 - a failed check, not a crash
            ok, detail = False, f"{type(exc).__name__}: {exc}"
        report(ok, f"{'PASS' if ok else 'FAIL'} {name}: {detail}")
        all_ok &= ok
    return all_ok
