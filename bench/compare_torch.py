#!/usr/bin/env python3
"""libburst_attention vs PyTorch CPU scaled_dot_product_attention, same process, same data.

For every shape (B, H, N, d, causal) and thread count t this measures, one after the
other (never two at once):

  torch  forward            F.scaled_dot_product_attention(q, k, v, is_causal=...)
  torch  forward_backward   the same with q, k, v requiring grad, then out.backward(dout)
  ours   forward            plan.forward(q, k, v) on Context.self(), num_threads = t
  ours   forward_backward   plan.forward, then plan.backward(q, k, v, out, lse, dout)

Both sides see the same float32 data: our arrays are numpy views of torch's [B, H, N, d]
tensors and the plan uses layout BHSD. Each measurement is one warm-up call and then
`--repeats` timed calls; the median and the minimum are recorded. FLOPs counted (the
usual flash-attention convention, matmuls only):

  forward           4 * B * H * N^2 * d
  forward_backward 14 * B * H * N^2 * d    (4 forward + 10 backward)
  causal: half of the above

The relative error max|ours - torch| / max|torch| of out, dq, dk and dv is recorded once
per shape and thread count from the timed calls' own results (no extra calls); it is
printed, never asserted.

Issue 10 added: head counts (--heads, default 1 and 8), storage types (--dtype f32 bf16:
bf16 runs ours with BURST_DTYPE_BF16 against torch's bfloat16 SDPA, and both are also
compared with float64 attention of the same rounded inputs, "err64_*"), and "tile_gemm"
lines: the rate of our kernels' 128×128×d JIT product from `burst-bench --gemm` (one
thread, and the given threads running tiles at once), so report.py can print ours as a
share of the machine's own GEMM rate.

Issue 19 added: tile-product modes (--compute exact fast): ours is measured once per mode
listed, each an "ours" row with its "compute" ("exact": fp32 products; "fast": q, k, v,
dout, P and dS rounded to bf16, fp32 accumulation). A binding whose ctx.plan has no
compute keyword yet gets exact plans (what every plan was before) and no fast rows (an
"unavailable" record says so). The float64 reference of the bf16 rows is computed block by
block (memory O(block * N)), up to --err64-max-n; each check record says when it was
skipped. The header records burst_build_info() (kernel code path, "bf16 products: ..."),
the CPU's vector flags and the environment variables that pick code paths (LIBXSMM_TARGET,
ATEN_CPU_CAPABILITY, ...); --tag KEY=VALUE adds fields to every record (bench/run_kernels19.sh
tags its parts), and --one-call-from N times a single call without warm-up from N tokens on.

The "sgemm" lines are not attention: they are the rate of plain single-precision GEMMs
C[128,128] = A[128,d] @ B[d,128] over a stack of independent tiles (the shape of one
S = Q K^T tile product) at the same thread count, by torch.bmm (torch's BLAS, MKL) and
by numpy.matmul (numpy's bundled OpenBLAS, one BLAS thread in each of t Python
threads). They are a reference ceiling for tile-based attention, not a bound.

Every record is one JSON line on stdout, appended to --out (a header line with the
machine, versions and command first). Progress goes to stderr.
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import json
import os
import platform
import re
import shlex
import statistics
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

import burst_attention as ba

try:
    import threadpoolctl
except ImportError:  # only the numpy sgemm line needs it
    threadpoolctl = None

REPO = Path(__file__).resolve().parent.parent
FULL_N = (1024, 4096, 16384)
QUICK_N = (1024, 4096)
ALL_D = (64, 128)
ALL_THREADS = (1, 2)
ALL_HEADS = (1, 8)
ALL_CAUSAL = (False, True)
ALL_COMPUTE = ("exact", "fast")
# The float64 reference (blocked, numpy) costs ~14·B·H·N²·d float64 FLOPs plus a few passes
# over B·H·N² scores, ~35 GFLOP/s on one Zen core: ~2 min at N = 16384, H = 8, d = 128.
ERR64_MAX_N = 16384
ERR64_BLOCK = 512  # query rows per block of the float64 reference: 512 x N scores at a time
# What picks code paths, recorded in the header: ours (libxsmm, our dispatch) and torch's
# (ATen's kernels, MKL, oneDNN; read when torch is imported).
PATH_ENV = ("LIBXSMM_TARGET", "BURST_KERNELS", "ATEN_CPU_CAPABILITY", "MKL_ENABLE_INSTRUCTIONS",
            "ONEDNN_MAX_CPU_ISA", "OMP_NUM_THREADS", "OPENBLAS_CORETYPE")
CPU_FLAGS = ("avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "avx_vnni", "amx_tile",
             "amx_bf16")
SGEMM_TILES = 16  # tiles per stack: 3 MiB of A, B and C at d = 128, cache-resident
SGEMM_SAMPLE_FLOPS = 10e9  # per thread and timed call: ~0.1 s at 100 GFLOP/s
# Before each measurement: lets the worker threads of whatever ran before (OpenMP,
# OpenBLAS and our pool spin a few ms after their work) go to sleep.
IDLE_PAUSE_S = 0.1
# A measurement is flagged as noisy when other processes took more than 5% of the CPUs
# and at least 50 ms (below that the 10 ms ticks of /proc/stat cannot tell).
NOISY_SHARE, NOISY_MIN_CPU_S = 0.05, 0.05


# ---------------------------------------------------------------------------- options
def int_list(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x]


def bool_list(text: str) -> list[bool]:
    words = {"0": False, "off": False, "false": False, "no": False,
             "1": True, "on": True, "true": True, "yes": True}
    try:
        return [words[x.lower()] for x in text.split(",") if x]
    except KeyError as e:
        raise argparse.ArgumentTypeError(f"causal: expected 0/1/off/on, got {e.args[0]!r}")


def compute_list(text: str) -> list[str]:
    modes = [x.lower() for x in text.split(",") if x]
    bad = [m for m in modes if m not in ALL_COMPUTE]
    if bad:
        raise argparse.ArgumentTypeError(f"compute: expected exact/fast, got {bad[0]!r}")
    return modes


def tag(text: str) -> tuple[str, str]:
    key, eq, value = text.partition("=")
    if not eq or not key:
        raise argparse.ArgumentTypeError(f"tag: expected KEY=VALUE, got {text!r}")
    return key, value


def flatten(lists):
    return None if lists is None else sorted({x for sub in lists for x in sub})


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description="Time libburst_attention against torch SDPA on CPU (issue 3).",
        epilog="Lists take several values or commas: --n 1024 4096, --causal off,on.")
    p.add_argument("--quick", action="store_true",
                   help=f"N in {list(QUICK_N)} and 3 repeats (explicit options win)")
    p.add_argument("--n", type=int_list, nargs="+", metavar="N",
                   help=f"sequence lengths (default {list(FULL_N)})")
    p.add_argument("--d", type=int_list, nargs="+", metavar="D",
                   help=f"head dims (default {list(ALL_D)})")
    p.add_argument("--threads", type=int_list, nargs="+", metavar="T",
                   help=f"thread counts (default {list(ALL_THREADS)})")
    p.add_argument("--causal", type=bool_list, nargs="+", metavar="C",
                   help="causal mask off/on (default both)")
    p.add_argument("--batch", type=int, default=1, help="B (default 1)")
    p.add_argument("--heads", type=int_list, nargs="+", metavar="H",
                   help=f"head counts (default {list(ALL_HEADS)})")
    p.add_argument("--dtype", nargs="+", metavar="T", default=None,
                   help="storage types: f32 and/or bf16 (default f32; bf16 compares ours against "
                        "torch's bfloat16 SDPA, errors against float64 from the same rounded inputs)")
    p.add_argument("--compute", type=compute_list, nargs="+", metavar="C",
                   help="tile products of ours: exact (fp32) and/or fast (bf16 products, fp32 "
                        "accumulation), one ours row each (default exact)")
    p.add_argument("--err64-max-n", type=int, default=ERR64_MAX_N, metavar="N",
                   help=f"bf16 rows: float64 reference errors up to this N (default {ERR64_MAX_N})")
    p.add_argument("--one-call-from", type=int, default=0, metavar="N",
                   help="from this N on: one timed call, no warm-up (default 0: never)")
    p.add_argument("--tag", type=tag, action="append", default=[], metavar="KEY=VALUE",
                   help="add this field to every record, e.g. part=a (a key of the record itself wins)")
    p.add_argument("--burst-bench", type=Path, default=REPO / ".build/release/burst-bench",
                   help="burst-bench binary for the tile GEMM rate lines (skipped if missing)")
    p.add_argument("--skip", nargs="*", default=[], metavar="N:H",
                   help="skip these (N, H) pairs, e.g. 16384:8 (the largest shape is ~8x the next)")
    p.add_argument("--repeats", type=int, help="timed calls after one warm-up (default 5)")
    p.add_argument("--no-sgemm", action="store_true", help="skip the sgemm reference lines")
    p.add_argument("--out", type=Path, default=REPO / "docs/perf/results.jsonl",
                   help="JSONL file to append to (default docs/perf/results.jsonl)")
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    a.n = flatten(a.n) or list(QUICK_N if a.quick else FULL_N)
    a.d = flatten(a.d) or list(ALL_D)
    a.threads = flatten(a.threads) or list(ALL_THREADS)
    a.causal = flatten(a.causal) or list(ALL_CAUSAL)
    a.heads = flatten(a.heads) or list(ALL_HEADS)
    # Keep the order given (exact first by default): the rows of one shape follow it.
    a.compute = list(dict.fromkeys(m for sub in (a.compute or [["exact"]]) for m in sub))
    a.tag = dict(a.tag)
    a.dtype = [t for v in (a.dtype or ["f32"]) for t in v.split(",") if t]
    if any(t not in ("f32", "bf16") for t in a.dtype):
        p.error("--dtype takes f32 and/or bf16")
    a.skip = {tuple(int(x) for x in item.split(":")) for item in a.skip}
    if a.repeats is None:
        a.repeats = 3 if a.quick else 5
    if a.repeats < 1 or min(a.n + a.d + a.threads + a.heads) < 1 or a.batch < 1:
        p.error("repeats, N, d, threads, batch and heads must be positive")
    return a


# ---------------------------------------------------------------------------- records
class Recorder:
    """Prints each record as a JSON line and appends it to the JSONL file."""

    def __init__(self, path: Path, run_id: str, tags: dict | None = None):
        path.parent.mkdir(parents=True, exist_ok=True)
        self.file = open(path, "a", encoding="utf-8")
        self.run_id = run_id
        self.tags = tags or {}

    def emit(self, record: dict) -> None:
        line = json.dumps({"run_id": self.run_id, **self.tags, **record})
        print(line, flush=True)
        self.file.write(line + "\n")
        self.file.flush()

    def close(self) -> None:
        self.file.close()


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def command_output(*cmd: str) -> str:
    try:
        return subprocess.run(cmd, capture_output=True, text=True, check=True,
                              cwd=REPO).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return ""


def machine_info() -> dict:
    lscpu = {}
    for line in command_output("lscpu").splitlines():
        key, _, value = line.partition(":")
        lscpu[key.strip()] = value.strip()
    mem_kib = 0
    try:
        with open("/proc/meminfo") as f:
            mem_kib = int(next(line for line in f if line.startswith("MemTotal")).split()[1])
    except (OSError, StopIteration, ValueError):
        pass
    commit = command_output("git", "rev-parse", "--short", "HEAD")
    if commit and command_output("git", "status", "--porcelain", "--untracked-files=no"):
        commit += "-dirty"
    lib = Path(ba.library_path)
    build_info = ba.build_info()
    bf16 = re.search(r"bf16[_ ]products:?\s*([\w-]+)", build_info)
    flags = set()
    try:
        with open("/proc/cpuinfo") as f:
            flags = set(next(line for line in f if line.startswith("flags")).split(":", 1)[1].split())
    except (OSError, StopIteration):
        pass
    blas = []
    if threadpoolctl is not None:
        blas = [{k: i.get(k) for k in ("internal_api", "prefix", "version", "architecture")}
                for i in threadpoolctl.threadpool_info()]
    return {
        "cpu": lscpu.get("Model name", platform.processor()),
        "cpus": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)),
        "hypervisor": lscpu.get("Hypervisor vendor", ""),
        "mem_gib": round(mem_kib / 2**20, 1),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "torch": torch.__version__,
        "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "thread_pools": blas,
        "OPENBLAS_CORETYPE": os.environ.get("OPENBLAS_CORETYPE"),
        "library": str(lib.resolve()),
        "library_version": ba.version(),
        "library_sha256": hashlib.sha256(lib.read_bytes()).hexdigest()[:16],
        # "libburst_attention X; kernels <libxsmm target>+<rows>; ...; bf16 products: <path>"
        "build_info": build_info,
        "bf16_products": bf16.group(1) if bf16 else None,  # None: this library does not say
        "cpu_flags": [f for f in CPU_FLAGS if f in flags],
        "env": {k: os.environ[k] for k in PATH_ENV if k in os.environ},
        "git_commit": commit,
    }


# ---------------------------------------------------------------------------- timing
def busy_cpu_seconds() -> float:
    """CPU seconds all processes have used (user, system, irq, and steal by the host)."""
    with open("/proc/stat") as f:
        user, nice, system, _idle, _iowait, irq, softirq, steal = map(int, f.readline().split()[1:9])
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def time_calls(fn, repeats: int, warmup: int = 1) -> dict:
    """`warmup` untimed calls, then `repeats` timed calls. Returns median_s, min_s and
    others_cpu_s / others_cpu_share: the CPU time other processes (and the hypervisor)
    took during the timed calls, in seconds and as a share of all cores' time; the
    machine was quiet if it is ~0. /proc/stat counts in ticks of 10 ms."""
    time.sleep(IDLE_PAUSE_S)
    for _ in range(warmup):
        fn()
    times = []
    busy0, own0, wall0 = busy_cpu_seconds(), time.process_time(), time.perf_counter()
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    others = (busy_cpu_seconds() - busy0) - (time.process_time() - own0)
    share = max(0.0, others) / ((time.perf_counter() - wall0) * os.cpu_count())
    return {"median_s": statistics.median(times), "min_s": min(times),
            "others_cpu_s": round(max(0.0, others), 3), "others_cpu_share": round(share, 3)}


def rates(timing: dict, flops: float) -> dict:
    """The record fields of one measurement: times, GFLOP/s from the median (gflops) and
    from the minimum (gflops_best), and the share of the CPUs others used meanwhile."""
    return {"median_s": timing["median_s"], "min_s": timing["min_s"],
            "gflops": flops / timing["median_s"] / 1e9,
            "gflops_best": flops / timing["min_s"] / 1e9,
            "others_cpu_s": timing["others_cpu_s"],
            "others_cpu_share": timing["others_cpu_share"]}


def is_noisy(result: dict) -> bool:
    return (result["others_cpu_share"] > NOISY_SHARE
            and result["others_cpu_s"] >= NOISY_MIN_CPU_S)


def describe(result: dict) -> str:
    text = f"median {result['median_s']:9.4f} s {result['gflops']:7.1f} GFLOP/s"
    if is_noisy(result):
        text += f"  (noisy: other processes used {result['others_cpu_share']:.0%} of the CPUs)"
    return text


def attention_flops(mode: str, b: int, h: int, n: int, d: int, causal: bool) -> float:
    per_unit = {"forward": 4, "forward_backward": 14}[mode]
    return per_unit * b * h * n * n * d / (2 if causal else 1)


def rel_err(ours: np.ndarray, ref: np.ndarray) -> float:
    scale = float(np.max(np.abs(ref)))
    diff = float(np.max(np.abs(ours.astype(np.float64) - ref.astype(np.float64))))
    return diff / scale if scale > 0 else diff


# ---------------------------------------------------------------------------- sgemm lines
def sgemm_torch(d: int, threads: int, repeats: int) -> tuple[dict, float]:
    """torch.bmm over SGEMM_TILES independent 128 x d @ d x 128 tiles."""
    torch.set_num_threads(threads)
    a = torch.randn(SGEMM_TILES, 128, d)
    b = torch.randn(SGEMM_TILES, d, 128)
    c = torch.empty(SGEMM_TILES, 128, 128)
    calls = max(1, int(SGEMM_SAMPLE_FLOPS / (2 * 128 * 128 * d * SGEMM_TILES)) * threads)

    def run():
        for _ in range(calls):
            torch.bmm(a, b, out=c)

    return time_calls(run, repeats), 2.0 * 128 * 128 * d * SGEMM_TILES * calls


def sgemm_numpy(d: int, threads: int, repeats: int) -> tuple[dict, float]:
    """numpy.matmul on `threads` Python threads, each over its own tile stack with
    numpy's OpenBLAS limited to one thread (two BLAS threads on one 128-tile are slower
    than one; tile-parallel is how attention uses GEMM)."""
    rng = np.random.default_rng(0)
    stacks = [(rng.standard_normal((SGEMM_TILES, 128, d), np.float32),
               rng.standard_normal((SGEMM_TILES, d, 128), np.float32),
               np.empty((SGEMM_TILES, 128, 128), np.float32)) for _ in range(threads)]
    calls = max(1, int(SGEMM_SAMPLE_FLOPS / (2 * 128 * 128 * d * SGEMM_TILES)))

    def work(stack):
        a, b, c = stack
        for _ in range(calls):
            np.matmul(a, b, out=c)

    def run():
        workers = [threading.Thread(target=work, args=(s,)) for s in stacks]
        for w in workers:
            w.start()
        for w in workers:
            w.join()

    with threadpoolctl.threadpool_limits(limits={"libscipy_openblas": 1}):
        timing = time_calls(run, repeats)
    return timing, 2.0 * 128 * 128 * d * SGEMM_TILES * calls * threads


# ---------------------------------------------------------------------------- attention
class Shape:
    """Inputs of one (B, H, N, d) shape in one storage type: torch tensors and numpy
    views of the same memory (bf16: uint16 views of torch's bfloat16 storage, the bits
    the library reads)."""

    def __init__(self, b: int, h: int, n: int, d: int, seed: int, dtype: str = "f32"):
        gen = torch.Generator().manual_seed(seed)
        self.b, self.h, self.n, self.d, self.dtype = b, h, n, d, dtype
        tdtype = torch.bfloat16 if dtype == "bf16" else torch.float32
        self.q, self.k, self.v, self.dout = (torch.randn(b, h, n, d, generator=gen).to(tdtype)
                                             for _ in range(4))
        # Leaves for autograd that share storage with q, k, v.
        self.qg, self.kg, self.vg = (t.detach().requires_grad_() for t in (self.q, self.k, self.v))
        self.qn, self.kn, self.vn, self.doutn = (to_numpy(t) for t in
                                                 (self.q, self.k, self.v, self.dout))
        self.ref64 = {}  # causal -> (out, dq, dk, dv) in float64, made once for all threads


def to_numpy(t: torch.Tensor) -> np.ndarray:
    """A numpy view of a float32 tensor, or of a bfloat16 tensor's bits (uint16)."""
    return t.view(torch.int16).numpy().view(np.uint16) if t.dtype == torch.bfloat16 else t.numpy()


