#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif
import LocalAttention

/// Decode over a KV cache sharded on the ranks (burst_kv_cache_decode's
/// compute and communication; the cache object does the checks and the
/// appends): every rank computes the partial (out_r, lse_r) of all the new
/// query rows over its own shard, sends it to every other rank, and every
/// rank merges them in rank order:
///   lse = log Σ_r e^(lse_r),  out = Σ_r e^(lse_r − lse) · out_r,
/// in double precision, rounded once — the same (out, lse) algebra as the
/// ring forward's merge, so every rank returns the same bits, run after run.
///
/// Rows: the S·Hq·T new query rows in the order r = (i·Hq + h_q)·T + t
/// (sequence i, query head h_q, new token t). A key/value head's group
/// (g = Hq/Hkv query heads × T tokens = m rows) is one contiguous slice, so
/// each block of a head is read once for its whole group (GQA).
///
/// Work on a rank: units (sequence, key/value head, chunk of `chunkBlocks`
/// blocks) run in parallel, each folding its blocks into its own running
/// state; a head's chunk states merge in chunk order. The chunks depend on
/// the block count only, so the bits do not depend on the thread count.
/// A block whose last position is before every new query's window is
/// skipped (counted in tiles_skipped).
final class DecodeSchedule: Schedule {
    let kernel: DecodeKernel
    let pool: WorkerPool
    let headDim: Int, heads: Int, kvHeads: Int, group: Int
    let windowLeft: Int
    let storage: StorageType
    let layout: AttentionConfig.Layout
    /// The tag of the partials' messages (the cache's transport carries nothing else).
    static let partialTag: Int32 = 1
    /// Blocks per unit of work (16K tokens at the default block size).
    static let chunkBlocks = 64
    /// Grown on demand, kept: packed queries, this rank's partials and
    /// everyone's, the units' states and the workers' scratch.
    private var workspace: FloatBuffer?

    init(config: KVCacheConfig, pool: WorkerPool) {
        headDim = Int(config.headDim)
        heads = Int(config.numHeadsQ)
        kvHeads = Int(config.numHeadsKV)
        group = config.group
        windowLeft = Int(config.windowLeft)
        storage = config.storage
        layout = AttentionConfig.Layout(rawValue: config.layout) ?? .bshd
        self.pool = pool
        kernel = DecodeKernel(headDim: headDim, blockTokens: config.effectiveBlockTokens,
                              scale: config.effectiveScale, storage: storage, softcap: config.softcap)
    }

    var workspaceBytes: Int { (workspace?.count ?? 0) * MemoryLayout<Float>.size }

    /// One call's shape.
    struct Call {
        let sequences: [[KVBlock]]   // this rank's blocks of each sequence, in the layer
        let starts: [Int]            // first new position of each sequence
        let tokens: Int              // T
        var sinks: [Float]? = nil    // the layer's sink logits, one per query head
        var chunks: [Int] { sequences.map { DecodeSchedule.chunkCount(blocks: $0.count) } }
    }

    /// Units of work one sequence's `blocks` blocks make per key/value head.
    static func chunkCount(blocks: Int) -> Int { max(1, (blocks + chunkBlocks - 1) / chunkBlocks) }

    /// Floats of workspace a call of `sequences` × `tokens` new tokens over
    /// `units` units on `ranks` ranks needs.
    private func workspaceFloats(sequences: Int, tokens: Int, units: Int, ranks: Int) -> Int {
        let d = headDim, rows = sequences * heads * tokens, m = group * tokens
        return rows * d                      // packed queries
            + rows * (d + 1) * (1 + ranks)   // this rank's partials + everyone's
            + units * m * (d + 2)            // unit states (acc, max, sum)
            + pool.threadCount * kernel.scratchFloats(rows: m)
    }

