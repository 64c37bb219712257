#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif
import LocalAttention

/// One attention shape on one group of ranks (burst_plan): the validated
/// config, where every rank's tokens are (`TokenLayout`), a private transport (so plans never mix
/// messages), the compute threads, and the schedule of its pattern
/// (`TrainingSchedule`: ring, allgather or ulysses), which owns the workspace.
///
/// Calls are collective and follow the same pattern: local checks (the
/// arguments, then the schedule's preparation), one agreement round (all
/// ranks learn whether every rank can go on), the schedule, and stats. A plan is driven by one thread at a time; a second
/// concurrent caller gets BUSY. After a TIMEOUT or COMMUNICATION error the
/// plan is poisoned and returns that error from then on.
public final class AttentionPlan {
    public let config: AttentionConfig
    public let tokens: TokenLayout
    let transport: Transport
    let pool: WorkerPool
    /// The element type of the caller's tensors (lse is always fp32).
    public let storage: StorageType
    /// The communication pattern the calls run (AUTO already resolved).
    public let pattern: AttentionConfig.Pattern
    /// Ranks per group of the double ring (= size: one ring).
    public let groupSize: Int

    /// The ring (or double ring) of the ring patterns (`RingSchedule`).
    public var route: RingRoute { RingRoute(ranks: size, groupSize: groupSize) }

    /// Busy guard, agreement, poisoning and the last call's stats.
    let calls: CollectiveGuard
    public var lastStats: CallStats { calls.lastStats }

    /// How the calls run, chosen once from the pattern; owns the workspace
    /// and the kernels.
    let schedule: TrainingSchedule
    /// What the schedule works with; holds the current sink logits.
    let environment: ScheduleEnvironment
    /// Why the sinks last set cannot be used (a NaN or infinite value): the
    /// next collective call fails with it on every rank.
    private var sinksError: BurstError?
    /// dL/d sinks of the last successful backward (this rank's partial; nil
    /// when it had no sinks, or since a failed call or new sinks).
    private var sinkGradient: [Float]?

