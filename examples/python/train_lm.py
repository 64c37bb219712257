#!/usr/bin/env python3
"""Train a small causal transformer language model with the sequence sharded over ranks
(burst_attention.torch), next to the same model trained in one process with torch SDPA
from the same seed, and compare the loss curves step by step.

    mpirun --allow-run-as-root --oversubscribe -n 2 python3 examples/python/train_lm.py
    # or: ./scripts/mpirun.sh -n 2 python3 examples/python/train_lm.py --plot docs/train_lm.png
    # or, with no MPI at all:
    torchrun --nproc-per-node 2 examples/python/train_lm.py

The launcher decides how the ranks talk (--launcher auto, the default, looks at the
environment): under mpirun (or mpiexec) the ranks are MPI.COMM_WORLD, burst_attn talks
MPI and the gradients are summed with an MPI allreduce; under torchrun the ranks are the
default torch.distributed group (gloo), burst_attn talks through it (the 0.9 callback
transport, docs/torchrun.md) and the gradients are summed with dist.all_reduce. Both
give the same losses (the same schedule runs; with 2 ranks a sum of two is exact in
any order). With neither, one process trains alone (world size 1). A launcher whose
world size cannot be read, or that disagrees with what the ranks see (an mpi4py built
against another MPI, a torchrun env without its rendezvous), is an error, never a
silent unsharded run.

What each mode does:
  * burst (every rank): the character sequence of one step (--seq-len tokens) is dealt to
    the ranks by --distribution (zigzag balances causal work); each rank embeds its own
    tokens (with their global positions), runs every layer on its shard — attention is
    burst_attn over the whole sequence, the rest is per token — and computes the
    cross-entropy of its tokens, divided by the whole sequence's token count. The
    parameter gradients are summed over the ranks (one allreduce per step), so
    every rank takes the same Adam step and the parameters stay identical.
  * sdpa (rank 0, after the burst run; the other ranks sleep): the same model from the
    same seed on the whole sequence in one process with
    torch.nn.functional.scaled_dot_product_attention(is_causal=True), on the same data.
  * compare (default) runs both and checks that the loss curves agree to --tolerance
    (relative) at every step; the exit status says whether they did.

--gpt-oss trains the same kind of model with gpt-oss's attention instead:
  * layers alternate a banded sliding window and full causal attention, starting with
    the window. gpt-oss's window is 128 tokens: a query sees itself and the 127 keys
    before it (Hugging Face's sliding_window = 128: key j visible iff i - 128 < j <= i),
    which is window=(127, 0) in flash-attn's inclusive terms (--window to change it);
  * GQA: --heads query heads (default 4 here) share --kv-heads key/value heads (2);
  * learned attention sinks: one nn.Parameter of --heads logits per layer (initialised
    to 0), burst_attn(sinks=...). Each rank's sinks.grad is its own rows' partial; the
    allreduce that sums every parameter's gradient over the ranks sums it too;
  * optional --softcap C (Gemma 2's logit soft-capping; gpt-oss has none).
  The one-process reference is an eager float32 attention written out with the same
  mask, the sink as one more logit column in the softmax (and c*tanh(x/c) when
  softcapped): SDPA has no sinks. compare also checks that every layer's sinks after
  training agree to --tolerance (|burst - reference| <= tol * max(1, |reference|)) and
  prints both.

The text is generated (a seeded toy grammar of short English-like sentences with
numbers), so the repository ships no data file and every machine trains on the same
characters.
"""

from __future__ import annotations

import argparse
import json
import math
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

import burst_attention as ba  # noqa: E402
import burst_attention.torch as bt  # noqa: E402


# ----------------------------------------------------------------------------- ranks

# The environment an MPI launcher gives its processes: (world size, rank) variables.
MPI_LAUNCH_ENV = (("OMPI_COMM_WORLD_SIZE", "OMPI_COMM_WORLD_RANK"),
                  ("PMI_SIZE", "PMI_RANK"), ("MV2_COMM_WORLD_SIZE", "MV2_COMM_WORLD_RANK"))


