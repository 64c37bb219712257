#!/usr/bin/env python3
"""Issue 19's report from the JSONL of bench/run_kernels19.sh: DIR/kernels19.md and
DIR/kernels19.png.

  part a  fp32, the CPU's own code path: ours/torch forward (target >= 1.15) and
          forward+backward (>= 1.3) per shape, and ours as % of our tile GEMM
  part b  fp32 on AVX2 (LIBXSMM_TARGET=hsw; torch held to AVX2): ours/torch >= 1.1
  part c  bf16 storage: fast/exact of ours (>= 1.6, where the CPU has bf16 products) and
          fast/torch-bf16 (>= 1.3 forward, >= 2 forward+backward), with the errors of ours
          fast, ours exact and torch against float64 of the same rounded inputs

A ratio is a time ratio, slower / faster side as named (the FLOP counts are equal): > 1
means the first-named side (ours, or fast) is faster. Each part comes from the newest
compare_torch.py run of that part (so one part can be rerun alone); --sweep takes the
parts of one run_kernels19.sh invocation, --merge the newest value of each measurement
over all runs of a part (for sweeps run in pieces).

  python3 bench/kernels19_report.py                      # docs/perf/kernels19
  python3 bench/kernels19_report.py /tmp/k19 --merge
"""

from __future__ import annotations

import argparse
import json
import math
import re
import shlex
import sys
from collections import defaultdict
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
MODES = ("forward", "forward_backward")
MODE_LABEL = {"forward": "fwd", "forward_backward": "fwd+bwd"}
# (part, ratio, mode) -> target; "ours/torch" is ours (exact) against torch in the same
# process; "fast/exact" and "fast/torch" are part c's.
TARGETS = {
    ("a", "ours/torch", "forward"): 1.15, ("a", "ours/torch", "forward_backward"): 1.3,
    ("b", "ours/torch", "forward"): 1.1, ("b", "ours/torch", "forward_backward"): 1.1,
    ("c", "fast/exact", "forward"): 1.6, ("c", "fast/exact", "forward_backward"): 1.6,
    ("c", "fast/torch", "forward"): 1.3, ("c", "fast/torch", "forward_backward"): 2.0,
}
PART_TITLE = {
    "a": "Part a — fp32, the code path this CPU picks: ours vs torch SDPA",
    "b": "Part b — fp32 on AVX2: ours (LIBXSMM_TARGET=hsw) vs torch held to AVX2",
    "c": "Part c — bf16 storage: ours fast (bf16 products) vs ours exact vs torch bf16 SDPA",
}
NOISY_SHARE, NOISY_MIN_CPU_S = 0.05, 0.05  # as compare_torch.py


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="Issue 19's table and plot from run_kernels19.sh's JSONL.")
    p.add_argument("dir", nargs="?", type=Path, default=REPO / "docs/perf/kernels19",
                   help="directory of kernels19.jsonl and the outputs (default docs/perf/kernels19)")
    p.add_argument("--in", dest="input", type=Path, help="JSONL (default DIR/kernels19.jsonl)")
    p.add_argument("--md", type=Path, help="markdown output (default DIR/kernels19.md)")
    p.add_argument("--plot", type=Path, help="PNG output (default DIR/kernels19.png)")
    p.add_argument("--sweep", help="use the parts of this sweep id (default: newest run of each part)")
    p.add_argument("--merge", action="store_true",
                   help="all runs of each part, the newest value of each measurement")
    a = p.parse_args(argv)
    a.input = a.input or a.dir / "kernels19.jsonl"
    a.md = a.md or a.dir / "kernels19.md"
    a.plot = a.plot or a.dir / "kernels19.png"
    return a


# ---------------------------------------------------------------------------- data
def load(path: Path) -> list[dict]:
    records = []
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if line.strip():
                try:
                    records.append(json.loads(line))
                except json.JSONDecodeError:
                    print(f"kernels19_report: line {number} of {path} is not JSON", file=sys.stderr)
    return records


