import XCTest
@testable import GlobalAttention
@testable import LocalAttention

/// BURST_PATTERN_ALLGATHER and BURST_PATTERN_ULYSSES: forward and backward
/// against the float64 reference over 1–8 loopback ranks, bytes per rank
/// against the documented formulas, the ULYSSES shape check, and bitwise
/// reproducibility.
final class CollectivePatternTests: XCTestCase {
    /// One case of the sweep: what a Problem gets on top of its world size.
    struct Case {
        var name: String
        var causal = false
        var window = (left: -1, right: -1)
        var distribution: AttentionConfig.Distribution = .contiguous
        var varlen = false
        var uneven = false
        var batch = 1
        var layout: AttentionConfig.Layout = .bshd
        /// Query heads per kv head, kv heads per rank (ULYSSES) or in all (ALLGATHER).
        var group = 1, kvHeads = 2
    }

    static let cases: [Case] = [
        Case(name: "no mask"),
        Case(name: "causal", causal: true),
        Case(name: "causal window", causal: true, window: (5, 0)),
        Case(name: "window both sides", window: (3, 7), layout: .bhsd),
        Case(name: "gqa", causal: true, group: 2, kvHeads: 2),
        Case(name: "mqa", causal: true, group: 4, kvHeads: 1),
        Case(name: "batch 2", causal: true, batch: 2, layout: .bhsd),
        Case(name: "zigzag", causal: true, distribution: .zigzag),
        Case(name: "striped window", causal: true, window: (6, 0), distribution: .striped, layout: .bhsd),
        Case(name: "varlen", causal: true, varlen: true),
        Case(name: "varlen zigzag window", window: (4, 2), distribution: .zigzag, varlen: true, batch: 2),
        Case(name: "uneven", uneven: true),
        Case(name: "uneven causal gqa", causal: true, uneven: true, layout: .bhsd, group: 2, kvHeads: 1),
    ]

    /// The problem of `c` on `ranks` ranks. ULYSSES gets kvHeads·P kv heads
    /// (its heads must divide by P); ALLGATHER keeps them as given.
    static func problem(_ c: Case, ranks: Int, pattern: AttentionConfig.Pattern, seed: UInt64) -> Problem {
        var p = Problem()
        p.pattern = pattern
        let total = [37, 29, 45, 52][Int(seed % 4)]
        p.counts = c.uneven ? unevenCounts(total: total, ranks: ranks)
            : [Int](repeating: total / ranks, count: ranks - 1) + [total - total / ranks * (ranks - 1)]
        p.causal = c.causal
        p.window = c.window
        p.distribution = c.distribution
        p.cuSeqlens = c.varlen ? [0, 5, 5, total / 2, total - 1, total] : nil
        p.batch = c.batch
        p.layout = c.layout
        let kv = pattern == .ulysses ? c.kvHeads * ranks : c.kvHeads
        p.kvHeads = kv
        p.heads = kv * c.group
        p.headDim = 8
        p.seed = seed
        return p
    }

    func sweep(_ pattern: AttentionConfig.Pattern) {
        var seed: UInt64 = 0
        for ranks in 1...8 {
            for c in Self.cases {
                seed += 1
                let p = Self.problem(c, ranks: ranks, pattern: pattern, seed: seed)
                // Every other case with 8 × 8 tiles, so that tiles inside a block are skipped too.
                let smallTiles = seed % 2 == 1
                if smallTiles { setenv("BURST_TILE_Q", "8", 1); setenv("BURST_TILE_K", "8", 1) }
                let results = runProblem(p)
                if smallTiles { unsetenv("BURST_TILE_Q"); unsetenv("BURST_TILE_K") }
                assertWithinTolerance(p, referenceErrors(p, results))
                checkBytes(p, results)
                checkTiles(p, results, tile: smallTiles ? (8, 8) : (256, 128))
            }
        }
    }

    func testAllgatherSweep() { sweep(.allgather) }
    func testUlyssesSweep() { sweep(.ulysses) }

    /// Where every rank's tokens are, as the plan sees them.
    func layout(_ p: Problem) -> TokenLayout {
        TokenLayout(distribution: p.tokenDistribution, counts: p.rankCounts, rule: p.config(rank: 0).visibilityRule)
    }

