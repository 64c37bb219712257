import LocalAttention

/// Forward workspace of ALLGATHER on one rank (floats): the packed queries
/// Zq·n·d, the running softmax state (acc Zq·n·d, max and sum Zq·n each) and
/// every rank's K|V block side by side, 2·Zkv·N·d (block j at 2·Zkv·d·Σ_{i<j} n_i,
/// K first, then V; this rank packs its own block straight into its slot).
/// With a half storage type `kv` holds the blocks in that type as they come
/// off the wire (2·Zkv·N·d halves), `own` this rank's block as fp32 and
/// `decoded` the fp32 block being computed (2·Zkv·n_max·d).
final class AllgatherForwardSpace {
    let q, acc, rowMax, rowSum, kv: FloatBuffer
    let gathered: GatheredBlocks

    init(zq: Int, zkv: Int, rows: Int, maxRows: Int, total: Int, headDim d: Int, storage: StorageType) throws {
        q = try allocate(zq * rows * d, "the packed queries")
        acc = try allocate(zq * rows * d, "the output accumulator")
        rowMax = try allocate(zq * rows, "the row maxima")
        rowSum = try allocate(zq * rows, "the row sums")
        kv = try allocate(WireFormat.floatsHolding(bytes: 2 * zkv * total * d * storage.bytes), "the gathered keys and values")
        gathered = try GatheredBlocks(zkv: zkv, rows: rows, maxRows: maxRows, headDim: d, storage: storage)
    }

    var floats: Int { GlobalAttention.floats(q, acc, rowMax, rowSum, kv) + gathered.floats }
}

/// ALLGATHER's fp32 views of gathered K|V blocks held in a half storage
/// type: this rank's own block and one decode buffer (nil for fp32, where
/// the gathered buffer is fp32 itself).
final class GatheredBlocks {
    let own, decoded: FloatBuffer?

    init(zkv: Int, rows: Int, maxRows: Int, headDim d: Int, storage: StorageType) throws {
        own = storage == .f32 ? nil : try allocate(2 * zkv * rows * d, "the own keys and values (fp32)")
        decoded = storage == .f32 ? nil : try allocate(2 * zkv * maxRows * d, "a decoded gathered block")
    }

    var floats: Int { GlobalAttention.floats(own, decoded) }
}

/// Backward workspace of ALLGATHER on one rank (floats): packed q, dO (Zq·n·d
/// each), D (Zq·n), the dQ accumulator (Zq·n·d, also the scratch for the
/// packed O), the gathered K|V (2·Zkv·N·d), two send buffers for the partial
/// dK|dV of a foreign block (2·Zkv·n_max·d each, double-buffered so the next
/// block is computed while the last one's partial is on its way), one slot
/// per rank for the partials of this rank's own block (P·2·Zkv·n·d; slot r is
/// this rank's own partial) and their sum (2·Zkv·n·d).
/// The gathered K|V with a half storage type: as in the forward.
final class AllgatherBackwardSpace {
    let q, dOut, delta, dq, kv, ownPartials, sum: FloatBuffer
    let outgoing: [FloatBuffer]
    let gathered: GatheredBlocks

    init(zq: Int, zkv: Int, rows: Int, maxRows: Int, total: Int, ranks: Int, headDim d: Int, storage: StorageType) throws {
        q = try allocate(zq * rows * d, "the packed queries")
        dOut = try allocate(zq * rows * d, "the packed output gradient")
        delta = try allocate(zq * rows, "D = rowsum(dO ∘ O)")
        dq = try allocate(zq * rows * d, "dq")
        kv = try allocate(WireFormat.floatsHolding(bytes: 2 * zkv * total * d * storage.bytes), "the gathered keys and values")
        gathered = try GatheredBlocks(zkv: zkv, rows: rows, maxRows: maxRows, headDim: d, storage: storage)
        ownPartials = try allocate(ranks * 2 * zkv * rows * d, "the partial dk, dv of this rank's block")
        sum = try allocate(2 * zkv * rows * d, "dk, dv")
        outgoing = ranks > 1 ? try (0..<2).map { _ in try allocate(2 * zkv * maxRows * d, "a partial dk, dv send buffer") } : []
    }

    var floats: Int {
        GlobalAttention.floats(q, dOut, delta, dq, kv, ownPartials, sum) + GlobalAttention.floats(outgoing) + gathered.floats
    }
}

