import XCTest
import Foundation
import CBurstABI
@testable import BurstAttention
@testable import GlobalAttention
@testable import LocalAttention

/// Issue 9's guarantees that need threads, handles or odd numerics
/// (docs/RELIABILITY.md lists each with the test that shows it).
final class ReliabilityTests: XCTestCase {
    // MARK: Numerics at the edges

    /// A window wider than any sequence (up to Int64.max) is the unbounded
    /// one, bit for bit (i + window_right once wrapped to a negative bound).
    func testHugeWindowsEqualUnbounded() {
        var p = Problem(); p.counts = [7, 0, 9]; p.causal = false
        let unbounded = runProblem(p)
        for window in [(left: Int.max, right: Int.max), (left: -1, right: Int.max), (left: Int.max, right: -1)] {
            p.window = window
            let huge = runProblem(p)
            for rank in 0..<p.ranks {
                XCTAssertNil(huge[rank].error)
                XCTAssertEqual(huge[rank].out, unbounded[rank].out, "window \(window) rank \(rank) out")
                XCTAssertEqual(huge[rank].dq, unbounded[rank].dq, "window \(window) rank \(rank) dq")
                XCTAssertEqual(huge[rank].dk, unbounded[rank].dk, "window \(window) rank \(rank) dk")
            }
        }
    }

    /// Logits of magnitude ~1e4 (softmax_scale 1000 on unit inputs): out and
    /// lse stay finite, and within fp32 rounding of the logits (an fp32 logit
    /// L carries |L|·2^-24 of rounding, which moves p by that factor).
    func testLargeLogitsStayFiniteAndWithinRounding() {
        for pattern in [AttentionConfig.Pattern.burst, .allgather] {
            var p = Problem(); p.counts = [11, 6]; p.scale = 1000; p.causal = true; p.pattern = pattern
            let results = runProblem(p)
            let (q, k, _, _) = p.inputs
            let maxLogit = Double(p.scale) * (q.map(abs).max() ?? 0) * (k.map(abs).max() ?? 0) * Double(p.headDim)
            for (rank, r) in results.enumerated() {
                XCTAssertNil(r.error)
                XCTAssertTrue(r.out.allSatisfy(\.isFinite), "rank \(rank) out finite")
                XCTAssertTrue(r.lse.allSatisfy(\.isFinite), "rank \(rank) lse finite")
                XCTAssertTrue((r.dq + r.dk + r.dv).allSatisfy(\.isFinite), "rank \(rank) gradients finite")
            }
            let e = referenceErrors(p, results)
            let rounding = 4 * maxLogit * 0x1p-24
            XCTAssertLessThanOrEqual(e.out, (1e-5 + rounding) * e.outScale, "out error \(e.out), logits up to \(maxLogit)")
            XCTAssertLessThanOrEqual(e.lse, 1e-4 * max(1, maxLogit), "lse error \(e.lse)")
        }
    }

