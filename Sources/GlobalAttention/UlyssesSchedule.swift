import LocalAttention

/// Forward workspace of ULYSSES (floats; zq' = Zq/P, zkv' = Zkv/P heads per
/// rank after the exchange, N the global length):
/// - `send`: this rank's q|k|v in P head slices of (zq' + 2zkv')·n·d each;
///   slice r never leaves, it is read in place.
/// - `receive`: the slices that come in, source s at (zq' + 2zkv')·d·Σ_{i<s} n_i.
/// - `q`, `k`, `v`: the local heads over the whole sequence, rows at their
///   global positions (zq'·N·d, zkv'·N·d, zkv'·N·d); `acc`, `rowMax`,
///   `rowSum`: the softmax state of all N rows (acc becomes O in place).
/// - `back`: O|lse rows of every rank's tokens, rank s at zq'·(d+1)·Σ_{i<s} n_i.
/// - `home`: what comes home, P slices of zq'·n·(d+1) (slice r filled locally).
/// With a half storage type the messages travel in wire form (`WireFormat`:
/// q, k, v and O in that type, lse fp32), staged in `wire` (one buffer per
/// direction and exchange, each as large as its messages' wire bytes).
final class UlyssesForwardSpace {
    let send, receive, q, k, v, acc, rowMax, rowSum, back, home: FloatBuffer
    let wire: UlyssesWireBuffers?
    let bounds: UlyssesBounds

    init(zq: Int, zkv: Int, rows n: Int, total: Int, ranks p: Int, headDim d: Int, bounds: UlyssesBounds,
         storage: StorageType) throws {
        self.bounds = bounds
        let zqs = zq / p, zkvs = zkv / p, size = storage.bytes
        wire = storage == .f32 ? nil : try UlyssesWireBuffers(
            sendBytes: p * (zqs + 2 * zkvs) * n * d * size, receiveBytes: (zqs + 2 * zkvs) * total * d * size,
            backBytes: zqs * total * (d * size + 4), homeBytes: p * zqs * n * (d * size + 4))
        send = try allocate(p * (zqs + 2 * zkvs) * n * d, "the q, k, v head slices to send")
        receive = try allocate((zqs + 2 * zkvs) * total * d, "the received q, k, v head slices")
        q = try allocate(zqs * total * d, "the whole-sequence queries")
        k = try allocate(zkvs * total * d, "the whole-sequence keys")
        v = try allocate(zkvs * total * d, "the whole-sequence values")
        acc = try allocate(zqs * total * d, "the output accumulator")
        rowMax = try allocate(zqs * total, "the row maxima")
        rowSum = try allocate(zqs * total, "the row sums")
        back = try allocate(zqs * total * (d + 1), "the output rows to send home")
        home = try allocate(p * zqs * n * (d + 1), "the output rows that come home")
    }

    var floats: Int {
        GlobalAttention.floats(send, receive, q, k, v, acc, rowMax, rowSum, back, home) + (wire?.floats ?? 0)
    }
}

/// Backward workspace of ULYSSES (floats; same notation): the P head slices
/// of [q | k | v | dO | D | lse], (zq'(2d + 2) + 2zkv'·d)·n each, the packed O
/// (Zq·n·d, for D only), what comes in, the whole-sequence q, k, v, dO, D,
/// lse and gradients dq, dk, dv (their rows at global positions), the
/// gradient rows to send back ((zq' + 2zkv')·d per token) and what comes home.
/// With a half storage type: wire staging as in the forward (q, k, v, dO
/// and the gradients in that type, D and lse fp32).
final class UlyssesBackwardSpace {
    let send, packedOut, receive, q, k, v, dOut, delta, lse, dq, dk, dv, back, home: FloatBuffer
    let wire: UlyssesWireBuffers?
    let bounds: UlyssesBounds

