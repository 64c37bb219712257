import XCTest
@testable import GlobalAttention
import LocalAttention

/// The tolerances of BURST_COMPUTE_FAST (include/burst_attention.h) against a
/// float64 reference computed from the same bf16-rounded inputs, for any
/// storage type (a bf16 output's own rounding, ≤ 2⁻⁹·max|ref|, included):
/// the one place the Swift tests keep them. Measured with fp32 storage:
/// out ~1.1e-3, gradients 1.1–3e-3 (BF16ProductsTests).
enum FastTolerance {
    /// out: × max|ref|.
    static let out = 6e-3
    /// dq, dk, dv: × max|ref| (floored at 1e-3, as the exact tests do).
    static let gradients = 1.2e-2
    /// lse: absolute.
    static let lse = 1e-4
}

/// Asserts the FAST contract: every rank's out, lse, dq, dk, dv against the
/// float64 reference of q, k, v, dout rounded to bf16 (whatever the storage:
/// FAST rounds them) and, for the backward, D from the out the library
/// returned (as the half storage tests do: the backward is given that out).
func assertWithinFastTolerance(_ p: Problem, _ results: [RankResult], file: StaticString = #filePath, line: UInt = #line) {
    for (rank, r) in results.enumerated() {
        if let error = r.error { XCTFail("rank \(rank): \(error) — \(p.label)", file: file, line: line); return }
    }
    let bf16 = { (x: [Double]) in x.map { roundToStorage($0, .bf16) } }
    let inputs = p.inputs
    let (q, k, v, dout) = (bf16(inputs.q), bf16(inputs.k), bf16(inputs.v), bf16(inputs.dout))
    let ref = p.reference
    let (out, lse) = ref.forward(q: q, k: k, v: v)
    let backward = results.contains { !$0.dq.isEmpty }
    let given = p.unshard(results.map(\.out), heads: p.heads)
    let grads: (dq: [Double], dk: [Double], dv: [Double], dsinks: [Double]) = backward
        ? ref.backwardWithSinks(q: q, k: k, v: v, out: given, lse: lse, dout: dout) : ([], [], [], [])
    func check(_ name: String, _ got: [[Float]], _ want: [Double], heads h: Int, tolerance: Double, floor: Double = 0) {
        let allowed = tolerance * max(maxAbs(want), floor)
        var worst = 0.0, worstAt = ""
        for rank in 0..<p.ranks {
            for (i, (a, b)) in zip(got[rank], p.shardDouble(want, rank: rank, heads: h)).enumerated() where !(Double(a) == b) {
                let e = abs(Double(a) - b)
                if !(e <= worst) { worst = e.isNaN ? .infinity : e; worstAt = "rank \(rank) [\(i)] got \(a) want \(b)" }
            }
        }
        XCTAssertLessThanOrEqual(worst, allowed, "\(name): error \(worst) > \(allowed) at \(worstAt) — \(p.label)", file: file, line: line)
    }
    check("out", results.map(\.out), out, heads: p.heads, tolerance: FastTolerance.out)
    var lseError = 0.0
    for (rank, r) in results.enumerated() {
        for (a, b) in zip(r.lse, p.shardRows(lse, rank: rank)) where !(Double(a) == b) {
            let e = abs(Double(a) - b)
            lseError = max(lseError, e.isNaN ? .infinity : e)
        }
    }
    XCTAssertLessThanOrEqual(lseError, FastTolerance.lse, "lse error — \(p.label)", file: file, line: line)
    guard backward else { return }
    check("dq", results.map(\.dq), grads.dq, heads: p.heads, tolerance: FastTolerance.gradients, floor: 1e-3)
    check("dk", results.map(\.dk), grads.dk, heads: p.hkv, tolerance: FastTolerance.gradients, floor: 1e-3)
    check("dv", results.map(\.dv), grads.dv, heads: p.hkv, tolerance: FastTolerance.gradients, floor: 1e-3)
    assertSinkGradient(p, results, grads.dsinks, relative: FastTolerance.gradients, file: file, line: line)
}

