import Foundation
import XCTest
@testable import GlobalAttention
@testable import LocalAttention

/// Which rank's queries see which rank's keys, by brute force over the
/// reference mask (independent of TokenLayout's sweep).
func bruteForceNeeds(_ p: Problem) -> [[Bool]] {
    let mask = p.reference.mask
    let positions = (0..<p.ranks).map { p.positions(rank: $0) }
    return positions.map { queries in
        positions.map { keys in queries.contains { i in keys.contains { j in mask.visible(i, j) } } }
    }
}

/// Bytes (sent, received) per rank of forward and backward, from the
/// schedule's rules written out directly (docs/patterns.md, "bytes per call").
func expectedBytes(_ p: Problem) -> (fwdSent: [UInt64], fwdRecv: [UInt64], bwdSent: [UInt64], bwdRecv: [UInt64]) {
    let P = p.ranks, counts = p.rankCounts, d = p.headDim
    let needs = bruteForceNeeds(p)
    var fs = [UInt64](repeating: 0, count: P), fr = fs, bs = fs, br = fs
    for source in 0..<P {
        // Forward: block `source` goes hop by hop up to the last rank on its path that needs it.
        let last = (1..<max(P, 1)).last { needs[(source + $0) % P][source] } ?? 0
        for hop in 0..<last {
            let bytes = UInt64(2 * p.zkv * counts[source] * d * 4)
            fs[(source + hop) % P] += bytes
            fr[(source + hop + 1) % P] += bytes
        }
    }
    for owner in 0..<P {
        // Backward: owner's bundle goes as far as the last rank that needs it, then dQ goes home.
        let last = counts[owner] == 0 ? 0 : ((1..<max(P, 1)).last { needs[owner][(owner + $0) % P] } ?? 0)
        let bundle = UInt64(p.z * counts[owner] * (2 * d + 2) * 4), dq = UInt64(p.z * counts[owner] * d * 4)
        for t in 0..<last {
            bs[(owner + t) % P] += bundle + dq
            br[(owner + t + 1) % P] += bundle + dq
        }
        if last >= 1 {
            bs[(owner + last) % P] += dq
            br[owner] += dq
        }
    }
    return (fs, fr, bs, br)
}

final class TokenDistributionTests: XCTestCase {
    /// Each rule against its definition token by token.
    func testRulesMatchTheirDefinitions() {
        for P in 1...6 {
            for N in 0...45 {
                for cu in [nil, [0, N], [0, N / 3, N / 3, N]] as [[Int]?] {
                    // Zigzag, one piece at a time: chunk boundaries by the remainder rule.
                    var zigzag = [Int](repeating: -1, count: N)
                    for (start, end) in (cu.map { c in (0..<(c.count - 1)).map { (c[$0], c[$0 + 1]) } } ?? [(0, N)]) {
                        let L = end - start
                        var offset = start
                        for c in 0..<(2 * P) {
                            let length = L / (2 * P) + (c < L % (2 * P) ? 1 : 0)
                            for t in offset..<(offset + length) { zigzag[t] = c < P ? c : 2 * P - 1 - c }
                            offset += length
                        }
                    }
                    for rank in 0..<P {
                        let z = TokenDistribution(kind: .zigzag, total: N, ranks: P, sequenceOffsets: cu)
                        XCTAssertEqual(z.positions(rank: rank), (0..<N).filter { zigzag[$0] == rank }, "zigzag N=\(N) P=\(P) cu=\(String(describing: cu))")
                        XCTAssertEqual(z.count(rank: rank), z.positions(rank: rank).count)
                        let s = TokenDistribution(kind: .striped, total: N, ranks: P, sequenceOffsets: cu)
                        XCTAssertEqual(s.positions(rank: rank), (0..<N).filter { $0 % P == rank })
                        XCTAssertEqual(s.count(rank: rank), s.positions(rank: rank).count)
                        let c = TokenDistribution(kind: .contiguous, total: N, ranks: P, sequenceOffsets: cu)
                        let sizes = (0..<P).map { N / P + ($0 < N % P ? 1 : 0) }
                        let start = sizes.prefix(rank).reduce(0, +)
                        XCTAssertEqual(c.positions(rank: rank), Array(start..<(start + sizes[rank])))
                    }
                }
            }
        }
    }

