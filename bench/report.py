#!/usr/bin/env python3
"""Turn the JSONL of bench/compare_torch.py into a markdown table and a plot.

  table.md         per shape, thread count and mode: torch and ours (seconds, GFLOP/s),
                   the ratio ours/torch, the error of ours against torch; the sgemm
                   reference lines; the machine and the command that produced the data
  gflops_vs_n.png  GFLOP/s versus N, one subplot per (mode, d, causal), torch and ours per
                   thread count, the sgemm tile rates as horizontal reference lines

By default only the newest run in the file is used (runs are told apart by run_id);
--merge takes, for every measurement, the newest value over all runs instead — for
sweeps run in parts. Both outputs go next to the JSONL unless given.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shlex
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
MODES = ("forward", "forward_backward")
MODE_LABEL = {"forward": "forward", "forward_backward": "forward+backward"}
IMPL_COLOR = {"torch": "tab:blue", "ours": "tab:orange"}
THREAD_STYLE = {1: "-", 2: "--"}
SGEMM_LABEL = {"torch.bmm": "torch.bmm (MKL)", "numpy.matmul": "numpy.matmul (OpenBLAS)"}
SGEMM_COLOR = {"torch.bmm": "0.55", "numpy.matmul": "0.25"}
# Same rule as compare_torch.py: other processes took > 5% of the CPUs and >= 50 ms.
NOISY_SHARE, NOISY_MIN_CPU_S = 0.05, 0.05


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="Markdown table and plot from compare_torch.py results.")
    p.add_argument("--in", dest="input", type=Path, default=REPO / "docs/perf/results.jsonl",
                   help="JSONL written by compare_torch.py (default docs/perf/results.jsonl)")
    p.add_argument("--table", type=Path, help="markdown output (default: table.md beside --in)")
    p.add_argument("--plot", type=Path, help="PNG output (default: gflops_vs_n.png beside --in)")
    p.add_argument("--run", help="use this run_id (default: the newest run in the file)")
    p.add_argument("--merge", action="store_true",
                   help="use all runs, the newest value of each measurement")
    a = p.parse_args(argv)
    a.table = a.table or a.input.with_name("table.md")
    a.plot = a.plot or a.input.with_name("gflops_vs_n.png")
    return a


# ---------------------------------------------------------------------------- data
def load(path: Path) -> list[dict]:
    records, bad = [], 0
    with open(path, encoding="utf-8") as f:
        for line in f:
            if not line.strip():
                continue
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                bad += 1
    if bad:
        print(f"report: skipped {bad} line(s) of {path} that are not JSON", file=sys.stderr)
    return records


def ours_impl(compute: str | None) -> str:
    """The measurement key's impl of ours with tile products `compute`: "ours" for exact
    (records older than issue 19 have no compute: exact), else "ours/<compute>"."""
    return "ours" if (compute or "exact") == "exact" else f"ours/{compute}"


def select(records: list[dict], run: str | None, merge: bool):
    """(headers, measurements, checks) of the chosen run(s); later records win.
    Measurements are keyed (impl, mode, *shape) with impl "ours/fast" for ours with fast
    tile products; checks (impl, *shape) the same way."""
    if not merge:
        run = run or next((r["run_id"] for r in reversed(records) if "run_id" in r), None)
        records = [r for r in records if r.get("run_id") == run]
        if not records:
            sys.exit(f"report: no records of run {run!r}")
    headers = [r for r in records if r.get("record") == "header"]
    measurements, checks = {}, {}
    for r in records:
        shape = (r.get("B"), r.get("H"), r.get("N"), r.get("d"), r.get("causal"), r.get("threads"),
                 r.get("dtype") or "f32")
        if r.get("record") == "measurement":
            impl = ours_impl(r.get("compute")) if r["impl"] == "ours" else r["impl"]
            measurements[(impl, r["mode"], *shape)] = r
        elif r.get("record") == "check":
            checks[(ours_impl(r.get("compute")), *shape)] = r
    return headers, measurements, checks


def is_noisy(m: dict) -> bool:
    return (m.get("others_cpu_share", 0) > NOISY_SHARE
            and m.get("others_cpu_s", 0) >= NOISY_MIN_CPU_S)


# ---------------------------------------------------------------------------- table
def fmt_rate(m: dict | None) -> str:
    if m is None:
        return "–"
    return f"{m['gflops']:.1f}" + (" *" if is_noisy(m) else "")


def fmt_seconds(m: dict | None) -> str:
    return "–" if m is None else f"{m['median_s']:.4g}"


def machine_lines(headers: list[dict]) -> list[str]:
    if not headers:
        cpu = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
        model = next((line.split(":", 1)[1].strip() for line in cpu.splitlines()
                      if line.startswith("Model name")), platform.processor())
        return ["No header line in the data; this is the machine that ran report.py:", "",
                f"- CPU: {model}, {len(os.sched_getaffinity(0))} usable CPUs",
                f"- {platform.platform()}, Python {platform.python_version()}"]
    lines = []
    for h in headers:
        m = h.get("machine", {})
        blas = ", ".join(f"{p['prefix']} {p.get('version') or ''} {p.get('architecture') or ''}".strip()
                         for p in m.get("thread_pools", []) if p.get("internal_api") == "openblas")
        lines += [
            f"Run `{h['run_id']}` at {h.get('time', '?')}:", "",
            f"- CPU: {m.get('cpu')} ({m.get('cpus')} CPUs, {m.get('cpus_usable')} usable"
            + (f", {m['hypervisor']} guest" if m.get("hypervisor") else "")
            + f"), {m.get('mem_gib')} GiB, {m.get('platform')}",
            f"- Python {m.get('python')}, numpy {m.get('numpy')}"
            + (f" (BLAS {blas})" if blas else "")
            + f", torch {m.get('torch')} (CPU capability {m.get('torch_cpu_capability')})",
            f"- OPENBLAS_CORETYPE={m.get('OPENBLAS_CORETYPE') or '(unset)'}",
            f"- libburst_attention {m.get('library_version')} from `{m.get('library')}`"
            f" (sha256 {m.get('library_sha256')}), repository at {m.get('git_commit') or '?'}",
            *([f"- build info: `{m['build_info']}`"] if m.get("build_info") else []),
            f"- sweep: {json.dumps(h.get('sweep'))}",
            f"- command (in `{h.get('cwd')}`): `{h.get('command')}`", ""]
    return lines


def write_table(path: Path, headers, measurements, checks, report_command: str) -> None:
    shapes = sorted({k[2:] for k in measurements if k[0] == "torch" or k[0].startswith("ours")},
                    key=lambda s: (s[6], s[0], s[2], s[1], s[3], s[4], s[5]))
    ours_impls = sorted({k[0] for k in measurements if k[0].startswith("ours")},
                        key=lambda i: (i != "ours", i))  # exact first
    tile = {(m["d"], m["threads"]): m["gflops"] for k, m in measurements.items() if k[0] == "tile_gemm"}
    rows, ratios = [], defaultdict(list)
    half_rows = []
    for shape in shapes:
        b, h, n, d, causal, threads, dtype = shape
        for mode, impl in ((mode, impl) for mode in MODES for impl in ours_impls):
            check = checks.get((impl, *shape), {})
            torch_m = measurements.get(("torch", mode, *shape))
            ours_m = measurements.get((impl, mode, *shape))
            if ours_m is None and (impl != "ours" or torch_m is None):
                continue
            compute = impl.partition("/")[2]  # "" for exact
            label = MODE_LABEL[mode] + (f" ({compute})" if compute else "")
            ratio = "–"
            if torch_m and ours_m:
                r = ours_m["gflops"] / torch_m["gflops"]
                ratios[(mode, threads, dtype + (f" {compute}" if compute else ""))].append(r)
                ratio = f"**{r:.2f}**"
            rate = tile.get((d, threads))
            # % of the tile GEMM: meaningful for dense (non-causal) fp32 work.
            share = (f"{100 * ours_m['gflops'] / rate:.0f} %" if ours_m and rate and not causal
                     and dtype == "f32" and not compute else "–")
            errs = ([check.get("err_out")] if mode == "forward" else
                    [check.get(f"err_{g}") for g in ("dq", "dk", "dv")])
            errs = [e for e in errs if e is not None]
            err = f"{max(errs):.1e}" if errs else "–"
            rows.append(f"| {dtype} | {b}×{h}×{n}×{d} | {'causal' if causal else 'none'} | {threads} "
                        f"| {label} | {fmt_seconds(torch_m)} | {fmt_seconds(ours_m)} "
                        f"| {fmt_rate(torch_m)} | {fmt_rate(ours_m)} | {share} | {ratio} | {err} |")
            if dtype != "f32" and "err64_ours_out" in check:
                names = ("out",) if mode == "forward" else ("dq", "dk", "dv")
                e_ours = max(check[f"err64_ours_{g}"] for g in names)
                e_torch = max(check[f"err64_torch_{g}"] for g in names)
                f32 = measurements.get(("ours", mode, b, h, n, d, causal, threads, "f32"))
                half_rows.append(f"| {b}×{h}×{n}×{d} | {'causal' if causal else 'none'} | {threads} "
                                 f"| {MODE_LABEL[mode]} | {compute or 'exact'} | {fmt_seconds(f32)} "
                                 f"| {fmt_seconds(ours_m)} | {fmt_seconds(torch_m)} "
                                 f"| {e_ours:.1e} | {e_torch:.1e} |")

    sgemm = defaultdict(dict)
    for key, m in measurements.items():
        if key[0] == "sgemm":
            sgemm[(m["d"], m["threads"])][m["mode"]] = m
    found = {b for v in sgemm.values() for b in v}
    backends = [b for b in SGEMM_LABEL if b in found] + sorted(found - set(SGEMM_LABEL))

    out = ["# libburst_attention vs PyTorch CPU scaled_dot_product_attention", "",
           f"Generated by `{report_command}` from the JSONL of `bench/compare_torch.py`. "
           "fp32 unless the dtype column says bf16; median of the timed calls after one warm-up "
           "(one call, no warm-up, where the record says so). "
           "FLOPs: forward 4·B·H·N²·d, forward+backward 14·B·H·N²·d, halved for causal. "
           "Ratio > 1: ours is faster. The error is max|ours − torch| / max|torch| of out "
           "(forward) or the worst of dq, dk, dv (forward+backward). Ours uses exact (fp32) "
           "tile products unless the mode says \"(fast)\": bf16 products, fp32 accumulation. "
           "* = other processes used more than 5% of the CPUs during the measurement "
           "(noisy). Absolute times on a small shared VM can move by 10–30% between runs: "
           "compare ratios from the same run.", "",
           "## Attention", "",
           "| dtype | shape B×H×N×d | mask | threads | mode | torch s | ours s | torch GFLOP/s "
           "| ours GFLOP/s | ours % of tile GEMM | ours/torch | max rel. err |",
           "|---|---|---|--:|---|--:|--:|--:|--:|--:|--:|--:|", *rows, ""]
    if tile:
        out += ["Tile GEMM rate (`burst-bench --gemm`, the kernels' 128×128×d JIT product; at 2 "
                "threads two threads run tiles at once), measured in the same run: " + "; ".join(
                    f"d = {d}, {t} thread{'s' if t > 1 else ''}: {g:.1f} GFLOP/s"
                    for (d, t), g in sorted(tile.items())) + ".", ""]
    if ratios:
        out += ["Geometric mean of ours/torch: " + "; ".join(
            f"{dtype} {MODE_LABEL[mode]}, {t} thread{'s' if t > 1 else ''}: "
            f"{math.exp(sum(map(math.log, v)) / len(v)):.2f} ({len(v)} shapes)"
            for (mode, t, dtype), v in sorted(ratios.items())), ""]
        worst = {k: min(v) for k, v in ratios.items()}
        out += ["Lowest ours/torch: " + "; ".join(
            f"{dtype} {MODE_LABEL[mode]}, {t} thread{'s' if t > 1 else ''}: {w:.2f}"
            for (mode, t, dtype), w in sorted(worst.items())), ""]
    if half_rows:
        out += ["## bf16 storage", "",
                "Ours with bf16 storage (exact: fp32 products; fast: bf16 products; fp32 "
                "accumulation in both) beside ours in fp32 and "
                "torch's bfloat16 SDPA, same shapes and threads. Errors: max|x − ref| / max|ref| "
                "with ref the float64 attention of the same bf16-rounded inputs (the worst of "
                "dq, dk, dv for forward+backward). Bytes: a bf16 plan moves half the fp32 "
                "bytes of the storage-typed tensors (see docs/storage-types.md).", "",
                "| shape B×H×N×d | mask | threads | mode | compute | ours f32 s | ours bf16 s "
                "| torch bf16 s | ours bf16 err | torch bf16 err |",
                "|---|---|--:|---|---|--:|--:|--:|--:|--:|", *half_rows, ""]
    if sgemm:
        out += ["## sgemm reference (not attention)", "",
                "GFLOP/s of plain fp32 GEMMs C[128×128] = A[128×d] · B[d×128] over a stack "
                "of 16 independent tiles (the S = QKᵀ tile product) at the same thread count: "
                "what a BLAS reaches on the tile shape attention kernels multiply. torch.bmm "
                "uses torch's MKL; numpy.matmul uses numpy's bundled OpenBLAS with one BLAS "
                "thread per worker thread.", "",
                "| d | threads | " + " | ".join(SGEMM_LABEL.get(b, b) for b in backends) + " |",
                "|--:|--:|" + "--:|" * len(backends)]
        for (d, t), by_backend in sorted(sgemm.items()):
            out.append(f"| {d} | {t} | " + " | ".join(fmt_rate(by_backend.get(b))
                                                     for b in backends) + " |")
        out.append("")
    out += ["## Machine and command", "", *machine_lines(headers)]
    path.write_text("\n".join(out).rstrip() + "\n", encoding="utf-8")


# ---------------------------------------------------------------------------- plot
def write_plot(path: Path, headers, measurements) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    attention = [m for k, m in measurements.items() if k[0] in ("torch", "ours")
                 and (m.get("dtype") or "f32") == "f32"]
    if not attention:
        print("report: no attention measurements, no plot", file=sys.stderr)
        return
    combos = sorted({(m["d"], m["causal"]) for m in attention})
    heads_all = sorted({m["H"] for m in attention})
    modes = [(mode, h) for mode in MODES for h in heads_all
             if any(m["mode"] == mode and m["H"] == h for m in attention)]
    threads_all = sorted({m["threads"] for m in attention})
    n_all = sorted({m["N"] for m in attention})
    sgemm = [m for k, m in measurements.items() if k[0] in ("sgemm", "tile_gemm")]

    fig, axes = plt.subplots(len(modes), len(combos), figsize=(4.0 * len(combos), 3.4 * len(modes)),
                             sharex=True, sharey=True, squeeze=False, layout="constrained")
    for row, (mode, heads) in enumerate(modes):
        for col, (d, causal) in enumerate(combos):
            ax = axes[row][col]
            for m in sgemm:
                if m["d"] == d:
                    ax.axhline(m["gflops"], color=SGEMM_COLOR.get(m["mode"], "0.25"), lw=1,
                               ls=THREAD_STYLE.get(m["threads"], ":"),
                               label=(f"our tile GEMM (burst-bench --gemm), {m['threads']} thr"
                                      if m["impl"] == "tile_gemm" else
                                      f"sgemm 128×128×d tiles, {SGEMM_LABEL.get(m['mode'], m['mode'])}, "
                                      f"{m['threads']} thr"))
            for impl in ("torch", "ours"):
                for t in threads_all:
                    pts = sorted((m["N"], m["gflops"]) for m in attention
                                 if (m["impl"], m["mode"], m["d"], m["causal"], m["threads"], m["H"])
                                 == (impl, mode, d, causal, t, heads))
                    if pts:
                        ax.plot(*zip(*pts), color=IMPL_COLOR[impl], ls=THREAD_STYLE.get(t, ":"),
                                marker="o", ms=4,
                                label=f"{'torch SDPA' if impl == 'torch' else 'ours'}, {t} thr")
            ax.set_title(f"{MODE_LABEL[mode]}, H={heads}, d={d}, {'causal' if causal else 'no mask'}",
                         fontsize=10)
            ax.set_xscale("log", base=2)
            ax.set_xticks(n_all, [f"{n // 1024}k" if n % 1024 == 0 else str(n) for n in n_all])
            ax.minorticks_off()
            ax.grid(alpha=0.3)
            if row == len(modes) - 1:
                ax.set_xlabel("N (tokens)")
            if col == 0:
                ax.set_ylabel("GFLOP/s (median)")
    top = max(m["gflops"] for m in attention + sgemm)
    axes[0][0].set_ylim(0, 1.08 * top)  # shared by all subplots
    handles = {}
    for ax in axes.flat:
        for handle, label in zip(*ax.get_legend_handles_labels()):
            handles.setdefault(label, handle)
    fig.legend(handles.values(), handles.keys(), loc="outside lower center",
               ncol=min(4, len(handles)), fontsize=8)
    cpu = headers[-1].get("machine", {}).get("cpu", "") if headers else ""
    b_h = sorted({(m["B"], m["H"]) for m in attention})
    fig.suptitle(f"Attention GFLOP/s vs N, fp32, B×H = "
                 f"{', '.join(f'{b}×{h}' for b, h in b_h)}, {cpu}; "
                 f"gray: tile GEMM rates (not attention)", fontsize=11)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None) -> int:
    args = parse_args(argv)
    headers, measurements, checks = select(load(args.input), args.run, args.merge)
    command = shlex.join(["bench/report.py", *(sys.argv[1:] if argv is None else argv)])
    args.table.parent.mkdir(parents=True, exist_ok=True)
    args.plot.parent.mkdir(parents=True, exist_ok=True)
    write_table(args.table, headers, measurements, checks, command)
    write_plot(args.plot, headers, measurements)
    print(f"wrote {args.table} and {args.plot}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
