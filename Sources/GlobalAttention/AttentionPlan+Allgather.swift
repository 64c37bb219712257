import LocalAttention

/// Forward workspace of ALLGATHER on one rank (floats): the packed queries
/// Zq·n·d, the running softmax state (acc Zq·n·d, max and sum Zq·n each) and
/// every rank's K|V block side by side, 2·Zkv·N·d (block j at 2·Zkv·d·Σ_{i<j} n_i,
/// K first, then V; this rank packs its own block straight into its slot).
final class AllgatherForwardSpace {
    let q, acc, rowMax, rowSum, kv: FloatBuffer

    init(zq: Int, zkv: Int, rows: Int, total: Int, headDim d: Int) throws {
        q = try allocate(zq * rows * d, "the packed queries")
        acc = try allocate(zq * rows * d, "the output accumulator")
        rowMax = try allocate(zq * rows, "the row maxima")
        rowSum = try allocate(zq * rows, "the row sums")
        kv = try allocate(2 * zkv * total * d, "the gathered keys and values")
    }
}

/// Backward workspace of ALLGATHER on one rank (floats): packed q, dO (Zq·n·d
/// each), D (Zq·n), the dQ accumulator (Zq·n·d, also the scratch for the
/// packed O), the gathered K|V (2·Zkv·N·d), two send buffers for the partial
/// dK|dV of a foreign block (2·Zkv·n_max·d each, double-buffered so the next
/// block is computed while the last one's partial is on its way), one slot
/// per rank for the partials of this rank's own block (P·2·Zkv·n·d; slot r is
/// this rank's own partial) and their sum (2·Zkv·n·d).
final class AllgatherBackwardSpace {
    let q, dOut, delta, dq, kv, ownPartials, sum: FloatBuffer
    let outgoing: [FloatBuffer]

