import Foundation
import XCTest
@testable import GlobalAttention
import LocalAttention

/// Attention sinks and logit soft-capping (header, "Score modifiers") in
/// every pattern, variant, storage type and compute mode against the float64
/// reference (Reference.swift implements both the obvious way), the sink
/// gradient summed over ranks, finite differences of the library's own
/// forward, the sink-only row, and the validation and agreement rules.
final class ScoreModifierTests: XCTestCase {
    /// Sinks of the size the logits have here (unit inputs, d = 16: scores
    /// of a few units), so they change every output noticeably.
    static func sinks(_ heads: Int) -> [Float] { (0..<heads).map { [0.7, -1.3, 2.1, 0.0, -0.4, 1.5][$0 % 6] } }

    /// sinks only, softcap only, both (neither: every other test).
    static func modifiers(heads: Int) -> [(String, (inout Problem) -> Void)] {
        [("sinks", { p in p.sinks = sinks(p.heads) }),
         ("softcap", { p in p.softcap = 1.5 }),
         ("sinks+softcap", { p in p.sinks = sinks(p.heads); p.softcap = 2.5 })]
    }

    /// The training variants, sized so ULYSSES runs them at P ranks.
    static func variants(ranks: Int) -> [(String, (inout Problem) -> Void)] {
        let kv = ranks <= 2 ? 2 * ranks : ranks
        return [
            ("plain", { p in p.heads = kv; p.kvHeads = kv }),
            ("causal zigzag gqa", { p in p.heads = 2 * kv; p.kvHeads = kv; p.causal = true; p.distribution = .zigzag }),
            ("window striped bhsd b2", { p in p.heads = kv; p.kvHeads = kv; p.window = (5, 2); p.distribution = .striped
                p.layout = .bhsd; p.batch = 2 }),
            ("varlen causal window", { p in p.heads = kv; p.kvHeads = kv; p.causal = true; p.window = (6, -1)
                p.cuSeqlens = [0, 7, 7, 19, p.total] }),
        ]
    }

    /// fp32, EXACT: P = 1…5 × BURST/RING/ALLGATHER/ULYSSES × the variants ×
    /// the modifiers, forward and every gradient including d sinks.
    func testSweep() {
        for ranks in 1...5 {
            for pattern in [AttentionConfig.Pattern.burst, .ring, .allgather, .ulysses] {
                for (_, variant) in Self.variants(ranks: ranks) {
                    for (_, modifier) in Self.modifiers(heads: 0) {
                        var p = Problem()
                        p.counts = unevenCounts(total: 9 * ranks + 14, ranks: ranks)
                        p.pattern = pattern
                        p.seed = UInt64(ranks * 31 + Int(pattern.rawValue))
                        variant(&p)
                        modifier(&p)
                        if p.distribution != .contiguous { p.counts = [Int](repeating: 1, count: ranks); p.counts[0] = 9 * ranks + 14 - (ranks - 1) }
                        assertWithinTolerance(p, referenceErrors(p, runProblem(p)))
                    }
                }
            }
        }
    }

    /// The double ring (2 groups of 2) and larger logits (inputs × 3: the
    /// cap bites, and the sinks compete with real maxima).
    func testDoubleRingAndLargeLogits() {
        for pattern in [AttentionConfig.Pattern.burst, .ring] {
            for (_, modifier) in Self.modifiers(heads: 0) {
                var p = Problem()
                p.counts = [10, 9, 11, 8]
                p.heads = 4; p.kvHeads = 2; p.causal = true
                p.pattern = pattern; p.intraGroupSize = 2
                p.inputScale = 3
                modifier(&p)
                assertWithinTolerance(p, referenceErrors(p, runProblem(p)))
            }
        }
    }

