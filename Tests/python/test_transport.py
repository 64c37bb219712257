"""Context.from_transport (C ABI 0.9): a Python transport behind the library's callbacks,
in one process, without torch.distributed or MPI.

`Mailbox` is a transport over shared memory between the threads that drive the ranks
(as loopback contexts are): isend copies the bytes into a mailbox and is done at once,
irecv is done once a message with its (source, tag) is there, iallgather once every rank
has contributed to that tag's round. Its plans must give the same bits as loopback
contexts (the same schedule runs on both); a raising method must fail the call with
CommunicationError carrying its text on that rank and let the others fail within their
deadline; close() is called exactly once, also when creation fails; the callbacks never
let an exception escape into C.
"""

from __future__ import annotations

import collections
import ctypes
import threading
import time

import numpy as np
import pytest

import _testenv  # noqa: F401  (sys.path, BURST_ATTENTION_LIBRARY)
from _testenv import results_or_raise, run_ranks

import burst_attention as ba


class Mailbox:
    """The shared state of one group of in-process ranks."""

    def __init__(self, size: int):
        self.size = size
        self.lock = threading.Lock()
        self.messages: "dict[tuple, collections.deque]" = collections.defaultdict(collections.deque)
        self.rounds: "dict[tuple, dict]" = {}

    def transport(self, rank: int) -> "MailboxTransport":
        return MailboxTransport(self, rank)


class MailboxTransport:
    def __init__(self, box: Mailbox, rank: int):
        self.box, self.rank, self.size = box, rank, box.size
        self.gathers: "collections.Counter" = collections.Counter()  # per tag
        self.closed = 0
        self.released = 0
        self.fail_on: "str | None" = None  # a method name that raises
        # Receives not yet matched, per (source, destination, tag), in the order they
        # were started: the header asks for MPI's matching order, and the library
        # tests requests in any order.
        self.posted: "dict[tuple, collections.deque]" = collections.defaultdict(collections.deque)

    def _maybe_fail(self, name: str) -> None:
        if self.fail_on == name:
            raise OSError(f"injected failure in {name}")

    def isend(self, address, nbytes, peer, tag):
        self._maybe_fail("isend")
        data = ctypes.string_at(address, nbytes) if nbytes else b""
        with self.box.lock:
            self.box.messages[(self.rank, peer, tag)].append(data)
        return ("done",)

    def irecv(self, address, nbytes, peer, tag):
        self._maybe_fail("irecv")
        request = ["recv", (peer, self.rank, tag), address, nbytes, False]
        self.posted[request[1]].append(request)
        return request

    def iallgather(self, send, nbytes, receive, tag):
        self._maybe_fail("iallgather")
        key = (tag, self.gathers[tag])
        self.gathers[tag] += 1
        with self.box.lock:
            self.box.rounds.setdefault(key, {})[self.rank] = (
                ctypes.string_at(send, nbytes) if nbytes else b"")
        return ["gather", key, receive, nbytes]

    def test(self, request):
        self._maybe_fail("test")
        kind = request[0]
        if kind == "done":
            return True
        with self.box.lock:
            if kind == "recv":
                queue = self.box.messages.get(request[1])
                posted = self.posted[request[1]]
                while posted and queue:  # oldest receive first
                    first, data = posted.popleft(), queue.popleft()
                    if len(data) != first[3]:
                        raise ValueError(f"recv: {len(data)} bytes for a {first[3]}-byte request")
                    if data:
                        ctypes.memmove(first[2], data, len(data))
                    first[4] = True
                return request[4]
            else:
                parts = self.box.rounds.get(request[1], {})
                if len(parts) < self.size:
                    return False
                data = b"".join(parts[r] for r in range(self.size))
        if len(data) != request[3] * self.size:
            raise ValueError(f"{kind}: {len(data)} bytes for a {request[3]}-byte request")
        if data:
            ctypes.memmove(request[2], data, len(data))
        return True

    def release(self, request):
        self.released += 1
        if request[0] == "recv":
            posted = self.posted[request[1]]
            for i, r in enumerate(posted):
                if r is request:
                    del posted[i]
                    break

    def close(self):
        self.closed += 1


def make_inputs(n, hq, hkv, d, seed=3):
    rng = np.random.default_rng(seed)
    return [rng.standard_normal((1, n, h, d)).astype(np.float32) for h in (hq, hkv, hkv, hq)]