    init(zq: Int, zkv: Int, rows: Int, maxRows: Int, total: Int, ranks: Int, headDim d: Int) throws {
        q = try allocate(zq * rows * d, "the packed queries")
        dOut = try allocate(zq * rows * d, "the packed output gradient")
        delta = try allocate(zq * rows, "D = rowsum(dO ∘ O)")
        dq = try allocate(zq * rows * d, "dq")
        kv = try allocate(2 * zkv * total * d, "the gathered keys and values")
        ownPartials = try allocate(ranks * 2 * zkv * rows * d, "the partial dk, dv of this rank's block")
        sum = try allocate(2 * zkv * rows * d, "dk, dv")
        outgoing = ranks > 1 ? try (0..<2).map { _ in try allocate(2 * zkv * maxRows * d, "a partial dk, dv send buffer") } : []
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
extension AttentionPlan {
    static let allgatherForwardTag: Int32 = 20
    static let allgatherBackwardTag: Int32 = 21
    static let allgatherPartialTag: Int32 = 22

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
    public static func allgatherBytes(tokens: TokenLayout, rank r: Int, zq: Int, zkv: Int, headDim d: Int,
                               backward: Bool) -> (sent: UInt64, received: UInt64) {
        let block = { (j: Int) in UInt64(8 * zkv * d * tokens.counts[j]) }
        var gatherSent: UInt64 = 0, gatherReceived: UInt64 = 0
        for j in 0..<tokens.ranks where j != r {
            if tokens.needs(queryRank: j, keyRank: r) { gatherSent += block(r) }
            if tokens.needs(queryRank: r, keyRank: j) { gatherReceived += block(j) }
        }
        // The reduce-scatter mirrors the gather: each block received comes back as a partial.
        return backward ? (gatherSent + gatherReceived, gatherReceived + gatherSent) : (gatherSent, gatherReceived)
    }

    /// Allocates the pattern's workspace for a forward or backward call, or
    /// says why it cannot.
    func prepareAllgather(backward: Bool) -> BurstError? {
        if let e = ensureCollectiveKernels(maxKVHeads: zKV, maxKeyRows: tokens.maxCount) { return e }
        do {
            if backward {
                if collectiveBackwardSpace == nil {
                    collectiveBackwardSpace = try AllgatherBackwardSpace(zq: zHeads, zkv: zKV, rows: localRows, maxRows: tokens.maxCount,
                                                                         total: tokens.total, ranks: size, headDim: headDim)
                }
            } else if collectiveForwardSpace == nil {
                collectiveForwardSpace = try AllgatherForwardSpace(zq: zHeads, zkv: zKV, rows: localRows, total: tokens.total,
                                                                   headDim: headDim)
            }
        } catch let error as BurstError { return error } catch { return BurstError(.internalError, "\(error)") }
        return nil
    }

    /// The kernels of the collective patterns (allocated once; their key
    /// block is as large as the pattern needs: one rank's block for
    /// ALLGATHER, the whole sequence for ULYSSES).
    func ensureCollectiveKernels(maxKVHeads: Int, maxKeyRows: Int) -> BurstError? {
        if collectiveKernels != nil { return nil }
        guard let made = LocalAttention(headDim: headDim, scale: config.effectiveScale, pool: pool,
                                        maxKVHeads: maxKVHeads, maxKeyRows: maxKeyRows,
                                        tileQ: Self.tuning("BURST_TILE_Q", 256), tileK: Self.tuning("BURST_TILE_K", 128)) else {
            return BurstError(.outOfMemory, "cannot allocate the kernels' scratch space")
        }
        collectiveKernels = made
        return nil
    }

    /// Floats before block j in the gathered K|V buffer.
    private func gatheredOffset(_ j: Int) -> Int { 2 * zKV * headDim * tokens.counts.prefix(j).reduce(0, +) }

    /// Posts the gather of K|V blocks: this rank's block (already packed at
    /// its slot of `kv`) to every rank whose queries see some of it, and one
    /// receive per block this rank's queries see. Returns the send and the
    /// per-source receives (nil where nothing comes).
    private func startGather(kv: UnsafeMutablePointer<Float>, tag: Int32,
                             stats: inout CallStats) throws -> (sends: PendingTransfer, receives: [PendingTransfer?]) {
        let p = size, r = rank, zkv = zKV, d = headDim
        var receives = [PendingTransfer?](repeating: nil, count: p)
        for j in 0..<p where j != r && tokens.needs(queryRank: r, keyRank: j) {
            let bytes = 2 * zkv * tokens.counts[j] * d * 4
            receives[j] = try startTransfer(sends: [], receives: [
                IncomingMessage(UnsafeMutableRawBufferPointer(start: kv + gatheredOffset(j), count: bytes), from: j, tag: tag)],
                                            stats: &stats)
        }
        var sends: [OutgoingMessage] = []
        let own = UnsafeRawBufferPointer(start: kv + gatheredOffset(r), count: 2 * zkv * localRows * d * 4)
        for j in 0..<p where j != r && tokens.needs(queryRank: j, keyRank: r) {
            sends.append(OutgoingMessage(own, to: j, tag: tag))
        }
        let pending = try startTransfer(sends: sends, receives: [], stats: &stats)
        return (pending, receives)
    }

    /// burst_forward under ALLGATHER. Bytes: `allgatherBytes(backward: false)`.
    func allgatherForward(q: UnsafePointer<Float>?, k: UnsafePointer<Float>?, v: UnsafePointer<Float>?,
                          out: UnsafeMutablePointer<Float>?, lse: UnsafeMutablePointer<Float>?,
                          stats: inout CallStats, deadline: Deadline) throws {
        guard let space = collectiveForwardSpace as? AllgatherForwardSpace, let kernels = collectiveKernels else {
            throw BurstError(.internalError, "ALLGATHER forward workspace missing")
        }
        let p = size, r = rank, n = localRows, zq = zHeads, zkv = zKV, d = headDim
        let own = space.kv.pointer + gatheredOffset(r)
        if n > 0, let q, let k, let v {
            TensorPacking.pack(q, layout: layout, batch: batch, heads: heads, rows: n, headDim: d, into: space.q.pointer)
            TensorPacking.pack(k, layout: layout, batch: batch, heads: kvHeads, rows: n, headDim: d, into: own)
            TensorPacking.pack(v, layout: layout, batch: batch, heads: kvHeads, rows: n, headDim: d, into: own + zkv * n * d)
        }
        let gather = try startGather(kv: space.kv.pointer, tag: Self.allgatherForwardTag, stats: &stats)
        LocalAttention.resetForwardState(heads: zq, rows: n, headDim: d, acc: space.acc.pointer,
                                         rowMax: space.rowMax.pointer, rowSum: space.rowSum.pointer)

        // Transfers progress between tiles (MPI moves large messages only in MPI calls).
        if Self.progressPolling {
            kernels.progress = { try? gather.sends.poll(); for pending in gather.receives { try? pending?.poll() } }
        }
        defer { kernels.progress = nil }
        // Source order 0 … P−1 whatever the arrival order: reproducible sums.
        for source in 0..<p {
            let rows = tokens.counts[source]
            guard try gatheredBlockReady(kernels, source: source, receive: gather.receives[source], stats: &stats,
                                         deadline: deadline) else { continue }
            let block = space.kv.pointer + gatheredOffset(source)
            foldBlock(kernels, queryHeads: zq, q: space.q.pointer, rows: n, lo: tokens.lo[r], hi: tokens.hi[r],
                      k: block, v: block + zkv * rows * d, keyRows: rows, keyPositions: tokens.positions[source],
                      acc: space.acc.pointer, rowMax: space.rowMax.pointer, rowSum: space.rowSum.pointer, stats: &stats)
            stats.stepsComputed += 1
        }
        try timed(&stats.commWaitSeconds) { try gather.sends.wait(until: deadline) }

        finishRows(acc: space.acc.pointer, rowMax: space.rowMax.pointer, rowSum: space.rowSum.pointer,
                   out: out, lse: lse, stats: &stats)
    }

    /// burst_backward under ALLGATHER. Bytes: `allgatherBytes(backward: true)`.
    ///
    /// Gathers K|V as the forward does; for every block j this rank's queries
    /// see (source order 0 … P−1) it adds to dQ and computes the partial
    /// dK_j|dV_j of its queries, which leaves for rank j as soon as it is
    /// ready (the next block is computed meanwhile). The owner sums the
    /// partials of its block in rank order, its own at its own position.
    func allgatherBackward(q: UnsafePointer<Float>?, k: UnsafePointer<Float>?, v: UnsafePointer<Float>?,
                           out: UnsafePointer<Float>?, lse: UnsafePointer<Float>?, dout: UnsafePointer<Float>?,
                           dq: UnsafeMutablePointer<Float>?, dk: UnsafeMutablePointer<Float>?, dv: UnsafeMutablePointer<Float>?,
                           stats: inout CallStats, deadline: Deadline) throws {
        guard let space = collectiveBackwardSpace as? AllgatherBackwardSpace, let kernels = collectiveKernels else {
            throw BurstError(.internalError, "ALLGATHER backward workspace missing")
        }
        let p = size, r = rank, n = localRows, zq = zHeads, zkv = zKV, d = headDim
        let own = space.kv.pointer + gatheredOffset(r)
        let partialFloats = 2 * zkv * n * d   // one partial of this rank's block
        var lsePointer: UnsafePointer<Float> = UnsafePointer(space.delta.pointer)   // any valid pointer when n = 0
        if n > 0, let q, let k, let v, let o = out, let dO = dout, let lse {
            TensorPacking.pack(q, layout: layout, batch: batch, heads: heads, rows: n, headDim: d, into: space.q.pointer)
            TensorPacking.pack(dO, layout: layout, batch: batch, heads: heads, rows: n, headDim: d, into: space.dOut.pointer)
            TensorPacking.pack(o, layout: layout, batch: batch, heads: heads, rows: n, headDim: d, into: space.dq.pointer)
            timed(&stats.computeSeconds) {
                LocalAttention.rowDot(count: zq * n, headDim: d, space.dOut.pointer, space.dq.pointer, into: space.delta.pointer)
            }
            TensorPacking.pack(k, layout: layout, batch: batch, heads: kvHeads, rows: n, headDim: d, into: own)
            TensorPacking.pack(v, layout: layout, batch: batch, heads: kvHeads, rows: n, headDim: d, into: own + zkv * n * d)
            lsePointer = lse
        }
        space.dq.fill(0, count: zq * n * d)

        // The partials of this rank's block from every rank that sees it,
        // posted before anything is computed so no sender waits on us.
        var partialReceives: [PendingTransfer] = []
        for i in 0..<p where i != r && tokens.needs(queryRank: i, keyRank: r) {
            let bytes = partialFloats * 4
            partialReceives.append(try startTransfer(sends: [], receives: [
                IncomingMessage(UnsafeMutableRawBufferPointer(start: space.ownPartials.pointer + i * partialFloats, count: bytes),
                                from: i, tag: Self.allgatherPartialTag)], stats: &stats))
        }
        let gather = try startGather(kv: space.kv.pointer, tag: Self.allgatherBackwardTag, stats: &stats)

        var outgoing: [PendingTransfer] = [CompletedTransfer(), CompletedTransfer()]
        var slot = 0
        // Transfers progress between tiles (failures surface at the waits).
        let inFlight = partialReceives + [gather.sends] + gather.receives.compactMap { $0 }
        if Self.progressPolling { kernels.progress = { for pending in inFlight { try? pending.poll() } } }
        defer { kernels.progress = nil }
        for source in 0..<p {
            let rows = tokens.counts[source]
            guard try gatheredBlockReady(kernels, source: source, receive: gather.receives[source], stats: &stats,
                                         deadline: deadline) else { continue }
            let partial: UnsafeMutablePointer<Float>
            if source == r {
                partial = space.ownPartials.pointer + r * partialFloats
            } else {
                // The slot's previous partial must have left before it is overwritten.
                try timed(&stats.commWaitSeconds) { try outgoing[slot].wait(until: deadline) }
                partial = space.outgoing[slot].pointer
            }
            partial.update(repeating: 0, count: 2 * zkv * rows * d)
            let block = space.kv.pointer + gatheredOffset(source)
            let lseRows = lsePointer
            gradientBlock(kernels, queryHeads: zq, q: space.q.pointer, dOut: space.dOut.pointer, delta: space.delta.pointer,
                          lse: lseRows, dq: space.dq.pointer, rows: n, lo: tokens.lo[r], hi: tokens.hi[r],
                          k: block, v: block + zkv * rows * d, dk: partial, dv: partial + zkv * rows * d,
                          keyRows: rows, keyPositions: tokens.positions[source], stats: &stats)
            stats.stepsComputed += 1
            if source != r {
                let bytes = 2 * zkv * rows * d * 4
                outgoing[slot] = try startTransfer(sends: [OutgoingMessage(UnsafeRawBufferPointer(start: partial, count: bytes),
                                                                           to: source, tag: Self.allgatherPartialTag)],
                                                   receives: [], stats: &stats)
                slot ^= 1
            }
        }
        try timed(&stats.commWaitSeconds) {
            for pending in partialReceives { try pending.wait(until: deadline) }
            for pending in outgoing { try pending.wait(until: deadline) }
            try gather.sends.wait(until: deadline)
        }

        // dK|dV of this rank's block: Σ_i partial_i in rank order i = 0 … P−1.
        timed(&stats.computeSeconds) {
            let sum = space.sum.pointer
            sum.update(repeating: 0, count: partialFloats)
            for i in 0..<p where tokens.needs(queryRank: i, keyRank: r) {
                let partial = space.ownPartials.pointer + i * partialFloats
                for e in 0..<partialFloats { sum[e] += partial[e] }
            }
        }
        if n > 0, let dq, let dk, let dv {
            TensorPacking.unpack(space.dq.pointer, layout: layout, batch: batch, heads: heads, rows: n, headDim: d, into: dq)
            TensorPacking.unpack(space.sum.pointer, layout: layout, batch: batch, heads: kvHeads, rows: n, headDim: d, into: dk)
            TensorPacking.unpack(space.sum.pointer + zkv * n * d, layout: layout, batch: batch, heads: kvHeads, rows: n,
                                 headDim: d, into: dv)
        }
    }
}