    /// bf16 and f16 storage (EXACT: the half contract) and FAST products
    /// (f32 and bf16 storage: the FAST contract), every pattern, P = 1…3.
    func testStorageTypesAndFast() {
        for ranks in 1...3 {
            for pattern in [AttentionConfig.Pattern.burst, .ring, .allgather, .ulysses] {
                for (dtype, compute) in [(StorageType.bf16, AttentionConfig.Compute.exact), (.f16, .exact),
                                         (.f32, .fast), (.bf16, .fast)] {
                    var p = Problem()
                    p.counts = unevenCounts(total: 12 * ranks + 4, ranks: ranks)
                    p.pattern = pattern
                    Self.variants(ranks: ranks)[1].1(&p)   // causal zigzag GQA
                    p.counts = (0..<ranks).map { $0 == 0 ? 12 * ranks + 4 - (ranks - 1) : 1 }
                    p.headDim = 32   // even: the bf16 hardware path runs where the CPU has it
                    p.dtype = dtype; p.compute = compute
                    p.sinks = Self.sinks(p.heads); p.softcap = 2
                    let results = runProblem(p)
                    if compute == .fast { assertWithinFastTolerance(p, results) } else { StorageTypeTests.assertWithinHalfTolerance(p, results) }
                }
            }
        }
    }

    /// A row that sees no key still has the sink: out = 0, lse = s (no NaN,
    /// no −inf), in the kernels' state algebra (through the ABI every query
    /// sees its own key, so such a row exists only inside a rank's partial
    /// work — e.g. a rank whose queries precede every key of a block).
    func testSinkOnlyRow() throws {
        let d = 8, rows = 4, keys = 5
        let pool = WorkerPool(threadCount: 1)
        let kernels = try XCTUnwrap(LocalAttention(headDim: d, scale: 0.5, pool: pool, maxKVHeads: 1, maxKeyRows: keys))
        let q = randomTensor(rows * d, seed: 3).map { Float($0) }, k = randomTensor(keys * d, seed: 4).map { Float($0) }
        let v = randomTensor(keys * d, seed: 5).map { Float($0) }
        // Keys at positions 10…14; rows see positions lo...hi (inclusive,
        // non-decreasing): rows 0 and 1 see nothing, rows 2 and 3 the first 2 and all 5 keys.
        let lo = [0, 0, 0, 0], hi = [3, 5, 11, 20], positions = Array(10..<(10 + keys))
        var acc = [Float](repeating: 9, count: rows * d), rowMax = [Float](repeating: 9, count: rows)
        var rowSum = rowMax
        let sink: Float = 0.75
        LocalAttention.resetForwardState(heads: 1, rows: rows, headDim: d, acc: &acc, rowMax: &rowMax, rowSum: &rowSum, sinks: [sink])
        kernels.forwardAccumulate(queryHeads: 1, group: 1, q: q, queryRows: rows, queryLo: lo, queryHi: hi, k: k, v: v,
                                  keyRows: keys, keyPositions: positions, acc: &acc, rowMax: &rowMax, rowSum: &rowSum)
        var out = [Float](repeating: .nan, count: rows * d), lse = [Float](repeating: .nan, count: rows)
        LocalAttention.finishForward(heads: 1, rows: rows, headDim: d, acc: acc, rowMax: rowMax, rowSum: rowSum, out: &out, lse: &lse)
        for row in [0, 1] {
            XCTAssertEqual(lse[row], sink, "a sink-only row's lse is the sink")
            XCTAssertEqual(Array(out[(row * d)..<((row + 1) * d)]), [Float](repeating: 0, count: d), "a sink-only row's out is 0")
        }
        // The rows that see keys: lse = log(Σ e^x + e^s), out the sink-diluted average.
        for (row, count) in [(2, 2), (3, 5)] {
            var logits = [Double]()
            for j in 0..<count {
                var dot = 0.0
                for c in 0..<d { dot += Double(q[row * d + c]) * Double(k[j * d + c]) }
                logits.append(0.5 * dot)
            }
            let total = logits.reduce(exp(Double(sink))) { $0 + exp($1) }
            XCTAssertEqual(Double(lse[row]), log(total), accuracy: 1e-5)
            for c in 0..<d {
                let want = zip(logits, 0..<count).reduce(0.0) { $0 + exp($1.0) / total * Double(v[$1.1 * d + c]) }
                XCTAssertEqual(Double(out[row * d + c]), want, accuracy: 1e-6)
            }
        }
    }