def to_float64(a: np.ndarray) -> np.ndarray:
    """float32 or bfloat16 bits (uint16) -> float64."""
    if a.dtype == np.uint16:
        return (a.astype(np.uint32) << 16).view(np.float32).astype(np.float64)
    return a.astype(np.float64)


def float64_reference(s: "Shape", causal: bool, block: int = ERR64_BLOCK) -> tuple:
    """out, dq, dk, dv in float64 from the (rounded) inputs, `block` query rows at a time
    so that memory is O(block·N), not O(N²) (torch's math SDPA in float64 needs several
    B·H·N² buffers: ~10 GiB at N = 4096, H = 8). Per head, with c = 1/sqrt(d) and rows i
    of one block (causal: keys j <= i, so keys past the block's last row are left out):

      P = softmax(c·Q_i Kᵀ)       out_i = P V          D_i = rowsum(dout_i ∘ out_i)
      dS = P ∘ (dout_i Vᵀ − D_i)   dq_i = c·dS K        dk += c·dSᵀ Q_i     dv += Pᵀ dout_i
    """
    q, k, v, dout = (to_float64(x) for x in (s.qn, s.kn, s.vn, s.doutn))
    scale = 1.0 / np.sqrt(s.d)
    out, dq = np.empty_like(q), np.empty_like(q)
    dk, dv = np.zeros_like(k), np.zeros_like(v)
    for b in range(s.b):
        for h in range(s.h):
            qh, kh, vh, doh = q[b, h], k[b, h], v[b, h], dout[b, h]
            for i0 in range(0, s.n, block):
                i1 = min(s.n, i0 + block)
                keys = i1 if causal else s.n
                scores = (qh[i0:i1] @ kh[:keys].T) * scale
                if causal:
                    rows = np.arange(i0, i1)[:, None]
                    scores[np.arange(keys)[None, :] > rows] = -np.inf
                p = np.exp(scores - scores.max(axis=1, keepdims=True))
                p /= p.sum(axis=1, keepdims=True)
                o = p @ vh[:keys]
                ds = p * (doh[i0:i1] @ vh[:keys].T
                          - np.sum(doh[i0:i1] * o, axis=1, keepdims=True))
                out[b, h, i0:i1] = o
                dq[b, h, i0:i1] = (ds @ kh[:keys]) * scale
                dk[b, h, :keys] += (ds.T @ qh[i0:i1]) * scale
                dv[b, h, :keys] += p.T @ doh[i0:i1]
    return out, dq, dk, dv


