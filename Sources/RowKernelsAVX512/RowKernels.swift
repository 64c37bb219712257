// The softmax arithmetic of one tile, written once over `Lanes` (a SIMD
// vector type) and compiled three times: in RowKernelsAVX512 (SIMD16, AVX-512
// code), RowKernelsAVX2 (SIMD8, AVX2 + FMA) and LocalAttention (SIMD8 for
// baseline x86-64). This file is the one copy; the other two are symbolic
// links to it, and each module's Lanes.swift says its vector type and whether
// `fused` may use an FMA instruction. LocalAttention picks the module at run
// time from the CPU, so the library needs no -march and runs anywhere.
//
// Lane accumulators combine in a fixed order, so a given code path gives
// the same bits run after run.

/// 2^x lane-wise: x = n + f with n = round(x) and f in [−½, ½], 2^f by a
/// degree-6 polynomial (fitted for relative error; within 1.4 ulp
/// evaluated in fp32), 2^n through the exponent bits. Below −126 the
/// result is exactly 0 (so −inf gives 0), from 127.5 on it is +inf (2^n with
/// n = 128 overflows; the true value is within 2^−½ of overflow), NaN stays
/// NaN, and no lane traps. Two compares and three blends: the clamps are
/// what keeps the exponent arithmetic in range.
@_transparent
func exp2Lanes(_ x: Lanes) -> Lanes {
    let lowest = Lanes(repeating: -126), highest = Lanes(repeating: 128)
    let low = x .< lowest
    var xc = x.replacing(with: lowest, where: low)
    xc.replace(with: highest, where: x .> highest)
    return exp2Core(xc).replacing(with: 0, where: low)
}

/// 2^x for the softmax's x = s − max ≤ 0 (up to rounding): only the lower
/// clamp, and there the result is 2^−126·2^f ≈ 1e−38 instead of 0 — below
/// anything a sum of probabilities (each ≤ 1, one of them 1) can resolve.
/// NaN stays NaN.
@_transparent
func exp2Softmax(_ x: Lanes) -> Lanes {
    let lowest = Lanes(repeating: -126)
    return exp2Core(x.replacing(with: lowest, where: x .< lowest))
}

/// 2^x for x in [−126, 128] (or NaN).
@_transparent
func exp2Core(_ xc: Lanes) -> Lanes {
    let n = xc.rounded(.toNearestOrEven)
    let f = xc - n   // in [−½, ½]
    // Estrin's scheme: three FMAs deep instead of Horner's six (the
    // latency chain is what bounds the throughput here).
    let f2 = f * f, f4 = f2 * f2
    let low2 = fused(Lanes(repeating: 6.931_471_825e-1), f, Lanes(repeating: 1))
    let mid2 = fused(Lanes(repeating: 5.550_327_897e-2), f, Lanes(repeating: 2.402_264_625e-1))
    var high3 = fused(Lanes(repeating: 1.340_026_269e-3), f, Lanes(repeating: 9.618_489_072e-3))
    high3 = fused(Lanes(repeating: 1.534_663_315e-4), f2, high3)
    let p = fused(high3, f4, fused(mid2, f2, low2))
    // 2^n through the exponent bits (n is an integer in [−126, 128]; NaN
    // gives garbage bits here, and p is NaN).
    // Adding 1.5·2^23 + 127 leaves n + 127 (1 … 255) in the low mantissa
    // bits; shifting them into the exponent field pushes everything above
    // out of the word.
    // (n, not x: a tie like x = −0.5 must round the way vroundps did.)
    let shifted = n + Lanes(repeating: 12_583_039)
    return p * unsafeBitCast(unsafeBitCast(shifted, to: LaneBits.self) &<< 23, to: Lanes.self)
}

/// e^x lane-wise as 2^(x·log₂e): the product rounds once relative to |x|,
/// so the values that matter in a softmax (|x| small) keep fp32 accuracy.
@_transparent
func expLanes(_ x: Lanes) -> Lanes { exp2Lanes(x * Lanes(repeating: 1.442_695_04)) }

