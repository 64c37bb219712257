import Foundation
import XCTest
@testable import LocalAttention

/// LocalAttention's `.bf16` products against a float64 reference computed
/// from the same bf16-rounded q, k, v and dO, on the hardware path (where
/// the CPU has AVX512-BF16) and the emulation, and the two against each
/// other; forward over two key blocks (a ring's steps) and backward with
/// the panels reused.
final class BF16ProductsTests: XCTestCase {
    /// The fast contract's bounds, relative to max|reference| (lse absolute).
    static let outTolerance = 4e-3, gradTolerance = 1e-2, lseTolerance = 1e-4

    private func rounded(_ count: Int, _ seed: UInt64) -> [Float] {
        var state = seed &* 0x9E37_79B9_7F4A_7C15 &+ 1
        return (0..<count).map { _ in
            state = state &* 6_364_136_223_846_793_005 &+ 1_442_695_040_888_963_407
            let x = Float(Double(state >> 11) / Double(1 << 53) * 4 - 2)
            return StorageConversion.bf16ToFloat(StorageConversion.floatToBF16(x))
        }
    }

    struct Result { var out, lse, dq, dk, dv: [Float] }

    private func run(_ kernel: LocalAttention, zq: Int, g: Int, nq: Int, nk: Int, d: Int, rule: VisibilityRule,
                     q: [Float], k: [Float], v: [Float], dO: [Float]) -> Result {
        let zkv = zq / g
        let queryPositions = Array(nk - nq..<nk), keyPositions = Array(0..<nk)
        let (qLo, qHi) = rule.rowBounds(queryPositions)
        // Two key blocks, later one first, as a ring step order would.
        let split = nk / 3
        func block(_ x: [Float], _ start: Int, _ rows: Int) -> [Float] {
            var result: [Float] = []
            for h in 0..<zkv {
                let first: Int = (h * nk + start) * d
                result += x[first..<(first + rows * d)]
            }
            return result
        }
        var acc = [Float](repeating: 0, count: zq * nq * d)
        var m = [Float](repeating: 0, count: zq * nq), l = m, lse = m
        LocalAttention.resetForwardState(heads: zq, rows: nq, headDim: d, acc: &acc, rowMax: &m, rowSum: &l)
        for (start, rows) in [(split, nk - split), (0, split)] where rows > 0 {
            kernel.forwardAccumulate(queryHeads: zq, group: g, q: q, queryRows: nq, queryLo: qLo, queryHi: qHi,
                                     k: block(k, start, rows), v: block(v, start, rows), keyRows: rows,
                                     keyPositions: Array(keyPositions[start..<(start + rows)]), acc: &acc, rowMax: &m, rowSum: &l)
        }
        var out = acc
        LocalAttention.finishForward(heads: zq, rows: nq, headDim: d, acc: acc, rowMax: m, rowSum: l, out: &out, lse: &lse)
        var delta = [Float](repeating: 0, count: zq * nq)
        LocalAttention.rowDot(count: zq * nq, headDim: d, dO, out, into: &delta)
        var dq = [Float](repeating: 0, count: zq * nq * d), dk = [Float](repeating: 0, count: zkv * nk * d), dv = dk
        // Twice over the same keys, the second time with the panels reused: dk, dv doubled, dq doubled.
        for ready in [false, true] {
            kernel.backwardAccumulate(keyPanelsReady: ready, queryHeads: zq, group: g, q: q, dOut: dO, delta: delta, lse: lse,
                                      dq: &dq, queryRows: nq, queryLo: qLo, queryHi: qHi, k: k, v: v, dk: &dk, dv: &dv,
                                      keyRows: nk, keyPositions: keyPositions)
        }
        return Result(out: out, lse: lse, dq: dq.map { $0 / 2 }, dk: dk.map { $0 / 2 }, dv: dv.map { $0 / 2 })
    }

    private func reference(zq: Int, g: Int, nq: Int, nk: Int, d: Int, scale: Double, rule: VisibilityRule,
                           q: [Float], k: [Float], v: [Float], dO: [Float]) -> Result {
        let zkv = zq / g
        var r = Result(out: .init(repeating: 0, count: zq * nq * d), lse: .init(repeating: -.infinity, count: zq * nq),
                       dq: .init(repeating: 0, count: zq * nq * d), dk: .init(repeating: 0, count: zkv * nk * d),
                       dv: .init(repeating: 0, count: zkv * nk * d))
        var dk = [Double](repeating: 0, count: zkv * nk * d), dv = dk
        for z in 0..<zq {
            let kv = z / g
            for i in 0..<nq {
                let qi = (z * nq + i) * d
                var s = [Double](repeating: -.infinity, count: nk)
                for j in 0..<nk where rule.isVisible(query: nk - nq + i, key: j) {
                    var dot = 0.0
                    for c in 0..<d { dot += Double(q[qi + c]) * Double(k[(kv * nk + j) * d + c]) }
                    s[j] = dot * scale
                }
                let mx = s.max()!
                if mx == -.infinity { continue }
                let sum = s.reduce(0) { $0 + exp($1 - mx) }
                let p = s.map { exp($0 - mx) / sum }
                r.lse[z * nq + i] = Float(mx + log(sum))
                var o = [Double](repeating: 0, count: d)
                for j in 0..<nk where p[j] > 0 { for c in 0..<d { o[c] += p[j] * Double(v[(kv * nk + j) * d + c]) } }
                for c in 0..<d { r.out[qi + c] = Float(o[c]) }
                var delta = 0.0
                for c in 0..<d { delta += Double(dO[qi + c]) * o[c] }
                for j in 0..<nk where p[j] > 0 {
                    var dp = 0.0
                    for c in 0..<d { dp += Double(dO[qi + c]) * Double(v[(kv * nk + j) * d + c]) }
                    let ds = p[j] * (dp - delta) * scale
                    for c in 0..<d {
                        r.dq[qi + c] += Float(ds * Double(k[(kv * nk + j) * d + c]))
                        dk[(kv * nk + j) * d + c] += ds * Double(q[qi + c])
                        dv[(kv * nk + j) * d + c] += p[j] * Double(dO[qi + c])
                    }
                }
            }
        }
        r.dk = dk.map { Float($0) }
        r.dv = dv.map { Float($0) }
        return r
    }

