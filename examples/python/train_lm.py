#!/usr/bin/env python3
"""Train a small causal transformer language model with the sequence sharded over MPI
ranks (burst_attention.torch), next to the same model trained in one process with torch
SDPA from the same seed, and compare the loss curves step by step.

    mpirun --allow-run-as-root --oversubscribe -n 2 python3 examples/python/train_lm.py
    # or: ./scripts/mpirun.sh -n 2 python3 examples/python/train_lm.py --plot docs/train_lm.png

What each mode does:
  * burst (every rank): the character sequence of one step (--seq-len tokens) is dealt to
    the ranks by --distribution (zigzag balances causal work); each rank embeds its own
    tokens (with their global positions), runs every layer on its shard — attention is
    burst_attn over the whole sequence, the rest is per token — and computes the
    cross-entropy of its tokens, divided by the whole sequence's token count. The
    parameter gradients are summed over the ranks (one MPI allreduce per step), so
    every rank takes the same Adam step and the parameters stay identical.
  * sdpa (rank 0, after the burst run; the other ranks sleep): the same model from the
    same seed on the whole sequence in one process with
    torch.nn.functional.scaled_dot_product_attention(is_causal=True), on the same data.
  * compare (default) runs both and checks that the loss curves agree to --tolerance
    (relative) at every step; the exit status says whether they did.

The text is generated (a seeded toy grammar of short English-like sentences with
numbers), so the repository ships no data file and every machine trains on the same
characters.
"""

from __future__ import annotations

import argparse
import json
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

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn as nn  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from mpi4py import MPI  # noqa: E402

import burst_attention as ba  # noqa: E402
import burst_attention.torch as bt  # noqa: E402


# ----------------------------------------------------------------------------- data

def generate_text(n_chars: int, seed: int) -> str:
    """Seeded toy English: subject-verb-object sentences, counts that agree with their
    noun, and simple arithmetic facts, so there is structure to learn at short and
    long range."""
    rng = np.random.default_rng(seed)
    names = ["alice", "bob", "carol", "dave", "erin", "frank", "grace", "heidi"]
    verbs = ["sees", "likes", "finds", "paints", "carries", "counts", "follows", "greets"]
    nouns = ["cat", "tree", "boat", "lamp", "river", "stone", "bird", "house"]
    adjs = ["red", "small", "old", "quiet", "bright", "heavy", "green", "round"]
    out, size = [], 0
    while size < n_chars:
        kind = rng.integers(3)
        if kind == 0:
            k = int(rng.integers(1, 10))
            noun = nouns[rng.integers(len(nouns))] + ("s" if k > 1 else "")
            s = (f"{names[rng.integers(len(names))]} {verbs[rng.integers(len(verbs))]} "
                 f"{k} {adjs[rng.integers(len(adjs))]} {noun}. ")
        elif kind == 1:
            a, b = (int(x) for x in rng.integers(0, 50, 2))
            s = f"{a} plus {b} is {a + b}. "
        else:
            s = (f"the {adjs[rng.integers(len(adjs))]} {nouns[rng.integers(len(nouns))]} "
                 f"is near the {nouns[rng.integers(len(nouns))]}. ")
        out.append(s)
        size += len(s)
    return "".join(out)[:n_chars]


# ----------------------------------------------------------------------------- model

class Block(nn.Module):
    def __init__(self, width: int, heads: int):
        super().__init__()
        self.heads = heads
        self.ln1 = nn.LayerNorm(width)
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)
        self.ln2 = nn.LayerNorm(width)
        self.mlp = nn.Sequential(nn.Linear(width, 4 * width), nn.GELU(),
                                 nn.Linear(4 * width, width))

    def forward(self, x: torch.Tensor, attend) -> torch.Tensor:
        b, n, w = x.shape
        q, k, v = self.qkv(self.ln1(x)).view(b, n, 3, self.heads, w // self.heads).unbind(2)
        x = x + self.proj(attend(q, k, v).reshape(b, n, w))  # q, k, v: [b, n, h, d]
        return x + self.mlp(self.ln2(x))


class TinyLM(nn.Module):
    def __init__(self, vocab: int, width: int, heads: int, layers: int, max_len: int):
        super().__init__()
        self.tok = nn.Embedding(vocab, width)
        self.pos = nn.Embedding(max_len, width)
        self.blocks = nn.ModuleList(Block(width, heads) for _ in range(layers))
        self.ln = nn.LayerNorm(width)
        self.head = nn.Linear(width, vocab)

    def forward(self, tokens: torch.Tensor, positions: torch.Tensor, attend) -> torch.Tensor:
        x = self.tok(tokens) + self.pos(positions)
        for block in self.blocks:
            x = block(x, attend)
        return self.head(self.ln(x))


def sdpa_attend(q, k, v):
    out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2),
                                         v.transpose(1, 2), is_causal=True)
    return out.transpose(1, 2)