/// tanh lane-wise. Where every lane has |x| ≤ ¼ — logits well below the
/// cap, most of them in a model (a cap clips the rare large ones) — its
/// Taylor series to x¹¹ (the next term is below 2⁻³² relative there): seven
/// operations. Elsewhere t = E/(E + 2) with E = e^(2|x|) − 1 and the sign
/// of x: E comes from the exponential's own polynomial written as 2^f − 1 =
/// f·(c₁ + c₂f + …) (no 1 − 1 cancellation for small x) and 2^n·(2^f − 1) +
/// (2^n − 1), so neither small nor large |x| loses bits; |x| is clamped to
/// 9, from where tanh rounds to ±1. Within 4 ulp and 1.65·2⁻²⁴ absolute
/// (measured against Double on every path: TanhAccuracyTests); NaN stays
/// NaN; one division. (A rational minimax form is as cheap as the general
/// branch but ~5 ulp off near |x| = 5–8, where the cap's logits sit: c·5
/// ulp is 1.5e-5 at c = 50.)
@_transparent
func tanhLanes(_ a: Lanes) -> Lanes {
    // |a| and the sign through the bits (two logic operations instead of a
    // compare, a negation and two blends).
    let bits = unsafeBitCast(a, to: LaneBits.self)
    let sign = bits & LaneBits(repeating: 0x8000_0000)
    let magnitude = unsafeBitCast(bits & LaneBits(repeating: 0x7FFF_FFFF), to: Lanes.self)
    if !any(magnitude .> Lanes(repeating: 0.25)) {   // (NaN lanes compare false and stay NaN)
        // x − x³/3 + 2x⁵/15 − 17x⁷/315 + 62x⁹/2835 − 1382x¹¹/155925
        let x2 = a * a
        var p = fused(x2, Lanes(repeating: -1382.0 / 155_925), Lanes(repeating: 62.0 / 2835))
        p = fused(x2, p, Lanes(repeating: -17.0 / 315))
        p = fused(x2, p, Lanes(repeating: 2.0 / 15))
        p = fused(x2, p, Lanes(repeating: -1.0 / 3))
        return fused(a * x2, p, a)
    }
    let x = magnitude.replacing(with: Lanes(repeating: 9), where: magnitude .> Lanes(repeating: 9))
    let y = x * Lanes(repeating: 2 * 1.442_695_04)   // 2|x|·log₂e in [0, 26] (or NaN)
    let n = y.rounded(.toNearestOrEven)
    let f = y - n   // in [−½, ½]
    // 2^f − 1 by exp2Core's polynomial without its constant term.
    let f2 = f * f
    let a01 = fused(Lanes(repeating: 2.402_264_625e-1), f, Lanes(repeating: 6.931_471_825e-1))
    let a23 = fused(Lanes(repeating: 9.618_489_072e-3), f, Lanes(repeating: 5.550_327_897e-2))
    let a45 = fused(Lanes(repeating: 1.534_663_315e-4), f, Lanes(repeating: 1.340_026_269e-3))
    let q = f * fused(fused(a45, f2, a23), f2, a01)
    // 2^n (n in 0 … 26) through the exponent bits, then E = 2^n·q + (2^n − 1).
    let shifted = n + Lanes(repeating: 12_583_039)
    let power = unsafeBitCast(unsafeBitCast(shifted, to: LaneBits.self) &<< 23, to: Lanes.self)
    let e = fused(power, q, power - Lanes(repeating: 1))
    let t = e / (e + Lanes(repeating: 2))   // ≥ 0 (or NaN)
    return unsafeBitCast(unsafeBitCast(t, to: LaneBits.self) | sign, to: Lanes.self)
}

@inline(never)
func scalarTanh(_ x: Float) -> Float { tanhLanes(Lanes(repeating: x))[0] }

@inline(__always)
func loadLanes(_ p: UnsafePointer<Float>) -> Lanes {
    UnsafeRawPointer(p).loadUnaligned(as: Lanes.self)
}

@inline(__always)
func storeLanes(_ v: Lanes, _ p: UnsafeMutablePointer<Float>) {
    UnsafeMutableRawPointer(p).storeBytes(of: v, as: Lanes.self)
}

/// Sum of the lanes in a fixed order: halves added pairwise (a tree, log₂ w
/// steps instead of a w-long chain of dependent adds).
@_transparent
func laneSum(_ v: Lanes) -> Float { treeSum(v) }

@_transparent
func treeSum(_ v: SIMD16<Float>) -> Float { treeSum(v.lowHalf + v.highHalf) }
@_transparent
func treeSum(_ v: SIMD8<Float>) -> Float { treeSum(v.lowHalf + v.highHalf) }
@_transparent
func treeSum(_ v: SIMD4<Float>) -> Float { let h = v.lowHalf + v.highHalf; return h[0] + h[1] }

/// Max of lanes none of which is NaN, by halves.
@_transparent
func laneMaxOrdered(_ v: Lanes) -> Float { treeMax(v) }