def tile_gemm_rates(bench: Path, d: int, threads: int) -> dict[int, float]:
    """{threads: GFLOP/s} of the kernels' tile GEMM from `burst-bench --gemm` (one
    thread, and `threads` threads at once), or {} if burst-bench is missing."""
    if not bench.exists():
        return {}
    out = subprocess.run([str(bench), "--gemm", "--threads", str(threads), "--seq-len", "128",
                          "--heads", "1", "--head-dim", str(d), "--repeats", "1", "--warmup", "0",
                          "--mode", "fwd"], capture_output=True, text=True, check=True).stdout
    lines = [json.loads(l) for l in out.splitlines() if '"tile_gemm"' in l]
    return {r["threads"]: r["gflops"] for r in lines}


_logged: set[str] = set()  # what open_plan has said once already


def open_plan(rec: Recorder, ctx, s: Shape, causal: bool, threads: int, compute: str):
    """ctx.plan for this shape with tile products `compute`, or None for "fast" when this
    binding's ctx.plan has no compute keyword (then every plan computes exactly, with fp32
    products: "exact" still gets its plan, without the keyword)."""
    shape = (s.b, s.n, s.h, s.d)
    options = {"mask": "causal" if causal else "none", "num_threads": threads,
               "layout": "bhsd", "dtype": s.dtype}
    try:
        return ctx.plan(*shape, compute=compute, **options)
    except TypeError as e:
        if "compute" not in str(e):
            raise
        reason = f"ctx.plan(compute=...) raised TypeError: {e}"
    if compute == "exact":
        if "exact" not in _logged:
            _logged.add("exact")
            log(f"  {reason}: exact plans without the keyword (what every plan was before it)")
        return ctx.plan(*shape, **options)
    if compute not in _logged:
        _logged.add(compute)
        log(f"  {compute.upper()} is unavailable ({reason}): no {compute} rows")
        rec.emit({"record": "unavailable", "compute": compute, "reason": reason})
    return None


