"""Shared set-up of the Python tests, run from a checkout: imported first by every test
module and script here (their own directory is on sys.path, for `python3 script.py`
and for pytest alike).

It puts bindings/python and this directory on sys.path and, when
BURST_ATTENTION_LIBRARY is not set and the CMake install tree exists
(build/install/lib), points the binding at that library.

It also holds the loopback-rank runner of test_binding.py and test_kvcache.py
(`run_ranks`, `results_or_raise`) and their timeouts, and the report printer of the
MPI check scripts (`print_in_rank_order`).
"""

from __future__ import annotations

import os
import sys
import threading

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.abspath(os.path.join(HERE, "..", ".."))
BINDING = os.path.join(ROOT, "bindings", "python")
INSTALLED = os.path.join(ROOT, "build", "install", "lib", "libburst_attention.so")

for _path in (HERE, BINDING):
    if _path not in sys.path:
        sys.path.insert(0, _path)
if "BURST_ATTENTION_LIBRARY" not in os.environ and os.path.exists(INSTALLED):
    os.environ["BURST_ATTENTION_LIBRARY"] = INSTALLED

# A generous per-call timeout so that a library bug fails a test instead of hanging it.
CALL_TIMEOUT = 60.0
JOIN_TIMEOUT = CALL_TIMEOUT + 30.0


def run_ranks(contexts, fn):
    """Run fn(ctx) on one thread per context; returns [(result, exception)] by rank."""
    results = [(None, None)] * len(contexts)

    def body(i, ctx):
        try:
            results[i] = (fn(ctx), None)
        except BaseException as exc:  # noqa: BLE001 - handed back to the test
            results[i] = (None, exc)

    threads = [threading.Thread(target=body, args=(i, c), daemon=True) for i, c in enumerate(contexts)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(JOIN_TIMEOUT)
    assert not any(t.is_alive() for t in threads), "a rank hung"
    return results


def results_or_raise(results):
    """The results of `run_ranks`, or the first rank's exception raised."""
    for _, exc in results:
        if exc is not None:
            raise exc
    return [r for r, _ in results]


def print_in_rank_order(comm, lines) -> None:
    """Collective over the mpi4py communicator `comm`: print each rank's `lines`, one
    rank at a time in rank order, so that the ranks' reports do not interleave."""
    for r in range(comm.size):
        if r == comm.rank:
            print("\n".join(lines), flush=True)
        comm.Barrier()
