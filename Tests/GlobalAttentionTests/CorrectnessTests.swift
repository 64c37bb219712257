import XCTest
@testable import GlobalAttention

final class CorrectnessTests: XCTestCase {
    /// World sizes 1…8 × mask × layout, uneven shards (a 0-token and a 1-token rank from P = 3).
    func testWorldSizesMasksLayouts() {
        for ranks in 1...8 {
            for causal in [false, true] {
                for layout in [AttentionConfig.Layout.bshd, .bhsd] {
                    var p = Problem()
                    p.counts = unevenCounts(total: 129, ranks: ranks)
                    p.causal = causal
                    p.layout = layout
                    p.heads = 2
                    p.headDim = 16
                    p.seed = UInt64(ranks * 10 + (causal ? 1 : 0))
                    assertWithinTolerance(p, referenceErrors(p, runProblem(p)))
                }
            }
        }
    }

    /// Odd sizes on one rank and on several: n = 1, 7, 129, 1000; d = 16, 64, 128; batch 1 and 3.
    func testOddShapes() {
        let cases: [(n: Int, d: Int, batch: Int, ranks: Int)] = [
            (1, 16, 1, 1), (1, 128, 3, 1), (7, 64, 3, 1), (7, 128, 1, 3), (129, 128, 1, 2),
            (129, 64, 3, 4), (1000, 16, 1, 1), (1000, 64, 1, 3), (1000, 128, 1, 2),
        ]
        for c in cases {
            for causal in [false, true] {
                var p = Problem()
                p.counts = unevenCounts(total: c.n, ranks: c.ranks)
                p.headDim = c.d
                p.batch = c.batch
                p.heads = c.d == 128 ? 1 : 2
                p.causal = causal
                p.layout = c.batch == 3 ? .bhsd : .bshd
                p.threads = 2
                assertWithinTolerance(p, referenceErrors(p, runProblem(p)))
            }
        }
    }

    /// DESIGN §3: error at P ranks ≤ 2 × error at P = 1 + 1e-6·max|ref|.
    func testErrorDoesNotGrowWithWorld() {
        for causal in [false, true] {
            var one = Problem()
            one.counts = [1024]
            one.headDim = 64
            one.causal = causal
            let e1 = referenceErrors(one, runProblem(one))
            var eight = one
            eight.counts = [128, 128, 128, 128, 128, 128, 128, 128]
            let e8 = referenceErrors(eight, runProblem(eight))
            XCTAssertLessThanOrEqual(e8.out, 2 * e1.out + 1e-6 * e1.outScale, "out causal=\(causal)")
            XCTAssertLessThanOrEqual(e8.dq, 2 * e1.dq + 1e-6 * e1.gradScale.0, "dq causal=\(causal)")
            XCTAssertLessThanOrEqual(e8.dk, 2 * e1.dk + 1e-6 * e1.gradScale.1, "dk causal=\(causal)")
            XCTAssertLessThanOrEqual(e8.dv, 2 * e1.dv + 1e-6 * e1.gradScale.2, "dv causal=\(causal)")
            assertWithinTolerance(eight, e8)
        }
    }

    /// Same inputs, same world, same config → bitwise identical results (with threads).
    func testBitwiseReproducible() {
        var p = Problem()
        p.counts = [100, 0, 37, 1]
        p.headDim = 64
        p.heads = 4
        p.causal = true
        p.threads = 2
        let a = runProblem(p), b = runProblem(p)
        for rank in 0..<4 {
            XCTAssertEqual(a[rank].out.map(\.bitPattern), b[rank].out.map(\.bitPattern))
            XCTAssertEqual(a[rank].lse.map(\.bitPattern), b[rank].lse.map(\.bitPattern))
            XCTAssertEqual(a[rank].dq.map(\.bitPattern), b[rank].dq.map(\.bitPattern))
            XCTAssertEqual(a[rank].dk.map(\.bitPattern), b[rank].dk.map(\.bitPattern))
            XCTAssertEqual(a[rank].dv.map(\.bitPattern), b[rank].dv.map(\.bitPattern))
        }
    }

    /// Logits of order 1e4 stay finite and match the reference.
    func testLargeLogitsStayFinite() {
        var p = Problem()
        p.counts = [40, 25]
        p.headDim = 16
        p.inputScale = 25  // q·k up to ~ 16·625 = 1e4
        p.scale = 1
        p.causal = true
        let results = runProblem(p, backward: false)
        for r in results { XCTAssertTrue(r.out.allSatisfy(\.isFinite)); XCTAssertTrue(r.lse.allSatisfy(\.isFinite)) }
        let e = referenceErrors(p, results)
        XCTAssertLessThanOrEqual(e.out, 1e-5 * e.outScale)
        // lse ~ 1e4: fp32 spacing there is ~1e-3, so the bound is relative.
        XCTAssertLessThanOrEqual(e.lse, 4e-7 * 2e4)
    }

    /// NaN in the inputs propagates and the group still finishes.
    func testNaNPropagatesWithoutHanging() {
        var p = Problem()
        p.counts = [5, 6]
        p.inputScale = .nan
        let results = runProblem(p)
        for r in results {
            XCTAssertNil(r.error)
            XCTAssertTrue(r.out.contains { $0.isNaN })
        }
    }
}