    /// Allocates the workspace a call needs (the local check, before the
    /// agreement round: OUT_OF_MEMORY is agreed like any other error).
    func prepare(sequences: Int, tokens: Int, units: Int, ranks: Int) -> BurstError? {
        let need = workspaceFloats(sequences: sequences, tokens: tokens, units: units, ranks: ranks)
        if let workspace, workspace.count >= need { return nil }
        workspace = nil
        guard let buffer = FloatBuffer(count: need) else {
            return BurstError(.outOfMemory, "cannot allocate \(need * 4) bytes of decode workspace")
        }
        workspace = buffer
        return nil
    }

    /// Units of a call: (sequence, key/value head, chunk).
    static func unitCount(blocks: [Int], kvHeads: Int) -> Int {
        blocks.reduce(0) { $0 + kvHeads * chunkCount(blocks: $1) }
    }

    /// Runs the decode of `call` (after `prepare`): partials, allgather, merge,
    /// and the caller's out (storage type, the cache's layout) and lse.
    func run(_ call: Call, q: UnsafeRawPointer, out: UnsafeMutableRawPointer, lse: UnsafeMutablePointer<Float>?,
             transport: Transport, stats: inout CallStats, deadline: Deadline) throws {
        guard let workspace else { throw BurstError(.internalError, "decode workspace missing") }
        let d = headDim, p = transport.size, t = call.tokens, m = group * t
        let rows = call.sequences.count * heads * t
        let chunks = call.chunks
        let units = chunks.reduce(0) { $0 + kvHeads * $1 }
        let packedQ = workspace.pointer
        let partial = packedQ + rows * d                  // [rows × d] out, then [rows] lse
        let gathered = partial + rows * (d + 1)           // p × the same
        let states = gathered + p * rows * (d + 1)        // units × m × (d + 2)
        let scratch = states + units * m * (d + 2)
        let scratchPerWorker = kernel.scratchFloats(rows: m)
        let stateFloats = m * (d + 2)

        let t0 = Deadline.seconds()
        // Queries in row order r = (i·Hq + h_q)·T + t, fp32.
        packRows(from: q, into: packedQ, sequences: call.sequences.count, tokens: t)

        // Unit u → (sequence, kv head, chunk): prefix sums over sequences.
        var unitStart = [Int](repeating: 0, count: chunks.count + 1)
        for (i, c) in chunks.enumerated() { unitStart[i + 1] = unitStart[i] + kvHeads * c }
        var blocksComputed = 0, blocksSkipped = 0
        let counters = UnsafeMutablePointer<Int>.allocate(capacity: 2 * pool.threadCount)
        counters.initialize(repeating: 0, count: 2 * pool.threadCount)
        defer { counters.deallocate() }
        let full = kernel.products(rows: m, count: kernel.fullCount)
        let ranges = UnsafeMutablePointer<Int>.allocate(capacity: 2 * m * pool.threadCount)
        defer { ranges.deallocate() }
        let window = windowLeft

        unitStart.withUnsafeBufferPointer { unitStart in
            pool.parallelFor(units) { u, worker in
                // Which sequence: the last i with unitStart[i] <= u.
                var i = 0
                while unitStart[i + 1] <= u { i += 1 }
                let local = u - unitStart[i], c = chunks[i]
                let h = local / c, chunk = local % c
                let state = states + u * stateFloats
                let acc = state, rowMax = state + m * d, rowSum = rowMax + m
                acc.update(repeating: 0, count: m * d)
                rowMax.update(repeating: -.infinity, count: m)
                rowSum.update(repeating: 0, count: m)
                let blocks = call.sequences[i]
                let first = chunk * Self.chunkBlocks, last = min(blocks.count, first + Self.chunkBlocks)
                let p0 = call.starts[i]
                let qRows = UnsafePointer(packedQ + ((i * heads + h * group) * t) * d)
                let lo = ranges + 2 * m * worker, hi = lo + m
                let work = scratch + worker * scratchPerWorker
                for b in first..<last {
                    let block = blocks[b]
                    // Nothing visible to any new token: every key is before the
                    // first token's window.
                    if window >= 0 && block.lastPosition < p0 - window { counters[2 * worker + 1] += 1; continue }
                    var anyVisible = false
                    for tt in 0..<t {
                        let position = p0 + tt
                        let (a, z) = Self.visibleRange(block, from: window >= 0 ? position - window : Int.min, through: position)
                        anyVisible = anyVisible || a < z
                        for gi in 0..<group { lo[gi * t + tt] = a; hi[gi * t + tt] = z }
                    }
                    if !anyVisible { counters[2 * worker + 1] += 1; continue }
                    kernel.fold(full, q: qRows, rows: m, keysT: block.keys(head: h), values: block.values(head: h),
                                count: block.count, lo: lo, hi: hi, rowMax: rowMax, rowSum: rowSum, acc: acc, scratch: work)
                    counters[2 * worker] += 1
                }
            }
        }
        for w in 0..<pool.threadCount { blocksComputed += counters[2 * w]; blocksSkipped += counters[2 * w + 1] }

        // Each head's chunks in chunk order, then (out_r, lse_r) per row.
        for i in 0..<chunks.count {
            for h in 0..<kvHeads {
                let base = states + (unitStart[i] + h * chunks[i]) * stateFloats
                for chunk in 1..<max(chunks[i], 1) {
                    let other = base + chunk * stateFloats
                    DecodeKernel.mergeState(rows: m, headDim: d, maxA: base + m * d, sumA: base + m * d + m, accA: base,
                                            maxB: other + m * d, sumB: other + m * d + m, accB: other)
                }
                let r0 = (i * heads + h * group) * t
                LocalAttention.finishForward(heads: 1, rows: m, headDim: d, acc: base, rowMax: base + m * d,
                                             rowSum: base + m * d + m, out: partial + r0 * d, lse: partial + rows * d + r0)
            }
        }
        stats.computeSeconds += Deadline.seconds() - t0
        stats.tilesComputed += UInt64(blocksComputed)
        stats.tilesSkipped += UInt64(blocksSkipped)

        // Everyone's partials, in rank order: this rank's to every peer and
        // every peer's into its slot, point to point (so a simulated network
        // times them like any tensor payload; MPI: Isend/Irecv).
        let bytes = rows * (d + 1) * MemoryLayout<Float>.size
        let t1 = Deadline.seconds()
        let mine = UnsafeRawBufferPointer(start: partial, count: bytes)
        UnsafeMutableRawBufferPointer(start: gathered + transport.rank * rows * (d + 1), count: bytes).copyMemory(from: mine)
        let peers = (0..<p).filter { $0 != transport.rank }
        let nodes = transport.nodes, home = nodes[transport.rank]
        for peer in peers where nodes[peer] != home {
            stats.bytesSentInterGroup += UInt64(bytes)
            stats.bytesReceivedInterGroup += UInt64(bytes)
        }
        try transport.start(sends: peers.map { OutgoingMessage(mine, to: $0, tag: Self.partialTag) },
                            receives: peers.map { IncomingMessage(UnsafeMutableRawBufferPointer(start: gathered + $0 * rows * (d + 1), count: bytes),
                                                                  from: $0, tag: Self.partialTag) })
            .wait(until: deadline)
        stats.commWaitSeconds += Deadline.seconds() - t1
        stats.bytesSent += UInt64((p - 1) * bytes)
        stats.bytesReceived += UInt64((p - 1) * bytes)
        stats.messagesSent += UInt64(p - 1)

        let t2 = Deadline.seconds()
        let headCount = heads
        Self.merge(gathered, ranks: p, rows: rows, headDim: d, into: partial,
                   sink: call.sinks.map { sinks in { row in sinks[(row / t) % headCount] } })
        unpackRows(partial, lseRows: partial + rows * d, sequences: call.sequences.count, tokens: t, out: out, lse: lse)
        stats.computeSeconds += Deadline.seconds() - t2
    }