class Part:
    """One part's data: headers, measurements keyed (impl, mode, N, d, H, causal,
    threads) with impl torch / ours/exact / ours/fast / tile_gemm / sgemm/<backend>, and
    checks keyed (compute, N, d, H, causal, threads). Later records win."""

    def __init__(self, name: str, records: list[dict]):
        self.name = name
        self.headers = [r for r in records if r.get("record") == "header"]
        self.unavailable = [r for r in records if r.get("record") == "unavailable"]
        self.measurements, self.checks = {}, {}
        for r in records:
            shape = (r.get("N"), r.get("d"), r.get("H"), r.get("causal"), r.get("threads"))
            if r.get("record") == "measurement":
                impl = r["impl"]
                if impl == "ours":
                    impl = f"ours/{r.get('compute') or 'exact'}"  # no compute: exact
                elif impl == "sgemm":
                    impl = f"sgemm/{r['mode']}"
                self.measurements[(impl, r["mode"], *shape)] = r
            elif r.get("record") == "check":
                self.checks[(r.get("compute") or "exact", *shape)] = r

    def shapes(self) -> list[tuple]:
        """(N, d, H, causal, threads) of the attention measurements, sorted."""
        return sorted({k[2:] for k in self.measurements if k[0] == "torch" or k[0].startswith("ours")})

    def get(self, impl: str, mode: str, shape: tuple) -> dict | None:
        return self.measurements.get((impl, mode, *shape))

    def tile_gemm(self, d: int, threads: int) -> float | None:
        m = self.measurements.get(("tile_gemm", "libxsmm", None, d, None, None, threads))
        return m["gflops"] if m else None

    def machine(self) -> dict:
        return self.headers[-1].get("machine", {}) if self.headers else {}


def select_parts(records: list[dict], sweep: str | None, merge: bool) -> dict[str, Part]:
    by_part = defaultdict(list)  # part -> run ids in file order
    for r in records:
        if r.get("record") == "header" and r.get("part") and (sweep is None or r.get("sweep_id") == sweep):
            by_part[r["part"]].append(r["run_id"])
    parts = {}
    for name, runs in by_part.items():
        chosen = set(runs) if merge else {runs[-1]}
        parts[name] = Part(name, [r for r in records if r.get("run_id") in chosen])
    return parts


# ---------------------------------------------------------------------------- cells
def is_noisy(m: dict | None) -> bool:
    return bool(m) and (m.get("others_cpu_share", 0) > NOISY_SHARE
                        and m.get("others_cpu_s", 0) >= NOISY_MIN_CPU_S)


def seconds(m: dict | None) -> str:
    if m is None:
        return "–"
    one = " ¹" if m.get("repeats") == 1 and m.get("warmup") == 0 else ""
    return f"{m['median_s']:.3g}" + one + (" *" if is_noisy(m) else "")


def describe_shape(shape: tuple) -> str:
    n, d, h, causal, threads = shape
    return f"N={n} d={d} H={h} {'causal' if causal else 'no mask'} {threads} thr"


class Ratios:
    """The ratios of one target: each cell's value is marked ✓/✗ and kept for the summary."""

    def __init__(self, label: str, target: float | None, applies: bool = True):
        self.label, self.target, self.applies = label, target, applies
        self.values: list[tuple[float, tuple]] = []

    def cell(self, faster: dict | None, slower: dict | None, shape: tuple) -> str:
        """slower time / faster time, e.g. torch / ours, marked against the target."""
        if faster is None or slower is None:
            return "–"
        r = slower["median_s"] / faster["median_s"]
        self.values.append((r, shape))
        mark = "" if self.target is None or not self.applies else (" ✓" if r >= self.target else " ✗")
        noisy = " *" if is_noisy(faster) or is_noisy(slower) else ""
        return f"{r:.2f}{mark}{noisy}"

    def summary(self) -> str:
        if not self.values:
            return f"- {self.label}: no data"
        geo = math.exp(sum(math.log(r) for r, _ in self.values) / len(self.values))
        worst, where = min(self.values)
        tail = f"worst {worst:.2f} ({describe_shape(where)}); geometric mean {geo:.2f}"
        if self.target is None:
            return f"- {self.label}: {tail}"
        if not self.applies:
            return f"- {self.label} ≥ {self.target}: not applicable (no bf16 products on this CPU); {tail}"
        met = sum(r >= self.target for r, _ in self.values)
        verdict = "✓ **met**" if met == len(self.values) else "✗ **not met**"
        return (f"- {self.label} ≥ {self.target}×: {verdict} — met at {met} of "
                f"{len(self.values)} shapes; {tail}")


