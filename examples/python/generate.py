#!/usr/bin/env python3
"""Greedy generation from a causal transformer LM whose prompt is sharded over MPI
ranks and whose KV cache stays sharded (burst_attention.KVCache), next to the same
model in one process with torch SDPA and an ordinary KV cache; the tokens and logits
must agree at every step.

    mpirun --allow-run-as-root --oversubscribe -n 2 python3 examples/python/generate.py
    mpirun ... -n 2 python3 examples/python/generate.py --prompt-tokens 2048 --new-tokens 16 --dtype bf16

What each part does:
  * burst (every rank): the prompt (--prompt-tokens random token ids, fixed seed) is
    dealt to the ranks by ZIGZAG (balanced causal work). Each rank embeds its tokens
    with their global positions and runs every layer on its shard: attention is
    `plan.forward` (burst_forward, causal, over the whole prompt), and the layer's K,V
    shard goes into the cache with `cache.prefill` — where it already is, no token
    moves. The rank holding the last prompt token computes its logits and the first
    new token (broadcast). Then each of the other --new-tokens - 1 tokens is one step
    of every rank on the same single token (replicated): `decode` (T = 1) per layer
    attends it to the whole sharded history (each rank its shard, partials merged in
    rank order), appends its K,V on rank (position mod P), and every rank gets the
    same logits and picks the same argmax.
  * reference (rank 0, afterwards; the other ranks sleep): the same model from the same
    seed on the whole prompt with F.scaled_dot_product_attention(is_causal=True), then
    decode with an ordinary KV cache (torch.cat of K and V per layer) and SDPA of the
    new token against it. With --dtype bf16 the attention inputs and output are
    rounded to bfloat16 exactly where the library rounds them (its inputs are stored
    in bf16 and, with compute="exact", it multiplies in fp32; the default for bf16
    would be bf16 products), so both sides compute the same function.
  * compare: the same token ids, and logits within --tolerance relative to their max
    (1e-4 for f32; 1e-3 for bf16, where an attention output that the two sides round
    to neighbouring bf16 values moves the logits by up to ~2^-8 of that output's
    share; 2e-5 was measured at the default size) at every step; the exit status says
    whether they did.

The model is train_lm.py's TinyLM (learned positions, LayerNorm, GELU MLP), randomly
initialised from --seed: 2 layers, width 256, 4 heads of 64, vocabulary 512 by default.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.abspath(os.path.join(HERE, "..", ".."))
try:
    import burst_attention  # noqa: F401  (pip-installed package)
except ImportError:  # a checkout: the package and the CMake install tree
    sys.path.insert(0, os.path.join(ROOT, "bindings", "python"))
    lib = os.path.join(ROOT, "build", "install", "lib", "libburst_attention.so")
    if "BURST_ATTENTION_LIBRARY" not in os.environ and os.path.exists(lib):
        os.environ["BURST_ATTENTION_LIBRARY"] = lib
sys.path.insert(0, HERE)  # train_lm's model

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from mpi4py import MPI  # noqa: E402

import burst_attention as ba  # noqa: E402
import burst_attention.torch as bt  # noqa: E402
from train_lm import TinyLM, sleep_barrier  # noqa: E402

TORCH_DTYPE = {"f32": torch.float32, "bf16": torch.bfloat16}
SEQ = 0  # the one sequence id of the cache


def make_model(args) -> TinyLM:
    torch.manual_seed(args.seed)
    model = TinyLM(args.vocab, args.width, args.heads, args.layers,
                   args.prompt_tokens + args.new_tokens)
    return model.eval()


def make_prompt(args) -> torch.Tensor:
    rng = np.random.default_rng(args.seed + 1)
    return torch.from_numpy(rng.integers(0, args.vocab, args.prompt_tokens)).long()


def run_layers(model, x, attend_for_layer):
    """TinyLM's blocks with a per-layer attention; returns the final hidden states."""
    for i, block in enumerate(model.blocks):
        x = block(x, attend_for_layer(i))
    return model.ln(x)


# ----------------------------------------------------------------------------- burst

