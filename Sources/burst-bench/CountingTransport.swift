import GlobalAttention

/// Messages one rank has posted receives for since the last `reset`, split by
/// whether the peer is in the rank's own group (node). The plan's stats count
/// bytes both ways and messages sent, but not messages received; the
/// simulated network's transfer time (`CommRecord.transferSeconds`) charges a
/// latency per received message, so the benchmark counts them exactly here.
final class MessageCounts {
    var intra = 0
    var inter = 0
    func reset() { intra = 0; inter = 0 }
}

/// A transport that forwards everything to `inner` and counts the receives
/// of `start` into `counts` (control traffic — the agreement's allgather —
/// is not counted, as the plan's stats do not count it). Duplicates share
/// the counter, so the plan's private transport counts into it too.
/// Driven by one thread at a time, like every transport.
final class CountingTransport: Transport {
    let inner: Transport
    let counts: MessageCounts

    init(_ inner: Transport, counts: MessageCounts) {
        self.inner = inner
        self.counts = counts
    }

    var rank: Int { inner.rank }
    var size: Int { inner.size }
    var nodes: [Int] { inner.nodes }

    func duplicate(deadline: Deadline) throws -> Transport {
        CountingTransport(try inner.duplicate(deadline: deadline), counts: counts)
    }

    func allgather(_ send: UnsafeRawBufferPointer, into receive: UnsafeMutableRawBufferPointer,
                   deadline: Deadline) throws {
        try inner.allgather(send, into: receive, deadline: deadline)
    }

    func start(sends: [OutgoingMessage], receives: [IncomingMessage]) throws -> PendingTransfer {
        if !receives.isEmpty {
            let nodes = inner.nodes, home = nodes[inner.rank]
            for message in receives {
                if nodes[message.peer] == home { counts.intra += 1 } else { counts.inter += 1 }
            }
        }
        return try inner.start(sends: sends, receives: receives)
    }

    func close() { inner.close() }
}