    init(zq: Int, zkv: Int, rows n: Int, total: Int, ranks p: Int, headDim d: Int, bounds: UlyssesBounds,
         storage: StorageType) throws {
        self.bounds = bounds
        let zqs = zq / p, zkvs = zkv / p, size = storage.bytes
        let bundle = zqs * (2 * d + 2) + 2 * zkvs * d
        let bundleBytes = (2 * zqs + 2 * zkvs) * d * size + 2 * zqs * 4, gradientBytes = (zqs + 2 * zkvs) * d * size
        wire = storage == .f32 ? nil : try UlyssesWireBuffers(
            sendBytes: p * bundleBytes * n, receiveBytes: bundleBytes * total,
            backBytes: gradientBytes * total, homeBytes: p * gradientBytes * n)
        send = try allocate(p * bundle * n, "the backward head slices to send")
        packedOut = try allocate(zq * n * d, "the packed output")
        receive = try allocate(bundle * total, "the received backward head slices")
        q = try allocate(zqs * total * d, "the whole-sequence queries")
        k = try allocate(zkvs * total * d, "the whole-sequence keys")
        v = try allocate(zkvs * total * d, "the whole-sequence values")
        dOut = try allocate(zqs * total * d, "the whole-sequence output gradient")
        delta = try allocate(zqs * total, "the whole-sequence D")
        lse = try allocate(zqs * total, "the whole-sequence lse")
        dq = try allocate(zqs * total * d, "the whole-sequence dq")
        dk = try allocate(zkvs * total * d, "the whole-sequence dk")
        dv = try allocate(zkvs * total * d, "the whole-sequence dv")
        back = try allocate((zqs + 2 * zkvs) * total * d, "the gradient rows to send home")
        home = try allocate(p * (zqs + 2 * zkvs) * n * d, "the gradient rows that come home")
    }

    var floats: Int {
        GlobalAttention.floats(send, packedOut, receive, q, k, v, dOut, delta, lse, dq, dk, dv, back, home) + (wire?.floats ?? 0)
    }
}

/// ULYSSES' wire staging for a half storage type: the messages of the
/// outbound exchange (`send`, `receive`) and of the return (`back`, `home`).
final class UlyssesWireBuffers {
    let send, receive, back, home: FloatBuffer
    init(sendBytes: Int, receiveBytes: Int, backBytes: Int, homeBytes: Int) throws {
        send = try allocate(WireFormat.floatsHolding(bytes: sendBytes), "the wire form of the outgoing head slices")
        receive = try allocate(WireFormat.floatsHolding(bytes: receiveBytes), "the wire form of the incoming head slices")
        back = try allocate(WireFormat.floatsHolding(bytes: backBytes), "the wire form of the results to send home")
        home = try allocate(WireFormat.floatsHolding(bytes: homeBytes), "the wire form of the results coming home")
    }

    var floats: Int { GlobalAttention.floats(send, receive, back, home) }
}

/// BURST_PATTERN_ULYSSES (DeepSpeed-Ulysses): an all-to-all trades the
/// sequence split for a head split, every rank runs full-sequence attention
/// for heads/P heads, and a second all-to-all brings the output back.
///
/// Rank j gets query heads [j·H/P, (j+1)·H/P) and key/value heads
/// [j·Hkv/P, (j+1)·Hkv/P) — the ones those query heads read under GQA
/// (h → h / group) — of all N tokens. Received rows go to their global
/// positions, so the whole-sequence keys sit at positions 0 ..< N in order
/// and the existing kernels and `VisibilityRule.rowBounds` handle every
/// distribution, window and packing. The all-to-alls are point-to-point
/// messages (one per pair of ranks and direction; none when it would be
/// empty); nothing is summed across ranks, so results are reproducible.
/// Stats: one step (the whole-sequence block; none when N = 0); its tiles
/// are those of Zq/P heads × N queries × N keys.
///
/// Memory per rank is O(N): the whole-sequence q, k, v (and in the backward
/// dO, D, lse, dq, dk, dv) of Zq/P heads, plus the messages in both directions.
///
/// Storage types: q, k, v, dO travel in the caller's type; so do the
/// results coming home (O, dq, dk, dv): each is final on the rank that
/// computed it (nothing is added to it after), so rounding it there gives
/// the bits rounding at home would. D and lse travel as fp32.
final class UlyssesSchedule: TrainingSchedule {
    let env: ScheduleEnvironment