# ----------------------------------------------------------------------------- training

def batches(text_ids: np.ndarray, steps: int, seq_len: int, batch: int, seed: int):
    """The same (inputs, targets) [batch, seq_len] on every rank and in every mode."""
    rng = np.random.default_rng(seed + 1)
    for _ in range(steps):
        starts = rng.integers(0, len(text_ids) - seq_len - 1, batch)
        chunk = np.stack([text_ids[s:s + seq_len + 1] for s in starts])
        yield torch.from_numpy(chunk[:, :-1]).long(), torch.from_numpy(chunk[:, 1:]).long()


def make_model(args, vocab: int) -> tuple:
    torch.manual_seed(args.seed)
    model = TinyLM(vocab, args.width, args.heads, args.layers, args.seq_len)
    opt = torch.optim.Adam(model.parameters(), lr=args.lr)
    return model, opt


def train_burst(args, text_ids, vocab, comm, progress) -> list:
    rank, world = comm.Get_rank(), comm.Get_size()
    model, opt = make_model(args, vocab)
    params = [p for p in model.parameters()]
    n_total = args.batch * args.seq_len
    positions = bt.shard_positions(args.distribution, args.seq_len, world, rank)

    def attend(q, k, v):
        return bt.burst_attn(q, k, v, causal=True, comm=comm, distribution=args.distribution,
                             num_threads=args.threads)

    losses = []
    for step, (x, y) in enumerate(batches(text_ids, args.steps, args.seq_len, args.batch,
                                          args.seed)):
        xl, yl = x[:, positions], y[:, positions]
        logits = model(xl, positions.expand(args.batch, -1), attend)
        local = F.cross_entropy(logits.reshape(-1, vocab), yl.reshape(-1), reduction="sum")
        opt.zero_grad(set_to_none=False)
        (local / n_total).backward()
        flat = torch.cat([p.grad.reshape(-1) for p in params])
        comm.Allreduce(MPI.IN_PLACE, flat.numpy(), op=MPI.SUM)
        offset = 0
        for p in params:
            p.grad.copy_(flat[offset:offset + p.numel()].view_as(p))
            offset += p.numel()
        opt.step()
        loss = comm.allreduce(float(local.detach()), op=MPI.SUM) / n_total
        losses.append(loss)
        progress(step, loss)
    return losses


def train_sdpa(args, text_ids, vocab, progress) -> list:
    model, opt = make_model(args, vocab)
    positions = torch.arange(args.seq_len).expand(args.batch, -1)
    losses = []
    for step, (x, y) in enumerate(batches(text_ids, args.steps, args.seq_len, args.batch,
                                          args.seed)):
        logits = model(x, positions, sdpa_attend)
        loss = F.cross_entropy(logits.reshape(-1, vocab), y.reshape(-1))
        opt.zero_grad(set_to_none=False)
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
        progress(step, losses[-1])
    return losses


def progress_bar(enabled: bool, total: int, desc: str):
    """tqdm when it is installed, else a line every 10 steps; (update, close)."""
    if not enabled:
        return (lambda step, loss: None), (lambda: None)
    try:
        from tqdm import tqdm
        # stderr: under mpirun, stdout may be a pipe whose encoding cannot take the
        # bar's block characters, and tqdm then silently disables itself.
        bar = tqdm(total=total, desc=desc, unit="step", file=sys.stderr)

        def update(step, loss):
            bar.set_postfix(loss=f"{loss:.4f}")
            bar.update(1)
        return update, bar.close
    except ImportError:
        def update(step, loss):
            if step % 10 == 0 or step == total - 1:
                print(f"{desc} step {step + 1}/{total} loss {loss:.4f}", flush=True)
        return update, (lambda: None)


def sleep_barrier(comm) -> None:
    """A barrier that does not spin (OpenMPI's blocking barrier would take a core from
    the rank still computing)."""
    req = comm.Ibarrier()
    while not req.Test():
        time.sleep(0.02)


