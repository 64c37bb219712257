#if canImport(Glibc)
import Glibc
#endif
import CBurstABI
import GlobalAttention

/// `Transport` over callbacks the caller supplies (burst_transport,
/// burst_context_create_transport): the caller's own sockets, UCX, gRPC or
/// torch.distributed. The schedules never learn which transport they run on
/// (DESIGN §6); this one only maps `Transport`'s four operations onto the
/// callbacks and keeps the library's rules: every wait is a test loop with
/// the call's deadline, a callback's failure is COMMUNICATION, and only the
/// thread inside a library call invokes a callback.
///
/// `duplicate` (one per plan and cache, as MPI_Comm_dup) needs no traffic: a
/// duplicate is a new channel number, the same on every rank because
/// duplicates are made by collective calls in the same order everywhere, and
/// the channel goes into the tag (`channel · 1024 + kind`).
final class CallbackTransport: Transport {
    /// What the root transport and all its duplicates share: the callbacks,
    /// the user pointer, the channel counter. `destroy(user)` runs when the
    /// last of them is gone, and only for a transport whose creation
    /// succeeded (a failed create leaves the caller's transport the caller's).
    final class Core {
        let callbacks: burst_transport
        var owned = false
        private var nextChannel: Int32 = 1
        private let lock: UnsafeMutablePointer<pthread_mutex_t> = {
            let mutex = UnsafeMutablePointer<pthread_mutex_t>.allocate(capacity: 1)
            pthread_mutex_init(mutex, nil)
            return mutex
        }()

        init(_ callbacks: burst_transport) { self.callbacks = callbacks }

        deinit {
            if owned, let destroy = callbacks.destroy { destroy(callbacks.user) }
            pthread_mutex_destroy(lock)
            lock.deallocate()
        }

        func newChannel() -> Int32 {
            pthread_mutex_lock(lock)
            defer { pthread_mutex_unlock(lock) }
            let channel = nextChannel
            nextChannel = nextChannel == CallbackTransport.channelCount - 1 ? 1 : nextChannel + 1
            return channel
        }

        /// The caller's error text for the last failing callback, if it has one.
        func failure(_ what: String, code: Int32) -> BurstError {
            var text = ""
            if let message = callbacks.error_message, let pointer = message(callbacks.user) {
                text = ": " + String(cString: pointer)
            }
            return BurstError(.communication, "rank \(callbacks.rank): the transport's \(what) callback failed (returned \(code))\(text)")
        }
    }

    /// Tags are `channel · kindCount + kind`: kinds below 1024 (the schedules
    /// use < 64; `allgatherKind` is the control round), channels below 2^21,
    /// so every tag is in [0, 2^31). Channel numbers wrap after 2^21 − 1
    /// plans and caches: by then the plan that had the number is long gone.
    static let kindCount: Int32 = 1024
    static let channelCount: Int32 = Int32.max / kindCount + 1
    static let allgatherKind: Int32 = 1023

    let core: Core
    let channel: Int32
    let rank: Int
    let size: Int
    let nodes: [Int]
    private var closed = false

    init(core: Core, channel: Int32, nodes: [Int]) {
        self.core = core
        self.channel = channel
        rank = Int(core.callbacks.rank)
        size = Int(core.callbacks.size)
        self.nodes = nodes
    }

    func tag(_ kind: Int32) throws -> Int32 {
        guard kind >= 0, kind < Self.kindCount else {
            throw BurstError(.internalError, "message kind \(kind) does not fit a callback transport's tag")
        }
        return channel * Self.kindCount + kind
    }

    func duplicate(deadline: Deadline) throws -> Transport {
        guard !closed else { throw BurstError(.communication, "the transport was already released") }
        return CallbackTransport(core: core, channel: core.newChannel(), nodes: nodes)
    }

    func allgather(_ send: UnsafeRawBufferPointer, into receive: UnsafeMutableRawBufferPointer,
                   deadline: Deadline) throws {
        guard !closed else { throw BurstError(.communication, "the transport was already released") }
        let c = core.callbacks
        var request: UnsafeMutableRawPointer?
        let code = c.iallgather(c.user, send.baseAddress, send.count, receive.baseAddress,
                                try tag(Self.allgatherKind), &request)
        guard code == 0 else { throw core.failure("iallgather", code: code) }
        let pending = CallbackPending(core: core, requests: [try started(request, "iallgather")])
        try pending.wait(until: deadline, what: "the agreement round (did every rank make the same call? a rank that died, hangs or runs late looks the same)")
    }

