import XCTest
@testable import GlobalAttention
import LocalAttention

/// KV cache, prefill and decode over loopback ranks, against a float64
/// reference over each sequence's whole history.
final class DecodeTests: XCTestCase {
    /// One scenario: a packed prompt of `prompt` sequences prefilled from a
    /// CONTIGUOUS plan (so short ones live on some ranks only), one more
    /// sequence that starts empty, then `steps` decode steps of T tokens for
    /// all of them.
    struct Scenario: CustomStringConvertible {
        var ranks: Int
        var heads = 4, kvHeads = 4, headDim = 16
        var window = -1
        var tokens = 1
        var dtype = StorageType.f32
        var layout = AttentionConfig.Layout.bshd
        var prompt = [37, 1, 70]
        var steps = 3
        var blockTokens: Int64 = 16
        var threads: Int32 = 1
        /// Score modifiers: soft-capping (0 = off) and per-layer sinks ([2 × heads]; nil = none).
        var softcap: Float = 0
        var sinks: [Float]? = nil
        var description: String {
            "P=\(ranks) h=\(heads)/\(kvHeads) d=\(headDim) W=\(window) T=\(tokens) \(dtype) \(layout) prompt=\(prompt) block=\(blockTokens) threads=\(threads) softcap=\(softcap) sinks=\(sinks.map { "\($0)" } ?? "-")"
        }
        var sequences: Int { prompt.count + 1 }

        func cacheConfig() -> KVCacheConfig {
            var c = KVCacheConfig()
            c.layout = layout.rawValue
            c.dtype = dtype.rawValue
            c.numLayers = 2
            c.numHeadsQ = Int64(heads)
            c.numHeadsKV = Int64(kvHeads)
            c.headDim = Int64(headDim)
            c.windowLeft = Int64(window)
            c.blockTokens = blockTokens
            c.numThreads = threads
            c.timeoutSeconds = 60
            c.softcap = softcap
            c.sinks = sinks
            return c
        }

        /// Deterministic values in [-1, 1), rounded to the storage type.
        func values(_ count: Int, seed: Int) -> [Float] {
            var state = UInt64(truncatingIfNeeded: seed) &* 0x9E37_79B9_7F4A_7C15 &+ 1
            return (0..<count).map { _ in
                state = state &* 6_364_136_223_846_793_005 &+ 1_442_695_040_888_963_407
                return Float(roundToStorage(Double(Int64(state >> 40) % 2000) / 1000 - 1, dtype))
            }
        }
    }

    /// What a rank returns: every step's out and lse (as fp32), or an error.
    struct Outcome: Equatable {
        var outs: [[Float]] = []
        var lses: [[Float]] = []
        var lengths: [Int] = []
        var localTokens: [Int] = []
        var error: String?
    }

    /// The prompt's global K or V: [N, Hkv, d] (batch 1, BSHD).
    func promptTensor(_ s: Scenario, seed: Int) -> [Float] {
        s.values(s.prompt.reduce(0, +) * s.kvHeads * s.headDim, seed: seed)
    }

