import Foundation
import XCTest
@testable import GlobalAttention
import LocalAttention

/// One attention problem sharded over `counts.count` loopback ranks.
///
/// `counts` gives the world size and the global length N = Σ counts; for
/// CONTIGUOUS it is also the split, for ZIGZAG and STRIPED the ranks hold
/// what the distribution deals them (`rankCounts`).
struct Problem {
    var batch = 1, heads = 2, headDim = 16
    var kvHeads: Int? = nil          // nil: MHA (= heads)
    var counts: [Int] = [8]
    var causal = false
    var window = (left: -1, right: -1)
    var cuSeqlens: [Int]? = nil
    var distribution: AttentionConfig.Distribution = .contiguous
    var layout: AttentionConfig.Layout = .bshd
    var scale: Float = 0
    var seed: UInt64 = 1
    var threads: Int32 = 1
    var inputScale = 1.0
    var pattern: AttentionConfig.Pattern = .burst
    var intraGroupSize: Int32 = 0
    var network: SimulatedNetwork? = nil
    /// The storage type of q, k, v, out, dout and the gradients; the
    /// inputs are rounded to it, so the reference sees exactly what the
    /// library does.
    var dtype: StorageType = .f32
    /// BURST_COMPUTE_*. EXACT unless a test asks otherwise: the tests of the
    /// exact contract (DESIGN §3, the half storage contract) must not pick
    /// up DEFAULT's bf16 products for bf16 storage; ComputeTests runs FAST
    /// and DEFAULT against `FastTolerance`.
    var compute: AttentionConfig.Compute = .exact
    /// Score modifiers: logit soft-capping (0 = off) and sink logits (one
    /// per query head; nil = none).
    var softcap: Float = 0
    var sinks: [Float]? = nil

    var ranks: Int { counts.count }
    var total: Int { counts.reduce(0, +) }
    var hkv: Int { kvHeads ?? heads }
    var z: Int { batch * heads }
    var zkv: Int { batch * hkv }

    var tokenDistribution: TokenDistribution {
        TokenDistribution(kind: distribution, total: total, ranks: ranks, sequenceOffsets: cuSeqlens)
    }
    /// What each rank holds.
    var rankCounts: [Int] {
        distribution == .contiguous ? counts : (0..<ranks).map { tokenDistribution.count(rank: $0) }
    }
    func positions(rank: Int) -> [Int] { tokenDistribution.positions(rank: rank, counts: rankCounts) }

    var label: String {
        "\(dtype) compute=\(compute) P=\(ranks) counts=\(rankCounts) dist=\(distribution) B=\(batch) H=\(heads)/\(hkv) d=\(headDim) causal=\(causal) window=\(window) cu=\(cuSeqlens.map { "\($0)" } ?? "-") layout=\(layout) pattern=\(pattern) G=\(intraGroupSize) softcap=\(softcap) sinks=\(sinks.map { "\($0)" } ?? "-")"
    }

    func config(rank: Int) -> AttentionConfig {
        var c = AttentionConfig()
        c.layout = layout.rawValue
        c.mask = causal ? 1 : 0
        c.distribution = distribution.rawValue
        c.batch = Int64(batch)
        c.seqLenLocal = Int64(rankCounts[rank])
        c.numHeadsQ = Int64(heads)
        c.numHeadsKV = Int64(hkv)
        c.headDim = Int64(headDim)
        c.softmaxScale = scale
        c.windowLeft = Int64(window.left)
        c.windowRight = Int64(window.right)
        if let cuSeqlens {
            c.cuSeqlens = cuSeqlens.map { Int64($0) }
            c.numSequences = Int64(cuSeqlens.count - 1)
        }
        c.numThreads = threads
        c.pattern = pattern.rawValue
        c.intraGroupSize = intraGroupSize
        c.timeoutSeconds = 60
        c.dtype = dtype.rawValue
        c.compute = compute.rawValue
        c.softcap = softcap
        c.sinks = sinks
        return c
    }