def bench_shape(rec: Recorder, ctx, s: Shape, causal: bool, threads: int, args) -> None:
    base = {"B": s.b, "H": s.h, "N": s.n, "d": s.d, "causal": causal, "threads": threads,
            "dtype": s.dtype}
    label = f"{s.dtype} H={s.h} N={s.n} d={s.d} causal={int(causal)} threads={threads}"
    one_call = 0 < args.one_call_from <= s.n
    repeats, warmup = (1, 0) if one_call else (args.repeats, 1)

    def measure(impl: str, mode: str, fn, compute: str | None = None) -> None:
        result = rates(time_calls(fn, repeats, warmup),
                       attention_flops(mode, s.b, s.h, s.n, s.d, causal))
        extra = {} if compute is None else {"compute": compute}
        rec.emit({"record": "measurement", "impl": impl, "mode": mode, **base, **extra, **result,
                  "repeats": repeats, "warmup": warmup})
        name = impl if compute is None else f"{impl}/{compute}"
        log(f"  {label} {name:10} {mode:16} {describe(result)}")

    results = {}  # the last timed call's outputs, for the error check

    # torch (its OpenMP pool is idle while ours runs, and ours is closed while torch runs)
    torch.set_num_threads(threads)

    def torch_forward():
        results["torch_out"] = F.scaled_dot_product_attention(s.q, s.k, s.v, is_causal=causal)

    def torch_forward_backward():
        for t in (s.qg, s.kg, s.vg):
            t.grad = None
        out = F.scaled_dot_product_attention(s.qg, s.kg, s.vg, is_causal=causal)
        out.backward(s.dout)

    measure("torch", "forward", torch_forward)
    measure("torch", "forward_backward", torch_forward_backward)
    torch_outs = [to_numpy(results["torch_out"])] + [to_numpy(t.grad) for t in (s.qg, s.kg, s.vg)]

    # ours, once per tile-product mode
    ours = {}  # compute -> [out, dq, dk, dv] of the last timed calls
    for compute in args.compute:
        plan = open_plan(rec, ctx, s, causal, threads, compute)
        if plan is None:
            continue
        with plan:
            def ours_forward():
                results["ours_out"], _ = plan.forward(s.qn, s.kn, s.vn)

            def ours_forward_backward():
                out, lse = plan.forward(s.qn, s.kn, s.vn)
                results["ours_grads"] = plan.backward(s.qn, s.kn, s.vn, out, lse, s.doutn)

            measure("ours", "forward", ours_forward, compute)
            measure("ours", "forward_backward", ours_forward_backward, compute)
        ours[compute] = [results.pop("ours_out"), *results.pop("ours_grads")]

    # Errors: against torch, and (bf16) of ours and torch against float64 attention of the
    # same rounded inputs, made once per shape and mask (all thread counts share it).
    names = ("out", "dq", "dk", "dv")
    ref, skipped = None, None
    if s.dtype != "f32" and ours:
        if s.n > args.err64_max_n:
            skipped = f"N = {s.n} > --err64-max-n {args.err64_max_n}"
        else:
            if causal not in s.ref64:
                t0 = time.perf_counter()
                s.ref64[causal] = float64_reference(s, causal)
                log(f"  {label} float64 reference: {time.perf_counter() - t0:.1f} s")
            ref = s.ref64[causal]
    for compute, outs in ours.items():
        errors = {f"err_{g}": rel_err(to_float64(o), to_float64(t))
                  for g, o, t in zip(names, outs, torch_outs)}
        definition = "max|ours - torch| / max|torch|"
        if ref is not None:
            for g, o, t, r in zip(names, outs, torch_outs, ref):
                errors[f"err64_ours_{g}"] = rel_err(to_float64(o), r)
                errors[f"err64_torch_{g}"] = rel_err(to_float64(t), r)
            definition += "; err64_*: max|x - float64 ref| / max|ref|, ref from the same rounded inputs"
        elif skipped:
            errors["err64_skipped"] = skipped
        rec.emit({"record": "check", **base, "compute": compute, **errors, "definition": definition})
        log(f"  {label} ours/{compute} errors: " +
            "  ".join(f"{k.replace('err64_', 'f64 ').replace('err_', '')} {v:.2e}"
                      for k, v in errors.items() if isinstance(v, float)) +
            (f"  (err64 skipped: {skipped})" if skipped else ""))