def generate_burst(args, model, prompt, ctx, comm) -> tuple:
    """Every rank: prefill its zigzag shard, then greedy decode. Returns (tokens, logits
    [new_tokens, vocab] float64, prefill seconds, decode seconds)."""
    rank, world = ctx.rank, ctx.size
    n, dt = len(prompt), TORCH_DTYPE[args.dtype]
    d = args.width // args.heads
    pos = bt.shard_positions("zigzag", n, world, rank)
    owners = [bt.shard_positions("zigzag", n, world, r) for r in range(world)]
    last_owner = next(r for r, p in enumerate(owners) if len(p) and int(p[-1]) == n - 1)
    tokens, logits = [], []
    with ctx.kv_cache(args.layers, args.heads, d, dtype=args.dtype,
                      num_threads=args.threads) as cache, \
            ctx.plan(1, len(pos), args.heads, d, mask="causal", distribution="zigzag",
                     dtype=args.dtype, compute="exact", num_threads=args.threads) as plan:
        cache.add([SEQ])
        start = time.perf_counter()

        def prefill_attend(layer):
            def attend(q, k, v):  # [1, n_local, h, d]: this rank's shard
                q, k, v = (t.to(dt).contiguous() for t in (q, k, v))
                out = torch.empty_like(q)
                plan.forward(bt._np(q), bt._np(k), bt._np(v), out=bt._np(out))
                bt.prefill(cache, layer, plan, [SEQ], k, v)
                return out.float()
            return attend

        x = model.tok(prompt[pos][None]) + model.pos(pos[None])
        h = run_layers(model, x, prefill_attend)
        row = model.head(h[0, -1]).double().numpy() if rank == last_owner else None
        logits.append(comm.bcast(row, root=last_owner))
        tokens.append(int(np.argmax(logits[-1])))
        prefill_seconds = time.perf_counter() - start

        def decode_attend(layer):
            def attend(q, k, v):  # [1, 1, h, d], the same on every rank
                out, _ = bt.decode(cache, layer, [SEQ], *(t.to(dt).contiguous() for t in (q, k, v)))
                return out.float()
            return attend

        start = time.perf_counter()
        for step in range(1, args.new_tokens):
            p = n + step - 1  # the position of the token fed in
            x = model.tok(torch.tensor([[tokens[-1]]])) + model.pos(torch.tensor([[p]]))
            h = run_layers(model, x, decode_attend)
            logits.append(model.head(h[0, -1]).double().numpy())
            tokens.append(int(np.argmax(logits[-1])))
        decode_seconds = time.perf_counter() - start
        length, local = cache.length(SEQ)
        expected_local = len(pos) + sum(1 for p in range(n, n + args.new_tokens - 1) if p % world == rank)
        if (length, local) != (n + args.new_tokens - 1, expected_local):
            raise RuntimeError(f"rank {rank}: cache length {(length, local)}, expected "
                               f"{(n + args.new_tokens - 1, expected_local)}")
    return tokens, np.stack(logits), prefill_seconds, decode_seconds


# ----------------------------------------------------------------------------- reference

def rounded(t: torch.Tensor, dt) -> torch.Tensor:
    """t rounded to the attention storage type and back to float32 (what the library
    stores and computes from)."""
    return t.to(dt).float()


def generate_sdpa(args, model, prompt) -> tuple:
    """One process: SDPA over the whole prompt, then an ordinary KV cache."""
    n, dt = len(prompt), TORCH_DTYPE[args.dtype]
    cache = [None] * args.layers  # per layer (K, V): [1, heads, length, d]
    tokens, logits = [], []

    def prefill_attend(layer):
        def attend(q, k, v):  # [1, n, h, d]
            q, k, v = (rounded(t, dt).transpose(1, 2) for t in (q, k, v))
            cache[layer] = (k, v)
            out = F.scaled_dot_product_attention(q, k, v, is_causal=True)
            return rounded(out.transpose(1, 2), dt)
        return attend

    def decode_attend(layer):
        def attend(q, k, v):  # [1, 1, h, d]; the new token sees every key: no mask
            q, k, v = (rounded(t, dt).transpose(1, 2) for t in (q, k, v))
            keys = torch.cat([cache[layer][0], k], dim=2)
            values = torch.cat([cache[layer][1], v], dim=2)
            cache[layer] = (keys, values)
            out = F.scaled_dot_product_attention(q, keys, values)
            return rounded(out.transpose(1, 2), dt)
        return attend

    start = time.perf_counter()
    h = run_layers(model, model.tok(prompt[None]) + model.pos(torch.arange(n)[None]), prefill_attend)
    logits.append(model.head(h[0, -1]).double().numpy())
    tokens.append(int(np.argmax(logits[-1])))
    prefill_seconds = time.perf_counter() - start
    start = time.perf_counter()
    for step in range(1, args.new_tokens):
        p = n + step - 1
        x = model.tok(torch.tensor([[tokens[-1]]])) + model.pos(torch.tensor([[p]]))
        h = run_layers(model, x, decode_attend)
        logits.append(model.head(h[0, -1]).double().numpy())
        tokens.append(int(np.argmax(logits[-1])))
    return tokens, np.stack(logits), prefill_seconds, time.perf_counter() - start


