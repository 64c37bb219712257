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
