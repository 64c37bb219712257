import LocalAttention

/// Forward workspace of one rank (floats): q Z·n·d, local K|V 2·Z·n·d, the
/// running softmax state (acc Z·n·d, max and sum Z·n each) and, with more than
/// one rank, two receive buffers of 2·Z·n_max·d for the travelling K|V blocks.
final class ForwardWorkspace {
    let q, kv, acc, rowMax, rowSum: FloatBuffer
    let receive: [FloatBuffer]

    init(z: Int, rows: Int, maxRows: Int, headDim d: Int, ranks: Int) throws {
        q = try allocate(z * rows * d, "the packed queries")
        kv = try allocate(2 * z * rows * d, "the packed keys and values")
        acc = try allocate(z * rows * d, "the output accumulator")
        rowMax = try allocate(z * rows, "the row maxima")
        rowSum = try allocate(z * rows, "the row sums")
        receive = ranks > 1 ? try (0..<2).map { _ in try allocate(2 * z * maxRows * d, "a K,V receive buffer") } : []
    }
}

extension AttentionPlan {
    static let kvTag: Int32 = 1

    /// burst_forward. Collective.
    ///
    /// GAO forward (BurstAttention §3): K,V blocks travel the ring for P − 1
    /// hops; at each step this rank folds the block it holds into the running
    /// softmax state of its queries (LAO). Keeping (max, sum, acc) across
    /// blocks is the online form of the paper's (O, lse) merge and rounds
    /// once at the end instead of once per step.
    ///
    /// Skipping (causal): a block no query of this rank sees is not computed;
    /// a block is not passed on when no rank further along the ring needs it
    /// (`ShardLayout.forwardsBlock`). Bytes sent by rank r:
    /// Σ over hops t = 0..P−2 of 8·Z·d·n_src (src = (r − t) mod P) for every
    /// block that is passed on — with no mask and every rank non-empty that is
    /// 8·Z·d·(N − n_{r+1}) bytes, i.e. 2·Z·N·d elements to leading order.
    public func forward(q: UnsafeRawPointer?, k: UnsafeRawPointer?, v: UnsafeRawPointer?,
                        out: UnsafeMutableRawPointer?, lse: UnsafeMutablePointer<Float>?) throws {
        let elements = tensorElements
        try collective(.forward, localCheck: {
            if let e = Self.requireBuffer(q, "q", elements: elements) { return e }
            if let e = Self.requireBuffer(k, "k", elements: elements) { return e }
            if let e = Self.requireBuffer(v, "v", elements: elements) { return e }
            if let e = Self.requireBuffer(out, "out", elements: elements) { return e }
            if let e = ensureKernels() { return e }
            if forwardSpace == nil {
                do {
                    forwardSpace = try ForwardWorkspace(z: zHeads, rows: localRows, maxRows: shards.maxCount,
                                                        headDim: headDim, ranks: size)
                } catch let error as BurstError { return error } catch { return BurstError(.internalError, "\(error)") }
            }
            return nil
        }) { stats, deadline in
            try runForward(q: q?.assumingMemoryBound(to: Float.self), k: k?.assumingMemoryBound(to: Float.self),
                           v: v?.assumingMemoryBound(to: Float.self),
                           out: out?.assumingMemoryBound(to: Float.self), lse: lse,
                           stats: &stats, deadline: deadline)
        }
    }

    private func runForward(q: UnsafePointer<Float>?, k: UnsafePointer<Float>?, v: UnsafePointer<Float>?,
                            out: UnsafeMutablePointer<Float>?, lse: UnsafeMutablePointer<Float>?,
                            stats: inout CallStats, deadline: Deadline) throws {
        guard let space = forwardSpace, let kernels else { throw BurstError(.internalError, "forward workspace missing") }
        let p = size, r = rank, n = localRows, z = zHeads, d = headDim
        let next = (r + 1) % p, previous = (r + p - 1) % p

        if n > 0, let q, let k, let v {
            TensorPacking.pack(q, layout: layout, batch: batch, heads: heads, rows: n, headDim: d, into: space.q.pointer)
            TensorPacking.pack(k, layout: layout, batch: batch, heads: heads, rows: n, headDim: d, into: space.kv.pointer)
            TensorPacking.pack(v, layout: layout, batch: batch, heads: heads, rows: n, headDim: d,
                               into: space.kv.pointer + z * n * d)
        }
        LocalAttention.resetForwardState(heads: z, rows: n, headDim: d, acc: space.acc.pointer,
                                         rowMax: space.rowMax.pointer, rowSum: space.rowSum.pointer)

        var current: UnsafeMutablePointer<Float>? = space.kv.pointer
        var receiveSlot = 0
        for hop in 0..<p {
            let source = (r - hop + p) % p
            let sourceRows = shards.counts[source]
            var pending: PendingTransfer = CompletedTransfer()
            var received: UnsafeMutablePointer<Float>?
            if hop < p - 1 {
                var sends: [OutgoingMessage] = []
                var receives: [IncomingMessage] = []
                let incoming = (source - 1 + p) % p
                if shards.forwardsBlock(holder: previous, source: incoming, hop: hop, rule: rule) {
                    let buffer = space.receive[receiveSlot].pointer
                    let bytes = 2 * z * shards.counts[incoming] * d * 4
                    receives.append(IncomingMessage(UnsafeMutableRawBufferPointer(start: buffer, count: bytes),
                                                    from: previous, tag: Self.kvTag))
                    stats.bytesReceived += UInt64(bytes)
                    received = buffer
                }
                if shards.forwardsBlock(holder: r, source: source, hop: hop, rule: rule) {
                    guard let current else { throw BurstError(.internalError, "forward: block \(source) to pass on was never received") }
                    let bytes = 2 * z * sourceRows * d * 4
                    sends.append(OutgoingMessage(UnsafeRawBufferPointer(start: current, count: bytes), to: next, tag: Self.kvTag))
                    stats.bytesSent += UInt64(bytes)
                    stats.messagesSent += 1
                }
                if !sends.isEmpty || !receives.isEmpty {
                    pending = try transport.start(sends: sends, receives: receives)
                }
            }

            if shards.needs(queryRank: r, keyRank: source, rule: rule) {
                guard let current else { throw BurstError(.internalError, "forward: needed block \(source) was never received") }
                timed(&stats.computeSeconds) {
                    kernels.forwardAccumulate(heads: z, q: space.q.pointer, queryRows: n, queryPosition: shards.offsets[r],
                                              k: current, v: current + z * sourceRows * d,
                                              keyRows: sourceRows, keyPosition: shards.offsets[source],
                                              acc: space.acc.pointer, rowMax: space.rowMax.pointer,
                                              rowSum: space.rowSum.pointer)
                }
                stats.stepsComputed += 1
            } else {
                stats.stepsSkipped += 1
            }
            try timed(&stats.commWaitSeconds) { try pending.wait(until: deadline) }
            if hop < p - 1 {
                current = received
                if received != nil { receiveSlot ^= 1 }
            }
        }

        // O = acc / l in place, lse = m + ln l; then back to the caller's layout.
        timed(&stats.computeSeconds) {
            LocalAttention.finishForward(heads: z, rows: n, headDim: d, acc: space.acc.pointer,
                                         rowMax: space.rowMax.pointer, rowSum: space.rowSum.pointer,
                                         out: space.acc.pointer, lse: lse)
        }
        if n > 0, let out {
            TensorPacking.unpack(space.acc.pointer, layout: layout, batch: batch, heads: heads, rows: n, headDim: d, into: out)
        }
    }
}
