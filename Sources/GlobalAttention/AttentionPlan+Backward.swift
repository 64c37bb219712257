import LocalAttention

/// Backward workspace of one rank (floats). The travelling "query bundle" of
/// a rank with m rows is split in two messages: the read-only part
/// [Q | dO | D | lse] of Zq·m·(2d + 2) floats, and the partial dQ of Zq·m·d
/// floats that every rank on the way adds to. Local: K|V (2·Zkv·n·d) and the
/// dK, dV accumulators (Zkv·n·d each) never move.
final class BackwardWorkspace {
    let bundle, dq, kv, dk, dv: FloatBuffer
    let receiveBundle: [FloatBuffer]
    let receiveDQ: [FloatBuffer]

    init(zq: Int, zkv: Int, rows: Int, maxRows: Int, headDim d: Int, ranks: Int) throws {
        bundle = try allocate(zq * rows * (2 * d + 2), "the query bundle")
        dq = try allocate(zq * rows * d, "dq")
        kv = try allocate(2 * zkv * rows * d, "the packed keys and values")
        dk = try allocate(zkv * rows * d, "dk")
        dv = try allocate(zkv * rows * d, "dv")
        receiveBundle = ranks > 1 ? try (0..<2).map { _ in try allocate(zq * maxRows * (2 * d + 2), "a bundle receive buffer") } : []
        receiveDQ = ranks > 1 ? try (0..<2).map { _ in try allocate(zq * maxRows * d, "a dq receive buffer") } : []
    }
}

extension AttentionPlan {
    static let bundleTag: Int32 = 10
    static let partialDQTag: Int32 = 11
    static let homeDQTag: Int32 = 12