    /// burst_stats bytes equal the pattern's formula on every rank, and the
    /// formula equals the rule written out independently (brute-force
    /// visibility for ALLGATHER). Steps and tiles add up to a dense schedule.
    func checkBytes(_ p: Problem, _ results: [RankResult], file: StaticString = #filePath, line: UInt = #line) {
        guard results.allSatisfy({ $0.error == nil }) else { return }
        let tokens = layout(p), P = p.ranks, counts = p.rankCounts, d = p.headDim
        let needs = bruteForceNeeds(p)
        for (r, result) in results.enumerated() {
            for backward in [false, true] {
                let stats = backward ? result.backwardStats : result.forwardStats
                let formula = p.pattern == .allgather
                    ? AttentionPlan.allgatherBytes(tokens: tokens, rank: r, zq: p.z, zkv: p.zkv, headDim: d, backward: backward)
                    : AttentionPlan.ulyssesBytes(tokens: tokens, rank: r, zq: p.z, zkv: p.zkv, headDim: d, backward: backward)
                let what = "\(backward ? "backward" : "forward") rank \(r) — \(p.label)"
                XCTAssertEqual(stats.bytesSent, formula.sent, "bytes sent, \(what)", file: file, line: line)
                XCTAssertEqual(stats.bytesReceived, formula.received, "bytes received, \(what)", file: file, line: line)

                var sent = 0, received = 0, messages = 0
                if p.pattern == .allgather {
                    let block = { (j: Int) in 2 * p.zkv * counts[j] * d * 4 }
                    for j in 0..<P where j != r {
                        if needs[j][r] { sent += block(r); messages += 1 }
                        if needs[r][j] { received += block(j) }
                        if backward {
                            if needs[r][j] { sent += block(j); messages += 1 }
                            if needs[j][r] { received += block(r) }
                        }
                    }
                    XCTAssertEqual(stats.stepsComputed + stats.stepsSkipped, UInt64(P), "steps, \(what)", file: file, line: line)
                } else {
                    // Per token: q|k|v there and O|lse back (forward); q|k|v|dO|D|lse there, dq|dk|dv back.
                    let zq = p.z / P, zkv = p.zkv / P
                    let there = backward ? zq * (2 * d + 2) + 2 * zkv * d : (zq + 2 * zkv) * d
                    let back = backward ? (zq + 2 * zkv) * d : zq * (d + 1)
                    for j in 0..<P where j != r {
                        if counts[r] > 0 { sent += 4 * there * counts[r]; received += 4 * back * counts[r]; messages += 1 }
                        if counts[j] > 0 { sent += 4 * back * counts[j]; received += 4 * there * counts[j]; messages += 1 }
                    }
                }
                XCTAssertEqual(formula.sent, UInt64(sent), "formula sent, \(what)", file: file, line: line)
                XCTAssertEqual(formula.received, UInt64(received), "formula received, \(what)", file: file, line: line)
                XCTAssertEqual(stats.messagesSent, UInt64(messages), "messages, \(what)", file: file, line: line)
            }
        }
    }

    /// Tiles computed plus skipped equal what a dense schedule computes:
    /// ALLGATHER this rank's queries against every block, ULYSSES the whole
    /// sequence for the local heads (one step).
    func checkTiles(_ p: Problem, _ results: [RankResult], tile: (q: Int, k: Int),
                    file: StaticString = #filePath, line: UInt = #line) {
        guard results.allSatisfy({ $0.error == nil }) else { return }
        let counts = p.rankCounts, N = p.total
        func dense(_ heads: Int, _ nq: Int, _ nk: Int) -> UInt64 {
            UInt64(heads * ((nq + tile.q - 1) / tile.q) * ((nk + tile.k - 1) / tile.k))
        }
        for (r, result) in results.enumerated() {
            let expected = p.pattern == .allgather
                ? counts.reduce(UInt64(0)) { $0 + dense(p.z, counts[r], $1) }
                : dense(p.z / p.ranks, N, N)
            for stats in [result.forwardStats, result.backwardStats] {
                XCTAssertEqual(stats.tilesComputed + stats.tilesSkipped, expected, "tiles, rank \(r) — \(p.label)", file: file, line: line)
                if p.pattern == .ulysses {
                    XCTAssertEqual(stats.stepsComputed, N > 0 ? 1 : 0, "steps, rank \(r) — \(p.label)", file: file, line: line)
                }
            }
        }
    }