    /// The library's backward against central differences of its own fp32
    /// forward (2 ranks, causal zigzag, GQA, window), for L = Σ out·w:
    /// dL/ds_h for every head, and the directional derivative along a random
    /// direction of q (through the cap's tanh) and of k.
    func testFiniteDifferences() throws {
        var p = Problem()
        p.heads = 4; p.kvHeads = 2; p.causal = true; p.distribution = .zigzag; p.window = (9, -1)
        p.counts = [20, 20]; p.headDim = 16
        p.inputScale = 2
        p.sinks = Self.sinks(4); p.softcap = 1.5
        let inputs = p.inputs
        let w = inputs.dout
        /// L = Σ out·w in Double over every rank, for global canonical q, k and sinks.
        func loss(q: [Double], k: [Double], sinks: [Float]) -> Double {
            var c = p
            c.sinks = sinks
            let results = runRanks(c.ranks) { rank, transport -> [Float] in
                let context = AttentionContext(transport: transport, defaultThreads: 1)
                let plan = try! context.makePlan(.success(c.config(rank: rank)))
                let qs = c.shard(q, rank: rank, heads: c.heads), ks = c.shard(k, rank: rank, heads: c.hkv)
                let vs = c.shard(inputs.v, rank: rank, heads: c.hkv)
                var out = [Float](repeating: 0, count: qs.count)
                try! plan.forward(q: qs, k: ks, v: vs, out: &out, lse: nil)
                return out
            }
            let out = c.unshard(results, heads: c.heads)
            return zip(out, w).reduce(0) { $0 + $1.0 * $1.1 }
        }
        let results = runProblem(p)
        for r in results { if let e = r.error { throw e } }
        let dq = p.unshard(results.map(\.dq), heads: p.heads), dk = p.unshard(results.map(\.dk), heads: p.hkv)
        var dsinks = [Double](repeating: 0, count: p.heads)
        for r in results { for h in 0..<p.heads { dsinks[h] += Double(r.dsinks[h]) } }

        let sinks = p.sinks!, h = 1e-2
        for head in 0..<p.heads {
            var plus = sinks, minus = sinks
            plus[head] += Float(h); minus[head] -= Float(h)
            let step = Double(plus[head]) - Double(minus[head])
            let numeric = (loss(q: inputs.q, k: inputs.k, sinks: plus) - loss(q: inputs.q, k: inputs.k, sinks: minus)) / step
            XCTAssertEqual(dsinks[head], numeric, accuracy: 2e-3 * max(abs(numeric), 0.1), "d sinks[\(head)] vs central difference")
        }
        for (name, base, grad, isQuery) in [("q", inputs.q, dq, true), ("k", inputs.k, dk, false)] {
            let direction = randomTensor(base.count, seed: isQuery ? 77 : 78)
            let eps = 1e-3
            let plus = zip(base, direction).map { $0 + eps * $1 }, minus = zip(base, direction).map { $0 - eps * $1 }
            let numeric = isQuery
                ? (loss(q: plus, k: inputs.k, sinks: sinks) - loss(q: minus, k: inputs.k, sinks: sinks)) / (2 * eps)
                : (loss(q: inputs.q, k: plus, sinks: sinks) - loss(q: inputs.q, k: minus, sinks: sinks)) / (2 * eps)
            let analytic = zip(grad, direction).reduce(0) { $0 + $1.0 * $1.1 }
            XCTAssertEqual(analytic, numeric, accuracy: 2e-3 * max(abs(numeric), 0.1), "d\(name) · u vs central difference (softcap's derivative)")
        }
    }

