#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// The shared memory of an in-process group: one mailbox per
/// (communicator, source, destination, tag), first in, first out.
/// Sends copy eagerly, so they never block; receives wait for their message
/// — and, with a simulated network, until the time it would have arrived.
final class LoopbackWorld {
    let size: Int
    let network: SimulatedNetwork?
    private let mutex: UnsafeMutablePointer<pthread_mutex_t>
    private let posted: UnsafeMutablePointer<pthread_cond_t>
    private var mailboxes: [MailKey: [Message]] = [:]
    /// Simulated network: when each rank's outgoing and incoming port is
    /// free again, per port (SimulatedNetwork.ports: 2·rank, 2·rank + 1 for inter-group).
    private var egressFree: [UInt64], ingressFree: [UInt64]

    struct MailKey: Hashable {
        var communicator: [Int]
        var source: Int
        var destination: Int
        var tag: Int32
    }

    struct Message {
        var bytes: [UInt8]
        /// Monotonic nanoseconds at which the receiver may have it.
        var arrival: UInt64
    }

    init(size: Int, network: SimulatedNetwork? = nil) {
        self.size = size
        self.network = network
        nodes = (0..<size).map { network?.group(of: $0, ranks: size) ?? 0 }
        egressFree = network == nil ? [] : [UInt64](repeating: 0, count: 2 * size)
        ingressFree = egressFree
        mutex = .allocate(capacity: 1)
        posted = .allocate(capacity: 1)
        pthread_mutex_init(mutex, nil)
        var attributes = pthread_condattr_t()
        pthread_condattr_init(&attributes)
        pthread_condattr_setclock(&attributes, CLOCK_MONOTONIC)
        pthread_cond_init(posted, &attributes)
        pthread_condattr_destroy(&attributes)
    }

    deinit {
        pthread_cond_destroy(posted)
        pthread_mutex_destroy(mutex)
        posted.deallocate()
        mutex.deallocate()
    }

    /// The node of every rank (the simulated network's groups, else one).
    let nodes: [Int]

    func post(_ key: MailKey, _ bytes: UnsafeRawBufferPointer) {
        var message = Message(bytes: [UInt8](bytes), arrival: 0)
        pthread_mutex_lock(mutex)
        if let network {
            // A message holds the sender's outgoing port and the receiver's
            // incoming port of its class for bytes / bandwidth, once both are
            // free, and arrives a latency after its last byte left.
            let now = Deadline.now()
            let (out, into) = network.ports(from: key.source, to: key.destination, ranks: size)
            let (seconds, latency) = network.cost(bytes: bytes.count, from: key.source, to: key.destination, ranks: size)
            let start = max(now, egressFree[out], ingressFree[into])
            let done = start &+ UInt64(seconds * 1e9)
            egressFree[out] = done
            ingressFree[into] = done
            message.arrival = done &+ UInt64(latency * 1e9)
        }
        mailboxes[key, default: []].append(message)
        pthread_cond_broadcast(posted)
        pthread_mutex_unlock(mutex)
    }

    /// Takes the oldest message for `key` into `buffer`, waiting until `deadline`.
    func take(_ key: MailKey, into buffer: UnsafeMutableRawBufferPointer, deadline: Deadline) throws {
        pthread_mutex_lock(mutex)
        defer { pthread_mutex_unlock(mutex) }
        while true {
            let now = Deadline.now()
            if var queue = mailboxes[key], let first = queue.first, first.arrival <= now {
                let message = queue.removeFirst().bytes
                mailboxes[key] = queue.isEmpty ? nil : queue
                guard message.count == buffer.count else {
                    throw BurstError(.communication,
                                     "loopback: rank \(key.destination) expected \(buffer.count) bytes from rank \(key.source) (tag \(key.tag)) but got \(message.count)")
                }
                message.withUnsafeBytes { buffer.copyMemory(from: $0) }
                return
            }
            if deadline.hasPassed {
                throw BurstError(.timeout,
                                 "rank \(key.destination) timed out waiting for a message from rank \(key.source) (did every rank make the same call? a rank that died, hangs or runs late looks the same)")
            }
            // Sleep until the deadline, a post, or the head message's arrival.
            var until = deadline.nanoseconds
            if let first = mailboxes[key]?.first { until = min(until, first.arrival) }
            var ts = timespec()
            ts.tv_sec = Int(until / 1_000_000_000)
            ts.tv_nsec = Int(until % 1_000_000_000)
            pthread_cond_timedwait(posted, mutex, &ts)
        }
    }
}

