"""burst_attention.torch vs ring-attention-pytorch (the peer) on CPU, 2 processes.

Run under mpirun (bench/run_peer.sh does it):

    mpirun -n 2 python3 bench/peer_ring_attention.py [--n 4096 8192] [--causal off on]
        [--repeats 3] [--peer-buckets 512 1024 [shard]] [--ours-comm torch|mpi]
        [--jsonl docs/peer_ring_attention.jsonl]

Every rank runs one compute thread (torch.set_num_threads(1), our num_threads=1).
torch.distributed is initialised with gloo from the OpenMPI environment
(RANK = OMPI_COMM_WORLD_RANK, ...); mpi4py initialises MPI for our layer.

Per (N, causal), forward + backward, B = 1, H = 8, d = 128, fp32:
  * ours: burst_attn on this rank's shard ("zigzag" for causal, "contiguous" for not;
    causal "contiguous" as a side line), comm = the torch.distributed group (mapped to
    MPI by rank inside the layer);
  * peer: ring_attention_pytorch.ring_flash_attn(q, k, v, causal=c,
    bucket_size=b, ring_reduce_col=True) on a contiguous shard: the call
    RingAttention(ring_attn=True) makes on CPU; b = 512 (RingAttention's default, the
    README's module) and 1024 (ring_flash_attn's default) — optionally N/P ("shard":
    the peer's assert.py sets bucket_size = ring_seq_size = seq_len / world_size); the
    summary's ratio is against the fastest of them;
  * sdpa: torch SDPA fp32 on the whole sequence, 1 thread, rank 0 alone (context).
Timing: dist.barrier(); t0; out = f(q, k, v); out.backward(dout); dist.barrier(); t1
on rank 0; a warm-up round then --repeats rounds, each round one call of every
implementation in turn (interleaved, so load from elsewhere spreads over all of them);
median reported.
Errors: the last timed call's out, dq, dk, dv gathered to rank 0 and un-sharded by
position, against torch SDPA in float64 on the whole sequence:
max|x - ref| / max|ref|.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import time


def _env_setup():
    env = os.environ
    if "OMPI_COMM_WORLD_RANK" not in env and "RANK" not in env:
        sys.exit("peer_ring_attention.py: run under mpirun -n 2 (see bench/run_peer.sh)")
    env.setdefault("RANK", env.get("OMPI_COMM_WORLD_RANK", "0"))
    env.setdefault("WORLD_SIZE", env.get("OMPI_COMM_WORLD_SIZE", "1"))
    env.setdefault("LOCAL_RANK", env.get("OMPI_COMM_WORLD_LOCAL_RANK", env["RANK"]))
    env.setdefault("MASTER_ADDR", "127.0.0.1")
    env.setdefault("MASTER_PORT", "29531")


_env_setup()

from mpi4py import MPI  # noqa: E402  (initialises MPI before torch.distributed)

import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402
import torch.nn.functional as F  # noqa: E402

import burst_attention  # noqa: E402
from burst_attention.torch import burst_attn, last_stats, shard_positions  # noqa: E402

B, H, D = 1, 8, 128
HZ = os.sysconf("SC_CLK_TCK")
NCPU = os.cpu_count() or 1


# --------------------------------------------------------------------------- #
# helpers


def busy_ticks() -> int:
    """All CPUs' non-idle jiffies (user nice system irq softirq steal) from /proc/stat."""
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    user, nice, system, idle, iowait, irq, softirq, steal = (fields + [0] * 8)[:8]
    return user + nice + system + irq + softirq + steal


def self_ticks() -> int:
    with open("/proc/self/stat") as f:
        parts = f.read().rsplit(")", 1)[1].split()
    return int(parts[11]) + int(parts[12])  # utime + stime, all threads


def rel_err(x: torch.Tensor, ref: torch.Tensor) -> float:
    x = x.to(torch.float64)
    return float((x - ref).abs().max() / ref.abs().max())


