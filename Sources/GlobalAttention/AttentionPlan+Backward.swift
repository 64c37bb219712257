import LocalAttention

/// Backward workspace of one rank (floats). The travelling "query bundle" of
/// a rank with m rows is split in two messages: the read-only part
/// [Q | dO | D | lse] of Z·m·(2d + 2) floats, and the partial dQ of Z·m·d
/// floats that every rank on the way adds to. Local: K|V (2·Z·n·d) and the
/// dK, dV accumulators (Z·n·d each) never move.
final class BackwardWorkspace {
    let bundle, dq, kv, dk, dv: FloatBuffer
    let receiveBundle: [FloatBuffer]
    let receiveDQ: [FloatBuffer]

    init(z: Int, rows: Int, maxRows: Int, headDim d: Int, ranks: Int) throws {
        bundle = try allocate(z * rows * (2 * d + 2), "the query bundle")
        dq = try allocate(z * rows * d, "dq")
        kv = try allocate(2 * z * rows * d, "the packed keys and values")
        dk = try allocate(z * rows * d, "dk")
        dv = try allocate(z * rows * d, "dv")
        receiveBundle = ranks > 1 ? try (0..<2).map { _ in try allocate(z * maxRows * (2 * d + 2), "a bundle receive buffer") } : []
        receiveDQ = ranks > 1 ? try (0..<2).map { _ in try allocate(z * maxRows * d, "a dq receive buffer") } : []
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
    /// accumulates dK_r, dV_r; then passes bundle and dQ_j on. After P steps
    /// dQ_j is on rank j − 1, and one last hop takes it home.
    ///
    /// Bytes sent by rank r (every transfer happens whatever the mask; fully
    /// masked steps skip only the compute):
    /// 4·Z·[Σ_{t=0}^{P−2} (3d + 2)·n_{(r−t) mod P} + d·n_{(r+1) mod P}],
    /// with equal shards (P − 1)(3nd + 2n)Z + ndZ elements. P = 1 moves nothing.
    public func backward(q: UnsafeRawPointer?, k: UnsafeRawPointer?, v: UnsafeRawPointer?,
                         out: UnsafeRawPointer?, lse: UnsafePointer<Float>?, dout: UnsafeRawPointer?,
                         dq: UnsafeMutableRawPointer?, dk: UnsafeMutableRawPointer?, dv: UnsafeMutableRawPointer?) throws {
        let elements = tensorElements
        try collective(.backward, localCheck: {
            for (pointer, name) in [(q, "q"), (k, "k"), (v, "v"), (out, "out"), (dout, "dout"),
                                    (UnsafeRawPointer(dq), "dq"), (UnsafeRawPointer(dk), "dk"),
                                    (UnsafeRawPointer(dv), "dv")] {
                if let e = Self.requireBuffer(pointer, name, elements: elements) { return e }
            }
            if let e = Self.requireBuffer(lse, "lse", elements: lseElements) { return e }
            if let e = ensureKernels() { return e }
            if backwardSpace == nil {
                do {
                    backwardSpace = try BackwardWorkspace(z: zHeads, rows: localRows, maxRows: shards.maxCount,
                                                          headDim: headDim, ranks: size)
                } catch let error as BurstError { return error } catch { return BurstError(.internalError, "\(error)") }
            }
            return nil
        }) { stats, deadline in
            try runBackward(q: q, k: k, v: v, out: out, lse: lse, dout: dout, dq: dq, dk: dk, dv: dv,
                            stats: &stats, deadline: deadline)
        }
    }

    private func runBackward(q: UnsafeRawPointer?, k: UnsafeRawPointer?, v: UnsafeRawPointer?,
                             out: UnsafeRawPointer?, lse: UnsafePointer<Float>?, dout: UnsafeRawPointer?,
                             dq: UnsafeMutableRawPointer?, dk: UnsafeMutableRawPointer?, dv: UnsafeMutableRawPointer?,
                             stats: inout CallStats, deadline: Deadline) throws {
        guard let space = backwardSpace, let kernels else { throw BurstError(.internalError, "backward workspace missing") }
        let p = size, r = rank, n = localRows, z = zHeads, d = headDim
        let next = (r + 1) % p, previous = (r + p - 1) % p
        func floats(_ raw: UnsafeRawPointer?) -> UnsafePointer<Float>? { raw?.assumingMemoryBound(to: Float.self) }

        // This rank's bundle: [Q | dO | D | lse], D = rowsum(dO ∘ O); dQ = 0.
        if n > 0, let q = floats(q), let k = floats(k), let v = floats(v), let o = floats(out),
           let dO = floats(dout), let lse {
            let bundle = space.bundle.pointer
            TensorPacking.pack(q, layout: layout, batch: batch, heads: heads, rows: n, headDim: d, into: bundle)
            TensorPacking.pack(dO, layout: layout, batch: batch, heads: heads, rows: n, headDim: d, into: bundle + z * n * d)
            TensorPacking.pack(o, layout: layout, batch: batch, heads: heads, rows: n, headDim: d, into: space.dq.pointer)
            timed(&stats.computeSeconds) {
                LocalAttention.rowDot(count: z * n, headDim: d, bundle + z * n * d, space.dq.pointer,
                                      into: bundle + 2 * z * n * d)
            }
            (bundle + 2 * z * n * d + z * n).update(from: lse, count: z * n)
            TensorPacking.pack(k, layout: layout, batch: batch, heads: heads, rows: n, headDim: d, into: space.kv.pointer)
            TensorPacking.pack(v, layout: layout, batch: batch, heads: heads, rows: n, headDim: d,
                               into: space.kv.pointer + z * n * d)
        }
        space.dq.fill(0, count: z * n * d)
        space.dk.fill(0, count: z * n * d)
        space.dv.fill(0, count: z * n * d)

        var bundle = space.bundle.pointer
        var partial = space.dq.pointer
        var slot = 0
        var keyPanelsReady = false   // this rank's K,V panels, built at its first computed step
        for step in 0..<p {
            let owner = (r - step + p) % p
            let m = shards.counts[owner]
            var sends: [OutgoingMessage] = []
            var receives: [IncomingMessage] = []
            let incoming = (owner - 1 + p) % p
            let incomingRows = shards.counts[incoming]
            if step < p - 1 {
                if incomingRows > 0 {
                    let bundleBytes = z * incomingRows * (2 * d + 2) * 4, dqBytes = z * incomingRows * d * 4
                    receives.append(IncomingMessage(UnsafeMutableRawBufferPointer(start: space.receiveBundle[slot].pointer, count: bundleBytes),
                                                    from: previous, tag: Self.bundleTag))
                    receives.append(IncomingMessage(UnsafeMutableRawBufferPointer(start: space.receiveDQ[slot].pointer, count: dqBytes),
                                                    from: previous, tag: Self.partialDQTag))
                    stats.bytesReceived += UInt64(bundleBytes + dqBytes)
                }
                if m > 0 {
                    // The read-only part leaves before the compute; dQ after it.
                    let bytes = z * m * (2 * d + 2) * 4
                    sends.append(OutgoingMessage(UnsafeRawBufferPointer(start: bundle, count: bytes), to: next, tag: Self.bundleTag))
                    stats.bytesSent += UInt64(bytes)
                    stats.messagesSent += 1
                }
            }
            let pending = sends.isEmpty && receives.isEmpty
                ? CompletedTransfer() : try transport.start(sends: sends, receives: receives)

            if shards.needs(queryRank: owner, keyRank: r, rule: rule) {
                let kv = space.kv.pointer
                timed(&stats.computeSeconds) {
                    kernels.backwardAccumulate(keyPanelsReady: keyPanelsReady, heads: z, q: bundle, dOut: bundle + z * m * d,
                                               delta: bundle + 2 * z * m * d, lse: bundle + 2 * z * m * d + z * m,
                                               dq: partial, queryRows: m, queryPosition: shards.offsets[owner],
                                               k: kv, v: kv + z * n * d, dk: space.dk.pointer, dv: space.dv.pointer,
                                               keyRows: n, keyPosition: shards.offsets[r])
                }
                keyPanelsReady = true
                stats.stepsComputed += 1
            } else {
                stats.stepsSkipped += 1
            }

            // dQ_owner goes on to the next rank; after the last step that is
            // the final hop home (owner = r + 1).
            var dqPending: PendingTransfer = CompletedTransfer()
            var dqReceive: [IncomingMessage] = []
            var dqSend: [OutgoingMessage] = []
            let tag = step < p - 1 ? Self.partialDQTag : Self.homeDQTag
            if p > 1 && m > 0 {
                let bytes = z * m * d * 4
                dqSend.append(OutgoingMessage(UnsafeRawBufferPointer(start: partial, count: bytes), to: next, tag: tag))
                stats.bytesSent += UInt64(bytes)
                stats.messagesSent += 1
            }
            if p > 1 && step == p - 1 && n > 0 {
                // Our own dQ comes home from the previous rank into space.dq,
                // free since the first hop's send completed.
                let bytes = z * n * d * 4
                dqReceive.append(IncomingMessage(UnsafeMutableRawBufferPointer(start: space.dq.pointer, count: bytes),
                                                 from: previous, tag: Self.homeDQTag))
                stats.bytesReceived += UInt64(bytes)
            }
            if !dqSend.isEmpty || !dqReceive.isEmpty {
                dqPending = try transport.start(sends: dqSend, receives: dqReceive)
            }
            try timed(&stats.commWaitSeconds) {
                try pending.wait(until: deadline)
                try dqPending.wait(until: deadline)
            }
            if step < p - 1 {
                bundle = space.receiveBundle[slot].pointer
                partial = space.receiveDQ[slot].pointer
                slot ^= 1
            }
        }

        if n > 0, let dq, let dk, let dv {
            TensorPacking.unpack(space.dq.pointer, layout: layout, batch: batch, heads: heads, rows: n, headDim: d,
                                 into: dq.assumingMemoryBound(to: Float.self))
            TensorPacking.unpack(space.dk.pointer, layout: layout, batch: batch, heads: heads, rows: n, headDim: d,
                                 into: dk.assumingMemoryBound(to: Float.self))
            TensorPacking.unpack(space.dv.pointer, layout: layout, batch: batch, heads: heads, rows: n, headDim: d,
                                 into: dv.assumingMemoryBound(to: Float.self))
        }
    }
}