    // Workspace, allocated on first use and kept (no allocation per call after that).
    var kernels: LocalAttention?
    var forwardSpace: UlyssesForwardSpace?
    var backwardSpace: UlyssesBackwardSpace?

    init(_ env: ScheduleEnvironment) {
        self.env = env
    }

    static let forwardTag: Int32 = 24
    static let outputTag: Int32 = 25
    static let backwardTag: Int32 = 26
    static let gradientTag: Int32 = 27

    /// Why ULYSSES cannot run this shape on `ranks` ranks (UNSUPPORTED naming
    /// the condition), or nil. Checked at plan creation, identically on every rank.
    /// num_heads_kv divisible by P implies num_heads_q is (it is a multiple of num_heads_kv).
    static func unsupported(_ config: AttentionConfig, ranks: Int) -> BurstError? {
        guard ranks > 0, config.numHeadsKV % Int64(ranks) == 0 else {
            return BurstError(.unsupported,
                              "BURST_PATTERN_ULYSSES needs num_heads_kv (\(config.numHeadsKV)) divisible by the number of ranks (\(ranks)); use BURST_PATTERN_BURST or ALLGATHER for this shape")
        }
        return nil
    }

    /// Bytes one ULYSSES call sends and receives on `rank` (burst_stats),
    /// for any shard sizes (masks change nothing: every token row is needed
    /// by the owner of its heads). With zq' = zq/P, zkv' = zkv/P, n_j the
    /// tokens of rank j, N = Σ n_j, and sums over the P − 1 other ranks:
    ///
    /// - forward: out 4·(zq' + 2zkv')·d·n_r to each other rank (q, k, v
    ///   slices), and back 4·zq'·(d + 1)·n_j to each other rank j (its O and
    ///   lse rows of our heads). Sent 4(P−1)(zq' + 2zkv')·d·n_r + 4zq'(d+1)(N − n_r),
    ///   received 4(zq' + 2zkv')·d·(N − n_r) + 4(P−1)zq'(d+1)·n_r.
    /// - backward: out [q | k | v | dO | D | lse] slices, 4·(zq'(2d+2) + 2zkv'·d)·n_r
    ///   to each other rank (O stays: D is computed before the exchange),
    ///   back the gradients 4·(zq' + 2zkv')·d·n_j. Sent
    ///   4(P−1)(zq'(2d+2) + 2zkv'd)·n_r + 4(zq' + 2zkv')d·(N − n_r), received the mirror.
    ///
    /// Equal shards n = N/P: the forward moves (P−1)/P·n·(zq(2d+1) + 2zkv·d)
    /// floats each way (MHA: ≈ 4·Z·N·d/P), the backward
    /// (P−1)/P·n·(zq(3d+2) + 4zkv·d) (MHA: ≈ 7·Z·N·d/P). P = 1 moves nothing.
    /// Meaningful when `unsupported` is nil (zkv and zq divisible by P).
    ///
    /// With a half storage type (2 bytes, e = 2) the storage-typed parts (q,
    /// k, v, dO out; O, dq, dk, dv back) take e bytes an element and D, lse
    /// 4: bytes per token there (zq' + 2zkv')·d·e forward and
    /// (2zq' + 2zkv')·d·e + 8zq' backward, back zq'(d·e + 4) forward and
    /// (zq' + 2zkv')·d·e backward.
    static func bytes(tokens: TokenLayout, rank r: Int, zq: Int, zkv: Int, headDim d: Int,
                      backward: Bool, storage: StorageType = .f32) -> (sent: UInt64, received: UInt64) {
        let p = tokens.ranks
        guard p > 0 else { return (0, 0) }
        let zqs = zq / p, zkvs = zkv / p, e = storage.bytes
        let outgoing = backward ? (2 * zqs + 2 * zkvs) * d * e + 8 * zqs : (zqs + 2 * zkvs) * d * e   // bytes per token, there
        let returning = backward ? (zqs + 2 * zkvs) * d * e : zqs * (d * e + 4)                        // bytes per token, back
        let mine = tokens.counts[r], others = tokens.total - mine
        let sent = (p - 1) * outgoing * mine + returning * others
        let received = outgoing * others + (p - 1) * returning * mine
        return (UInt64(sent), UInt64(received))
    }