    /// The closed forms of the doc comments, equal shards and no mask.
    func testClosedFormsForEqualShards() {
        for P in [1, 2, 3, 4, 6] {
            for (hq, hkv) in [(6, 6), (6, 3)] {
                var p = Problem()
                p.counts = [Int](repeating: 7, count: P)
                p.heads = hq
                p.kvHeads = hkv
                p.batch = 2
                let tokens = layout(p), n = 7, d = p.headDim
                for r in 0..<P {
                    let fwd = AttentionPlan.allgatherBytes(tokens: tokens, rank: r, zq: p.z, zkv: p.zkv, headDim: d, backward: false)
                    let bwd = AttentionPlan.allgatherBytes(tokens: tokens, rank: r, zq: p.z, zkv: p.zkv, headDim: d, backward: true)
                    XCTAssertEqual(fwd.sent, UInt64(4 * (P - 1) * 2 * p.zkv * n * d))
                    XCTAssertEqual(fwd.received, fwd.sent)
                    XCTAssertEqual(bwd.sent, UInt64(4 * (P - 1) * 4 * p.zkv * n * d))
                    XCTAssertEqual(bwd.received, bwd.sent)
                    guard hkv % P == 0 else { continue }
                    // ULYSSES: (P−1)/P·n·(zq(2d+1) + 2zkv·d) and (P−1)/P·n·(zq(3d+2) + 4zkv·d) floats each way.
                    let uf = AttentionPlan.ulyssesBytes(tokens: tokens, rank: r, zq: p.z, zkv: p.zkv, headDim: d, backward: false)
                    let ub = AttentionPlan.ulyssesBytes(tokens: tokens, rank: r, zq: p.z, zkv: p.zkv, headDim: d, backward: true)
                    XCTAssertEqual(uf.sent, UInt64(4 * (P - 1) * n * (p.z * (2 * d + 1) + 2 * p.zkv * d) / P), "P=\(P) \(hq)/\(hkv)")
                    XCTAssertEqual(uf.received, uf.sent)
                    XCTAssertEqual(ub.sent, UInt64(4 * (P - 1) * n * (p.z * (3 * d + 2) + 4 * p.zkv * d) / P), "P=\(P) \(hq)/\(hkv)")
                    XCTAssertEqual(ub.received, ub.sent)
                }
            }
        }
    }

    /// Exact bytes on shapes the sweep does not have: empty ranks in odd
    /// places, a window that hides whole blocks, more heads, d = 16.
    func testBytesOnAwkwardShapes() {
        let shapes: [(counts: [Int], causal: Bool, window: (Int, Int), heads: (Int, Int))] = [
            ([4, 0, 1, 9], true, (-1, -1), (8, 4)),
            ([0, 0, 5, 3], false, (-1, -1), (8, 4)),
            ([7, 0, 0, 2], true, (2, 0), (4, 4)),
            ([6, 6, 6, 6], false, (1, 1), (4, 4)),   // a window narrower than a shard: far blocks are never sent
            ([3, 5], false, (0, 0), (2, 2)),
        ]
        for pattern in [AttentionConfig.Pattern.allgather, .ulysses] {
            for (counts, causal, window, heads) in shapes {
                var p = Problem()
                p.pattern = pattern
                p.counts = counts
                p.causal = causal
                p.window = window
                p.heads = heads.0
                p.kvHeads = heads.1
                p.headDim = 16
                let results = runProblem(p)
                assertWithinTolerance(p, referenceErrors(p, results))
                checkBytes(p, results)
            }
        }
        // The narrow window: rank 0's block reaches rank 1 only.
        var p = Problem()
        p.pattern = .allgather
        p.counts = [6, 6, 6, 6]
        p.window = (1, 1)
        let r = runProblem(p, backward: false)
        XCTAssertEqual(r[0].forwardStats.bytesSent, UInt64(2 * p.zkv * 6 * p.headDim * 4))
        XCTAssertEqual(r[0].forwardStats.stepsComputed, 2)
        XCTAssertEqual(r[0].forwardStats.stepsSkipped, 2)
    }

    /// Logits of about 1e4 stay finite and within fp32 rounding.
    func testLargeLogits() {
        for pattern in [AttentionConfig.Pattern.allgather, .ulysses] {
            var p = Problem()
            p.pattern = pattern
            p.counts = [20, 13, 7]
            p.heads = 3
            p.kvHeads = 3
            p.inputScale = 25   // q·k up to ~ 16·625 = 1e4
            p.scale = 1
            p.causal = true
            let results = runProblem(p, backward: false)
            for r in results { XCTAssertTrue(r.out.allSatisfy(\.isFinite)); XCTAssertTrue(r.lse.allSatisfy(\.isFinite)) }
            let e = referenceErrors(p, results)
            XCTAssertLessThanOrEqual(e.out, 1e-5 * e.outScale, "\(pattern)")
            XCTAssertLessThanOrEqual(e.lse, 4e-7 * 2e4, "\(pattern)")
        }
    }