def gather_full(t: torch.Tensor, positions: "list[torch.Tensor]", n: int) -> "torch.Tensor | None":
    """All ranks' [B, n_local, H, D] shards -> the full [B, n, H, D] on rank 0 (None
    elsewhere); shards may differ in length (all_gather needs equal ones: padded)."""
    world = dist.get_world_size()
    t = t.detach().contiguous()
    longest = max(len(p) for p in positions)
    pad = torch.zeros(B, longest, H, D, dtype=t.dtype)
    pad[:, : t.shape[1]] = t
    parts = [torch.empty_like(pad) for _ in range(world)]
    dist.all_gather(parts, pad)
    if dist.get_rank() != 0:
        return None
    full = torch.empty(B, n, H, D, dtype=t.dtype)
    for r in range(world):
        full.index_copy_(1, positions[r], parts[r][:, : len(positions[r])])
    return full


def make_inputs(n: int, seed: int):
    g = torch.Generator().manual_seed(seed * 1000003 + n)
    return [torch.randn(B, n, H, D, generator=g, dtype=torch.float32) for _ in range(4)]


def reference(q, k, v, dout, causal: bool, threads: int):
    """out, dq, dk, dv in float64 ([B, N, H, D]), torch SDPA on the whole sequence."""
    torch.set_num_threads(threads)
    try:
        qd, kd, vd = [t.to(torch.float64).transpose(1, 2).contiguous().requires_grad_()
                      for t in (q, k, v)]
        out = F.scaled_dot_product_attention(qd, kd, vd, is_causal=causal)
        out.backward(dout.to(torch.float64).transpose(1, 2).contiguous())
        return [t.detach().transpose(1, 2).contiguous() for t in (out, qd.grad, kd.grad, vd.grad)]
    finally:
        torch.set_num_threads(1)


# --------------------------------------------------------------------------- #
# the timed calls


class Runner:
    """One implementation on this rank's shards: call() times one forward + backward
    between two barriers (rank 0's clock) and adds up, over the timed calls only, the
    busy CPU ticks of the machine and of this job's ranks (collective)."""

    def __init__(self, fn, shards):
        self.fn, self.shards = fn, shards
        self.times, self.last = [], None
        self.wall = self.busy = self.mine = 0.0

    def call(self, timed: bool):
        q0, k0, v0, dout = self.shards
        q, k, v = [t.detach().clone().requires_grad_() for t in (q0, k0, v0)]
        dist.barrier()
        b0, s0 = busy_ticks(), self_ticks()
        t0 = time.perf_counter()
        out = self.fn(q, k, v)
        out.backward(dout)
        dist.barrier()
        dt = time.perf_counter() - t0
        b1, s1 = busy_ticks(), self_ticks()
        self.last = (out.detach(), q.grad, k.grad, v.grad)
        if timed:
            mine = torch.tensor([s1 - s0], dtype=torch.float64)
            dist.all_reduce(mine)
            self.times.append(dt)
            self.wall += dt
            self.busy += b1 - b0
            self.mine += mine.item()

    def others_share(self) -> float:
        return max(0.0, self.busy - self.mine) / HZ / max(self.wall * NCPU, 1e-9)


def time_sdpa(q, k, v, dout, causal: bool, repeats: int):
    """Rank 0: 1-thread fp32 SDPA fwd+bwd on the whole sequence (bhsd tensors); every
    rank returns after the same barrier."""
    result = None
    if dist.get_rank() == 0:
        qb, kb, vb, db = [t.transpose(1, 2).contiguous() for t in (q, k, v, dout)]
        times = []
        b0, s0 = busy_ticks(), self_ticks()
        w0 = None
        for i in range(1 + repeats):
            if i == 1:
                b0, s0, w0 = busy_ticks(), self_ticks(), time.perf_counter()
            qq, kk, vv = [t.clone().requires_grad_() for t in (qb, kb, vb)]
            t0 = time.perf_counter()
            out = F.scaled_dot_product_attention(qq, kk, vv, is_causal=causal)
            out.backward(db)
            dt = time.perf_counter() - t0
            if i > 0:
                times.append(dt)
        wall = time.perf_counter() - w0
        # the other rank waits in a gloo barrier (blocking, not spinning): count all but
        # this process as others
        share = max(0.0, (busy_ticks() - b0) - (self_ticks() - s0)) / HZ / (wall * NCPU)
        last = [t.detach().transpose(1, 2) for t in (out, qq.grad, kk.grad, vv.grad)]
        result = (times, last, share)
    dist.barrier()
    return result


