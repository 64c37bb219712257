#!/usr/bin/env python3
"""Table (decode.md) and plot (decode.png) of bench/run_decode.sh's results.jsonl:
ours against torch SDPA decode, same shapes, same run; ours as a share of the read of
a buffer of the rank's shard size measured in the same process; P = 2 under mpirun;
the merge alone; prefill latency.

    python3 bench/decode_report.py docs/perf/decode
"""
from __future__ import annotations

import json
import sys
from pathlib import Path


def main() -> None:
    folder = Path(sys.argv[1] if len(sys.argv) > 1 else "docs/perf/decode")
    rows = [json.loads(line) for line in (folder / "results.jsonl").read_text().splitlines() if line.strip()]
    machine = next((r for r in rows if r["bench"] == "machine"), {})
    ours = [r for r in rows if r["bench"] == "decode"]
    torch = {(r["dtype"], r["batch"], r["threads"], r["cache_len"]): r for r in rows if r["bench"] == "decode_torch"}
    out = [f"# Decode over a sharded KV cache vs torch SDPA decode",
           "",
           f"Machine: {machine.get('cpu', '?')}, measured {machine.get('date', '?')} by `bench/run_decode.sh`; "
           "one attention layer, h_q = 32, h_kv = 8, d = 128, T = 1. `read` is a sum over a buffer of this "
           "rank's K+V size in the same process (the bound of a step that reads its shard once); "
           "`of read` = read time / step time. torch: `F.scaled_dot_product_attention(q, K, V, enable_gqa=True)` "
           "over K, V [B, 8, L, 128] in one process, same dtype and threads, run right after ours.",
           "",
           "| dtype | B | L | P | threads/rank | ours ms | ours GB/s | read GB/s | of read | torch ms | torch GB/s | ours vs torch |",
           "|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|"]
    for r in ours:
        t = torch.get((r["dtype"], r["batch"], r["threads"] * r["ranks"], r["cache_len"]))
        if r["ranks"] > 1:
            t = torch.get((r["dtype"], r["batch"], r["ranks"], r["cache_len"]))   # torch on as many cores
        ratio = f"{t['median_s'] / r['median_s']:.1f}×" if t else "–"
        out.append(f"| {r['dtype']} | {r['batch']} | {r['cache_len']} | {r['ranks']} | {r['threads']} | "
                   f"{r['median_s'] * 1e3:.2f} | {r['decode_gbs']:.1f} | {r['read_gbs']:.1f} | {r['fraction_of_read']:.0%} | "
                   + (f"{t['median_s'] * 1e3:.1f} | {t['gbs']:.2f} | {ratio} |" if t else "– | – | – |"))
    merges = [r for r in rows if r["bench"] == "merge"]
    if merges:
        out += ["", "## The merge alone (a 64-token cache: the step is the partials' exchange, the agreement round and the merge)",
                "", "| transport | P | step µs | exchange µs (median) |", "|---|--:|--:|--:|"]
        for r in merges:
            out.append(f"| {r['transport']} | {r['ranks']} | {r['median_s'] * 1e6:.0f} | {r['merge_median_s'] * 1e6:.0f} |")
    prefill = [r for r in rows if r["bench"] == "prefill"]
    ptorch = {r["seq_len"]: r for r in rows if r["bench"] == "prefill_torch"}
    if prefill:
        out += ["", "## Prefill (first-token latency), one layer: h_q 8, h_kv 2, d 128, causal, ZIGZAG; 2 cores either way",
                "", "| N | P | threads/rank | ours s | torch SDPA s (1 process, 2 threads) | torch / ours |", "|--:|--:|--:|--:|--:|--:|"]
        for r in prefill:
            t = ptorch.get(r["seq_len"])
            out.append(f"| {r['seq_len']} | {r['ranks']} | {r['threads']} | {r['median_s']:.2f} | "
                       + (f"{t['median_s']:.2f} | {t['median_s'] / r['median_s']:.2f} |" if t else "– | – |"))
    (folder / "decode.md").write_text("\n".join(out) + "\n")
    print("\n".join(out))
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    fig, ax = plt.subplots(figsize=(8, 5))
    for dtype in ("f32", "bf16"):
        for threads in (1, 2):
            pts = sorted((r["cache_len"], r["decode_gbs"]) for r in ours
                         if r["dtype"] == dtype and r["batch"] == 1 and r["threads"] == threads and r["ranks"] == 1)
            if pts:
                ax.plot(*zip(*pts), marker="o", label=f"ours {dtype}, {threads} thread(s)")
            tp = sorted((k[3], v["gbs"]) for k, v in torch.items() if k[0] == dtype and k[1] == 1 and k[2] == threads)
            if tp:
                ax.plot(*zip(*tp), marker="x", linestyle="--", label=f"torch {dtype}, {threads} thread(s)")
    for threads, style in ((1, ":"), (2, "-.")):
        reads = sorted(r["read_gbs"] for r in ours if r["batch"] == 1 and r["ranks"] == 1 and r["threads"] == threads)
        if reads:
            ax.axhline(reads[len(reads) // 2], color="gray", linestyle=style,
                       label=f"read of the shard, {threads} thread(s) (median)")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("cache length L (tokens)")
    ax.set_ylabel("K,V bytes read per second (GB/s)")
    ax.set_title("Decode step, B = 1, h_q 32 / h_kv 8, d 128, P = 1")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(folder / "decode.png", dpi=110)


if __name__ == "__main__":
    main()
