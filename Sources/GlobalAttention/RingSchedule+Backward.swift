import LocalAttention

/// Backward workspace of one rank (floats). Local: the query bundle
/// [Q | dO | D | lse] of Zq·n·(2d + 2), dQ (Zq·n·d), K|V (2·Zkv·n·d) and
/// dK|dV (2·Zkv·n·d). What travels depends on the pattern:
/// - BURST: the bundle (read-only) and the partial dQ (accumulator) of the
///   rank they belong to; K, V, dK, dV never move.
/// - RING: K|V (read-only) and the partial dK|dV (accumulator); the query
///   side never moves.
///
/// With a half storage type the read-only part travels in wire form (K|V,
/// or Q|dO, in the storage type; D and lse as fp32): the receive buffers
/// hold that form, plus one fp32 decode buffer (`RingBuffers`). The accumulators always travel as fp32.
final class BackwardWorkspace {
    let bundle, dq, kv, dkv: FloatBuffer
    let ring: RingBuffers

    init(zq: Int, zkv: Int, rows: Int, maxRows: Int, headDim d: Int, route: RingRoute, keysTravel: Bool,
         storage: StorageType) throws {
        bundle = try allocate(zq * rows * (2 * d + 2), "the query bundle")
        dq = try allocate(zq * rows * d, "dq")
        kv = try allocate(2 * zkv * rows * d, "the packed keys and values")
        dkv = try allocate(2 * zkv * rows * d, "dk and dv")
        let coded = storage != .f32, size = storage.bytes
        if keysTravel {
            let wire = { (m: Int) in WireFormat.floatsHolding(bytes: 2 * zkv * m * d * size) }
            ring = try RingBuffers(readOnlyFloats: 2 * zkv * maxRows * d, accumulatorFloats: 2 * zkv * maxRows * d, route: route,
                                   wireFloats: coded ? wire(maxRows) : nil)
        } else {
            let wire = { (m: Int) in WireFormat.floatsHolding(bytes: 2 * zq * m * d * size + 2 * zq * m * 4) }
            ring = try RingBuffers(readOnlyFloats: zq * maxRows * (2 * d + 2), accumulatorFloats: zq * maxRows * d, route: route,
                                   wireFloats: coded ? wire(maxRows) : nil)
        }
    }

    var floats: Int { GlobalAttention.floats(bundle, dq, kv, dkv) + ring.floats }
}

extension RingSchedule {
    static let bundleTag: Int32 = 10
    static let partialDQTag: Int32 = 11
    static let homeDQTag: Int32 = 12
    static let bundleInterTag: Int32 = 13