    func start(sends: [OutgoingMessage], receives: [IncomingMessage]) throws -> PendingTransfer {
        guard !closed else { throw BurstError(.communication, "the transport was already released") }
        let c = core.callbacks
        // Receives first (as the MPI transport posts them), then sends. A
        // failure part-way releases what was started (the pending's deinit).
        let pending = CallbackPending(core: core, requests: [])
        for message in receives {
            var request: UnsafeMutableRawPointer?
            let code = c.irecv(c.user, message.buffer.baseAddress, message.buffer.count,
                               Int32(message.peer), try tag(message.tag), &request)
            guard code == 0 else { throw core.failure("irecv (from rank \(message.peer), \(message.buffer.count) bytes)", code: code) }
            pending.requests.append(try started(request, "irecv"))
        }
        for message in sends {
            var request: UnsafeMutableRawPointer?
            let code = c.isend(c.user, message.buffer.baseAddress, message.buffer.count,
                               Int32(message.peer), try tag(message.tag), &request)
            guard code == 0 else { throw core.failure("isend (to rank \(message.peer), \(message.buffer.count) bytes)", code: code) }
            pending.requests.append(try started(request, "isend"))
        }
        return pending
    }

    private func started(_ request: UnsafeMutableRawPointer?, _ what: String) throws -> UnsafeMutableRawPointer {
        guard let request else {
            throw BurstError(.communication, "rank \(rank): the transport's \(what) callback returned 0 but set no request")
        }
        return request
    }

    func close() { closed = true }
}

/// Requests of one `start` (or one allgather). Each is tested until done; a
/// request the library stops waiting for is released exactly once.
private final class CallbackPending: PendingTransfer {
    let core: CallbackTransport.Core
    var requests: [UnsafeMutableRawPointer]

    init(core: CallbackTransport.Core, requests: [UnsafeMutableRawPointer]) {
        self.core = core
        self.requests = requests
    }

    deinit {
        guard let release = core.callbacks.release else { return }
        for request in requests { release(core.callbacks.user, request) }
    }

    /// Tests every outstanding request once; drops the finished ones.
    /// Returns whether all are done.
    @discardableResult
    private func testAll() throws -> Bool {
        let c = core.callbacks
        var index = 0
        while index < requests.count {
            var done: Int32 = 0
            let code = c.test(c.user, requests[index], &done)
            guard code == 0 else { throw core.failure("test", code: code) }
            if done != 0 {
                requests.swapAt(index, requests.count - 1)
                requests.removeLast()
            } else {
                index += 1
            }
        }
        return requests.isEmpty
    }

    func wait(until deadline: Deadline) throws {
        try wait(until: deadline, what: "a ring transfer")
    }

    /// Tests until done or the deadline, pausing as the MPI transport does.
    func wait(until deadline: Deadline, what: String) throws {
        var backoff = WaitBackoff()
        while try !testAll() {
            if deadline.hasPassed {
                throw BurstError(.timeout, "rank \(core.callbacks.rank) timed out waiting for \(what); the plan (or, in a creation, the context) is now unusable")
            }
            backoff.pause()
        }
    }

    func poll() throws {
        if !requests.isEmpty { try testAll() }
    }
}

extension CallbackTransport {
    static let knownFlags = UInt32(BURST_TRANSPORT_SINGLE_THREADED)

