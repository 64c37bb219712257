#!/usr/bin/env python3
"""Table of bench/run_cluster.sh: the two-node cluster (measured) against the simulated
network (predicted), per link rate and case.

    bench/cluster_report.py [--run RUN] RESULTS.jsonl [OUT.md]

Without --run the last run in the file is used. Prints the markdown and, with OUT.md,
writes it there.
"""
import argparse
import json
import sys

CASES = {"single": "BURST one ring (G = 4)", "double": "BURST double ring (G = 0 → 2)",
         "ulysses": "ULYSSES", "allgather": "ALLGATHER"}


def fmt(x, digits=3):
    if x is None:
        return "–"
    if isinstance(x, float):
        return f"{x:.{digits}g}"
    return str(x)


def ratio(p, m):
    return p / m if p is not None and m else None


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--run")
    ap.add_argument("jsonl")
    ap.add_argument("md", nargs="?")
    a = ap.parse_args()
    lines = [json.loads(l) for l in open(a.jsonl) if l.strip().startswith("{")]
    lines = [l for l in lines if l.get("part") == "cluster"]
    if not lines:
        sys.exit("cluster_report: no cluster lines")
    run = a.run or lines[-1]["run"]
    lines = [l for l in lines if l["run"] == run]
    header = next((l for l in lines if l.get("bench") == "header"), {})
    rates = header.get("rates") or sorted({l["rate"] for l in lines if "rate" in l})
    comm = {(l["rate"], l["case"], l["kind"]): l for l in lines if l.get("bench") == "comm"}
    probe = {l["rate"]: l for l in lines if l.get("bench") == "cluster_probe"}

    out = []
    out.append("# Two-node cluster vs the simulated network (issue 20)\n")
    out.append(f"Run `{run}`: `{header.get('command', '')}` at commit `{header.get('git_commit', '')[:12]}`"
               f"{' (dirty)' if header.get('git_dirty') else ''}, {header.get('date', '')}, {header.get('cpu', '')}"
               f" ({header.get('cpus', '?')} CPUs, load average {', '.join(f'{x:.1f}' for x in header.get('load_average', []))}"
               f" at the start), {header.get('mpirun', '')}.\n")
    out.append(f"P = 4 as 2 nodes × 2 ranks (scripts/cluster.sh), N = {header.get('seq_len')}, H = 8, d = 128, "
               f"causal zigzag, forward + backward, 1 thread per rank, {header.get('warmup')} warm-up + "
               f"{header.get('repeats')} timed call(s) (median).\n")
    out.append("## The links (bench/cluster_probe.c on the cluster)\n")
    out.append("| tbf rate | intra-node B/s per flow (vader, 4 flows) | intra latency | inter-node B/s per flow (TCP on lo, 4 flows) | × flows | inter latency |")
    out.append("|---|--:|--:|--:|--:|--:|")
    for r in rates:
        p = probe.get(r)
        if not p:
            continue
        out.append(f"| {r} | {p['intra_bandwidth']:.3g} | {p['intra_latency'] * 1e6:.1f} µs | {p['inter_bandwidth']:.3g} | "
                   f"{p['inter_bandwidth'] * p['inter_flows']:.3g} | {p['inter_latency'] * 1e6:.1f} µs |")
    out.append("")
    out.append("## Measured (cluster) and predicted (simulated network)\n")
    out.append("time = median fwd+bwd call (rank 0); wait = exposed communication wait of the last call, "
               "fwd + bwd, the largest over the ranks (`comm_wait_s`); inter MB = bytes sent to the other node "
               "over all ranks, fwd + bwd (`bytes_sent_inter_group`); ratio = predicted / measured.\n")
    out.append("| rate | case | G | inter MB | time meas. s | time pred. s | ratio | wait meas. s | wait pred. s | ratio | wait share meas. | simulated network |")
    out.append("|---|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|---|")
    for r in rates:
        for c in CASES:
            m, p = comm.get((r, c, "measured")), comm.get((r, c, "predicted"))
            if not m and not p:
                continue
            def get(x, key):
                return x.get(key) if x else None
            def wait(x):
                return max(x["comm_wait_s"]) if x else None
            def inter(x):
                if not x:
                    return None
                total = sum(x["fwd"]["bytes_sent_inter_group"]) + (sum(x["bwd"]["bytes_sent_inter_group"]) if x.get("bwd") else 0)
                return total / 1e6
            share = max(w / t for w, t in zip(m["comm_wait_s"], m["total_s"]) if t > 0) if m else None
            g = get(m, "intra_group_size") if m else get(p, "intra_group_size")
            tm, tp = get(m, "median_s"), get(p, "median_s")
            out.append(f"| {r} | {CASES[c]} | {g} | {fmt(inter(m), 4)} | {fmt(tm)} | {fmt(tp)} | {fmt(ratio(tp, tm), 2)} | "
                       f"{fmt(wait(m))} | {fmt(wait(p))} | {fmt(ratio(wait(p), wait(m)), 2)} | "
                       f"{fmt(share, 2)} | `{get(p, 'network') or '–'}` |")
    out.append("")
    if header.get("model", "link") in ("link", ""):
        model = ("the simulated network's `inter_port=link`: every inter-node message, both directions, "
                 "queues for one port whose bandwidth is the link's rate (capped by what TCP over lo carried "
                 "in the probe) — the bucket itself")
    else:
        model = ("each rank its own inter-node port each way (the simulated network's default), with the "
                 "link's rate (capped by what TCP over lo carried in the probe) divided by the ranks that "
                 "send across at once (2 for the single ring, 4 otherwise)")
    out.append("Notes: tbf on lo is one token bucket for all inter-node traffic in both directions; the "
               f"prediction models it as {model}. All ranks share the machine's cores in both columns "
               "(4 processes, or 4 threads, on the same CPUs). G = burst_stats.intra_group_size (ALLGATHER "
               "and ULYSSES run no ring: the world size since 0.9). See docs/cluster.md.\n")
    text = "\n".join(out)
    print(text)
    if a.md:
        with open(a.md, "w") as f:
            f.write(text)


if __name__ == "__main__":
    main()