    /// NaN and Inf in the inputs propagate as IEEE arithmetic says and only
    /// where the math sends them: a NaN in q row i makes out row i and lse i
    /// NaN; a NaN in key j makes every query that sees j NaN; rows that do not
    /// touch the bad value are bitwise the clean run's. The status stays OK.
    func testNaNAndInfPropagateOnlyWhereTheyReach() {
        // One rank, causal, BSHD [1, N, 2, 4]: row i of head h is at (i·2 + h)·4.
        let n = 12, heads = 2, d = 4
        var config = AttentionConfig()
        config.batch = 1; config.seqLenLocal = Int64(n); config.numHeadsQ = Int64(heads); config.numHeadsKV = Int64(heads)
        config.headDim = Int64(d); config.mask = 1; config.numThreads = 1
        func run(_ edit: (inout [Float], inout [Float], inout [Float]) -> Void) -> (out: [Float], lse: [Float], status: BurstError?) {
            var q = (0..<(n * heads * d)).map { Float(($0 * 37) % 17) / 17 - 0.5 }
            var k = (0..<(n * heads * d)).map { Float(($0 * 53) % 19) / 19 - 0.5 }
            var v = (0..<(n * heads * d)).map { Float(($0 * 29) % 13) / 13 - 0.5 }
            edit(&q, &k, &v)
            var out = [Float](repeating: 0, count: q.count), lse = [Float](repeating: 0, count: n * heads)
            let result: BurstError? = runRanks(1) { _, transport in
                do {
                    let plan = try AttentionContext(transport: transport, defaultThreads: 1).makePlan(.success(config))
                    try plan.forward(q: q, k: k, v: v, out: &out, lse: &lse)
                    var dq = q, dk = k, dv = v
                    try plan.backward(q: q, k: k, v: v, out: out, lse: lse, dout: q, dq: &dq, dk: &dk, dv: &dv)
                    return nil
                } catch let e as BurstError { return e } catch { return BurstError(.internalError, "\(error)") }
            }[0]
            return (out, lse, result)
        }
        let clean = run { _, _, _ in }
        XCTAssertNil(clean.status)
        let row = { (i: Int, h: Int) in (i * heads + h) * d }
        // NaN in q at (row 5, head 1).
        let qNaN = run { q, _, _ in q[row(5, 1) + 2] = .nan }
        XCTAssertNil(qNaN.status, "a NaN input is computed through, not an error")
        for i in 0..<n {
            for h in 0..<heads {
                let o = Array(qNaN.out[row(i, h)..<(row(i, h) + d)]), c = Array(clean.out[row(i, h)..<(row(i, h) + d)])
                if i == 5 && h == 1 {
                    XCTAssertTrue(o.allSatisfy(\.isNaN), "out row of the NaN query"); XCTAssertTrue(qNaN.lse[h * n + i].isNaN)
                } else {
                    XCTAssertEqual(o, c, "row \(i) head \(h) untouched by a NaN in another query")
                }
            }
        }
        // NaN in k at (key 7, head 0): causal queries 7… of head 0 see it.
        let kNaN = run { _, k, _ in k[row(7, 0)] = .nan }
        XCTAssertNil(kNaN.status)
        for i in 0..<n {
            let o = Array(kNaN.out[row(i, 0)..<(row(i, 0) + d)]), c = Array(clean.out[row(i, 0)..<(row(i, 0) + d)])
            if i >= 7 { XCTAssertTrue(o.allSatisfy(\.isNaN), "query \(i) sees the NaN key") }
            else { XCTAssertEqual(o, c, "query \(i) precedes the NaN key (masked): bitwise clean") }
            XCTAssertEqual(Array(kNaN.out[row(i, 1)..<(row(i, 1) + d)]), Array(clean.out[row(i, 1)..<(row(i, 1) + d)]), "other head")
        }
        // +Inf in v at (key 3, head 1): out of the queries that see it is not
        // finite. Queries that do not see it may be NaN too: their weight for
        // key 3 is 0, and 0·Inf = NaN in the P·V product (as in any GEMM-based
        // attention) for the queries whose tile holds the key; other heads and
        // columns stay bitwise clean.
        let vInf = run { _, _, v in v[row(3, 1) + 1] = .infinity }
        XCTAssertNil(vInf.status)
        for i in 0..<n where i >= 3 { XCTAssertFalse(vInf.out[row(i, 1) + 1].isFinite, "query \(i) column 1 sees +inf") }
        for i in 0..<n {
            XCTAssertEqual(Array(vInf.out[row(i, 0)..<(row(i, 0) + d)]), Array(clean.out[row(i, 0)..<(row(i, 0) + d)]), "head 0")
            XCTAssertEqual(vInf.out[row(i, 1)], clean.out[row(i, 1)], "head 1 column 0")
        }
    }

    /// 0-token shards on any rank, for every pattern, against float64.
    func testEmptyShardOnAnyRank() {
        for pattern in [AttentionConfig.Pattern.burst, .ring, .allgather, .ulysses] {
            for empty in 0..<3 {
                var p = Problem(); p.counts = [6, 5, 7]; p.counts[empty] = 0; p.causal = true; p.heads = 3; p.pattern = pattern
                assertWithinTolerance(p, referenceErrors(p, runProblem(p)))
            }
        }
    }