    func run(_ s: Scenario) -> [Outcome] {
        let total = s.prompt.reduce(0, +)
        let counts = unevenCounts(total: total, ranks: s.ranks)
        let offsets = [0] + counts.indices.map { counts[0...$0].reduce(0, +) }
        let cu = [0] + s.prompt.indices.map { Int64(s.prompt[0...$0].reduce(0, +)) }
        let promptK = promptTensor(s, seed: 11), promptV = promptTensor(s, seed: 12)
        return runRanks(s.ranks) { rank, transport in
            var outcome = Outcome()
            do {
                let context = AttentionContext(transport: transport, defaultThreads: 1)
                let cache = try context.makeKVCache(.success(s.cacheConfig()))
                var pc = AttentionConfig()
                pc.dtype = s.dtype.rawValue
                pc.mask = AttentionConfig.Mask.causal.rawValue
                pc.batch = 1
                pc.seqLenLocal = Int64(counts[rank])
                pc.numHeadsQ = Int64(s.heads); pc.numHeadsKV = Int64(s.kvHeads); pc.headDim = Int64(s.headDim)
                pc.cuSeqlens = cu; pc.numSequences = Int64(s.prompt.count)
                pc.numThreads = 1
                let plan = try context.makePlan(.success(pc))
                let ids: [Int64] = (0..<Int64(s.sequences)).map { 100 + $0 }
                try ids.withUnsafeBufferPointer { try cache.add($0.baseAddress, count: Int64(ids.count)) }
                // This rank's rows of the prompt (BSHD: contiguous rows).
                let row = s.kvHeads * s.headDim
                let myK = StorageArray(Array(promptK[(offsets[rank] * row)..<(offsets[rank + 1] * row)]), s.dtype)
                let myV = StorageArray(Array(promptV[(offsets[rank] * row)..<(offsets[rank + 1] * row)]), s.dtype)
                for layer in 0..<2 as Range<Int64> {
                    try ids.withUnsafeBufferPointer {
                        try cache.prefill(layer: layer, plan: plan, planContext: context, ids: $0.baseAddress, k: myK.raw, v: myV.raw)
                    }
                }
                for step in 0..<s.steps {
                    let (q, k, v) = self.stepInputs(s, step: step)
                    let qa = StorageArray(q, s.dtype), ka = StorageArray(k, s.dtype), va = StorageArray(v, s.dtype)
                    let out = StorageArray(count: q.count, s.dtype)
                    var lse = [Float](repeating: .nan, count: s.sequences * s.heads * s.tokens)
                    try ids.withUnsafeBufferPointer { idp in
                        try cache.decode(layer: 1, ids: idp.baseAddress, count: Int64(ids.count), tokens: Int64(s.tokens), positions: nil,
                                         q: qa.raw, k: ka.raw, v: va.raw, out: out.mutableRaw, lse: &lse)
                    }
                    outcome.outs.append(out.floats)
                    outcome.lses.append(lse)
                }
                for id in ids {
                    let (length, local) = try cache.sequenceLength(id, layer: 1)
                    outcome.lengths.append(length)
                    outcome.localTokens.append(local)
                }
            } catch {
                outcome.error = "\(error)"
            }
            return outcome
        }
    }

    /// Step `step`'s q [S, T, Hq, d] and k, v [S, T, Hkv, d] in the scenario's layout.
    func stepInputs(_ s: Scenario, step: Int) -> ([Float], [Float], [Float]) {
        let q = s.values(s.sequences * s.tokens * s.heads * s.headDim, seed: 1000 + step)
        let k = s.values(s.sequences * s.tokens * s.kvHeads * s.headDim, seed: 2000 + step)
        let v = s.values(s.sequences * s.tokens * s.kvHeads * s.headDim, seed: 3000 + step)
        return (q, k, v)
    }

    /// Index of (sequence i, token t, head h, c) in a layout-ordered [S, T, H, d] tensor.
    func index(_ s: Scenario, _ i: Int, _ t: Int, _ h: Int, _ c: Int, heads: Int) -> Int {
        s.layout == .bshd ? ((i * s.tokens + t) * heads + h) * s.headDim + c
                          : ((i * heads + h) * s.tokens + t) * s.headDim + c
    }