/// BURST_PATTERN_ALLGATHER (Megatron / Llama-3 context parallelism): every
/// rank gathers every rank's K,V, computes its queries against the whole
/// sequence, and the backward reduce-scatters dK, dV to their owners.
///
/// The gather is point to point (one message per pair of ranks that needs
/// it), so every transport applies and a block no query of rank j sees is not
/// sent to rank j at all (`TokenLayout.needs`, known alike on every rank).
/// Blocks are folded in the fixed order of their source rank 0 … P−1, and
/// the owner of a block sums its P partial gradients in rank order 0 … P−1,
/// so results are bitwise reproducible for a given world size.
final class AllgatherSchedule: TrainingSchedule {
    let env: ScheduleEnvironment

    // Workspace, allocated on first use and kept (no allocation per call after that).
    var kernels: LocalAttention?
    var forwardSpace: AllgatherForwardSpace?
    var backwardSpace: AllgatherBackwardSpace?

    init(_ env: ScheduleEnvironment) {
        self.env = env
    }

    static let forwardTag: Int32 = 20
    static let backwardTag: Int32 = 21
    static let partialTag: Int32 = 22

    /// Bytes one ALLGATHER call sends and receives on `rank` (burst_stats),
    /// for any shard sizes and masks. With needs(a, b) = "some query of rank a
    /// sees some key of rank b" and n_j the tokens of rank j:
    ///
    /// - forward: sent Σ_{j≠r, needs(j,r)} 8·Zkv·d·n_r;
    ///   received Σ_{j≠r, needs(r,j)} 8·Zkv·d·n_j (K and V of a block).
    /// - backward: the same gather, plus the partial dK|dV of every foreign
    ///   block this rank computed going back to its owner: sent
    ///   Σ_{j≠r, needs(r,j)} 8·Zkv·d·n_j more, received Σ_{j≠r, needs(j,r)} 8·Zkv·d·n_r
    ///   more (a rank whose queries see nothing of block j sends no partial).
    ///
    /// Equal shards n = N/P and no mask: the forward moves (P−1)·2·Zkv·n·d
    /// floats each way, the backward (P−1)·4·Zkv·n·d floats each way. P = 1
    /// moves nothing. `zq` does not enter: only the key/value side travels.
    /// With a half storage type the gathered K|V take 2 bytes an element
    /// (the 8 above becomes 4) and the partials stay fp32.
    static func bytes(tokens: TokenLayout, rank r: Int, zq: Int, zkv: Int, headDim d: Int,
                      backward: Bool, storage: StorageType = .f32) -> (sent: UInt64, received: UInt64) {
        let block = { (j: Int) in UInt64(2 * storage.bytes * zkv * d * tokens.counts[j]) }
        let partial = { (j: Int) in UInt64(8 * zkv * d * tokens.counts[j]) }
        var gatherSent: UInt64 = 0, gatherReceived: UInt64 = 0, partialsSent: UInt64 = 0, partialsReceived: UInt64 = 0
        for j in 0..<tokens.ranks where j != r {
            if tokens.needs(queryRank: j, keyRank: r) { gatherSent += block(r); partialsReceived += partial(r) }
            if tokens.needs(queryRank: r, keyRank: j) { gatherReceived += block(j); partialsSent += partial(j) }
        }
        // The reduce-scatter mirrors the gather: each block received goes back as a partial.
        return backward ? (gatherSent + partialsSent, gatherReceived + partialsReceived) : (gatherSent, gatherReceived)
    }

    /// Both directions' buffers and the kernels' panels and scratch.
    var workspaceBytes: Int {
        ((forwardSpace?.floats ?? 0) + (backwardSpace?.floats ?? 0)) * MemoryLayout<Float>.size
            + (kernels?.workspaceBytes ?? 0)
    }

    /// The kernels see one rank's block at a time: Zkv heads × n_max keys.
    private func prepareKernels() throws {
        if kernels == nil { kernels = try env.makeKernels(maxKVHeads: env.zKV, maxKeyRows: env.tokens.maxCount) }
    }

    func prepareForward() -> BurstError? {
        preparing {
            try prepareKernels()
            if forwardSpace == nil {
                forwardSpace = try AllgatherForwardSpace(zq: env.zHeads, zkv: env.zKV, rows: env.localRows,
                                                         maxRows: env.tokens.maxCount, total: env.tokens.total,
                                                         headDim: env.headDim, storage: env.storage)
            }
        }
    }