def run_plans(contexts, n=96, hq=4, hkv=2, d=16, pattern="burst"):
    """Forward + backward of a causal zigzag plan on every context (one thread each):
    [(out, lse, dq, dk, dv)] by rank."""
    q, k, v, dout = make_inputs(n, hq, hkv, d)
    size = len(contexts)

    def body(ctx):
        pos = ba.shard_positions("zigzag", n, size, ctx.rank)
        ql, kl, vl, dl = (np.ascontiguousarray(x[:, pos]) for x in (q, k, v, dout))
        with ctx.plan(1, len(pos), hq, d, num_heads_kv=hkv, mask="causal",
                      distribution="zigzag", pattern=pattern, timeout_seconds=30) as plan:
            out, lse = plan.forward(ql, kl, vl)
            dq, dk, dv = plan.backward(ql, kl, vl, out, lse, dl)
        return out, lse, dq, dk, dv

    return results_or_raise(run_ranks(contexts, body))


def transport_contexts(size, transports=None):
    box = Mailbox(size)
    transports = transports or [box.transport(r) for r in range(size)]
    contexts = results_or_raise(run_ranks(
        transports, lambda t: ba.Context.from_transport(t, timeout_seconds=30)))
    return contexts, transports


@pytest.mark.parametrize("size,pattern", [(2, "burst"), (3, "ring"), (3, "allgather"),
                                          (2, "ulysses")])
def test_same_bits_as_loopback(size, pattern):
    contexts, transports = transport_contexts(size)
    try:
        assert [c.kind for c in contexts] == ["transport"] * size
        assert [(c.rank, c.size) for c in contexts] == [(r, size) for r in range(size)]
        got = run_plans(contexts, pattern=pattern)
    finally:
        for c in contexts:
            c.close()
    assert [t.closed for t in transports] == [1] * size, "close() once per transport"
    loop = ba.Context.loopback(size)
    try:
        want = run_plans(loop, pattern=pattern)
    finally:
        for c in loop:
            c.close()
    for r in range(size):
        for a, b in zip(got[r], want[r]):
            assert np.array_equal(a, b), f"rank {r}: transport and loopback differ"


def test_a_raising_callback_fails_the_call_with_its_text():
    contexts, transports = transport_contexts(2)
    try:
        transports[1].fail_on = "isend"
        start = time.monotonic()

        def body(ctx):
            x = np.ones((1, 8, 2, 8), np.float32)
            with ctx.plan(1, 8, 2, 8, timeout_seconds=3) as plan:  # not causal: both send
                plan.forward(x, x, x)

        results = run_ranks(contexts, body)
        elapsed = time.monotonic() - start
        exc1 = results[1][1]
        assert isinstance(exc1, ba.CommunicationError), results
        assert "OSError: injected failure in isend" in str(exc1)
        # rank 0 waits for a message that never comes: its deadline (3 s) ends it
        assert isinstance(results[0][1], (ba.BurstTimeoutError, ba.CommunicationError)), results
        assert elapsed < 3 + 10
    finally:
        for c in contexts:
            c.close()
    assert [t.closed for t in transports] == [1, 1]


def test_creation_that_fails_closes_the_transport_and_raises():
    box = Mailbox(1)
    t = box.transport(0)
    t.rank = 5  # out of range: INVALID_ARGUMENT on the calling rank
    with pytest.raises(ba.InvalidArgumentError):
        ba.Context.from_transport(t, timeout_seconds=2)
    assert t.closed == 1, "the library did not take the transport: the binding closes it"


def test_a_one_rank_transport_context_and_missing_methods():
    box = Mailbox(1)
    t = box.transport(0)
    with ba.Context.from_transport(t) as ctx:
        assert (ctx.rank, ctx.size, ctx.kind) == (0, 1, "transport")
        x = np.ones((1, 4, 1, 8), np.float32)
        with ctx.plan(1, 4, 1, 8) as plan:
            out, _ = plan.forward(x, x, x)
        assert np.allclose(out, 1.0)
    assert t.closed == 1

    class NoTest:
        rank, size = 0, 1
        isend = irecv = iallgather = release = close = None
    with pytest.raises(TypeError, match="test"):
        ba.Context.from_transport(NoTest())