# --------------------------------------------------------------------------- #


def machine_info() -> dict:
    model = ""
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
        for line in out.splitlines():
            if line.startswith("Model name:"):
                model = line.split(":", 1)[1].strip()
    except OSError:
        pass
    try:
        import ring_attention_pytorch  # noqa: F401
        from importlib.metadata import version
        peer_version = version("ring-attention-pytorch")
    except Exception:  # pragma: no cover
        peer_version = None
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                                text=True, cwd=os.path.dirname(os.path.abspath(__file__))
                                ).stdout.strip()
    except OSError:
        commit = ""
    import mpi4py
    return {"cpu_model": model, "cpus": NCPU, "kernel": platform.release(),
            "python": platform.python_version(), "torch": torch.__version__,
            "mpi4py": mpi4py.__version__, "mpi": MPI.Get_library_version().splitlines()[0].strip("\x00 "),
            "ring_attention_pytorch": peer_version,
            "build_info": burst_attention.build_info(), "git_commit": commit,
            "loadavg_at_start": open("/proc/loadavg").read().split()[:3]}


def comm_check(rank: int, world: int) -> dict:
    """Ours with comm=MPI.COMM_WORLD and with comm=the torch group on the same small
    problem: both must give the same bits (they map to the same MPI communicator)."""
    n = 512
    q, k, v, dout = make_inputs(n, 7)
    pos = shard_positions("zigzag", n, world, rank)
    shards = [t.index_select(1, pos).contiguous() for t in (q, k, v, dout)]
    results = {}
    for name, comm in (("mpi4py MPI.COMM_WORLD", MPI.COMM_WORLD),
                       ("torch.distributed group.WORLD", dist.group.WORLD)):
        qs, ks, vs = [t.clone().requires_grad_() for t in shards[:3]]
        out = burst_attn(qs, ks, vs, causal=True, comm=comm, distribution="zigzag",
                         num_threads=1)
        out.backward(shards[3])
        results[name] = [out.detach(), qs.grad, ks.grad, vs.grad]
    a, b = results.values()
    same = all(torch.equal(x, y) for x, y in zip(a, b))
    flag = torch.tensor([int(same)])
    dist.all_reduce(flag, op=dist.ReduceOp.MIN)
    return {"type": "comm_check", "N": n, "causal": True, "distribution": "zigzag",
            "comms": list(results), "bitwise_equal_all_ranks": bool(flag.item())}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, nargs="+", default=[4096, 8192])
    ap.add_argument("--causal", nargs="+", default=["off", "on"], choices=["off", "on"])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--peer-buckets", nargs="+", default=["512", "1024"],
                    help="the peer's bucket_size values: ints, or 'shard' = the whole local "
                         "shard N/P (what the peer's own assert.py uses)")
    ap.add_argument("--ours-comm", choices=["torch", "mpi"], default="torch",
                    help="comm= of our timed calls: the torch.distributed group (mapped to "
                         "MPI by rank) or mpi4py's MPI.COMM_WORLD")
    ap.add_argument("--ref-threads", type=int, default=2,
                    help="threads of the float64 reference on rank 0 (not timed)")
    ap.add_argument("--no-sdpa", action="store_true")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--jsonl", default=None, help="write the JSON lines here (rank 0)")
    ap.add_argument("--command", default=None, help="the command line to record")
    args = ap.parse_args()

    dist.init_process_group("gloo", init_method="env://",
                            timeout=datetime.timedelta(minutes=30))
    rank, world = dist.get_rank(), dist.get_world_size()
    if rank != MPI.COMM_WORLD.Get_rank() or world != MPI.COMM_WORLD.Get_size():
        sys.exit(f"torch rank {rank}/{world} != MPI rank "
                 f"{MPI.COMM_WORLD.Get_rank()}/{MPI.COMM_WORLD.Get_size()}")
    torch.set_num_threads(1)
    from ring_attention_pytorch import ring_flash_attn

    comm = dist.group.WORLD if args.ours_comm == "torch" else MPI.COMM_WORLD
    lines = []
    is0 = rank == 0

    def emit(obj):
        if is0:
            lines.append(obj)
            print(json.dumps(obj), flush=True)

    def progress(msg):
        if is0:
            print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)

    emit({"type": "header", "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
          "command": args.command or " ".join(sys.argv), "world_size": world,
          "threads_per_rank": 1, "B": B, "H": H, "d": D, "N": args.n,
          "causal": [c == "on" for c in args.causal], "repeats": args.repeats,
          "peer_buckets": args.peer_buckets,
          "ours_comm": ("torch.distributed group.WORLD" if args.ours_comm == "torch"
                        else "mpi4py MPI.COMM_WORLD"),
          "peer_entry": "ring_flash_attn(q, k, v, causal=c, bucket_size=b, ring_reduce_col=True)",
          "machine": machine_info()})
    emit(comm_check(rank, world))

    summaries = []
    for n in args.n:
        for causal in [c == "on" for c in args.causal]:
            q, k, v, dout = make_inputs(n, args.seed)
            ref = None
            if is0:
                progress(f"N={n} causal={causal}: float64 reference")
                ref = reference(q, k, v, dout, causal, args.ref_threads)
            dist.barrier()

            def record(impl, variant, times, last, share, extra=None):
                m = {"type": "measurement", "impl": impl, "variant": variant, "N": n,
                     "causal": causal, "B": B, "H": H, "d": D, "threads_per_rank": 1,
                     "median_s": statistics.median(times), "min_s": min(times),
                     "times_s": [round(t, 4) for t in times], "others_cpu_share": round(share, 3)}
                if ref is not None and last is not None:
                    for name, x, r in zip(("out", "dq", "dk", "dv"), last, ref):
                        m["err_" + name] = rel_err(x, r)
                m.update(extra or {})
                emit(m)
                errs = " ".join(f"{m.get(e, float('nan')):.1e}"
                                for e in ("err_out", "err_dq", "err_dk", "err_dv"))
                progress(f"  {impl:5s} {variant:28s} median {m['median_s']:.3f} s  "
                         f"err out/dq/dk/dv {errs}  others {share:.0%}")
                return m

            def ours_runner(distribution):
                pos = [shard_positions(distribution, n, world, r) for r in range(world)]
                shards = [t.index_select(1, pos[rank]).contiguous() for t in (q, k, v, dout)]
                fn = lambda a, b_, c_: burst_attn(a, b_, c_, causal=causal, comm=comm,  # noqa: E731
                                                  distribution=distribution, num_threads=1)
                return Runner(fn, shards), pos

            def peer_runner(bucket):
                pos = [shard_positions("contiguous", n, world, r) for r in range(world)]
                shards = [t.index_select(1, pos[rank]).contiguous() for t in (q, k, v, dout)]
                fn = lambda a, b_, c_: ring_flash_attn(a, b_, c_, causal=causal,  # noqa: E731
                                                       bucket_size=bucket, ring_reduce_col=True)
                return Runner(fn, shards), pos

            main_dist = "zigzag" if causal else "contiguous"
            buckets = []
            for b_arg in args.peer_buckets:
                bucket = n // world if b_arg == "shard" else int(b_arg)
                if bucket not in buckets:
                    buckets.append(bucket)
            # (impl, variant, runner, positions, extra)
            runs = [("ours", main_dist, *ours_runner(main_dist))]
            runs += [("peer", f"contiguous bucket={b_}", *peer_runner(b_)) for b_ in buckets]
            if causal:
                runs.append(("ours", "contiguous", *ours_runner("contiguous")))
            # interleaved: a warm-up round, then `repeats` rounds of one call of each, so
            # a burst of load elsewhere falls on all of them rather than on one
            for i in range(1 + args.repeats):
                progress(f"N={n} causal={causal}: round {i} of {args.repeats} "
                         f"({'warm-up' if i == 0 else 'timed'}): "
                         + ", ".join(f"{impl} {variant}" for impl, variant, *_ in runs))
                for impl, variant, runner, pos in runs:
                    runner.call(timed=i > 0)
                    if impl == "ours" and i == args.repeats:
                        runner.stats = last_stats(comm)  # this rank's last backward
            results = {}
            for impl, variant, runner, pos in runs:
                full = [gather_full(t, pos, n) for t in runner.last]
                extra = {}
                if impl == "ours":
                    allstats = [None] * world
                    dist.all_gather_object(allstats, runner.stats)
                    extra["last_backward_stats_per_rank"] = allstats
                elif is0:
                    # the known bug: is the peer's dK the sum of the true dK and dV?
                    extra["err_dk_vs_true_dk_plus_dv"] = rel_err(full[2], ref[2] + ref[3])
                results[(impl, variant)] = record(impl, variant, runner.times,
                                                  full if is0 else None,
                                                  runner.others_share(), extra)
            ours = results[("ours", main_dist)]
            peers = [(b_, results[("peer", f"contiguous bucket={b_}")]) for b_ in buckets]
            ours_contig = results.get(("ours", "contiguous")) if causal else None
            sdpa = None
            if not args.no_sdpa:
                progress(f"N={n} causal={causal}: torch SDPA fp32, 1 thread, rank 0")
                res = time_sdpa(q, k, v, dout, causal, args.repeats)
                if is0:
                    sdpa = record("sdpa", "whole sequence, 1 process", res[0], res[1], res[2])
            if is0:
                best_bucket, best = min(peers, key=lambda bp: bp[1]["median_s"])
                s = {"type": "summary", "N": n, "causal": causal,
                     "ours_distribution": main_dist, "ours_s": ours["median_s"],
                     "peer_bucket": best_bucket, "peer_s": best["median_s"],
                     "peer_s_by_bucket": {str(b_): p["median_s"] for b_, p in peers},
                     "ratio_peer_over_ours": best["median_s"] / ours["median_s"],
                     "ours_err": {e: ours[f"err_{e}"] for e in ("out", "dq", "dk", "dv")},
                     "peer_err": {e: best[f"err_{e}"] for e in ("out", "dq", "dk", "dv")},
                     "sdpa_s": sdpa["median_s"] if sdpa else None,
                     "ours_contiguous_s": ours_contig["median_s"] if ours_contig else None,
                     "max_others_cpu_share": max(
                         [ours["others_cpu_share"]] + [p["others_cpu_share"] for _, p in peers]
                         + ([ours_contig["others_cpu_share"]] if ours_contig else []))}
                summaries.append(s)
                emit(s)
            ref = None
            dist.barrier()

    if is0:
        target = [s for s in summaries if s["causal"] and s["N"] == 8192]
        if target:
            r = target[0]["ratio_peer_over_ours"]
            emit({"type": "target", "what": "ours >= 4x faster than the peer, causal N=8192, fwd+bwd",
                  "ratio": r, "met": r >= 4.0})
        print_table(summaries, lines[0])
        if args.jsonl:
            with open(args.jsonl, "w") as f:
                for obj in lines:
                    f.write(json.dumps(obj) + "\n")
    dist.barrier()
    dist.destroy_process_group()