    /// Both directions' buffers and the kernels' panels and scratch.
    var workspaceBytes: Int {
        ((forwardSpace?.floats ?? 0) + (backwardSpace?.floats ?? 0)) * MemoryLayout<Float>.size
            + (kernels?.workspaceBytes ?? 0)
    }

    /// The kernels see the whole sequence at once: Zkv/P heads × N keys.
    private func prepareKernels() throws {
        if kernels == nil { kernels = try env.makeKernels(maxKVHeads: env.zKV / env.size, maxKeyRows: env.tokens.total) }
    }

    /// The whole sequence's query bounds, shared by the forward and backward workspaces.
    private var bounds: UlyssesBounds {
        forwardSpace?.bounds ?? backwardSpace?.bounds ?? UlyssesBounds(total: env.tokens.total, rule: env.config.visibilityRule)
    }

    func prepareForward() -> BurstError? {
        preparing {
            try prepareKernels()
            let bounds = self.bounds
            if forwardSpace == nil {
                forwardSpace = try UlyssesForwardSpace(zq: env.zHeads, zkv: env.zKV, rows: env.localRows, total: env.tokens.total,
                                                       ranks: env.size, headDim: env.headDim, bounds: bounds, storage: env.storage)
            }
        }
    }

    func prepareBackward() -> BurstError? {
        preparing {
            try prepareKernels()
            let bounds = self.bounds
            if backwardSpace == nil {
                backwardSpace = try UlyssesBackwardSpace(zq: env.zHeads, zkv: env.zKV, rows: env.localRows, total: env.tokens.total,
                                                         ranks: env.size, headDim: env.headDim, bounds: bounds, storage: env.storage)
            }
        }
    }

    /// Floats before rank s's rows in a buffer that holds `width` floats per token of every rank.
    private func tokenOffset(_ s: Int, width: Int) -> Int { width * env.tokens.counts.prefix(s).reduce(0, +) }

    /// One all-to-all: this rank's message for rank j is the fp32 floats at
    /// `outgoing(j)` of `format(outRows(j))`; the one from rank s comes into
    /// `incoming(s)` as `format(inRows(s))`. Empty messages are neither sent
    /// nor received (both sides know the sizes). Waits for all of it. With a
    /// wire form other than fp32 the messages are encoded into `wire.out`
    /// before the sends and decoded from `wire.in` after the receives.
    private func exchange(tag: Int32, outgoing: (Int) -> UnsafeMutablePointer<Float>, outRows: (Int) -> Int,
                          incoming: (Int) -> UnsafeMutablePointer<Float>, inRows: (Int) -> Int,
                          format: (Int) -> WireFormat, wire: (out: FloatBuffer, in: FloatBuffer)?,
                          stats: inout CallStats, deadline: Deadline) throws {
        let p = env.size, r = env.rank
        let coded = wire != nil
        var sends: [OutgoingMessage] = [], receives: [IncomingMessage] = []
        var decodes: [(wire: UnsafeRawPointer, format: WireFormat, target: UnsafeMutablePointer<Float>)] = []
        var inOffset = 0, outOffset = 0
        for s in 0..<p where s != r && format(inRows(s)).floats > 0 {
            let f = format(inRows(s))
            var buffer = UnsafeMutableRawPointer(incoming(s))
            if let wire {
                buffer = UnsafeMutableRawPointer(wire.in.pointer) + inOffset
                inOffset += f.bytes
                decodes.append((UnsafeRawPointer(buffer), f, incoming(s)))
            }
            receives.append(IncomingMessage(UnsafeMutableRawBufferPointer(start: buffer, count: f.bytes), from: s, tag: tag))
        }
        for j in 0..<p where j != r && format(outRows(j)).floats > 0 {
            let f = format(outRows(j))
            var buffer = UnsafeMutableRawPointer(outgoing(j))
            if let wire {
                buffer = UnsafeMutableRawPointer(wire.out.pointer) + outOffset
                outOffset += f.bytes
                let source = outgoing(j)
                env.timed(&stats.computeSeconds) { f.encode(source, into: buffer) }
            }
            sends.append(OutgoingMessage(UnsafeRawBufferPointer(start: buffer, count: f.bytes), to: j, tag: tag))
        }
        if sends.isEmpty && receives.isEmpty { return }
        let pending = try env.startTransfer(sends: sends, receives: receives, stats: &stats)
        try env.timed(&stats.commWaitSeconds) { try pending.wait(until: deadline) }
        if coded {
            env.timed(&stats.computeSeconds) { for m in decodes { m.format.decode(m.wire, into: m.target) } }
        }
    }