    /// Collective (burst_context_create_transport): checks the struct, then
    /// one allgather round in which every rank learns every rank's rank,
    /// size, local verdict and host, so a rank whose struct is wrong makes
    /// every rank fail. Returns the transport and the ranks on this node.
    static func create(_ pointer: UnsafePointer<burst_transport>?) throws -> (CallbackTransport, localRanks: Int) {
        guard let pointer else { throw BurstError(.invalidArgument, "transport is NULL") }
        if let error = checkStructSize(UnsafeRawPointer(pointer), known: MemoryLayout<burst_transport>.size,
                                       what: "burst_transport", hint: "set struct_size = sizeof(burst_transport)") {
            throw error
        }
        var callbacks = burst_transport()
        copyDeclared(pointer, into: &callbacks)
        // Without these nobody can be told: the error stays on this rank.
        var missing: [String] = []
        if callbacks.isend == nil { missing.append("isend") }
        if callbacks.irecv == nil { missing.append("irecv") }
        if callbacks.iallgather == nil { missing.append("iallgather") }
        if callbacks.test == nil { missing.append("test") }
        guard missing.isEmpty else {
            throw BurstError(.invalidArgument, "burst_transport: the \(missing.joined(separator: ", ")) callback\(missing.count > 1 ? "s are" : " is") NULL")
        }
        guard (1...1024).contains(callbacks.size) else {
            throw BurstError(.invalidArgument, "burst_transport: size must be in 1...1024 (got \(callbacks.size))")
        }
        guard (0..<callbacks.size).contains(callbacks.rank) else {
            throw BurstError(.invalidArgument, "burst_transport: rank must be in [0, size = \(callbacks.size)) (got \(callbacks.rank))")
        }
        let size = Int(callbacks.size), rank = Int(callbacks.rank)
        // Errors every rank learns of in the round.
        var localError: BurstError?
        let timeout = callbacks.timeout_seconds
        if !(timeout.isFinite && timeout >= 0 && timeout <= 604_800) {
            localError = BurstError(.invalidArgument, "burst_transport: timeout_seconds must be in [0, 604800] (got \(timeout))")
        } else if callbacks.flags & ~knownFlags != 0 {
            localError = BurstError(.invalidArgument, "burst_transport: unknown flags 0x\(String(callbacks.flags, radix: 16)) (known: BURST_TRANSPORT_SINGLE_THREADED = 1)")
        }
        var declaredNodes: [Int]?
        if let nodes = callbacks.nodes {
            let values = (0..<size).map { Int(nodes[$0]) }
            if let bad = values.firstIndex(where: { $0 < 0 }), localError == nil {
                localError = BurstError(.invalidArgument, "burst_transport: nodes[\(bad)] is \(values[bad]); node ids must be >= 0")
            }
            declaredNodes = values
        }
        callbacks.nodes = nil   // copied above; the caller's array may go
        let core = Core(callbacks)
        let root = CallbackTransport(core: core, channel: 0, nodes: [])

        // Record: magic, status, rank, size, host, nodes digest.
        let magic: Int64 = 0x4255_5253_5452_0001   // "BURSTR" v1
        var record: [Int64] = [magic, Int64(localError?.status.rawValue ?? 0), Int64(rank), Int64(size),
                               hostIdentity(), declaredNodes.map { digest($0) } ?? -1]
        var all = [Int64](repeating: 0, count: record.count * size)
        let deadline = Deadline.after(seconds: timeout > 0 ? timeout : 300)
        try record.withUnsafeMutableBytes { send in
            try all.withUnsafeMutableBytes { receive in
                try root.allgather(UnsafeRawBufferPointer(send), into: receive, deadline: deadline)
            }
        }
        let records = (0..<size).map { Array(all[($0 * record.count)..<(($0 + 1) * record.count)]) }
        if let localError { throw localError }
        for (index, theirs) in records.enumerated() where theirs[0] != magic {
            throw BurstError(.mismatch, "burst_context_create_transport: the allgather's slot \(index) holds no record of this library (was every rank in the call, and does iallgather put rank r's bytes at offset r * bytes?)")
        }
        if let failed = records.firstIndex(where: { $0[1] != 0 }) {
            throw BurstError(Status(rawValue: Int32(records[failed][1])) ?? .invalidArgument,
                             "burst_context_create_transport failed on rank \(failed) (its burst_transport is invalid: see burst_last_error() there)")
        }
        for (index, theirs) in records.enumerated() {
            guard theirs[3] == Int64(size) else {
                throw BurstError(.mismatch, "burst_transport.size differs across ranks: this rank (\(rank)) has \(size), the rank in slot \(index) has \(theirs[3])")
            }
            guard theirs[2] == Int64(index) else {
                throw BurstError(.mismatch, "burst_transport.rank: the allgather's slot \(index) holds a rank that says it is rank \(theirs[2]) (ranks must be distinct, 0..size-1, and iallgather must place them in rank order)")
            }
            guard theirs[5] == record[5] else {
                throw BurstError(.mismatch, "burst_transport.nodes differs across ranks (rank \(rank) and rank \(index) declare different node ids, or only one of them declares any)")
            }
        }
        // Nodes: the caller's, else the lowest rank on the same host.
        let hosts = records.map { $0[4] }
        let nodes = declaredNodes ?? hosts.map { host in hosts.firstIndex(of: host)! }
        core.owned = true
        let transport = CallbackTransport(core: core, channel: 0, nodes: nodes)
        return (transport, nodes.filter { $0 == nodes[rank] }.count)
    }

    /// This host, as a number that is equal for processes on one machine:
    /// the hostname and the kernel's boot id, hashed (FNV-1a).
    private static func hostIdentity() -> Int64 {
        var name = [CChar](repeating: 0, count: 256)
        gethostname(&name, name.count - 1)
        var text = String(cString: name)
        if let file = fopen("/proc/sys/kernel/random/boot_id", "r") {
            var line = [CChar](repeating: 0, count: 64)
            if fgets(&line, Int32(line.count), file) != nil { text += String(cString: line) }
            fclose(file)
        }
        var hash: UInt64 = 0xcbf2_9ce4_8422_2325
        for byte in text.utf8 { hash = (hash ^ UInt64(byte)) &* 0x100_0000_01b3 }
        return Int64(bitPattern: hash & 0x7fff_ffff_ffff_ffff)
    }

    private static func digest(_ values: [Int]) -> Int64 {
        var hash: UInt64 = 0xcbf2_9ce4_8422_2325
        for value in values { hash = (hash ^ UInt64(UInt32(truncatingIfNeeded: value))) &* 0x100_0000_01b3 }
        return Int64(bitPattern: hash & 0x7fff_ffff_ffff_ffff)
    }
}