    init(config: AttentionConfig, transport: Transport, tokens: TokenLayout, threads: Int,
         pattern: AttentionConfig.Pattern = .burst, groupSize: Int = 0) {
        self.config = config
        self.pattern = pattern
        self.groupSize = groupSize > 0 ? groupSize : transport.size
        self.transport = transport
        self.tokens = tokens
        self.pool = WorkerPool(threadCount: threads)
        self.storage = config.storage
        let environment = ScheduleEnvironment(config: config, tokens: tokens, transport: transport, pool: pool)
        self.environment = environment
        switch pattern {
        case .allgather: schedule = AllgatherSchedule(environment)
        case .ulysses: schedule = UlyssesSchedule(environment)
        default: schedule = RingSchedule(environment, pattern: pattern, groupSize: self.groupSize)
        }
        var base = CallStats()
        base.pattern = pattern.rawValue
        // ALLGATHER and ULYSSES run no ring: one group of every rank.
        base.intraGroupSize = Int32(pattern == .allgather || pattern == .ulysses ? transport.size : self.groupSize)
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
    public var tensorElements: Int { Int(config.batch) * Int(config.numHeadsQ) * localRows * Int(config.headDim) }
    public var kvTensorElements: Int { Int(config.batch) * Int(config.numHeadsKV) * localRows * Int(config.headDim) }
    public var lseElements: Int { Int(config.batch) * Int(config.numHeadsQ) * localRows }

    /// The counters of the last call, read under the plan's busy guard (a
    /// call in progress on another thread gives BUSY rather than a torn read).
    public func statsSnapshot() throws -> CallStats {
        try calls.statsSnapshot("burst_plan_stats")
    }

    /// Runs one collective call: busy guard, local checks (argument checks and
    /// workspace), agreement, then `body`. Records stats and poisons the plan
    /// on a transport failure.
    /// The sink logits are part of every call's agreement (a digest of
    /// them): ranks whose values differ get MISMATCH, and values that
    /// `setSinks` refused fail the call on every rank.
    func collective(_ operation: Agreement.Operation, localCheck: () -> BurstError?,
                    _ body: (inout CallStats, Deadline) throws -> Void) throws {
        let sinks = environment.sinks
        let digest = AttentionConfig.sinksDigest(sinks)
        try calls.run(operation, localCheck: {
            // (Under the busy guard.) A backward's sink gradient is the
            // last successful one's: a failing call leaves none.
            if operation == .backward { sinkGradient = nil }
            return sinksError ?? localCheck()
        }, payload: [digest]) { payloads, stats, deadline in
            if let differing = payloads.firstIndex(where: { $0.first != digest }) {
                throw BurstError(.mismatch, "\(operation.cName): the sink logits differ between ranks (rank \(rank) " +
                    "\(sinks == nil ? "has none" : "has digest \(String(UInt64(bitPattern: digest), radix: 16))"), rank \(differing) " +
                    "\(payloads[differing].first == 0 ? "has none" : "another"); every rank must set the same values)")
            }
            try body(&stats, deadline)
        }
    }

    /// burst_plan_set_sinks: the sink logits of the calls that follow (nil
    /// removes them). Local. A value that is not finite is refused here and
    /// kept, so the next collective call fails on every rank.
    public func setSinks(_ values: [Float]?) throws {
        try calls.locally("burst_plan_set_sinks") {
            sinkGradient = nil
            environment.sinks = values
            sinksError = nil
            if let values {
                do {
                    try AttentionConfig.checkSinks(values)
                } catch let error as BurstError {
                    sinksError = BurstError(.invalidArgument, "burst_plan_set_sinks was given invalid sinks: \(error.message)")
                    throw error
                }
            }
        }
    }

    /// burst_plan_sinks_gradient: dL/d sinks of the last successful
    /// backward, this rank's partial. Local.
    public func sinksGradient() throws -> [Float] {
        try calls.locally("burst_plan_sinks_gradient") {
            guard let sinkGradient else {
                throw BurstError(.invalidArgument, environment.sinks == nil
                    ? "burst_plan_sinks_gradient: the plan has no sinks (set them in the config or with burst_plan_set_sinks)"
                    : "burst_plan_sinks_gradient: no burst_backward with these sinks has succeeded on this plan yet")
            }
            return sinkGradient
        }
    }

    /// burst_forward. Collective: the argument checks and the schedule's
    /// preparation (its workspace) are the local check of the agreement
    /// round, then the schedule runs (`RingSchedule`, `AllgatherSchedule`,
    /// `UlyssesSchedule`: each says how, and what it moves).
    public func forward(q: UnsafeRawPointer?, k: UnsafeRawPointer?, v: UnsafeRawPointer?,
                        out: UnsafeMutableRawPointer?, lse: UnsafeMutablePointer<Float>?) throws {
        let elements = tensorElements, kvElements = kvTensorElements
        try collective(.forward, localCheck: {
            if let e = Self.requireBuffer(q, "q", elements: elements) { return e }
            if let e = Self.requireBuffer(k, "k", elements: kvElements) { return e }
            if let e = Self.requireBuffer(v, "v", elements: kvElements) { return e }
            if let e = Self.requireBuffer(out, "out", elements: elements) { return e }
            let e = storage.bytes
            if let error = Self.requireDisjoint(
                outputs: [BufferRange(out, "out", bytes: elements * e), BufferRange(lse, "lse", bytes: lseElements * 4)],
                inputs: [BufferRange(q, "q", bytes: elements * e), BufferRange(k, "k", bytes: kvElements * e),
                         BufferRange(v, "v", bytes: kvElements * e)]) { return error }
            return schedule.prepareForward()
        }) { stats, deadline in
            try schedule.forward(q: q, k: k, v: v, out: out, lse: lse, stats: &stats, deadline: deadline)
        }
    }

    /// burst_backward. Collective, as `forward`.
    public func backward(q: UnsafeRawPointer?, k: UnsafeRawPointer?, v: UnsafeRawPointer?,
                         out: UnsafeRawPointer?, lse: UnsafePointer<Float>?, dout: UnsafeRawPointer?,
                         dq: UnsafeMutableRawPointer?, dk: UnsafeMutableRawPointer?, dv: UnsafeMutableRawPointer?) throws {
        let elements = tensorElements, kvElements = kvTensorElements
        try collective(.backward, localCheck: {
            for (pointer, name, count) in [(q, "q", elements), (k, "k", kvElements), (v, "v", kvElements),
                                           (out, "out", elements), (dout, "dout", elements),
                                           (UnsafeRawPointer(dq), "dq", elements), (UnsafeRawPointer(dk), "dk", kvElements),
                                           (UnsafeRawPointer(dv), "dv", kvElements)] {
                if let e = Self.requireBuffer(pointer, name, elements: count) { return e }
            }
            if let e = Self.requireBuffer(lse, "lse", elements: lseElements) { return e }
            let e = storage.bytes
            if let error = Self.requireDisjoint(
                outputs: [BufferRange(dq, "dq", bytes: elements * e), BufferRange(dk, "dk", bytes: kvElements * e),
                          BufferRange(dv, "dv", bytes: kvElements * e)],
                inputs: [BufferRange(q, "q", bytes: elements * e), BufferRange(k, "k", bytes: kvElements * e),
                         BufferRange(v, "v", bytes: kvElements * e), BufferRange(out, "out", bytes: elements * e),
                         BufferRange(dout, "dout", bytes: elements * e), BufferRange(lse, "lse", bytes: lseElements * 4)]) { return error }
            return schedule.prepareBackward()
        }) { stats, deadline in
            environment.sinkGradient = nil
            try schedule.backward(q: q, k: k, v: v, out: out, lse: lse, dout: dout, dq: dq, dk: dk, dv: dv,
                                  stats: &stats, deadline: deadline)
            // The schedule computed it from its D (`ScheduleEnvironment.sinkGradient`);
            // a rank with no rows contributes 0.
            guard let sinks = environment.sinks else { return }
            sinkGradient = environment.sinkGradient ?? [Float](repeating: 0, count: sinks.count)
        }
    }

    /// Bytes of workspace this plan holds now (the schedule's buffers and
    /// its kernels' panels and scratch): what a rank pays in memory beyond
    /// the caller's tensors. Grows on the first forward and the first
    /// backward, then stays.
    public var workspaceBytes: Int { schedule.workspaceBytes }

    /// A tuning knob from the environment (tile sizes), clamped to 8...512.
    public static func tuning(_ name: String, _ fallback: Int) -> Int {
        guard let raw = getenv(name), let value = Int(String(cString: raw)) else { return fallback }
        return min(max(value, 8), 512)
    }

    /// Bytes one ALLGATHER call sends and receives on `rank` (burst_stats):
    /// `AllgatherSchedule.bytes`, where the formula is.
    public static func allgatherBytes(tokens: TokenLayout, rank: Int, zq: Int, zkv: Int, headDim: Int,
                                      backward: Bool, storage: StorageType = .f32) -> (sent: UInt64, received: UInt64) {
        AllgatherSchedule.bytes(tokens: tokens, rank: rank, zq: zq, zkv: zkv, headDim: headDim, backward: backward, storage: storage)
    }

    /// Bytes one ULYSSES call sends and receives on `rank` (burst_stats):
    /// `UlyssesSchedule.bytes`, where the formula is.
    public static func ulyssesBytes(tokens: TokenLayout, rank: Int, zq: Int, zkv: Int, headDim: Int,
                                    backward: Bool, storage: StorageType = .f32) -> (sent: UInt64, received: UInt64) {
        UlyssesSchedule.bytes(tokens: tokens, rank: rank, zq: zq, zkv: zkv, headDim: headDim, backward: backward, storage: storage)
    }

    /// Why ULYSSES cannot run this shape on `ranks` ranks (UNSUPPORTED), or
    /// nil: `UlyssesSchedule.unsupported`. Checked at plan creation.
    static func ulyssesUnsupported(_ config: AttentionConfig, ranks: Int) -> BurstError? {
        UlyssesSchedule.unsupported(config, ranks: ranks)
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
}