/// burst_attention_config.compute (BURST_COMPUTE_*): which tile products a
/// plan's kernels run, validation and agreement of the field, and the FAST
/// contract over every pattern and variant, on the bf16 path this machine
/// has (hardware or emulation; test.sh reruns it on the AVX2 and portable
/// paths, where the emulation runs).
final class ComputeTests: XCTestCase {
    /// DEFAULT is FAST for bf16 storage on a CPU with bf16 products only;
    /// EXACT and FAST are what they say.
    func testProductsResolution() {
        var c = AttentionConfig()
        let cases: [(AttentionConfig.Compute, StorageType, Bool, LocalAttention.Products)] = [
            (.default, .f32, true, .exact), (.default, .bf16, true, .bf16), (.default, .f16, true, .exact),
            (.default, .f32, false, .exact), (.default, .bf16, false, .exact), (.default, .f16, false, .exact),
            (.exact, .f32, true, .exact), (.exact, .bf16, true, .exact), (.exact, .f16, false, .exact),
            (.fast, .f32, true, .bf16), (.fast, .bf16, false, .bf16), (.fast, .f16, true, .bf16),
        ]
        for (compute, storage, hardware, products) in cases {
            c.compute = compute.rawValue
            c.dtype = storage.rawValue
            XCTAssertEqual(c.products(bf16InHardware: hardware), products, "compute \(compute) storage \(storage) hardware \(hardware)")
        }
        c.compute = AttentionConfig.Compute.default.rawValue
        c.dtype = StorageType.bf16.rawValue
        XCTAssertEqual(c.products, LocalAttention.bf16InHardware ? .bf16 : .exact, "this machine")
        XCTAssertEqual(AttentionConfig().compute, 0, "the default config says DEFAULT")
    }

    /// compute out of range is INVALID_ARGUMENT naming the field and its values.
    func testValidation() {
        var c = Problem().config(rank: 0)
        for bad: Int32 in [-1, 3, 100, .max] {
            c.compute = bad
            XCTAssertThrowsError(try c.validate()) { error in
                let e = error as! BurstError
                XCTAssertEqual(e.status, .invalidArgument)
                XCTAssertTrue(e.message.contains("compute") && e.message.contains("BURST_COMPUTE_DEFAULT = 0")
                              && e.message.contains("BURST_COMPUTE_EXACT = 1") && e.message.contains("BURST_COMPUTE_FAST = 2"), e.message)
            }
        }
        for good: Int32 in [0, 1, 2] {
            c.compute = good
            XCTAssertNoThrow(try c.validate())
        }
    }

    /// A bad value on one rank fails plan creation on every rank; ranks that
    /// disagree get MISMATCH on every rank naming the field (also DEFAULT vs
    /// FAST with bf16 storage, which resolve alike: the field is compared as set).
    func testDisagreementFailsEverywhere() {
        var p = Problem()
        p.counts = [5, 6, 7]
        let cases: [(String, Status, (Int) -> Int32, StorageType)] = [
            ("one rank 3", .invalidArgument, { $0 == 1 ? 3 : 0 }, .f32),
            ("exact vs fast", .mismatch, { $0 == 2 ? 2 : 1 }, .f32),
            ("default vs fast, bf16", .mismatch, { $0 == 0 ? 0 : 2 }, .bf16),
        ]
        for (name, status, value, storage) in cases {
            p.dtype = storage
            let outcomes = runRanks(p.ranks) { rank, transport -> (Status?, String) in
                var c = p.config(rank: rank)
                c.compute = value(rank)
                do {
                    _ = try AttentionContext(transport: transport, defaultThreads: 1).makePlan(.success(c))
                    return (nil, "")
                } catch let e as BurstError { return (e.status, e.message) } catch { return (.internalError, "\(error)") }
            }
            for (rank, (got, message)) in outcomes.enumerated() {
                XCTAssertEqual(got, status, "\(name) rank \(rank): \(message)")
                XCTAssertTrue(message.contains("compute"), "\(name) rank \(rank): \(message)")
            }
        }
    }