def plot(path: str, burst: list, sdpa: list, args, world: int) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = np.arange(1, len(burst) + 1)
    fig, (ax, ax2) = plt.subplots(2, 1, figsize=(7, 6), sharex=True,
                                  gridspec_kw={"height_ratios": [3, 1.4]})
    ax.plot(steps, sdpa, label="one process, torch SDPA", lw=2.5, color="#bbbbbb")
    ax.plot(steps, burst, label=f"{world} MPI ranks, burst_attn ({args.distribution})",
            lw=1.2, ls="--", color="#1f5fa8")
    ax.set_ylabel("training loss (nats/char)")
    ax.set_title(f"TinyLM {args.layers}x{args.width}, {args.heads} heads, sequence "
                 f"{args.seq_len}, batch {args.batch}")
    ax.legend()
    rel = np.abs(np.array(burst) - np.array(sdpa)) / np.abs(np.array(sdpa))
    ax2.semilogy(steps, np.maximum(rel, 1e-12), color="#a83a1f")
    ax2.axhline(args.tolerance, color="k", lw=0.8, ls=":", label=f"tolerance {args.tolerance:g}")
    ax2.set_ylabel("|Δloss| / loss")
    ax2.set_xlabel("step")
    ax2.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mode", choices=["compare", "burst", "sdpa"], default="compare")
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--seq-len", type=int, default=4096)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--width", type=int, default=128)
    ap.add_argument("--heads", type=int, default=2)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--distribution", default="zigzag",
                    choices=["zigzag", "striped", "contiguous"])
    ap.add_argument("--threads", type=int, default=0,
                    help="compute threads per rank for burst_attn and torch (0: cores / ranks)")
    ap.add_argument("--tolerance", type=float, default=1e-4,
                    help="largest relative loss difference allowed at any step (compare)")
    ap.add_argument("--plot", help="write a PNG of both loss curves here (compare)")
    ap.add_argument("--json", help="write both loss curves and the run's settings here")
    ap.add_argument("--quiet", action="store_true")
    args = ap.parse_args()

    comm = MPI.COMM_WORLD
    rank, world = comm.Get_rank(), comm.Get_size()
    cores = os.cpu_count() or 1
    if args.threads == 0:
        args.threads = max(1, cores // world)
    torch.set_num_threads(args.threads)
    text = generate_text(400_000, args.seed)
    vocab_chars = sorted(set(text))
    index = {c: i for i, c in enumerate(vocab_chars)}
    text_ids = np.array([index[c] for c in text], dtype=np.int64)
    vocab = len(vocab_chars)
    show = rank == 0 and not args.quiet
    if show:
        print(f"train_lm: {world} rank(s) x {args.threads} thread(s); {ba.build_info()}; "
              f"torch {torch.__version__}; vocab {vocab}; {args.layers} layers x width "
              f"{args.width}, {args.heads} heads (d = {args.width // args.heads}); sequence "
              f"{args.seq_len} x batch {args.batch}; {args.steps} steps", flush=True)

    result = {"settings": vars(args), "world": world, "build_info": ba.build_info(),
              "torch": torch.__version__}
    if args.mode in ("compare", "burst"):
        update, close = progress_bar(show, args.steps, f"burst_attn x{world}")
        start = time.perf_counter()
        result["burst"] = train_burst(args, text_ids, vocab, comm, update)
        result["burst_seconds"] = time.perf_counter() - start
        close()
    if args.mode in ("compare", "sdpa"):
        if rank == 0:
            torch.set_num_threads(min(cores, args.threads * world))
            update, close = progress_bar(show, args.steps, "torch SDPA x1")
            start = time.perf_counter()
            result["sdpa"] = train_sdpa(args, text_ids, vocab, update)
            result["sdpa_seconds"] = time.perf_counter() - start
            close()
        if world > 1:
            sleep_barrier(comm)

    status = 0
    if rank == 0:
        if args.mode == "compare":
            burst, sdpa = np.array(result["burst"]), np.array(result["sdpa"])
            rel = np.abs(burst - sdpa) / np.abs(sdpa)
            result["max_rel_diff"] = float(rel.max())
            worst = int(rel.argmax())
            ok = bool(rel.max() <= args.tolerance)
            print(f"loss: first {sdpa[0]:.5f} -> last {sdpa[-1]:.5f} (SDPA) / "
                  f"{burst[-1]:.5f} (burst_attn); max relative difference "
                  f"{rel.max():.3g} at step {worst + 1} (tolerance {args.tolerance:g}): "
                  f"{'OK' if ok else 'FAILED'}; time {result['burst_seconds']:.1f} s on "
                  f"{world} ranks vs {result['sdpa_seconds']:.1f} s in one process", flush=True)
            status = 0 if ok else 1
            if args.plot:
                plot(args.plot, result["burst"], result["sdpa"], args, world)
                print(f"wrote {args.plot}")
        if args.json:
            with open(args.json, "w") as f:
                json.dump(result, f, indent=1)
            print(f"wrote {args.json}")
    return comm.bcast(status, root=0)


if __name__ == "__main__":
    sys.exit(main())