    /// The slots of `block` whose positions lie in lo...hi (positions increase
    /// along the block), as a half-open range of slots.
    @inline(__always)
    static func visibleRange(_ block: KVBlock, from lo: Int, through hi: Int) -> (Int, Int) {
        let positions = block.positions, n = block.count
        func firstIndex(atLeast x: Int) -> Int {
            var a = 0, b = n
            while a < b { let mid = (a + b) / 2; if positions[mid] < x { a = mid + 1 } else { b = mid } }
            return a
        }
        let start = lo == Int.min ? 0 : firstIndex(atLeast: lo)
        let end = hi == Int.max ? n : firstIndex(atLeast: hi + 1)
        return (start, max(start, end))
    }

    /// Merges the ranks' partials (rank r's block: [rows × d] out, [rows] lse)
    /// in rank order, in double precision, into `result` (same layout).
    static func merge(_ gathered: UnsafePointer<Float>, ranks p: Int, rows: Int, headDim d: Int,
                      into result: UnsafeMutablePointer<Float>, sink: ((Int) -> Float)? = nil) {
        let stride = rows * (d + 1)
        let sum = UnsafeMutablePointer<Double>.allocate(capacity: d)
        defer { sum.deallocate() }
        for r in 0..<rows {
            // A sink is one more partial: lse = s, out = 0 (no value).
            let s = sink.map { Double($0(r)) } ?? -.infinity
            var best = s, nan = false
            for k in 0..<p {
                let l = Double(gathered[k * stride + rows * d + r])
                if l.isNaN { nan = true } else if l > best { best = l }
            }
            let out = result + r * d
            if nan { out.update(repeating: .nan, count: d); result[rows * d + r] = .nan; continue }
            if best == -.infinity { out.update(repeating: 0, count: d); result[rows * d + r] = -.infinity; continue }
            sum.update(repeating: 0, count: d)
            var total = s == -.infinity ? 0.0 : exp(s - best)
            for k in 0..<p {
                let l = Double(gathered[k * stride + rows * d + r])
                if l == -.infinity { continue }
                let w = exp(l - best)
                total += w
                let o = gathered + k * stride + r * d
                for c in 0..<d { sum[c] += w * Double(o[c]) }
            }
            for c in 0..<d { out[c] = Float(sum[c] / total) }
            result[rows * d + r] = Float(best + log(total))
        }
    }

