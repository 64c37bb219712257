"""float64 torch SDPA references for the torch-layer tests (test_torch.py, torch_mpi_check.py).

`reference(q, k, v, ...)` runs torch.nn.functional.scaled_dot_product_attention on
float64 copies of the *whole-sequence* tensors, with an explicit boolean mask for the
visibility rule of include/burst_attention.h (causal, inclusive windows, no attention
across packed sequences) and GQA heads repeated, and returns out, dq, dk, dv for a given
output gradient. Tolerances are DESIGN §3's: out 1e-5·max|ref|, gradients 1e-4·max|ref|.

`eager_attention` is attention written out in torch ops with the score modifiers of 0.8
(softcap: c·tanh(x/c); sinks: a logit per head with no value, as an extra softmax
column), differentiable in any float dtype; `reference_modified` runs it in float64
and returns the gradients of q, k, v and the sinks (SDPA has no sinks).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

# compute="fast": the bounds live in reference.py (one place for the Python tests).
from reference import FAST_GRAD_TOL, FAST_LSE_TOL, FAST_OUT_TOL  # noqa: F401

OUT_TOL = 1e-5
GRAD_TOL = 1e-4


def visibility(n: int, causal: bool, window=(-1, -1), cu_seqlens=None) -> torch.Tensor:
    """[n, n] bool: query i may see key j."""
    i = torch.arange(n)[:, None]
    j = torch.arange(n)[None, :]
    m = torch.ones(n, n, dtype=torch.bool)
    if causal:
        m &= j <= i
    left, right = window
    if left >= 0:
        m &= j >= i - left
    if right >= 0:
        m &= j <= i + right
    if cu_seqlens is not None:
        seq = torch.zeros(n, dtype=torch.long)
        for s, (a, b) in enumerate(zip(cu_seqlens[:-1], cu_seqlens[1:])):
            seq[a:b] = s
        m &= seq[:, None] == seq[None, :]
    return m


def reference(q, k, v, dout, causal=False, window=(-1, -1), softmax_scale=None,
              layout="bshd", cu_seqlens=None):
    """(out, dq, dk, dv) in float64 for whole-sequence tensors in `layout`
    ([B, N, H, d] for bshd, [B, H, N, d] for bhsd). Rows that see no key get 0."""
    q, k, v, dout = (t.detach().double() for t in (q, k, v, dout))
    if layout == "bshd":
        q, k, v, dout = (t.transpose(1, 2) for t in (q, k, v, dout))
    q.requires_grad_(), k.requires_grad_(), v.requires_grad_()
    hq, hkv, n, d = q.shape[1], k.shape[1], q.shape[2], q.shape[3]
    kr = k.repeat_interleave(hq // hkv, dim=1)
    vr = v.repeat_interleave(hq // hkv, dim=1)
    mask = visibility(n, causal, window, cu_seqlens)
    scale = softmax_scale if softmax_scale is not None else 1.0 / math.sqrt(d)
    # Explicit softmax (not SDPA) where a row may see nothing: SDPA gives NaN there.
    if bool((~mask.any(1)).any()):
        s = (q @ kr.transpose(-1, -2)) * scale
        s = s.masked_fill(~mask, -math.inf)
        p = torch.softmax(s, -1).nan_to_num(0.0)
        out = p @ vr
    else:
        out = F.scaled_dot_product_attention(q, kr, vr, attn_mask=mask, scale=scale)
    dq, dk, dv = torch.autograd.grad(out, (q, k, v), dout)
    out = out.detach()
    if layout == "bshd":
        out, dq, dk, dv = (t.transpose(1, 2) for t in (out, dq, dk, dv))
    return out, dq, dk, dv


def eager_attention(q, k, v, mask, scale, sinks=None, softcap=None):
    """out, lse of attention in [B, H, N, d] tensors (k, v already have every query
    head), written out in torch ops so that autograd differentiates every input:
    x = scale·q·kᵀ, x = c·tanh(x/c) when softcap c, masked entries -inf, then the softmax
    over the visible keys plus, with sinks ([H]), one more logit s_h per row that has no
    value: lse = logsumexp([x, s_h]), out = exp(x − lse)·v. A row that sees no key gets
    out 0 (lse s_h with sinks, -inf without)."""
    x = (q @ k.transpose(-1, -2)) * scale
    if softcap:
        x = softcap * torch.tanh(x / softcap)
    x = x.masked_fill(~mask, -math.inf)
    if sinks is not None:
        b, h, n, _ = x.shape
        column = sinks.to(x.dtype).view(1, h, 1, 1).expand(b, h, n, 1)
        x = torch.cat([x, column], dim=-1)
    lse = torch.logsumexp(x, dim=-1)
    p = torch.exp(x - lse.unsqueeze(-1).clamp_min(torch.finfo(x.dtype).min))
    if sinks is not None:
        p = p[..., :-1]
    return (p @ v).nan_to_num(0.0), lse


def reference_modified(q, k, v, dout, sinks=None, softcap=None, causal=False, window=(-1, -1),
                       softmax_scale=None, layout="bshd", cu_seqlens=None):
    """(out, dq, dk, dv, dsinks, lse) in float64 for whole-sequence tensors in `layout`,
    from `eager_attention` with sinks ([Hq], or None: dsinks None) and softcap (None or
    0: off). dsinks is the full gradient (every row of the sequence and batch): a
    rank's partial sums to it over the ranks."""
    q, k, v, dout = (t.detach().double() for t in (q, k, v, dout))
    if layout == "bshd":
        q, k, v, dout = (t.transpose(1, 2) for t in (q, k, v, dout))
    q.requires_grad_(), k.requires_grad_(), v.requires_grad_()
    s64 = None if sinks is None else sinks.detach().double().requires_grad_()
    hq, hkv, n, d = q.shape[1], k.shape[1], q.shape[2], q.shape[3]
    kr = k.repeat_interleave(hq // hkv, dim=1)
    vr = v.repeat_interleave(hq // hkv, dim=1)
    mask = visibility(n, causal, window, cu_seqlens)
    scale = softmax_scale if softmax_scale is not None else 1.0 / math.sqrt(d)
    out, lse = eager_attention(q, kr, vr, mask, scale, s64, softcap)
    inputs = (q, k, v) + (() if s64 is None else (s64,))
    grads = torch.autograd.grad(out, inputs, dout)
    dq, dk, dv = grads[:3]
    dsinks = grads[3] if s64 is not None else None
    out = out.detach()
    if layout == "bshd":
        out, dq, dk, dv = (t.transpose(1, 2) for t in (out, dq, dk, dv))
    return out, dq, dk, dv, dsinks, lse.detach()


def rel_err(got, ref) -> float:
    """max|got - ref| / max|ref|, with max|ref| floored at 1e-2: a gradient that is 0
    in exact arithmetic (a window of one key: dq = dk = 0) is compared absolutely
    instead of against its rounding noise (inputs are of unit scale)."""
    ref = ref.detach().double()
    return float((got.detach().double() - ref).abs().max() / ref.abs().max().clamp_min(1e-2))


# Storage types (bfloat16 / float16): unit roundoff and the fp16 subnormal step.
UNIT_ROUNDOFF = {torch.bfloat16: 2.0 ** -8, torch.float16: 2.0 ** -11, torch.float32: 2.0 ** -24}
SUBNORMAL_STEP = {torch.bfloat16: 0.0, torch.float16: 2.0 ** -24, torch.float32: 0.0}


def reference_given_out(q, k, v, dout, given_out, causal=False, window=(-1, -1), layout="bshd"):
    """(out, dq, dk, dv) in float64 from q, k, v, dout as given (already rounded to a
    storage type); out from SDPA, the gradients written out with D = rowsum(dout *
    given_out): the out a backward of rounded tensors is handed is the rounded one, so
    the reference uses it as the library does."""
    q, k, v, dout, given_out = (t.detach().double() for t in (q, k, v, dout, given_out))
    if layout == "bshd":
        q, k, v, dout, given_out = (t.transpose(1, 2) for t in (q, k, v, dout, given_out))
    hq, hkv, n, d = q.shape[1], k.shape[1], q.shape[2], q.shape[3]
    g = hq // hkv
    kr, vr = k.repeat_interleave(g, dim=1), v.repeat_interleave(g, dim=1)
    mask = visibility(n, causal, window)
    scale = 1.0 / math.sqrt(d)
    out = F.scaled_dot_product_attention(q, kr, vr, attn_mask=mask, scale=scale)
    s = (q @ kr.transpose(-1, -2) * scale).masked_fill(~mask, -math.inf)
    p = torch.softmax(s, -1)
    dp = dout @ vr.transpose(-1, -2)
    delta = (dout * given_out).sum(-1, keepdim=True)
    ds = p * (dp - delta)
    dq = ds @ kr * scale
    dkr = ds.transpose(-1, -2) @ q * scale
    dvr = p.transpose(-1, -2) @ dout
    b = q.shape[0]
    dk = dkr.reshape(b, hkv, g, n, d).sum(2)
    dv = dvr.reshape(b, hkv, g, n, d).sum(2)
    if layout == "bshd":
        out, dq, dk, dv = (t.transpose(1, 2) for t in (out, dq, dk, dv))
    return out, dq, dk, dv


def half_excess(got, ref, dtype, tol) -> float:
    """max over elements of |got - ref| / (tol*max|ref|*(1+u) + u*|ref| + sub): the
    numerics contract of a storage type is <= 1 (docs/storage-types.md). max|ref| is
    floored at 1e-3 as in the Swift tests."""
    ref = ref.detach().double()
    u, sub = UNIT_ROUNDOFF[dtype], SUBNORMAL_STEP[dtype]
    scale = max(float(ref.abs().max()), 1e-3)
    allowed = tol * scale * (1 + u) + u * ref.abs() + sub
    return float(((got.detach().double() - ref).abs() / allowed).max())