    /// The layout's needs matrix and visibility bounds agree with brute force.
    func testLayoutNeedsMatchBruteForce() {
        for dist in [AttentionConfig.Distribution.contiguous, .zigzag, .striped] {
            for (causal, window, cu) in [(true, (-1, -1), nil), (false, (2, 0), nil), (false, (-1, -1), [0, 4, 4, 11, 23]),
                                          (true, (3, -1), [0, 9, 23]), (false, (0, 1), [0, 1, 2, 23])] as [(Bool, (Int, Int), [Int]?)] {
                var p = Problem()
                p.counts = [3, 9, 0, 11]
                p.distribution = dist
                p.causal = causal
                p.window = window
                p.cuSeqlens = cu
                let rule = p.config(rank: 0).visibilityRule
                let layout = TokenLayout(distribution: p.tokenDistribution, counts: p.rankCounts, rule: rule)
                let needs = bruteForceNeeds(p)
                let mask = p.reference.mask
                for a in 0..<4 {
                    for b in 0..<4 { XCTAssertEqual(layout.needs(queryRank: a, keyRank: b), needs[a][b], "\(p.label) a=\(a) b=\(b)") }
                    for (i, position) in layout.positions[a].enumerated() {
                        for j in 0..<p.total {
                            XCTAssertEqual(j >= layout.lo[a][i] && j <= layout.hi[a][i], mask.visible(position, j))
                        }
                    }
                }
            }
        }
    }
}

final class VariantTests: XCTestCase {
    /// The whole product: world sizes 1–5 × distribution × mask × window ×
    /// (h_q, h_kv) × packing, odd lengths (contiguous with a 0-token rank),
    /// forward and backward against the float64 reference, bytes per rank
    /// against the schedule's rules and tiles against the dense count. Half of
    /// the cases run with 16 × 8 tiles so that tiles inside a block are
    /// skipped too, not only whole ring steps.
    func testSweep() {
        let windows = [(-1, -1), (5, 0), (3, 7)]
        let heads = [(4, 4), (4, 2), (4, 1)]
        var index = 0
        for ranks in 1...5 {
            for dist in [AttentionConfig.Distribution.contiguous, .zigzag, .striped] {
                for causal in [false, true] {
                    for window in windows {
                        for (hq, hkv) in heads {
                            for varlen in [false, true] {
                                index += 1
                                let total = [37, 53, 61, 29][index % 4]
                                var p = Problem()
                                p.counts = dist == .contiguous ? unevenCounts(total: total, ranks: ranks)
                                    : [Int](repeating: total / ranks, count: ranks - 1) + [total - total / ranks * (ranks - 1)]
                                p.distribution = dist
                                p.causal = causal
                                p.window = window
                                p.heads = hq
                                p.kvHeads = hkv
                                p.headDim = 8
                                p.batch = index % 3 == 0 ? 2 : 1
                                p.layout = index % 2 == 0 ? .bshd : .bhsd
                                p.cuSeqlens = varlen ? [0, 5, 5, total / 2, total - 1, total] : nil
                                p.seed = UInt64(index)
                                let smallTiles = index % 2 == 1
                                if smallTiles { setenv("BURST_TILE_Q", "16", 1); setenv("BURST_TILE_K", "8", 1) }
                                let results = runProblem(p)
                                if smallTiles { unsetenv("BURST_TILE_Q"); unsetenv("BURST_TILE_K") }
                                assertWithinTolerance(p, referenceErrors(p, results))
                                checkStats(p, results, tileQ: smallTiles ? 16 : 256, tileK: smallTiles ? 8 : 128)
                            }
                        }
                    }
                }
            }
        }
    }

    /// Longer sequences, several tiles per block, 2 threads: windows and
    /// packing skip tiles inside computed steps.
    func testLongerSequencesSkipTiles() {
        for (dist, causal, window, cu) in [(AttentionConfig.Distribution.zigzag, true, (-1, -1), nil),
                                            (.striped, true, (64, 0), nil),
                                            (.contiguous, false, (100, 20), nil),
                                            (.contiguous, true, (-1, -1), [0, 300, 301, 900, 1200]),
                                            (.zigzag, true, (200, 0), [0, 500, 1200])] as [(AttentionConfig.Distribution, Bool, (Int, Int), [Int]?)] {
            var p = Problem()
            p.counts = [400, 400, 400]
            p.distribution = dist
            p.causal = causal
            p.window = window
            p.cuSeqlens = cu
            p.heads = 4
            p.kvHeads = 2
            p.headDim = 32
            p.threads = 2
            let results = runProblem(p)
            assertWithinTolerance(p, referenceErrors(p, results))
            checkStats(p, results, tileQ: 256, tileK: 128)
            if window.0 >= 0 || cu != nil {
                XCTAssertTrue(results.contains { $0.forwardStats.tilesSkipped > 0 }, "no tile skipped — \(p.label)")
            }
        }
    }

    /// Causal zigzag and striped balance the computed tiles across ranks;
    /// contiguous does not.
    func testCausalBalance() {
        for dist in [AttentionConfig.Distribution.contiguous, .zigzag, .striped] {
            var p = Problem()
            p.counts = [1024, 1024, 1024, 1024]
            p.distribution = dist
            p.causal = true
            p.heads = 1
            p.headDim = 8
            setenv("BURST_TILE_Q", "32", 1); setenv("BURST_TILE_K", "32", 1)
            let results = runProblem(p, backward: false)
            unsetenv("BURST_TILE_Q"); unsetenv("BURST_TILE_K")
            let tiles = results.map { Double($0.forwardStats.tilesComputed) }
            let spread = tiles.max()! / tiles.min()!
            if dist == .contiguous {
                XCTAssertGreaterThan(spread, 3, "contiguous causal should be unbalanced: \(tiles)")
            } else {
                XCTAssertLessThan(spread, 1.1, "\(dist) causal tiles per rank \(tiles)")
            }
        }
    }

