#!/usr/bin/env python3
"""The peer of `burst-bench --decode`: PyTorch's scaled_dot_product_attention as one
decode step over an ordinary KV cache in one process, at the same shapes.

For each cache length L: K, V [B, h_kv, L, d] (the cache), q [B, h_q, 1, d] (T new
tokens: [B, h_q, T, d]), `F.scaled_dot_product_attention(q, K, V, enable_gqa=True)`
(causal among the T new tokens is not modelled: with T = 1 there is nothing to mask).
One warm-up, then --repeats timed calls; the median is recorded with the bytes of K and
V read per step. One JSON line per length on stdout ("bench":"decode_torch").
"""
from __future__ import annotations

import argparse
import json
import statistics
import time

import torch
import torch.nn.functional as F

DTYPES = {"f32": torch.float32, "bf16": torch.bfloat16, "f16": torch.float16}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--cache-lengths", default="16384,65536")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--heads", type=int, default=32)
    p.add_argument("--heads-kv", type=int, default=8)
    p.add_argument("--head-dim", type=int, default=128)
    p.add_argument("--tokens", type=int, default=1)
    p.add_argument("--dtype", choices=DTYPES, default="f32")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--repeats", type=int, default=5)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    dtype = DTYPES[a.dtype]
    gen = torch.Generator().manual_seed(0)
    for length in [int(x) for x in a.cache_lengths.split(",")]:
        k = (torch.rand(a.batch, a.heads_kv, length, a.head_dim, generator=gen) - 0.5).to(dtype)
        v = (torch.rand(a.batch, a.heads_kv, length, a.head_dim, generator=gen) - 0.5).to(dtype)
        q = (torch.rand(a.batch, a.heads, a.tokens, a.head_dim, generator=gen) - 0.5).to(dtype)
        times = []
        with torch.inference_mode():
            for call in range(a.repeats + 1):
                t0 = time.perf_counter()
                F.scaled_dot_product_attention(q, k, v, enable_gqa=a.heads != a.heads_kv)
                if call:
                    times.append(time.perf_counter() - t0)
        step = statistics.median(times)
        kv_bytes = 2 * k.numel() * k.element_size()
        print(json.dumps({"bench": "decode_torch", "dtype": a.dtype, "batch": a.batch, "heads": a.heads,
                          "heads_kv": a.heads_kv, "head_dim": a.head_dim, "tokens": a.tokens,
                          "cache_len": length, "threads": a.threads, "runs": len(times), "median_s": step,
                          "min_s": min(times), "kv_bytes": kv_bytes, "gbs": kv_bytes / step / 1e9,
                          "torch": torch.__version__, "cpu_capability": torch.backends.cpu.get_cpu_capability()}),
              flush=True)
        del k, v, q


if __name__ == "__main__":
    main()