    /// Every pattern computes d sinks from the same D of the rank's own rows
    /// (the backward's rowDot over the out and dout it is given) and the lse
    /// it is given, so for the same inputs the partials agree bit for bit.
    func testSinkGradientSameBitsEveryPattern() {
        var p = Problem()
        p.counts = [17, 15, 16]; p.heads = 6; p.kvHeads = 3; p.causal = true; p.batch = 2
        p.sinks = Self.sinks(6); p.softcap = 3
        let forward = runProblem(p, backward: false)   // BURST's out and lse, given to every pattern
        let inputs = p.inputs
        var partials: [[[Float]]] = []
        for pattern in [AttentionConfig.Pattern.burst, .ring, .allgather, .ulysses] {
            var c = p
            c.pattern = pattern
            partials.append(runRanks(c.ranks) { rank, transport -> [Float] in
                do {
                    let plan = try AttentionContext(transport: transport, defaultThreads: 1).makePlan(.success(c.config(rank: rank)))
                    let q = c.shard(inputs.q, rank: rank, heads: c.heads), k = c.shard(inputs.k, rank: rank, heads: c.hkv)
                    let v = c.shard(inputs.v, rank: rank, heads: c.hkv), dO = c.shard(inputs.dout, rank: rank, heads: c.heads)
                    var dq = [Float](repeating: 0, count: q.count), dk = [Float](repeating: 0, count: k.count), dv = dk
                    try plan.backward(q: q, k: k, v: v, out: forward[rank].out, lse: forward[rank].lse, dout: dO,
                                      dq: &dq, dk: &dk, dv: &dv)
                    return try plan.sinksGradient()
                } catch {
                    XCTFail("rank \(rank) \(pattern): \(error)")
                    return []
                }
            })
        }
        for (i, other) in partials.enumerated().dropFirst() { XCTAssertEqual(other, partials[0], "pattern \(i) vs BURST") }
        XCTAssertEqual(partials[0].count, 3)
    }

    /// Sinks replaced between calls (setSinks) are what the next calls use;
    /// removing them gives plain attention; the gradient follows.
    func testSetSinksBetweenCalls() throws {
        var p = Problem()
        p.counts = [13, 11, 12]; p.heads = 3; p.kvHeads = 3; p.causal = true; p.pattern = .ring
        p.sinks = Self.sinks(3)
        let inputs = p.inputs
        let replaced: [Float] = [-2, 0.25, 1]
        let results = runRanks(p.ranks) { (rank: Int, transport: LoopbackTransport) -> [RankResult] in
            do {
            let context = AttentionContext(transport: transport, defaultThreads: 1)
            let plan = try context.makePlan(.success(p.config(rank: rank)))
            let q = p.shard(inputs.q, rank: rank, heads: p.heads), k = p.shard(inputs.k, rank: rank, heads: p.hkv)
            let v = p.shard(inputs.v, rank: rank, heads: p.hkv), dO = p.shard(inputs.dout, rank: rank, heads: p.heads)
            var runs = [RankResult]()
            for sinks in [p.sinks, replaced, nil] {
                try plan.setSinks(sinks)
                var r = RankResult()
                r.out = [Float](repeating: 0, count: q.count); r.lse = [Float](repeating: 0, count: p.z * p.rankCounts[rank])
                try plan.forward(q: q, k: k, v: v, out: &r.out, lse: &r.lse)
                r.dq = [Float](repeating: 0, count: q.count); r.dk = [Float](repeating: 0, count: k.count); r.dv = r.dk
                try plan.backward(q: q, k: k, v: v, out: r.out, lse: r.lse, dout: dO, dq: &r.dq, dk: &r.dk, dv: &r.dv)
                if sinks != nil { r.dsinks = try plan.sinksGradient() }
                else { XCTAssertThrowsError(try plan.sinksGradient(), "no sinks: no sink gradient") }
                runs.append(r)
            }
            return runs
            } catch {
                XCTFail("rank \(rank): \(error)")
                return []
            }
        }
        for (i, sinks) in [p.sinks, replaced, nil].enumerated() {
            var c = p
            c.sinks = sinks
            assertWithinTolerance(c, referenceErrors(c, results.map { $0[i] }))
        }
    }

