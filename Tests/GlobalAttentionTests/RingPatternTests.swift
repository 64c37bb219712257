import Foundation
import XCTest
@testable import GlobalAttention
@testable import LocalAttention

/// Bytes (sent, received, sent to other groups) per rank of one ring pass,
/// from the route's rules written out directly: rank x = (g, i) holds the
/// block of (g − k/G, i − k mod G) at step k and got it from (g, i − 1), or
/// from (g − 1, i) at the first inner step; a block goes to x when x or a
/// rank fed by x needs it; a chain's accumulator goes from its first needing
/// rank (the owner for chain 0) to its last, then home.
func expectedRingBytes(_ p: Problem, groupSize G: Int, holderNeeds: (_ holder: Int, _ block: Int) -> Bool,
                       readOnly: (Int) -> Int, accumulator: ((Int) -> Int)?)
    -> (sent: [UInt64], received: [UInt64], sentInter: [UInt64]) {
    let P = p.ranks, Q = P / G
    func at(_ g: Int, _ i: Int) -> Int { (((g % Q) + Q) % Q) * G + ((i % G) + G) % G }
    func stepOf(_ x: Int, _ b: Int) -> Int { (((x / G - b / G) % Q + Q) % Q) * G + ((x % G - b % G) % G + G) % G }
    func parent(_ x: Int, _ b: Int) -> Int { stepOf(x, b) % G != 0 ? at(x / G, x % G - 1) : at(x / G - 1, x % G) }
    var sent = [UInt64](repeating: 0, count: P), received = sent, inter = sent
    func move(_ bytes: Int, _ from: Int, _ to: Int) {
        sent[from] += UInt64(bytes * 4); received[to] += UInt64(bytes * 4)
        if from / G != to / G { inter[from] += UInt64(bytes * 4) }
    }
    for b in 0..<P {
        var memo: [Int: Bool] = [:]
        func delivered(_ x: Int) -> Bool {
            if let known = memo[x] { return known }
            let fed = (0..<P).filter { $0 != b && parent($0, b) == x }
            let value = holderNeeds(x, b) || fed.contains { delivered($0) }
            memo[x] = value
            return value
        }
        for x in 0..<P where x != b && delivered(x) { move(readOnly(b), parent(x, b), x) }
        guard let accumulator else { continue }
        for c in 0..<Q {
            let chain = (0..<G).map { at(b / G + c, b % G + $0) }
            let needing = (0..<G).filter { holderNeeds(chain[$0], b) }
            let range: ClosedRange<Int>? = c == 0 ? 0...(needing.last ?? 0) : (needing.isEmpty ? nil : needing.first!...needing.last!)
            guard let range else { continue }
            for t in range.lowerBound..<range.upperBound { move(accumulator(b), chain[t], chain[t + 1]) }
            if chain[range.upperBound] != b { move(accumulator(b), chain[range.upperBound], b) }
        }
    }
    return (sent, received, inter)
}

/// The RING pattern (K, V, dK, dV travel) and the double ring, on loopback.
final class RingPatternTests: XCTestCase {
    /// (P, intra_group_size): single rings, 2×2, 4×1, 1×4, and larger groups.
    static let shapes: [(Int, Int32)] = [(1, 0), (2, 0), (3, 0), (2, 1), (4, 2), (4, 4), (4, 1), (6, 2), (6, 3), (8, 4), (8, 2)]

    /// Every pattern of the ring family on every route, against the float64
    /// reference, with bytes per rank (also those between groups) equal to
    /// the route's rules.
    func testSweepAgainstReferenceAndByteRules() {
        let windows = [(-1, -1), (5, 0), (3, 7)]
        let heads = [(4, 4), (4, 2), (4, 1)]
        var index = 0
        for (ranks, groupSize) in Self.shapes {
            for pattern in [AttentionConfig.Pattern.burst, .ring] {
                for dist in [AttentionConfig.Distribution.contiguous, .zigzag, .striped] {
                    for causal in [false, true] {
                        index += 1
                        let total = [37, 53, 61, 29][index % 4]
                        var p = Problem()
                        p.counts = dist == .contiguous ? unevenCounts(total: total, ranks: ranks)
                            : [Int](repeating: total / ranks, count: ranks - 1) + [total - total / ranks * (ranks - 1)]
                        p.distribution = dist
                        p.causal = causal
                        p.window = windows[index % windows.count]
                        (p.heads, p.kvHeads) = heads[(index / 3) % heads.count]
                        p.headDim = 8
                        p.batch = index % 3 == 0 ? 2 : 1
                        p.layout = index % 2 == 0 ? .bshd : .bhsd
                        p.cuSeqlens = index % 4 == 1 ? [0, 5, 5, total / 2, total - 1, total] : nil
                        p.seed = UInt64(index)
                        p.pattern = pattern
                        p.intraGroupSize = groupSize
                        let G = groupSize == 0 ? ranks : Int(groupSize)
                        p.network = SimulatedNetwork(groupSize: G)   // groups for the inter-group counts; no delay
                        let results = runProblem(p)
                        assertWithinTolerance(p, referenceErrors(p, results))
                        checkBytes(p, results, groupSize: G)
                    }
                }
            }
        }
    }

