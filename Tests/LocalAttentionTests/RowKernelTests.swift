import XCTest
import Foundation
@testable import LocalAttention
@testable import RowKernelsAVX2
@testable import RowKernelsAVX512

/// The row kernels (forward online-softmax step and backward P/dS step)
/// against a float64 model, on every code path this CPU runs, for every
/// tile width up to a few vectors and every visible run first..<last in it:
/// the lane masks at both ends, the scalar tails, the columns to clear
/// (the AVX-512 path once left masked columns between its last vector and a
/// late `first` uncleared; only widths that are not a multiple of 16 show it).
final class RowKernelTests: XCTestCase {
    private typealias Softmax = (UnsafeMutablePointer<Float>, Int, Int, Int, UnsafePointer<Int>, UnsafePointer<Int>, Float,
                                 UnsafeMutablePointer<Float>, UnsafeMutablePointer<Float>, UnsafeMutablePointer<Float>, Int) -> Void
    private typealias Gradient = (UnsafeMutablePointer<Float>, UnsafeMutablePointer<Float>, Int, Int, Int,
                                  UnsafePointer<Int>, UnsafePointer<Int>, Float, UnsafePointer<Float>, UnsafePointer<Float>) -> Void

    private var paths: [(String, Softmax, Gradient)] {
        var result: [(String, Softmax, Gradient)] = [("baseline", BaselineRowKernels.softmaxTile, BaselineRowKernels.gradientTile)]
        if TileProducts.vectorLevel >= 1 {
            result.append(("avx2", RowKernelsAVX2.RowKernels.softmaxTile, RowKernelsAVX2.RowKernels.gradientTile))
        }
        if TileProducts.vectorLevel >= 2 {
            result.append(("avx512", RowKernelsAVX512.RowKernels.softmaxTile, RowKernelsAVX512.RowKernels.gradientTile))
        }
        return result
    }

    /// Every (first, last) with 0 ≤ first ≤ last ≤ width as one row each, for
    /// widths 1…40 and a few wider ones; ld leaves garbage past the width.
    private func runs(_ width: Int) -> [(Int, Int)] {
        var result: [(Int, Int)] = []
        let step = width > 40 ? 7 : 1
        for first in stride(from: 0, through: width, by: step) {
            for last in stride(from: first, through: width, by: step) { result.append((first, last)) }
            if width > 40 { result.append((first, width)) }
        }
        return result
    }

    private var generator = SplitMix(seed: 0x5eed)

    func testSoftmaxTileMatchesModel() {
        let d = 5, scale: Float = 0.37
        for (name, softmax, _) in paths {
            for width in Array(1...40) + [63, 64, 65, 100, 128] {
                let rowRuns = runs(width)
                let rows = rowRuns.count, ld = width + 3
                var s = (0..<(rows * ld)).map { _ in Float(generator.uniform() * 8 - 4) }
                var lo = rowRuns.map { $0.0 }, hi = rowRuns.map { $0.1 }
                // Half the rows carry a running max/sum from an earlier tile.
                var rowMax = (0..<rows).map { $0 % 2 == 0 ? -Float.infinity : Float(generator.uniform() * 2) }
                var rowSum = (0..<rows).map { $0 % 2 == 0 ? Float(0) : Float(1 + generator.uniform()) }
                var acc = (0..<(rows * d)).map { _ in Float(generator.uniform() - 0.5) }
                let s0 = s, max0 = rowMax, sum0 = rowSum, acc0 = acc
                softmax(&s, ld, width, rows, &lo, &hi, scale, &rowMax, &rowSum, &acc, d)
                var bad = 0
                for i in 0..<rows {
                    let first = lo[i], last = hi[i]
                    var m = Double(max0[i])
                    for j in first..<last { m = max(m, Double(s0[i * ld + j]) * Double(scale)) }
                    for j in 0..<width {
                        let x = Double(s0[i * ld + j]) * Double(scale) - m
                        let want = (j >= first && j < last && m > -.infinity) ? Foundation.exp(x) : 0
                        let got = Double(s[i * ld + j])
                        // The exponential's ~2 ulp plus the rounding of its float argument, relative
                        // to the logit and the max it is shifted by.
                        if !(abs(got - want) <= (want > 0 ? 3e-7 * max(1, abs(x) + 2 * abs(m)) * want : 0) + 1e-37) {
                            bad += 1
                            if bad <= 3 { XCTFail("\(name) width \(width) row [\(first), \(last)) column \(j): p \(got), want \(want)") }
                        }
                    }
                    for j in width..<ld where s[i * ld + j] != s0[i * ld + j] {
                        XCTFail("\(name) width \(width): wrote past the width at column \(j)"); break
                    }
                    if first >= last { continue }
                    let alpha = max0[i] == -.infinity ? 0 : Foundation.exp(Double(max0[i]) - m)
                    var l = Double(sum0[i]) * alpha
                    for j in first..<last { l += Foundation.exp(Double(s0[i * ld + j]) * Double(scale) - m) }
                    XCTAssertEqual(Double(rowMax[i]), m, accuracy: 1e-6 * max(1, abs(m)), "\(name) width \(width) row max")
                    XCTAssertEqual(Double(rowSum[i]), l, accuracy: 2e-6 * l, "\(name) width \(width) row sum [\(first), \(last))")
                    for c in 0..<d {
                        XCTAssertEqual(Double(acc[i * d + c]), Double(acc0[i * d + c]) * alpha, accuracy: 1e-6,
                                       "\(name) width \(width) acc rescale")
                    }
                }
            }
        }
    }

