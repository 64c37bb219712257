#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// What every collective call on one object (a plan, a KV cache) shares, and
/// nothing a schedule computes: the busy guard (one thread at a time, a
/// second gets BUSY), the call counter the agreement round pairs calls by,
/// poisoning after a TIMEOUT or COMMUNICATION error, the deadline, and the
/// counters of the last call.
///
/// Every call runs the same way: busy guard, poison check, local checks, one
/// agreement round (every rank learns whether every rank can go on, and every
/// rank's payload), then the body, then the stats.
public final class CollectiveGuard {
    let transport: Transport
    let timeoutSeconds: Double
    /// "the plan", "the cache": for messages.
    let owner: String
    /// Fields every call's stats start with (the plan's pattern and ring group).
    private let baseStats: CallStats
    public private(set) var lastStats: CallStats
    private var poisoned: BurstError?
    private var callsMade: UInt64 = 0
    private let busy: UnsafeMutablePointer<pthread_mutex_t>

    init(owner: String, transport: Transport, timeoutSeconds: Double, baseStats: CallStats = CallStats()) {
        self.owner = owner
        self.transport = transport
        self.timeoutSeconds = timeoutSeconds
        self.baseStats = baseStats
        lastStats = baseStats
        busy = .allocate(capacity: 1)
        pthread_mutex_init(busy, nil)
    }

    deinit {
        pthread_mutex_destroy(busy)
        busy.deallocate()
    }

    /// Runs `body` under the busy guard without a collective round (local
    /// queries that must not read state a call is changing).
    func locally<T>(_ name: String, _ body: () throws -> T) throws -> T {
        guard pthread_mutex_trylock(busy) == 0 else {
            throw BurstError(.busy, "\(name): \(owner) is in use by another thread")
        }
        defer { pthread_mutex_unlock(busy) }
        return try body()
    }

    /// The counters of the last call, read under the busy guard (a call in
    /// progress on another thread gives BUSY rather than a torn read).
    public func statsSnapshot(_ name: String) throws -> CallStats {
        try locally(name) { lastStats }
    }

    /// Runs one collective call: busy guard, poison check, `localCheck`, the
    /// agreement round (with this rank's `payload`), then `body` with every
    /// rank's payload in rank order. Records stats on success and poisons on
    /// a transport failure.
    func run(_ operation: Agreement.Operation, localCheck: () -> BurstError?, payload: [Int64] = [],
             _ body: (_ payloads: [[Int64]], inout CallStats, Deadline) throws -> Void) throws {
        guard pthread_mutex_trylock(busy) == 0 else {
            throw BurstError(.busy, "\(operation.cName): \(owner) is in use by another thread")
        }
        defer { pthread_mutex_unlock(busy) }
        if let poisoned {
            throw BurstError(poisoned.status, "\(owner) is unusable after an earlier failure (\(poisoned.message)); destroy it")
        }
        let start = Deadline.seconds()
        let deadline = Deadline.after(seconds: timeoutSeconds)
        callsMade += 1
        do {
            let payloads = try Agreement.agree(transport, operation: operation, sequence: callsMade,
                                               localError: localCheck(), payload: payload, deadline: deadline)
            var stats = baseStats
            try body(payloads, &stats, deadline)
            stats.totalSeconds = Deadline.seconds() - start
            lastStats = stats
        } catch let error as BurstError {
            if error.poisonsPlan { poisoned = error }
            throw error
        }
    }
}
