"""A float64 model of burst_kv_cache (include/burst_attention.h, "Inference"), written
from the header alone, and a `Runner` that plays a script of cache calls on one rank and
checks every result against the model. Shared by test_kvcache.py (loopback ranks on
threads) and kvcache_mpi_check.py (MPI ranks).

The model keeps, for every sequence and layer, each stored token's position, K, V (the
values the library stores: the storage-rounded inputs, as float64) and the rank that
holds it:
  * prefill: a prompt token sits on the rank the plan's distribution gave it, at its
    position inside its own sequence;
  * decode: the T new tokens of a sequence take positions p0 .. p0+T-1 (p0 = its length
    in the layer, or the caller's start position) and the one at position p goes to
    rank p mod P. Then the new token at position i attends to every stored key at a
    position j with i - window_left <= j <= i (window_left = -1: unbounded), itself and
    the new tokens before it included; GQA query head h reads kv head h // (Hq/Hkv);
    scale 1/sqrt(d) unless given. Score modifiers (0.8): softcap c caps every scaled
    score to c·tanh(x/c); sinks [num_layers, Hq] add exp(s) once to each new row's
    softmax denominator (reference.py states both).
  * truncate keeps the positions < length; a sequence's length is its largest stored
    position + 1 (0 when empty).
  * memory: blocks of block_tokens tokens per (sequence, layer) on each rank, a token
    costing 2*Hkv*d*e bytes of K,V (e = 4 for f32, 2 for bf16/f16) plus an 8-byte
    position, so a rank holds ceil(local_tokens / block_tokens) blocks of each.
"""

from __future__ import annotations

import hashlib
import math

import numpy as np

import reference as ref

ELEMENT_BYTES = {"f32": 4, "bf16": 2, "f16": 2}


