import Foundation
import XCTest
@testable import LocalAttention

final class WorkerPoolTests: XCTestCase {
    func testEveryTaskRunsExactlyOnce() {
        for threads in [1, 2, 3, 8] {
            let pool = WorkerPool(threadCount: threads)
            for count in [0, 1, 2, 7, 100] {
                var hits = [Int](repeating: 0, count: count)
                hits.withUnsafeMutableBufferPointer { buffer in
                    let base = buffer.baseAddress
                    pool.parallelFor(count) { task, worker in
                        XCTAssertLessThan(worker, threads)
                        base![task] += 1   // each task owns its slot
                    }
                }
                XCTAssertEqual(hits, [Int](repeating: 1, count: count), "threads \(threads) count \(count)")
            }
        }
    }
}

final class LocalKernelTests: XCTestCase {
    /// One block of queries against one block of keys at arbitrary global
    /// positions, split into two key blocks folded one after the other, against
    /// a float64 softmax over all visible keys.
    func testForwardFoldsBlocksAtGlobalPositions() {
        let d = 24, nq = 70, nk1 = 50, nk2 = 45, heads = 2
        for (causal, useJIT) in [(false, true), (true, true), (false, false), (true, false)] {
            for (qPos, kPos) in [(100, 0), (0, 0), (40, 20), (0, 200)] {
                let rule = VisibilityRule(causal: causal)
                let pool = WorkerPool(threadCount: 2)
                let kernel = LocalAttention(headDim: d, scale: 0.3, rule: rule, pool: pool, maxHeads: heads, maxKeyRows: nk1 + nk2,
                                            tileQ: 16, tileK: 32, useJIT: useJIT)!
                let q = values(heads * nq * d, 1), k = values(heads * (nk1 + nk2) * d, 2), v = values(heads * (nk1 + nk2) * d, 3)
                // Split keys per head into the two blocks (canonical layout per block).
                func block(_ x: [Float], _ start: Int, _ rows: Int) -> [Float] {
                    var result: [Float] = []
                    for h in 0..<heads {
                        let first = (h * (nk1 + nk2) + start) * d
                        result += x[first..<(first + rows * d)]
                    }
                    return result
                }
                let k1 = block(k, 0, nk1), v1 = block(v, 0, nk1), k2 = block(k, nk1, nk2), v2 = block(v, nk1, nk2)
                var acc = [Float](repeating: 0, count: heads * nq * d)
                var m = [Float](repeating: 0, count: heads * nq), l = m, lse = m
                LocalAttention.resetForwardState(heads: heads, rows: nq, headDim: d, acc: &acc, rowMax: &m, rowSum: &l)
                kernel.forwardAccumulate(heads: heads, q: q, queryRows: nq, queryPosition: qPos, k: k2, v: v2,
                                         keyRows: nk2, keyPosition: kPos + nk1, acc: &acc, rowMax: &m, rowSum: &l)
                kernel.forwardAccumulate(heads: heads, q: q, queryRows: nq, queryPosition: qPos, k: k1, v: v1,
                                         keyRows: nk1, keyPosition: kPos, acc: &acc, rowMax: &m, rowSum: &l)
                var out = acc
                LocalAttention.finishForward(heads: heads, rows: nq, headDim: d, acc: acc, rowMax: m, rowSum: l,
                                             out: &out, lse: &lse)
                for h in 0..<heads {
                    for i in 0..<nq {
                        var scores: [(Double, Int)] = []
                        for j in 0..<(nk1 + nk2) where rule.isVisible(query: qPos + i, key: kPos + j) {
                            var dot = 0.0
                            for c in 0..<d { dot += Double(q[(h * nq + i) * d + c]) * Double(k[(h * (nk1 + nk2) + j) * d + c]) }
                            scores.append((dot * 0.3, j))
                        }
                        if scores.isEmpty {
                            XCTAssertEqual(lse[h * nq + i], -.infinity)
                            XCTAssertTrue((0..<d).allSatisfy { out[(h * nq + i) * d + $0] == 0 })
                            continue
                        }
                        let mx = scores.map(\.0).max()!
                        let l = scores.reduce(0) { $0 + exp($1.0 - mx) }
                        XCTAssertEqual(Double(lse[h * nq + i]), mx + log(l), accuracy: 1e-5)
                        for c in 0..<d {
                            let want = scores.reduce(0) { $0 + exp($1.0 - mx) / l * Double(v[(h * (nk1 + nk2) + $1.1) * d + c]) }
                            XCTAssertEqual(Double(out[(h * nq + i) * d + c]), want, accuracy: 1e-5)
                        }
                    }
                }
            }
        }
    }

    /// Rows whose lse is −inf (they saw no key) get exactly zero gradients, not NaN.
    func testBackwardGuardsRowsThatSawNoKey() {
        let d = 8, n = 5
        let kernel = LocalAttention(headDim: d, scale: 1, rule: VisibilityRule(causal: true), pool: WorkerPool(threadCount: 1),
                                    maxHeads: 1, maxKeyRows: n)!
        let q = values(n * d, 4), dO = values(n * d, 5), k = values(n * d, 6), v = values(n * d, 7)
        let delta = [Float](repeating: 0.1, count: n), lse = [Float](repeating: -.infinity, count: n)
        var dq = [Float](repeating: 0, count: n * d), dk = dq, dv = dq
        // Keys at positions 0..4, queries at 0..4 but every lse is -inf.
        kernel.backwardAccumulate(heads: 1, q: q, dOut: dO, delta: delta, lse: lse, dq: &dq, queryRows: n, queryPosition: 0,
                                  k: k, v: v, dk: &dk, dv: &dv, keyRows: n, keyPosition: 0)
        XCTAssertTrue((dq + dk + dv).allSatisfy { $0 == 0 })
    }

    func testVisibilityClassification() {
        let causal = VisibilityRule(causal: true)
        XCTAssertEqual(causal.classify(queries: 0, 9, keys: 10, 19), .hidden)
        XCTAssertEqual(causal.classify(queries: 10, 19, keys: 0, 9), .full)
        XCTAssertEqual(causal.classify(queries: 5, 14, keys: 10, 19), .partial)
        let none = VisibilityRule(causal: false)
        XCTAssertEqual(none.classify(queries: 0, 9, keys: 100, 109), .full)
        XCTAssertEqual(none.classify(queries: 0, -1, keys: 100, 109), .hidden)
    }

    private func values(_ count: Int, _ seed: UInt32) -> [Float] {
        var state = seed &* 2_654_435_761 &+ 12345
        return (0..<count).map { _ in
            state = state &* 1_664_525 &+ 1_013_904_223
            return Float(state >> 8) / Float(1 << 24) * 2 - 1
        }
    }
}

final class WorkerPoolLifetimeTests: XCTestCase {
    /// A pool destroyed right after creation (threads possibly not yet
    /// started) must not touch freed memory (a bug found from C: plan churn).
    func testCreateAndDestroyUnusedPools() {
        for i in 0..<300 {
            let pool = WorkerPool(threadCount: 1 + i % 4)
            if i % 3 == 0 { pool.parallelFor(5) { _, _ in } }
        }
    }
}