    func prepareBackward() -> BurstError? {
        preparing {
            try prepareKernels()
            if backwardSpace == nil {
                backwardSpace = try AllgatherBackwardSpace(zq: env.zHeads, zkv: env.zKV, rows: env.localRows,
                                                           maxRows: env.tokens.maxCount, total: env.tokens.total,
                                                           ranks: env.size, headDim: env.headDim, storage: env.storage)
            }
        }
    }

    /// Elements before block j in the gathered K|V buffer.
    private func gatheredOffset(_ j: Int) -> Int { 2 * env.zKV * env.headDim * env.tokens.counts.prefix(j).reduce(0, +) }

    /// Block j of the gathered K|V (in the storage type).
    private func gatheredBlock(_ kv: FloatBuffer, _ j: Int) -> UnsafeMutableRawPointer {
        UnsafeMutableRawPointer(kv.pointer) + gatheredOffset(j) * env.storage.bytes
    }

    /// Packs this rank's K|V: straight into its slot of the gathered buffer
    /// for fp32; for a half type into `gathered.own` (fp32, for the compute)
    /// and, rounded back (exact), into its slot (for the wire).
    private func packOwnBlock(k: UnsafeRawPointer, v: UnsafeRawPointer, kv: FloatBuffer, gathered: GatheredBlocks) {
        let n = env.localRows, zkv = env.zKV, d = env.headDim
        let target = gathered.own?.pointer ?? kv.pointer + gatheredOffset(env.rank)
        env.pack(k, heads: env.kvHeads, into: target, pool: nil)
        env.pack(v, heads: env.kvHeads, into: target + zkv * n * d, pool: nil)
        if gathered.own != nil {
            StorageConversion.store(env.storage, target, into: gatheredBlock(kv, env.rank), count: 2 * zkv * n * d)
        }
    }

    /// The fp32 K|V of block `source` for the compute: in place for fp32,
    /// the own fp32 copy, or the block decoded into `gathered.decoded`.
    private func computableBlock(_ source: Int, kv: FloatBuffer, gathered: GatheredBlocks,
                                 stats: inout CallStats) -> UnsafeMutablePointer<Float> {
        guard let decoded = gathered.decoded, let own = gathered.own else { return kv.pointer + gatheredOffset(source) }
        if source == env.rank { return own.pointer }
        let count = 2 * env.zKV * env.tokens.counts[source] * env.headDim
        env.timed(&stats.computeSeconds) {
            StorageConversion.load(env.storage, gatheredBlock(kv, source), into: decoded.pointer, count: count)
        }
        return decoded.pointer
    }

    /// Posts the gather of K|V blocks: this rank's block (already packed at
    /// its slot of `kv`) to every rank whose queries see some of it, and one
    /// receive per block this rank's queries see. Returns the send and the
    /// per-source receives (nil where nothing comes). Blocks travel in the
    /// storage type.
    private func startGather(kv: FloatBuffer, tag: Int32,
                             stats: inout CallStats) throws -> (sends: PendingTransfer, receives: [PendingTransfer?]) {
        let p = env.size, r = env.rank, zkv = env.zKV, d = env.headDim, size = env.storage.bytes
        var receives = [PendingTransfer?](repeating: nil, count: p)
        for j in 0..<p where j != r && env.tokens.needs(queryRank: r, keyRank: j) {
            let bytes = 2 * zkv * env.tokens.counts[j] * d * size
            receives[j] = try env.startTransfer(sends: [], receives: [
                IncomingMessage(UnsafeMutableRawBufferPointer(start: gatheredBlock(kv, j), count: bytes), from: j, tag: tag)],
                                                stats: &stats)
        }
        var sends: [OutgoingMessage] = []
        let own = UnsafeRawBufferPointer(start: gatheredBlock(kv, r), count: 2 * zkv * env.localRows * d * size)
        for j in 0..<p where j != r && env.tokens.needs(queryRank: j, keyRank: r) {
            sends.append(OutgoingMessage(own, to: j, tag: tag))
        }
        let pending = try env.startTransfer(sends: sends, receives: [], stats: &stats)
        return (pending, receives)
    }

    /// The per-block prologue: false (and the block counted as skipped)
    /// when this rank's queries see nothing of `source`; otherwise waits
    /// until the block is in.
    private func gatheredBlockReady(_ kernels: LocalAttention, source: Int, receive: PendingTransfer?,
                                    stats: inout CallStats, deadline: Deadline) throws -> Bool {
        guard env.tokens.needs(queryRank: env.rank, keyRank: source) else {
            stats.add(.init(skipped: kernels.denseTiles(queryHeads: env.zHeads, queryRows: env.localRows,
                                                        keyRows: env.tokens.counts[source])))
            stats.stepsSkipped += 1
            return false
        }
        if let receive { try env.timed(&stats.commWaitSeconds) { try receive.wait(until: deadline) } }
        return true
    }