    /// An allocation that fails on one rank (the workspace of its first
    /// forward, fault-injected on that rank's thread) is OUT_OF_MEMORY on
    /// every rank, naming the rank; nothing is poisoned, and the next call
    /// (memory back) succeeds everywhere.
    func testAllocationFailureOnOneRankFailsEveryRank() {
        var p = Problem(); p.counts = [5, 6, 4]; p.causal = true
        let inputs = p.inputs
        let results: [(BurstError?, BurstError?)] = runRanks(3) { rank, transport in
            do {
                let plan = try AttentionContext(transport: transport, defaultThreads: 1).makePlan(.success(p.config(rank: rank)))
                let q = p.shard(inputs.q, rank: rank, heads: p.heads), k = p.shard(inputs.k, rank: rank, heads: p.hkv)
                var out = [Float](repeating: 0, count: q.count)
                if rank == 1 { FloatBuffer.failAllocations(atLeast: 1) }
                var first: BurstError?
                do { try plan.forward(q: q, k: k, v: k, out: &out, lse: nil) } catch let e as BurstError { first = e }
                if rank == 1 { FloatBuffer.failAllocations(atLeast: nil) }
                var second: BurstError?
                do { try plan.forward(q: q, k: k, v: k, out: &out, lse: nil) } catch let e as BurstError { second = e }
                return (first, second)
            } catch let e as BurstError { return (e, e) } catch { return (BurstError(.internalError, "\(error)"), nil) }
        }
        for (rank, (first, second)) in results.enumerated() {
            XCTAssertEqual(first?.status, .outOfMemory, "rank \(rank): \(String(describing: first))")
            if rank != 1 { XCTAssertTrue(first?.message.contains("rank 1") ?? false, "rank \(rank) names the failing rank: \(first?.message ?? "-")") }
            XCTAssertNil(second, "rank \(rank): the plan works once memory is back")
        }
    }

    /// A rank that times out in plan creation (its peer came late) poisons
    /// its context: the next plan creation, made by both ranks together, must
    /// not pair the late rank's stale record with a new one (before: MISMATCH
    /// on one rank, OK on the other — found by the fuzz helper). The outcomes
    /// of the second call agree, and a poisoned context says so.
    func testTimeoutInPlanCreatePoisonsTheContext() {
        var p = Problem(); p.counts = [4, 4]
        let outcomes: [(Status?, Status?, String)] = runRanks(2) { rank, transport in
            let context = AttentionContext(transport: transport, defaultThreads: 1)
            var config = p.config(rank: rank)
            config.timeoutSeconds = 0.05
            if rank == 1 { Thread.sleep(forTimeInterval: 0.3) }
            var first: BurstError?, second: BurstError?
            do { _ = try context.makePlan(.success(config)) } catch let e as BurstError { first = e } catch {}
            Thread.sleep(forTimeInterval: rank == 0 ? 0.5 : 0.2)   // both well past the first call
            do { _ = try context.makePlan(.success(config)) } catch let e as BurstError { second = e } catch {}
            return (first?.status, second?.status, second?.message ?? "")
        }
        XCTAssertEqual(outcomes[0].0, .timeout, "rank 0 waited 0.05 s for a peer 0.3 s late")
        XCTAssertEqual(outcomes[0].1 == nil, outcomes[1].1 == nil, "the second plan creation agrees: \(outcomes)")
        for (rank, outcome) in outcomes.enumerated() where outcome.0 == .timeout {
            XCTAssertEqual(outcome.1, .timeout)
            XCTAssertTrue(outcome.2.contains("context is unusable"), "rank \(rank): \(outcome.2)")
        }
    }

    // MARK: Handles and threads, through the C ABI

    private func config(tokens: Int64, timeout: Double = 0) -> burst_attention_config {
        var c = burst_attention_config()
        _burst_attention_config_init(&c)
        c.batch = 1; c.seq_len_local = tokens; c.num_heads_q = 2; c.num_heads_kv = 2; c.head_dim = 16
        c.mask = Int32(BURST_MASK_CAUSAL); c.num_threads = 1; c.timeout_seconds = timeout
        return c
    }

    private func inputs(_ tokens: Int, seed: Int) -> [Float] {
        (0..<(tokens * 2 * 16)).map { Float((($0 + seed) * 2654435761) % 1000) / 500 - 1 }
    }