def tile_share(part: Part, m: dict | None, shape: tuple) -> str:
    """ours as % of the tile GEMM rate at the same d and threads; dense (non-causal) only,
    since causal rates count only the unmasked half of the diagonal tiles' work."""
    n, d, h, causal, threads = shape
    rate = part.tile_gemm(d, threads)
    if m is None or rate is None or causal:
        return "–"
    return f"{100 * m['gflops'] / rate:.0f} %"


def err64(check: dict | None, who: str, mode: str) -> str:
    """Worst err64 of out (forward) or dq, dk, dv (forward+backward); who: ours or torch."""
    if not check:
        return "–"
    if "err64_skipped" in check:
        return "skipped"
    names = ("out",) if mode == "forward" else ("dq", "dk", "dv")
    values = [check.get(f"err64_{who}_{g}") for g in names]
    return "–" if None in values else f"{max(values):.1e}"


# ---------------------------------------------------------------------------- tables
def fp32_table(part: Part, targets: list[Ratios], torch_label: str) -> list[str]:
    fwd, fb = targets
    rows = [f"| N | d | H | mask | thr | {torch_label} fwd s | ours fwd s | fwd ours/torch (≥ {fwd.target}) "
            f"| {torch_label} fwd+bwd s | ours fwd+bwd s | fwd+bwd ours/torch (≥ {fb.target}) "
            "| ours % of tile GEMM fwd / fwd+bwd |",
            "|--:|--:|--:|---|--:|--:|--:|--:|--:|--:|--:|--:|"]
    for shape in part.shapes():
        n, d, h, causal, threads = shape
        cells = []
        for ratios, mode in ((fwd, "forward"), (fb, "forward_backward")):
            torch_m, ours_m = part.get("torch", mode, shape), part.get("ours/exact", mode, shape)
            cells += [seconds(torch_m), seconds(ours_m), ratios.cell(ours_m, torch_m, shape)]
        share = " / ".join(tile_share(part, part.get("ours/exact", mode, shape), shape) for mode in MODES)
        rows.append(f"| {n} | {d} | {h} | {'causal' if causal else 'none'} | {threads} | "
                    + " | ".join(cells) + f" | {share} |")
    rates = sorted({(k[3], k[6]): m["gflops"] for k, m in part.measurements.items()
                    if k[0] == "tile_gemm"}.items())
    if rates:
        rows += ["", "Tile GEMM (`burst-bench --gemm`, 128×128×d, same environment): " + "; ".join(
            f"d = {d}, {t} thr: {g:.0f} GFLOP/s" for (d, t), g in rates) + "."]
    return rows


