"""python -m burst_attention [--quiet] [--no-selfcheck]

Prints the package and library versions, the library's path, build_info() (the
kernel code paths picked for this CPU), whether mpi4py and torch are importable,
then runs a self-check (self and 2-rank loopback contexts, forward + backward against
a float64 reference). Exit status 0 when every check passed, 1 otherwise.
"""

from __future__ import annotations

import argparse
import importlib
import sys

import burst_attention as ba
from burst_attention import _lib, _selfcheck

DIST_NAME = "burst-attention"


def _installed_version() -> str:
    try:
        from importlib import metadata
        return metadata.version(DIST_NAME)
    except Exception:  # noqa: BLE001 - PackageNotFoundError, or no metadata at all
        return "not installed (imported from a source tree)"


def _optional(module: str) -> str:
    try:
        mod = importlib.import_module(module)
    except Exception as exc:  # noqa: BLE001 - ImportError, or a broken install
        return f"not importable ({type(exc).__name__}: {exc})"
    return f"{getattr(mod, '__version__', 'unknown version')} ({mod.__file__})"


def info_lines() -> list:
    v = ba.version()
    return [
        f"burst_attention package {ba.__version__} (distribution {DIST_NAME}: "
        f"{_installed_version()}), binding for C header {_lib.VERSION} "
        f"(VERSION_NUMBER {_lib.VERSION_NUMBER})",
        f"library version: {_lib._version_string(v)} (burst_version() = {v})",
        f"library path: {ba.library_path}",
        f"build info: {ba.build_info()}",
        f"mpi4py: {_optional('mpi4py')}",
        f"torch: {_optional('torch')}",
    ]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m burst_attention",
        description="Show what burst_attention loads and check that it computes correctly.")
    parser.add_argument("--quiet", "-q", action="store_true",
                        help="print only FAIL lines (the exit status tells the result)")
    parser.add_argument("--no-selfcheck", action="store_true",
                        help="print the information only, run no computation")
    args = parser.parse_args(argv)

    if not args.quiet:
        for line in info_lines():
            print(line)
    if args.no_selfcheck:
        return 0

    def report(ok: bool, line: str) -> None:
        if not ok or not args.quiet:
            print(line, flush=True)

    ok = _selfcheck.run(ba, report)
    if not args.quiet:
        print("self-check: PASS" if ok else "self-check: FAIL")
    elif not ok:
        print("self-check: FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