    /// burst_forward under ALLGATHER. Bytes: `bytes(backward: false)`.
    func forward(q: UnsafeRawPointer?, k: UnsafeRawPointer?, v: UnsafeRawPointer?,
                 out: UnsafeMutableRawPointer?, lse: UnsafeMutablePointer<Float>?,
                 stats: inout CallStats, deadline: Deadline) throws {
        guard let space = forwardSpace, let kernels else {
            throw BurstError(.internalError, "ALLGATHER forward workspace missing")
        }
        let p = env.size, r = env.rank, n = env.localRows, zq = env.zHeads, zkv = env.zKV, d = env.headDim
        if n > 0, let q, let k, let v {
            env.pack(q, heads: env.heads, into: space.q.pointer, pool: nil)
            packOwnBlock(k: k, v: v, kv: space.kv, gathered: space.gathered)
        }
        let gather = try startGather(kv: space.kv, tag: Self.forwardTag, stats: &stats)
        LocalAttention.resetForwardState(heads: zq, rows: n, headDim: d, acc: space.acc.pointer,
                                         rowMax: space.rowMax.pointer, rowSum: space.rowSum.pointer, sinks: env.sinks)

        // Transfers progress between tiles (MPI moves large messages only in MPI calls).
        if ScheduleEnvironment.progressPolling {
            kernels.progress = { try? gather.sends.poll(); for pending in gather.receives { try? pending?.poll() } }
        }
        defer { kernels.progress = nil }
        // Source order 0 … P−1 whatever the arrival order: reproducible sums.
        for source in 0..<p {
            let rows = env.tokens.counts[source]
            guard try gatheredBlockReady(kernels, source: source, receive: gather.receives[source], stats: &stats,
                                         deadline: deadline) else { continue }
            let block = computableBlock(source, kv: space.kv, gathered: space.gathered, stats: &stats)
            env.foldBlock(kernels, queryHeads: zq, q: space.q.pointer, rows: n, lo: env.tokens.lo[r], hi: env.tokens.hi[r],
                          k: block, v: block + zkv * rows * d, keyRows: rows, keyPositions: env.tokens.positions[source],
                          acc: space.acc.pointer, rowMax: space.rowMax.pointer, rowSum: space.rowSum.pointer, stats: &stats)
            stats.stepsComputed += 1
        }
        try env.timed(&stats.commWaitSeconds) { try gather.sends.wait(until: deadline) }

        env.finishRows(acc: space.acc.pointer, rowMax: space.rowMax.pointer, rowSum: space.rowSum.pointer,
                       out: out, lse: lse, stats: &stats)
    }

