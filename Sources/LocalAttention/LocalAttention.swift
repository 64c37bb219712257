#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// LAO — local attention of one rank's queries against one block of keys and
/// values, FlashAttention-style: tiles of `tileQ` queries × `tileK` keys, online
/// softmax in fp32, nothing of size n×n ever materialised.
///
/// Tensors are "canonical": `[heads, rows, headDim]` fp32, rows contiguous,
/// heads packed tightly (head stride = rows · headDim). Row vectors of one head
/// (`[heads, rows]`) hold the softmax statistics. Queries and keys carry the
/// global position of their first row (`qPos0`, `kPos0`); rows are consecutive
/// positions.
///
/// Memory: per worker thread 2·tileQ·tileK + 2·headDim·tileK floats of scratch,
/// allocated once here.
public final class LocalAttention {
    public let headDim: Int
    public let scale: Float
    public let rule: VisibilityRule
    public let pool: WorkerPool
    public let tileQ: Int
    public let tileK: Int

    private let scratch: FloatBuffer
    private let scratchPerWorker: Int

    /// Returns nil if the scratch space cannot be allocated.
    public init?(headDim: Int, scale: Float, rule: VisibilityRule, pool: WorkerPool,
                 tileQ: Int = 64, tileK: Int = 64) {
        precondition(headDim > 0 && tileQ > 0 && tileK > 0)
        self.headDim = headDim
        self.scale = scale
        self.rule = rule
        self.pool = pool
        self.tileQ = tileQ
        self.tileK = tileK
        scratchPerWorker = (2 * tileQ * tileK + 2 * headDim * tileK + 15) / 16 * 16
        guard let buffer = FloatBuffer(count: scratchPerWorker * pool.threadCount) else { return nil }
        scratch = buffer
    }

    // MARK: Forward

    /// Sets the running state to "no key seen": acc = 0, rowMax = -inf, rowSum = 0.
    public static func resetForwardState(heads: Int, rows: Int, headDim: Int,
                                         acc: UnsafeMutablePointer<Float>,
                                         rowMax: UnsafeMutablePointer<Float>,
                                         rowSum: UnsafeMutablePointer<Float>) {
        acc.update(repeating: 0, count: heads * rows * headDim)
        rowMax.update(repeating: -.infinity, count: heads * rows)
        rowSum.update(repeating: 0, count: heads * rows)
    }

    /// Folds one key/value block into the running softmax state of the queries.
    ///
    /// For every query row i and visible key j: s = scale·⟨q_i, k_j⟩;
    /// m' = max(m, max_j s); l' = l·e^(m−m') + Σ_j e^(s−m');
    /// acc' = acc·e^(m−m') + Σ_j e^(s−m')·v_j. Rows that have seen no visible
    /// key keep m = −inf, l = 0, acc = 0 (no exp of −inf − (−inf)).
    ///
    /// Parallel over (head, query tile); each task owns its rows.
    public func forwardAccumulate(heads: Int,
                                  q: UnsafePointer<Float>, queryRows nq: Int, queryPosition qPos0: Int,
                                  k: UnsafePointer<Float>, v: UnsafePointer<Float>,
                                  keyRows nk: Int, keyPosition kPos0: Int,
                                  acc: UnsafeMutablePointer<Float>,
                                  rowMax: UnsafeMutablePointer<Float>,
                                  rowSum: UnsafeMutablePointer<Float>) {
        if heads == 0 || nq == 0 || nk == 0 { return }
        let d = headDim
        let qTiles = (nq + tileQ - 1) / tileQ
        pool.parallelFor(heads * qTiles) { task, worker in
            let z = task / qTiles
            let i0 = (task % qTiles) * tileQ
            let rows = min(tileQ, nq - i0)
            let work = scratch.pointer + worker * scratchPerWorker
            forwardTile(q: q + (z * nq + i0) * d, rows: rows, qPos0: qPos0 + i0,
                        k: k + z * nk * d, v: v + z * nk * d, nk: nk, kPos0: kPos0,
                        acc: acc + (z * nq + i0) * d,
                        rowMax: rowMax + z * nq + i0, rowSum: rowSum + z * nq + i0,
                        work: work)
        }
    }

