"""A `burst_transport` over a torch.distributed process group (gloo): how a torchrun job
talks without MPI. Used by `Context.from_torch(group)` and by burst_attention.torch
when its communicator is a process group and MPI is not initialised in the process.

What each callback does (include/burst_attention.h, "Transports the caller supplies"):

  isend / irecv  dist.isend / dist.irecv of a uint8 tensor to / from the peer's global
                 rank, with the library's tag. The tensor is the transport's own buffer,
                 not the library's: isend copies the bytes into it first, a completed
                 irecv copies them out (one memcpy per message each way). gloo cannot
                 cancel a send or a receive, so this copy is what makes release() safe:
                 a request the library gives up on (a failed call) keeps writing into
                 or reading from the transport's buffer, never into memory the library
                 has freed.
  iallgather     dist.all_gather (async) of the `nbytes` of every rank into the
                 transport's buffers, copied to the library's on completion.
  test           gloo's send/recv Work never reports is_completed() before wait() is
                 called, and a wait with a timeout that expires closes every pair of the
                 gloo context. So every send and receive gets a waiter thread (a small
                 pool of daemon threads that grows with the requests in flight) that
                 calls Work.wait() with the GIL released and flags the request; test
                 reads the flag (and re-raises a failure, which the library reports as
                 BURST_ERROR_COMMUNICATION with its text). Collectives use
                 is_completed() and then wait() to surface their errors.
  release        gloo cannot cancel a send or a receive. The request keeps its own
                 buffer (never the library's), and when it has not completed the
                 transport closes its group: one receive posted and waited for with a
                 1 ms timeout makes gloo close every connection of the group ("Application
                 timeout caused pair closure"). The waiter threads then return, the peers'
                 messages on the group fail at once ("Connection closed by peer": they get
                 BURST_ERROR_COMMUNICATION instead of waiting for their deadline), and
                 every later call on the context fails with CommunicationError: after a
                 TIMEOUT or COMMUNICATION error the context is finished, not only the
                 plan. Make a new one (burst_attention.torch: clear_plan_cache() on every
                 rank; the next call creates it, collectively). A group the caller passed
                 with dedicated=False is never closed this way (it is the caller's); its
                 released requests keep their waiter threads until the peer completes
                 them or gloo's own timeout (the group's `timeout`) fails them, and are
                 closed the same way at interpreter exit (a thread still inside gloo's
                 wait when the process exits makes it abort: "terminate called without
                 an active exception").
  flags          BURST_TRANSPORT_SINGLE_THREADED: one library call at a time per
                 context (another thread gets BURST_ERROR_BUSY), which also keeps the
                 group's collectives in one order on every rank.
  nodes          NULL: the library allgathers a host id at creation.

The process group: by default the transport talks over a new gloo group of the same
ranks (`dedicated=True`), so its messages and collectives never interleave with the
caller's own traffic on the group it passed (a DDP allreduce in flight during a
backward, point-to-point messages with the same tags). Making one is collective: over
the whole world when the group is the whole world, else among the group's members
(`use_local_synchronization=True`, which requires every member to have made the same
process groups before, in the same order). `dedicated=False` uses the caller's group
as it is (it must be a gloo group).
"""

from __future__ import annotations

import atexit
import ctypes
import datetime
import queue
import threading
import time
import weakref


class _Waiters:
    """Daemon threads that block in Work.wait() for the transport's requests. A new
    thread starts whenever every existing one is busy (one per request in flight at
    most); threads are reused and never exit (a request that never completes keeps its
    thread until gloo's timeout fails it). Daemon threads, so that a request the library
    gave up on never holds up interpreter exit."""

    def __init__(self):
        self._jobs: "queue.SimpleQueue" = queue.SimpleQueue()
        self._idle = 0
        self._waiting = 0  # jobs submitted whose wait() has not returned
        self._lock = threading.Lock()

    def submit(self, job) -> None:
        with self._lock:
            spawn = self._idle == 0
            if not spawn:
                self._idle -= 1
            self._waiting += 1
        self._jobs.put(job)
        if spawn:
            threading.Thread(target=self._run, name="burst_attention-waiter",
                             daemon=True).start()

    def _run(self) -> None:
        while True:
            job = self._jobs.get()
            try:
                job.wait()
            except BaseException:  # noqa: BLE001 - job.wait records its own errors
                pass
            job = None
            with self._lock:
                self._idle += 1
                self._waiting -= 1

    def drain(self, seconds: float) -> bool:
        """Waits up to `seconds` until no waiter thread is inside a Work.wait().
        Returns whether none is."""
        deadline = time.monotonic() + seconds
        while True:
            with self._lock:
                if self._waiting == 0:
                    return True
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.01)


_waiters = _Waiters()