    func checkBytes(_ p: Problem, _ results: [RankResult], groupSize G: Int, file: StaticString = #filePath, line: UInt = #line) {
        let needs = bruteForceNeeds(p), counts = p.rankCounts, d = p.headDim
        let kv = { (b: Int) in 2 * p.zkv * counts[b] * d }
        let forward = expectedRingBytes(p, groupSize: G, holderNeeds: { needs[$0][$1] }, readOnly: kv, accumulator: nil)
        let backward = p.pattern == .ring
            ? expectedRingBytes(p, groupSize: G, holderNeeds: { needs[$0][$1] }, readOnly: kv, accumulator: kv)
            : expectedRingBytes(p, groupSize: G, holderNeeds: { needs[$1][$0] },
                                readOnly: { p.z * counts[$0] * (2 * d + 2) }, accumulator: { p.z * counts[$0] * d })
        for (r, result) in results.enumerated() where result.error == nil {
            let f = result.forwardStats, b = result.backwardStats
            XCTAssertEqual(f.bytesSent, forward.sent[r], "fwd sent rank \(r) \(p.label)", file: file, line: line)
            XCTAssertEqual(f.bytesReceived, forward.received[r], "fwd recv rank \(r) \(p.label)", file: file, line: line)
            XCTAssertEqual(f.bytesSentInterGroup, forward.sentInter[r], "fwd inter rank \(r) \(p.label)", file: file, line: line)
            XCTAssertEqual(b.bytesSent, backward.sent[r], "bwd sent rank \(r) \(p.label)", file: file, line: line)
            XCTAssertEqual(b.bytesReceived, backward.received[r], "bwd recv rank \(r) \(p.label)", file: file, line: line)
            XCTAssertEqual(b.bytesSentInterGroup, backward.sentInter[r], "bwd inter rank \(r) \(p.label)", file: file, line: line)
            XCTAssertEqual(b.pattern, p.pattern.rawValue)
            XCTAssertEqual(b.intraGroupSize, Int32(G))
            if p.pattern == .ring {   // the same (queries, keys) pairs as the forward
                XCTAssertEqual(f.tilesComputed + f.tilesSkipped, b.tilesComputed + b.tilesSkipped, "tiles rank \(r) \(p.label)")
            }
        }
    }

    /// RING backward, no mask, any shards: rank r sends the K|V of every
    /// block but the one it holds last (2·Zkv·d·(N − n_{r+1}) floats) and a
    /// partial dK|dV at every step, the last one home (2·Zkv·d·N); it
    /// receives 2·Zkv·d·(N − n_r) and 2·Zkv·d·N. Equal shards: (4P − 2)·Zkv·n·d
    /// floats sent against BURST's (P − 1)(3d + 2)·Zq·n + Zq·n·d.
    func testRingBackwardClosedForm() {
        for counts in [[9], [5, 7], [3, 1, 4], [6, 2, 5, 1], [2, 3, 1, 4, 2, 5, 1, 3]] {
            var p = Problem()
            p.counts = counts
            p.heads = 4
            p.kvHeads = 2
            p.batch = 2
            p.headDim = 8
            p.pattern = .ring
            let results = runProblem(p)
            assertWithinTolerance(p, referenceErrors(p, results))
            let P = counts.count, N = counts.reduce(0, +), unit = UInt64(2 * p.zkv * p.headDim * 4)
            for r in 0..<P {
                let sent = P == 1 ? 0 : unit * UInt64(N - counts[(r + 1) % P] + N)
                let received = P == 1 ? 0 : unit * UInt64(N - counts[r] + N)
                XCTAssertEqual(results[r].backwardStats.bytesSent, sent, "rank \(r) counts \(counts)")
                XCTAssertEqual(results[r].backwardStats.bytesReceived, received, "rank \(r) counts \(counts)")
            }
        }
    }