    func testGradientTileMatchesModel() {
        let scale: Float = 0.37
        for (name, _, gradient) in paths {
            for width in Array(1...40) + [63, 64, 65, 100, 128] {
                let rowRuns = runs(width)
                let rows = rowRuns.count, ld = width + 3
                var p = (0..<(rows * ld)).map { _ in Float(generator.uniform() * 8 - 4) }
                var ds = (0..<(rows * ld)).map { _ in Float(generator.uniform() * 2 - 1) }
                var lo = rowRuns.map { $0.0 }, hi = rowRuns.map { $0.1 }
                var lse = (0..<rows).map { $0 % 7 == 3 ? -Float.infinity : Float(1 + generator.uniform()) }
                var delta = (0..<rows).map { _ in Float(generator.uniform() - 0.5) }
                let p0 = p, ds0 = ds
                gradient(&p, &ds, ld, width, rows, &lo, &hi, scale, &lse, &delta)
                var bad = 0
                for i in 0..<rows {
                    for j in 0..<width {
                        let visible = j >= lo[i] && j < hi[i] && lse[i] > -.infinity
                        let x = Double(p0[i * ld + j]) * Double(scale) - Double(lse[i])
                        let e = visible ? Foundation.exp(x) : 0
                        let g = e * Double(scale) * (Double(ds0[i * ld + j]) - Double(delta[i]))
                        let gotP = Double(p[i * ld + j]), gotG = Double(ds[i * ld + j])
                        let tolerance = visible ? 3e-7 * max(1, abs(x)) : 0
                        if !(abs(gotP - e) <= tolerance * e + 1e-37) || !(abs(gotG - g) <= (tolerance + 1e-6) * (abs(g) + e)) {
                            bad += 1
                            if bad <= 3 { XCTFail("\(name) width \(width) row [\(lo[i]), \(hi[i])) column \(j): p \(gotP) want \(e), ds \(gotG) want \(g)") }
                        }
                    }
                    for j in width..<ld where p[i * ld + j] != p0[i * ld + j] || ds[i * ld + j] != ds0[i * ld + j] {
                        XCTFail("\(name) width \(width): wrote past the width at column \(j)"); break
                    }
                }
            }
        }
    }
}

/// A small deterministic generator (SplitMix64) for the tests' data.
struct SplitMix {
    var state: UInt64
    init(seed: UInt64) { state = seed }
    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
    mutating func uniform() -> Double { Double(next() >> 11) / Double(1 << 53) }
}
