#!/usr/bin/env python3
"""Turns docs/variants/*.jsonl (bench/run_variants.sh) into the markdown of docs/variants.md."""
import json
import os
import platform
import subprocess

HERE = os.path.dirname(os.path.abspath(__file__))
DATA = os.path.join(HERE, "..", "docs", "variants")


def load(name):
    with open(os.path.join(DATA, name)) as f:
        return [json.loads(line) for line in f if line.startswith("{")]


def cpu_model():
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
        return next(l.split(":", 1)[1].strip() for l in out.splitlines() if l.startswith("Model name"))
    except Exception:
        return platform.processor() or "unknown"


def main():
    print("# Variants: load balance, windows, GQA — measured\n")
    print(f"Machine: {cpu_model()}, 2 cores. Made by `bench/run_variants.sh` "
          "(raw JSON lines in `docs/variants/`). Ranks under `mpirun` share the 2 cores, so a rank's "
          "work is its process CPU time, not wall time; a tile is one head × 256 queries × 128 keys.\n")

    rows = load("balance.jsonl")
    print("## Causal forward+backward, P = 4, N = 16384, H = 8, d = 128, 1 thread per rank\n")
    print("| distribution | rank | tokens | fwd tiles | bwd tiles | fwd+bwd tiles | CPU s per call |")
    print("|---|--:|--:|--:|--:|--:|--:|")
    summary = []
    for dist in ("contiguous", "zigzag", "striped"):
        ranks = sorted((r for r in rows if r["bench"] == "rank" and r["distribution"] == dist), key=lambda r: r["rank"])
        for r in ranks:
            print(f"| {dist} | {r['rank']} | {r['tokens']} | {r['fwd_tiles_computed']} | {r['bwd_tiles_computed']} | "
                  f"{r['fwd_tiles_computed'] + r['bwd_tiles_computed']} | {r['cpu_s_per_call']:.2f} |")
        if ranks:
            cpu = [r["cpu_s_per_call"] for r in ranks]
            fwd = [r["fwd_tiles_computed"] for r in ranks]
            bwd = [r["bwd_tiles_computed"] for r in ranks]
            summary.append((dist, max(cpu) / min(cpu), max(fwd) / min(fwd), max(bwd) / min(bwd),
                            max(fwd) + max(bwd)))
    print("\n| distribution | CPU busiest / idlest | fwd tiles max/min | bwd tiles max/min | critical path (max fwd + max bwd tiles) |")
    print("|---|--:|--:|--:|--:|")
    for dist, cpu, fwd, bwd, path in summary:
        print(f"| {dist} | {cpu:.3f} | {fwd:.2f} | {bwd:.2f} | {path} |")
    print("\nEvery ring step is a synchronisation point, so a phase lasts as long as its busiest rank: "
          "the last column is the tile count on the critical path. Contiguous causal is balanced only "
          "in the sum of both phases (its forward loads the last rank, its backward the first).\n")

    rows = [r for r in load("window.jsonl") if r["bench"] == "burst"]
    print("## Sliding window 4096 vs full causal, P = 2, N = 65536, H = 1, d = 128, forward+backward\n")
    print("| distribution | mask | visible pairs | wall s | GFLOP/s (visible pairs) |")
    print("|---|---|--:|--:|--:|")
    by = {}
    for r in rows:
        mask = "causal + window (4096, 0)" if r["window"][0] >= 0 else "causal"
        by[(r["distribution"], mask)] = r
        print(f"| {r['distribution']} | {mask} | {r['visible_pairs']} | {r['median_s']:.2f} | {r['gflops']:.1f} |")
    print("\n| distribution | time window / causal | visible pairs window / causal |")
    print("|---|--:|--:|")
    for dist in ("contiguous", "zigzag"):
        w, c = by.get((dist, "causal + window (4096, 0)")), by.get((dist, "causal"))
        if w and c:
            print(f"| {dist} | {w['median_s'] / c['median_s']:.3f} | {w['visible_pairs'] / c['visible_pairs']:.3f} |")

    print("\n## What the skipping saves (same runs)\n")
    balance = [r for r in load("balance.jsonl") if r["bench"] == "rank"]
    window = [r for r in load("window.jsonl") if r["bench"] == "rank"]
    def total(rows, key, **match):
        return sum(r[key] for r in rows if all(r[k] == v for k, v in match.items()))
    for label, rows, match in (("causal, P = 4, contiguous", balance, dict(distribution="contiguous")),
                               ("causal, P = 4, zigzag", balance, dict(distribution="zigzag")),
                               ("causal + window 4096, P = 2, contiguous", window, dict(distribution="contiguous", window=[4096, 0])),
                               ("causal, P = 2, contiguous", window, dict(distribution="contiguous", window=[-1, -1]))):
        fc, fs = total(rows, "fwd_tiles_computed", **match), total(rows, "fwd_tiles_skipped", **match)
        bc, bs = total(rows, "bwd_tiles_computed", **match), total(rows, "bwd_tiles_skipped", **match)
        steps = sum(r["fwd_steps_computed"] + r["bwd_steps_computed"] for r in rows if all(r[k] == v for k, v in match.items()))
        nranks = sum(1 for r in rows if all(r[k] == v for k, v in match.items()))
        print(f"- {label}: tiles computed forward {fc} of {fc + fs} ({100 * fc / (fc + fs):.1f} %), backward {bc} of {bc + bs} "
              f"({100 * bc / (bc + bs):.1f} %); ring steps computed {steps} of {2 * nranks * nranks}; "
              f"bytes sent forward {total(rows, 'fwd_bytes_sent', **match)}, backward {total(rows, 'bwd_bytes_sent', **match)} (all ranks).")
    print("\nWithout skipping every rank would send the full formulas: at P = 4 (N = 16384, H = 8, d = 128) "
          "100663296 bytes forward and 168558592 backward per rank, which is what zigzag and striped send "
          "(every rank needs every block); contiguous causal sends 50 % of the forward and 75 % of the "
          "backward bytes. At P = 2 (N = 65536, H = 1) the full formulas are 33554432 forward and 67371008 backward "
          "per rank; contiguous causal (with or without the window) sends 50 % and 50 %.\n")

    rows = [r for r in load("gqa.jsonl") if r["bench"] == "rank"]
    print("\n## GQA h_q = 32, h_kv = 8 vs MHA h = 32: bytes per rank (loopback P = 4, N = 4096, d = 128)\n")
    print("| heads q/kv | rank | forward bytes sent | backward bytes sent |")
    print("|---|--:|--:|--:|")
    totals = {}
    for r in sorted(rows, key=lambda r: (r["heads_kv"], r["rank"])):
        print(f"| {r['heads']}/{r['heads_kv']} | {r['rank']} | {r['fwd_bytes_sent']} | {r['bwd_bytes_sent']} |")
        t = totals.setdefault(r["heads_kv"], [0, 0])
        t[0] += r["fwd_bytes_sent"]; t[1] += r["bwd_bytes_sent"]
    if 8 in totals and 32 in totals:
        print(f"\nGQA / MHA: forward {totals[8][0] / totals[32][0]:.3f}, backward {totals[8][1] / totals[32][1]:.3f}. "
              "K and V travel in the forward at num_heads_kv heads; the BURST backward moves the query side "
              "(Q, dO, D, lse, dQ at num_heads_q heads), which GQA does not shrink.")


if __name__ == "__main__":
    main()
