"""Shared set-up of the Python tests, run from a checkout: imported first by every test
module and script here (their own directory is on sys.path, for `python3 script.py`
and for pytest alike).

It puts bindings/python and this directory on sys.path and, when
BURST_ATTENTION_LIBRARY is not set and the CMake install tree exists
(build/install/lib), points the binding at that library.
"""

from __future__ import annotations

import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.abspath(os.path.join(HERE, "..", ".."))
BINDING = os.path.join(ROOT, "bindings", "python")
INSTALLED = os.path.join(ROOT, "build", "install", "lib", "libburst_attention.so")

for _path in (HERE, BINDING):
    if _path not in sys.path:
        sys.path.insert(0, _path)
if "BURST_ATTENTION_LIBRARY" not in os.environ and os.path.exists(INSTALLED):
    os.environ["BURST_ATTENTION_LIBRARY"] = INSTALLED