def bf16_table(part: Part, fast_exact: "ModeRatios", fast_torch: dict[str, Ratios],
               f32: Part | None) -> list[str]:
    rows = ["| N | d | H | mask | thr | mode | torch bf16 s | ours exact s | ours fast s "
            f"| fast/exact (≥ {fast_exact.target}) | fast/torch (≥ {fast_torch['forward'].target} fwd, "
            f"≥ {fast_torch['forward_backward'].target} fwd+bwd) | fast / ours fp32 (part a) "
            "| err fast | err exact | err torch |",
            "|--:|--:|--:|---|--:|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|"]
    for shape in part.shapes():
        n, d, h, causal, threads = shape
        for mode in MODES:
            torch_m = part.get("torch", mode, shape)
            exact, fast = part.get("ours/exact", mode, shape), part.get("ours/fast", mode, shape)
            fp32 = f32.get("ours/exact", mode, shape) if f32 else None
            vs_fp32 = f"{fp32['median_s'] / fast['median_s']:.2f}" if fast and fp32 else "–"
            check_fast, check_exact = (part.checks.get((c, *shape)) for c in ("fast", "exact"))
            rows.append(
                f"| {n} | {d} | {h} | {'causal' if causal else 'none'} | {threads} | {MODE_LABEL[mode]} "
                f"| {seconds(torch_m)} | {seconds(exact)} | {seconds(fast)} "
                f"| {fast_exact.cell(fast, exact, (*shape, mode))} "
                f"| {fast_torch[mode].cell(fast, torch_m, shape)} | {vs_fp32} "
                f"| {err64(check_fast, 'ours', mode)} | {err64(check_exact, 'ours', mode)} "
                f"| {err64(check_exact or check_fast, 'torch', mode)} |")
    return rows


# ---------------------------------------------------------------------------- machine
def machine_lines(sweeps: list[dict], parts: dict[str, Part]) -> list[str]:
    lines = []
    first = next((p.machine() for p in parts.values() if p.headers), {})
    if first:
        lines += [f"- CPU: {first.get('cpu')} ({first.get('cpus')} CPUs, {first.get('cpus_usable')} usable"
                  + (f", {first['hypervisor']} guest" if first.get("hypervisor") else "") + "), "
                  f"{first.get('mem_gib')} GiB; flags: {' '.join(first.get('cpu_flags') or []) or '?'}",
                  f"- {first.get('platform')}, Python {first.get('python')}, numpy {first.get('numpy')}, "
                  f"torch {first.get('torch')}",
                  f"- libburst_attention {version(first.get('library_version'))} from `{first.get('library')}` "
                  f"(sha256 {first.get('library_sha256')}), repository at {first.get('git_commit') or '?'}",
                  ""]
    lines += ["| part | run | libxsmm path (build_info) | bf16 products | torch CPU capability | environment |",
              "|---|---|---|---|---|---|"]
    for name, part in sorted(parts.items()):
        for h in part.headers:
            m = h.get("machine", {})
            kernels = re.search(r"kernels ([^;]+)", m.get("build_info") or "")
            env = " ".join(f"{k}={v}" for k, v in (m.get("env") or {}).items()) or "–"
            lines.append(f"| {name} | `{h['run_id']}` | {kernels.group(1) if kernels else '?'} "
                         f"| {m.get('bf16_products') or 'not reported'} | {m.get('torch_cpu_capability')} "
                         f"| {env} |")
    lines += ["", "build_info: " + "; ".join(sorted({f"`{p.machine().get('build_info')}`"
                                                     for p in parts.values() if p.headers})), ""]
    lines += ["Commands:", ""]
    for s in sweeps:
        lines.append(f"- sweep `{s['sweep_id']}` at {s.get('time')} (commit {s.get('commit')}): `{s.get('command')}`")
    for name, part in sorted(parts.items()):
        for h in part.headers:
            lines.append(f"- part {name}, run `{h['run_id']}` at {h.get('time')}: `{h.get('command')}`")
    return lines


def version(number) -> str:
    """burst_version()'s major·10000 + minor·100 + patch as "major.minor.patch"."""
    return f"{number // 10000}.{number // 100 % 100}.{number % 100}" if isinstance(number, int) else "?"


def bf16_products_apply(part: Part) -> tuple[bool, str]:
    """Whether the fast/exact target applies (a CPU with bf16 products), and why."""
    m = part.machine()
    path = m.get("bf16_products")
    if path == "avx512_bf16":
        return True, "bf16 products: avx512_bf16 (build_info)"
    if path:
        return False, f"bf16 products: {path} (build_info): the fast/exact target does not apply"
    has = "avx512_bf16" in (m.get("cpu_flags") or [])
    return has, ("this library's build_info does not name its bf16 product path; the CPU "
                 f"{'has' if has else 'lacks'} avx512_bf16")