    /// Canonical global [Z', N, d] (Z' = batch·h) → this rank's shard in the user layout (Float).
    func shard(_ global: [Double], rank: Int, heads h: Int) -> [Float] {
        let pos = positions(rank: rank), n = pos.count, d = headDim, N = total
        var out = [Float](repeating: 0, count: batch * h * n * d)
        for b in 0..<batch { for hh in 0..<h { for (i, g) in pos.enumerated() { for c in 0..<d {
            let value = global[((b * h + hh) * N + g) * d + c]
            let index = layout == .bhsd ? (((b * h + hh) * n + i) * d + c) : (((b * n + i) * h + hh) * d + c)
            out[index] = Float(value)
        } } } }
        return out
    }

    /// `shard` without the fp32 rounding.
    func shardDouble(_ global: [Double], rank: Int, heads h: Int) -> [Double] {
        let pos = positions(rank: rank), n = pos.count, d = headDim, N = total
        var out = [Double](repeating: 0, count: batch * h * n * d)
        for b in 0..<batch { for hh in 0..<h { for (i, g) in pos.enumerated() { for c in 0..<d {
            let index = layout == .bhsd ? (((b * h + hh) * n + i) * d + c) : (((b * n + i) * h + hh) * d + c)
            out[index] = global[((b * h + hh) * N + g) * d + c]
        } } } }
        return out
    }

    /// The canonical global tensor [Z', N, d] from every rank's shard (the
    /// inverse of `shard`).
    func unshard(_ shards: [[Float]], heads h: Int) -> [Double] {
        let N = total, d = headDim
        var global = [Double](repeating: 0, count: batch * h * N * d)
        for rank in 0..<ranks {
            let pos = positions(rank: rank), n = pos.count
            for b in 0..<batch { for hh in 0..<h { for (i, g) in pos.enumerated() { for c in 0..<d {
                let index = layout == .bhsd ? (((b * h + hh) * n + i) * d + c) : (((b * n + i) * h + hh) * d + c)
                global[((b * h + hh) * N + g) * d + c] = Double(shards[rank][index])
            } } } }
        }
        return global
    }

    /// Canonical global row statistics [Z, N] → this rank's [Z, n].
    func shardRows(_ global: [Double], rank: Int) -> [Double] {
        let pos = positions(rank: rank), n = pos.count
        var out = [Double](repeating: 0, count: z * n)
        for h in 0..<z { for (i, g) in pos.enumerated() { out[h * n + i] = global[h * total + g] } }
        return out
    }

    /// The float64 reference for this problem (its own, brute-force mask).
    var reference: ReferenceAttention {
        let scale = self.scale != 0 ? Double(self.scale) : 1 / Double(headDim).squareRoot()
        var reference = ReferenceAttention(batch: batch, heads: heads, kvHeads: hkv, n: total, d: headDim, scale: scale,
                                           mask: ReferenceMask(causal: causal, windowLeft: window.left, windowRight: window.right,
                                                               cuSeqlens: cuSeqlens, n: total))
        reference.softcap = Double(softcap)
        reference.sinks = sinks.map { $0.map(Double.init) }
        return reference
    }

    /// Global inputs (canonical): q and dout at `heads`, k and v at `kvHeads`.
    /// With a half storage type every value is rounded to it (so the
    /// float64 reference gets the same rounded inputs as the library).
    var inputs: (q: [Double], k: [Double], v: [Double], dout: [Double]) {
        let N = total, d = headDim
        let round = { (x: [Double]) in x.map { roundToStorage($0, self.dtype) } }
        return (round(randomTensor(z * N * d, seed: seed).map { $0 * inputScale }),
                round(randomTensor(zkv * N * d, seed: seed + 1).map { $0 * inputScale }),
                round(randomTensor(zkv * N * d, seed: seed + 2)),
                round(randomTensor(z * N * d, seed: seed + 3)))
    }
}

struct RankResult {
    var out: [Float] = [], lse: [Float] = [], dq: [Float] = [], dk: [Float] = [], dv: [Float] = []
    /// This rank's partial dL/d sinks (empty without sinks).
    var dsinks: [Float] = []
    var forwardStats = CallStats(), backwardStats = CallStats()
    var error: BurstError?
    /// The tile products of the kernels the plan's schedule made (nil: it made none).
    var products: LocalAttention.Products?
}

