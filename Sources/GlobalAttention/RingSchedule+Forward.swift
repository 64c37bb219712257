import LocalAttention

/// Forward workspace of one rank (floats): q Zq·n·d, local K|V 2·Zkv·n·d, the
/// running softmax state (acc Zq·n·d, max and sum Zq·n each) and the ring's
/// receive buffers of 2·Zkv·n_max·d for the travelling K|V blocks (GQA: K
/// and V travel at num_heads_kv heads). With a half storage type the
/// receive buffers hold 2·Zkv·n_max·d half values, plus one fp32 decode
/// buffer (2·Zkv·n_max·d).
final class ForwardWorkspace {
    let q, kv, acc, rowMax, rowSum: FloatBuffer
    let ring: RingBuffers

    init(zq: Int, zkv: Int, rows: Int, maxRows: Int, headDim d: Int, route: RingRoute, storage: StorageType) throws {
        q = try allocate(zq * rows * d, "the packed queries")
        kv = try allocate(2 * zkv * rows * d, "the packed keys and values")
        acc = try allocate(zq * rows * d, "the output accumulator")
        rowMax = try allocate(zq * rows, "the row maxima")
        rowSum = try allocate(zq * rows, "the row sums")
        let wire = { (rows: Int) in WireFormat.floatsHolding(bytes: 2 * zkv * rows * d * storage.bytes) }
        ring = try RingBuffers(readOnlyFloats: 2 * zkv * maxRows * d, accumulatorFloats: 0, route: route,
                               wireFloats: storage == .f32 ? nil : wire(maxRows))
    }

    var floats: Int { GlobalAttention.floats(q, kv, acc, rowMax, rowSum) + ring.floats }
}

extension RingSchedule {
    /// The wire form of rank b's K|V block: the storage type (nil for fp32,
    /// which travels as is). Used by the forward and RING's backward.
    var keyValueWire: ((Int) -> WireFormat)? {
        guard env.storage != .f32 else { return nil }
        let type = env.storage, zkv = env.zKV, d = env.headDim, counts = env.tokens.counts
        return { b in WireFormat([(2 * zkv * counts[b] * d, type)]) }
    }

    static let kvTag: Int32 = 1
    static let kvInterTag: Int32 = 2

    /// burst_forward under BURST and RING — GAO forward (BurstAttention §3):
    /// K,V blocks travel the ring (or double ring, `RingRoute`) for P − 1
    /// steps; at each step this rank folds the block it holds into the
    /// running softmax state of its queries (LAO) while the next block is in
    /// flight. Keeping (max, sum, acc) across blocks is the online form of
    /// the paper's (O, lse) merge and rounds once at the end.
    ///
    /// Skipping (any mask: causal, window, sequence boundaries, under any
    /// distribution): a block no query of this rank sees is not computed
    /// (`TokenLayout.needs`); inside a computed block, so is every fully
    /// masked tile; a block is sent to a rank only if that rank or one it
    /// passes the block to needs it (`RingPass`). With no mask, every rank
    /// non-empty and one ring, rank r sends 8·Zkv·d·(N − n_{r+1}) bytes, i.e.
    /// 2·Zkv·N·d elements to leading order; a double ring moves the same
    /// total, (Q − 1) blocks of it over inter-group links.
    func forward(q: UnsafeRawPointer?, k: UnsafeRawPointer?, v: UnsafeRawPointer?,
                 out: UnsafeMutableRawPointer?, lse: UnsafeMutablePointer<Float>?,
                 stats: inout CallStats, deadline: Deadline) throws {
        guard let space = forwardSpace, let kernels else { throw BurstError(.internalError, "forward workspace missing") }
        let env = self.env, tokens = env.tokens
        let p = env.size, r = env.rank, n = env.localRows, zq = env.zHeads, zkv = env.zKV, d = env.headDim

        if n > 0, let q, let k, let v {
            env.pack(q, heads: env.heads, into: space.q.pointer, pool: env.pool)
            env.pack(k, heads: env.kvHeads, into: space.kv.pointer, pool: env.pool)
            env.pack(v, heads: env.kvHeads, into: space.kv.pointer + zkv * n * d, pool: env.pool)
        }
        LocalAttention.resetForwardState(heads: zq, rows: n, headDim: d, acc: space.acc.pointer,
                                         rowMax: space.rowMax.pointer, rowSum: space.rowSum.pointer, sinks: env.sinks)

        let pass = keyPass
        try runRing(pass, tags: RingTags(readOnly: Self.kvTag, readOnlyInter: Self.kvInterTag, accumulator: 0, home: 0),
                    readOnlyFloats: { 2 * zkv * tokens.counts[$0] * d }, readOnlyWire: keyValueWire, accumulatorFloats: nil,
                    ownReadOnly: space.kv.pointer, ownAccumulator: nil, buffers: space.ring,
                    stats: &stats, deadline: deadline) { source, block, _, stats in
            let sourceRows = tokens.counts[source]
            env.foldBlock(kernels, queryHeads: zq, q: space.q.pointer, rows: n, lo: tokens.lo[r], hi: tokens.hi[r],
                          k: block, v: block + zkv * sourceRows * d, keyRows: sourceRows, keyPositions: tokens.positions[source],
                          acc: space.acc.pointer, rowMax: space.rowMax.pointer, rowSum: space.rowSum.pointer, stats: &stats)
        }
        // Tiles of the steps skipped, so computed + skipped is the dense count.
        for k in 0..<p where !pass.needs(holder: r, block: pass.route.source(r, step: k)) {
            stats.add(.init(skipped: kernels.denseTiles(queryHeads: zq, queryRows: n, keyRows: tokens.counts[pass.route.source(r, step: k)])))
        }

        env.finishRows(acc: space.acc.pointer, rowMax: space.rowMax.pointer, rowSum: space.rowSum.pointer,
                       out: out, lse: lse, stats: &stats)
    }
}
