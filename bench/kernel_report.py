#!/usr/bin/env python3
"""Tables of bench/run_kernels.sh's JSONL (issue 10): efficiency against the tile GEMM
rate measured in the same process, thread scaling, small/odd shapes, peak RSS.

  python3 bench/kernel_report.py docs/perf        # reads kernels.jsonl, writes kernels.md

Efficiency = attention GFLOP/s (forward 4·B·H·N²·d, forward+backward 14·B·H·N²·d) /
tile GEMM GFLOP/s of the same process at the same thread count (burst-bench --gemm:
128×128×d JIT products; at 2 threads, two threads running tiles at once). Thread scaling
= median time at 1 thread / median time at 2 threads of the same case; its ceiling is
the tile rate's own 2-thread / 1-thread ratio, printed beside it. Only the newest run
(from the last header line on) is used.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path


def load(path: Path) -> tuple[dict, list[dict]]:
    lines = [json.loads(l) for l in path.read_text().splitlines() if l.strip()]
    start = max(i for i, r in enumerate(lines) if r.get("bench") == "header")
    return lines[start], lines[start + 1:]


def cases(records: list[dict]) -> dict[str, dict]:
    """case id -> {"gemm": {threads: rate}, "fwd": rec, "fwdbwd": rec}"""
    out: dict[str, dict] = {}
    for r in records:
        c = out.setdefault(r["case"], {"gemm": {}, "part": r["part"]})
        if r["bench"] == "tile_gemm":
            c["gemm"][r["threads"]] = r["gflops"]
        elif r["bench"] == "burst":
            c[r["mode"]] = r
    return out


def main(argv: list[str]) -> int:
    folder = Path(argv[1] if len(argv) > 1 else "docs/perf")
    header, records = load(folder / "kernels.jsonl")
    cs = cases(records)
    md = [f"# Kernel efficiency (issue 10)", "",
          f"Machine: {header['cpu']}, {header['nproc']} cores, flags: {header['flags'].strip()}; "
          f"commit {header['commit']}; {header['time']}; command `{header['command']}`; "
          f"code path `{next((r['code_path'] for r in records if 'code_path' in r), '?')}`.", "",
          "Efficiency = our GFLOP/s ÷ the tile GEMM rate printed by `burst-bench --gemm` in the same "
          "process at the same thread count. Targets: forward ≥ 90 %, forward+backward ≥ 85 % "
          "(non-causal, N ≥ 4096); 2 threads ≥ 1.8× one thread.", ""]

    def row_eff(cid: str, c: dict) -> str | None:
        if "fwd" not in c or "fwdbwd" not in c:
            return None
        f, b = c["fwd"], c["fwdbwd"]
        t = f["threads"]
        g = c["gemm"].get(t)
        if g is None:
            return None
        return (f"| {f['seq_len']} | {f['head_dim']} | {f['heads']} | {t} | {g:.1f} | "
                f"{f['gflops']:.1f} | {100 * f['gflops'] / g:.1f} % | {b['gflops']:.1f} | "
                f"{100 * b['gflops'] / g:.1f} % | {b['peak_rss_mib']} |")

    for part, title in (("e", "Efficiency (non-causal, B = 1)"), ("s", "Small and odd shapes (H = 8, non-causal)")):
        md += [f"## {title}", "",
               "| N | d | H | threads | tile GEMM GF/s | fwd GF/s | fwd % of tile | fwd+bwd GF/s | fwd+bwd % of tile | peak RSS MiB |",
               "|---|---|---|---|---|---|---|---|---|---|"]
        md += [r for cid, c in cs.items() if c["part"] == part for r in [row_eff(cid, c)] if r]
        md += [""]
        # thread scaling: pair cases that differ only in -t1 / -t2
        pairs = [(cid[:-3], c, cs.get(cid[:-3] + "-t2")) for cid, c in cs.items()
                 if c["part"] == part and cid.endswith("-t1")]
        rows = []
        for base, one, two in pairs:
            if not two or "fwd" not in one or "fwd" not in two or "fwdbwd" not in two:
                continue
            g1, g2 = one["gemm"].get(1), two["gemm"].get(2)
            ceiling = f"{g2 / g1:.2f}×" if g1 and g2 else "—"
            rows.append(f"| {base} | {one['fwd']['median_s'] / two['fwd']['median_s']:.2f}× | "
                        f"{one['fwdbwd']['median_s'] / two['fwdbwd']['median_s']:.2f}× | {ceiling} |")
        if rows:
            md += ["Thread scaling (time at 1 thread ÷ time at 2 threads; the ceiling is the tile "
                   "GEMM's own 2-thread ÷ 1-thread rate in the same runs):", "",
                   "| case | forward | forward+backward | tile GEMM ceiling |", "|---|---|---|---|"] + rows + [""]

    rss = [c["fwdbwd"] for cid, c in cs.items() if c["part"] == "r" and "fwdbwd" in c]
    if rss:
        md += ["## Peak RSS of forward+backward (H = 1, d = 128, 2 threads, one process each)", "",
               "Inputs, outputs and gradients are 8 tensors of N·d floats (the caller's); the "
               "library's workspace is linear in N too.", "",
               "| N | peak RSS MiB | MiB per 1K tokens | 8·N·d·4 bytes (MiB) |", "|---|---|---|---|"]
        for r in sorted(rss, key=lambda r: r["seq_len"]):
            n = r["seq_len"]
            md.append(f"| {n} | {r['peak_rss_mib']} | {r['peak_rss_mib'] / (n / 1024):.1f} | "
                      f"{8 * n * r['head_dim'] * 4 / 2**20:.0f} |")
        md.append("")
    (folder / "kernels.md").write_text("\n".join(md))
    print("\n".join(md))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