    /// Float64 reference of every step: (out [S, T, Hq, d] in layout order, lse [S, Hq, T]).
    func reference(_ s: Scenario) -> [(out: [Double], lse: [Double])] {
        let d = s.headDim, g = s.heads / s.kvHeads
        let promptK = promptTensor(s, seed: 11), promptV = promptTensor(s, seed: 12)
        // History per sequence: keys[pos][h][c].
        var keys: [[[Double]]] = [], values: [[[Double]]] = []
        var start = 0
        for length in s.prompt {
            keys.append((0..<length).map { j in (0..<(s.kvHeads * d)).map { Double(promptK[(start + j) * s.kvHeads * d + $0]) } })
            values.append((0..<length).map { j in (0..<(s.kvHeads * d)).map { Double(promptV[(start + j) * s.kvHeads * d + $0]) } })
            start += length
        }
        keys.append([]); values.append([])
        let scale = 1 / Double(d).squareRoot()
        var results: [(out: [Double], lse: [Double])] = []
        for step in 0..<s.steps {
            let (q, k, v) = stepInputs(s, step: step)
            var out = [Double](repeating: 0, count: q.count)
            var lse = [Double](repeating: 0, count: s.sequences * s.heads * s.tokens)
            for i in 0..<s.sequences {
                let p0 = keys[i].count
                for t in 0..<s.tokens {
                    keys[i].append((0..<(s.kvHeads * d)).map { Double(k[index(s, i, t, $0 / d, $0 % d, heads: s.kvHeads)]) })
                    values[i].append((0..<(s.kvHeads * d)).map { Double(v[index(s, i, t, $0 / d, $0 % d, heads: s.kvHeads)]) })
                }
                for t in 0..<s.tokens {
                    let position = p0 + t
                    let lowest = s.window >= 0 ? max(0, position - s.window) : 0
                    for h in 0..<s.heads {
                        let kh = h / g
                        var scores: [Double] = []
                        for j in lowest...position {
                            var dot = 0.0
                            for c in 0..<d { dot += Double(q[index(s, i, t, h, c, heads: s.heads)]) * keys[i][j][kh * d + c] }
                            let x = dot * scale
                            scores.append(s.softcap > 0 ? Double(s.softcap) * tanh(x / Double(s.softcap)) : x)
                        }
                        // Decode runs layer 1: its sinks are the second row.
                        let sink = s.sinks.map { Double($0[s.heads + h]) } ?? -.infinity
                        let m = max(scores.max()!, sink)
                        let weights = scores.map { exp($0 - m) }
                        let total = weights.reduce(0, +) + exp(sink - m)
                        for c in 0..<d {
                            var acc = 0.0
                            for (n, j) in (lowest...position).enumerated() { acc += weights[n] * values[i][j][kh * d + c] }
                            out[index(s, i, t, h, c, heads: s.heads)] = acc / total
                        }
                        lse[(i * s.heads + h) * s.tokens + t] = m + log(total)
                    }
                }
            }
            results.append((out, lse))
        }
        return results
    }

    func check(_ s: Scenario, file: StaticString = #filePath, line: UInt = #line) {
        let outcomes = run(s)
        for (rank, o) in outcomes.enumerated() where o.error != nil {
            XCTFail("rank \(rank): \(o.error!) — \(s)", file: file, line: line); return
        }
        // Every rank returns the same bits.
        for rank in 1..<s.ranks where outcomes[rank].outs != outcomes[0].outs || outcomes[rank].lses != outcomes[0].lses {
            XCTFail("rank \(rank)'s out/lse differ from rank 0's — \(s)", file: file, line: line)
        }
        // Lengths, and the placement rule: the local tokens add up to the length.
        let promptPlusNew = s.prompt.map { $0 + s.steps * s.tokens } + [s.steps * s.tokens]
        XCTAssertEqual(outcomes[0].lengths, promptPlusNew, "\(s)", file: file, line: line)
        for i in 0..<s.sequences {
            XCTAssertEqual(outcomes.reduce(0) { $0 + $1.localTokens[i] }, promptPlusNew[i], "local tokens of sequence \(i) — \(s)", file: file, line: line)
        }
        let u = s.dtype.unitRoundoff
        for (step, want) in reference(s).enumerated() {
            let got = outcomes[0].outs[step], scale = want.out.map(abs).max() ?? 1
            var worst = 0.0
            for (a, b) in zip(got, want.out) {
                let allowed = 1e-5 * scale * (1 + u) + (s.dtype == .f32 ? 0 : u * abs(b))
                worst = max(worst, abs(Double(a) - b) / allowed)
            }
            XCTAssertLessThanOrEqual(worst, 1, "out of step \(step): error / allowed = \(worst) — \(s)", file: file, line: line)
            let lseError = zip(outcomes[0].lses[step], want.lse).map { abs(Double($0) - $1) }.max() ?? 0
            XCTAssertLessThanOrEqual(lseError, 1e-4, "lse of step \(step) — \(s)", file: file, line: line)
        }
    }