def env_int(name: str) -> "int | None":
    value = os.environ.get(name)
    if value is None or value == "":
        return None
    try:
        return int(value)
    except ValueError:
        sys.exit(f"train_lm: {name}={value!r} is not an integer: cannot tell the world size")


def detect_launcher() -> str:
    """"torch" (torchrun / torch.distributed.launch), "mpi" (mpirun) or "none"."""
    if "TORCHELASTIC_RUN_ID" in os.environ:
        return "torch"
    if any(os.environ.get(size) for size, _ in MPI_LAUNCH_ENV):
        return "mpi"
    if "WORLD_SIZE" in os.environ or "RANK" in os.environ:
        return "torch"
    return "none"


def sleep_barrier(comm) -> None:
    """A barrier over an mpi4py communicator that does not spin (OpenMPI's blocking
    barrier would take a core from the rank still computing). generate.py uses it too."""
    req = comm.Ibarrier()
    while not req.Test():
        time.sleep(0.02)


class MpiRanks:
    """MPI.COMM_WORLD: burst_attn talks MPI; gradients summed with MPI_Allreduce."""

    def __init__(self):
        from mpi4py import MPI
        self.MPI, self.comm = MPI, MPI.COMM_WORLD
        self.rank, self.size = self.comm.Get_rank(), self.comm.Get_size()
        self.attn_comm = self.comm
        self.name = "MPI ranks"
        launched = next((env_int(size) for size, _ in MPI_LAUNCH_ENV
                         if os.environ.get(size)), None)
        if launched is not None and launched != self.size:
            sys.exit(f"train_lm: the MPI launcher started {launched} processes but mpi4py's "
                     f"MPI.COMM_WORLD has {self.size} (is mpi4py built against another MPI "
                     "than the launcher's?); refusing to train unsharded copies")

    def sum_(self, flat: torch.Tensor) -> None:
        self.comm.Allreduce(self.MPI.IN_PLACE, flat.numpy(), op=self.MPI.SUM)

    def sum_float(self, x: float) -> float:
        return self.comm.allreduce(x, op=self.MPI.SUM)

    def wait_for_all(self) -> None:
        sleep_barrier(self.comm)

    def bcast(self, obj):
        return self.comm.bcast(obj, root=0)

    def close(self) -> None:
        pass


class TorchRanks:
    """The default torch.distributed group (gloo), as torchrun sets it up: burst_attn
    talks through it (no MPI); gradients summed with dist.all_reduce."""

    def __init__(self):
        import datetime
        import torch.distributed as dist
        self.dist = dist
        want = env_int("WORLD_SIZE")
        if want is None or env_int("RANK") is None:
            sys.exit("train_lm: a torch.distributed launch without WORLD_SIZE and RANK in the "
                     "environment: cannot tell the world size (run under torchrun)")
        # A long timeout: the other ranks wait in a barrier while rank 0 trains the
        # one-process reference (gloo's default would end that wait at 30 minutes).
        dist.init_process_group("gloo", timeout=datetime.timedelta(hours=6))
        self.rank, self.size = dist.get_rank(), dist.get_world_size()
        if self.size != want:
            sys.exit(f"train_lm: WORLD_SIZE={want} but torch.distributed has {self.size} ranks")
        self.attn_comm = dist.group.WORLD
        self.name = "torchrun ranks"

    def sum_(self, flat: torch.Tensor) -> None:
        self.dist.all_reduce(flat, op=self.dist.ReduceOp.SUM)

    def sum_float(self, x: float) -> float:
        t = torch.tensor([x], dtype=torch.float64)
        self.dist.all_reduce(t, op=self.dist.ReduceOp.SUM)
        return float(t)

    def wait_for_all(self) -> None:
        self.dist.barrier()  # gloo waits on a condition variable: it does not spin

    def bcast(self, obj):
        box = [obj]
        self.dist.broadcast_object_list(box, src=0)
        return box[0]

    def close(self) -> None:
        bt.clear_plan_cache()
        self.dist.destroy_process_group()


