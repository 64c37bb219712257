import XCTest
import Foundation
@testable import LocalAttention
@testable import RowKernelsAVX2
@testable import RowKernelsAVX512

/// The row kernels' exponentials against float64, on every code path this
/// CPU can run (baseline always; AVX2 + FMA and AVX-512 when present): the
/// polynomial's accuracy, the clamps and the special values.
final class ExpAccuracyTests: XCTestCase {
    /// Arguments: a dense sweep plus the edges of the clamps and the specials.
    private static let arguments: [Float] = {
        var xs = stride(from: -140.0, through: 140.0, by: 0.0137).map { Float($0) }
        xs += stride(from: -1.0, through: 1.0, by: 1.0 / 4096).map { Float($0) }
        xs += [-126, -126.5, -125.999, 127.499, 127.5, 127.999, 128, 128.001, -0.5, 0.5, -1.5, 1.5, -2.5, 0, -0.0, .infinity, -.infinity, .nan]
        xs += stride(from: -126.5, through: 127.5, by: 0.5).map { Float($0) }   // every tie
        return xs
    }()

    /// Checks one path's 2^x (`exp2`) and its softmax variant (`softmax`, valid for x ≤ 0).
    private func check(_ name: String, exp2: (Float) -> Float, softmax: (Float) -> Float, exp: (Float) -> Float) {
        var worst = 0.0
        for x in Self.arguments {
            let got = exp2(x)
            if x.isNaN { XCTAssertTrue(got.isNaN, "\(name) exp2(NaN)"); continue }
            if x < -126 { XCTAssertEqual(got, 0, "\(name) exp2(\(x))"); continue }
            if x >= 127.5 { XCTAssertEqual(got, .infinity, "\(name) exp2(\(x)) overflows"); continue }
            let want = Foundation.exp2(Double(x))
            worst = max(worst, abs(Double(got) - want) / want)
            if x <= 0 {
                let s = softmax(x)
                if x < -126 { XCTAssertLessThan(s, 1e-37, "\(name) softmax \(x)") }
                else { XCTAssertLessThanOrEqual(abs(Double(s) - want) / want, 2.5e-7, "\(name) softmax exp2(\(x))") }
            }
        }
        XCTAssertTrue(softmax(.nan).isNaN, "\(name) softmax NaN")
        XCTAssertLessThanOrEqual(worst, 2.5e-7, "\(name): exp2 within ~2 ulp (worst \(worst))")
        // e^x = 2^(x·log2 e): relative error grows with |x| by the product's rounding.
        var worstE = 0.0
        for x in stride(from: -87.0, through: 88.0, by: 0.0071).map({ Float($0) }) {
            let want = Foundation.exp(Double(x))
            worstE = max(worstE, abs(Double(exp(x)) - want) / want / max(1, abs(Double(x))))
        }
        XCTAssertLessThanOrEqual(worstE, 2.5e-7, "\(name): e^x within 2 ulp · max(1, |x|) (worst \(worstE))")
        XCTAssertEqual(exp(-.infinity), 0, "\(name) e^-inf")
    }

    func testBaseline() {
        check("baseline", exp2: BaselineRowKernels.exp2Probe, softmax: BaselineRowKernels.exp2SoftmaxProbe,
              exp: BaselineRowKernels.expProbe)
    }

    func testAVX2() throws {
        try XCTSkipUnless(TileProducts.vectorLevel >= 1, "no AVX2 + FMA on this CPU")
        check("avx2", exp2: RowKernelsAVX2.RowKernels.exp2Probe,
              softmax: RowKernelsAVX2.RowKernels.exp2SoftmaxProbe, exp: RowKernelsAVX2.RowKernels.expProbe)
    }

    func testAVX512() throws {
        try XCTSkipUnless(TileProducts.vectorLevel >= 2, "no AVX-512 on this CPU (this path runs only where the CPU has it)")
        check("avx512", exp2: RowKernelsAVX512.RowKernels.exp2Probe,
              softmax: RowKernelsAVX512.RowKernels.exp2SoftmaxProbe, exp: RowKernelsAVX512.RowKernels.expProbe)
    }
}

/// The soft-capping tanh (`tanhLanes`, Eigen's rational form) against
/// float64 on every code path: within 4 ulp of tanh x (measured worst 3.6,
/// at |x| ≈ 0.06–0.12 where the value is small) and within 2^-23 absolute (measured 1.65·2^-24)
/// (what a cap's logit c·t carries), ±1 from 9 on, odd, NaN kept.
final class TanhAccuracyTests: XCTestCase {
    private func check(_ name: String, _ tanh: (Float) -> Float) {
        var worst = 0.0, worstAt: Float = 0, absolute = 0.0
        var xs = stride(from: -12.0, through: 12.0, by: 0.000_37).map { Float($0) }
        xs += stride(from: -0.001, through: 0.001, by: 0.000_001).map { Float($0) }
        xs += [0.0004, -0.0004, 0.000_399_99, 7.905_311, 7.905_312, 1e-30, -1e-30, 0, -0.0]
        for x in xs {
            let want = Foundation.tanh(Double(x))
            let got = tanh(x)
            let ulp = Double(Float(abs(want)).ulp)
            let error = ulp > 0 ? abs(Double(got) - want) / ulp : abs(Double(got) - want)
            if error > worst { worst = error; worstAt = x }
            absolute = max(absolute, abs(Double(got) - want))
            XCTAssertEqual(got, -tanh(-x), "\(name): tanh is odd at \(x)")
        }
        XCTAssertLessThanOrEqual(worst, 4, "\(name): tanh within 4 ulp (worst \(worst) at \(worstAt))")
        // What the cap's logits c·t feel: absolute error, in units of 2^-24.
        XCTAssertLessThanOrEqual(absolute, 0x1p-23, "\(name): |tanh error| \(absolute / 0x1p-24) × 2^-24")
        XCTAssertEqual(tanh(9), 1, "\(name) tanh(9)")
        XCTAssertEqual(tanh(.infinity), 1, "\(name) tanh(inf)")
        XCTAssertEqual(tanh(-.infinity), -1, "\(name) tanh(-inf)")
        XCTAssertTrue(tanh(.nan).isNaN, "\(name) tanh(NaN)")
    }

    func testBaseline() { check("baseline", BaselineRowKernels.tanhProbe) }

    func testAVX2() throws {
        try XCTSkipUnless(TileProducts.vectorLevel >= 1, "no AVX2 + FMA on this CPU")
        check("avx2", RowKernelsAVX2.RowKernels.tanhProbe)
    }

    func testAVX512() throws {
        try XCTSkipUnless(TileProducts.vectorLevel >= 2, "no AVX-512 on this CPU")
        check("avx512", RowKernelsAVX512.RowKernels.tanhProbe)
    }
}