@_transparent
func treeMax(_ v: SIMD16<Float>) -> Float { treeMax(v.lowHalf.replacing(with: v.highHalf, where: v.highHalf .> v.lowHalf)) }
@_transparent
func treeMax(_ v: SIMD8<Float>) -> Float { treeMax(v.lowHalf.replacing(with: v.highHalf, where: v.highHalf .> v.lowHalf)) }
@_transparent
func treeMax(_ v: SIMD4<Float>) -> Float {
    let h = v.lowHalf.replacing(with: v.highHalf, where: v.highHalf .> v.lowHalf)
    return h[1] > h[0] ? h[1] : h[0]
}

@inline(never)
func scalarExp(_ x: Float) -> Float { expLanes(Lanes(repeating: x))[0] }

/// 0, 1, 2, … in the lanes: the column offsets of a vector.
@_transparent
func laneOffsets() -> Lanes {
    var v = Lanes()
    for i in 0..<Lanes.scalarCount { v[i] = Float(i) }
    return v
}

/// The lanes of the vector at column j that lie outside first..<last.
@_transparent
func outside(_ offsets: Lanes, _ j: Int, _ first: Int, _ last: Int) -> SIMDMask<Lanes.MaskStorage> {
    let column = offsets + Lanes(repeating: Float(j))
    return (column .< Lanes(repeating: Float(first))) .| (column .>= Lanes(repeating: Float(last)))
}

public enum RowKernels {
    static let log2e: Float = 1.442_695_04