    /// burst_backward. Collective.
    ///
    /// GAO backward (BurstAttention Algorithm 2): K, V, dK, dV stay on their
    /// owner; the query side travels. At step t rank r holds the bundle of
    /// rank j = (r − t) mod P, adds its K,V contribution to dQ_j and
    /// accumulates dK_r, dV_r; then passes bundle and dQ_j on.
    ///
    /// Skipping: a bundle travels only as far as it is needed. With
    /// last(j) = the last step t ∈ 1..P−1 at which the rank it reaches,
    /// j + t, sees any of it (`TokenLayout.lastBackwardStep`; 0 when no other
    /// rank does), it goes from rank j + t to j + t + 1 for t < last(j), and
    /// dQ_j goes home from rank j + last(j) straight after that step. Steps
    /// and tiles whose keys are all hidden are not computed.
    ///
    /// Bytes sent by rank r: Σ over owners j with t = (r − j) mod P of
    /// 4·Zq·n_j·(3d + 2) if t < last(j), plus 4·Zq·n_j·d if t = last(j) ≥ 1.
    /// With no mask and equal shards: (P − 1)(3nd + 2n)Zq + ndZq elements.
    /// P = 1 moves nothing. GQA does not shrink it: what travels is the
    /// query side.
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
            switch pattern {
            case .allgather: return prepareAllgather(backward: true)
            case .ulysses: return prepareUlysses(backward: true)
            default: break
            }
            if let e = ensureKernels() { return e }
            if backwardSpace == nil {
                do {
                    backwardSpace = try BackwardWorkspace(zq: zHeads, zkv: zKV, rows: localRows, maxRows: tokens.maxCount,
                                                          headDim: headDim, ranks: size)
                } catch let error as BurstError { return error } catch { return BurstError(.internalError, "\(error)") }
            }
            return nil
        }) { stats, deadline in
            func floats(_ raw: UnsafeRawPointer?) -> UnsafePointer<Float>? { raw?.assumingMemoryBound(to: Float.self) }
            func floats(_ raw: UnsafeMutableRawPointer?) -> UnsafeMutablePointer<Float>? { raw?.assumingMemoryBound(to: Float.self) }
            switch pattern {
            case .allgather:
                try allgatherBackward(q: floats(q), k: floats(k), v: floats(v), out: floats(out), lse: lse, dout: floats(dout),
                                      dq: floats(dq), dk: floats(dk), dv: floats(dv), stats: &stats, deadline: deadline)
            case .ulysses:
                try ulyssesBackward(q: floats(q), k: floats(k), v: floats(v), out: floats(out), lse: lse, dout: floats(dout),
                                    dq: floats(dq), dk: floats(dk), dv: floats(dv), stats: &stats, deadline: deadline)
            default:
                try runBackward(q: q, k: k, v: v, out: out, lse: lse, dout: dout, dq: dq, dk: dk, dv: dv,
                                stats: &stats, deadline: deadline)
            }
        }
    }

    private func runBackward(q: UnsafeRawPointer?, k: UnsafeRawPointer?, v: UnsafeRawPointer?,
                             out: UnsafeRawPointer?, lse: UnsafePointer<Float>?, dout: UnsafeRawPointer?,
                             dq: UnsafeMutableRawPointer?, dk: UnsafeMutableRawPointer?, dv: UnsafeMutableRawPointer?,
                             stats: inout CallStats, deadline: Deadline) throws {
        guard let space = backwardSpace, let kernels else { throw BurstError(.internalError, "backward workspace missing") }
        let p = size, r = rank, n = localRows, zq = zHeads, zkv = zKV, d = headDim
        let next = (r + 1) % p, previous = (r + p - 1) % p
        func floats(_ raw: UnsafeRawPointer?) -> UnsafePointer<Float>? { raw?.assumingMemoryBound(to: Float.self) }

        // This rank's bundle: [Q | dO | D | lse], D = rowsum(dO ∘ O); dQ = 0.
        if n > 0, let q = floats(q), let k = floats(k), let v = floats(v), let o = floats(out),
           let dO = floats(dout), let lse {
            let bundle = space.bundle.pointer
            TensorPacking.pack(q, layout: layout, batch: batch, heads: heads, rows: n, headDim: d, into: bundle)
            TensorPacking.pack(dO, layout: layout, batch: batch, heads: heads, rows: n, headDim: d, into: bundle + zq * n * d)
            TensorPacking.pack(o, layout: layout, batch: batch, heads: heads, rows: n, headDim: d, into: space.dq.pointer)
            timed(&stats.computeSeconds) {
                LocalAttention.rowDot(count: zq * n, headDim: d, bundle + zq * n * d, space.dq.pointer,
                                      into: bundle + 2 * zq * n * d)
            }
            (bundle + 2 * zq * n * d + zq * n).update(from: lse, count: zq * n)
            TensorPacking.pack(k, layout: layout, batch: batch, heads: kvHeads, rows: n, headDim: d, into: space.kv.pointer)
            TensorPacking.pack(v, layout: layout, batch: batch, heads: kvHeads, rows: n, headDim: d,
                               into: space.kv.pointer + zkv * n * d)
        }
        space.dq.fill(0, count: zq * n * d)
        space.dk.fill(0, count: zkv * n * d)
        space.dv.fill(0, count: zkv * n * d)

        var bundle: UnsafeMutablePointer<Float>? = space.bundle.pointer
        var partial: UnsafeMutablePointer<Float>? = space.dq.pointer
        var slot = 0
        var keyPanelsReady = false   // this rank's K,V panels, built at its first computed step
        var homePending: PendingTransfer = CompletedTransfer()
        let myLast = tokens.lastBackwardStep(owner: r)
        for step in 0..<p {
            let owner = (r - step + p) % p
            let m = tokens.counts[owner]
            let ownerLast = tokens.lastBackwardStep(owner: owner)
            if step == 1 && myLast >= 1 {
                // Our own dQ comes home from rank r + last(r) into space.dq,
                // free since the first step's send of it completed. Posted
                // now, so that rank never waits on us to post it.
                let bytes = zq * n * d * 4
                homePending = try transport.start(sends: [], receives: [
                    IncomingMessage(UnsafeMutableRawBufferPointer(start: space.dq.pointer, count: bytes),
                                    from: (r + myLast) % p, tag: Self.homeDQTag)])
                stats.bytesReceived += UInt64(bytes)
            }
            var sends: [OutgoingMessage] = []
            var receives: [IncomingMessage] = []
            var received = false
            let incoming = (owner - 1 + p) % p
            if step < p - 1 && step < tokens.lastBackwardStep(owner: incoming) {
                let rows = tokens.counts[incoming]
                let bundleBytes = zq * rows * (2 * d + 2) * 4, dqBytes = zq * rows * d * 4
                receives.append(IncomingMessage(UnsafeMutableRawBufferPointer(start: space.receiveBundle[slot].pointer, count: bundleBytes),
                                                from: previous, tag: Self.bundleTag))
                receives.append(IncomingMessage(UnsafeMutableRawBufferPointer(start: space.receiveDQ[slot].pointer, count: dqBytes),
                                                from: previous, tag: Self.partialDQTag))
                stats.bytesReceived += UInt64(bundleBytes + dqBytes)
                received = true
            }
            if step < ownerLast {
                // The read-only part leaves before the compute; dQ after it.
                guard let bundle else { throw BurstError(.internalError, "backward: bundle of rank \(owner) to pass on was never received") }
                let bytes = zq * m * (2 * d + 2) * 4
                sends.append(OutgoingMessage(UnsafeRawBufferPointer(start: bundle, count: bytes), to: next, tag: Self.bundleTag))
                stats.bytesSent += UInt64(bytes)
                stats.messagesSent += 1
            }
            let pending = sends.isEmpty && receives.isEmpty
                ? CompletedTransfer() : try transport.start(sends: sends, receives: receives)

            if tokens.needs(queryRank: owner, keyRank: r) {
                guard let bundle, let partial else { throw BurstError(.internalError, "backward: needed bundle of rank \(owner) was never received") }
                let kv = space.kv.pointer
                let tiles = timed(&stats.computeSeconds) {
                    tokens.lo[owner].withUnsafeBufferPointer { lo in
                    tokens.hi[owner].withUnsafeBufferPointer { hi in
                    tokens.positions[r].withUnsafeBufferPointer { keys in
                        kernels.backwardAccumulate(keyPanelsReady: keyPanelsReady, queryHeads: zq, group: group,
                                                   q: bundle, dOut: bundle + zq * m * d,
                                                   delta: bundle + 2 * zq * m * d, lse: bundle + 2 * zq * m * d + zq * m,
                                                   dq: partial, queryRows: m,
                                                   queryLo: lo.baseAddress!, queryHi: hi.baseAddress!,
                                                   k: kv, v: kv + zkv * n * d, dk: space.dk.pointer, dv: space.dv.pointer,
                                                   keyRows: n, keyPositions: keys.baseAddress!)
                    } } }
                }
                stats.add(tiles)
                keyPanelsReady = true
                stats.stepsComputed += 1
            } else {
                stats.add(.init(skipped: kernels.denseTiles(queryHeads: zq, queryRows: m, keyRows: n)))
                stats.stepsSkipped += 1
            }

            // dQ_owner goes on with its bundle, or home after the last rank
            // that needs it.
            var dqPending: PendingTransfer = CompletedTransfer()
            if step < ownerLast || (step == ownerLast && step >= 1) {
                guard let partial else { throw BurstError(.internalError, "backward: partial dq of rank \(owner) was never received") }
                let bytes = zq * m * d * 4
                let message = step < ownerLast
                    ? OutgoingMessage(UnsafeRawBufferPointer(start: partial, count: bytes), to: next, tag: Self.partialDQTag)
                    : OutgoingMessage(UnsafeRawBufferPointer(start: partial, count: bytes), to: owner, tag: Self.homeDQTag)
                dqPending = try transport.start(sends: [message], receives: [])
                stats.bytesSent += UInt64(bytes)
                stats.messagesSent += 1
            }
            try timed(&stats.commWaitSeconds) {
                try pending.wait(until: deadline)
                try dqPending.wait(until: deadline)
            }
            if step < p - 1 {
                if received {
                    bundle = space.receiveBundle[slot].pointer
                    partial = space.receiveDQ[slot].pointer
                    slot ^= 1
                } else {
                    bundle = nil
                    partial = nil
                }
            }
        }
        try timed(&stats.commWaitSeconds) { try homePending.wait(until: deadline) }

        if n > 0, let dq, let dk, let dv {
            TensorPacking.unpack(space.dq.pointer, layout: layout, batch: batch, heads: heads, rows: n, headDim: d,
                                 into: dq.assumingMemoryBound(to: Float.self))
            TensorPacking.unpack(space.dk.pointer, layout: layout, batch: batch, heads: kvHeads, rows: n, headDim: d,
                                 into: dk.assumingMemoryBound(to: Float.self))
            TensorPacking.unpack(space.dv.pointer, layout: layout, batch: batch, heads: kvHeads, rows: n, headDim: d,
                                 into: dv.assumingMemoryBound(to: Float.self))
        }
    }
}