    /// BURST moves ≤ 0.76× RING's backward bytes for MHA at d = 128 (the
    /// paper's 25 %), P = 2, 4, 8, equal shards.
    func testBurstBackwardMovesFewerBytesThanRing() {
        for P in [2, 4, 8] {
            var p = Problem()
            p.counts = [Int](repeating: 4, count: P)
            p.heads = 1
            p.headDim = 128
            var sent: [AttentionConfig.Pattern: UInt64] = [:]
            for pattern in [AttentionConfig.Pattern.burst, .ring] {
                p.pattern = pattern
                sent[pattern] = runProblem(p)[0].backwardStats.bytesSent
            }
            let ratio = Double(sent[.burst]!) / Double(sent[.ring]!)
            let n = 4.0, d = 128.0, Pd = Double(P)
            XCTAssertEqual(ratio, ((Pd - 1) * (3 * n * d + 2 * n) + n * d) / ((4 * Pd - 2) * n * d), accuracy: 1e-12)
            XCTAssertLessThanOrEqual(ratio, 0.76, "P=\(P)")
        }
    }

    /// intra_group_size = 0 takes the groups from the transport's nodes
    /// (here the simulated network's); a size that does not divide P is an
    /// error on every rank.
    func testGroupSizeDetectionAndErrors() {
        var p = Problem()
        p.counts = [3, 3, 3, 3, 3, 3]
        p.network = SimulatedNetwork(groupSize: 3)
        let detected = runProblem(p, backward: false)
        XCTAssertEqual(detected.map(\.forwardStats.intraGroupSize), [3, 3, 3, 3, 3, 3])
        p.network = nil
        XCTAssertEqual(runProblem(p, backward: false).map(\.forwardStats.intraGroupSize), [6, 6, 6, 6, 6, 6])
        p.intraGroupSize = 4
        for result in runProblem(p, backward: false) {
            XCTAssertEqual(result.error?.status, .invalidArgument)
            XCTAssertTrue(result.error?.message.contains("intra_group_size (4) must divide the number of ranks (6)") ?? false,
                          result.error?.message ?? "no error")
        }
    }

    /// The simulated network delays messages but never changes a result,
    /// and the double ring gives the same bits on every run.
    func testSimulatedNetworkKeepsResultsAndDoubleRingIsReproducible() {
        var p = Problem()
        p.counts = [6, 5, 7, 6]
        p.causal = true
        p.intraGroupSize = 2
        let plain = runProblem(p)
        p.network = SimulatedNetwork(latency: 1e-4, bandwidth: 5e7, interGroupBandwidth: 1e7, groupSize: 2)
        let delayed = runProblem(p)
        for (a, b) in zip(plain, delayed) {
            XCTAssertNil(a.error); XCTAssertNil(b.error)
            XCTAssertEqual(a.out, b.out); XCTAssertEqual(a.dq, b.dq); XCTAssertEqual(a.dk, b.dk); XCTAssertEqual(a.dv, b.dv)
            XCTAssertGreaterThan(b.backwardStats.bytesSentInterGroup + b.backwardStats.bytesReceivedInterGroup, 0)
        }
        XCTAssertThrowsError(try SimulatedNetwork(parsing: "latency=5e-6,speed=3")) {
            XCTAssertEqual(($0 as? BurstError)?.status, .invalidArgument)
        }
        XCTAssertEqual(try SimulatedNetwork(parsing: "latency=5e-6, bandwidth=2e9,inter_bandwidth=2.5e8,group=4"),
                       SimulatedNetwork(latency: 5e-6, bandwidth: 2e9, interGroupBandwidth: 2.5e8, groupSize: 4))
        // Inter-group ports: per rank (default), per node, one shared link.
        let link = try? SimulatedNetwork(parsing: "bandwidth=1e9,inter_bandwidth=1e8,group=2,inter_port=link")
        XCTAssertEqual(link?.interPort, .link)
        XCTAssertEqual(link?.ports(from: 0, to: 3, ranks: 4).0, 1)
        XCTAssertEqual(link?.ports(from: 3, to: 0, ranks: 4).1, 1, "both directions share the link")
        XCTAssertEqual(link?.ports(from: 2, to: 3, ranks: 4).0, 4, "intra-group traffic keeps the rank's own port")
        let node = try? SimulatedNetwork(parsing: "group=2,inter_port=node")
        XCTAssertEqual(node.map { [$0.ports(from: 1, to: 2, ranks: 4).0, $0.ports(from: 1, to: 2, ranks: 4).1] }, [1, 5])
        XCTAssertThrowsError(try SimulatedNetwork(parsing: "inter_port=bus"))
    }
}