    /// max|a − b| / max|b| (0 when b is all zero and a equals it).
    private func relative(_ a: [Float], _ b: [Float]) -> Double {
        let scale = b.map { abs(Double($0)) }.max() ?? 0
        let error = zip(a, b).map { abs(Double($0) - Double($1)) }.max() ?? 0
        return scale == 0 ? error : error / scale
    }

    func testMatchesFloat64ReferenceOnEveryPath() {
        // (heads, group, nq, nk, d, causal, window, tileQ, tileK, threads)
        let cases: [(Int, Int, Int, Int, Int, Bool, Int, Int, Int, Int)] = [
            (2, 1, 70, 95, 64, false, -1, 16, 32, 1),
            (4, 2, 70, 130, 80, true, -1, 32, 64, 2),
            (2, 2, 33, 200, 24, true, 40, 16, 32, 1),
            (1, 1, 257, 300, 128, true, -1, 256, 128, 2),
            (2, 1, 40, 40, 7, false, -1, 16, 32, 1),   // odd d: the emulation runs on every CPU
        ]
        for (zq, g, nq, nk, d, causal, window, tq, tk, threads) in cases {
            let rule = VisibilityRule(causal: causal, windowLeft: window)
            let q = rounded(zq * nq * d, 1), k = rounded(zq / g * nk * d, 2), v = rounded(zq / g * nk * d, 3)
            let dO = rounded(zq * nq * d, 4)
            let scale = 1 / Float(d).squareRoot()
            let want = reference(zq: zq, g: g, nq: nq, nk: nk, d: d, scale: Double(scale), rule: rule, q: q, k: k, v: v, dO: dO)
            var results: [String: Result] = [:]
            for instructions in [true, false] {
                let kernel = LocalAttention(headDim: d, scale: scale, pool: WorkerPool(threadCount: threads),
                                            maxKVHeads: zq / g, maxKeyRows: nk, tileQ: tq, tileK: tk,
                                            products: .bf16, bf16Instructions: instructions)!
                let label = kernel.bf16Hardware ? "hardware" : "emulation"
                if results[label] != nil { continue }
                let got = run(kernel, zq: zq, g: g, nq: nq, nk: nk, d: d, rule: rule, q: q, k: k, v: v, dO: dO)
                results[label] = got
                let what = "\(label) zq \(zq) g \(g) nq \(nq) nk \(nk) d \(d) causal \(causal) window \(window)"
                XCTAssertLessThanOrEqual(relative(got.out, want.out), Self.outTolerance, "out \(what)")
                XCTAssertLessThanOrEqual(zip(got.lse, want.lse).map { abs(Double($0) - Double($1)) }.max()!, Self.lseTolerance, "lse \(what)")
                XCTAssertLessThanOrEqual(relative(got.dq, want.dq), Self.gradTolerance, "dq \(what)")
                XCTAssertLessThanOrEqual(relative(got.dk, want.dk), Self.gradTolerance, "dk \(what)")
                XCTAssertLessThanOrEqual(relative(got.dv, want.dv), Self.gradTolerance, "dv \(what)")
                // And bf16 numerics, not exact ones (those are within ~1e-6 here):
                // P is rounded, so the output is off by ~1e-3.
                XCTAssertGreaterThan(relative(got.out, want.out), 1e-4, "out \(what) is exact: P was not rounded")
            }
            // The same rounding, only the summation order differs: the two
            // paths agree far more closely than either with the reference.
            if let hw = results["hardware"], let emu = results["emulation"] {
                for (name, a, b) in [("out", hw.out, emu.out), ("dq", hw.dq, emu.dq), ("dk", hw.dk, emu.dk), ("dv", hw.dv, emu.dv)] {
                    XCTAssertLessThanOrEqual(relative(a, b), 1e-4, "hardware vs emulation \(name) d \(d)")
                }
            }
        }
    }
}