class _P2P:
    """One isend or irecv: the gloo Work, the transport's buffer, and where a received
    message goes (address 0 for a send)."""

    __slots__ = ("work", "buffer", "address", "nbytes", "what", "done", "error", "released")

    def __init__(self, work, buffer, address: int, nbytes: int, what: str):
        self.work, self.buffer, self.address, self.nbytes = work, buffer, address, nbytes
        self.what = what
        self.done = False
        self.error: "BaseException | None" = None
        self.released = False

    def wait(self) -> None:  # in a waiter thread, with the GIL released inside wait()
        try:
            self.work.wait()
        except BaseException as exc:  # noqa: BLE001 - reported by test()
            self.error = exc
        finally:
            self.done = True


class _Gather:
    """One iallgather: the async Work, the transport's buffers, the library's receive
    address."""

    __slots__ = ("work", "send", "receive", "address", "nbytes", "what")

    def __init__(self, work, send, receive, address: int, nbytes: int, what: str):
        self.work, self.send, self.receive = work, send, receive
        self.address, self.nbytes, self.what = address, nbytes, what


# The receive that closes a group (poison): a tag no peer sends on when it matters.
_POISON_TAG = 2**31 - 1
_transports: "weakref.WeakSet[TorchTransport]" = weakref.WeakSet()


@atexit.register
def _poison_stuck_at_exit() -> None:
    """A waiter thread still inside gloo's Work.wait() when the interpreter exits makes
    the process abort (at finalisation a daemon thread that comes back from C++ and
    takes the GIL is ended with pthread_exit, which unwinds through a noexcept frame:
    SIGABRT). End every such wait first — poison the groups whose released requests
    are stuck (the process's connections close at exit anyway) — and then wait, a
    bounded time, until every waiter thread is back in Python: a poisoned wait returns
    at once on a quiet machine but can take seconds on a loaded one (python_torchrun_np3
    had a rank abort at exit under heavy load after all its tests had passed — most
    likely this, though its message was not captured)."""
    for transport in list(_transports):
        try:
            if transport.stuck():
                transport.poison()
        except Exception:  # noqa: BLE001 - nothing sensible to do at exit
            pass
    _waiters.drain(10.0)


