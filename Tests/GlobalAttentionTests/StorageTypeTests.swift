import XCTest
@testable import GlobalAttention
import LocalAttention

/// bf16 and fp16 storage (BURST_DTYPE_BF16 / F16): results against the
/// float64 reference of the same rounded inputs, and the bytes each pattern
/// moves (storage-typed parts at 2 bytes an element, fp32 parts at 4).
final class StorageTypeTests: XCTestCase {
    /// The numerics contract for a half storage type (docs/storage-types.md "Storage
    /// types"): every element within the fp32 tolerance of DESIGN §3 (1e-5
    /// of max|ref| for out, 1e-4 for gradients, lse 1e-4 absolute) plus the
    /// rounding of the result: u·|ref| + u·(fp32 tolerance), u = 2^-8
    /// (bf16) or 2^-11 (fp16), plus 2^-24 (fp16's subnormal step). The
    /// reference gets the same rounded q, k, v, dout, and for the backward
    /// the rounded out the library was given.
    static func assertWithinHalfTolerance(_ p: Problem, _ results: [RankResult], file: StaticString = #filePath, line: UInt = #line) {
        for (rank, r) in results.enumerated() {
            if let error = r.error { XCTFail("rank \(rank): \(error) — \(p.label)", file: file, line: line); return }
        }
        let (q, k, v, dout) = p.inputs
        let ref = p.reference
        let (out, lse) = ref.forward(q: q, k: k, v: v)
        let backward = results.contains { !$0.dq.isEmpty }
        let given = p.unshard(results.map(\.out), heads: p.heads)   // the rounded out the backward was given
        let grads: (dq: [Double], dk: [Double], dv: [Double], dsinks: [Double]) = backward
            ? ref.backwardWithSinks(q: q, k: k, v: v, out: given, lse: lse, dout: dout) : ([], [], [], [])
        let u = p.dtype.unitRoundoff, subnormal = p.dtype == .f16 ? 0x1p-24 : 0
        func check(_ name: String, _ got: [[Float]], _ want: [Double], heads h: Int, relative: Double, floor: Double = 0) {
            let scale = max(maxAbs(want), floor), fp32 = relative * scale
            var worst = 0.0, worstAt = ""
            for rank in 0..<p.ranks {
                let exact = p.shardDouble(want, rank: rank, heads: h)
                for (i, (a, b)) in zip(got[rank], exact).enumerated() {
                    let allowed = fp32 * (1 + u) + u * abs(b) + subnormal
                    let excess = abs(Double(a) - b) / allowed
                    if !(excess <= worst) { worst = excess.isNaN ? .infinity : excess; worstAt = "rank \(rank) [\(i)] got \(a) want \(b)" }
                }
            }
            XCTAssertLessThanOrEqual(worst, 1, "\(name): error / allowed = \(worst) at \(worstAt) — \(p.label)", file: file, line: line)
        }
        check("out", results.map(\.out), out, heads: p.heads, relative: 1e-5)
        var lseError = 0.0
        for (rank, r) in results.enumerated() {
            for (a, b) in zip(r.lse, p.shardRows(lse, rank: rank)) where !(Double(a) == b) {
                lseError = max(lseError, abs(Double(a) - b).isNaN ? .infinity : abs(Double(a) - b))
            }
        }
        // 1e-4 for unit-scale inputs (DESIGN §3); with large logits lse is
        // large too and fp32 rounding of it is what is left: 4 ulp.
        let lseAllowed = 1e-4 + (p.inputScale > 1 ? 4 * 0x1p-23 * maxAbs(lse.filter(\.isFinite)) : 0)
        XCTAssertLessThanOrEqual(lseError, lseAllowed, "lse error — \(p.label)", file: file, line: line)
        guard backward else { return }
        check("dq", results.map(\.dq), grads.dq, heads: p.heads, relative: 1e-4, floor: 1e-3)
        check("dk", results.map(\.dk), grads.dk, heads: p.hkv, relative: 1e-4, floor: 1e-3)
        check("dv", results.map(\.dv), grads.dv, heads: p.hkv, relative: 1e-4, floor: 1e-3)
        assertSinkGradient(p, results, grads.dsinks, relative: 1e-4, file: file, line: line)
    }

    /// The variants of the sweep: plain, causal zigzag, GQA, a window, packed sequences.
    func variants(ranks: Int) -> [(String, (inout Problem) -> Void)] {
        let kv = ranks <= 2 ? 2 * ranks : ranks   // divisible by P: ULYSSES runs every variant
        return [
            ("plain", { p in p.heads = kv; p.kvHeads = kv }),
            ("causal zigzag", { p in p.heads = kv; p.kvHeads = kv; p.causal = true; p.distribution = .zigzag }),
            ("gqa", { p in p.heads = 2 * kv; p.kvHeads = kv; p.layout = .bhsd; p.batch = 2 }),
            ("window", { p in p.heads = kv; p.kvHeads = kv; p.window = (4, 2); p.distribution = .striped }),
            ("varlen", { p in p.heads = kv; p.kvHeads = kv; p.causal = true; p.cuSeqlens = [0, 7, 7, 19, p.total] }),
        ]
    }