    /// burst_backward under BURST and RING. BURST (BurstAttention
    /// Algorithm 2): K, V, dK, dV stay on their owner; the query side
    /// travels. At step k rank r holds the bundle of rank
    /// b = `route.source(r, k)`, adds its K,V contribution to dQ_b and
    /// accumulates dK_r, dV_r; the bundle goes on before the compute, the
    /// partial dQ after it. RING: the mirror — K|V and the partial dK|dV of
    /// rank b travel, dQ accumulates locally.
    ///
    /// Skipping: a block travels only as far as it is needed (`RingPass`);
    /// the accumulator of a chain (the ranks of one outer step of the route;
    /// the whole ring for a single ring) travels from its first rank that
    /// needs the block (the owner for its own group) to the last, and goes
    /// home from there; the owner adds the chains in order.
    ///
    /// Bytes, one ring, no mask, equal shards n (floats): BURST sends
    /// (P − 1)(3nd + 2n)Zq + ndZq, RING (4P − 2)·nd·Zkv. P = 1 moves nothing.
    /// With a half storage type the storage-typed parts (BURST: Q, dO;
    /// RING: K, V) take 2 bytes an element, the fp32 parts (D, lse, the
    /// partial dQ or dK|dV) 4: BURST (P − 1)(2·2nd + 4·(nd + 2n))Zq + 4ndZq
    /// bytes, RING (P − 1)·2·2nd·Zkv + 4·2Pnd·Zkv.
    /// GQA does not shrink BURST's traffic (the query side travels) but does
    /// shrink RING's.
    func backward(q: UnsafeRawPointer?, k: UnsafeRawPointer?, v: UnsafeRawPointer?,
                  out: UnsafeRawPointer?, lse: UnsafePointer<Float>?, dout: UnsafeRawPointer?,
                  dq: UnsafeMutableRawPointer?, dk: UnsafeMutableRawPointer?, dv: UnsafeMutableRawPointer?,
                  stats: inout CallStats, deadline: Deadline) throws {
        guard let space = backwardSpace, let kernels else { throw BurstError(.internalError, "backward workspace missing") }
        let env = self.env, tokens = env.tokens, pool = env.pool
        let p = env.size, r = env.rank, n = env.localRows, zq = env.zHeads, zkv = env.zKV, d = env.headDim, type = env.storage

        // This rank's bundle: [Q | dO | D | lse], D = rowsum(dO ∘ O); dQ = 0.
        if n > 0, let q, let k, let v, let o = out, let dO = dout, let lse {
            let bundle = space.bundle.pointer
            env.pack(q, heads: env.heads, into: bundle, pool: pool)
            env.pack(dO, heads: env.heads, into: bundle + zq * n * d, pool: pool)
            env.pack(o, heads: env.heads, into: space.dq.pointer, pool: pool)
            env.timed(&stats.computeSeconds) {
                LocalAttention.rowDot(count: zq * n, headDim: d, bundle + zq * n * d, space.dq.pointer,
                                      into: bundle + 2 * zq * n * d)
            }
            (bundle + 2 * zq * n * d + zq * n).update(from: lse, count: zq * n)
            let delta = UnsafePointer(bundle + 2 * zq * n * d)
            env.timed(&stats.computeSeconds) { env.sinkGradient(lse: lse) { z in delta + z * n } }
            env.pack(k, heads: env.kvHeads, into: space.kv.pointer, pool: pool)
            env.pack(v, heads: env.kvHeads, into: space.kv.pointer + zkv * n * d, pool: pool)
        }
        space.dq.fill(0, count: zq * n * d)
        space.dkv.fill(0, count: 2 * zkv * n * d)
        let dkLocal = space.dkv.pointer, dvLocal = space.dkv.pointer + zkv * n * d
        let tags = RingTags(readOnly: Self.bundleTag, readOnlyInter: Self.bundleInterTag,
                            accumulator: Self.partialDQTag, home: Self.homeDQTag)
        /// One (query block, key block) pair: the query rows of `owner`
        /// against the keys of `keyRank`.
        func accumulate(queries owner: Int, bundle: UnsafeMutablePointer<Float>, dq: UnsafeMutablePointer<Float>,
                        keys keyRank: Int, kv: UnsafeMutablePointer<Float>, dk: UnsafeMutablePointer<Float>,
                        dv: UnsafeMutablePointer<Float>, keyPanelsReady: Bool, stats: inout CallStats) {
            let nk = tokens.counts[keyRank]
            env.gradientBlock(kernels, queryHeads: zq, bundle: bundle, dq: dq, rows: tokens.counts[owner],
                              lo: tokens.lo[owner], hi: tokens.hi[owner], k: kv, v: kv + zkv * nk * d, dk: dk, dv: dv,
                              keyRows: nk, keyPositions: tokens.positions[keyRank], keyPanelsReady: keyPanelsReady, stats: &stats)
        }

        let pass: RingPass
        if keysTravel {
            // K|V and the partial dK|dV travel; Q, dO, D, lse, dQ stay.
            pass = keyPass
            try runRing(pass, tags: tags, readOnlyFloats: { 2 * zkv * tokens.counts[$0] * d }, readOnlyWire: keyValueWire,
                        accumulatorFloats: { 2 * zkv * tokens.counts[$0] * d },
                        ownReadOnly: space.kv.pointer, ownAccumulator: space.dkv.pointer, buffers: space.ring,
                        stats: &stats, deadline: deadline) { source, block, partial, stats in
                let m = tokens.counts[source]
                accumulate(queries: r, bundle: space.bundle.pointer, dq: space.dq.pointer, keys: source, kv: block,
                           dk: partial!, dv: partial! + zkv * m * d, keyPanelsReady: false, stats: &stats)
            }
        } else {
            // The bundle and the partial dQ travel; K, V, dK, dV stay.
            pass = queryPass
            var keyPanelsReady = false   // this rank's K,V panels, built at its first computed step
            // Wire form with a half storage type: Q|dO in it, D|lse as fp32.
            let counts = tokens.counts
            let bundleWire: ((Int) -> WireFormat)? = type == .f32 ? nil : { b in
                WireFormat([(2 * zq * counts[b] * d, type), (2 * zq * counts[b], .f32)])
            }
            try runRing(pass, tags: tags, readOnlyFloats: { zq * tokens.counts[$0] * (2 * d + 2) }, readOnlyWire: bundleWire,
                        accumulatorFloats: { zq * tokens.counts[$0] * d },
                        ownReadOnly: space.bundle.pointer, ownAccumulator: space.dq.pointer, buffers: space.ring,
                        stats: &stats, deadline: deadline) { owner, bundle, partial, stats in
                accumulate(queries: owner, bundle: bundle, dq: partial!, keys: r, kv: space.kv.pointer,
                           dk: dkLocal, dv: dvLocal, keyPanelsReady: keyPanelsReady, stats: &stats)
                keyPanelsReady = true
            }
        }
        for k in 0..<p {
            let b = pass.route.source(r, step: k)
            if pass.needs(holder: r, block: b) { continue }
            let (queryRows, keyRows) = keysTravel ? (n, tokens.counts[b]) : (tokens.counts[b], n)
            stats.add(.init(skipped: kernels.denseTiles(queryHeads: zq, queryRows: queryRows, keyRows: keyRows)))
        }

        if n > 0, let dq, let dk, let dv {
            env.unpack(space.dq.pointer, heads: env.heads, into: dq, pool: pool)
            env.unpack(space.dkv.pointer, heads: env.kvHeads, into: dk, pool: pool)
            env.unpack(space.dkv.pointer + zkv * n * d, heads: env.kvHeads, into: dv, pool: pool)
        }
    }
}
