#!/usr/bin/env python3
"""examples/python/train_lm.py under torchrun (gloo, no MPI) against the same run under
mpirun: both must train sharded over the same number of ranks and give the same losses
at every step (and the same learned sinks with --gpt-oss).

    python3 Tests/python/train_lm_launchers.py --nproc 2 -- --gpt-oss --steps 10 --seq-len 512

Both runs are train_lm's burst mode (sharded training only; --torchrun-mode compare
adds the one-process reference to the torchrun run, which python_train_lm_gpt_oss_np2
checks under mpirun already: equal losses here make it hold under torchrun too); then
the two runs' JSON are compared here. Arguments after `--` go to train_lm.py (both runs). The losses are
printed side by side. With 2 ranks they are expected to be bitwise equal (the same
schedule runs over either transport, and a sum of two floats is exact in any order);
--tolerance bounds the relative difference allowed (default 1e-6, for 3 or more ranks,
whose gradient sums may round in another order).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.abspath(os.path.join(HERE, "..", ".."))
TRAIN_LM = os.path.join(ROOT, "examples", "python", "train_lm.py")


def run(cmd, env) -> None:
    print("+ " + " ".join(shlex.quote(c) for c in cmd), flush=True)
    done = subprocess.run(cmd, env=env)
    if done.returncode != 0:
        sys.exit(f"train_lm_launchers: the command failed with exit status {done.returncode}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--nproc", type=int, default=2)
    ap.add_argument("--mpiexec", default="mpirun",
                    help="the MPI launcher (given --allow-run-as-root --oversubscribe)")
    ap.add_argument("--tolerance", type=float, default=1e-6)
    ap.add_argument("--torchrun-mode", choices=["burst", "compare"], default="burst")
    ap.add_argument("train_lm_args", nargs=argparse.REMAINDER)
    args = ap.parse_args()
    extra = [a for a in args.train_lm_args if a != "--"]
    env = dict(os.environ)
    # the torchrun run must not see an MPI launcher's environment (nor the reverse)
    for name in list(env):
        if name.startswith(("OMPI_", "PMI_", "PMIX_", "MV2_")) or name in (
                "WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT",
                "TORCHELASTIC_RUN_ID"):
            del env[name]
    with tempfile.TemporaryDirectory() as tmp:
        torch_json = os.path.join(tmp, "torchrun.json")
        mpi_json = os.path.join(tmp, "mpirun.json")
        run([sys.executable, "-m", "torch.distributed.run", "--standalone",
             f"--nproc-per-node={args.nproc}", TRAIN_LM, "--mode", args.torchrun_mode, "--quiet",
             "--json", torch_json] + extra, env)
        run([args.mpiexec, "--allow-run-as-root", "--oversubscribe", "-n", str(args.nproc),
             sys.executable, TRAIN_LM, "--mode", "burst", "--quiet", "--json", mpi_json]
            + extra, env)
        with open(torch_json) as f:
            a = json.load(f)
        with open(mpi_json) as f:
            b = json.load(f)
    problems = []
    for name, result in (("torchrun", a), ("mpirun", b)):
        if result["world"] != args.nproc:
            problems.append(f"{name} trained on {result['world']} ranks, not {args.nproc}")
    print(f"{'step':>4}  {'torchrun (' + a['launcher'] + ')':>28}  "
          f"{'mpirun (' + b['launcher'] + ')':>28}")
    worst = 0.0
    for step, (x, y) in enumerate(zip(a["burst"], b["burst"])):
        worst = max(worst, abs(x - y) / abs(y))
        print(f"{step + 1:>4}  {x:>28.17g}  {y:>28.17g}")
    if len(a["burst"]) != len(b["burst"]):
        problems.append(f"{len(a['burst'])} torchrun steps, {len(b['burst'])} mpirun steps")
    sinks_equal = a.get("burst_sinks") == b.get("burst_sinks")
    for la, lb in zip(a.get("burst_sinks", []), b.get("burst_sinks", [])):
        for x, y in zip(la, lb):
            worst = max(worst, abs(x - y) / max(1.0, abs(y)))
    identical = a["burst"] == b["burst"] and sinks_equal
    print(f"torchrun vs mpirun: max relative difference {worst:.3g} (tolerance "
          f"{args.tolerance:g}); bitwise identical: {'yes' if identical else 'no'}; "
          f"time {a['burst_seconds']:.2f} s (torchrun) vs {b['burst_seconds']:.2f} s (mpirun)")
    if worst > args.tolerance:
        problems.append(f"the losses differ by {worst:.3g} > {args.tolerance:g}")
    for p in problems:
        print(f"FAILED: {p}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
