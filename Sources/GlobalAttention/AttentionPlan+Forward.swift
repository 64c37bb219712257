import LocalAttention

/// Forward workspace of one rank (floats): q Zq·n·d, local K|V 2·Zkv·n·d, the
/// running softmax state (acc Zq·n·d, max and sum Zq·n each) and, with more
/// than one rank, two receive buffers of 2·Zkv·n_max·d for the travelling K|V
/// blocks (GQA: K and V travel at num_heads_kv heads).
final class ForwardWorkspace {
    let q, kv, acc, rowMax, rowSum: FloatBuffer
    let receive: [FloatBuffer]

    init(zq: Int, zkv: Int, rows: Int, maxRows: Int, headDim d: Int, ranks: Int) throws {
        q = try allocate(zq * rows * d, "the packed queries")
        kv = try allocate(2 * zkv * rows * d, "the packed keys and values")
        acc = try allocate(zq * rows * d, "the output accumulator")
        rowMax = try allocate(zq * rows, "the row maxima")
        rowSum = try allocate(zq * rows, "the row sums")
        receive = ranks > 1 ? try (0..<2).map { _ in try allocate(2 * zkv * maxRows * d, "a K,V receive buffer") } : []
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
    /// Skipping (any mask: causal, window, sequence boundaries, under any
    /// distribution): a block no query of this rank sees is not computed
    /// (`TokenLayout.needs`); inside a computed block, so is every fully
    /// masked tile; a block is not passed on when no rank further along the
    /// ring needs it (`TokenLayout.forwardsBlock`). Bytes sent by rank r:
    /// Σ over hops t = 0..P−2 of 8·Zkv·d·n_src (src = (r − t) mod P) for every
    /// block that is passed on — with no mask and every rank non-empty that is
    /// 8·Zkv·d·(N − n_{r+1}) bytes, i.e. 2·Zkv·N·d elements to leading order.
    public func forward(q: UnsafeRawPointer?, k: UnsafeRawPointer?, v: UnsafeRawPointer?,
                        out: UnsafeMutableRawPointer?, lse: UnsafeMutablePointer<Float>?) throws {
        let elements = tensorElements, kvElements = kvTensorElements
        try collective(.forward, localCheck: {
            if let e = Self.requireBuffer(q, "q", elements: elements) { return e }
            if let e = Self.requireBuffer(k, "k", elements: kvElements) { return e }
            if let e = Self.requireBuffer(v, "v", elements: kvElements) { return e }
            if let e = Self.requireBuffer(out, "out", elements: elements) { return e }
            switch pattern {
            case .allgather: return prepareAllgather(backward: false)
            case .ulysses: return prepareUlysses(backward: false)
            default: break
            }
            if let e = ensureKernels() { return e }
            if forwardSpace == nil {
                do {
                    forwardSpace = try ForwardWorkspace(zq: zHeads, zkv: zKV, rows: localRows, maxRows: tokens.maxCount,
                                                        headDim: headDim, ranks: size)
                } catch let error as BurstError { return error } catch { return BurstError(.internalError, "\(error)") }
            }
            return nil
        }) { stats, deadline in
            let q = q?.assumingMemoryBound(to: Float.self), k = k?.assumingMemoryBound(to: Float.self)
            let v = v?.assumingMemoryBound(to: Float.self), out = out?.assumingMemoryBound(to: Float.self)
            switch pattern {
            case .allgather: try allgatherForward(q: q, k: k, v: v, out: out, lse: lse, stats: &stats, deadline: deadline)
            case .ulysses: try ulyssesForward(q: q, k: k, v: v, out: out, lse: lse, stats: &stats, deadline: deadline)
            default: try runForward(q: q, k: k, v: v, out: out, lse: lse, stats: &stats, deadline: deadline)
            }
        }
    }

    private func runForward(q: UnsafePointer<Float>?, k: UnsafePointer<Float>?, v: UnsafePointer<Float>?,
                            out: UnsafeMutablePointer<Float>?, lse: UnsafeMutablePointer<Float>?,
                            stats: inout CallStats, deadline: Deadline) throws {
        guard let space = forwardSpace, let kernels else { throw BurstError(.internalError, "forward workspace missing") }
        let p = size, r = rank, n = localRows, zq = zHeads, zkv = zKV, d = headDim
        let next = (r + 1) % p, previous = (r + p - 1) % p

        if n > 0, let q, let k, let v {
            TensorPacking.pack(q, layout: layout, batch: batch, heads: heads, rows: n, headDim: d, into: space.q.pointer)
            TensorPacking.pack(k, layout: layout, batch: batch, heads: kvHeads, rows: n, headDim: d, into: space.kv.pointer)
            TensorPacking.pack(v, layout: layout, batch: batch, heads: kvHeads, rows: n, headDim: d,
                               into: space.kv.pointer + zkv * n * d)
        }
        LocalAttention.resetForwardState(heads: zq, rows: n, headDim: d, acc: space.acc.pointer,
                                         rowMax: space.rowMax.pointer, rowSum: space.rowSum.pointer)

        var current: UnsafeMutablePointer<Float>? = space.kv.pointer
        var receiveSlot = 0
        for hop in 0..<p {
            let source = (r - hop + p) % p
            let sourceRows = tokens.counts[source]
            var pending: PendingTransfer = CompletedTransfer()
            var received: UnsafeMutablePointer<Float>?
            if hop < p - 1 {
                var sends: [OutgoingMessage] = []
                var receives: [IncomingMessage] = []
                let incoming = (source - 1 + p) % p
                if tokens.forwardsBlock(holder: previous, source: incoming, hop: hop) {
                    let buffer = space.receive[receiveSlot].pointer
                    let bytes = 2 * zkv * tokens.counts[incoming] * d * 4
                    receives.append(IncomingMessage(UnsafeMutableRawBufferPointer(start: buffer, count: bytes),
                                                    from: previous, tag: Self.kvTag))
                    stats.bytesReceived += UInt64(bytes)
                    received = buffer
                }
                if tokens.forwardsBlock(holder: r, source: source, hop: hop) {
                    guard let current else { throw BurstError(.internalError, "forward: block \(source) to pass on was never received") }
                    let bytes = 2 * zkv * sourceRows * d * 4
                    sends.append(OutgoingMessage(UnsafeRawBufferPointer(start: current, count: bytes), to: next, tag: Self.kvTag))
                    stats.bytesSent += UInt64(bytes)
                    stats.messagesSent += 1
                }
                if !sends.isEmpty || !receives.isEmpty {
                    pending = try transport.start(sends: sends, receives: receives)
                }
            }

            if tokens.needs(queryRank: r, keyRank: source) {
                guard let current else { throw BurstError(.internalError, "forward: needed block \(source) was never received") }
                let tiles = timed(&stats.computeSeconds) {
                    tokens.lo[r].withUnsafeBufferPointer { lo in
                    tokens.hi[r].withUnsafeBufferPointer { hi in
                    tokens.positions[source].withUnsafeBufferPointer { keys in
                        kernels.forwardAccumulate(queryHeads: zq, group: group, q: space.q.pointer, queryRows: n,
                                                  queryLo: lo.baseAddress!, queryHi: hi.baseAddress!,
                                                  k: current, v: current + zkv * sourceRows * d,
                                                  keyRows: sourceRows, keyPositions: keys.baseAddress!,
                                                  acc: space.acc.pointer, rowMax: space.rowMax.pointer,
                                                  rowSum: space.rowSum.pointer)
                    } } }
                }
                stats.add(tiles)
                stats.stepsComputed += 1
            } else {
                stats.add(.init(skipped: kernels.denseTiles(queryHeads: zq, queryRows: n, keyRows: sourceRows)))
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
            LocalAttention.finishForward(heads: zq, rows: n, headDim: d, acc: space.acc.pointer,
                                         rowMax: space.rowMax.pointer, rowSum: space.rowSum.pointer,
                                         out: space.acc.pointer, lse: lse)
        }
        if n > 0, let out {
            TensorPacking.unpack(space.acc.pointer, layout: layout, batch: batch, heads: heads, rows: n, headDim: d, into: out)
        }
    }
}