    /// The sweep of the issue: P 1–5 × (h_q, h_kv) ∈ {(4,4), (4,2), (4,1)} ×
    /// window on/off × T ∈ {1, 3, 17} × f32/bf16, several steps in a row.
    func testSweepAgainstReference() {
        for ranks in 1...5 {
            for (heads, kv) in [(4, 4), (4, 2), (4, 1)] {
                for window in [-1, 20] {
                    for tokens in [1, 3, 17] {
                        for dtype in [StorageType.f32, .bf16] {
                            var s = Scenario(ranks: ranks)
                            s.heads = heads; s.kvHeads = kv; s.window = window; s.tokens = tokens; s.dtype = dtype
                            s.steps = tokens == 17 ? 2 : 3
                            check(s)
                        }
                    }
                }
            }
        }
    }

    /// Sinks (a different row per layer: layer 1 is checked, layer 0's
    /// values must not leak in) and soft-capping, alone and together, P 1–4,
    /// GQA, windows, T = 1 and 3, f32 and bf16 (the fused kernels: d = 32).
    func testScoreModifiers() {
        for ranks in 1...4 {
            for (kv, window, tokens, dtype) in [(4, -1, 1, StorageType.f32), (2, 20, 3, .f32), (1, -1, 3, .bf16), (2, 9, 1, .bf16)] {
                for (softcap, sinks) in [(Float(0), true), (1.5, false), (2.5, true)] {
                    var s = Scenario(ranks: ranks)
                    s.kvHeads = kv; s.window = window; s.tokens = tokens; s.dtype = dtype
                    s.headDim = dtype == .bf16 ? 32 : 16
                    s.softcap = softcap
                    if sinks { s.sinks = [5, 5, 5, 5, 0.5, -1, 2.5, 0] }
                    s.steps = 2
                    check(s)
                }
            }
        }
    }

    func testLayoutsBlockSizesThreadsAndHalf() {
        for ranks in [1, 3] {
            var s = Scenario(ranks: ranks)
            s.layout = .bhsd; s.tokens = 3; s.kvHeads = 2
            check(s)
            s.blockTokens = 0; s.threads = 2; s.dtype = .f16
            check(s)
            s.blockTokens = 1; s.window = 0
            check(s)
            s.headDim = 64; s.blockTokens = 7; s.prompt = [300, 5, 0]; s.window = 100
            check(s)
        }
    }

    /// The fused kernels of DecodeRows.swift (bf16 blocks in pair groups:
    /// head_dim and the key tile multiples of the group; fp32 beside them on
    /// the JIT products at the same shapes), with partial
    /// tiles, partial blocks, 1–17 tokens (1–68 rows: row blocks of 4 and
    /// their remainders), GQA and windows, both layouts.
    func testFusedKernels() {
        for dtype in [StorageType.bf16, .f32] { for (d, block) in [(32, 64), (64, 100), (128, 0), (128, 33)] {
            for (ranks, tokens, kv, window) in [(1, 1, 1, 40), (2, 3, 2, -1), (3, 17, 4, 200), (2, 2, 1, -1)] {
                var s = Scenario(ranks: ranks)
                s.dtype = dtype; s.headDim = d; s.blockTokens = Int64(block); s.tokens = tokens; s.kvHeads = kv
                s.window = window; s.prompt = [290, 3, 65]; s.steps = 2
                s.layout = tokens == 2 ? .bhsd : .bshd
                check(s)
            }
        } }
        XCTAssertTrue(DecodeKernel.layout(headDim: 128, blockTokens: 256, storage: .bf16).paired)
    }

    /// Same inputs, same world size → the same bits; and the bits do not
    /// depend on the thread count.
    func testBitwiseRepeatAndThreadIndependence() {
        var s = Scenario(ranks: 3)
        s.kvHeads = 1; s.tokens = 3; s.prompt = [600, 90, 1]; s.blockTokens = 4   // > 64 blocks: several chunks
        let first = run(s), second = run(s)
        XCTAssertEqual(first, second)
        s.threads = 2
        XCTAssertEqual(run(s).map(\.outs), first.map(\.outs))
        check(s)
    }
}