    private func forwardTile(q: UnsafePointer<Float>, rows: Int, qPos0: Int,
                             k: UnsafePointer<Float>, v: UnsafePointer<Float>, nk: Int, kPos0: Int,
                             acc: UnsafeMutablePointer<Float>,
                             rowMax: UnsafeMutablePointer<Float>, rowSum: UnsafeMutablePointer<Float>,
                             work: UnsafeMutablePointer<Float>) {
        let d = headDim, tk = tileK
        let s = work                    // [rows × tk] scores, then probabilities
        let kt = work + 2 * tileQ * tk  // [d × tk] transposed key tile
        var j0 = 0
        while j0 < nk {
            let cols = min(tk, nk - j0)
            let cls = rule.classify(queries: qPos0, qPos0 + rows - 1, keys: kPos0 + j0, kPos0 + j0 + cols - 1)
            if cls == .hidden { j0 += tk; continue }

            transpose(cols, d, k + j0 * d, d, kt, tk)
            s.update(repeating: 0, count: rows * tk)
            gemmNN(rows, cols, d, q, d, kt, tk, s, tk)

            for i in 0..<rows {
                let si = s + i * tk
                let qi = qPos0 + i
                var tileMax = -Float.infinity
                if cls == .full {
                    for j in 0..<cols { si[j] *= scale; tileMax = nanMax(tileMax, si[j]) }
                } else {
                    for j in 0..<cols {
                        if rule.isVisible(query: qi, key: kPos0 + j0 + j) {
                            si[j] *= scale
                            tileMax = nanMax(tileMax, si[j])
                        } else {
                            si[j] = -.infinity
                        }
                    }
                }
                let mOld = rowMax[i]
                let mNew = nanMax(mOld, tileMax)
                if mNew == -.infinity {
                    // Nothing visible yet for this row: contribute nothing.
                    for j in 0..<cols { si[j] = 0 }
                    continue
                }
                var sum: Float = 0
                for j in 0..<cols {
                    let p = expf(si[j] - mNew)
                    si[j] = p
                    sum += p
                }
                let alpha = mOld == -.infinity ? 0 : expf(mOld - mNew)
                rowSum[i] = rowSum[i] * alpha + sum
                rowMax[i] = mNew
                if alpha != 1 {
                    let ai = acc + i * d
                    for c in 0..<d { ai[c] *= alpha }
                }
            }
            gemmNN(rows, d, cols, s, tk, v + j0 * d, d, acc, d)
            j0 += tk
        }
    }

    /// Turns the running state into the output: O = acc / l and
    /// lse = m + ln(l); a row that saw no key gets O = 0 and lse = −inf.
    /// `out` may be `acc` itself. `lse` may be nil.
    public static func finishForward(heads: Int, rows: Int, headDim d: Int,
                                     acc: UnsafePointer<Float>,
                                     rowMax: UnsafePointer<Float>, rowSum: UnsafePointer<Float>,
                                     out: UnsafeMutablePointer<Float>,
                                     lse: UnsafeMutablePointer<Float>?) {
        for r in 0..<(heads * rows) {
            let l = rowSum[r]
            let a = acc + r * d, o = out + r * d
            if l == 0 {
                for c in 0..<d { o[c] = 0 }
                lse?[r] = -.infinity
            } else {
                let inv = 1 / l
                for c in 0..<d { o[c] = a[c] * inv }
                lse?[r] = rowMax[r] + logf(l)
            }
        }
    }

    // MARK: Backward

    /// D_i = Σ_c dO[i,c]·O[i,c] for every row (the backward's "delta").
    public static func rowDot(count rowsTotal: Int, headDim d: Int,
                              _ a: UnsafePointer<Float>, _ b: UnsafePointer<Float>,
                              into delta: UnsafeMutablePointer<Float>) {
        for r in 0..<rowsTotal {
            let x = a + r * d, y = b + r * d
            var sum: Float = 0
            for c in 0..<d { sum += x[c] * y[c] }
            delta[r] = sum
        }
    }

