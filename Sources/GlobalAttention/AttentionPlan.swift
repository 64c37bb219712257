#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif
import LocalAttention

/// One attention shape on one group of ranks (burst_plan): the validated
/// config, where every rank's tokens are (`TokenLayout`), a private transport (so plans never mix
/// messages), the compute threads and the workspace.
///
/// Calls are collective and follow the same pattern: local checks, one
/// agreement round (all ranks learn whether every rank can go on), the
/// schedule, and stats. A plan is driven by one thread at a time; a second
/// concurrent caller gets BUSY. After a TIMEOUT or COMMUNICATION error the
/// plan is poisoned and returns that error from then on.
public final class AttentionPlan {
    public let config: AttentionConfig
    public let tokens: TokenLayout
    let transport: Transport
    let pool: WorkerPool
    let layout: AttentionConfig.Layout
    let batch: Int, heads: Int, kvHeads: Int, headDim: Int
    /// Z = batch · heads: the kernels see heads of all batches as one axis.
    let zHeads: Int
    /// Z of the keys and values: batch · num_heads_kv (GQA: zHeads / group).
    let zKV: Int
    /// Query heads per key/value head.
    let group: Int
    /// The element type of the caller's tensors (lse is always fp32).
    public let storage: StorageType
    /// The communication pattern the calls run (AUTO already resolved).
    public let pattern: AttentionConfig.Pattern
    /// Ranks per group of the double ring (= size: one ring).
    public let groupSize: Int

    /// The ring (or double ring) of the ring patterns, and who needs whose
    /// blocks on it: keys and values go to the ranks whose queries see them
    /// (forward, RING backward); query bundles go to the ranks whose keys
    /// they see (BURST backward).
    public var route: RingRoute { RingRoute(ranks: size, groupSize: groupSize) }
    lazy var keyPass = RingPass(route: route) { holder, block in self.tokens.needs(queryRank: holder, keyRank: block) }
    lazy var queryPass = RingPass(route: route) { holder, block in self.tokens.needs(queryRank: block, keyRank: holder) }

    /// Busy guard, agreement, poisoning and the last call's stats.
    let calls: CollectiveGuard
    public var lastStats: CallStats { calls.lastStats }

    // Workspace, allocated on first use and kept (no allocation per call after that).
    var kernels: LocalAttention?
    var forwardSpace: ForwardWorkspace?
    var backwardSpace: BackwardWorkspace?
    /// ALLGATHER / ULYSSES workspace and kernels (their own shapes).
    var collectiveForwardSpace: AnyObject?
    var collectiveBackwardSpace: AnyObject?
    var collectiveKernels: LocalAttention?

    init(config: AttentionConfig, transport: Transport, tokens: TokenLayout, threads: Int,
         pattern: AttentionConfig.Pattern = .burst, groupSize: Int = 0) {
        self.config = config
        self.pattern = pattern
        self.groupSize = groupSize > 0 ? groupSize : transport.size
        self.transport = transport
        self.tokens = tokens
        self.pool = WorkerPool(threadCount: threads)
        self.layout = AttentionConfig.Layout(rawValue: config.layout)!
        self.batch = Int(config.batch)
        self.heads = Int(config.numHeadsQ)
        self.kvHeads = Int(config.numHeadsKV)
        self.headDim = Int(config.headDim)
        self.zHeads = batch * heads
        self.zKV = batch * kvHeads
        self.group = config.group
        self.storage = config.storage
        var base = CallStats()
        base.pattern = pattern.rawValue
        base.intraGroupSize = Int32(self.groupSize)
        calls = CollectiveGuard(owner: "the plan", transport: transport, timeoutSeconds: config.effectiveTimeout, baseStats: base)
    }

    deinit {
        transport.close()
    }

    public var rank: Int { transport.rank }
    public var size: Int { transport.size }
    public var localRows: Int { tokens.counts[rank] }
    public var threadCount: Int { pool.threadCount }

    /// Elements of this rank's q/out tensors, of its k/v tensors (GQA: fewer
    /// heads), and of lse.
    public var tensorElements: Int { zHeads * localRows * headDim }
    public var kvTensorElements: Int { zKV * localRows * headDim }
    public var lseElements: Int { zHeads * localRows }

    /// The counters of the last call, read under the plan's busy guard (a
    /// call in progress on another thread gives BUSY rather than a torn read).
    public func statsSnapshot() throws -> CallStats {
        try calls.statsSnapshot("burst_plan_stats")
    }

    /// Runs one collective call: busy guard, local checks (argument checks and
    /// workspace), agreement, then `body`. Records stats and poisons the plan
    /// on a transport failure.
    func collective(_ operation: Agreement.Operation, localCheck: () -> BurstError?,
                    _ body: (inout CallStats, Deadline) throws -> Void) throws {
        try calls.run(operation, localCheck: localCheck) { _, stats, deadline in try body(&stats, deadline) }
    }

