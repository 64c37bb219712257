import XCTest
@testable import GlobalAttention
@testable import LocalAttention

/// burst_stats byte counts equal the documented formulas exactly.
final class CommunicationVolumeTests: XCTestCase {
    /// Bytes a block of `rows` tokens takes: K and V, Z heads, d floats.
    func kvBytes(_ rows: Int, _ p: Problem) -> UInt64 { UInt64(2 * p.z * rows * p.headDim * 4) }

    func testNoMaskForwardAndBackwardFormulas() {
        for counts in [[9], [5, 7], [3, 1, 4], [6, 2, 5, 1], [2, 3, 1, 4, 2, 5, 1, 3]] {
            var p = Problem()
            p.counts = counts
            p.heads = 3
            p.batch = 2
            p.headDim = 8
            let results = runProblem(p)
            let P = counts.count, Z = UInt64(p.z), d = UInt64(p.headDim)
            for r in 0..<P {
                let n = { (i: Int) in UInt64(counts[((i % P) + P) % P]) }
                var fwdSent: UInt64 = 0, fwdRecv: UInt64 = 0, bwdSent: UInt64 = 0, bwdRecv: UInt64 = 0
                if P > 1 {
                    for t in 0...(P - 2) { fwdSent += 4 * 2 * Z * d * n(r - t) }
                    for t in 1...(P - 1) { fwdRecv += 4 * 2 * Z * d * n(r - t) }
                    for t in 0...(P - 2) { bwdSent += 4 * Z * (3 * d + 2) * n(r - t) }
                    bwdSent += 4 * Z * d * n(r + 1)
                    for t in 1...(P - 1) { bwdRecv += 4 * Z * (3 * d + 2) * n(r - t) }
                    bwdRecv += 4 * Z * d * n(r)
                }
                let s = results[r]
                XCTAssertEqual(s.forwardStats.bytesSent, fwdSent, "fwd sent rank \(r) counts \(counts)")
                XCTAssertEqual(s.forwardStats.bytesReceived, fwdRecv, "fwd recv rank \(r) counts \(counts)")
                XCTAssertEqual(s.backwardStats.bytesSent, bwdSent, "bwd sent rank \(r) counts \(counts)")
                XCTAssertEqual(s.backwardStats.bytesReceived, bwdRecv, "bwd recv rank \(r) counts \(counts)")
                XCTAssertEqual(s.forwardStats.stepsComputed, UInt64(P))
            }
        }
    }

    /// Causal, equal shards: block s travels s → s+1 → … → P−1 and no further,
    /// so rank r < P−1 sends r + 1 blocks and receives r; rank P−1 sends none.
    func testCausalEqualShardsForwardSkipsUselessHops() {
        for P in 1...6 {
            var p = Problem()
            p.counts = [Int](repeating: 10, count: P)
            p.causal = true
            let results = runProblem(p, backward: false)
            for r in 0..<P {
                let sent = r < P - 1 ? UInt64(r + 1) * kvBytes(10, p) : 0
                XCTAssertEqual(results[r].forwardStats.bytesSent, sent, "P=\(P) rank \(r)")
                XCTAssertEqual(results[r].forwardStats.bytesReceived, UInt64(r) * kvBytes(10, p), "P=\(P) rank \(r)")
                XCTAssertEqual(results[r].forwardStats.stepsComputed, UInt64(r + 1), "P=\(P) rank \(r)")
                XCTAssertEqual(results[r].forwardStats.stepsSkipped, UInt64(P - r - 1), "P=\(P) rank \(r)")
            }
        }
    }

    /// Any shards, any mask: a block is forwarded by every rank on its path up
    /// to (not including) the last rank within P − 1 hops that needs it.
    func testForwardBytesMatchPathRuleForUnevenShards() {
        for counts in [[4, 0, 1, 9], [0, 0, 5], [7, 0, 0], [3, 5, 0], [1, 1, 0, 2, 0]] {
            for causal in [false, true] {
                var p = Problem()
                p.counts = counts
                p.causal = causal
                let results = runProblem(p, backward: false)
                let P = counts.count
                let needs = bruteForceNeeds(p)
                var expectSent = [UInt64](repeating: 0, count: P), expectRecv = expectSent
                for source in 0..<P {
                    let last = (1..<max(P, 1)).last { needs[(source + $0) % P][source] } ?? 0
                    for hop in 0..<last {
                        expectSent[(source + hop) % P] += kvBytes(counts[source], p)
                        expectRecv[(source + hop + 1) % P] += kvBytes(counts[source], p)
                    }
                }
                for r in 0..<P {
                    XCTAssertEqual(results[r].forwardStats.bytesSent, expectSent[r], "counts \(counts) causal \(causal) rank \(r)")
                    XCTAssertEqual(results[r].forwardStats.bytesReceived, expectRecv[r], "counts \(counts) causal \(causal) rank \(r)")
                }
                assertWithinTolerance(p, referenceErrors(p, results))
            }
        }
    }

    func testSingleRankMovesNothing() {
        var p = Problem()
        p.counts = [33]
        let r = runProblem(p)[0]
        XCTAssertEqual(r.forwardStats.bytesSent + r.forwardStats.bytesReceived, 0)
        XCTAssertEqual(r.backwardStats.bytesSent + r.backwardStats.bytesReceived, 0)
        XCTAssertEqual(r.forwardStats.messagesSent + r.backwardStats.messagesSent, 0)
    }
}