    /// fp32 / bf16 / fp16 × 1–4 loopback ranks × every pattern × the
    /// variants: results within the contract, and bytes per rank exact —
    /// forward: half of fp32's for the ring patterns and ALLGATHER; ULYSSES
    /// and every backward: the fp32 formula with the storage-typed parts at
    /// 2 bytes an element.
    func testSweep() {
        var index = 0
        for ranks in 1...4 {
            for (_, variant) in variants(ranks: ranks) {
                for pattern in [AttentionConfig.Pattern.burst, .ring, .allgather, .ulysses] {
                    index += 1
                    var p = Problem()
                    p.counts = ranks == 1 ? [31] : unevenCounts(total: 31 + ranks, ranks: ranks)
                    p.headDim = index % 2 == 0 ? 8 : 5   // odd d: wire segments that start 2-aligned only
                    p.pattern = pattern
                    p.seed = UInt64(index)
                    variant(&p)
                    p.dtype = .f32
                    let full = runProblem(p)
                    assertWithinTolerance(p, referenceErrors(p, full))
                    for type in [StorageType.bf16, .f16] {
                        var h = p
                        h.dtype = type
                        let results = runProblem(h)
                        Self.assertWithinHalfTolerance(h, results)
                        checkBytes(h, results, fp32: runProblem(h.withDtype(.f32)))
                    }
                }
            }
        }
    }

    /// Bytes of a half run against the fp32 run of the same shape (whose
    /// bytes the other tests hold to the formulas), per rank, exactly.
    func checkBytes(_ p: Problem, _ half: [RankResult], fp32: [RankResult], file: StaticString = #filePath, line: UInt = #line) {
        let P = p.ranks, counts = p.rankCounts, d = p.headDim, N = p.total
        for r in 0..<P where half[r].error == nil && fp32[r].error == nil {
            let hf = half[r].forwardStats, hb = half[r].backwardStats
            let ff = fp32[r].forwardStats, fb = fp32[r].backwardStats
            var fwd: (UInt64, UInt64), bwd: (UInt64, UInt64)
            switch p.pattern {
            case .burst, .ring, .allgather:
                fwd = (ff.bytesSent / 2, ff.bytesReceived / 2)
                XCTAssertEqual(ff.bytesSent % 2, 0)
                if p.pattern == .allgather {
                    // The gather halves; the reduce-scatter of fp32 partials does not.
                    bwd = (fb.bytesSent - ff.bytesSent / 2, fb.bytesReceived - ff.bytesReceived / 2)
                } else {
                    let needs = bruteForceNeeds(p)
                    let e = p.pattern == .ring
                        ? expectedRingBytes(p, groupSize: P, holderNeeds: { needs[$0][$1] },
                                            readOnly: { p.zkv * counts[$0] * d }, accumulator: { 2 * p.zkv * counts[$0] * d })
                        : expectedRingBytes(p, groupSize: P, holderNeeds: { needs[$1][$0] },
                                            readOnly: { p.z * counts[$0] * (d + 2) }, accumulator: { p.z * counts[$0] * d })
                    bwd = (e.sent[r], e.received[r])
                    // The storage-typed part: exactly half of its fp32 bytes.
                    let f32 = p.pattern == .ring
                        ? expectedRingBytes(p, groupSize: P, holderNeeds: { needs[$0][$1] },
                                            readOnly: { 2 * p.zkv * counts[$0] * d }, accumulator: { 2 * p.zkv * counts[$0] * d })
                        : expectedRingBytes(p, groupSize: P, holderNeeds: { needs[$1][$0] },
                                            readOnly: { p.z * counts[$0] * (2 * d + 2) }, accumulator: { p.z * counts[$0] * d })
                    XCTAssertEqual(fb.bytesSent, f32.sent[r], "fp32 bwd sent rank \(r) \(p.label)", file: file, line: line)
                }
            case .ulysses:
                // lse (forward), D and lse (backward) stay fp32: 4 bytes per row and head.
                let zqs = UInt64(p.z / P), mine = UInt64(counts[r]), others = UInt64(N - counts[r]), P1 = UInt64(P - 1)
                fwd = ((ff.bytesSent + 4 * zqs * others) / 2, (ff.bytesReceived + 4 * zqs * P1 * mine) / 2)
                bwd = ((fb.bytesSent + 8 * zqs * P1 * mine) / 2, (fb.bytesReceived + 8 * zqs * others) / 2)
            default:
                XCTFail("pattern \(p.pattern)"); return
            }
            XCTAssertEqual(hf.bytesSent, fwd.0, "fwd sent rank \(r) \(p.label)", file: file, line: line)
            XCTAssertEqual(hf.bytesReceived, fwd.1, "fwd received rank \(r) \(p.label)", file: file, line: line)
            XCTAssertEqual(hb.bytesSent, bwd.0, "bwd sent rank \(r) \(p.label)", file: file, line: line)
            XCTAssertEqual(hb.bytesReceived, bwd.1, "bwd received rank \(r) \(p.label)", file: file, line: line)
            XCTAssertEqual(hf.messagesSent, ff.messagesSent, "messages rank \(r) \(p.label)", file: file, line: line)
        }
    }