def make_ranks(launcher: str):
    if launcher == "auto":
        launcher = detect_launcher()
    if launcher == "torch":
        return TorchRanks()
    if launcher == "mpi":
        return MpiRanks()
    ranks = MpiRanks()  # one process: mpi4py's singleton world of 1
    if ranks.size != 1:
        sys.exit(f"train_lm: no launcher in the environment but MPI has {ranks.size} ranks")
    return ranks


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
    """Pre-LN transformer block. kv_heads < heads: GQA; window: (left, right) of its
    causal attention ((-1, -1): full); sinks: a learned logit per query head (gpt-oss).
    With the defaults its parameters (and their initialisation) are the plain block's."""

    def __init__(self, width: int, heads: int, kv_heads: "int | None" = None,
                 window=(-1, -1), sinks: bool = False):
        super().__init__()
        self.heads = heads
        self.kv_heads = heads if kv_heads is None else kv_heads
        self.window = tuple(window)
        d = width // heads
        self.ln1 = nn.LayerNorm(width)
        self.qkv = nn.Linear(width, (heads + 2 * self.kv_heads) * d)
        self.proj = nn.Linear(width, width)
        self.ln2 = nn.LayerNorm(width)
        self.mlp = nn.Sequential(nn.Linear(width, 4 * width), nn.GELU(),
                                 nn.Linear(4 * width, width))
        self.sinks = nn.Parameter(torch.zeros(heads)) if sinks else None

    def forward(self, x: torch.Tensor, attend) -> torch.Tensor:
        b, n, w = x.shape
        d = w // self.heads
        q, k, v = self.qkv(self.ln1(x)).split(
            [self.heads * d, self.kv_heads * d, self.kv_heads * d], dim=-1)
        q = q.reshape(b, n, self.heads, d)        # q, k, v: [b, n, heads, d]
        k = k.reshape(b, n, self.kv_heads, d)
        v = v.reshape(b, n, self.kv_heads, d)
        # A plain block calls attend(q, k, v), as generate.py's attentions expect.
        options = ({} if self.window == (-1, -1) and self.sinks is None
                   else {"window": self.window, "sinks": self.sinks})
        x = x + self.proj(attend(q, k, v, **options).reshape(b, n, w))
        return x + self.mlp(self.ln2(x))


class TinyLM(nn.Module):
    def __init__(self, vocab: int, width: int, heads: int, layers: int, max_len: int,
                 kv_heads: "int | None" = None, windows=None, sinks: bool = False):
        super().__init__()
        windows = windows or [(-1, -1)] * layers
        self.tok = nn.Embedding(vocab, width)
        self.pos = nn.Embedding(max_len, width)
        self.blocks = nn.ModuleList(Block(width, heads, kv_heads, windows[i], sinks)
                                    for i in range(layers))
        self.ln = nn.LayerNorm(width)
        self.head = nn.Linear(width, vocab)

    def forward(self, tokens: torch.Tensor, positions: torch.Tensor, attend) -> torch.Tensor:
        x = self.tok(tokens) + self.pos(positions)
        for block in self.blocks:
            x = block(x, attend)
        return self.head(self.ln(x))


    def sinks(self) -> "list[torch.Tensor]":
        """Every layer's sink logits (detached), [] without sinks."""
        return [b.sinks.detach().clone() for b in self.blocks if b.sinks is not None]


def sdpa_attend(q, k, v, window=(-1, -1), sinks=None):
    assert tuple(window) == (-1, -1) and sinks is None, "SDPA: full causal, no sinks"
    out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2),
                                         v.transpose(1, 2), is_causal=True)
    return out.transpose(1, 2)