    /// Adds one (query block, key block) pair's contribution to the gradients.
    ///
    /// P = exp(S − lse) recomputed from q, k and the forward's lse (P = 0 where
    /// lse = −inf); dP = dO·Vᵀ; dS = P∘(dP − D);
    /// dQ += scale·dS·K, dK += scale·dSᵀ·Q, dV += Pᵀ·dO. All three gradients
    /// accumulate into their buffers.
    ///
    /// Parallel over heads; each task owns its head's dQ, dK and dV rows, so
    /// the result is deterministic.
    public func backwardAccumulate(heads: Int,
                                   q: UnsafePointer<Float>, dOut: UnsafePointer<Float>,
                                   delta: UnsafePointer<Float>, lse: UnsafePointer<Float>,
                                   dq: UnsafeMutablePointer<Float>,
                                   queryRows nq: Int, queryPosition qPos0: Int,
                                   k: UnsafePointer<Float>, v: UnsafePointer<Float>,
                                   dk: UnsafeMutablePointer<Float>, dv: UnsafeMutablePointer<Float>,
                                   keyRows nk: Int, keyPosition kPos0: Int) {
        if heads == 0 || nq == 0 || nk == 0 { return }
        let d = headDim
        pool.parallelFor(heads) { z, worker in
            let work = scratch.pointer + worker * scratchPerWorker
            backwardHead(q: q + z * nq * d, dOut: dOut + z * nq * d,
                         delta: delta + z * nq, lse: lse + z * nq, dq: dq + z * nq * d,
                         nq: nq, qPos0: qPos0,
                         k: k + z * nk * d, v: v + z * nk * d,
                         dk: dk + z * nk * d, dv: dv + z * nk * d, nk: nk, kPos0: kPos0,
                         work: work)
        }
    }

    private func backwardHead(q: UnsafePointer<Float>, dOut: UnsafePointer<Float>,
                              delta: UnsafePointer<Float>, lse: UnsafePointer<Float>,
                              dq: UnsafeMutablePointer<Float>, nq: Int, qPos0: Int,
                              k: UnsafePointer<Float>, v: UnsafePointer<Float>,
                              dk: UnsafeMutablePointer<Float>, dv: UnsafeMutablePointer<Float>,
                              nk: Int, kPos0: Int, work: UnsafeMutablePointer<Float>) {
        let d = headDim, tq = tileQ, tk = tileK
        let p = work                   // [tq × tk] probabilities
        let ds = work + tq * tk        // [tq × tk] dP, then scale·dS
        let kt = work + 2 * tq * tk    // [d × tk]
        let vt = kt + d * tk           // [d × tk]
        var j0 = 0
        while j0 < nk {
            let cols = min(tk, nk - j0)
            let kPos = kPos0 + j0
            // Skip the whole key tile if no query of the block sees it.
            if rule.classify(queries: qPos0, qPos0 + nq - 1, keys: kPos, kPos + cols - 1) == .hidden {
                j0 += tk; continue
            }
            transpose(cols, d, k + j0 * d, d, kt, tk)
            transpose(cols, d, v + j0 * d, d, vt, tk)
            var i0 = 0
            while i0 < nq {
                let rows = min(tq, nq - i0)
                let qPos = qPos0 + i0
                let cls = rule.classify(queries: qPos, qPos + rows - 1, keys: kPos, kPos + cols - 1)
                if cls == .hidden { i0 += tq; continue }
                let qi = q + i0 * d, doi = dOut + i0 * d

                p.update(repeating: 0, count: rows * tk)
                gemmNN(rows, cols, d, qi, d, kt, tk, p, tk)
                ds.update(repeating: 0, count: rows * tk)
                gemmNN(rows, cols, d, doi, d, vt, tk, ds, tk)

                for i in 0..<rows {
                    let pi = p + i * tk, dsi = ds + i * tk
                    let rowLse = lse[i0 + i]
                    let rowDelta = delta[i0 + i]
                    if rowLse == -.infinity {
                        // The row saw no key in the forward: its gradients are 0.
                        for j in 0..<cols { pi[j] = 0; dsi[j] = 0 }
                        continue
                    }
                    for j in 0..<cols {
                        var prob: Float
                        if cls == .full || rule.isVisible(query: qPos + i, key: kPos + j) {
                            prob = expf(pi[j] * scale - rowLse)
                        } else {
                            prob = 0
                        }
                        pi[j] = prob
                        dsi[j] = prob * (dsi[j] - rowDelta) * scale
                    }
                }
                // dV[j] += Σ_i P[i,j]·dO[i];  dK[j] += Σ_i dS[i,j]·Q[i];  dQ[i] += Σ_j dS[i,j]·K[j]
                gemmTN(cols, d, rows, p, tk, doi, d, dv + j0 * d, d)
                gemmTN(cols, d, rows, ds, tk, qi, d, dk + j0 * d, d)
                gemmNN(rows, d, cols, ds, tk, k + j0 * d, d, dq + i0 * d, d)
                i0 += tq
            }
            j0 += tk
        }
    }
}

/// max that propagates NaN (Swift's `max` drops a NaN second argument), so a
/// NaN logit reaches the output as IEEE arithmetic would carry it.
@inline(__always)
func nanMax(_ a: Float, _ b: Float) -> Float { (b > a || b.isNaN) ? b : a }