    /// burst_backward under ALLGATHER. Bytes: `bytes(backward: true)`.
    ///
    /// Gathers K|V as the forward does; for every block j this rank's queries
    /// see (source order 0 … P−1) it adds to dQ and computes the partial
    /// dK_j|dV_j of its queries, which leaves for rank j as soon as it is
    /// ready (the next block is computed meanwhile). The owner sums the
    /// partials of its block in rank order, its own at its own position.
    func backward(q: UnsafeRawPointer?, k: UnsafeRawPointer?, v: UnsafeRawPointer?,
                  out: UnsafeRawPointer?, lse: UnsafePointer<Float>?, dout: UnsafeRawPointer?,
                  dq: UnsafeMutableRawPointer?, dk: UnsafeMutableRawPointer?, dv: UnsafeMutableRawPointer?,
                  stats: inout CallStats, deadline: Deadline) throws {
        guard let space = backwardSpace, let kernels else {
            throw BurstError(.internalError, "ALLGATHER backward workspace missing")
        }
        let p = env.size, r = env.rank, n = env.localRows, zq = env.zHeads, zkv = env.zKV, d = env.headDim
        let partialFloats = 2 * zkv * n * d   // one partial of this rank's block
        var lsePointer: UnsafePointer<Float> = UnsafePointer(space.delta.pointer)   // any valid pointer when n = 0
        if n > 0, let q, let k, let v, let o = out, let dO = dout, let lse {
            env.pack(q, heads: env.heads, into: space.q.pointer, pool: nil)
            env.pack(dO, heads: env.heads, into: space.dOut.pointer, pool: nil)
            env.pack(o, heads: env.heads, into: space.dq.pointer, pool: nil)
            env.timed(&stats.computeSeconds) {
                LocalAttention.rowDot(count: zq * n, headDim: d, space.dOut.pointer, space.dq.pointer, into: space.delta.pointer)
                env.sinkGradient(lse: lse) { UnsafePointer(space.delta.pointer + $0 * n) }
            }
            packOwnBlock(k: k, v: v, kv: space.kv, gathered: space.gathered)
            lsePointer = lse
        }
        space.dq.fill(0, count: zq * n * d)

        // The partials of this rank's block from every rank that sees it,
        // posted before anything is computed so no sender waits on us.
        var partialReceives: [PendingTransfer] = []
        for i in 0..<p where i != r && env.tokens.needs(queryRank: i, keyRank: r) {
            let bytes = partialFloats * 4
            partialReceives.append(try env.startTransfer(sends: [], receives: [
                IncomingMessage(UnsafeMutableRawBufferPointer(start: space.ownPartials.pointer + i * partialFloats, count: bytes),
                                from: i, tag: Self.partialTag)], stats: &stats))
        }
        let gather = try startGather(kv: space.kv, tag: Self.backwardTag, stats: &stats)

        var outgoing: [PendingTransfer] = [CompletedTransfer(), CompletedTransfer()]
        var slot = 0
        // Transfers progress between tiles (failures surface at the waits).
        let inFlight = partialReceives + [gather.sends] + gather.receives.compactMap { $0 }
        if ScheduleEnvironment.progressPolling { kernels.progress = { for pending in inFlight { try? pending.poll() } } }
        defer { kernels.progress = nil }
        for source in 0..<p {
            let rows = env.tokens.counts[source]
            guard try gatheredBlockReady(kernels, source: source, receive: gather.receives[source], stats: &stats,
                                         deadline: deadline) else { continue }
            let partial: UnsafeMutablePointer<Float>
            if source == r {
                partial = space.ownPartials.pointer + r * partialFloats
            } else {
                // The slot's previous partial must have left before it is overwritten.
                try env.timed(&stats.commWaitSeconds) { try outgoing[slot].wait(until: deadline) }
                partial = space.outgoing[slot].pointer
            }
            partial.update(repeating: 0, count: 2 * zkv * rows * d)
            let block = computableBlock(source, kv: space.kv, gathered: space.gathered, stats: &stats)
            let lseRows = lsePointer
            env.gradientBlock(kernels, queryHeads: zq, q: space.q.pointer, dOut: space.dOut.pointer, delta: space.delta.pointer,
                              lse: lseRows, dq: space.dq.pointer, rows: n, lo: env.tokens.lo[r], hi: env.tokens.hi[r],
                              k: block, v: block + zkv * rows * d, dk: partial, dv: partial + zkv * rows * d,
                              keyRows: rows, keyPositions: env.tokens.positions[source], stats: &stats)
            stats.stepsComputed += 1
            if source != r {
                let bytes = 2 * zkv * rows * d * 4
                outgoing[slot] = try env.startTransfer(sends: [OutgoingMessage(UnsafeRawBufferPointer(start: partial, count: bytes),
                                                                               to: source, tag: Self.partialTag)],
                                                       receives: [], stats: &stats)
                slot ^= 1
            }
        }
        try env.timed(&stats.commWaitSeconds) {
            for pending in partialReceives { try pending.wait(until: deadline) }
            for pending in outgoing { try pending.wait(until: deadline) }
            try gather.sends.wait(until: deadline)
        }

        // dK|dV of this rank's block: Σ_i partial_i in rank order i = 0 … P−1.
        env.timed(&stats.computeSeconds) {
            let sum = space.sum.pointer
            sum.update(repeating: 0, count: partialFloats)
            for i in 0..<p where env.tokens.needs(queryRank: i, keyRank: r) {
                let partial = space.ownPartials.pointer + i * partialFloats
                for e in 0..<partialFloats { sum[e] += partial[e] }
            }
        }
        if n > 0, let dq, let dk, let dv {
            env.unpack(space.dq.pointer, heads: env.heads, into: dq, pool: nil)
            env.unpack(space.sum.pointer, heads: env.kvHeads, into: dk, pool: nil)
            env.unpack(space.sum.pointer + zkv * n * d, heads: env.kvHeads, into: dv, pool: nil)
        }
    }
}