    /// ULYSSES refuses heads that do not split over the ranks, at plan
    /// creation, on every rank, naming the condition and the numbers.
    func testUlyssesHeadsNotDivisibleIsUnsupported() {
        for (ranks, hq, hkv) in [(2, 3, 3), (4, 4, 2), (3, 6, 2), (8, 8, 1)] {
            var p = Problem()
            p.pattern = .ulysses
            p.counts = [Int](repeating: 4, count: ranks)
            p.heads = hq
            p.kvHeads = hkv
            let outcomes = runRanks(ranks) { rank, transport -> BurstError? in
                do {
                    _ = try AttentionContext(transport: transport, defaultThreads: 1).makePlan(.success(p.config(rank: rank)))
                    return nil
                } catch let e as BurstError { return e } catch { return BurstError(.internalError, "\(error)") }
            }
            for (rank, error) in outcomes.enumerated() {
                XCTAssertEqual(error?.status, .unsupported, "P=\(ranks) \(hq)/\(hkv) rank \(rank)")
                let message = error?.message ?? ""
                XCTAssertTrue(message.contains("BURST_PATTERN_ULYSSES") && message.contains("num_heads_kv (\(hkv))")
                              && message.contains("number of ranks (\(ranks))"), "rank \(rank): \(message)")
            }
        }
    }

    /// Same problem, same world size: identical bits, run after run (and
    /// with two compute threads per rank).
    func testBitwiseReproducible() {
        for pattern in [AttentionConfig.Pattern.allgather, .ulysses] {
            for threads: Int32 in [1, 2] {
                var p = Problem()
                p.pattern = pattern
                p.counts = [17, 9, 21, 12]
                p.heads = 8
                p.kvHeads = 4
                p.causal = true
                p.distribution = .contiguous
                p.threads = threads
                setenv("BURST_TILE_Q", "8", 1); setenv("BURST_TILE_K", "8", 1)
                let first = runProblem(p), second = runProblem(p)
                unsetenv("BURST_TILE_Q"); unsetenv("BURST_TILE_K")
                assertWithinTolerance(p, referenceErrors(p, first))
                func bits(_ r: RankResult) -> [[UInt32]] { [r.out, r.lse, r.dq, r.dk, r.dv].map { $0.map(\.bitPattern) } }
                for rank in 0..<p.ranks {
                    XCTAssertNil(first[rank].error)
                    XCTAssertEqual(bits(first[rank]), bits(second[rank]), "\(pattern) threads \(threads) rank \(rank)")
                }
            }
        }
    }

    /// A plan keeps its workspace: a second call on the same plan gives the
    /// same result as the first (nothing left over from the last call).
    func testRepeatedCallsOnOnePlan() {
        for pattern in [AttentionConfig.Pattern.allgather, .ulysses] {
            var p = Problem()
            p.pattern = pattern
            p.counts = [5, 0, 9]
            p.heads = 3
            p.kvHeads = 3
            p.causal = true
            let inputs = p.inputs
            let outs = runRanks(p.ranks) { rank, transport -> [[UInt32]] in
                do {
                    let plan = try AttentionContext(transport: transport, defaultThreads: 1).makePlan(.success(p.config(rank: rank)))
                    let qs = p.shard(inputs.q, rank: rank, heads: p.heads), ks = p.shard(inputs.k, rank: rank, heads: p.hkv)
                    let vs = p.shard(inputs.v, rank: rank, heads: p.hkv), dos = p.shard(inputs.dout, rank: rank, heads: p.heads)
                    var runs: [[UInt32]] = []
                    for _ in 0..<2 {
                        var out = [Float](repeating: 0, count: qs.count), lse = [Float](repeating: 0, count: p.z * p.rankCounts[rank])
                        var dq = out, dk = [Float](repeating: 0, count: ks.count), dv = dk
                        try plan.forward(q: qs, k: ks, v: vs, out: &out, lse: &lse)
                        try plan.backward(q: qs, k: ks, v: vs, out: out, lse: lse, dout: dos, dq: &dq, dk: &dk, dv: &dv)
                        runs.append((out + lse + dq + dk + dv).map(\.bitPattern))
                    }
                    return runs
                } catch { return [[1], [2]] }
            }
            for (rank, runs) in outs.enumerated() { XCTAssertEqual(runs[0], runs[1], "\(pattern) rank \(rank)") }
        }
    }
}