extension AttentionPlan {
    /// The products of the kernels this plan's schedule made (nil before its
    /// first call, or when it needed none).
    var kernelProducts: LocalAttention.Products? {
        switch schedule {
        case let s as RingSchedule: return s.kernels?.products
        case let s as AllgatherSchedule: return s.kernels?.products
        case let s as UlyssesSchedule: return s.kernels?.products
        default: return nil
        }
    }
}

/// Runs `body(rank, transport)` on one thread per rank and returns the results in rank order.
func runRanks<T>(_ size: Int, network: SimulatedNetwork? = nil, _ body: @escaping (Int, LoopbackTransport) -> T) -> [T] {
    let transports = LoopbackTransport.makeGroup(size: size, network: network)
    let results = UnsafeMutablePointer<T?>.allocate(capacity: size)
    results.initialize(repeating: nil, count: size)
    defer { results.deinitialize(count: size); results.deallocate() }
    let group = DispatchGroup()
    let resultsAddress = UInt(bitPattern: results)
    for rank in 0..<size {
        group.enter()
        let thread = Thread {
            let slot = UnsafeMutablePointer<T?>(bitPattern: resultsAddress)!
            slot[rank] = body(rank, transports[rank])
            group.leave()
        }
        thread.stackSize = 8 << 20
        thread.start()
    }
    group.wait()
    return (0..<size).map { results[$0]! }
}

/// Forward + backward through the plan on every rank.
func runProblem(_ p: Problem, backward: Bool = true) -> [RankResult] {
    let inputs = p.inputs
    let z = p.z
    return runRanks(p.ranks, network: p.network) { rank, transport in
        var result = RankResult()
        do {
            let context = AttentionContext(transport: transport, defaultThreads: 1)
            let plan = try context.makePlan(.success(p.config(rank: rank)))
            let qs = p.shard(inputs.q, rank: rank, heads: p.heads), ks = p.shard(inputs.k, rank: rank, heads: p.hkv)
            let vs = p.shard(inputs.v, rank: rank, heads: p.hkv), dos = p.shard(inputs.dout, rank: rank, heads: p.heads)
            // Caller buffers in the storage type (fp32 values, or half bits).
            let type = p.dtype
            let q = StorageArray(qs, type), k = StorageArray(ks, type), v = StorageArray(vs, type), dO = StorageArray(dos, type)
            let out = StorageArray(count: qs.count, type)
            var lse = [Float](repeating: .nan, count: z * p.rankCounts[rank])
            try lse.withUnsafeMutableBufferPointer { lb in
                try plan.forward(q: q.raw, k: k.raw, v: v.raw, out: out.mutableRaw, lse: lb.baseAddress)
            }
            result.out = out.floats; result.lse = lse; result.forwardStats = plan.lastStats
            result.products = plan.kernelProducts
            if backward {
                let dq = StorageArray(count: qs.count, type), dk = StorageArray(count: ks.count, type)
                let dv = StorageArray(count: ks.count, type)
                try lse.withUnsafeBufferPointer { lb in
                    try plan.backward(q: q.raw, k: k.raw, v: v.raw, out: out.raw, lse: lb.baseAddress, dout: dO.raw,
                                      dq: dq.mutableRaw, dk: dk.mutableRaw, dv: dv.mutableRaw)
                }
                result.dq = dq.floats; result.dk = dk.floats; result.dv = dv.floats; result.backwardStats = plan.lastStats
                if p.sinks != nil { result.dsinks = try plan.sinksGradient() }
            }
        } catch let error as BurstError {
            result.error = error
        } catch {
            result.error = BurstError(.internalError, "\(error)")
        }
        return result
    }
}

struct Errors {
    var out = 0.0, lse = 0.0, dq = 0.0, dk = 0.0, dv = 0.0
    var outScale = 0.0, gradScale = (0.0, 0.0, 0.0)
    /// dL/d sinks summed over the ranks against the reference (0 without sinks).
    var dsinks = 0.0, dsinksScale = 0.0
}