    /// Distinct plans on distinct threads at once (each its own self context,
    /// and the ranks of a loopback group) give the results of one thread alone.
    func testDistinctPlansOnDistinctThreads() {
        let tokens = 300
        func forwardOnce(seed: Int) -> [Float] {
            var context: OpaquePointer?, plan: OpaquePointer?
            XCTAssertEqual(_burst_context_create_self(&context), BURST_OK)
            var c = config(tokens: Int64(tokens))
            XCTAssertEqual(_burst_plan_create(context, &c, &plan), BURST_OK)
            let x = inputs(tokens, seed: seed)
            var out = [Float](repeating: 0, count: x.count)
            for _ in 0..<3 { XCTAssertEqual(_burst_forward(plan, x, x, x, &out, nil), BURST_OK) }
            _burst_plan_destroy(plan); _burst_context_destroy(context)
            return out
        }
        let alone = (0..<4).map { forwardOnce(seed: $0) }
        let together: [[Float]] = runRanks(4) { rank, _ in forwardOnce(seed: rank) }
        XCTAssertEqual(together, alone)
    }

    /// A loopback group whose rank 1 joins only when `release` is signalled:
    /// rank 0's collective call then blocks inside the library meanwhile.
    private func withStalledGroup(timeout: Double, _ body: (_ plan0: OpaquePointer, _ plan1: OpaquePointer, _ x: [Float]) -> Void) {
        var contexts = [OpaquePointer?](repeating: nil, count: 2)
        XCTAssertEqual(_burst_context_create_loopback(2, &contexts), BURST_OK)
        let c = config(tokens: 40, timeout: timeout)
        let pointers = contexts
        // Each rank thread returns its own plan (no shared array written from two threads).
        let made: [(status: burst_status, plan: UInt)] = runRanks(2) { rank, _ in
            var mine = c, plan: OpaquePointer?
            let status = _burst_plan_create(pointers[rank], &mine, &plan)
            return (status, UInt(bitPattern: plan))
        }
        XCTAssertEqual(made.map(\.status), [BURST_OK, BURST_OK])
        let plans = made.map { OpaquePointer(bitPattern: $0.plan) }
        body(plans[0]!, plans[1]!, inputs(40, seed: 3))
        _burst_plan_destroy(plans[0]); _burst_plan_destroy(plans[1])
        _burst_context_destroy(contexts[0]); _burst_context_destroy(contexts[1])
    }

    /// The same plan from two threads: while one call is inside (blocked on a
    /// peer), the other gets BUSY at once; the first then completes normally.
    func testSamePlanFromTwoThreadsGivesBusy() {
        withStalledGroup(timeout: 30) { plan0, plan1, x in
            let p0 = UInt(bitPattern: plan0), p1 = UInt(bitPattern: plan1)
            let first = Background { forward(p0, x) }
            Thread.sleep(forTimeInterval: 0.3)   // let that call get inside (it waits for rank 1)
            let second = forward(p0, x)
            let message = String(cString: _burst_last_error())
            let peer = Background { forward(p1, x) }
            let firstStatus = first.wait()
            // Exactly one of the two calls on plan 0 ran; the other was refused.
            XCTAssertEqual(Set([firstStatus.rawValue, second.rawValue]), Set([BURST_OK.rawValue, BURST_ERROR_BUSY.rawValue]))
            if second == BURST_ERROR_BUSY { XCTAssertTrue(message.contains("in use"), message) }
            XCTAssertEqual(peer.wait(), BURST_OK)
        }
    }

