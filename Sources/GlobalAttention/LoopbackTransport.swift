#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// The shared memory of an in-process group: one mailbox per
/// (communicator, source, destination, tag), first in, first out.
/// Sends copy eagerly, so they never block; receives wait for their message.
final class LoopbackWorld {
    let size: Int
    private let mutex: UnsafeMutablePointer<pthread_mutex_t>
    private let posted: UnsafeMutablePointer<pthread_cond_t>
    private var mailboxes: [MailKey: [[UInt8]]] = [:]

    struct MailKey: Hashable {
        var communicator: [Int]
        var source: Int
        var destination: Int
        var tag: Int32
    }

    init(size: Int) {
        self.size = size
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

    func post(_ key: MailKey, _ bytes: UnsafeRawBufferPointer) {
        let copy = [UInt8](bytes)
        pthread_mutex_lock(mutex)
        mailboxes[key, default: []].append(copy)
        pthread_cond_broadcast(posted)
        pthread_mutex_unlock(mutex)
    }

    /// Takes the oldest message for `key` into `buffer`, waiting until `deadline`.
    func take(_ key: MailKey, into buffer: UnsafeMutableRawBufferPointer, deadline: Deadline) throws {
        pthread_mutex_lock(mutex)
        defer { pthread_mutex_unlock(mutex) }
        while true {
            if var queue = mailboxes[key], !queue.isEmpty {
                let message = queue.removeFirst()
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
                                 "rank \(key.destination) timed out waiting for a message from rank \(key.source) (did every rank make the same call?)")
            }
            var ts = timespec()
            ts.tv_sec = Int(deadline.nanoseconds / 1_000_000_000)
            ts.tv_nsec = Int(deadline.nanoseconds % 1_000_000_000)
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

    /// A group of `size` ranks; element i is rank i. Drive each from its own thread.
    public static func makeGroup(size: Int) -> [LoopbackTransport] {
        let world = LoopbackWorld(size: size)
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