    func checkStats(_ p: Problem, _ results: [RankResult], tileQ: Int, tileK: Int,
                    file: StaticString = #filePath, line: UInt = #line) {
        guard results.allSatisfy({ $0.error == nil }) else { return }
        let bytes = expectedBytes(p)
        let counts = p.rankCounts
        func dense(_ nq: Int, _ nk: Int) -> UInt64 {
            nq == 0 || nk == 0 ? 0 : UInt64(p.z * ((nq + tileQ - 1) / tileQ) * ((nk + tileK - 1) / tileK))
        }
        for (r, result) in results.enumerated() {
            let f = result.forwardStats, b = result.backwardStats
            XCTAssertEqual(f.bytesSent, bytes.fwdSent[r], "forward bytes sent, rank \(r) — \(p.label)", file: file, line: line)
            XCTAssertEqual(f.bytesReceived, bytes.fwdRecv[r], "forward bytes received, rank \(r) — \(p.label)", file: file, line: line)
            XCTAssertEqual(b.bytesSent, bytes.bwdSent[r], "backward bytes sent, rank \(r) — \(p.label)", file: file, line: line)
            XCTAssertEqual(b.bytesReceived, bytes.bwdRecv[r], "backward bytes received, rank \(r) — \(p.label)", file: file, line: line)
            let forwardDense = (0..<p.ranks).reduce(UInt64(0)) { $0 + dense(counts[r], counts[$1]) }
            let backwardDense = (0..<p.ranks).reduce(UInt64(0)) { $0 + dense(counts[$1], counts[r]) }
            XCTAssertEqual(f.tilesComputed + f.tilesSkipped, forwardDense, "forward tiles, rank \(r) — \(p.label)", file: file, line: line)
            XCTAssertEqual(b.tilesComputed + b.tilesSkipped, backwardDense, "backward tiles, rank \(r) — \(p.label)", file: file, line: line)
            XCTAssertEqual(f.stepsComputed + f.stepsSkipped, UInt64(p.ranks), file: file, line: line)
            XCTAssertEqual(b.stepsComputed + b.stepsSkipped, UInt64(p.ranks), file: file, line: line)
        }
    }

    /// Bad combinations fail on every rank with the field named.
    func testBadCombinationsFailEverywhere() {
        func statuses(_ p: Problem, edit: @escaping (Int, inout AttentionConfig) -> Void) -> [(Status?, String)] {
            runRanks(p.ranks) { rank, transport in
                var c = p.config(rank: rank)
                edit(rank, &c)
                do {
                    _ = try AttentionContext(transport: transport, defaultThreads: 1).makePlan(.success(c))
                    return (nil, "")
                } catch let e as BurstError { return (e.status, e.message) } catch { return (.internalError, "\(error)") }
            }
        }
        var p = Problem()
        p.counts = [5, 6, 7]
        let cases: [(String, Status, String, (Int, inout AttentionConfig) -> Void)] = [
            ("cu_seqlens end", .invalidArgument, "cu_seqlens", { _, c in c.cuSeqlens = [0, 4, 17]; c.numSequences = 2 }),
            ("cu_seqlens decreasing", .invalidArgument, "cu_seqlens", { _, c in c.cuSeqlens = [0, 9, 4, 18]; c.numSequences = 3 }),
            ("cu_seqlens start", .invalidArgument, "cu_seqlens", { _, c in c.cuSeqlens = [1, 18]; c.numSequences = 1 }),
            ("cu_seqlens differ", .mismatch, "cu_seqlens", { r, c in c.cuSeqlens = [0, r == 1 ? 3 : 4, 18]; c.numSequences = 2 }),
            ("gqa", .invalidArgument, "num_heads_kv", { _, c in c.numHeadsQ = 6; c.numHeadsKV = 4 }),
            ("window", .invalidArgument, "window_left", { _, c in c.windowLeft = -3 }),
            ("window right", .invalidArgument, "window_right", { _, c in c.windowRight = -2 }),
            ("zigzag count", .invalidArgument, "seq_len_local", { _, c in c.distribution = 1 }),
            ("striped count", .invalidArgument, "seq_len_local", { _, c in c.distribution = 2 }),
        ]
        for (name, status, field, edit) in cases {
            for (rank, (got, message)) in statuses(p, edit: edit).enumerated() {
                XCTAssertEqual(got, status, "\(name) rank \(rank): \(message)")
                XCTAssertTrue(message.contains(field), "\(name) rank \(rank): message does not name \(field): \(message)")
            }
        }
    }
}