    /// An empty shard with a huge batch (2^33 × 2 heads, no token) and sinks:
    /// the forward and backward return at once (the fuzzer's case: setting
    /// the sink state looped over batch × heads).
    func testEmptyShardHugeBatch() throws {
        var c = AttentionConfig()
        c.batch = 1 << 33; c.seqLenLocal = 0; c.numHeadsQ = 2; c.numHeadsKV = 1; c.headDim = 4
        c.pattern = AttentionConfig.Pattern.allgather.rawValue; c.sinks = [-2.25, -3.75]; c.softcap = 10_000
        c.timeoutSeconds = 60
        for pattern in [AttentionConfig.Pattern.burst, .ring, .allgather, .ulysses] {
            c.pattern = pattern.rawValue
            let outcomes = runRanks(2) { _, transport -> String? in
                do {
                    let plan = try AttentionContext(transport: transport, defaultThreads: 1).makePlan(.success(c))
                    let start = Date()
                    try plan.forward(q: nil, k: nil, v: nil, out: nil, lse: nil)
                    try plan.backward(q: nil, k: nil, v: nil, out: nil, lse: nil, dout: nil, dq: nil, dk: nil, dv: nil)
                    let seconds = Date().timeIntervalSince(start)
                    XCTAssertEqual(try plan.sinksGradient(), [0, 0], "no rows: a zero partial")
                    return seconds < 10 ? nil : "took \(seconds) s"
                } catch let e as BurstError {
                    // ULYSSES may refuse the shape (1 kv head on 2 ranks): a clear error is fine.
                    return pattern == .ulysses && e.status == .unsupported ? nil : "\(e)"
                } catch { return "\(error)" }
            }
            for (rank, outcome) in outcomes.enumerated() { XCTAssertNil(outcome, "rank \(rank) \(pattern)") }
        }
    }

    /// Config checks on one rank (INVALID_ARGUMENT naming the field).
    func testValidation() {
        var c = Problem().config(rank: 0)
        for cap: Float in [-1, .nan, .infinity, -.infinity] {
            c.softcap = cap
            XCTAssertThrowsError(try c.validate(), "softcap \(cap)") { error in
                XCTAssertEqual((error as? BurstError)?.status, .invalidArgument)
                XCTAssertTrue((error as? BurstError)?.message.contains("softcap") ?? false)
            }
        }
        c.softcap = 0
        for bad in [[Float.nan, 0], [0, Float.infinity], [0]] {
            c.sinks = bad
            XCTAssertThrowsError(try c.validate(), "sinks \(bad)") { error in
                XCTAssertEqual((error as? BurstError)?.status, .invalidArgument)
                XCTAssertTrue((error as? BurstError)?.message.contains("sinks") ?? false)
            }
        }
        c.sinks = [1, 2]
        XCTAssertNoThrow(try c.validate())
    }