    /// The double ring with half types: the own block's wire form lives in a
    /// receive slot at step 0 (RingBuffers.ownWireSlot), so every route
    /// shape is exercised; bytes (also between groups) follow the route's rules.
    func testDoubleRing() {
        var index = 0
        for (ranks, groupSize) in [(4, 2), (4, 1), (6, 3), (6, 2), (8, 4)] {
            for pattern in [AttentionConfig.Pattern.burst, .ring] {
                for type in [StorageType.bf16, .f16] {
                    index += 1
                    var p = Problem()
                    p.counts = unevenCounts(total: 40, ranks: ranks)
                    p.heads = 2; p.kvHeads = index % 2 == 0 ? 1 : 2; p.headDim = 6
                    p.causal = index % 3 == 0
                    p.pattern = pattern; p.intraGroupSize = Int32(groupSize); p.dtype = type
                    p.network = SimulatedNetwork(groupSize: groupSize)
                    let results = runProblem(p)
                    Self.assertWithinHalfTolerance(p, results)
                    let needs = bruteForceNeeds(p), counts = p.rankCounts, d = p.headDim
                    let forward = expectedRingBytes(p, groupSize: groupSize, holderNeeds: { needs[$0][$1] },
                                                    readOnly: { p.zkv * counts[$0] * d }, accumulator: nil)
                    let backward = pattern == .ring
                        ? expectedRingBytes(p, groupSize: groupSize, holderNeeds: { needs[$0][$1] },
                                            readOnly: { p.zkv * counts[$0] * d }, accumulator: { 2 * p.zkv * counts[$0] * d })
                        : expectedRingBytes(p, groupSize: groupSize, holderNeeds: { needs[$1][$0] },
                                            readOnly: { p.z * counts[$0] * (d + 2) }, accumulator: { p.z * counts[$0] * d })
                    for (r, result) in results.enumerated() where result.error == nil {
                        XCTAssertEqual(result.forwardStats.bytesSent, forward.sent[r], "fwd rank \(r) \(p.label)")
                        XCTAssertEqual(result.forwardStats.bytesReceived, forward.received[r], "fwd rank \(r) \(p.label)")
                        XCTAssertEqual(result.forwardStats.bytesSentInterGroup, forward.sentInter[r], "fwd inter rank \(r) \(p.label)")
                        XCTAssertEqual(result.backwardStats.bytesSent, backward.sent[r], "bwd rank \(r) \(p.label)")
                        XCTAssertEqual(result.backwardStats.bytesReceived, backward.received[r], "bwd rank \(r) \(p.label)")
                        XCTAssertEqual(result.backwardStats.bytesSentInterGroup, backward.sentInter[r], "bwd inter rank \(r) \(p.label)")
                    }
                }
            }
        }
    }

    /// The library's byte formulas (used by AUTO's cost model) for the
    /// collective patterns equal the measured bytes for half types too.
    func testCollectiveFormulasWithStorage() {
        for type in [StorageType.f32, .bf16, .f16] {
            for pattern in [AttentionConfig.Pattern.allgather, .ulysses] {
                var p = Problem()
                p.counts = [5, 9, 3, 7]
                p.heads = 8; p.kvHeads = 4; p.headDim = 6; p.causal = true
                p.pattern = pattern
                p.dtype = type
                let results = runProblem(p)
                assertWithinHalfToleranceOrFP32(p, results)
                let plans = results
                for (r, result) in plans.enumerated() {
                    let tokens = tokenLayout(p)
                    for backward in [false, true] {
                        let want = pattern == .allgather
                            ? AttentionPlan.allgatherBytes(tokens: tokens, rank: r, zq: p.z, zkv: p.zkv, headDim: p.headDim,
                                                           backward: backward, storage: type)
                            : AttentionPlan.ulyssesBytes(tokens: tokens, rank: r, zq: p.z, zkv: p.zkv, headDim: p.headDim,
                                                         backward: backward, storage: type)
                        let got = backward ? result.backwardStats : result.forwardStats
                        XCTAssertEqual(got.bytesSent, want.sent, "\(p.label) backward \(backward) rank \(r)")
                        XCTAssertEqual(got.bytesReceived, want.received, "\(p.label) backward \(backward) rank \(r)")
                    }
                }
            }
        }
    }