    /// One lane of each exponential, for the accuracy tests.
    static func exp2Probe(_ x: Float) -> Float { exp2Lanes(Lanes(repeating: x))[Lanes.scalarCount - 1] }
    static func exp2SoftmaxProbe(_ x: Float) -> Float { exp2Softmax(Lanes(repeating: x))[1] }
    static func expProbe(_ x: Float) -> Float { expLanes(Lanes(repeating: x))[0] }
    /// The forward softmax step of one score tile (FlashAttention's online
    /// softmax). Row i of `s` (leading dimension `ld`, `width` columns
    /// written) holds q_i·k_j for the keys of the tile; only columns
    /// `lo[i]..<hi[i]` are visible. For each row: m' = max(m, max scale·s);
    /// p = e^(scale·s − m') on visible columns, 0 elsewhere;
    /// l' = l·e^(m − m') + Σ p; acc_i ← acc_i·e^(m − m'). A row with nothing
    /// visible (so far) keeps m = −inf, l = 0 and gets p = 0; a NaN score
    /// makes the row's l (and so its output) NaN.
    ///
    /// Two phases over the tile: the new max of every row (nothing stored
    /// but the maxima), then every row's exponentials, stored and summed.
    /// Rows are short (a tile's 128 columns are 8 AVX-512 vectors), so a
    /// row's max → exponentials → sum is a dependency chain longer than its
    /// work; with the maxima known up front, one row's exponentials overlap
    /// the previous row's reductions. Masked columns at the ends of the
    /// visible run are cleared by lane masks on the vectors they share with
    /// visible columns, so a causal diagonal costs no scalar loop.
    @inline(never)
    public static func softmaxTile(_ s: UnsafeMutablePointer<Float>, ld: Int, width: Int, rows: Int,
                                   lo: UnsafePointer<Int>, hi: UnsafePointer<Int>, scale: Float,
                                   rowMax: UnsafeMutablePointer<Float>, rowSum: UnsafeMutablePointer<Float>,
                                   acc: UnsafeMutablePointer<Float>, headDim d: Int) {
        let w = Lanes.scalarCount
        let offsets = laneOffsets()
        let scaleLanes = Lanes(repeating: scale), scale2 = Lanes(repeating: scale * log2e)
        withUnsafeTemporaryAllocation(of: Float.self, capacity: rows) { newMax in
            for i in 0..<rows {
                let row = s + i * ld
                let first = lo[i], last = hi[i]
                if first >= last { row.update(repeating: 0, count: width); newMax[i] = -.infinity; continue }
                // Vectors from the one holding `first`, while inside the row; a
                // scalar tail only when `width` is not a multiple of the lanes.
                let start = first / w * w
                let vectorEnd = min((last + w - 1) / w * w, width / w * w)
                // The max of the visible scaled scores.
                var best0 = Lanes(repeating: -.infinity), best1 = best0
                var j = start
                let fullEnd = min(last / w * w, vectorEnd)   // vectors wholly visible end here
                if j < first && j < vectorEnd {
                    let a = (loadLanes(row + j) * scaleLanes).replacing(with: -.infinity, where: outside(offsets, j, first, last))
                    best0.replace(with: a, where: a .> best0)
                    j += w
                }
                while j + 2 * w <= fullEnd {
                    let a = loadLanes(row + j) * scaleLanes, b = loadLanes(row + j + w) * scaleLanes
                    best0.replace(with: a, where: a .> best0)
                    best1.replace(with: b, where: b .> best1)
                    j += 2 * w
                }
                while j < vectorEnd {
                    var a = loadLanes(row + j) * scaleLanes
                    if j < first || j + w > last { a.replace(with: -.infinity, where: outside(offsets, j, first, last)) }
                    best0.replace(with: a, where: a .> best0)
                    j += w
                }
                best0.replace(with: best1, where: best1 .> best0)
                var tileMax = laneMaxOrdered(best0)   // the compares above never keep a NaN
                let tail = max(j, first)
                for t in tail..<max(tail, last) where row[t] * scale > tileMax { tileMax = row[t] * scale }
                if tileMax == -.infinity {
                    // Nothing above −inf: either every visible score is −inf or
                    // some are NaN (which the compares above pass over).
                    for t in first..<last where row[t].isNaN { tileMax = .nan; break }
                }
                let mOld = rowMax[i]
                let mNew = (tileMax > mOld || tileMax != tileMax) ? tileMax : mOld
                newMax[i] = mNew
                if mNew == -.infinity { row.update(repeating: 0, count: width) }
            }
            for i in 0..<rows {
                let mNew = newMax[i]
                if mNew == -.infinity { continue }   // nothing visible so far (row cleared above)
                let row = s + i * ld
                let first = lo[i], last = hi[i]
                let start = first / w * w
                let vectorEnd = min((last + w - 1) / w * w, width / w * w)
                let fullEnd = min(last / w * w, vectorEnd)
                let mOld = rowMax[i]
                var j = start
                // p = e^(scale·s − m'), stored and summed.
                if start > 0 { row.update(repeating: 0, count: start) }
                // In base 2: x = scale·log₂e·s − m'·log₂e (one FMA; the product's
                // rounding is relative to the logit, as m's own rounding is).
                let shift = Lanes(repeating: -mNew * log2e)
                var sum0 = Lanes(), sum1 = Lanes()
                if j < first && j < vectorEnd {
                    let a = exp2Softmax(fused(loadLanes(row + j), scale2, shift)).replacing(with: 0, where: outside(offsets, j, first, last))
                    storeLanes(a, row + j)
                    sum0 += a
                    j += w
                }
                while j + 2 * w <= fullEnd {
                    let a = exp2Softmax(fused(loadLanes(row + j), scale2, shift))
                    let b = exp2Softmax(fused(loadLanes(row + j + w), scale2, shift))
                    storeLanes(a, row + j)
                    storeLanes(b, row + j + w)
                    sum0 += a
                    sum1 += b
                    j += 2 * w
                }
                while j < vectorEnd {
                    var a = exp2Softmax(fused(loadLanes(row + j), scale2, shift))
                    if j < first || j + w > last { a.replace(with: 0, where: outside(offsets, j, first, last)) }
                    storeLanes(a, row + j)
                    sum0 += a
                    j += w
                }
                // Masked columns between the last vector and a late `first`
                // (only when the vectors stop short of it) hold raw scores: clear them.
                if j < first { (row + j).update(repeating: 0, count: first - j) }
                var tailSum: Float = 0
                for t in max(j, first)..<max(last, j) {
                    let e = scalarExp(row[t] * scale - mNew)
                    row[t] = e
                    tailSum += e
                }
                let cleared = max(j, last)
                if cleared < width { (row + cleared).update(repeating: 0, count: width - cleared) }
                let alpha = mOld == -.infinity || mOld == mNew ? (mOld == mNew ? 1 : 0) : scalarExp(mOld - mNew)
                rowSum[i] = rowSum[i] * alpha + (laneSum(sum0 + sum1) + tailSum)
                rowMax[i] = mNew
                if alpha != 1 {
                    let a = acc + i * d
                    let alphaLanes = Lanes(repeating: alpha)
                    var c = 0
                    while c + w <= d { storeLanes(loadLanes(a + c) * alphaLanes, a + c); c += w }
                    while c < d { a[c] *= alpha; c += 1 }
                }
            }
        }
    }

}