    /// Ranks that disagree — on softcap or sinks at plan creation, or on the
    /// sinks set later — all get MISMATCH; a NaN set on one rank fails the
    /// next call on every rank (INVALID_ARGUMENT), and valid values heal it;
    /// a failed backward leaves no sink gradient behind.
    func testDisagreementAndBadSinksFailEverywhere() {
        var p = Problem()
        p.counts = [6, 7, 5]; p.heads = 2; p.kvHeads = 2
        p.sinks = [0.5, -0.5]
        for (field, change) in [("softcap", { (c: inout AttentionConfig) in c.softcap = 3 }),
                                ("sinks", { (c: inout AttentionConfig) in c.sinks = [0.5, -0.25] })] {
            let statuses = runRanks(p.ranks) { rank, transport -> (Status?, String) in
                var c = p.config(rank: rank)
                if rank == 1 { change(&c) }
                do { _ = try AttentionContext(transport: transport, defaultThreads: 1).makePlan(.success(c)); return (nil, "") }
                catch let e as BurstError { return (e.status, e.message) } catch { return (.internalError, "") }
            }
            for (rank, (status, message)) in statuses.enumerated() {
                XCTAssertEqual(status, .mismatch, "\(field) differs: rank \(rank)")
                XCTAssertTrue(message.contains(field), "rank \(rank) names \(field): \(message)")
            }
        }
        let inputs = p.inputs
        let outcomes = runRanks(p.ranks) { rank, transport -> [Status?] in
            let plan = try! AttentionContext(transport: transport, defaultThreads: 1).makePlan(.success(p.config(rank: rank)))
            let q = p.shard(inputs.q, rank: rank, heads: 2), k = p.shard(inputs.k, rank: rank, heads: 2)
            var out = [Float](repeating: 0, count: q.count), lse = [Float](repeating: 0, count: 2 * p.rankCounts[rank])
            func forward() -> Status? {
                do { try plan.forward(q: q, k: k, v: k, out: &out, lse: &lse); return nil }
                catch let e as BurstError { return e.status } catch { return .internalError }
            }
            var seen = [Status?]()
            // 1: a NaN on rank 2 only.
            if rank == 2 { seen.append((try? plan.setSinks([.nan, 0])) == nil ? .invalidArgument : nil) } else { seen.append(nil) }
            seen.append(forward())
            // 2: valid but different values on rank 0.
            try! plan.setSinks(rank == 0 ? [1, 1] : [0.5, -0.5])
            seen.append(forward())
            // 3: the same again: works; then a backward that fails on rank 1 (NULL dq) clears the gradient.
            try! plan.setSinks([0.5, -0.5])
            seen.append(forward())
            var dq = [Float](repeating: 0, count: q.count), dk = dq, dv = dq
            do {
                try plan.backward(q: q, k: k, v: k, out: out, lse: lse, dout: q, dq: &dq, dk: &dk, dv: &dv)
                seen.append((try? plan.sinksGradient()) == nil ? .internalError : nil)
            } catch { seen.append(.internalError) }
            do {
                try q.withUnsafeBufferPointer { qb in
                    try dq.withUnsafeMutableBytes { dqb in
                        try plan.backward(q: qb.baseAddress, k: k, v: k, out: out, lse: lse, dout: q,
                                          dq: rank == 1 ? nil : dqb.baseAddress, dk: &dk, dv: &dv)
                    }
                }
                seen.append(nil)
            } catch let e as BurstError { seen.append(e.status) } catch { seen.append(.internalError) }
            seen.append((try? plan.sinksGradient()) == nil ? .invalidArgument : nil)
            return seen
        }
        for (rank, seen) in outcomes.enumerated() {
            XCTAssertEqual(seen[0], rank == 2 ? .invalidArgument : nil, "rank \(rank): setSinks(NaN) refused where called")
            XCTAssertEqual(seen[1], .invalidArgument, "rank \(rank): the next call fails on every rank")
            XCTAssertEqual(seen[2], .mismatch, "rank \(rank): differing sinks")
            XCTAssertEqual(seen[3], nil, "rank \(rank): agreeing sinks work again")
            XCTAssertEqual(seen[4], nil, "rank \(rank): backward and its sink gradient")
            XCTAssertEqual(seen[5], .invalidArgument, "rank \(rank): a NULL dq on rank 1 fails the backward everywhere")
            XCTAssertEqual(seen[6], .invalidArgument, "rank \(rank): no sink gradient after a failed backward")
        }
    }
}
