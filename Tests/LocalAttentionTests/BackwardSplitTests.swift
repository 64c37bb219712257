import XCTest
@testable import LocalAttention

/// The backward splits a key/value head's key tiles over tasks when the
/// heads do not divide over the threads (issue 10): dK and dV rows stay
/// owned by one task, dQ goes through per-chunk partials added in a fixed
/// order. These tests check the split against the unsplit run (threads = 1),
/// that the split path really runs (its partials show in the workspace), and
/// that it is bitwise repeatable.
final class BackwardSplitTests: XCTestCase {
    private func values(_ count: Int, _ seed: Int) -> [Float] {
        (0..<count).map { Float(((($0 &* 2_654_435_761) ^ (seed &* 40_503)) & 1023)) / 1023 - 0.5 }
    }

    private struct Grads: Equatable { var dq, dk, dv: [Float] }

    private func backward(threads: Int, heads zq: Int, group g: Int, causal: Bool, nq: Int, nk: Int, d: Int,
                          kernel reuse: LocalAttention? = nil) -> (Grads, LocalAttention) {
        let zkv = zq / g
        let kernel = reuse ?? LocalAttention(headDim: d, scale: 0.25, pool: WorkerPool(threadCount: threads),
                                             maxKVHeads: zkv, maxKeyRows: nk, tileQ: 32, tileK: 16)!
        // Queries at positions nk - nq ..< nk, keys at 0 ..< nk: a causal
        // mask leaves a ragged diagonal and whole skipped tiles.
        let (qLo, qHi) = VisibilityRule(causal: causal).rowBounds(Array((nk - nq)..<nk))
        let q = values(zq * nq * d, 1), dO = values(zq * nq * d, 2), k = values(zkv * nk * d, 3), v = values(zkv * nk * d, 4)
        let delta = values(zq * nq, 5), lse = [Float](repeating: 3, count: zq * nq)
        var dq = [Float](repeating: 0, count: zq * nq * d)
        var dk = [Float](repeating: 0, count: zkv * nk * d), dv = dk
        kernel.backwardAccumulate(queryHeads: zq, group: g, q: q, dOut: dO, delta: delta, lse: lse, dq: &dq, queryRows: nq,
                                  queryLo: qLo, queryHi: qHi, k: k, v: v, dk: &dk, dv: &dv, keyRows: nk,
                                  keyPositions: Array(0..<nk))
        return (Grads(dq: dq, dk: dk, dv: dv), kernel)
    }

    func testSplitMatchesOneThreadAndRepeatsBitwise() {
        // (query heads, group): one head, MQA, an odd head count, GQA that divides.
        for (zq, g) in [(1, 1), (4, 4), (3, 1), (4, 2)] {
            for causal in [false, true] {
                for threads in [2, 3] {
                    let nq = 70, nk = 150, d = 24
                    let (one, _) = backward(threads: 1, heads: zq, group: g, causal: causal, nq: nq, nk: nk, d: d)
                    let (split, kernel) = backward(threads: threads, heads: zq, group: g, causal: causal, nq: nq, nk: nk, d: d)
                    let label = "heads \(zq)/\(zq / g) causal \(causal) threads \(threads)"
                    let zkv = zq / g
                    let splits = zkv % threads != 0
                    let baseBytes = LocalAttention(headDim: d, scale: 0.25, pool: WorkerPool(threadCount: threads),
                                                   maxKVHeads: zkv, maxKeyRows: nk, tileQ: 32, tileK: 16)!.workspaceBytes
                    XCTAssertEqual(kernel.workspaceBytes > baseBytes, splits, "the split path ran: \(label)")
                    for (a, b, name) in [(one.dq, split.dq, "dq"), (one.dk, split.dk, "dk"), (one.dv, split.dv, "dv")] {
                        let scale = a.map { abs($0) }.max()!
                        XCTAssertGreaterThan(scale, 0, "\(name) \(label)")
                        let worst = zip(a, b).map { abs($0 - $1) }.max()!
                        XCTAssertLessThanOrEqual(worst, 1e-5 * scale, "\(name) \(label)")
                    }
                    // dK and dV do not depend on the split at all: same tiles, same order.
                    XCTAssertEqual(one.dk.map(\.bitPattern), split.dk.map(\.bitPattern), "dk bits \(label)")
                    XCTAssertEqual(one.dv.map(\.bitPattern), split.dv.map(\.bitPattern), "dv bits \(label)")
                    // Run again (same kernel object, partials reused): the same bits.
                    let (again, _) = backward(threads: threads, heads: zq, group: g, causal: causal, nq: nq, nk: nk, d: d, kernel: kernel)
                    XCTAssertEqual(again, split, "bitwise repeat \(label)")
                }
            }
        }
    }

    /// Boustrophedon dealing: every key tile in exactly one chunk, and the
    /// chunks' shares of a linear trend (a causal mask) within one tile.
    func testKeyTilesDealtOnceAndEvenly() {
        for chunks in 1...4 {
            for tiles in [1, 2, 5, 8, 31] {
                var owners = [Int](repeating: 0, count: tiles)
                var work = [Int](repeating: 0, count: chunks)
                for t in 0..<tiles {
                    for c in 0..<chunks where LocalAttention.keyTile(t, inChunk: c, of: chunks) {
                        owners[t] += 1
                        work[c] += tiles - t
                    }
                }
                XCTAssertEqual(owners, [Int](repeating: 1, count: tiles), "chunks \(chunks) tiles \(tiles)")
                if tiles >= 2 * chunks { XCTAssertLessThanOrEqual(work.max()! - work.min()!, tiles, "chunks \(chunks) tiles \(tiles)") }
            }
        }
    }
}