extension RowKernels {
    static func tanhProbe(_ x: Float) -> Float { tanhLanes(Lanes(repeating: x))[Lanes.scalarCount - 1] }

    /// Logit soft-capping of a score tile, in place: on the visible columns
    /// `lo[i]..<hi[i]` of each row, s ← cap·tanh(scale·s/cap) — the capped,
    /// scaled logit, so `softmaxTile` then runs with scale 1. Columns outside
    /// may be changed too (the vectors that straddle a bound); `softmaxTile`
    /// masks them. Rows with nothing visible are left alone.
    @inline(never)
    public static func capTile(_ s: UnsafeMutablePointer<Float>, ld: Int, width: Int, rows: Int,
                               lo: UnsafePointer<Int>, hi: UnsafePointer<Int>, scale: Float, cap: Float) {
        let w = Lanes.scalarCount
        let inner = Lanes(repeating: scale / cap), outer = Lanes(repeating: cap)
        for i in 0..<rows {
            let row = s + i * ld
            let first = lo[i], last = hi[i]
            if first >= last { continue }
            var j = first / w * w
            let vectorEnd = min((last + w - 1) / w * w, width / w * w)
            // Two vectors a round: two independent tanh chains in flight.
            while j + 2 * w <= vectorEnd {
                let a = tanhLanes(loadLanes(row + j) * inner), b = tanhLanes(loadLanes(row + j + w) * inner)
                storeLanes(outer * a, row + j)
                storeLanes(outer * b, row + j + w)
                j += 2 * w
            }
            if j < vectorEnd {
                storeLanes(outer * tanhLanes(loadLanes(row + j) * inner), row + j)
                j += w
            }
            for t in max(j, first)..<max(last, j) { row[t] = cap * scalarTanh(row[t] * (scale / cap)) }
        }
    }

    /// The backward's elementwise step of one tile: on entry `p` holds q_i·k_j
    /// and `ds` holds dP = dO_i·v_j. On exit, for visible columns
    /// p = e^(scale·s − lse_i) and ds = scale·p·(dP − D_i); everything else
    /// (masked columns, rows with lse = −inf, which saw no key) is 0.
    @inline(never)
    public static func gradientTile(_ p: UnsafeMutablePointer<Float>, _ ds: UnsafeMutablePointer<Float>,
                                    ld: Int, width: Int, rows: Int,
                                    lo: UnsafePointer<Int>, hi: UnsafePointer<Int>, scale: Float,
                                    lse: UnsafePointer<Float>, delta: UnsafePointer<Float>) {
        gradientTileCapped(p, ds, ld: ld, width: width, rows: rows, lo: lo, hi: hi, scale: scale, lse: lse, delta: delta, cap: 0)
    }