    /// Every schedule makes its kernels with the plan's products.
    func testSchedulesMakeKernelsWithThePlansProducts() {
        for pattern in [AttentionConfig.Pattern.burst, .ring, .allgather, .ulysses] {
            for (compute, storage, want) in [(AttentionConfig.Compute.fast, StorageType.f32, LocalAttention.Products.bf16),
                                             (.default, .bf16, LocalAttention.bf16InHardware ? .bf16 : .exact),
                                             (.default, .f32, .exact), (.exact, .bf16, .exact)] {
                var p = Problem()
                p.counts = [9, 7]
                p.pattern = pattern
                p.compute = compute
                p.dtype = storage
                let results = runProblem(p, backward: false)
                for (rank, r) in results.enumerated() {
                    XCTAssertNil(r.error, "rank \(rank) — \(p.label)")
                    XCTAssertEqual(r.products, want, "rank \(rank) — \(p.label)")
                }
            }
        }
    }

    /// The variants of the sweep (`kv`: key/value heads, a multiple of the
    /// world size so that ULYSSES runs every one).
    static func variants(kv: Int) -> [(String, (inout Problem) -> Void)] {
        [
            ("plain", { p in p.heads = kv; p.kvHeads = kv }),
            ("causal zigzag", { p in p.heads = kv; p.kvHeads = kv; p.causal = true; p.distribution = .zigzag }),
            ("causal striped GQA", { p in p.heads = 2 * kv; p.kvHeads = kv; p.causal = true; p.distribution = .striped; p.layout = .bhsd }),
            ("window GQA B=2", { p in p.heads = 2 * kv; p.kvHeads = kv; p.window = (4, 2); p.batch = 2 }),
            ("causal window zigzag", { p in p.heads = kv; p.kvHeads = kv; p.causal = true; p.window = (6, 0); p.distribution = .zigzag }),
            ("varlen causal", { p in p.heads = kv; p.kvHeads = kv; p.causal = true; p.cuSeqlens = [0, 7, 7, 19, p.total] }),
            ("varlen zigzag window", { p in p.heads = 2 * kv; p.kvHeads = kv; p.window = (3, 3); p.distribution = .zigzag
                                       p.cuSeqlens = [0, 11, p.total] }),
        ]
    }

    /// FAST × 1–5 loopback ranks × every pattern × the variants, with fp32
    /// storage (compute = FAST) and bf16 storage (compute = DEFAULT, which is
    /// FAST for bf16 on a CPU with bf16 products; FAST elsewhere): forward and backward within `FastTolerance` of the
    /// float64 reference of the bf16-rounded inputs, and the kernels made
    /// with bf16 products.
    func testFastSweep() {
        var index = 0
        for ranks in 1...5 {
            let kv = ranks <= 2 ? 2 * ranks : ranks
            for (_, variant) in Self.variants(kv: kv) {
                for pattern in [AttentionConfig.Pattern.burst, .ring, .allgather, .ulysses] {
                    // bf16 storage: DEFAULT where that is FAST (a CPU with bf16
                    // products), else FAST asked for (the emulation).
                    let bf16Compute: AttentionConfig.Compute = LocalAttention.bf16InHardware ? .default : .fast
                    for (storage, compute) in [(StorageType.f32, AttentionConfig.Compute.fast), (.bf16, bf16Compute)] {
                        index += 1
                        var p = Problem()
                        p.counts = ranks == 1 ? [33] : unevenCounts(total: 31 + 2 * ranks, ranks: ranks)
                        p.headDim = index % 3 == 0 ? 5 : 8
                        p.pattern = pattern
                        p.seed = UInt64(index)
                        p.dtype = storage
                        p.compute = compute
                        variant(&p)
                        let results = runProblem(p)
                        assertWithinFastTolerance(p, results)
                        for (rank, r) in results.enumerated() where r.products != nil {
                            XCTAssertEqual(r.products, .bf16, "rank \(rank) — \(p.label)")
                        }
                    }
                }
            }
        }
    }

    /// Longer shards (several tiles a block, 2 threads) on 3 ranks, FAST with
    /// fp32 storage: the contract holds past one tile.
    func testFastLongerSequences() {
        for (pattern, causal, window) in [(AttentionConfig.Pattern.burst, true, (-1, -1)), (.ring, false, (100, 20)),
                                          (.allgather, true, (64, 0))] {
            var p = Problem()
            p.counts = [300, 300, 300]
            p.distribution = causal ? .zigzag : .contiguous
            p.causal = causal
            p.window = window
            p.heads = 4; p.kvHeads = 2; p.headDim = 32
            p.threads = 2
            p.pattern = pattern
            p.compute = .fast
            assertWithinFastTolerance(p, runProblem(p))
        }
    }
}