/// Bad inputs to the cache: an error with a message on every rank, and the
/// cache left as it was.
final class DecodeFailureTests: XCTestCase {
    func config(maxBytes: Int64 = 0, headDim: Int64 = 8, timeout: Double = 30) -> KVCacheConfig {
        var c = KVCacheConfig()
        c.numLayers = 1; c.numHeadsQ = 2; c.numHeadsKV = 1; c.headDim = headDim
        c.blockTokens = 4; c.maxBytesLocal = maxBytes; c.timeoutSeconds = timeout; c.numThreads = 1
        return c
    }

    /// Runs `body` on every rank of a fresh 2-rank cache holding sequence 7
    /// with 3 decoded tokens; returns each rank's thrown status (nil = OK),
    /// message, and the length of sequence 7 after.
    func withCache(ranks: Int = 2, _ cfg: KVCacheConfig? = nil,
                   _ body: @escaping (_ rank: Int, _ cache: KVCache, _ context: AttentionContext) throws -> Void)
        -> [(status: Status?, message: String, length: Int)] {
        let c = cfg ?? config()
        return runRanks(ranks) { rank, transport in
            let context = AttentionContext(transport: transport, defaultThreads: 1)
            do {
                let cache = try context.makeKVCache(.success(c))
                var id: Int64 = 7
                try cache.add(&id, count: 1)
                try Self.step(cache, tokens: 3)
                var status: Status?, message = ""
                do { try body(rank, cache, context) } catch let e as BurstError { status = e.status; message = e.message }
                let length = (try? cache.sequenceLength(7, layer: 0).length) ?? -1
                return (status, message, length)
            } catch {
                return (.internalError, "setup: \(error)", -1)
            }
        }
    }

    static func step(_ cache: KVCache, ids: [Int64] = [7], tokens: Int, positions: [Int64]? = nil, seed: Float = 0.5) throws {
        let d = Int(cache.config.headDim)
        let q = [Float](repeating: seed, count: ids.count * tokens * 2 * d), kv = [Float](repeating: 0.25, count: ids.count * tokens * d)
        var out = [Float](repeating: 0, count: q.count)
        try ids.withUnsafeBufferPointer { idp in
            if let positions {
                try positions.withUnsafeBufferPointer { pp in
                    try cache.decode(layer: 0, ids: idp.baseAddress, count: Int64(ids.count), tokens: Int64(tokens), positions: pp.baseAddress,
                                     q: q, k: kv, v: kv, out: &out, lse: nil)
                }
            } else {
                try cache.decode(layer: 0, ids: idp.baseAddress, count: Int64(ids.count), tokens: Int64(tokens), positions: nil,
                                 q: q, k: kv, v: kv, out: &out, lse: nil)
            }
        }
    }

    func expect(_ results: [(status: Status?, message: String, length: Int)], _ status: Status, _ fragment: String,
                length: Int = 3, file: StaticString = #filePath, line: UInt = #line) {
        for (rank, r) in results.enumerated() {
            XCTAssertEqual(r.status, status, "rank \(rank): \(r.message)", file: file, line: line)
            XCTAssertTrue(r.message.contains(fragment), "rank \(rank): '\(r.message)' lacks '\(fragment)'", file: file, line: line)
            XCTAssertEqual(r.length, length, "rank \(rank): the cache changed", file: file, line: line)
        }
    }

