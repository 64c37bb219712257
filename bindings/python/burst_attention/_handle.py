"""`Handle`: what `Plan` and `KVCache` share as owners of a C handle made on a context.

- The handle is used only inside `with self._in_call() as handle:`, which raises
  ValueError on a closed object and counts the calls in progress, so that `close()`
  from another thread raises BusyError instead of destroying the handle under a call.
- `close()` is local and idempotent; `with` and `__del__` call it.
- `_fail_collectively` raises for arguments that failed the checks here: on a context
  of several ranks it first makes the C call with arguments the library rejects, so
  that the library's agreement fails every rank instead of leaving the others waiting.
- The config fields the object was created with read as attributes (`plan.batch`,
  `cache.head_dim`), enumerations as their IntEnum.
"""

from __future__ import annotations

import threading

from ._args import raise_problems
from ._errors import BurstError, Status, last_error


class Handle:
    # Set by each subclass:
    _KIND = ""        # the class's name in messages: "Plan", "KVCache"
    _NOUN = ""        # "plan", "cache": "the plan is in use by another thread"
    _ENUMS: dict = {}  # config field -> IntEnum type, for the attributes
    _COMPLETED = ""   # why the call made to fail every rank could complete (status OK)

    def __init__(self, context, handle: int, config: dict):
        self._context = context  # keeps the context alive while this object lives
        self._handle = handle
        self._config = dict(config)
        self._lock = threading.Lock()
        self._active = 0

    def _release(self, handle: int) -> None:
        """Destroy the C handle and forget it in the context (subclasses)."""
        raise NotImplementedError

    # ------------------------------------------------------------------ properties
    @property
    def context(self):
        return self._context

    @property
    def config(self) -> dict:
        """The config fields this was created with (a copy)."""
        return dict(self._config)

    def __getattr__(self, name):
        config = self.__dict__.get("_config")
        if config is not None and name in config:
            value = config[name]
            enum_type = self._ENUMS.get(name)
            return enum_type(value) if enum_type is not None else value
        raise AttributeError(f"'{self._KIND}' object has no attribute {name!r}")

    @property
    def closed(self) -> bool:
        return self._handle is None

    # ------------------------------------------------------------------ failures
    def _fail_collectively(self, problems: list, function: str, how: str, call):
        """Raise for a validation failure ((exception type, message) pairs); first,
        when this rank is not alone, let the other ranks know: call() makes the C call
        `how` (with NULL buffers, layer -1, ...) and returns its status."""
        if self._context.size > 1:
            status = call()
            message = last_error()
            raise_problems(problems, function, status, message, how, self._COMPLETED)
        raise_problems(problems, function)

    # ------------------------------------------------------------------ lifetime
    def _in_call(self) -> "_Call":
        return _Call(self)

    def close(self) -> None:
        with self._lock:
            if self._active:
                raise BurstError(Status.BUSY, f"the {self._NOUN} is in use by another thread",
                                 f"{self._KIND}.close")
            handle, self._handle = self._handle, None
        if handle is not None:
            self._release(handle)

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self):
        try:
            if self.__dict__.get("_handle") is not None:
                self.close()
        except Exception:  # noqa: BLE001 - never raise from a finaliser
            pass


class _Call:
    """`with owner._in_call() as handle:` — the handle, held open for the call."""

    __slots__ = ("owner", "handle")

    def __init__(self, owner: Handle):
        self.owner = owner

    def __enter__(self) -> int:
        owner = self.owner
        with owner._lock:
            if owner._handle is None:
                raise ValueError(f"operation on a closed {owner._KIND}")
            owner._active += 1
            self.handle = owner._handle
        return self.handle

    def __exit__(self, *exc):
        with self.owner._lock:
            self.owner._active -= 1