    /// The wire forms of ULYSSES' four messages, by rows.
    private var wireFormats: (out: (Int) -> WireFormat, back: (Int) -> WireFormat,
                                 gradientsOut: (Int) -> WireFormat, gradientsBack: (Int) -> WireFormat) {
        let p = env.size, zqs = env.zHeads / p, zkvs = env.zKV / p, d = env.headDim, type = env.storage
        return ({ m in WireFormat([((zqs + 2 * zkvs) * m * d, type)]) },
                { m in WireFormat([(zqs * m * d, type), (zqs * m, .f32)]) },
                { m in WireFormat([((2 * zqs + 2 * zkvs) * m * d, type), (2 * zqs * m, .f32)]) },
                { m in WireFormat([((zqs + 2 * zkvs) * m * d, type)]) })
    }

    /// burst_forward under ULYSSES. Bytes: `bytes(backward: false)`.
    func forward(q: UnsafeRawPointer?, k: UnsafeRawPointer?, v: UnsafeRawPointer?,
                 out: UnsafeMutableRawPointer?, lse: UnsafeMutablePointer<Float>?,
                 stats: inout CallStats, deadline: Deadline) throws {
        guard let space = forwardSpace, let kernels else {
            throw BurstError(.internalError, "ULYSSES forward workspace missing")
        }
        let tokens = env.tokens, storage = env.storage, layout = env.layout
        let batch = env.batch, heads = env.heads, kvHeads = env.kvHeads
        let p = env.size, r = env.rank, n = env.localRows, d = env.headDim, total = tokens.total, bounds = space.bounds
        // No token anywhere (every rank knows it alike): nothing to send or
        // compute, and the per-head loops below would cost O(batch · heads).
        if total == 0 { return }
        let zqs = env.zHeads / p, zkvs = env.zKV / p
        let width = (zqs + 2 * zkvs) * d          // floats per token in a q|k|v slice
        let slice = width * n                     // one slice of this rank's message

        // q|k|v head slices: slice j = [q heads of j | k heads of j | v heads of j].
        if n > 0, let q, let k, let v {
            HeadSlices.pack(q, type: storage, layout: layout, batch: batch, heads: heads, rows: n, headDim: d, slices: p,
                            into: space.send.pointer, sliceStride: slice)
            HeadSlices.pack(k, type: storage, layout: layout, batch: batch, heads: kvHeads, rows: n, headDim: d, slices: p,
                            into: space.send.pointer + zqs * n * d, sliceStride: slice)
            HeadSlices.pack(v, type: storage, layout: layout, batch: batch, heads: kvHeads, rows: n, headDim: d, slices: p,
                            into: space.send.pointer + (zqs + zkvs) * n * d, sliceStride: slice)
        }
        let formats = wireFormats
        try exchange(tag: Self.forwardTag, outgoing: { space.send.pointer + $0 * slice }, outRows: { _ in n },
                     incoming: { space.receive.pointer + self.tokenOffset($0, width: width) },
                     inRows: { tokens.counts[$0] }, format: formats.out, wire: space.wire.map { ($0.send, $0.receive) },
                     stats: &stats, deadline: deadline)
        for s in 0..<p {
            let m = tokens.counts[s]
            let part = s == r ? space.send.pointer + r * slice : space.receive.pointer + tokenOffset(s, width: width)
            HeadSlices.scatter(part, heads: zqs, rows: m, width: d, positions: tokens.positions[s], total: total, into: space.q.pointer)
            HeadSlices.scatter(part + zqs * m * d, heads: zkvs, rows: m, width: d, positions: tokens.positions[s], total: total,
                               into: space.k.pointer)
            HeadSlices.scatter(part + (zqs + zkvs) * m * d, heads: zkvs, rows: m, width: d, positions: tokens.positions[s],
                               total: total, into: space.v.pointer)
        }

        // Whole-sequence attention of the local heads, rows in position order.
        // This rank holds query heads r·hs ..< (r+1)·hs of every batch (HeadSlices).
        let hs = heads / p
        LocalAttention.resetForwardState(heads: zqs, rows: total, headDim: d, acc: space.acc.pointer,
                                         rowMax: space.rowMax.pointer, rowSum: space.rowSum.pointer,
                                         sinks: env.sinks, sinkHead: { r * hs + $0 % hs })
        if total > 0 {
            env.foldBlock(kernels, queryHeads: zqs, q: space.q.pointer, rows: total, lo: bounds.lo, hi: bounds.hi,
                          k: space.k.pointer, v: space.v.pointer, keyRows: total, keyPositions: bounds.positions,
                          acc: space.acc.pointer, rowMax: space.rowMax.pointer, rowSum: space.rowSum.pointer, stats: &stats)
            stats.stepsComputed += 1
        }
        // O in place of acc; lse of all N rows into rowMax.
        env.timed(&stats.computeSeconds) {
            LocalAttention.finishForward(heads: zqs, rows: total, headDim: d, acc: space.acc.pointer,
                                         rowMax: space.rowMax.pointer, rowSum: space.rowSum.pointer,
                                         out: space.acc.pointer, lse: space.rowMax.pointer)
        }

        // Every rank's O|lse rows of our heads go home: message for rank j =
        // [O rows zq'·n_j·d | lse rows zq'·n_j]; ours goes straight into home slice r.
        let homeSlice = zqs * n * (d + 1)
        for j in 0..<p {
            let m = tokens.counts[j]
            let part = j == r ? space.home.pointer + r * homeSlice : space.back.pointer + tokenOffset(j, width: zqs * (d + 1))
            HeadSlices.gather(space.acc.pointer, heads: zqs, total: total, width: d, positions: tokens.positions[j], into: part)
            HeadSlices.gather(space.rowMax.pointer, heads: zqs, total: total, width: 1, positions: tokens.positions[j],
                              into: part + zqs * m * d)
        }
        try exchange(tag: Self.outputTag, outgoing: { space.back.pointer + self.tokenOffset($0, width: zqs * (d + 1)) },
                     outRows: { tokens.counts[$0] },
                     incoming: { space.home.pointer + $0 * homeSlice }, inRows: { _ in n },
                     format: formats.back, wire: space.wire.map { ($0.back, $0.home) }, stats: &stats, deadline: deadline)

        if n > 0, let out {
            HeadSlices.unpack(space.home.pointer, sliceStride: homeSlice, type: storage, layout: layout, batch: batch, heads: heads,
                              rows: n, headDim: d, slices: p, into: out)
        }
        if n > 0, let lse {
            // lse[b, h, i] (canonical already) from slice h / hs, which holds it at [b, h mod hs, i].
            let hs = heads / p
            for b in 0..<batch {
                for h in 0..<heads {
                    let source = space.home.pointer + (h / hs) * homeSlice + zqs * n * d + (b * hs + h % hs) * n
                    (lse + (b * heads + h) * n).update(from: source, count: n)
                }
            }
        }
    }