    /// Bytes of workspace this plan holds now (buffers of every pattern's
    /// workspace and the kernels' panels and scratch): what a rank pays in
    /// memory beyond the caller's tensors. Grows on the first forward and
    /// the first backward, then stays.
    public var workspaceBytes: Int {
        func floats(_ object: Any?) -> Int {
            guard let object else { return 0 }
            if let buffer = object as? FloatBuffer { return buffer.count }
            if let buffers = object as? [FloatBuffer] { return buffers.reduce(0) { $0 + $1.count } }
            return Mirror(reflecting: object).children.reduce(0) { $0 + floats($1.value) }
        }
        let spaces: [AnyObject?] = [forwardSpace, backwardSpace, collectiveForwardSpace, collectiveBackwardSpace]
        return spaces.reduce(0) { $0 + floats($1) } * MemoryLayout<Float>.size
            + (kernels?.workspaceBytes ?? 0) + (collectiveKernels?.workspaceBytes ?? 0)
    }

    /// Allocates the kernels' scratch space if needed.
    func ensureKernels() -> BurstError? {
        if kernels != nil { return nil }
        guard let made = LocalAttention(headDim: headDim, scale: config.effectiveScale, pool: pool,
                                        maxKVHeads: zKV, maxKeyRows: tokens.maxCount,
                                        tileQ: Self.tuning("BURST_TILE_Q", 256), tileK: Self.tuning("BURST_TILE_K", 128)) else {
            return BurstError(.outOfMemory, "cannot allocate the kernels' scratch space")
        }
        kernels = made
        return nil
    }

    /// A tuning knob from the environment (tile sizes), clamped to 8...512.
    public static func tuning(_ name: String, _ fallback: Int) -> Int {
        guard let raw = getenv(name), let value = Int(String(cString: raw)) else { return fallback }
        return min(max(value, 8), 512)
    }

    /// Checks that a caller's buffer is present when its tensor is not empty.
    static func requireBuffer(_ pointer: UnsafeRawPointer?, _ name: String, elements: Int) -> BurstError? {
        if pointer == nil && elements > 0 {
            return BurstError(.invalidArgument, "\(name) is NULL but holds \(elements) elements (only a rank with seq_len_local = 0 may pass NULL)")
        }
        return nil
    }

    /// A caller's buffer as a byte range, for the overlap checks.
    struct BufferRange {
        let name: String
        let start: UInt
        let bytes: Int
        init(_ pointer: UnsafeRawPointer?, _ name: String, bytes: Int) {
            self.name = name
            self.start = UInt(bitPattern: pointer)
            self.bytes = pointer == nil ? 0 : bytes
        }
        func overlaps(_ other: BufferRange) -> Bool {
            guard bytes > 0, other.bytes > 0 else { return false }
            return start < other.start &+ UInt(other.bytes) && other.start < start &+ UInt(bytes)
        }
    }

    /// Every output must be disjoint from every other buffer of the call
    /// (inputs may alias one another: q = k = v is self-attention). A buffer
    /// whose byte range wraps the address space is refused too.
    static func requireDisjoint(outputs: [BufferRange], inputs: [BufferRange]) -> BurstError? {
        for buffer in outputs + inputs where buffer.bytes > 0 && buffer.start > UInt.max - UInt(buffer.bytes) {
            return BurstError(.invalidArgument, "\(buffer.name): \(buffer.bytes) bytes from this address wrap the address space")
        }
        for (i, output) in outputs.enumerated() {
            for other in outputs[(i + 1)...] + inputs where output.overlaps(other) {
                return BurstError(.invalidArgument, "\(output.name) overlaps \(other.name): outputs must not alias any other buffer of the call")
            }
        }
        return nil
    }

    /// Starts transfers and counts them into `stats`: payload bytes each
    /// way, messages sent, and the part whose peer is in another group.
    func startTransfer(sends: [OutgoingMessage], receives: [IncomingMessage], stats: inout CallStats) throws -> PendingTransfer {
        if sends.isEmpty && receives.isEmpty { return CompletedTransfer() }
        let nodes = transport.nodes, home = nodes[rank]
        for m in sends {
            stats.bytesSent += UInt64(m.buffer.count)
            stats.messagesSent += 1
            if nodes[m.peer] != home { stats.bytesSentInterGroup += UInt64(m.buffer.count) }
        }
        for m in receives {
            stats.bytesReceived += UInt64(m.buffer.count)
            if nodes[m.peer] != home { stats.bytesReceivedInterGroup += UInt64(m.buffer.count) }
        }
        return try transport.start(sends: sends, receives: receives)
    }

    /// Times a compute phase into `stats.computeSeconds`.
    @inline(__always)
    func timed<T>(_ seconds: inout Double, _ work: () throws -> T) rethrows -> T {
        let t0 = Deadline.seconds()
        defer { seconds += Deadline.seconds() - t0 }
        return try work()
    }
}

/// Allocates `count` floats or reports OUT_OF_MEMORY naming the buffer.
func allocate(_ count: Int, _ what: String) throws -> FloatBuffer {
    guard let buffer = FloatBuffer(count: count) else {
        throw BurstError(.outOfMemory, "cannot allocate \(count * 4) bytes for \(what)")
    }
    return buffer
}