def eager_attend(q, k, v, window=(-1, -1), sinks=None, softcap=0.0):
    """Causal attention written out in float32 torch ops, the reference of --gpt-oss:
    x = q.k / sqrt(d), c*tanh(x/c) when softcap c > 0, keys outside the causal window
    (i - left <= j <= i; left = -1: unbounded) masked, GQA kv heads repeated, and with
    sinks one more logit s_h per row in the softmax that has no value (its probability
    is dropped): out = sum_j exp(x_ij - lse_i) v_j, lse_i = log(sum_j exp(x_ij) + exp(s_h))."""
    b, n, hq, d = q.shape
    group = hq // k.shape[2]
    qt = q.transpose(1, 2)
    kt = k.transpose(1, 2).repeat_interleave(group, dim=1)
    vt = v.transpose(1, 2).repeat_interleave(group, dim=1)
    x = (qt @ kt.transpose(-1, -2)) / math.sqrt(d)
    if softcap:
        x = softcap * torch.tanh(x / softcap)
    i = torch.arange(n)[:, None]
    j = torch.arange(n)[None, :]
    visible = j <= i
    if window[0] >= 0:
        visible &= j >= i - window[0]
    x = x.masked_fill(~visible, float("-inf"))
    if sinks is not None:
        x = torch.cat([x, sinks.view(1, hq, 1, 1).expand(b, hq, n, 1)], dim=-1)
    p = torch.softmax(x, dim=-1)
    if sinks is not None:
        p = p[..., :-1]
    return (p @ vt).transpose(1, 2)


# ----------------------------------------------------------------------------- training

def batches(text_ids: np.ndarray, steps: int, seq_len: int, batch: int, seed: int):
    """The same (inputs, targets) [batch, seq_len] on every rank and in every mode."""
    rng = np.random.default_rng(seed + 1)
    for _ in range(steps):
        starts = rng.integers(0, len(text_ids) - seq_len - 1, batch)
        chunk = np.stack([text_ids[s:s + seq_len + 1] for s in starts])
        yield torch.from_numpy(chunk[:, :-1]).long(), torch.from_numpy(chunk[:, 1:]).long()


def layer_windows(args) -> list:
    """Each layer's (left, right) window: --gpt-oss alternates the sliding window
    (even layers) and full causal attention (odd layers); otherwise every layer is full."""
    if not args.gpt_oss:
        return [(-1, -1)] * args.layers
    return [(args.window, 0) if i % 2 == 0 else (-1, -1) for i in range(args.layers)]


def make_model(args, vocab: int) -> tuple:
    torch.manual_seed(args.seed)
    if args.gpt_oss:
        model = TinyLM(vocab, args.width, args.heads, args.layers, args.seq_len,
                       kv_heads=args.kv_heads, windows=layer_windows(args), sinks=True)
    else:
        model = TinyLM(vocab, args.width, args.heads, args.layers, args.seq_len)
    opt = torch.optim.Adam(model.parameters(), lr=args.lr)
    return model, opt