# ----------------------------------------------------------------------------- main

def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--prompt-tokens", type=int, default=16384)
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--dtype", choices=["f32", "bf16"], default="f32",
                    help="storage type of attention's q, k, v and of the KV cache")
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--width", type=int, default=256)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--vocab", type=int, default=512)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=0,
                    help="compute threads per rank for the library and torch (0: cores / ranks)")
    ap.add_argument("--tolerance", type=float, default=None,
                    help="largest relative logit difference allowed at any step "
                         "(default 1e-4 for f32, 1e-3 for bf16)")
    ap.add_argument("--quiet", action="store_true")
    args = ap.parse_args()
    if args.prompt_tokens < 1 or args.new_tokens < 1:
        ap.error("--prompt-tokens and --new-tokens must be at least 1")
    if args.tolerance is None:
        args.tolerance = 1e-4 if args.dtype == "f32" else 1e-3

    comm = MPI.COMM_WORLD
    rank, world = comm.Get_rank(), comm.Get_size()
    launched = int(os.environ.get("WORLD_SIZE", "1") or "1")
    if world != launched and launched > 1:
        # torchrun (or another launcher) started several processes that MPI does not
        # connect: each would generate alone on the whole prompt. Fail loudly.
        sys.exit(f"generate.py: the launcher asked for WORLD_SIZE={launched} ranks but MPI has "
                 f"{world}; this example shards over MPI: start it with mpirun -n {launched}")
    cores = os.cpu_count() or 1
    if args.threads == 0:
        args.threads = max(1, cores // world)
    torch.set_num_threads(args.threads)
    show = rank == 0 and not args.quiet
    if show:
        print(f"generate: {world} rank(s) x {args.threads} thread(s); {ba.build_info()}; "
              f"torch {torch.__version__}; {args.layers} layers x width {args.width}, "
              f"{args.heads} heads (d = {args.width // args.heads}), vocab {args.vocab}; "
              f"prompt {args.prompt_tokens} tokens, {args.new_tokens} new; {args.dtype}",
              flush=True)

    model = make_model(args)
    prompt = make_prompt(args)
    with torch.no_grad(), ba.Context.from_mpi(comm) as ctx:
        tokens, logits, t_prefill, t_decode = generate_burst(args, model, prompt, ctx, comm)
    # Every rank must have computed the very same logits (decode's outputs are the same
    # bytes on every rank, and the rest is the same computation on the same input).
    digest = hashlib.sha256(logits.tobytes()).hexdigest()
    same_everywhere = len(set(comm.allgather(digest))) == 1

    status = 0
    if rank == 0:
        torch.set_num_threads(min(cores, args.threads * world))
        with torch.no_grad():
            ref_tokens, ref_logits, r_prefill, r_decode = generate_sdpa(args, model, prompt)
        scale = np.max(np.abs(ref_logits), axis=1)
        rel = np.max(np.abs(logits - ref_logits), axis=1) / scale
        worst = int(rel.argmax())
        same_tokens = tokens == ref_tokens
        first_diff = next((i for i, (a, b) in enumerate(zip(tokens, ref_tokens)) if a != b), None)
        ok = same_tokens and bool(rel.max() <= args.tolerance) and same_everywhere
        if show:
            print(f"tokens: {tokens[:16]}{' ...' if len(tokens) > 16 else ''}")
            print(f"burst: prefill {t_prefill:.2f} s ({args.prompt_tokens / t_prefill:.0f} tok/s), "
                  f"decode {t_decode:.2f} s ({max(args.new_tokens - 1, 0) / max(t_decode, 1e-9):.1f} "
                  f"tok/s) on {world} ranks; SDPA: prefill {r_prefill:.2f} s, decode "
                  f"{r_decode:.2f} s in one process")
        print(f"generate: {args.new_tokens} tokens after a {args.prompt_tokens}-token prompt "
              f"({args.dtype}, {world} ranks): tokens {'identical' if same_tokens else f'differ from step {first_diff}'}; "
              f"max relative logit difference {rel.max():.3g} at step {worst} (tolerance "
              f"{args.tolerance:g}); ranks {'agree bitwise' if same_everywhere else 'DIFFER'}: "
              f"{'OK' if ok else 'FAILED'}", flush=True)
        status = 0 if ok else 1
    if world > 1:  # the other ranks wait for the reference without spinning
        sleep_barrier(comm)
    return comm.bcast(status, root=0)


if __name__ == "__main__":
    sys.exit(main())