# ---------------------------------------------------------------------------- report
def write_markdown(path: Path, parts: dict[str, Part], sweeps: list[dict], errors: list[dict],
                   command: str) -> dict:
    """Writes the markdown; returns {(part, ratio, mode): Ratios} for the plot."""
    out = ["# Issue 19 — exact and fast tile products against torch SDPA", "",
           f"Generated by `{command}` from the JSONL of `bench/run_kernels19.sh`. Times are medians "
           "of the timed calls after one warm-up (¹: one call, no warm-up — N = 16384). A ratio is "
           "a time ratio (equal FLOPs): ours/torch = torch s / ours s, fast/exact = exact s / fast s; "
           "> 1 means ours (fast) is faster. ✓/✗: at or above the target / below it. "
           "* = other processes used > 5% of the CPUs during a measurement (noisy): rerun those "
           "on a quiet machine. Errors are max|x − ref| / max|ref| with ref the float64 attention "
           "of the same bf16-rounded inputs (out for fwd, the worst of dq, dk, dv for fwd+bwd).", ""]
    ratios = {}
    for (name, kind, mode), target in TARGETS.items():
        ratios[(name, kind, mode)] = Ratios(
            f"part {name}, {MODE_LABEL[mode]} {kind}" + (" (AVX2)" if name == "b" else ""), target)
    if errors:
        out += ["**Failed parts:** " + ", ".join(f"{e.get('part')} (sweep {e.get('sweep_id')})"
                                                 for e in errors), ""]
    body = []
    for name in ("a", "b"):
        body += [f"## {PART_TITLE[name]}", ""]
        if name not in parts:
            body += ["No data.", ""]
            continue
        label = "torch" if name == "a" else "torch (AVX2)"
        body += fp32_table(parts[name], [ratios[(name, "ours/torch", m)] for m in MODES], label)
        body += ["", "% of tile GEMM: ours' GFLOP/s over the 128×128×d tile product's at the same d "
                 "and threads (dense shapes only).", ""]
    body += [f"## {PART_TITLE['c']}", ""]
    if "c" in parts:
        c = parts["c"]
        applies, why = bf16_products_apply(c)
        for mode in MODES:
            ratios[("c", "fast/exact", mode)].applies = applies
        body += [f"{why}. fast / ours fp32: ours fast on bf16 storage against ours exact on fp32 "
                 "storage from part a (same shape; informative, no target).", ""]
        for u in c.unavailable[:1]:
            body += [f"**No fast rows:** {u.get('reason')}", ""]
        skipped = sorted({ch["err64_skipped"] for ch in c.checks.values() if "err64_skipped" in ch})
        if skipped:
            body += ["float64 reference skipped where " + "; ".join(skipped) + ".", ""]
        body += bf16_table(c, ModeRatios({m: ratios[("c", "fast/exact", m)] for m in MODES}),
                           {m: ratios[("c", "fast/torch", m)] for m in MODES}, parts.get("a"))
        body.append("")
    else:
        body += ["No data.", ""]
    summary = ["## Targets", "", *(r.summary() for r in ratios.values()), ""]
    out += summary + body + ["## Machine and commands", "", *machine_lines(sweeps, parts)]
    path.write_text("\n".join(out).rstrip() + "\n", encoding="utf-8")
    return ratios


class ModeRatios:
    """Part c's fast/exact column, one target per mode: the cell's shape carries the mode
    last and goes to that mode's Ratios."""

    def __init__(self, by_mode: dict[str, Ratios]):
        self.by_mode = by_mode
        self.target = by_mode["forward"].target

    def cell(self, faster, slower, shape_mode):
        *shape, mode = shape_mode
        return self.by_mode[mode].cell(faster, slower, tuple(shape))