    /// Element offset of (sequence i, token t, head h) in a [S, T, H, d]
    /// (BSHD) or [S, H, T, d] (BHSD) tensor with H heads.
    @inline(__always)
    private func offset(_ i: Int, _ t: Int, _ h: Int, heads: Int, tokens: Int) -> Int {
        switch layout {
        case .bshd: return ((i * tokens + t) * heads + h) * headDim
        case .bhsd: return ((i * heads + h) * tokens + t) * headDim
        }
    }

    private func packRows(from q: UnsafeRawPointer, into packed: UnsafeMutablePointer<Float>, sequences: Int, tokens: Int) {
        let d = headDim, e = storage.bytes
        for i in 0..<sequences { for h in 0..<heads { for t in 0..<tokens {
            let r = (i * heads + h) * tokens + t
            StorageConversion.load(storage, q + offset(i, t, h, heads: heads, tokens: tokens) * e, into: packed + r * d, count: d)
        } } }
    }

    private func unpackRows(_ rowsOut: UnsafePointer<Float>, lseRows: UnsafePointer<Float>, sequences: Int, tokens: Int,
                            out: UnsafeMutableRawPointer, lse: UnsafeMutablePointer<Float>?) {
        let d = headDim, e = storage.bytes
        for i in 0..<sequences { for h in 0..<heads { for t in 0..<tokens {
            let r = (i * heads + h) * tokens + t
            StorageConversion.store(storage, rowsOut + r * d, into: out + offset(i, t, h, heads: heads, tokens: tokens) * e, count: d)
            lse?[r] = lseRows[r]
        } } }
    }

    /// Element offset of a key/value row in a [S, T, Hkv, d] / [S, Hkv, T, d] tensor.
    func kvOffset(_ i: Int, _ t: Int, _ h: Int, tokens: Int) -> Int {
        offset(i, t, h, heads: kvHeads, tokens: tokens)
    }
}
