"""Float64 numpy reference for attention forward and backward, plus sharding helpers.

Shared by test_binding.py, mpi_check.py (and mirrored in examples/python/demo.py).
Works on the *global* sequence; the tests slice its shards.

Math (per batch b and head h; s = softmax scale; positions global):
    S = s · Q Kᵀ, masked entries (j > i when causal) = -inf
    lse_i = log Σ_j exp(S_ij)            (-inf for a row that sees no key)
    P = exp(S − lse),  O = P V           (O row = 0 when lse = -inf)
    D_i = Σ_d dO_id O_id
    dP = dO Vᵀ,  dS = P ∘ (dP − D)
    dQ = s · dS K,  dK = s · dSᵀ Q,  dV = Pᵀ dO
GQA: query head h reads kv head h // (Hq / Hkv); dK/dV sum over the query heads of a group.
"""

from __future__ import annotations

import math

import numpy as np

BSHD, BHSD = "bshd", "bhsd"


def _norm_layout(layout) -> str:
    if isinstance(layout, str):
        return layout.lower()
    return BHSD if int(layout) == 1 else BSHD


def seq_axis(layout) -> int:
    """Axis of the sequence in a [b, s, h, d] (BSHD) or [b, h, s, d] (BHSD) tensor."""
    return 2 if _norm_layout(layout) == BHSD else 1


def to_bhsd(x: np.ndarray, layout) -> np.ndarray:
    return x if _norm_layout(layout) == BHSD else np.swapaxes(x, 1, 2)


def from_bhsd(x: np.ndarray, layout) -> np.ndarray:
    return np.ascontiguousarray(x if _norm_layout(layout) == BHSD else np.swapaxes(x, 1, 2))


def _scores(q, k, causal, scale):
    """q: [B,Hq,N,D], k: [B,Hq,N,D] (already expanded) -> masked scaled scores [B,Hq,N,N]."""
    s = scale * np.einsum("bhid,bhjd->bhij", q, k)
    if causal:
        n_q, n_k = s.shape[-2], s.shape[-1]
        visible = np.arange(n_k)[None, :] <= np.arange(n_q)[:, None]
        s = np.where(visible, s, -np.inf)
    return s