def train_burst(args, text_ids, vocab, ranks, progress) -> tuple:
    """(losses, the model after training)."""
    rank, world = ranks.rank, ranks.size
    model, opt = make_model(args, vocab)
    params = [p for p in model.parameters()]  # the sinks too: summed with the rest below
    n_total = args.batch * args.seq_len
    positions = bt.shard_positions(args.distribution, args.seq_len, world, rank)
    softcap = args.softcap or None

    def attend(q, k, v, window=(-1, -1), sinks=None):
        # sinks.grad is this rank's partial; the allreduce below sums it over the ranks
        return bt.burst_attn(q, k, v, causal=True, window=window, sinks=sinks, softcap=softcap,
                             comm=ranks.attn_comm, distribution=args.distribution,
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
        ranks.sum_(flat)
        offset = 0
        for p in params:
            p.grad.copy_(flat[offset:offset + p.numel()].view_as(p))
            offset += p.numel()
        opt.step()
        loss = ranks.sum_float(float(local.detach())) / n_total
        losses.append(loss)
        progress(step, loss)
    return losses, model


def train_sdpa(args, text_ids, vocab, progress) -> tuple:
    """(losses, the model after training) in one process: torch SDPA, or with --gpt-oss
    the eager attention with sinks (SDPA has none)."""
    model, opt = make_model(args, vocab)
    positions = torch.arange(args.seq_len).expand(args.batch, -1)
    if args.gpt_oss:
        def attend(q, k, v, window=(-1, -1), sinks=None):
            return eager_attend(q, k, v, window, sinks, args.softcap)
    else:
        attend = sdpa_attend
    losses = []
    for step, (x, y) in enumerate(batches(text_ids, args.steps, args.seq_len, args.batch,
                                          args.seed)):
        logits = model(x, positions, attend)
        loss = F.cross_entropy(logits.reshape(-1, vocab), y.reshape(-1))
        opt.zero_grad(set_to_none=False)
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
        progress(step, losses[-1])
    return losses, model


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


def plot(path: str, burst: list, sdpa: list, args, world: int, name: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = np.arange(1, len(burst) + 1)
    fig, (ax, ax2) = plt.subplots(2, 1, figsize=(7, 6), sharex=True,
                                  gridspec_kw={"height_ratios": [3, 1.4]})
    ax.plot(steps, sdpa, label=f"one process, {reference_name(args)}", lw=2.5, color="#bbbbbb")
    ax.plot(steps, burst, label=f"{world} {name}, burst_attn ({args.distribution})",
            lw=1.2, ls="--", color="#1f5fa8")
    ax.set_ylabel("training loss (nats/char)")
    ax.set_title(f"TinyLM {args.layers}x{args.width}, {args.heads} heads, sequence "
                 f"{args.seq_len}, batch {args.batch}{', gpt-oss attention' if args.gpt_oss else ''}")
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


def reference_name(args) -> str:
    return "eager attention with sinks" if args.gpt_oss else "torch SDPA"


def compare_sinks(burst: list, ref: list, tolerance: float) -> "tuple[bool, float]":
    """(every layer's sinks agree: |burst - ref| <= tol * max(1, |ref|), the largest
    |burst - ref| / max(1, |ref|))."""
    worst = 0.0
    for a, b in zip(burst, ref):
        worst = max(worst, float(((a - b).abs() / b.abs().clamp_min(1.0)).max()))
    return worst <= tolerance, worst


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mode", choices=["compare", "burst", "sdpa"], default="compare")
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--seq-len", type=int, default=None,
                    help="tokens per sequence (default 4096; 1024 with --gpt-oss, whose "
                         "reference attention is eager: [heads, N, N] scores)")
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--width", type=int, default=128)
    ap.add_argument("--heads", type=int, default=None,
                    help="query heads (default 2; 4 with --gpt-oss)")
    ap.add_argument("--gpt-oss", action="store_true",
                    help="gpt-oss attention: alternating sliding-window / full layers, GQA, "
                         "learned sinks (see the module docstring)")
    ap.add_argument("--kv-heads", type=int, default=2,
                    help="key/value heads with --gpt-oss (a divisor of --heads)")
    ap.add_argument("--window", type=int, default=127,
                    help="window_left of the sliding layers with --gpt-oss: 127 = gpt-oss's "
                         "128-token window (a query and the 127 keys before it)")
    ap.add_argument("--softcap", type=float, default=0.0,
                    help="logit soft-capping with --gpt-oss (0: off, as gpt-oss)")
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
    ap.add_argument("--launcher", choices=["auto", "mpi", "torch"], default="auto",
                    help="how the ranks talk: mpi (mpirun), torch (torchrun: gloo, no MPI) "
                         "or auto (from the environment)")
    ap.add_argument("--quiet", action="store_true")
    args = ap.parse_args()
    if args.seq_len is None:
        args.seq_len = 1024 if args.gpt_oss else 4096
    if args.heads is None:
        args.heads = 4 if args.gpt_oss else 2
    if not args.gpt_oss and args.softcap:
        ap.error("--softcap needs --gpt-oss (the SDPA reference has no softcap)")
    if args.gpt_oss and (args.heads % args.kv_heads or args.width % args.heads):
        ap.error("--kv-heads must divide --heads, and --heads the width")

    ranks = make_ranks(args.launcher)
    rank, world = ranks.rank, ranks.size
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
        print(f"train_lm: {world} {ranks.name} x {args.threads} thread(s); {ba.build_info()}; "
              f"torch {torch.__version__}; vocab {vocab}; {args.layers} layers x width "
              f"{args.width}, {args.heads} heads (d = {args.width // args.heads}); sequence "
              f"{args.seq_len} x batch {args.batch}; {args.steps} steps", flush=True)
        if args.gpt_oss:
            print(f"train_lm: gpt-oss attention: layers {layer_windows(args)} (window (left, "
                  f"right); (-1, -1) = full causal), GQA {args.heads}/{args.kv_heads}, learned "
                  f"sinks{f', softcap {args.softcap:g}' if args.softcap else ''}", flush=True)

    result = {"settings": vars(args), "world": world, "launcher": ranks.name,
              "build_info": ba.build_info(),
              "torch": torch.__version__}
    if args.mode in ("compare", "burst"):
        update, close = progress_bar(show, args.steps, f"burst_attn x{world}")
        start = time.perf_counter()
        result["burst"], model = train_burst(args, text_ids, vocab, ranks, update)
        result["burst_seconds"] = time.perf_counter() - start
        result["burst_sinks"] = [s.tolist() for s in model.sinks()]
        close()
    if args.mode in ("compare", "sdpa"):
        if rank == 0:
            torch.set_num_threads(min(cores, args.threads * world))
            update, close = progress_bar(show, args.steps, f"{reference_name(args)} x1")
            start = time.perf_counter()
            result["sdpa"], model = train_sdpa(args, text_ids, vocab, update)
            result["sdpa_seconds"] = time.perf_counter() - start
            result["sdpa_sinks"] = [s.tolist() for s in model.sinks()]
            close()
        if world > 1:
            ranks.wait_for_all()

    status = 0
    if rank == 0:
        if args.mode == "compare":
            burst, sdpa = np.array(result["burst"]), np.array(result["sdpa"])
            rel = np.abs(burst - sdpa) / np.abs(sdpa)
            result["max_rel_diff"] = float(rel.max())
            worst = int(rel.argmax())
            ok = bool(rel.max() <= args.tolerance)
            label = "eager" if args.gpt_oss else "SDPA"
            print(f"loss: first {sdpa[0]:.5f} -> last {sdpa[-1]:.5f} ({label}) / "
                  f"{burst[-1]:.5f} (burst_attn); max relative difference "
                  f"{rel.max():.3g} at step {worst + 1} (tolerance {args.tolerance:g}): "
                  f"{'OK' if ok else 'FAILED'}; time {result['burst_seconds']:.1f} s on "
                  f"{world} {ranks.name} vs {result['sdpa_seconds']:.1f} s in one process", flush=True)
            if args.gpt_oss:
                a = [torch.tensor(x) for x in result["burst_sinks"]]
                b = [torch.tensor(x) for x in result["sdpa_sinks"]]
                sinks_ok, sinks_diff = compare_sinks(a, b, args.tolerance)
                result["max_sinks_diff"] = sinks_diff
                for layer, (x, y) in enumerate(zip(a, b)):
                    print(f"sinks after training, layer {layer} {layer_windows(args)[layer]}: "
                          f"burst_attn {[round(float(t), 6) for t in x]}, eager "
                          f"{[round(float(t), 6) for t in y]}", flush=True)
                print(f"sinks: max |difference| / max(1, |eager|) {sinks_diff:.3g} "
                      f"(tolerance {args.tolerance:g}): {'OK' if sinks_ok else 'FAILED'}",
                      flush=True)
                ok = ok and sinks_ok
            status = 0 if ok else 1
            if args.plot:
                plot(args.plot, result["burst"], result["sdpa"], args, world, ranks.name)
                print(f"wrote {args.plot}")
        if args.json:
            with open(args.json, "w") as f:
                json.dump(result, f, indent=1)
            print(f"wrote {args.json}")
    status = ranks.bcast(status)
    ranks.close()
    return status


if __name__ == "__main__":
    sys.exit(main())