# ---------------------------------------------------------------------------- plot
def write_plot(path: Path, ratios: dict, cpu: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    rows = [("a", "ours/torch", "part a: ours / torch (fp32)"),
            ("b", "ours/torch", "part b: ours / torch, both AVX2 (fp32)"),
            ("c", "fast/exact", "part c: ours fast / ours exact (bf16 storage)"),
            ("c", "fast/torch", "part c: ours fast / torch (bf16)")]
    groups = sorted({(s[1], s[2]) for r in ratios.values() for _, s in r.values})  # (d, H)
    colors = dict(zip(groups, plt.get_cmap("tab10").colors))
    thread_style = {1: "-", 2: "--"}
    causal_marker = {False: "o", True: "^"}
    fig, axes = plt.subplots(len(rows), 2, figsize=(10, 3.0 * len(rows)), sharex=True,
                             squeeze=False, layout="constrained")
    all_n = sorted({s[0] for r in ratios.values() for _, s in r.values})
    for i, (part, kind, title) in enumerate(rows):
        for j, mode in enumerate(MODES):
            ax, r = axes[i][j], ratios[(part, kind, mode)]
            lines = defaultdict(list)
            for value, (n, d, h, causal, threads) in r.values:
                lines[(d, h, causal, threads)].append((n, value))
            for (d, h, causal, threads), pts in sorted(lines.items()):
                ax.plot(*zip(*sorted(pts)), color=colors[(d, h)], ls=thread_style.get(threads, ":"),
                        marker=causal_marker[bool(causal)], ms=4, lw=1.2)
            if r.target is not None:
                ax.axhline(r.target, color="tab:red", lw=1, ls=":")
            ax.axhline(1.0, color="0.6", lw=0.8)
            if not lines:
                ax.text(0.5, 0.5, "no data", transform=ax.transAxes, ha="center", color="0.5")
            ax.set_title(f"{title}, {MODE_LABEL[mode]}"
                         + (f" (target {r.target}×)" if r.target and r.applies else
                            " (target n/a)" if r.target else ""), fontsize=9)
            ax.set_xscale("log", base=2)
            if all_n:
                ax.set_xticks(all_n, [f"{n // 1024}k" if n % 1024 == 0 else str(n) for n in all_n])
            ax.minorticks_off()
            ax.grid(alpha=0.3)
            if j == 0:
                ax.set_ylabel("ratio (> 1: first faster)")
            if i == len(rows) - 1:
                ax.set_xlabel("N (tokens)")
    handles = [Line2D([], [], color=colors[g], lw=2, label=f"d={g[0]} H={g[1]}") for g in groups]
    handles += [Line2D([], [], color="0.3", ls=s, label=f"{t} thread{'s' if t > 1 else ''}")
                for t, s in thread_style.items()]
    handles += [Line2D([], [], color="0.3", ls="", marker=m, label="causal" if c else "no mask")
                for c, m in causal_marker.items()]
    handles.append(Line2D([], [], color="tab:red", ls=":", label="target"))
    fig.legend(handles=handles, loc="outside lower center", ncol=min(5, len(handles)), fontsize=8)
    fig.suptitle(f"Issue 19: speed ratios vs N — {cpu}", fontsize=11)
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv=None) -> int:
    args = parse_args(argv)
    records = load(args.input)
    parts = select_parts(records, args.sweep, args.merge)
    if not parts:
        sys.exit(f"kernels19_report: no part headers in {args.input}")
    used = {h.get("sweep_id") for p in parts.values() for h in p.headers}
    sweeps = [r for r in records if r.get("record") == "sweep" and r.get("sweep_id") in used]
    errors = [r for r in records if r.get("record") == "error" and r.get("sweep_id") in used]
    command = shlex.join(["bench/kernels19_report.py", *(sys.argv[1:] if argv is None else argv)])
    args.md.parent.mkdir(parents=True, exist_ok=True)
    ratios = write_markdown(args.md, parts, sweeps, errors, command)
    cpu = next((p.machine().get("cpu") for p in parts.values() if p.headers), "")
    write_plot(args.plot, ratios, cpu)
    print(f"wrote {args.md} and {args.plot}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