# ---------------------------------------------------------------------------- main
def main(argv=None) -> int:
    args = parse_args(argv)
    run_id = datetime.datetime.now().strftime("%Y%m%dT%H%M%S-") + uuid.uuid4().hex[:6]
    rec = Recorder(args.out, run_id, args.tag)
    rec.emit({"record": "header", "time": datetime.datetime.now().astimezone().isoformat(
                  timespec="seconds"),
              "command": shlex.join(["python3", *sys.argv]), "cwd": os.getcwd(),
              "sweep": {"B": args.batch, "H": args.heads, "N": args.n, "d": args.d,
                        "dtype": args.dtype, "skip": sorted(args.skip),
                        "causal": args.causal, "threads": args.threads,
                        "repeats": args.repeats, "compute": args.compute,
                        "one_call_from": args.one_call_from, "err64_max_n": args.err64_max_n},
              "machine": machine_info()})
    try:
        if not args.no_sgemm:
            log("sgemm reference lines (128 x 128 x d tiles)")
            backends = [("torch.bmm", sgemm_torch)]
            if threadpoolctl is not None:
                backends.append(("numpy.matmul", sgemm_numpy))
            else:
                log("  threadpoolctl is not installed: skipping the numpy.matmul line")
            for d in args.d:
                for threads in args.threads:
                    for backend, fn in backends:
                        result = rates(*fn(d, threads, args.repeats))
                        rec.emit({"record": "measurement", "impl": "sgemm", "mode": backend,
                                  "gemm": f"{SGEMM_TILES} x (128x{d} @ {d}x128)",
                                  "B": None, "H": None, "N": None, "d": d, "causal": None,
                                  "threads": threads, **result, "repeats": args.repeats})
                        log(f"  d={d} threads={threads} {backend:12} {describe(result)}")

        log("tile GEMM rate of our kernels (burst-bench --gemm)")
        for d in args.d:
            rates_by_threads = {}
            for threads in args.threads:
                rates_by_threads.update(tile_gemm_rates(args.burst_bench, d, threads))
            for threads, rate in sorted(rates_by_threads.items()):
                rec.emit({"record": "measurement", "impl": "tile_gemm", "mode": "libxsmm",
                          "gemm": f"128x{d} @ {d}x128, burst-bench --gemm", "B": None, "H": None,
                          "N": None, "d": d, "causal": None, "threads": threads, "gflops": rate})
                log(f"  d={d} threads={threads} {rate:.1f} GFLOP/s")

        with ba.Context.self() as ctx:
            for dtype in args.dtype:
                for n in args.n:
                    for h in args.heads:
                        if (n, h) in args.skip:
                            log(f"skipping N={n} H={h} (--skip)")
                            continue
                        for d in args.d:
                            shape = Shape(args.batch, h, n, d, args.seed, dtype)
                            for causal in args.causal:
                                for threads in args.threads:
                                    bench_shape(rec, ctx, shape, causal, threads, args)
                            del shape
    finally:
        rec.close()
    log(f"appended run {run_id} to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