    /// `gradientTile` with logit soft-capping (cap > 0; 0 is `gradientTile`):
    /// with t = tanh(scale·s/cap), p = e^(cap·t − lse_i) and
    /// ds = scale·(1 − t²)·p·(dP − D_i), the gradient with respect to q_i·k_j
    /// through the cap.
    @inline(never)
    public static func gradientTileCapped(_ p: UnsafeMutablePointer<Float>, _ ds: UnsafeMutablePointer<Float>,
                                          ld: Int, width: Int, rows: Int,
                                          lo: UnsafePointer<Int>, hi: UnsafePointer<Int>, scale: Float,
                                          lse: UnsafePointer<Float>, delta: UnsafePointer<Float>, cap: Float) {
        let w = Lanes.scalarCount
        let offsets = laneOffsets()
        let scaleLanes = Lanes(repeating: scale), inner = Lanes(repeating: cap > 0 ? scale / cap : 0)
        let outer2 = Lanes(repeating: cap * log2e)   // e^(c·t − lse) = 2^(t·c·log₂e − lse·log₂e)
        for i in 0..<rows {
            let pi = p + i * ld, dsi = ds + i * ld
            let first = lo[i], last = hi[i]
            let rowLse = lse[i], rowDelta = delta[i]
            if first >= last || rowLse == -.infinity {
                pi.update(repeating: 0, count: width)
                dsi.update(repeating: 0, count: width)
                continue
            }
            let start = first / w * w
            let vectorEnd = min((last + w - 1) / w * w, width / w * w)
            if start > 0 { pi.update(repeating: 0, count: start); dsi.update(repeating: 0, count: start) }
            let deltaLanes = Lanes(repeating: rowDelta)
            var j = start
            if cap > 0 {
                let shift2 = Lanes(repeating: -rowLse * log2e)
                // Two wholly visible vectors a round (two independent chains
                // of tanh and exponential in flight), then the rest one by one.
                if j >= first {
                    while j + 2 * w <= min(vectorEnd, last) {
                        let ta = tanhLanes(loadLanes(pi + j) * inner), tb = tanhLanes(loadLanes(pi + j + w) * inner)
                        let ea = exp2Softmax(fused(ta, outer2, shift2)), eb = exp2Softmax(fused(tb, outer2, shift2))
                        storeLanes(ea, pi + j)
                        storeLanes(eb, pi + j + w)
                        storeLanes(ea * fused(-scaleLanes * ta, ta, scaleLanes) * (loadLanes(dsi + j) - deltaLanes), dsi + j)
                        storeLanes(eb * fused(-scaleLanes * tb, tb, scaleLanes) * (loadLanes(dsi + j + w) - deltaLanes), dsi + j + w)
                        j += 2 * w
                    }
                }
                while j < vectorEnd {
                    let t = tanhLanes(loadLanes(pi + j) * inner)
                    // c·t − lse ≤ 0 up to rounding (lse covers every visible logit).
                    var e = exp2Softmax(fused(t, outer2, shift2))
                    if j < first || j + w > last { e.replace(with: 0, where: outside(offsets, j, first, last)) }
                    storeLanes(e, pi + j)
                    // scale·(1 − t²) = scale − scale·t·t.
                    let slope = fused(-scaleLanes * t, t, scaleLanes)
                    storeLanes(e * slope * (loadLanes(dsi + j) - deltaLanes), dsi + j)
                    j += w
                }
            } else {
                let shift = Lanes(repeating: -rowLse)
                while j < vectorEnd {
                    var e = expLanes(fused(loadLanes(pi + j), scaleLanes, shift))
                    if j < first || j + w > last { e.replace(with: 0, where: outside(offsets, j, first, last)) }
                    storeLanes(e, pi + j)
                    storeLanes(e * scaleLanes * (loadLanes(dsi + j) - deltaLanes), dsi + j)
                    j += w
                }
            }
            if j < first {
                (pi + j).update(repeating: 0, count: first - j)
                (dsi + j).update(repeating: 0, count: first - j)
            }
            for c in max(j, first)..<max(last, j) {
                let t = cap > 0 ? scalarTanh(pi[c] * (scale / cap)) : 0
                let e = cap > 0 ? scalarExp(cap * t - rowLse) : scalarExp(pi[c] * scale - rowLse)
                pi[c] = e
                dsi[c] = e * (cap > 0 ? scale * (1 - t * t) : scale) * (dsi[c] - rowDelta)
            }
            let cleared = max(j, last)
            if cleared < width {
                (pi + cleared).update(repeating: 0, count: width - cleared)
                (dsi + cleared).update(repeating: 0, count: width - cleared)
            }
        }
    }

    /// Rounds `rows` rows of `width` floats (leading dimension `ld`) to the
    /// nearest bf16 value, ties to even, in place (a NaN stays NaN, quieted):
    /// the emulation of bf16 operands (LocalAttention's `.bf16` products
    /// without bf16 instructions), the same rounding as the bf16 storage
    /// type's narrowing.
    @inline(never)
    public static func roundToBF16(_ x: UnsafeMutablePointer<Float>, ld: Int, width: Int, rows: Int) {
        let w = Lanes.scalarCount
        let magnitude = LaneBits(repeating: 0x7FFF_FFFF), infinity = LaneBits(repeating: 0x7F80_0000)
        let quietBit = LaneBits(repeating: 0x0040_0000), half = LaneBits(repeating: 0x7FFF)
        let one = LaneBits(repeating: 1), top = LaneBits(repeating: 0xFFFF_0000)
        for r in 0..<rows {
            let row = x + r * ld
            var j = 0
            while j + w <= width {
                var bits = unsafeBitCast(loadLanes(row + j), to: LaneBits.self)
                bits.replace(with: bits | quietBit, where: (bits & magnitude) .> infinity)
                bits = (bits &+ half &+ ((bits &>> 16) & one)) & top
                storeLanes(unsafeBitCast(bits, to: Lanes.self), row + j)
                j += w
            }
            while j < width {
                var bits = row[j].bitPattern
                if bits & 0x7FFF_FFFF > 0x7F80_0000 { bits |= 0x0040_0000 }
                row[j] = Float(bitPattern: (bits &+ 0x7FFF &+ ((bits >> 16) & 1)) & 0xFFFF_0000)
                j += 1
            }
        }
    }
}