/// Max-abs errors of all ranks against the float64 reference.
func referenceErrors(_ p: Problem, _ results: [RankResult], file: StaticString = #filePath, line: UInt = #line) -> Errors {
    let (q, k, v, dout) = p.inputs
    let ref = p.reference
    let (out, lse) = ref.forward(q: q, k: k, v: v)
    let backwardWanted = !(results.first?.dq.isEmpty ?? true) || results.contains { !$0.dq.isEmpty }
    let grads = backwardWanted ? ref.backwardWithSinks(q: q, k: k, v: v, out: out, lse: lse, dout: dout) : ([], [], [], [])
    var e = Errors()
    e.outScale = maxAbs(out)
    if backwardWanted { e.gradScale = (maxAbs(grads.0), maxAbs(grads.1), maxAbs(grads.2)) }
    func worst(_ got: [Float], _ want: [Float]) -> Double {
        var w = 0.0
        if got.count != want.count { return .infinity }
        for (a, b) in zip(got, want) {
            if a == b { continue }  // covers equal infinities
            let diff = abs(Double(a) - Double(b))
            w = max(w, diff.isNaN ? .infinity : diff)
        }
        return w
    }
    for (rank, r) in results.enumerated() {
        if let error = r.error { XCTFail("rank \(rank): \(error) — \(p.label)", file: file, line: line); continue }
        e.out = max(e.out, worst(r.out, p.shard(out, rank: rank, heads: p.heads)))
        e.lse = max(e.lse, worst(r.lse, p.shardRows(lse, rank: rank).map { Float($0) }))
        if backwardWanted {
            e.dq = max(e.dq, worst(r.dq, p.shard(grads.0, rank: rank, heads: p.heads)))
            e.dk = max(e.dk, worst(r.dk, p.shard(grads.1, rank: rank, heads: p.hkv)))
            e.dv = max(e.dv, worst(r.dv, p.shard(grads.2, rank: rank, heads: p.hkv)))
        }
    }
    if backwardWanted, p.sinks != nil, results.allSatisfy({ $0.error == nil }) {
        // The partials summed over the ranks (what a training loop does).
        var total = [Double](repeating: 0, count: p.heads)
        for r in results {
            guard r.dsinks.count == p.heads else { e.dsinks = .infinity; return e }
            for h in 0..<p.heads { total[h] += Double(r.dsinks[h]) }
        }
        e.dsinksScale = maxAbs(grads.3)
        e.dsinks = zip(total, grads.3).reduce(0) { max($0, abs($1.0 - $1.1)) }
    }
    return e
}

/// Asserts DESIGN §3's tolerances. A gradient whose reference is exactly 0
/// (one token: dS = P·(dP − D) vanishes) is held to 1e-4 · 1e-3 absolute
/// instead of 0, since fp32 rounding of dP − D cannot be exactly 0.
func assertWithinTolerance(_ p: Problem, _ e: Errors, file: StaticString = #filePath, line: UInt = #line) {
    var e = e
    e.gradScale = (max(e.gradScale.0, 1e-3), max(e.gradScale.1, 1e-3), max(e.gradScale.2, 1e-3))
    let label = p.label
    XCTAssertLessThanOrEqual(e.out, 1e-5 * e.outScale, "out error \(e.out) vs max|ref| \(e.outScale) — \(label)", file: file, line: line)
    XCTAssertLessThanOrEqual(e.lse, 1e-4, "lse error \(e.lse) — \(label)", file: file, line: line)
    XCTAssertLessThanOrEqual(e.dq, 1e-4 * e.gradScale.0, "dq error \(e.dq) vs \(e.gradScale.0) — \(label)", file: file, line: line)
    XCTAssertLessThanOrEqual(e.dk, 1e-4 * e.gradScale.1, "dk error \(e.dk) vs \(e.gradScale.1) — \(label)", file: file, line: line)
    XCTAssertLessThanOrEqual(e.dv, 1e-4 * e.gradScale.2, "dv error \(e.dv) vs \(e.gradScale.2) — \(label)", file: file, line: line)
    XCTAssertLessThanOrEqual(e.dsinks, 1e-4 * max(e.dsinksScale, 1e-3), "dsinks error \(e.dsinks) vs \(e.dsinksScale) — \(label)",
                             file: file, line: line)
}

