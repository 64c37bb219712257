"""Status codes and the exception that carries them.

`Status` mirrors `burst_status` in include/burst_attention.h; the values are ABI.
Every failing C call becomes a `BurstError` at the boundary (see `_check`), with the
message the library left in `burst_last_error()` for the calling thread.
"""

from __future__ import annotations

import enum

from . import _lib


class Status(enum.IntEnum):
    """`burst_status` of the C ABI (values never change)."""

    OK = 0
    INVALID_ARGUMENT = 1   # a NULL pointer, a value out of range
    UNSUPPORTED = 2        # valid, but not implemented (yet)
    OUT_OF_MEMORY = 3      # workspace could not be allocated
    MISMATCH = 4           # ranks disagree on a config field / call
    COMMUNICATION = 5      # MPI reported an error; the plan is unusable
    INTERNAL = 6           # a bug in the library
    VERSION = 7            # struct_size not known to this library
    TIMEOUT = 8            # a peer did not answer in time; the plan is unusable
    BUSY = 9               # the plan is in use by another thread


def status_string(status: int) -> str:
    """The library's static name for a status ("BURST_OK", ...; unknown values give
    "BURST_ERROR_UNKNOWN")."""
    raw = _lib.lib.burst_status_string(int(status))
    return raw.decode("utf-8", "replace") if raw is not None else "BURST_ERROR_UNKNOWN"


def last_error() -> str:
    """The library's message for the last failed call made by *this thread*."""
    raw = _lib.lib.burst_last_error()
    return raw.decode("utf-8", "replace") if raw is not None else ""


class BurstError(Exception):
    """A C call returned a status other than BURST_OK.

    Attributes:
        status: the `Status` (or the raw int if the library returned an unknown code).
        message: the text of `burst_last_error()` read right after the failure.
        function: the name of the C function that failed.
    """

    def __init__(self, status: int, message: str = "", function: str = ""):
        try:
            self.status = Status(status)
        except ValueError:
            self.status = int(status)
        self.message = message
        self.function = function
        name = status_string(int(status))
        where = f"{function}: " if function else ""
        text = f"{where}{name} ({int(status)})"
        if message:
            text += f": {message}"
        super().__init__(text)


def _check(status: int, function: str) -> None:
    """Raise BurstError for a failed call. Must run on the thread that made the call,
    right after it (burst_last_error is thread-local)."""
    if status != Status.OK:
        raise BurstError(status, last_error(), function)