    /// burst_backward under ULYSSES. Bytes: `bytes(backward: true)`.
    ///
    /// D = rowsum(dO ∘ O) is computed before the exchange (n floats per head
    /// travel instead of n·d of O); then [q | k | v | dO | D | lse] go to the
    /// owner of their heads, every rank runs the whole-sequence backward of
    /// its heads, and dq | dk | dv come home.
    func backward(q: UnsafeRawPointer?, k: UnsafeRawPointer?, v: UnsafeRawPointer?,
                  out: UnsafeRawPointer?, lse: UnsafePointer<Float>?, dout: UnsafeRawPointer?,
                  dq: UnsafeMutableRawPointer?, dk: UnsafeMutableRawPointer?, dv: UnsafeMutableRawPointer?,
                  stats: inout CallStats, deadline: Deadline) throws {
        guard let space = backwardSpace, let kernels else {
            throw BurstError(.internalError, "ULYSSES backward workspace missing")
        }
        let tokens = env.tokens, storage = env.storage, layout = env.layout
        let batch = env.batch, heads = env.heads, kvHeads = env.kvHeads
        let p = env.size, r = env.rank, n = env.localRows, d = env.headDim, total = tokens.total, bounds = space.bounds
        if total == 0 { return }   // as in the forward: nothing anywhere
        let zqs = env.zHeads / p, zkvs = env.zKV / p, hs = heads / p
        let width = zqs * (2 * d + 2) + 2 * zkvs * d   // floats per token of the bundle
        let slice = width * n
        // Offsets of the parts inside a slice of m rows: q, k, v, dO, D, lse.
        func parts(_ m: Int) -> (k: Int, v: Int, dO: Int, delta: Int, lse: Int) {
            let k = zqs * m * d, v = k + zkvs * m * d, dO = v + zkvs * m * d, delta = dO + zqs * m * d
            return (k, v, dO, delta, delta + zqs * m)
        }

        let mine = parts(n)
        if n > 0, let q, let k, let v, let o = out, let dO = dout, let lse {
            let base = space.send.pointer
            HeadSlices.pack(q, type: storage, layout: layout, batch: batch, heads: heads, rows: n, headDim: d, slices: p,
                            into: base, sliceStride: slice)
            HeadSlices.pack(k, type: storage, layout: layout, batch: batch, heads: kvHeads, rows: n, headDim: d, slices: p,
                            into: base + mine.k, sliceStride: slice)
            HeadSlices.pack(v, type: storage, layout: layout, batch: batch, heads: kvHeads, rows: n, headDim: d, slices: p,
                            into: base + mine.v, sliceStride: slice)
            HeadSlices.pack(dO, type: storage, layout: layout, batch: batch, heads: heads, rows: n, headDim: d, slices: p,
                            into: base + mine.dO, sliceStride: slice)
            HeadSlices.pack(o, type: storage, layout: layout, batch: batch, heads: heads, rows: n, headDim: d, slices: p,
                            into: space.packedOut.pointer, sliceStride: zqs * n * d)
            env.timed(&stats.computeSeconds) {
                for j in 0..<p {
                    LocalAttention.rowDot(count: zqs * n, headDim: d, base + j * slice + mine.dO,
                                          space.packedOut.pointer + j * zqs * n * d, into: base + j * slice + mine.delta)
                }
            }
            for b in 0..<batch {
                for h in 0..<heads {
                    (base + (h / hs) * slice + mine.lse + (b * hs + h % hs) * n).update(from: lse + (b * heads + h) * n, count: n)
                }
            }
            // D of head z = b·heads + h sits in slice h / hs, at local head b·hs + h mod hs.
            env.timed(&stats.computeSeconds) {
                env.sinkGradient(lse: lse) { z in
                    let b = z / heads, h = z % heads
                    return UnsafePointer(base + (h / hs) * slice + mine.delta + (b * hs + h % hs) * n)
                }
            }
        }
        let formats = wireFormats
        try exchange(tag: Self.backwardTag, outgoing: { space.send.pointer + $0 * slice }, outRows: { _ in n },
                     incoming: { space.receive.pointer + self.tokenOffset($0, width: width) },
                     inRows: { tokens.counts[$0] }, format: formats.gradientsOut,
                     wire: space.wire.map { ($0.send, $0.receive) }, stats: &stats, deadline: deadline)
        for s in 0..<p {
            let m = tokens.counts[s], at = parts(m), positions = tokens.positions[s]
            let part = s == r ? space.send.pointer + r * slice : space.receive.pointer + tokenOffset(s, width: width)
            for (offset, h, w, target) in [(0, zqs, d, space.q), (at.k, zkvs, d, space.k), (at.v, zkvs, d, space.v),
                                           (at.dO, zqs, d, space.dOut), (at.delta, zqs, 1, space.delta),
                                           (at.lse, zqs, 1, space.lse)] {
                HeadSlices.scatter(part + offset, heads: h, rows: m, width: w, positions: positions, total: total,
                                   into: target.pointer)
            }
        }

        space.dq.fill(0, count: zqs * total * d)
        space.dk.fill(0, count: zkvs * total * d)
        space.dv.fill(0, count: zkvs * total * d)
        if total > 0 {
            env.gradientBlock(kernels, queryHeads: zqs, q: space.q.pointer, dOut: space.dOut.pointer, delta: space.delta.pointer,
                              lse: space.lse.pointer, dq: space.dq.pointer, rows: total, lo: bounds.lo, hi: bounds.hi,
                              k: space.k.pointer, v: space.v.pointer, dk: space.dk.pointer, dv: space.dv.pointer,
                              keyRows: total, keyPositions: bounds.positions, stats: &stats)
            stats.stepsComputed += 1
        }

        // Gradient rows home: message for rank j = [dq zq'·n_j·d | dk zkv'·n_j·d | dv zkv'·n_j·d].
        let backWidth = (zqs + 2 * zkvs) * d
        let homeSlice = backWidth * n
        for j in 0..<p {
            let m = tokens.counts[j], positions = tokens.positions[j]
            let part = j == r ? space.home.pointer + r * homeSlice : space.back.pointer + tokenOffset(j, width: backWidth)
            HeadSlices.gather(space.dq.pointer, heads: zqs, total: total, width: d, positions: positions, into: part)
            HeadSlices.gather(space.dk.pointer, heads: zkvs, total: total, width: d, positions: positions, into: part + zqs * m * d)
            HeadSlices.gather(space.dv.pointer, heads: zkvs, total: total, width: d, positions: positions,
                              into: part + (zqs + zkvs) * m * d)
        }
        try exchange(tag: Self.gradientTag, outgoing: { space.back.pointer + self.tokenOffset($0, width: backWidth) },
                     outRows: { tokens.counts[$0] },
                     incoming: { space.home.pointer + $0 * homeSlice }, inRows: { _ in n },
                     format: formats.gradientsBack, wire: space.wire.map { ($0.back, $0.home) }, stats: &stats, deadline: deadline)

        if n > 0, let dq, let dk, let dv {
            let home = space.home.pointer
            HeadSlices.unpack(home, sliceStride: homeSlice, type: storage, layout: layout, batch: batch, heads: heads, rows: n,
                              headDim: d, slices: p, into: dq)
            HeadSlices.unpack(home + zqs * n * d, sliceStride: homeSlice, type: storage, layout: layout, batch: batch,
                              heads: kvHeads, rows: n, headDim: d, slices: p, into: dk)
            HeadSlices.unpack(home + (zqs + zkvs) * n * d, sliceStride: homeSlice, type: storage, layout: layout, batch: batch,
                              heads: kvHeads, rows: n, headDim: d, slices: p, into: dv)
        }
    }
}

/// Query bounds of the whole sequence in position order (ULYSSES), computed once per plan.
final class UlyssesBounds {
    let positions: [Int], lo: [Int], hi: [Int]
    init(total: Int, rule: VisibilityRule) {
        positions = Array(0..<total)
        (lo, hi) = rule.rowBounds(positions)
    }
}