def print_table(summaries, header):
    def e(d):
        return " / ".join(f"{d[x]:.1e}" for x in ("out", "dq", "dk", "dv"))

    print("\n| N | mask | ours (s) | peer (s) | peer/ours | ours err out/dq/dk/dv | "
          "peer err out/dq/dk/dv | ours contiguous (s) | SDPA 1 proc (s) | others' CPU |",
          file=sys.stderr)
    print("|---|---|---|---|---|---|---|---|---|---|", file=sys.stderr)
    for s in summaries:
        mask = "causal" if s["causal"] else "none"
        oc = f"{s['ours_contiguous_s']:.3f}" if s["ours_contiguous_s"] else "—"
        sd = f"{s['sdpa_s']:.3f}" if s["sdpa_s"] else "—"
        print(f"| {s['N']} | {mask} | {s['ours_s']:.3f} ({s['ours_distribution']}) | "
              f"{s['peer_s']:.3f} (bucket {s['peer_bucket']}) | **{s['ratio_peer_over_ours']:.2f}** | "
              f"{e(s['ours_err'])} | {e(s['peer_err'])} | {oc} | {sd} | "
              f"≤{s['max_others_cpu_share']:.0%} |", file=sys.stderr)
    print(f"\nmachine: {header['machine']['cpu_model']}; {header['machine']['build_info']}",
          file=sys.stderr)


if __name__ == "__main__":
    main()