/// A rank of an in-process group of ranks driven by threads. Used by
/// `burst_context_create_loopback` and by the tests of the schedules; it
/// follows MPI's matching rules (per source and tag, in order) so a schedule
/// that works here does the same communication under MPI.
public final class LoopbackTransport: Transport {
    public let rank: Int
    public var size: Int { world.size }
    let world: LoopbackWorld
    private let communicator: [Int]
    private var duplicates = 0

    init(world: LoopbackWorld, rank: Int, communicator: [Int]) {
        self.world = world
        self.rank = rank
        self.communicator = communicator
    }

    public var nodes: [Int] { world.nodes }

    /// A group of `size` ranks; element i is rank i. Drive each from its own
    /// thread. With a `network`, messages take the time it says to arrive.
    public static func makeGroup(size: Int, network: SimulatedNetwork? = nil) -> [LoopbackTransport] {
        let world = LoopbackWorld(size: size, network: network)
        return (0..<size).map { LoopbackTransport(world: world, rank: $0, communicator: [0]) }
    }

    private static let controlTag: Int32 = -1

    public func duplicate(deadline: Deadline) throws -> Transport {
        // Collective calls happen in the same order on every rank, so the
        // n-th duplicate gets the same identity everywhere.
        duplicates += 1
        return LoopbackTransport(world: world, rank: rank, communicator: communicator + [duplicates])
    }

    public func allgather(_ send: UnsafeRawBufferPointer, into receive: UnsafeMutableRawBufferPointer,
                          deadline: Deadline) throws {
        let n = send.count
        precondition(receive.count == n * size)
        for peer in 0..<size where peer != rank {
            world.post(.init(communicator: communicator, source: rank, destination: peer, tag: Self.controlTag), send)
        }
        UnsafeMutableRawBufferPointer(rebasing: receive[(rank * n)..<((rank + 1) * n)]).copyMemory(from: send)
        for peer in 0..<size where peer != rank {
            try world.take(.init(communicator: communicator, source: peer, destination: rank, tag: Self.controlTag),
                           into: UnsafeMutableRawBufferPointer(rebasing: receive[(peer * n)..<((peer + 1) * n)]),
                           deadline: deadline)
        }
    }

    public func start(sends: [OutgoingMessage], receives: [IncomingMessage]) throws -> PendingTransfer {
        for message in sends {
            world.post(.init(communicator: communicator, source: rank, destination: message.peer, tag: message.tag),
                       message.buffer)
        }
        return LoopbackPending(transport: self, receives: receives)
    }

    fileprivate func complete(_ receives: [IncomingMessage], deadline: Deadline) throws {
        for message in receives {
            try world.take(.init(communicator: communicator, source: message.peer, destination: rank, tag: message.tag),
                           into: message.buffer, deadline: deadline)
        }
    }

    public func close() {}
}

private final class LoopbackPending: PendingTransfer {
    let transport: LoopbackTransport
    var receives: [IncomingMessage]
    init(transport: LoopbackTransport, receives: [IncomingMessage]) {
        self.transport = transport
        self.receives = receives
    }
    func wait(until deadline: Deadline) throws {
        let pending = receives
        receives = []
        try transport.complete(pending, deadline: deadline)
    }
}