/// The ranks' partial dL/d sinks, summed (what a training loop does),
/// within `relative` · max(max|want|, 1e-3) of the reference's (nothing to
/// check without sinks).
func assertSinkGradient(_ p: Problem, _ results: [RankResult], _ want: [Double], relative: Double,
                        file: StaticString = #filePath, line: UInt = #line) {
    guard p.sinks != nil, !want.isEmpty else { return }
    var total = [Double](repeating: 0, count: p.heads)
    for (rank, r) in results.enumerated() {
        guard r.dsinks.count == p.heads else {
            XCTFail("rank \(rank) returned \(r.dsinks.count) sink gradients, not \(p.heads) — \(p.label)", file: file, line: line)
            return
        }
        for h in 0..<p.heads { total[h] += Double(r.dsinks[h]) }
    }
    let error = zip(total, want).reduce(0.0) { max($0, abs($1.0 - $1.1)) }
    XCTAssertLessThanOrEqual(error, relative * max(maxAbs(want), 1e-3), "dsinks error \(error): \(total) vs \(want) — \(p.label)",
                             file: file, line: line)
}

/// Splits N tokens over P ranks unevenly but deterministically; with P ≥ 3
/// one rank holds 0 tokens and one holds 1.
func unevenCounts(total: Int, ranks: Int) -> [Int] {
    if ranks == 1 { return [total] }
    if ranks == 2 { return [total / 3, total - total / 3] }
    var counts = [Int](repeating: 0, count: ranks)
    counts[1] = 0
    counts[ranks - 1] = 1
    var remaining = total - 1
    let others = (0..<ranks).filter { $0 != 1 && $0 != ranks - 1 }
    for (i, r) in others.enumerated() {
        let share = i == others.count - 1 ? remaining : remaining * (i + 1) / (others.count * 2)
        counts[r] = share
        remaining -= share
    }
    return counts
}

/// x rounded to a storage type (through fp32), as a Double.
func roundToStorage(_ x: Double, _ type: StorageType) -> Double {
    switch type {
    case .f32: return x
    case .bf16: return Double(StorageConversion.bf16ToFloat(StorageConversion.floatToBF16(Float(x))))
    case .f16: return Double(StorageConversion.f16ToFloat(StorageConversion.floatToF16(Float(x))))
    }
}

/// A caller's buffer in a storage type: fp32 values as they are, or their
/// half bits (NaN-filled when made empty, so unwritten elements show).
final class StorageArray {
    let type: StorageType
    let count: Int
    let storage: UnsafeMutableRawPointer

    init(count: Int, _ type: StorageType) {
        self.type = type
        self.count = count
        storage = .allocate(byteCount: max(count, 1) * type.bytes, alignment: 64)
        if type == .f32 {
            storage.initializeMemory(as: Float.self, repeating: .nan, count: count)
        } else {
            storage.initializeMemory(as: UInt16.self, repeating: 0x7FFF, count: count)   // a NaN in bf16 and f16
        }
    }

    /// Holds `values` (which must be representable in `type`: the caller rounded them).
    convenience init(_ values: [Float], _ type: StorageType) {
        self.init(count: values.count, type)
        if values.isEmpty { return }
        values.withUnsafeBufferPointer { StorageConversion.store(type, $0.baseAddress!, into: storage, count: values.count) }
    }

    deinit { storage.deallocate() }

    var raw: UnsafeRawPointer? { count > 0 ? UnsafeRawPointer(storage) : nil }
    var mutableRaw: UnsafeMutableRawPointer? { count > 0 ? storage : nil }

    /// The values as fp32 (exact).
    var floats: [Float] {
        var result = [Float](repeating: 0, count: count)
        if count == 0 { return result }
        result.withUnsafeMutableBufferPointer { StorageConversion.load(type, storage, into: $0.baseAddress!, count: count) }
        return result
    }
}
