"""Float64 numpy reference for attention forward and backward, the header's token
distributions, and sharding helpers — written from include/burst_attention.h alone,
independent of the library, so the library's results *and* its shard positions and
byte counts are checked against a separate implementation.

Shared by test_binding.py, mpi_check.py (and mirrored in examples/python/demo.py).
Works on the *global* sequence; the tests take its shards.

Math (per batch b and head h; s = softmax scale; positions global):
    S = s · Q Kᵀ, entries whose key is not visible to the query = -inf
    lse_i = log Σ_j exp(S_ij)            (-inf for a row that sees no key)
    P = exp(S − lse),  O = P V           (O row = 0 when lse = -inf)
    D_i = Σ_d dO_id O_id
    dP = dO Vᵀ,  dS = P ∘ (dP − D)
    dQ = s · dS K,  dK = s · dSᵀ Q,  dV = Pᵀ dO
Visibility (header, "Which keys a query sees"): key j is visible to query i when
    i − window_left ≤ j ≤ i + window_right   (−1 = unbounded side),
    j ≤ i                                    if causal,
    i and j lie in the same sequence         if cu_seqlens is given.
GQA: query head h reads kv head h // (Hq / Hkv); dK/dV sum over the query heads of a group.
Score modifiers (0.8, header "Score modifiers"):
    softcap c > 0: X = c · tanh(S / c) replaces S (masked entries stay -inf); the
        backward multiplies dS by dX/dS = 1 − (X / c)²
    sinks s_h:  lse_i = log(Σ_j exp(X_ij) + exp(s_h))  (= s_h for a row that sees no key),
        P = exp(X − lse), O = P V, the rest as above (the sink has no value, so D and
        dS keep their form), and dL/ds_h = −Σ_{b,i} exp(s_h − lse_i) · D_i
        (`backward_full` returns the per-row terms: a rank's partial sums its own rows).
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


# --------------------------------------------------------------------------- masks

def sequence_ids(n_total: int, cu_seqlens=None) -> np.ndarray:
    """The packed sequence each global position belongs to (all 0 without packing).
    Empty sequences own no position."""
    if cu_seqlens is None:
        return np.zeros(n_total, np.int64)
    cu = np.asarray(cu_seqlens, np.int64)
    return np.searchsorted(cu, np.arange(n_total), side="right") - 1


def visibility(n_total: int, causal=False, window_left=-1, window_right=-1,
               cu_seqlens=None) -> np.ndarray:
    """visible[i, j]: does query position i see key position j? [N, N] bool."""
    i = np.arange(n_total)[:, None]
    j = np.arange(n_total)[None, :]
    visible = np.ones((n_total, n_total), bool)
    if window_left != -1:
        visible &= j >= i - window_left
    if window_right != -1:
        visible &= j <= i + window_right
    if causal:
        visible &= j <= i
    if cu_seqlens is not None:
        seq = sequence_ids(n_total, cu_seqlens)
        visible &= seq[:, None] == seq[None, :]
    return visible


def _scores(q, k, causal, scale, visible=None):
    """q: [B,Hq,N,D], k: [B,Hq,N,D] (already expanded) -> masked scaled scores [B,Hq,N,N].
    `visible` ([N,N] bool), when given, replaces the plain causal mask."""
    s = scale * np.einsum("bhid,bhjd->bhij", q, k)
    if visible is None and causal:
        visible = visibility(s.shape[-1], causal=True)
    if visible is not None:
        s = np.where(visible, s, -np.inf)
    return s


def _expand_kv(x, hq):
    hkv = x.shape[1]
    return np.repeat(x, hq // hkv, axis=1) if hkv != hq else x


def _lse(s):
    if s.shape[-1] == 0:  # no keys at all (N = 0)
        return np.full(s.shape[:-1], -np.inf)
    m = np.max(s, axis=-1, keepdims=True)
    m_safe = np.where(np.isfinite(m), m, 0.0)
    with np.errstate(divide="ignore"):
        lse = np.log(np.sum(np.exp(s - m_safe), axis=-1)) + m_safe[..., 0]
    return lse  # -inf where the row sees no key


def _probs(s, lse):
    lse_safe = np.where(np.isfinite(lse), lse, 0.0)[..., None]
    p = np.exp(s - lse_safe)
    return np.where(np.isfinite(lse)[..., None], p, 0.0)


def _softcap(s, softcap):
    """c · tanh(s / c) for c > 0 (masked -inf entries stay -inf); s itself for c = 0."""
    if not softcap:
        return s
    c = float(softcap)
    return np.where(np.isneginf(s), -np.inf, c * np.tanh(s / c))


def _with_sinks(lse, sinks):
    """lse of the keys [B,Hq,N] -> log(exp(lse) + exp(s_h)) with the sinks [Hq]."""
    if sinks is None:
        return lse
    s = np.asarray(sinks, np.float64).reshape(1, -1, 1)
    return np.logaddexp(lse, s)


def _visible(n_total, causal, window_left, window_right, cu_seqlens):
    if window_left == -1 and window_right == -1 and cu_seqlens is None:
        return None  # the plain causal (or no) mask
    return visibility(n_total, causal, window_left, window_right, cu_seqlens)


def forward(q, k, v, causal=False, scale=None, layout=BSHD, window_left=-1, window_right=-1,
            cu_seqlens=None, softcap=0.0, sinks=None):
    """Float64 attention over the full sequence, with the header's full mask (causal,
    window, packing), GQA and the score modifiers (softcap c: 0 = off; sinks: None or
    Hq logits). Returns (out in `layout`, lse [B,Hq,N])."""
    qb, kb, vb = (to_bhsd(np.asarray(x, np.float64), layout) for x in (q, k, v))
    hq, d = qb.shape[1], qb.shape[3]
    scale = 1.0 / math.sqrt(d) if not scale else float(scale)
    kb, vb = _expand_kv(kb, hq), _expand_kv(vb, hq)
    visible = _visible(qb.shape[2], causal, window_left, window_right, cu_seqlens)
    x = _softcap(_scores(qb, kb, causal, scale, visible), softcap)
    lse = _with_sinks(_lse(x), sinks)
    p = _probs(x, lse)
    out = np.einsum("bhij,bhjd->bhid", p, vb)
    return from_bhsd(out, layout), lse


def backward(q, k, v, dout, causal=False, scale=None, layout=BSHD, window_left=-1,
             window_right=-1, cu_seqlens=None, given_out=None, softcap=0.0, sinks=None):
    """Float64 gradients (dq, dk, dv) in `layout`, recomputing the forward (same mask
    and modifier arguments as `forward`). With `given_out` (the rounded out a bf16/fp16
    backward is handed), D = rowsum(dout * given_out) as the library computes it."""
    return backward_full(q, k, v, dout, causal, scale, layout, window_left, window_right,
                         cu_seqlens, given_out, softcap, sinks)[:3]


def backward_full(q, k, v, dout, causal=False, scale=None, layout=BSHD, window_left=-1,
                  window_right=-1, cu_seqlens=None, given_out=None, softcap=0.0, sinks=None):
    """`backward`'s (dq, dk, dv) and the sinks' per-row terms dsink_rows [B,Hq,N] =
    −exp(s_h − lse_i)·D_i (zeros without sinks): dL/ds = dsink_rows.sum((0, 2)), and a
    rank's partial (burst_plan_sinks_gradient) is `sinks_partial(dsink_rows, its
    positions)`."""
    qb, kb0, vb0, dob = (to_bhsd(np.asarray(x, np.float64), layout) for x in (q, k, v, dout))
    hq, hkv, d = qb.shape[1], kb0.shape[1], qb.shape[3]
    scale = 1.0 / math.sqrt(d) if not scale else float(scale)
    kb, vb = _expand_kv(kb0, hq), _expand_kv(vb0, hq)
    visible = _visible(qb.shape[2], causal, window_left, window_right, cu_seqlens)
    x = _softcap(_scores(qb, kb, causal, scale, visible), softcap)
    lse = _with_sinks(_lse(x), sinks)
    p = _probs(x, lse)
    out = np.einsum("bhij,bhjd->bhid", p, vb)
    if given_out is not None:
        out = to_bhsd(np.asarray(given_out, np.float64), layout)
    dd = np.sum(dob * out, axis=-1, keepdims=True)
    dp = np.einsum("bhid,bhjd->bhij", dob, vb)
    ds = p * (dp - dd)
    if softcap:  # the chain rule through c·tanh(S/c); masked entries have p = 0
        finite = np.isfinite(x)
        ds = np.where(finite, ds * (1.0 - (np.where(finite, x, 0.0) / float(softcap)) ** 2), 0.0)
    dq = scale * np.einsum("bhij,bhjd->bhid", ds, kb)
    dk = scale * np.einsum("bhij,bhid->bhjd", ds, qb)
    dv = np.einsum("bhij,bhid->bhjd", p, dob)
    if hkv != hq:  # sum the gradients of the query heads that share a kv head
        b, _, n, _ = dk.shape
        dk = dk.reshape(b, hkv, hq // hkv, n, d).sum(axis=2)
        dv = dv.reshape(b, hkv, hq // hkv, n, d).sum(axis=2)
    if sinks is None:
        dsink_rows = np.zeros(lse.shape)
    else:
        sb = np.asarray(sinks, np.float64).reshape(1, -1, 1)
        dsink_rows = -np.exp(sb - lse) * dd[..., 0]
    return from_bhsd(dq, layout), from_bhsd(dk, layout), from_bhsd(dv, layout), dsink_rows


def sinks_partial(dsink_rows, pos=None) -> np.ndarray:
    """dL/ds [Hq] summed over the batch and the rows at global positions `pos` (one
    rank's partial), or over every row (the full gradient) when pos is None."""
    rows = dsink_rows if pos is None else np.take(dsink_rows, np.asarray(pos, np.int64), axis=2)
    return rows.sum(axis=(0, 2))


def make_sinks(seed, heads_q) -> np.ndarray:
    """Sink logits of the size real models learn (gpt-oss: around 0..3), float32 (the
    library's type), one per query head; the same on every rank for the same seed."""
    rng = np.random.default_rng(seed + 77)
    return rng.uniform(-1.0, 2.5, heads_q).astype(np.float32)


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


# --------------------------------------------------------------------------- distributions
# The header's BURST_DISTRIBUTION_* rules, re-implemented with plain Python/numpy.

CONTIGUOUS, ZIGZAG, STRIPED = "contiguous", "zigzag", "striped"
DISTRIBUTIONS = (CONTIGUOUS, ZIGZAG, STRIPED)


def _norm_distribution(distribution) -> str:
    if isinstance(distribution, str):
        return distribution.lower()
    return DISTRIBUTIONS[int(distribution)]


def balanced_counts(n_total: int, world_size: int) -> list:
    """CONTIGUOUS as the helpers propose it: floor(N/P) each, the first N mod P one more."""
    base, extra = divmod(n_total, world_size)
    return [base + (1 if r < extra else 0) for r in range(world_size)]


def zigzag_chunks(length: int, world_size: int) -> list:
    """[(start, end)] of the 2P chunks of a run of `length` tokens: chunk c holds
    floor(L/2P) tokens, plus one if c < L mod 2P."""
    sizes = balanced_counts(length, 2 * world_size)
    starts = offsets(sizes)
    return [(starts[c], starts[c + 1]) for c in range(2 * world_size)]


def positions(distribution, n_total: int, world_size: int, rank: int, cu_seqlens=None,
              counts=None) -> np.ndarray:
    """The global positions rank `rank` holds, increasing (int64).

    CONTIGUOUS: `counts` (any split summing to N) or the balanced split.
    ZIGZAG: chunks r and 2P-1-r of the whole sequence, or of every packed sequence
    (sequence after sequence) when cu_seqlens is given.
    STRIPED: t with t mod P == rank (over the whole packed buffer)."""
    dist = _norm_distribution(distribution)
    p = world_size
    if dist == CONTIGUOUS:
        counts = balanced_counts(n_total, p) if counts is None else [int(c) for c in counts]
        assert len(counts) == p and sum(counts) == n_total, (counts, n_total)
        off = offsets(counts)
        return np.arange(off[rank], off[rank + 1], dtype=np.int64)
    if dist == STRIPED:
        return np.arange(rank, n_total, p, dtype=np.int64)
    assert dist == ZIGZAG, distribution
    runs = [(0, n_total)] if cu_seqlens is None else [
        (int(a), int(b)) for a, b in zip(cu_seqlens[:-1], cu_seqlens[1:])]
    out = []
    for start, end in runs:
        chunks = zigzag_chunks(end - start, p)
        for c in (rank, 2 * p - 1 - rank):
            a, b = chunks[c]
            out.extend(range(start + a, start + b))
    return np.asarray(out, dtype=np.int64)


def all_positions(distribution, n_total, world_size, cu_seqlens=None, counts=None) -> list:
    """positions() of every rank."""
    return [positions(distribution, n_total, world_size, r, cu_seqlens, counts)
            for r in range(world_size)]


def take(x: np.ndarray, pos, axis: int) -> np.ndarray:
    """The rows `pos` of x along `axis`, as a C-contiguous array of x's dtype."""
    return np.ascontiguousarray(np.take(x, np.asarray(pos, np.int64), axis=axis))


def shard_at(x: np.ndarray, pos, layout=BSHD) -> np.ndarray:
    """A [b,s,h,d]/[b,h,s,d] tensor's rows at global positions `pos`, float32."""
    return np.ascontiguousarray(take(x, pos, seq_axis(layout)), dtype=np.float32)


def shard_lse_at(lse: np.ndarray, pos) -> np.ndarray:
    return np.ascontiguousarray(take(lse, pos, 2), dtype=np.float32)


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

# compute="fast" (BURST_COMPUTE_FAST: bf16 products) against the float64 reference of
# the bf16-rounded inputs: the header's provisional bounds, the one place the Python
# tests keep them (torch_reference.py imports them); the kernels' engineer may tighten them.
FAST_OUT_TOL = 6e-3    # · max|ref|
FAST_GRAD_TOL = 1.2e-2  # · max|ref|
FAST_LSE_TOL = 1e-4    # absolute


def round_bf16(x) -> np.ndarray:
    """Values rounded to bfloat16 (nearest even, through float32), as float64: the
    inputs compute="fast" multiplies."""
    return from_bf16_bits(to_bf16_bits(np.asarray(x, np.float32))).astype(np.float64)


def needs_matrix(rank_positions, visible) -> np.ndarray:
    """needs[a][b]: some query of rank a sees some key of rank b (both non-empty),
    brute force from the ranks' positions and the [N,N] visibility matrix."""
    p = len(rank_positions)
    needs = np.zeros((p, p), bool)
    for a, pa in enumerate(rank_positions):
        for b, pb in enumerate(rank_positions):
            if len(pa) and len(pb):
                needs[a, b] = bool(visible[np.ix_(pa, pb)].any())
    return needs


def burst_traffic(counts, needs, z_q, z_kv, d, kind) -> dict:
    """BURST pattern, one forward or backward: per-rank bytes_sent, bytes_received and
    messages_sent (lists by rank), simulated hop by hop from the needs matrix.

    forward:  at hop t = 0..P-2 rank r holds the K|V block of s = (r - t) mod P and
              sends it on to r+1 (2·Z_kv·n_s·d·4 bytes, 1 message) iff some rank among
              r+1 .. r+(P-1-t) needs it.
    backward: the bundle [Q|dO|D|lse] of owner j (Z_q·n_j·(2d+2)·4 bytes) and its partial
              dQ (Z_q·n_j·d·4 bytes) travel j → j+1 → ... for t = 0 .. last(j)-1 (2
              messages a hop), where last(j) = the largest t in 1..P-1 with
              needs[j][(j+t) mod P] (0 if none, or n_j = 0); at t = last(j) ≥ 1 the rank
              (j+last) sends dQ home to j (1 message).
    P = 1 moves nothing. 4 bytes per float."""
    p = len(counts)
    sent, received, messages = [0] * p, [0] * p, [0] * p

    def send(src, dst, nbytes):
        sent[src] += nbytes
        received[dst] += nbytes
        messages[src] += 1

    if kind == "forward":
        for r in range(p):
            for t in range(p - 1):
                s = (r - t) % p
                if any(needs[(r + a) % p][s] for a in range(1, p - t)):
                    send(r, (r + 1) % p, 2 * z_kv * int(counts[s]) * d * 4)
    else:
        assert kind == "backward", kind
        for j in range(p):
            n = int(counts[j])
            last = max([t for t in range(1, p) if needs[j][(j + t) % p]], default=0) if n else 0
            for t in range(last):
                src = (j + t) % p
                send(src, (src + 1) % p, z_q * n * (2 * d + 2) * 4)
                send(src, (src + 1) % p, z_q * n * d * 4)
            if last >= 1:
                send((j + last) % p, j, z_q * n * d * 4)
    return {"bytes_sent": sent, "bytes_received": received, "messages_sent": messages}


# A tile (header, burst_stats): one head x up to 256 queries x up to 128 keys, cut
# from a rank's local rows in order.
TILE_QUERIES, TILE_KEYS = 256, 128


def _tiles(q_pos, k_pos, visible) -> tuple:
    """(tiles with at least one visible pair, all tiles) of one head for queries at
    global positions q_pos against keys at k_pos."""
    nq, nk = len(q_pos), len(k_pos)
    dense = -(-nq // TILE_QUERIES) * -(-nk // TILE_KEYS)
    if dense == 0:
        return 0, 0
    sub = visible[np.ix_(np.asarray(q_pos), np.asarray(k_pos))]
    computed = 0
    for a in range(0, nq, TILE_QUERIES):
        for b in range(0, nk, TILE_KEYS):
            computed += bool(sub[a:a + TILE_QUERIES, b:b + TILE_KEYS].any())
    return computed, dense


def step_tile_stats(rank_positions, visible, z_q, kind) -> list:
    """Per rank: steps_computed, steps_skipped, tiles_computed, tiles_skipped of one
    forward or backward. A rank runs P ring steps; a step has local work when its block
    pair has a visible (query, key) pair: forward, rank r's queries against the keys of
    every rank s; backward, the queries of every rank j against rank r's keys. A tile
    with no visible pair is skipped; the dense schedule computes every tile of every
    step (Z_q = batch·num_heads_q heads)."""
    p = len(rank_positions)
    out = []
    for r in range(p):
        steps = tiles = dense = 0
        for x in range(p):
            q_pos, k_pos = ((rank_positions[r], rank_positions[x]) if kind == "forward"
                            else (rank_positions[x], rank_positions[r]))
            c, t = _tiles(q_pos, k_pos, visible)
            steps += c > 0
            tiles += c
            dense += t
        out.append({"steps_computed": steps, "steps_skipped": p - steps,
                    "tiles_computed": z_q * tiles, "tiles_skipped": z_q * (dense - tiles)})
    return out


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


def contiguous_traffic(counts, z, d, kind, causal=False) -> dict:
    """`burst_traffic` for contiguous shards of MHA (Z = batch·heads) under no mask or
    the causal mask (needs matrix of `needs_block`)."""
    p = len(counts)
    needs = [[needs_block(counts, a, b, causal) for b in range(p)] for a in range(p)]
    return burst_traffic(counts, needs, z, z, d, kind)


def stats_bytes_sent(counts, rank, z, d, kind, causal=False):
    """BURST pattern, contiguous shards of MHA: rank's burst_stats.bytes_sent for one
    forward or backward. With no mask and no empty shard nothing is skipped
    (`plain_bytes_sent`)."""
    return contiguous_traffic(counts, z, d, kind, causal)["bytes_sent"][rank]


def stats_bytes_received(counts, rank, z, d, kind, causal=False):
    """As `stats_bytes_sent`, for bytes_received: the forward's come from rank − 1; in
    the backward dQ comes home from the last rank that needed this rank's keys."""
    return contiguous_traffic(counts, z, d, kind, causal)["bytes_received"][rank]


def plain_bytes_sent(counts, rank, z, d, kind):
    """The closed forms without any skipping: forward 4·2·Z·d·Σ_{t=0}^{P−2} n_{(r−t) mod P},
    backward 4·Z·[(3d+2)·Σ_{t=0}^{P−2} n_{(r−t) mod P} + d·n_{(r+1) mod P}] (the bundle
    and partial dQ of every other rank pass through, then dQ of r+1 goes home); equal
    to stats_bytes_sent for mask none when no shard is empty."""
    p = len(counts)
    if p == 1:
        return 0
    held = sum(int(counts[(rank - t) % p]) for t in range(p - 1))
    if kind == "forward":
        return 4 * 2 * z * d * held
    return 4 * z * ((3 * d + 2) * held + d * int(counts[(rank + 1) % p]))


# --------------------------------------------------------------------------- storage types

UNIT_ROUNDOFF = {"bf16": 2.0 ** -8, "f16": 2.0 ** -11}
SUBNORMAL_STEP = {"bf16": 0.0, "f16": 2.0 ** -24}


def to_bf16_bits(x) -> np.ndarray:
    """float32 values -> uint16 bfloat16 bits, round to nearest even (NaN quieted)."""
    u = np.ascontiguousarray(x, np.float32).view(np.uint32).astype(np.uint64)
    nan = (u & 0x7FFFFFFF) > 0x7F800000
    r = ((u + 0x7FFF + ((u >> 16) & 1)) >> 16).astype(np.uint16)
    return np.where(nan, ((u >> 16) | 0x40).astype(np.uint16), r)


def from_bf16_bits(h) -> np.ndarray:
    """uint16 bfloat16 bits -> float32 (exact)."""
    return (np.asarray(h, np.uint16).astype(np.uint32) << 16).view(np.float32)


def to_storage(x, dtype: str) -> np.ndarray:
    """float values -> the library's storage array: float16, or uint16 bfloat16 bits."""
    return np.asarray(x, np.float32).astype(np.float16) if dtype == "f16" else to_bf16_bits(x)


def from_storage(x, dtype: str) -> np.ndarray:
    """A storage array (float16, uint16 bfloat16 bits, or ml_dtypes.bfloat16) -> float64."""
    x = np.asarray(x)
    if dtype == "bf16" and x.dtype != np.uint16:
        x = x.view(np.uint16)
    return (x.astype(np.float64) if dtype == "f16" else from_bf16_bits(x).astype(np.float64))


def half_excess(got, want, dtype: str, tol: float, floor: float = 0.0) -> float:
    """max |got - want| / (tol*max|want|*(1+u) + u*|want| + sub) over the elements: the
    storage-type contract (docs/storage-types.md) holds when it is <= 1."""
    want = np.asarray(want, np.float64)
    if want.size == 0:
        return 0.0
    u, sub = UNIT_ROUNDOFF[dtype], SUBNORMAL_STEP[dtype]
    scale = max(float(np.abs(want).max()), floor)
    allowed = tol * scale * (1 + u) + u * np.abs(want) + sub
    return float(np.max(np.abs(from_storage(got, dtype) - want) / allowed))