/// BURST_PATTERN_AUTO: the documented cost model's choices, and the choice
/// reported in the stats.
final class CostModelTests: XCTestCase {
    /// The choice for a shape (no attention is run: only the layout).
    func choice(heads: Int, kvHeads: Int, ranks: Int, total: Int = 32768, causal: Bool = false, window: Int = -1,
                distribution: AttentionConfig.Distribution = .contiguous) -> AttentionConfig.Pattern {
        var p = Problem()
        p.heads = heads; p.kvHeads = kvHeads; p.headDim = 128
        p.counts = [Int](repeating: total / ranks, count: ranks)
        p.causal = causal; p.window = (left: window, right: causal ? 0 : window); p.distribution = distribution
        let config = p.config(rank: 0)
        let layout = try! AttentionContext.tokenLayout(config, counts: p.rankCounts, total: p.total)
        return CostModel.choose(config, tokens: layout, groupSize: ranks)
    }

    func testChoicesFollowTheModel() {
        // MHA, no mask: BURST's 3·Z·N·d backward beats RING's 4 and ULYSSES' doubled ~11·Z·N·d/P up to P = 4 …
        XCTAssertEqual(choice(heads: 8, kvHeads: 8, ranks: 4), .burst)
        // … and from P = 5 with divisible heads ULYSSES moves fewer bytes (ALLGATHER: too much memory).
        XCTAssertEqual(choice(heads: 8, kvHeads: 8, ranks: 8), .ulysses)
        XCTAssertEqual(choice(heads: 12, kvHeads: 12, ranks: 8), .burst, "12 heads on 8 ranks: ULYSSES cannot")
        // GQA: the K,V side is 4× smaller than the query side, so RING.
        XCTAssertEqual(choice(heads: 32, kvHeads: 8, ranks: 8), .ring)
        // A window of 512 keys on 4096-token shards: the rings send one block; ULYSSES everything.
        XCTAssertEqual(choice(heads: 8, kvHeads: 8, ranks: 8, causal: true, window: 512), .ring)
        // Two ranks: ALLGATHER's backward (own K,V out, partial dK,dV back) is BURST's minus D and lse.
        XCTAssertEqual(choice(heads: 8, kvHeads: 8, ranks: 2), .allgather)
        XCTAssertEqual(choice(heads: 8, kvHeads: 8, ranks: 1), .burst, "one rank moves nothing: BURST")
    }

    /// The plan runs what the model chose and the stats report it.
    func testStatsReportTheChoice() {
        var p = Problem()
        p.pattern = .auto
        p.heads = 8
        p.headDim = 16
        p.counts = [Int](repeating: 12, count: 4)
        let config = p.config(rank: 0)
        let layout = try! AttentionContext.tokenLayout(config, counts: p.rankCounts, total: p.total)
        let expected = CostModel.choose(config, tokens: layout, groupSize: 4)
        let results = runProblem(p)
        assertWithinTolerance(p, referenceErrors(p, results))
        XCTAssertEqual(results.map(\.backwardStats.pattern), [Int32](repeating: expected.rawValue, count: 4))
    }

    /// ALLGATHER holds every K,V: ruled out by memory at P = 8, and its
    /// bytes estimate equals what a call measures; so do the ring's.
    func testEstimatesMatchMeasuredBytes() {
        var p = Problem()
        p.heads = 4
        p.headDim = 8
        p.counts = [5, 7, 6, 4, 9, 3, 8, 6]
        p.causal = true
        let layout = try! AttentionContext.tokenLayout(p.config(rank: 0), counts: p.rankCounts, total: p.total)
        let estimates = CostModel.estimates(p.config(rank: 0), tokens: layout, groupSize: 8)
        XCTAssertFalse(estimates.first { $0.pattern == .allgather }!.eligible)
        for estimate in estimates where estimate.pattern != .ulysses {
            p.pattern = estimate.pattern
            let results = runProblem(p)
            let busiest = results.map { Int($0.forwardStats.bytesSent + $0.forwardStats.bytesReceived + $0.backwardStats.bytesSent + $0.backwardStats.bytesReceived) }.max()!
            XCTAssertEqual(estimate.bytes, busiest, "\(estimate.pattern)")
        }
    }
}
