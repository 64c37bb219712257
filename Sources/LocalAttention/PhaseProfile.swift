#if canImport(Glibc)
import Glibc
#endif

/// Where a tile's time goes: each phase of the forward and backward tile
/// loops timed on its own, on one thread, with the tile's operands hot
/// (what `burst-bench --phases` prints). Phases, in microseconds per tile of
/// tileQ × tileK (full tiles, nothing masked):
///   forward:  "score" S = Q·Kᵀ, "softmax" (online softmax of the tile),
///             "value" acc += P·V
///   backward: "score" S = Q·Kᵀ and "dp" dP = dO·Vᵀ, "gradient" (P and dS),
///   the soft-capped row passes ("softmax_capped", "gradient_capped": cap 50),
///             "dv" dV += Pᵀ·dO, "dk" dK += dSᵀ·Q, "dq" dQ += dS·K
/// plus "panels": transposing one key tile into its panel.
extension LocalAttention {
    public static func phaseProfile(headDim d: Int, tileQ tq: Int = 256, tileK tk: Int = 128,
                                    seconds: Double = 0.2) -> [(phase: String, microseconds: Double)] {
        let products = TileProducts()
        let (softmaxTile, gradientTile) = rowKernels(level: TileProducts.vectorLevel)
        let score = products.kernel(m: tq, n: tk, k: d, lda: d, ldb: tk, ldc: tk, transposedA: false, accumulate: false)
        let value = products.kernel(m: tq, n: d, k: tk, lda: tk, ldb: d, ldc: d, transposedA: false, accumulate: true)
        let gradV = products.kernel(m: tk, n: d, k: tq, lda: tk, ldb: d, ldc: d, transposedA: true, accumulate: true)
        guard let q = FloatBuffer(count: tq * d), let k = FloatBuffer(count: tk * d), let panel = FloatBuffer(count: tk * d),
              let s = FloatBuffer(count: tq * tk), let ds = FloatBuffer(count: tq * tk), let acc = FloatBuffer(count: tq * d),
              let dkv = FloatBuffer(count: tk * d), let stats = FloatBuffer(count: 4 * tq),
              let scores = FloatBuffer(count: tq * tk) else { return [] }
        for i in 0..<(tq * d) { q.pointer[i] = Float((i * 7919) % 1000) * 1e-3 - 0.5 }
        for i in 0..<(tk * d) { k.pointer[i] = Float((i * 104_729) % 1000) * 1e-3 - 0.5 }
        acc.fill(0); dkv.fill(0)
        let lo = UnsafeMutablePointer<Int>.allocate(capacity: 2 * tq)
        defer { lo.deallocate() }
        for i in 0..<tq { lo[i] = 0; lo[tq + i] = tk }
        let rowMax = stats.pointer, rowSum = stats.pointer + tq, lse = stats.pointer + 2 * tq, delta = stats.pointer + 3 * tq
        let scale = 1 / Float(d).squareRoot()
        func now() -> Double { var ts = timespec(); clock_gettime(CLOCK_MONOTONIC, &ts); return Double(ts.tv_sec) + Double(ts.tv_nsec) * 1e-9 }
        func time(_ body: () -> Void) -> Double {
            body()
            var calls = 0
            let start = now()
            var elapsed = 0.0
            while elapsed < seconds {
                for _ in 0..<8 { body() }
                calls += 8
                elapsed = now() - start
            }
            return elapsed / Double(calls) * 1e6
        }
        transpose(tk, d, k.pointer, d, panel.pointer, tk)
        products.run(score, q.pointer, panel.pointer, s.pointer)
        scores.pointer.update(from: s.pointer, count: tq * tk)
        for i in 0..<tq { lse[i] = 4; delta[i] = 0.1; rowMax[i] = -.infinity; rowSum[i] = 0 }
        var result: [(String, Double)] = []
        result.append(("panels", time { transpose(tk, d, k.pointer, d, panel.pointer, tk) }))
        result.append(("fwd.score", time { products.run(score, q.pointer, panel.pointer, s.pointer) }))
        result.append(("fwd.softmax", time {
            // Fresh scores (a copy: timed apart below); the running max stays
            // from the call before, as in a row's later key tiles.
            s.pointer.update(from: scores.pointer, count: tq * tk)
            softmaxTile(s.pointer, tk, tk, tq, lo, lo + tq, scale, rowMax, rowSum, acc.pointer, d)
        }))
        result.append(("copy", time { s.pointer.update(from: scores.pointer, count: tq * tk) }))
        result.append(("fwd.value", time { products.run(value, s.pointer, k.pointer, acc.pointer) }))
        result.append(("bwd.gradient", time {
            s.pointer.update(from: scores.pointer, count: tq * tk)
            ds.pointer.update(from: scores.pointer, count: tq * tk)
            gradientTile(s.pointer, ds.pointer, tk, tk, tq, lo, lo + tq, scale, lse, delta)
        }))
        result.append(("copy2", time {
            s.pointer.update(from: scores.pointer, count: tq * tk)
            ds.pointer.update(from: scores.pointer, count: tq * tk)
        }))
        // Soft-capping (cap 50): the forward's capTile before the softmax, and
        // the backward's capped gradient pass in place of the plain one.
        let (capTile, cappedGradientTile) = capKernels(level: TileProducts.vectorLevel)
        for i in 0..<tq { rowMax[i] = -.infinity; rowSum[i] = 0 }
        result.append(("fwd.softmax_capped", time {
            s.pointer.update(from: scores.pointer, count: tq * tk)
            capTile(s.pointer, tk, tk, tq, lo, lo + tq, scale, 50)
            softmaxTile(s.pointer, tk, tk, tq, lo, lo + tq, 1, rowMax, rowSum, acc.pointer, d)
        }))
        result.append(("bwd.gradient_capped", time {
            s.pointer.update(from: scores.pointer, count: tq * tk)
            ds.pointer.update(from: scores.pointer, count: tq * tk)
            cappedGradientTile(s.pointer, ds.pointer, tk, tk, tq, lo, lo + tq, scale, lse, delta, 50)
        }))
        result.append(("bwd.dv", time { products.run(gradV, s.pointer, q.pointer, dkv.pointer) }))
        result.append(("bwd.dq", time { products.run(value, ds.pointer, k.pointer, acc.pointer) }))
        return result
    }
}