class Model:
    """The float64 model of one cache over `world` ranks."""

    def __init__(self, world, num_layers, hq, hkv, d, window_left=-1, softmax_scale=0.0,
                 block_tokens=0, dtype="f32", softcap=0.0, sinks=None):
        self.world, self.num_layers = world, num_layers
        self.hq, self.hkv, self.d = hq, hkv, d
        self.window_left = window_left
        self.softmax_scale = softmax_scale
        self.scale = float(softmax_scale) if softmax_scale else 1.0 / math.sqrt(d)
        self.block_tokens = block_tokens or 256
        self.dtype = dtype
        self.softcap = softcap
        # [num_layers, hq] float32 sink logits (the values the library gets), or None
        self.sinks = None if sinks is None else np.asarray(sinks, np.float32).reshape(num_layers, hq)
        # seq id -> [per layer: {position: (k [hkv, d], v [hkv, d], rank)}]
        self.seqs: "dict[int, list[dict]]" = {}

    # sequences
    def add(self, ids):
        for s in ids:
            assert s not in self.seqs, s
            self.seqs[s] = [{} for _ in range(self.num_layers)]

    def drop(self, ids):
        for s in ids:
            del self.seqs[s]

    def truncate(self, ids, lengths):
        for s, n in zip(ids, lengths):
            for layer in self.seqs[s]:
                for p in [p for p in layer if p >= n]:
                    del layer[p]

    def length(self, seq, layer) -> int:
        stored = self.seqs[seq][layer]
        return max(stored) + 1 if stored else 0

    def local_tokens(self, seq, layer, rank) -> int:
        return sum(1 for (_, _, r) in self.seqs[seq][layer].values() if r == rank)

    def nbytes(self, rank) -> int:
        per_token = 2 * self.hkv * self.d * ELEMENT_BYTES[self.dtype] + 8
        blocks = sum(-(-self.local_tokens(s, l, rank) // self.block_tokens)
                     for s in self.seqs for l in range(self.num_layers))
        return blocks * self.block_tokens * per_token

    # prefill / decode
    def prefill(self, layer, ids, cu_seqlens, k, v, owner):
        """k, v: [1, N, hkv, d] float64 of the packed prompt; owner[g]: the rank holding
        global position g."""
        for s, a, b in zip(ids, cu_seqlens[:-1], cu_seqlens[1:]):
            stored = self.seqs[s][layer]
            assert not stored, (s, layer)
            for g in range(a, b):
                stored[g - a] = (k[0, g], v[0, g], int(owner[g]))

    def decode(self, layer, ids, q, k, v, positions=None):
        """q: [S, T, hq, d], k, v: [S, T, hkv, d] float64 (BSHD). Stores the new tokens,
        returns (out [S, T, hq, d], lse [S, hq, T]) in float64."""
        s_count, t_count = q.shape[0], q.shape[1]
        out = np.zeros((s_count, t_count, self.hq, self.d))
        lse = np.full((s_count, self.hq, t_count), -np.inf)
        group = self.hq // self.hkv
        for i, s in enumerate(ids):
            stored = self.seqs[s][layer]
            p0 = self.length(s, layer) if positions is None else int(positions[i])
            for t in range(t_count):
                p = p0 + t
                stored[p] = (k[i, t], v[i, t], p % self.world)
            for t in range(t_count):
                p = p0 + t
                visible = sorted(j for j in stored
                                 if j <= p and (self.window_left == -1 or j >= p - self.window_left))
                keys = np.stack([stored[j][0] for j in visible])    # [n, hkv, d]
                values = np.stack([stored[j][1] for j in visible])
                for h in range(self.hq):
                    scores = self.scale * (keys[:, h // group] @ q[i, t, h])
                    if self.softcap:
                        scores = self.softcap * np.tanh(scores / self.softcap)
                    m = scores.max()
                    w = np.exp(scores - m)
                    total = w.sum()
                    if self.sinks is not None:
                        total += math.exp(float(self.sinks[layer, h]) - m)
                    lse[i, h, t] = m + math.log(total)
                    out[i, t, h] = (w / total) @ values[:, h // group]
        return out, lse


# --------------------------------------------------------------------------- storage

def to_storage(x: np.ndarray, dtype: str) -> np.ndarray:
    """float values -> the cache's storage array (float32, float16, uint16 bf16 bits)."""
    if dtype == "f32":
        return np.ascontiguousarray(x, np.float32)
    return ref.to_storage(x, dtype)


def from_storage(x: np.ndarray, dtype: str) -> np.ndarray:
    if dtype == "f32":
        return np.asarray(x, np.float64)
    return ref.from_storage(x, dtype)


def to_layout(x: np.ndarray, layout: str) -> np.ndarray:
    """[S, T, h, d] -> the decode layout (BHSD: [S, h, T, d]), C-contiguous."""
    return np.ascontiguousarray(np.swapaxes(x, 1, 2) if layout == "bhsd" else x)


def from_layout(x: np.ndarray, layout: str) -> np.ndarray:
    return np.swapaxes(x, 1, 2) if layout == "bhsd" else x


def digest(*arrays) -> str:
    h = hashlib.sha256()
    for a in arrays:
        h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()


# --------------------------------------------------------------------------- the runner

class Runner:
    """Plays cache calls on one rank, mirrors them in a Model, and records every check
    that fails (it never raises on a wrong value, so the ranks stay in step through
    the collective calls that follow). `digests` lists a hash of every decode's out and
    lse, for comparison across ranks and runs."""

    def __init__(self, ctx, cache, model: Model, dtype="f32", layout="bshd", timeout=60.0,
                 where=""):
        self.ctx, self.cache, self.model = ctx, cache, model
        self.dtype, self.layout, self.timeout = dtype, layout, timeout
        self.where = where
        self.failures: "list[str]" = []
        self.digests: "list[str]" = []
        self.checks = 0
        self.worst = {"out": 0.0, "lse": 0.0}

    def check(self, condition, what) -> bool:
        self.checks += 1
        if not condition:
            self.failures.append(f"{self.where}: rank {self.ctx.rank}: {what}")
        return bool(condition)

    def _tensor(self, rng, shape):
        """A unit-scale tensor: (storage array, float64 values the library sees)."""
        x = to_storage(rng.standard_normal(shape), self.dtype)
        return x, from_storage(x, self.dtype)

    # sequences
    def add(self, ids):
        self.cache.add(ids)
        self.model.add(ids)
        self.verify(f"add {ids}")

    def drop(self, ids):
        self.cache.drop(ids)
        self.model.drop(ids)
        self.verify(f"drop {ids}")

    def truncate(self, ids, lengths):
        self.cache.truncate(ids, lengths)
        self.model.truncate(ids, lengths)
        self.verify(f"truncate {ids} to {lengths}")

    def verify(self, after: str):
        """Every sequence's length and local tokens in every layer, and the bytes."""
        rank, m = self.ctx.rank, self.model
        for s in m.seqs:
            for layer in range(m.num_layers):
                got = self.cache.length(s, layer)
                want = (m.length(s, layer), m.local_tokens(s, layer, rank))
                self.check(got == want, f"after {after}: seq {s} layer {layer} "
                                        f"(length, local_tokens) {got} != {want}")
        got, want = self.cache.nbytes, m.nbytes(rank)
        self.check(got == want, f"after {after}: nbytes {got} != {want}")

    # prefill
    def prefill(self, ids, lengths, distribution, seed, layers=None):
        """A packed prompt (one batch row, cu_seqlens from `lengths`) sharded by
        `distribution` with a causal plan: forward (checked against the float64
        reference) and prefill of `layers` (default all), each with its own K, V."""
        m, ctx = self.model, self.ctx
        p, rank = ctx.size, ctx.rank
        cu = [0] + list(np.cumsum(lengths, dtype=np.int64).tolist())
        n_total = cu[-1]
        pos = ref.all_positions(distribution, n_total, p, cu_seqlens=cu)
        owner = np.empty(n_total, np.int64)
        for r, rows in enumerate(pos):
            owner[rows] = r
        mine = pos[rank]
        rng = np.random.default_rng(seed)
        plan_layout = self.layout
        layer_sinks = (lambda layer: None) if m.sinks is None else (lambda layer: m.sinks[layer])
        with ctx.plan(1, len(mine), m.hq, m.d, num_heads_kv=m.hkv, layout=plan_layout,
                      mask="causal", distribution=distribution, cu_seqlens=cu,
                      window_left=m.window_left, softmax_scale=m.softmax_scale,
                      dtype=self.dtype, timeout_seconds=self.timeout,
                      compute="exact",  # the exact contract's bounds (DEFAULT may be FAST for bf16)
                      softcap=m.softcap, sinks=layer_sinks(0)) as plan:
            for layer in (range(m.num_layers) if layers is None else layers):
                if m.sinks is not None:
                    plan.set_sinks(layer_sinks(layer))  # the layer's own sinks
                (q, qf), (k, kf), (v, vf) = (self._tensor(rng, (1, n_total, h, m.d))
                                             for h in (m.hq, m.hkv, m.hkv))
                local = [ref.take(to_layout(x, plan_layout), mine, ref.seq_axis(plan_layout))
                         for x in (q, k, v)]
                out, lse = plan.forward(*local)
                out_ref, lse_ref = ref.forward(qf, kf, vf, causal=True, scale=m.scale,
                                               window_left=m.window_left, cu_seqlens=cu,
                                               softcap=m.softcap, sinks=layer_sinks(layer))
                self._compare(from_layout(from_storage(out, self.dtype), plan_layout),
                              ref.take(out_ref, mine, 1), lse, ref.take(lse_ref, mine, 2),
                              f"prefill forward layer {layer}", scale_of=out_ref)
                self.cache.prefill(layer, plan, ids, local[1], local[2])
                m.prefill(layer, ids, cu, kf, vf, owner)
        self.verify(f"prefill {ids} lengths {lengths} ({distribution})")

    # decode
    def decode(self, layer, ids, tokens, seed, positions=None, check_stats=True):
        m = self.model
        rng = np.random.default_rng(seed)
        s = len(ids)
        (q, qf), (k, kf), (v, vf) = (self._tensor(rng, (s, tokens, h, m.d))
                                     for h in (m.hq, m.hkv, m.hkv))
        out, lse = self.cache.decode(layer, ids, to_layout(q, self.layout),
                                     to_layout(k, self.layout), to_layout(v, self.layout),
                                     positions=positions)
        out_ref, lse_ref = m.decode(layer, ids, qf, kf, vf, positions)
        self.check(out.dtype == self.cache.storage_dtype and lse.dtype == np.float32,
                   f"decode output dtypes {out.dtype} {lse.dtype}")
        self._compare(from_layout(from_storage(out, self.dtype), self.layout), out_ref,
                      lse, lse_ref, f"decode layer {layer} ids {ids} T {tokens} positions {positions}")
        self.digests.append(digest(out, lse))
        if check_stats:
            st = self.cache.stats()
            # The partials' logical allgather payload: rows x (d + 1) floats a rank.
            rows = s * tokens * m.hq
            want = (self.ctx.size - 1) * rows * (m.d + 1) * 4
            self.check(st["bytes_sent"] == want and st["bytes_received"] == want,
                       f"decode stats bytes_sent {st['bytes_sent']} received "
                       f"{st['bytes_received']} != {want}")
            self.check(st["steps_computed"] == 0 and st["steps_skipped"] == 0 and st["pattern"] == -1,
                       f"decode stats steps/pattern {st}")
        self.verify(f"decode layer {layer} ids {ids} T {tokens}")
        return out, lse

    def _compare(self, got, want, lse, lse_want, what, scale_of=None):
        """out within OUT_TOL * max|ref| (+ the storage rounding u*|ref| for bf16/f16,
        as ref.half_excess), lse within LSE_TOL. `worst` records max|err|/max|ref|."""
        scale = float(np.max(np.abs(want if scale_of is None else scale_of), initial=0.0)) or 1.0
        allowed = ref.OUT_TOL * scale
        if self.dtype != "f32":
            u = ref.UNIT_ROUNDOFF[self.dtype]
            allowed = allowed * (1 + u) + u * np.abs(want) + ref.SUBNORMAL_STEP[self.dtype]
        diff = np.abs(got - want)
        excess = float(np.max(diff / allowed, initial=0.0))
        err = float(np.max(diff, initial=0.0)) / scale
        lerr = ref.lse_error(lse, lse_want)
        self.worst["out"] = max(self.worst["out"], err)
        self.worst["lse"] = max(self.worst["lse"], lerr)
        self.check(excess <= 1, f"{what}: out error {err:.3g} x max|ref| is {excess:.3g} x the "
                                f"allowed {ref.OUT_TOL:g}{'' if self.dtype == 'f32' else ' + rounding'}")
        self.check(lerr <= ref.LSE_TOL, f"{what}: lse error {lerr:.3g} > {ref.LSE_TOL:g}")


# --------------------------------------------------------------------------- the scenario

def scenario(runner: Runner, distribution: str, seed: int, t_values=(1, 3, 17)):
    """The script every sweep runs (the same on every rank): sequences of different
    lengths — one empty in the prompt, one short enough to leave ranks without a token
    of it, one never prefilled — prefilled from a causal plan, then decode steps of
    every T in t_values in a row on every layer, a start position that skips ahead,
    truncate then decode, drop, and a re-added (empty) id decoded from scratch."""
    m = runner.model
    layers = range(m.num_layers)
    runner.add([3, 7, 11, 20])
    runner.prefill([3, 7, 11], [13, 2, 0], distribution, seed)
    step = 0

    def dec(layer, ids, tokens, positions=None):
        nonlocal step
        step += 1
        return runner.decode(layer, ids, tokens, seed * 1000 + step, positions)

    for tokens in t_values:  # several steps in a row, every layer, all sequences
        for layer in layers:
            dec(layer, [3, 7, 11, 20], tokens)
    for layer in layers:
        dec(layer, [7, 3], t_values[-1])           # another order, a subset
    for layer in layers:                            # skip ahead by 2
        dec(layer, [11], 1, positions=[m.length(11, layer) + 2])
    runner.truncate([3, 7], [10, 10_000])           # 7 is shorter: unchanged
    for layer in layers:
        dec(layer, [3, 11], t_values[min(1, len(t_values) - 1)])
    runner.drop([7])
    runner.add([7])
    for layer in layers:
        dec(layer, [3, 20, 7], 1)
    runner.drop([3, 7, 11, 20])
