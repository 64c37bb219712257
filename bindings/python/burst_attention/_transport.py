"""Transports the caller supplies (C ABI 0.9): a Python object's methods behind the
ctypes callbacks of `burst_transport`.

A Python transport is any object with

    rank, size                       this process's rank in [0, size) and the world size
    isend(address, nbytes, peer, tag) -> request
    irecv(address, nbytes, peer, tag) -> request
    iallgather(send_address, nbytes, receive_address, tag) -> request
    test(request) -> bool            True once the request has completed (never blocks
                                     for long); raises if it failed
    release(request)                 the library stopped waiting for it (a failed call):
                                     the transport must never touch its buffer again
    close()                          the context and everything made on it are gone

Addresses are ints (0 only when nbytes is 0); peers are ranks of the transport's own
group; a request is any Python object. `Context.from_transport(obj)` wraps it;
`Context.from_torch(group)` builds one over a torch.distributed process group
(_torchdist.py). include/burst_attention.h, "Transports the caller supplies", is the
contract: requests start at once and never wait for the peer, messages with one tag
between two ranks are matched in order, an iallgather gives every rank's `nbytes` in
rank order.

This module keeps the C side honest:
  * no Python exception ever escapes a callback: a raising method makes the callback
    return 1, and the exception's text is what error_message(user) gives the library
    (it becomes the BURST_ERROR_COMMUNICATION message);
  * every ctypes callback object stays referenced until the library calls destroy(user)
    (after the context and every plan and cache on it are destroyed), and a little
    longer: the callback objects are retired, never freed while one of them is running;
  * request handles crossing the ABI are small non-zero integers mapped to the Python
    request objects, which are dropped when test reports them done or at release.
"""

from __future__ import annotations

import ctypes
import itertools
import threading

from . import _lib

# Adapters whose context is alive (id -> adapter): the only strong references to their
# ctypes callbacks. destroy(user) moves an adapter to _retired, emptied when the next
# transport is made (never from inside a callback, whose trampoline must outlive it).
_live: "dict[int, _Adapter]" = {}
_retired: "list[_Adapter]" = []
_registry_lock = threading.Lock()
_ids = itertools.count(1)

_MESSAGE_LIMIT = 2000  # bytes of an error text handed to the library


def _text(exc: BaseException) -> str:
    name = type(exc).__name__
    text = str(exc).strip()
    return f"{name}: {text}" if text else name


class _Adapter:
    """The `burst_transport` struct of one Python transport and its callbacks."""

    def __init__(self, transport, nodes=None, timeout_seconds: float = 0.0,
                 single_threaded: bool = True):
        self.transport = transport
        self.requests: "dict[int, object]" = {}
        self._next = itertools.count(1)
        self._message = ctypes.create_string_buffer(b"burst_attention: transport failure")
        self.last_exception: "BaseException | None" = None
        self.destroyed = False
        self.key = next(_ids)
        # The callback objects: referenced here for as long as the adapter lives.
        self._callbacks = (
            _lib.TRANSPORT_ISEND(self._isend),
            _lib.TRANSPORT_IRECV(self._irecv),
            _lib.TRANSPORT_IALLGATHER(self._iallgather),
            _lib.TRANSPORT_TEST(self._test),
            _lib.TRANSPORT_RELEASE(self._release),
            _lib.TRANSPORT_ERROR_MESSAGE(self._error_message),
            _lib.TRANSPORT_DESTROY(self._destroy),
        )
        isend, irecv, iallgather, test, release, error_message, destroy = self._callbacks
        self._nodes = None
        if nodes is not None:
            values = [int(n) for n in nodes]
            self._nodes = (ctypes.c_int32 * max(len(values), 1))(*values)
        self.struct = _lib.Transport(
            struct_size=ctypes.sizeof(_lib.Transport), rank=int(transport.rank),
            size=int(transport.size),
            flags=_lib.TRANSPORT_SINGLE_THREADED if single_threaded else 0,
            nodes=(ctypes.cast(self._nodes, ctypes.POINTER(ctypes.c_int32))
                   if self._nodes is not None else None),
            user=None, isend=isend, irecv=irecv, iallgather=iallgather, test=test,
            release=release, error_message=error_message, destroy=destroy,
            timeout_seconds=float(timeout_seconds))

    # ------------------------------------------------------------------ registry
    def register(self) -> None:
        """The library owns the callbacks from now on (until destroy)."""
        with _registry_lock:
            _retired.clear()  # not running: no callback of a retired adapter can be
            _live[self.key] = self

    # ------------------------------------------------------------------ helpers
    def _fail(self, exc: BaseException) -> int:
        self.last_exception = exc
        try:
            raw = _text(exc).encode("utf-8", "replace").replace(b"\0", b" ")
            self._message = ctypes.create_string_buffer(raw[:_MESSAGE_LIMIT])
        except BaseException:  # noqa: BLE001 - keep the previous text
            pass
        return 1

    def _start(self, method, args, request) -> int:
        try:
            if not request:
                raise ValueError("request: NULL")
            handle = getattr(self.transport, method)(*args)
            rid = next(self._next)
            self.requests[rid] = handle
            request[0] = rid
            return 0
        except BaseException as exc:  # noqa: BLE001 - never escape a ctypes callback
            return self._fail(exc)

    # ------------------------------------------------------------------ callbacks
    def _isend(self, _user, buffer, nbytes, peer, tag, request):
        return self._start("isend", (buffer or 0, int(nbytes), int(peer), int(tag)), request)

    def _irecv(self, _user, buffer, nbytes, peer, tag, request):
        return self._start("irecv", (buffer or 0, int(nbytes), int(peer), int(tag)), request)

    def _iallgather(self, _user, send, nbytes, receive, tag, request):
        return self._start("iallgather", (send or 0, int(nbytes), receive or 0, int(tag)),
                           request)

    def _test(self, _user, request, done):
        try:
            rid = request or 0
            handle = self.requests.get(rid)
            if handle is None:
                raise KeyError(f"test: unknown request {rid}")
            finished = bool(self.transport.test(handle))
            if finished:
                del self.requests[rid]
            done[0] = 1 if finished else 0
            return 0
        except BaseException as exc:  # noqa: BLE001
            # A failed request is finished for us; the library releases it next (or not:
            # either way the transport has it until release or close).
            try:
                done[0] = 0
            except BaseException:  # noqa: BLE001
                pass
            return self._fail(exc)

    def _release(self, _user, request):
        try:
            handle = self.requests.pop(request or 0, None)
            if handle is not None:
                self.transport.release(handle)
        except BaseException as exc:  # noqa: BLE001
            self._fail(exc)

    def _error_message(self, _user):
        return ctypes.addressof(self._message)

    def _destroy(self, _user):
        try:
            self.destroyed = True
            pending, self.requests = self.requests, {}
            for handle in pending.values():
                try:
                    self.transport.release(handle)
                except BaseException:  # noqa: BLE001
                    pass
            self.transport.close()
        except BaseException as exc:  # noqa: BLE001
            self._fail(exc)
        finally:
            with _registry_lock:
                if _live.pop(self.key, None) is not None:
                    _retired.append(self)  # freed later, outside any callback