    func assertWithinHalfToleranceOrFP32(_ p: Problem, _ results: [RankResult]) {
        if p.dtype == .f32 { assertWithinTolerance(p, referenceErrors(p, results)) } else { Self.assertWithinHalfTolerance(p, results) }
    }

    /// Same inputs, same world → the same bits, run after run.
    func testReproducible() {
        for type in [StorageType.bf16, .f16] {
            var p = Problem()
            p.counts = [11, 6, 9]
            p.heads = 3; p.headDim = 8; p.causal = true; p.dtype = type
            let a = runProblem(p), b = runProblem(p)
            for r in 0..<3 {
                XCTAssertEqual(a[r].out.map(\.bitPattern), b[r].out.map(\.bitPattern))
                XCTAssertEqual(a[r].dk.map(\.bitPattern), b[r].dk.map(\.bitPattern))
            }
        }
    }

    /// Large logits stay finite, NaN inputs give NaN (quiet) outputs, and
    /// fp16 results that overflow become inf — never a crash or hang.
    func testSpecialValues() {
        var p = Problem()
        p.counts = [6, 5]
        p.dtype = .f16
        p.inputScale = 40   // scores of ~1e4 after scaling
        let results = runProblem(p, backward: false)
        for r in results {
            XCTAssertNil(r.error)
            XCTAssertTrue(r.out.allSatisfy { $0.isFinite }, "large logits must stay finite")
        }
        Self.assertWithinHalfTolerance(p, results)
    }

    /// dtype out of range is INVALID_ARGUMENT naming the known values.
    func testDtypeValidation() {
        var c = Problem().config(rank: 0)
        for bad: Int32 in [-1, 3, 100] {
            c.dtype = bad
            XCTAssertThrowsError(try c.validate()) { error in
                let e = error as! BurstError
                XCTAssertEqual(e.status, .invalidArgument)
                XCTAssertTrue(e.message.contains("BURST_DTYPE_BF16 = 1") && e.message.contains("BURST_DTYPE_F16 = 2"), e.message)
            }
        }
        for good: Int32 in [0, 1, 2] {
            c.dtype = good
            XCTAssertNoThrow(try c.validate())
        }
    }

    /// The workspace with a half type is no larger than with fp32 but for
    /// BURST's fp32 statistics (the wire receive buffers are half-size; one
    /// fp32 decode buffer is added).
    func testWorkspaceNotLarger() {
        for pattern in [AttentionConfig.Pattern.burst, .ring] {
            var bytes: [StorageType: Int] = [:]
            for type in [StorageType.f32, .bf16] {
                var p = Problem()
                p.counts = [16, 16, 16]
                p.heads = 4; p.headDim = 16; p.pattern = pattern; p.dtype = type
                let sizes = runRanks(3) { rank, transport -> Int in
                    let plan = try! AttentionContext(transport: transport, defaultThreads: 1).makePlan(.success(p.config(rank: rank)))
                    let n = p.rankCounts[rank] * p.heads * p.headDim
                    let q = StorageArray([Float](repeating: 0.5, count: n), type), o = StorageArray(count: n, type)
                    var lse = [Float](repeating: 0, count: p.heads * p.rankCounts[rank])
                    try! plan.forward(q: q.raw, k: q.raw, v: q.raw, out: o.mutableRaw, lse: &lse)
                    let g = StorageArray(count: n, type), g2 = StorageArray(count: n, type), g3 = StorageArray(count: n, type)
                    try! plan.backward(q: q.raw, k: q.raw, v: q.raw, out: o.raw, lse: lse, dout: q.raw,
                                       dq: g.mutableRaw, dk: g2.mutableRaw, dv: g3.mutableRaw)
                    return plan.workspaceBytes
                }
                bytes[type] = sizes[0]
            }
            // BURST: the bundle's D|lse (2·Zq·n_max fp32) travel as fp32, so
            // two half-size receive buffers and the decode buffer exceed two
            // fp32 receive buffers by exactly that much.
            let extra = pattern == .burst ? 2 * 4 * 16 * 4 : 0
            XCTAssertLessThanOrEqual(bytes[.bf16]!, bytes[.f32]! + extra, "\(pattern): \(bytes)")
        }
    }
}

extension Problem {
    func withDtype(_ type: StorageType) -> Problem { var p = self; p.dtype = type; return p }
}

/// The plan's token layout for a problem (for the library's own formulas).
func tokenLayout(_ p: Problem) -> TokenLayout {
    let results = runRanks(p.ranks) { rank, transport -> TokenLayout in
        try! AttentionContext(transport: transport, defaultThreads: 1).makePlan(.success(p.config(rank: rank))).tokens
    }
    return results[0]
}