    /// A plan destroyed while another thread is inside a call on it: that call
    /// completes normally (the plan lives until it returns); later calls get
    /// INVALID_ARGUMENT naming the handle; a second destroy is ignored.
    func testDestroyWhileAnotherThreadIsInside() {
        var contexts = [OpaquePointer?](repeating: nil, count: 2)
        XCTAssertEqual(_burst_context_create_loopback(2, &contexts), BURST_OK)
        let c = config(tokens: 40, timeout: 30)
        let pointers = contexts
        let made: [(status: burst_status, plan: UInt)] = runRanks(2) { rank, _ in
            var mine = c, plan: OpaquePointer?
            let status = _burst_plan_create(pointers[rank], &mine, &plan)
            return (status, UInt(bitPattern: plan))
        }
        XCTAssertEqual(made.map(\.status), [BURST_OK, BURST_OK])
        let plans = made.map { OpaquePointer(bitPattern: $0.plan) }
        let x = inputs(40, seed: 5)
        let liveBefore = HandleRegistry.liveCount
        let plan0 = plans[0]!, plan1 = plans[1]!
        let p0 = UInt(bitPattern: plan0), p1 = UInt(bitPattern: plan1)
        let inside = Background { forward(p0, x) }
        Thread.sleep(forTimeInterval: 0.3)   // rank 0's call is now waiting for rank 1
        _burst_plan_destroy(plan0)
        _burst_context_destroy(contexts[0])   // its plan (in flight) keeps it alive
        XCTAssertEqual(HandleRegistry.liveCount, liveBefore - 2)
        let peer = Background { forward(p1, x) }
        XCTAssertEqual(inside.wait(), BURST_OK, "the call in flight completes")
        XCTAssertEqual(peer.wait(), BURST_OK)
        XCTAssertEqual(forward(p0, x), BURST_ERROR_INVALID_ARGUMENT)
        XCTAssertTrue(String(cString: _burst_last_error()).contains("not a live plan"))
        var stats = burst_stats(); stats.struct_size = UInt32(MemoryLayout<burst_stats>.size)
        XCTAssertEqual(_burst_plan_stats(plan0, &stats), BURST_ERROR_INVALID_ARGUMENT)
        _burst_plan_destroy(plan0)   // twice: ignored
        var r: Int32 = 0
        XCTAssertEqual(_burst_context_rank(contexts[0], &r, nil), BURST_ERROR_INVALID_ARGUMENT)
        XCTAssertEqual(_burst_context_rank(plan1, &r, nil), BURST_ERROR_INVALID_ARGUMENT, "a plan is not a context")
        _burst_plan_destroy(plan1); _burst_context_destroy(contexts[1])
        XCTAssertEqual(HandleRegistry.liveCount, liveBefore - 4)
    }

    /// A peer that never arrives: TIMEOUT on the live rank within the timeout
    /// (plus scheduling slack: this bounds a hang, it measures no speed), the
    /// message names the operation, and every later call fails at once.
    func testTimeoutIsBoundedAndPoisons() {
        withStalledGroup(timeout: 2) { plan0, _, x in
            var out = [Float](repeating: 0, count: x.count)
            let start = Date()
            XCTAssertEqual(_burst_forward(plan0, x, x, x, &out, nil), BURST_ERROR_TIMEOUT)
            let waited = Date().timeIntervalSince(start)
            print("timeout 2 s returned after \(String(format: "%.3f", waited)) s")
            XCTAssertLessThan(waited, 2 + 10, "a timeout that does not return is a hang")
            XCTAssertGreaterThanOrEqual(waited, 1.9, "returned before the timeout")
            let later = Date()
            XCTAssertEqual(_burst_forward(plan0, x, x, x, &out, nil), BURST_ERROR_TIMEOUT)
            XCTAssertTrue(String(cString: _burst_last_error()).contains("unusable"))
            XCTAssertLessThan(Date().timeIntervalSince(later), 1.5, "a poisoned plan answers without waiting out another timeout")
        }
    }
}

/// One forward of a 40-token plan given by address (threads take no pointers).
private func forward(_ plan: UInt, _ x: [Float]) -> burst_status {
    var out = [Float](repeating: 0, count: x.count)
    let status = _burst_forward(OpaquePointer(bitPattern: plan), x, x, x, &out, nil)
    if status == BURST_OK && !out.allSatisfy(\.isFinite) { return BURST_ERROR_INTERNAL }
    return status
}

/// Runs `body` on its own thread; `wait()` returns its result.
final class Background<T>: @unchecked Sendable {
    private var result: T?
    private let done = DispatchSemaphore(value: 0)
    init(_ body: @escaping () -> T) {
        let thread = Thread { [self] in
            result = body()
            done.signal()
        }
        thread.start()
    }
    func wait() -> T {
        done.wait()
        return result!
    }
}