class TorchTransport:
    """The Python transport (_transport.py protocol) over a gloo process group."""

    # Buffers kept for reuse after their message completed (a plan sends the same sizes
    # step after step; a fresh buffer would page-fault on every first touch).
    _CACHED_BUFFERS = 16

    def __init__(self, group, owned: bool = False):
        import torch
        import torch.distributed as dist

        self._torch, self._dist = torch, dist
        self.group = group
        self.owned = owned  # a group this transport made (dedicated): destroyed with it
        self.rank = dist.get_rank(group)
        self.size = dist.get_world_size(group)
        self.global_ranks = [int(r) for r in dist.get_process_group_ranks(group)]
        if self.rank < 0:
            raise ValueError("torch.distributed: this process is not a member of the group")
        self._free: "dict[int, list]" = {}
        self._free_count = 0
        self._released: list = []  # requests released before they completed
        self.closed = False
        self.poisoned = False
        _transports.add(self)

    # ------------------------------------------------------------------ buffers
    def _buffer(self, nbytes: int):
        bucket = self._free.get(nbytes)
        if bucket:
            self._free_count -= 1
            return bucket.pop()
        return self._torch.empty(nbytes, dtype=self._torch.uint8)

    def _give_back(self, buffer) -> None:
        if self.closed or self._free_count >= self._CACHED_BUFFERS:
            return
        self._free.setdefault(buffer.numel(), []).append(buffer)
        self._free_count += 1

    # ------------------------------------------------------------------ requests
    def isend(self, address: int, nbytes: int, peer: int, tag: int):
        what = f"isend of {nbytes} bytes to rank {peer} (tag {tag})"
        buffer = self._buffer(nbytes)
        if nbytes:
            ctypes.memmove(buffer.data_ptr(), address, nbytes)
        try:
            work = self._dist.isend(buffer, self.global_ranks[peer], group=self.group, tag=tag)
        except Exception as exc:
            raise RuntimeError(f"torch.distributed {what}: {exc}") from exc
        request = _P2P(work, buffer, 0, nbytes, what)
        _waiters.submit(request)
        return request

    def irecv(self, address: int, nbytes: int, peer: int, tag: int):
        what = f"irecv of {nbytes} bytes from rank {peer} (tag {tag})"
        buffer = self._buffer(nbytes)
        try:
            work = self._dist.irecv(buffer, self.global_ranks[peer], group=self.group, tag=tag)
        except Exception as exc:
            raise RuntimeError(f"torch.distributed {what}: {exc}") from exc
        request = _P2P(work, buffer, address, nbytes, what)
        _waiters.submit(request)
        return request

    def iallgather(self, send: int, nbytes: int, receive: int, tag: int):
        what = f"iallgather of {nbytes} bytes (tag {tag})"
        if nbytes == 0:
            return _Gather(None, None, None, receive, 0, what)
        torch = self._torch
        mine = torch.empty(nbytes, dtype=torch.uint8)
        ctypes.memmove(mine.data_ptr(), send, nbytes)
        everyone = torch.empty((self.size, nbytes), dtype=torch.uint8)
        try:
            work = self._dist.all_gather(list(everyone.unbind(0)), mine, group=self.group,
                                         async_op=True)
        except Exception as exc:
            raise RuntimeError(f"torch.distributed {what}: {exc}") from exc
        return _Gather(work, mine, everyone, receive, nbytes, what)

    def test(self, request) -> bool:
        if isinstance(request, _P2P):
            if not request.done:
                return False
            request.work = None
            if request.error is not None:
                raise RuntimeError(f"torch.distributed {request.what}: "
                                   f"{request.error}") from request.error
            if request.address and request.nbytes:
                ctypes.memmove(request.address, request.buffer.data_ptr(), request.nbytes)
            self._give_back(request.buffer)
            request.buffer = None
            return True
        if request.work is not None:
            if not request.work.is_completed():
                return False
            try:
                request.work.wait()  # completed: returns at once, or raises its error
            except Exception as exc:
                raise RuntimeError(f"torch.distributed {request.what}: {exc}") from exc
            request.work = None
            ctypes.memmove(request.address, request.receive.data_ptr(),
                           self.size * request.nbytes)
        return True

    def release(self, request) -> None:
        # gloo cannot cancel: the request keeps its own buffer (never the library's).
        pending = (not request.done) if isinstance(request, _P2P) else (
            request.work is not None and not request.work.is_completed())
        if pending:
            self._released.append(request)
            if self.owned:
                self.poison()

    def stuck(self) -> bool:
        """Whether a released request has not completed yet."""
        self._released = [r for r in self._released
                          if not (r.done if isinstance(r, _P2P) else r.work.is_completed())]
        return bool(self._released)

    def poison(self) -> None:
        """Close every connection of the group: gloo does that when a wait with a
        timeout expires (the only way to end a send or receive it will not cancel).
        Pending waits on the group, here and on the peers, then fail at once."""
        if self.poisoned or self.group is None or self.size < 2:
            return
        self.poisoned = True
        torch = self._torch
        try:
            peer = self.global_ranks[(self.rank + 1) % self.size]
            work = self._dist.irecv(torch.empty(1, dtype=torch.uint8), peer, group=self.group,
                                    tag=_POISON_TAG)
            work.wait(timeout=datetime.timedelta(milliseconds=1))
        except Exception:  # noqa: BLE001 - the expected "Timed out waiting 1ms"
            pass

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self._free.clear()
        self._free_count = 0
        if self.owned and self.stuck():
            self.poison()
        if self.owned and self.group is not None:
            group, self.group = self.group, None
            try:
                if self._dist.is_initialized():
                    self._dist.destroy_process_group(group)
            except Exception:  # noqa: BLE001 - the world may be gone already
                pass

    # ------------------------------------------------------------------ the layer's
    def allgather_object(self, item) -> list:
        """dist.all_gather_object over the transport's group (the torch layer's
        shard-length agreement)."""
        out = [None] * self.size
        self._dist.all_gather_object(out, item, group=self.group)
        return out


def make_group(group, dedicated: "bool | None"):
    """(the group the transport talks over, whether the transport made it). See the
    module docstring for `dedicated`."""
    import torch.distributed as dist

    if not dist.is_available() or not dist.is_initialized():
        raise ValueError("torch.distributed is not initialised: call "
                         "torch.distributed.init_process_group('gloo') first (torchrun sets "
                         "the environment it reads)")
    if group is None:
        group = dist.group.WORLD
    ranks = [int(r) for r in dist.get_process_group_ranks(group)]
    me = dist.get_rank()
    if me not in ranks:
        raise ValueError(f"torch.distributed: this process (rank {me}) is not a member of "
                         f"the process group (ranks {ranks})")
    if dedicated is None:
        dedicated = True
    if not dedicated:
        backend = str(dist.get_backend(group))
        if "gloo" not in backend:
            raise ValueError(f"torch.distributed: the process group's backend is {backend!r}; "
                             "the transport needs gloo (pass dedicated=True to make a gloo "
                             "group of the same ranks)")
        return group, False
    whole = ranks == list(range(dist.get_world_size()))
    if whole:
        own = dist.new_group(ranks=ranks, backend="gloo")
    else:
        own = dist.new_group(ranks=ranks, backend="gloo", use_local_synchronization=True)
    return own, True