    func testUnknownDuplicateAndBackwardPositions() {
        expect(withCache { _, cache, _ in try Self.step(cache, ids: [8], tokens: 1) }, .invalidArgument, "not in the cache")
        expect(withCache { _, cache, _ in try Self.step(cache, ids: [7, 7], tokens: 1) }, .invalidArgument, "appears twice")
        expect(withCache { _, cache, _ in try Self.step(cache, tokens: 1, positions: [2]) }, .invalidArgument, "goes back")
        // Only rank 1 names an unknown id: every rank fails.
        expect(withCache { rank, cache, _ in try Self.step(cache, ids: [rank == 1 ? 9 : 7], tokens: 1) }, .invalidArgument, "not in the cache")
        expect(withCache { _, cache, _ in var id: Int64 = 7; try cache.add(&id, count: 1) }, .invalidArgument, "already in the cache")
        expect(withCache { _, cache, _ in var id: Int64 = 5; try cache.drop(&id, count: 1) }, .invalidArgument, "not in the cache")
        // Skipping ahead is allowed: the next step continues past the gap.
        expect(withCache { _, cache, _ in try Self.step(cache, tokens: 2, positions: [10]); throw BurstError(.unsupported, "done") },
               .unsupported, "done", length: 12)
    }

    func testRanksThatDisagree() {
        expect(withCache { rank, cache, _ in try Self.step(cache, tokens: rank == 0 ? 1 : 2) }, .mismatch, "tokens (T)")
        expect(withCache { rank, cache, _ in try Self.step(cache, tokens: 1, seed: rank == 0 ? 0.5 : 0.75) }, .mismatch, "q")
        // Cache configs that differ: MISMATCH naming the field, on every rank.
        let made: [Status?] = runRanks(2) { rank, transport in
            let context = AttentionContext(transport: transport, defaultThreads: 1)
            do { _ = try context.makeKVCache(.success(self.config(headDim: rank == 0 ? 8 : 16))); return nil } catch let e as BurstError {
                XCTAssertTrue(e.message.contains("head_dim"), e.message); return e.status
            } catch { return .internalError }
        }
        XCTAssertEqual(made, [.mismatch, .mismatch])
    }

    /// A store past max_bytes_local: OUT_OF_MEMORY on every rank (even the
    /// rank with room), nothing written; a call that fits works after.
    func testCapacityCheckedBeforeWriting() {
        // One block (4 tokens) of 1 head × 8 dims, K and V fp32 + positions = 288 bytes.
        let results = withCache(config(maxBytes: 288)) { _, cache, _ in
            let before = try cache.bytes()
            // 6 tokens: rank 0 would need a second block, rank 1 has room.
            do { try Self.step(cache, tokens: 6) } catch let e as BurstError {
                XCTAssertEqual(try cache.bytes(), before)
                XCTAssertEqual(try cache.sequenceLength(7, layer: 0).length, 3)
                try Self.step(cache, tokens: 1)   // position 3 fits in rank 1's block
                throw e
            }
        }
        expect(results, .outOfMemory, "max_bytes_local", length: 4)
    }

    func testPrefillFromAnotherContextAndAfterTimeout() {
        expect(withCache { _, cache, _ in
            // A plan of a context of its own (world size 1): not the cache's context.
            let other = AttentionContext(transport: LoopbackTransport.makeGroup(size: 1)[0], defaultThreads: 1)
            var pc = AttentionConfig()
            pc.batch = 1; pc.seqLenLocal = 4; pc.numHeadsQ = 2; pc.numHeadsKV = 1; pc.headDim = 8; pc.numThreads = 1
            let plan = try other.makePlan(.success(pc))
            var id: Int64 = 7
            let k = [Float](repeating: 0, count: 32)
            try cache.prefill(layer: 0, plan: plan, planContext: other, ids: &id, k: k, v: k)
        }, .invalidArgument, "another context")
        // Rank 1 never makes the call: rank 0 times out, and the cache stays unusable.
        let results = withCache(config(timeout: 0.5)) { rank, cache, _ in
            guard rank == 0 else { Thread.sleep(forTimeInterval: 1.5); return }
            do { try Self.step(cache, tokens: 1) } catch let e as BurstError {
                XCTAssertEqual(e.status, .timeout)
                XCTAssertThrowsError(try Self.step(cache, tokens: 1)) { XCTAssertTrue("\($0)".contains("unusable"), "\($0)") }
                throw e
            }
        }
        XCTAssertEqual(results[0].status, .timeout)
        XCTAssertEqual(results[0].length, 3, "the failed step left no token behind")
    }
}
