#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif
import LocalAttention

/// What a plan's training schedule works with, kept in one place for every
/// schedule: the shape of the call, where every rank's tokens are
/// (`TokenLayout`), the plan's private transport and its compute threads,
/// and the steps all schedules take with them (packing, transfers counted
/// into the stats, the LAO blocks in `ScheduleEnvironment+Blocks`). The plan
/// makes one and hands it to its schedule; the schedule owns only its
/// workspace and kernels.
final class ScheduleEnvironment {
    let config: AttentionConfig
    let tokens: TokenLayout
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
    let storage: StorageType
    /// The sink logits the next call uses (one per query head; nil = no
    /// sinks): the config's, replaced by `AttentionPlan.setSinks`.
    var sinks: [Float]?
    /// dL/d sinks of the backward that just ran (`sinkGradient(lse:delta:)`;
    /// nil when it had no sinks or no rows here).
    var sinkGradient: [Float]?

    init(config: AttentionConfig, tokens: TokenLayout, transport: Transport, pool: WorkerPool) {
        self.config = config
        self.tokens = tokens
        self.transport = transport
        self.pool = pool
        self.layout = AttentionConfig.Layout(rawValue: config.layout)!
        self.batch = Int(config.batch)
        self.heads = Int(config.numHeadsQ)
        self.kvHeads = Int(config.numHeadsKV)
        self.headDim = Int(config.headDim)
        self.zHeads = batch * heads
        self.zKV = batch * kvHeads
        self.group = config.group
        self.storage = config.storage
        self.sinks = config.sinks
    }

    var rank: Int { transport.rank }
    var size: Int { transport.size }
    var localRows: Int { tokens.counts[rank] }

    /// Whether transfers in flight are polled between tiles (read once from
    /// `BURST_PROGRESS`; "0" turns it off, so transfers progress only when a
    /// step waits for them — the benchmark's progress on/off comparison).
    static let progressPolling: Bool = getenv("BURST_PROGRESS").map { String(cString: $0) != "0" } ?? true

    /// Kernels for key blocks of up to `maxKVHeads` heads × `maxKeyRows`
    /// rows (their panels and scratch), with the tile sizes of the
    /// environment (`AttentionPlan.tuning`) and the plan's tile products
    /// (`AttentionConfig.products`: BURST_COMPUTE_*).
    func makeKernels(maxKVHeads: Int, maxKeyRows: Int) throws -> LocalAttention {
        guard let made = LocalAttention(headDim: headDim, scale: config.effectiveScale, pool: pool,
                                        maxKVHeads: maxKVHeads, maxKeyRows: maxKeyRows,
                                        tileQ: AttentionPlan.tuning("BURST_TILE_Q", 256),
                                        tileK: AttentionPlan.tuning("BURST_TILE_K", 128),
                                        products: config.products, softcap: config.softcap) else {
            throw BurstError(.outOfMemory, "cannot allocate the kernels' scratch space")
        }
        return made
    }

    /// The sinks' gradient (header, "Score modifiers"): a sink s_h is one
    /// more logit of every row of head h with no value, so the softmax's
    /// backward at its column (dP = 0) gives dL/ds_h = −Σ_i e^(s_h − lse_i)·D_i
    /// over this rank's rows and batch. Every schedule's backward computes D
    /// of this rank's rows at home (rowDot: same values, same order, so every
    /// pattern gives the same bits) and calls this with the caller's lse
    /// ([batch, heads, n]) and `delta(z)`, the n values of D of head z =
    /// b·heads + h wherever the schedule keeps them. Summed in Double, rows
    /// in order; stored in `sinkGradient` for the plan.
    func sinkGradient(lse: UnsafePointer<Float>, delta: (_ z: Int) -> UnsafePointer<Float>) {
        guard let sinks else { return }
        let n = localRows
        var gradient = [Double](repeating: 0, count: heads)
        for z in 0..<zHeads {
            let h = z % heads, sink = Double(sinks[h]), d = delta(z), l = lse + z * n
            var sum = 0.0
            for i in 0..<n where l[i] != -.infinity { sum -= exp(sink - Double(l[i])) * Double(d[i]) }
            gradient[h] += sum
        }
        sinkGradient = gradient.map { Float($0) }
    }

    /// This rank's rows of a caller's tensor with `heads` heads per batch
    /// (q, dO, O: `heads`; k, v: `kvHeads`), widened into the canonical fp32
    /// layout (`TensorPacking`); `pool` nil packs on the calling thread.
    func pack(_ user: UnsafeRawPointer, heads: Int, into canonical: UnsafeMutablePointer<Float>, pool: WorkerPool?) {
        TensorPacking.pack(user, type: storage, layout: layout, batch: batch, heads: heads, rows: localRows, headDim: headDim,
                           into: canonical, pool: pool)
    }

    /// The inverse of `pack`: this rank's rows back to the caller's layout
    /// and storage type (rounded once).
    func unpack(_ canonical: UnsafePointer<Float>, heads: Int, into user: UnsafeMutableRawPointer, pool: WorkerPool?) {
        TensorPacking.unpack(canonical, type: storage, layout: layout, batch: batch, heads: heads, rows: localRows,
                             headDim: headDim, into: user, pool: pool)
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

    /// Times a compute phase into `stats.computeSeconds` (or a wait into
    /// `stats.commWaitSeconds`).
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

/// Floats held by `buffers` (a workspace's size; nil buffers hold none).
func floats(_ buffers: FloatBuffer?...) -> Int {
    buffers.reduce(0) { $0 + ($1?.count ?? 0) }
}

/// Floats held by a list of buffers.
func floats(_ buffers: [FloatBuffer]) -> Int {
    buffers.reduce(0) { $0 + $1.count }
}
