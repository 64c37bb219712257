import XCTest
@testable import GlobalAttention

/// A mistake on one rank becomes an error on every rank; nothing hangs.
final class FailureTests: XCTestCase {
    func plan(_ transport: LoopbackTransport, _ config: AttentionConfig) throws -> AttentionPlan {
        try AttentionContext(transport: transport, defaultThreads: 1).makePlan(.success(config))
    }

    func testConfigMismatchFailsEveryRankNamingTheField() {
        let results: [BurstError?] = runRanks(3) { rank, transport in
            var p = Problem(); p.counts = [4, 4, 4]
            var config = p.config(rank: rank)
            if rank == 2 { config.headDim = 32 }
            do { _ = try self.plan(transport, config); return nil } catch let e as BurstError { return e } catch { return nil }
        }
        for (rank, error) in results.enumerated() {
            XCTAssertEqual(error?.status, .mismatch, "rank \(rank)")
            XCTAssertTrue(error?.message.contains("head_dim") ?? false, "rank \(rank): \(String(describing: error))")
        }
    }

    func testInvalidConfigOnOneRankFailsAll() {
        let results: [BurstError?] = runRanks(2) { rank, transport in
            var p = Problem(); p.counts = [4, 4]
            var config = p.config(rank: rank)
            if rank == 1 { config.batch = 0 }
            do { _ = try self.plan(transport, config); return nil } catch let e as BurstError { return e } catch { return nil }
        }
        XCTAssertEqual(results[0]?.status, .invalidArgument)
        XCTAssertTrue(results[0]?.message.contains("rank 1") ?? false)
        XCTAssertEqual(results[1]?.status, .invalidArgument)
        XCTAssertTrue(results[1]?.message.contains("batch") ?? false)
    }

    func testNullBufferOnOneRankFailsAllAndPlanStaysUsable() {
        let results: [(BurstError?, Bool)] = runRanks(2) { rank, transport in
            var p = Problem(); p.counts = [3, 5]
            do {
                let plan = try self.plan(transport, p.config(rank: rank))
                let n = plan.tensorElements
                var q = [Float](repeating: 0.5, count: n), out = q
                var lse = [Float](repeating: 0, count: plan.lseElements)
                var first: BurstError?
                do {
                    try q.withUnsafeMutableBytes { qb in try out.withUnsafeMutableBytes { ob in
                        try plan.forward(q: rank == 1 ? nil : qb.baseAddress, k: qb.baseAddress, v: qb.baseAddress,
                                         out: ob.baseAddress, lse: &lse)
                    } }
                } catch let e as BurstError { first = e }
                // The same plan works afterwards: a local argument error does not poison it.
                try q.withUnsafeMutableBytes { qb in try out.withUnsafeMutableBytes { ob in
                    try plan.forward(q: qb.baseAddress, k: qb.baseAddress, v: qb.baseAddress, out: ob.baseAddress, lse: &lse)
                } }
                return (first, true)
            } catch let e as BurstError { return (e, false) } catch { return (nil, false) }
        }
        XCTAssertEqual(results[0].0?.status, .invalidArgument)
        XCTAssertTrue(results[0].0?.message.contains("rank 1 failed") ?? false, "\(String(describing: results[0].0))")
        XCTAssertEqual(results[1].0?.status, .invalidArgument)
        XCTAssertTrue(results[0].1 && results[1].1, "plan unusable after a local argument error")
    }

    func testDifferentCallsOnRanksGiveMismatch() {
        let results: [BurstError?] = runRanks(2) { rank, transport in
            var p = Problem(); p.counts = [2, 2]
            do {
                let plan = try self.plan(transport, p.config(rank: rank))
                // Inputs share one buffer; every output has its own (outputs
                // must not overlap anything: that would be INVALID_ARGUMENT first).
                let n = plan.tensorElements
                var x = [Float](repeating: 0, count: 4 * n)
                var lse = [Float](repeating: 0, count: plan.lseElements)
                try x.withUnsafeMutableBufferPointer { b in
                    let input = b.baseAddress!, o1 = input + n, o2 = input + 2 * n, o3 = input + 3 * n
                    if rank == 0 {
                        try plan.forward(q: input, k: input, v: input, out: o1, lse: &lse)
                    } else {
                        try plan.backward(q: input, k: input, v: input, out: input,
                                          lse: &lse, dout: input, dq: o1, dk: o2, dv: o3)
                    }
                }
                return nil
            } catch let e as BurstError { return e } catch { return nil }
        }
        XCTAssertEqual(results[0]?.status, .mismatch)
        XCTAssertEqual(results[1]?.status, .mismatch)
    }

    /// A rank that never makes the call: the others time out and the plan is poisoned.
    func testAbsentPeerTimesOutAndPoisonsPlan() {
        let results: [[Status]] = runRanks(2) { rank, transport in
            var p = Problem(); p.counts = [2, 2]
            var config = p.config(rank: rank)
            config.timeoutSeconds = 0.3
            do {
                let plan = try self.plan(transport, config)
                if rank == 1 { return [] }
                var x = [Float](repeating: 0, count: plan.tensorElements)
                var lse = [Float](repeating: 0, count: plan.lseElements)
                var statuses: [Status] = []
                for _ in 0..<2 {
                    do {
                        try x.withUnsafeMutableBytes { b in
                            try plan.forward(q: b.baseAddress, k: b.baseAddress, v: b.baseAddress, out: b.baseAddress, lse: &lse)
                        }
                        statuses.append(.ok)
                    } catch let e as BurstError { statuses.append(e.status) }
                }
                return statuses
            } catch { return [.internalError] }
        }
        XCTAssertEqual(results[0], [.timeout, .timeout])
    }

    func testUnsupportedFeaturesAreReported() {
        var c = Problem().config(rank: 0)
        c.numHeadsKV = 3; c.numHeadsQ = 4
        XCTAssertThrowsError(try c.validate()) { XCTAssertEqual(($0 as? BurstError)?.status, .invalidArgument) }
        c = Problem().config(rank: 0); c.windowLeft = -2
        XCTAssertThrowsError(try c.validate()) { XCTAssertEqual(($0 as? BurstError)?.status, .invalidArgument) }
        c = Problem().config(rank: 0); c.pattern = 5
        XCTAssertThrowsError(try c.validate()) { XCTAssertEqual(($0 as? BurstError)?.status, .invalidArgument) }
        c = Problem().config(rank: 0); c.layout = 7
        XCTAssertThrowsError(try c.validate()) { XCTAssertEqual(($0 as? BurstError)?.status, .invalidArgument) }
        c = Problem().config(rank: 0); c.seqLenLocal = -1
        XCTAssertThrowsError(try c.validate()) { XCTAssertEqual(($0 as? BurstError)?.status, .invalidArgument) }
        c = Problem().config(rank: 0); c.headDim = 1 << 33
        XCTAssertThrowsError(try c.validate()) { XCTAssertEqual(($0 as? BurstError)?.status, .unsupported) }
        c = Problem().config(rank: 0); c.batch = 1 << 40; c.headDim = 1 << 10
        XCTAssertThrowsError(try c.validate()) { XCTAssertEqual(($0 as? BurstError)?.status, .invalidArgument) }
    }
}