def _expand_kv(x, hq):
    hkv = x.shape[1]
    return np.repeat(x, hq // hkv, axis=1) if hkv != hq else x


def _lse(s):
    m = np.max(s, axis=-1, keepdims=True)
    m_safe = np.where(np.isfinite(m), m, 0.0)
    with np.errstate(divide="ignore"):
        lse = np.log(np.sum(np.exp(s - m_safe), axis=-1)) + m_safe[..., 0]
    return lse  # -inf where the row sees no key


def _probs(s, lse):
    lse_safe = np.where(np.isfinite(lse), lse, 0.0)[..., None]
    p = np.exp(s - lse_safe)
    return np.where(np.isfinite(lse)[..., None], p, 0.0)


def forward(q, k, v, causal=False, scale=None, layout=BSHD):
    """Float64 attention over the full sequence. Returns (out in `layout`, lse [B,Hq,N])."""
    qb, kb, vb = (to_bhsd(np.asarray(x, np.float64), layout) for x in (q, k, v))
    hq, d = qb.shape[1], qb.shape[3]
    scale = 1.0 / math.sqrt(d) if not scale else float(scale)
    kb, vb = _expand_kv(kb, hq), _expand_kv(vb, hq)
    s = _scores(qb, kb, causal, scale)
    lse = _lse(s)
    p = _probs(s, lse)
    out = np.einsum("bhij,bhjd->bhid", p, vb)
    return from_bhsd(out, layout), lse


def backward(q, k, v, dout, causal=False, scale=None, layout=BSHD):
    """Float64 gradients (dq, dk, dv) in `layout`, recomputing the forward."""
    qb, kb0, vb0, dob = (to_bhsd(np.asarray(x, np.float64), layout) for x in (q, k, v, dout))
    hq, hkv, d = qb.shape[1], kb0.shape[1], qb.shape[3]
    scale = 1.0 / math.sqrt(d) if not scale else float(scale)
    kb, vb = _expand_kv(kb0, hq), _expand_kv(vb0, hq)
    s = _scores(qb, kb, causal, scale)
    lse = _lse(s)
    p = _probs(s, lse)
    out = np.einsum("bhij,bhjd->bhid", p, vb)
    dd = np.sum(dob * out, axis=-1, keepdims=True)
    dp = np.einsum("bhid,bhjd->bhij", dob, vb)
    ds = p * (dp - dd)
    dq = scale * np.einsum("bhij,bhjd->bhid", ds, kb)
    dk = scale * np.einsum("bhij,bhid->bhjd", ds, qb)
    dv = np.einsum("bhij,bhid->bhjd", p, dob)
    if hkv != hq:  # sum the gradients of the query heads that share a kv head
        b, _, n, _ = dk.shape
        dk = dk.reshape(b, hkv, hq // hkv, n, d).sum(axis=2)
        dv = dv.reshape(b, hkv, hq // hkv, n, d).sum(axis=2)
    return from_bhsd(dq, layout), from_bhsd(dk, layout), from_bhsd(dv, layout)


# --------------------------------------------------------------------------- shards

def offsets(counts) -> list:
    """Start of each rank's shard: [0, n0, n0+n1, ...] (length P+1)."""
    out = [0]
    for c in counts:
        out.append(out[-1] + int(c))
    return out


def shard(x: np.ndarray, counts, rank: int, layout=BSHD) -> np.ndarray:
    """Rank `rank`'s contiguous shard of a global [b,s,h,d]/[b,h,s,d] tensor, as a
    C-contiguous float32 array."""
    off = offsets(counts)
    sl = [slice(None)] * x.ndim
    sl[seq_axis(layout)] = slice(off[rank], off[rank + 1])
    return np.ascontiguousarray(x[tuple(sl)], dtype=np.float32)


def shard_lse(lse: np.ndarray, counts, rank: int) -> np.ndarray:
    off = offsets(counts)
    return np.ascontiguousarray(lse[:, :, off[rank]:off[rank + 1]], dtype=np.float32)


def make_inputs(seed, batch, n_total, heads_q, heads_kv, head_dim, layout=BSHD):
    """Unit-scale float32 q, k, v, dout of the global sequence (identical on every rank
    for the same seed)."""
    rng = np.random.default_rng(seed)

    def tensor(h):
        shape = (batch, h, n_total, head_dim) if _norm_layout(layout) == BHSD else (batch, n_total, h, head_dim)
        return rng.standard_normal(shape).astype(np.float32)

    return tensor(heads_q), tensor(heads_kv), tensor(heads_kv), tensor(heads_q)


# --------------------------------------------------------------------------- errors

def rel_error(got, ref) -> float:
    """max|got − ref| / max|ref| (absolute when ref is all zero; 0 for empty)."""
    got, ref = np.asarray(got, np.float64), np.asarray(ref, np.float64)
    if ref.size == 0:
        return 0.0
    scale = float(np.max(np.abs(ref)))
    err = float(np.max(np.abs(got - ref)))
    return err / scale if scale > 0 else err


def lse_error(got, ref) -> float:
    """max |got − ref| over finite entries; inf if -inf patterns differ."""
    got, ref = np.asarray(got, np.float64), np.asarray(ref, np.float64)
    if ref.size == 0:
        return 0.0
    if not np.array_equal(np.isneginf(got), np.isneginf(ref)):
        return math.inf
    finite = np.isfinite(ref)
    if not finite.any():
        return 0.0
    return float(np.max(np.abs(got[finite] - ref[finite])))


def grad_scales(dq, dk, dv) -> tuple:
    """The max|ref| each gradient's error is measured against (DESIGN §3: 1e-4·max|ref|),
    floored at 1e-2 of the largest of the three. Where a gradient vanishes in exact
    arithmetic (every query sees one key: dS = P∘(dP − D) = 0), float32 leaves the
    rounding noise of dP − D (~1e-7·|dO||V|), which no bound relative to a zero can
    accept; with unit-scale inputs the three peaks are otherwise within a factor of a
    few, so the floor changes nothing else."""
    peaks = [float(np.max(np.abs(g))) if np.size(g) else 0.0 for g in (dq, dk, dv)]
    floor = 1e-2 * max(peaks)
    return tuple(max(p, floor) or 1.0 for p in peaks)


# DESIGN §3
OUT_TOL = 1e-5    # · max|ref|
GRAD_TOL = 1e-4   # · max|ref|
LSE_TOL = 1e-4    # absolute


def needs_block(counts, query_rank, key_rank, causal=False) -> bool:
    """Does any query of `query_rank` see any key of `key_rank` (contiguous shards,
    global positions)? Causal: the block's first key must not come after the
    query block's last position."""
    if counts[query_rank] == 0 or counts[key_rank] == 0:
        return False
    if not causal:
        return True
    off = offsets(counts)
    return off[key_rank] <= off[query_rank] + counts[query_rank] - 1


def stats_bytes_sent(counts, rank, z, d, kind, causal=False):
    """BURST pattern: this rank's burst_stats.bytes_sent for one forward or backward.

    forward:  Σ_{t=0}^{P−2} 8·Z·d·n_s, s = (r−t) mod P, over the hops where the K,V
              block of rank s is passed on, i.e. some rank still ahead on the ring
              (r+1 .. r+P−1−t) needs it (library: ShardLayout.forwardsBlock). With no
              mask and no empty shard every block is passed on:
              4·2·Z·d·Σ_{t=0}^{P−2} n_{(r−t) mod P}.
    backward: 4·Z·[Σ_{t=0}^{P−2} (3d+2)·n_{(r−t) mod P}   (Q, dO, partial dQ, D, lse)
                   + d·n_{(r+1) mod P}]                    (the last hop brings dQ home)
              — every transfer happens whatever the mask.
    Z = batch·heads; P = 1 sends nothing. bytes_received of rank r equals
    bytes_sent of rank r−1."""
    p = len(counts)
    if p == 1:
        return 0
    if kind == "forward":
        total = 0
        for t in range(p - 1):
            src = (rank - t) % p
            if any(needs_block(counts, (rank + a) % p, src, causal) for a in range(1, p - t)):
                total += 8 * z * d * int(counts[src])
        return total
    held = sum(int(counts[(rank - t) % p]) for t in range(p - 1))
    return 4 * z * ((3 * d + 2) * held + d * int(counts[(rank + 1) % p]))


def plain_bytes_sent(counts, rank, z, d, kind):
    """The closed forms without any skipping (forward 4·2·Z·d·Σ_{t=0}^{P−2} n_{(r−t) mod P});
    equal to stats_bytes_sent for mask none when no shard is empty."""
    p = len(counts)
    if p == 1:
        return 0
    held = sum(int(counts[(rank - t) % p]) for t in range(p - 1))
    if kind == "forward":
        return 4 * 2 * z * d * held
    return 4 * z * ((3 * d + 2) * held + d * int(counts[(rank + 1) % p]))
