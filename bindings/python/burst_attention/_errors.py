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

    `BurstError(status, ...)` makes an instance of the subclass for that status
    (`InvalidArgumentError`, `UnsupportedError`, ...), so callers may catch either the
    base class or the specific kind; every subclass keeps `.status`.

    Attributes:
        status: the `Status` (or the raw int if the library returned an unknown code).
        message: the text of `burst_last_error()` read right after the failure.
        function: the name of the C function that failed.
    """

    status_code: "Status | None" = None  # set on each subclass

    def __new__(cls, status: int = 0, message: str = "", function: str = ""):
        if cls is BurstError:
            cls = _BY_STATUS.get(int(status), BurstError)
        # Exception.__new__, not super(): for OutOfMemoryError the next class in the MRO
        # is MemoryError, whose __new__ refuses subclasses that also derive from another
        # exception class ("not safe, use Exception.__new__()").
        return Exception.__new__(cls, status, message, function)

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

    def __reduce__(self):  # picklable (multiprocessing, mpi4py object messages)
        return (BurstError, (int(self.status), self.message, self.function))


class InvalidArgumentError(BurstError, ValueError):
    """BURST_ERROR_INVALID_ARGUMENT: a NULL pointer or a value out of range."""
    status_code = Status.INVALID_ARGUMENT


class UnsupportedError(BurstError, NotImplementedError):
    """BURST_ERROR_UNSUPPORTED: a valid request the library does not implement."""
    status_code = Status.UNSUPPORTED


class OutOfMemoryError(BurstError, MemoryError):
    """BURST_ERROR_OUT_OF_MEMORY: the workspace could not be allocated."""
    status_code = Status.OUT_OF_MEMORY


class MismatchError(BurstError):
    """BURST_ERROR_MISMATCH: ranks disagree on a config field or a call."""
    status_code = Status.MISMATCH


class CommunicationError(BurstError):
    """BURST_ERROR_COMMUNICATION: MPI reported an error; the plan is unusable."""
    status_code = Status.COMMUNICATION


class InternalError(BurstError):
    """BURST_ERROR_INTERNAL: a bug in the library; please report it."""
    status_code = Status.INTERNAL


class VersionError(BurstError):
    """BURST_ERROR_VERSION: a struct_size the library does not know."""
    status_code = Status.VERSION


class BurstTimeoutError(BurstError):
    """BURST_ERROR_TIMEOUT: a peer did not answer in time; the plan is unusable.
    (Not a subclass of the builtin TimeoutError, which is an OSError.)"""
    status_code = Status.TIMEOUT


class BusyError(BurstError):
    """BURST_ERROR_BUSY: the plan is in use by another thread."""
    status_code = Status.BUSY


_BY_STATUS = {int(cls.status_code): cls for cls in (
    InvalidArgumentError, UnsupportedError, OutOfMemoryError, MismatchError,
    CommunicationError, InternalError, VersionError, BurstTimeoutError, BusyError)}


def _check(status: int, function: str) -> None:
    """Raise BurstError for a failed call. Must run on the thread that made the call,
    right after it (burst_last_error is thread-local)."""
    if status != Status.OK:
        raise BurstError(status, last_error(), function)
