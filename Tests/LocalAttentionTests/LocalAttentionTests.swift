#if canImport(Glibc)
import Glibc
#endif
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
                let kernel = LocalAttention(headDim: d, scale: 0.3, pool: pool, maxKVHeads: heads, maxKeyRows: nk1 + nk2,
                                            tileQ: 16, tileK: 32, useJIT: useJIT)!
                let (qLo, qHi) = rule.rowBounds(Array(qPos..<(qPos + nq)))
                let keys1 = Array(kPos..<(kPos + nk1)), keys2 = Array((kPos + nk1)..<(kPos + nk1 + nk2))
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
                kernel.forwardAccumulate(queryHeads: heads, group: 1, q: q, queryRows: nq, queryLo: qLo, queryHi: qHi, k: k2, v: v2,
                                         keyRows: nk2, keyPositions: keys2, acc: &acc, rowMax: &m, rowSum: &l)
                kernel.forwardAccumulate(queryHeads: heads, group: 1, q: q, queryRows: nq, queryLo: qLo, queryHi: qHi, k: k1, v: v1,
                                         keyRows: nk1, keyPositions: keys1, acc: &acc, rowMax: &m, rowSum: &l)
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
        let kernel = LocalAttention(headDim: d, scale: 1, pool: WorkerPool(threadCount: 1),
                                    maxKVHeads: 1, maxKeyRows: n)!
        let (qLo, qHi) = VisibilityRule(causal: true).rowBounds(Array(0..<n))
        let q = values(n * d, 4), dO = values(n * d, 5), k = values(n * d, 6), v = values(n * d, 7)
        let delta = [Float](repeating: 0.1, count: n), lse = [Float](repeating: -.infinity, count: n)
        var dq = [Float](repeating: 0, count: n * d), dk = dq, dv = dq
        // Keys at positions 0..4, queries at 0..4 but every lse is -inf.
        kernel.backwardAccumulate(queryHeads: 1, group: 1, q: q, dOut: dO, delta: delta, lse: lse, dq: &dq, queryRows: n,
                                  queryLo: qLo, queryHi: qHi, k: k, v: v, dk: &dk, dv: &dv, keyRows: n, keyPositions: Array(0..<n))
        XCTAssertTrue((dq + dk + dv).allSatisfy { $0 == 0 })
    }

    /// The progress hook (the ring polls its transfers with it) runs on the
    /// calling thread only, between tiles, and does not change a result.
    func testProgressHookRunsBetweenTilesOnTheCallingThread() {
        let d = 8, n = 40
        for threads in [1, 2] {
            let kernel = LocalAttention(headDim: d, scale: 0.5, pool: WorkerPool(threadCount: threads),
                                        maxKVHeads: 2, maxKeyRows: n, tileQ: 8, tileK: 8)!
            let (qLo, qHi) = VisibilityRule(causal: false).rowBounds(Array(0..<n))
            let q = values(2 * n * d, 1), k = values(2 * n * d, 2), v = values(2 * n * d, 3)
            func run(withHook: Bool) -> (acc: [Float], calls: Int, foreign: Int) {
                var acc = [Float](repeating: 0, count: 2 * n * d)
                var rowMax = [Float](repeating: -.infinity, count: 2 * n), rowSum = [Float](repeating: 0, count: 2 * n)
                let caller = pthread_self()
                var calls = 0, foreign = 0
                if withHook {
                    kernel.progressInterval = 0
                    kernel.progress = { calls += 1; if pthread_equal(pthread_self(), caller) == 0 { foreign += 1 } }
                }
                let tiles = kernel.forwardAccumulate(queryHeads: 2, group: 1, q: q, queryRows: n, queryLo: qLo, queryHi: qHi,
                                                     k: k, v: v, keyRows: n, keyPositions: Array(0..<n),
                                                     acc: &acc, rowMax: &rowMax, rowSum: &rowSum)
                kernel.progress = nil
                XCTAssertEqual(tiles.computed, 2 * 5 * 5)
                return (acc, calls, foreign)
            }
            let plain = run(withHook: false), hooked = run(withHook: true)
            XCTAssertEqual(plain.acc, hooked.acc)
            XCTAssertGreaterThan(hooked.calls, 0, "threads \(threads)")
            if threads == 1 { XCTAssertEqual(hooked.calls, 50, "one call per tile with interval 0") }
            XCTAssertEqual(hooked.foreign, 0, "the hook ran on a worker thread")
        }
    }

    /// Row-by-row visible columns of a tile against brute force: contiguous,
    /// strided (striped) and gapped (zigzag) key positions, windows, packing.
    func testTileColumnsMatchBruteForce() {
        let rules = [VisibilityRule(causal: true), VisibilityRule(causal: false, windowLeft: 3, windowRight: 2),
                     VisibilityRule(causal: true, windowLeft: 5, sequenceOffsets: [0, 7, 7, 20, 64]),
                     VisibilityRule(causal: false, sequenceOffsets: [0, 30, 64])]
        let keySets = [Array(10..<30), Array(stride(from: 1, to: 64, by: 4)), Array(0..<6) + Array(40..<50), [33]]
        let querySets = [Array(0..<20), Array(stride(from: 2, to: 64, by: 3)), Array(20..<26) + Array(50..<60), [40]]
        for rule in rules {
            for keys in keySets {
                for queries in querySets {
                    let (lo, hi) = rule.rowBounds(queries)
                    var first = [Int](repeating: 0, count: queries.count), last = first
                    let any = TileVisibility.columns(rows: queries.count, lo: lo, hi: hi, cols: keys.count, keys: keys,
                                                     first: &first, last: &last)
                    var sawAny = false
                    for (i, position) in queries.enumerated() {
                        let want = keys.indices.filter { rule.isVisible(query: position, key: keys[$0]) }
                        let got = any ? Array(first[i]..<last[i]) : []
                        XCTAssertEqual(got, want, "rule \(rule) query \(position) keys \(keys)")
                        sawAny = sawAny || !want.isEmpty
                    }
                    XCTAssertEqual(any, sawAny)
                }
            }
        }
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

final class VisibilityRuleOverflowTests: XCTestCase {
    /// Windows up to Int.max are valid (the ABI asks only for >= -1) and
    /// wider than any sequence: they must act as unbounded, with bounds that
    /// never decrease (found by the ABI fuzzer: i &+ windowRight wrapped).
    func testHugeWindowsAreUnbounded() {
        let positions = Array(0..<40)
        func unboundedIfHuge(_ w: Int) -> Int { w >= Int.max - 3 ? -1 : w }
        for (left, right) in [(-1, Int.max), (-1, Int.max - 3), (Int.max, -1), (Int.max, Int.max), (3, Int.max)] {
            for causal in [false, true] {
                let rule = VisibilityRule(causal: causal, windowLeft: left, windowRight: right)
                let same = VisibilityRule(causal: causal, windowLeft: unboundedIfHuge(left), windowRight: unboundedIfHuge(right))
                let (lo, hi) = rule.rowBounds(positions)
                for i in positions {
                    let what = "window (\(left), \(right)) causal \(causal) row \(i)"
                    XCTAssertTrue(rule.isVisible(query: i, key: i), what)
                    if i > 0 {
                        XCTAssertGreaterThanOrEqual(lo[i], lo[i - 1], what)
                        XCTAssertGreaterThanOrEqual(hi[i], hi[i - 1], what)
                    }
                    for j in positions {
                        XCTAssertEqual(rule.isVisible(query: i, key: j), same.isVisible(query: i, key: j), "\(what) key \(j)")
                    }
                }
            }
        }
    }
}
