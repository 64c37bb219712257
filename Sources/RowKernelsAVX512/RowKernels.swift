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

/// e^x lane-wise: Cody–Waite range reduction and the Cephes degree-6
/// polynomial, within 2 ulp of expf on [−87.3, 88.4]; below that the result
/// is exactly 0 (so −inf gives 0), NaN stays NaN, and no lane traps.
@inline(__always)
func expLanes(_ x: Lanes) -> Lanes {
    let lowest = Lanes(repeating: -87.336_54), highest = Lanes(repeating: 88.376_26)
    var xc = x
    xc.replace(with: lowest, where: x .< lowest)
    xc.replace(with: highest, where: x .> highest)
    let magic = Lanes(repeating: 12_582_912)   // 1.5 · 2^23: adding it rounds to an integer
    let shifted = fused(xc, Lanes(repeating: 1.442_695_04), magic)
    let n = shifted - magic
    var r = fused(n, Lanes(repeating: -0.693_359_375), xc)
    r = fused(n, Lanes(repeating: 2.121_944_4e-4), r)
    var p = Lanes(repeating: 1.987_569_15e-4)
    p = fused(p, r, Lanes(repeating: 1.398_199_95e-3))
    p = fused(p, r, Lanes(repeating: 8.333_451_9e-3))
    p = fused(p, r, Lanes(repeating: 4.166_579_59e-2))
    p = fused(p, r, Lanes(repeating: 1.666_666_55e-1))
    p = fused(p, r, Lanes(repeating: 5.000_000_12e-1))
    p = fused(p, r * r, r + 1)
    // 2^n from n's bits: `shifted` holds n + 1.5·2^23 in its mantissa.
    let exponent = (unsafeBitCast(shifted, to: LaneBits.self) &- 0x4B40_0000 &+ 127) &<< 23
    var result = p * unsafeBitCast(exponent, to: Lanes.self)
    result.replace(with: 0, where: x .< lowest)
    result.replace(with: x, where: x .!= x)
    return result
}

@inline(__always)
func loadLanes(_ p: UnsafePointer<Float>) -> Lanes {
    UnsafeRawPointer(p).loadUnaligned(as: Lanes.self)
}

@inline(__always)
func storeLanes(_ v: Lanes, _ p: UnsafeMutablePointer<Float>) {
    UnsafeMutableRawPointer(p).storeBytes(of: v, as: Lanes.self)
}

@inline(__always)
func loadPartial(_ p: UnsafePointer<Float>, _ count: Int, fill: Float) -> Lanes {
    var v = Lanes(repeating: fill)
    for i in 0..<count { v[i] = p[i] }
    return v
}

@inline(__always)
func storePartial(_ v: Lanes, _ p: UnsafeMutablePointer<Float>, _ count: Int) {
    for i in 0..<count { p[i] = v[i] }
}

/// Sum of the lanes in a fixed order.
@inline(__always)
func laneSum(_ v: Lanes) -> Float {
    var total: Float = 0
    for i in 0..<Lanes.scalarCount { total += v[i] }
    return total
}

/// Max of the lanes; NaN if any lane is NaN.
@inline(__always)
func laneMax(_ v: Lanes) -> Float {
    var best = v[0]
    for i in 1..<Lanes.scalarCount where v[i] > best || v[i] != v[i] { best = v[i] }
    return best
}

@inline(__always)
func scalarExp(_ x: Float) -> Float { expLanes(Lanes(repeating: x))[0] }

public enum RowKernels {
    /// The forward softmax step of one score tile (FlashAttention's online
    /// softmax). Row i of `s` (leading dimension `ld`, `width` columns
    /// written) holds q_i·k_j for the keys of the tile; only columns
    /// `lo[i]..<hi[i]` are visible. For each row: s ← scale·s;
    /// m' = max(m, max s); p = e^(s − m') on visible columns, 0 elsewhere;
    /// l' = l·e^(m − m') + Σ p; acc_i ← acc_i·e^(m − m'). A row with nothing
    /// visible (so far) keeps m = −inf, l = 0 and gets p = 0.
    @inline(never)
    public static func softmaxTile(_ s: UnsafeMutablePointer<Float>, ld: Int, width: Int, rows: Int,
                                   lo: UnsafePointer<Int>, hi: UnsafePointer<Int>, scale: Float,
                                   rowMax: UnsafeMutablePointer<Float>, rowSum: UnsafeMutablePointer<Float>,
                                   acc: UnsafeMutablePointer<Float>, headDim d: Int) {
        let w = Lanes.scalarCount
        for i in 0..<rows {
            let row = s + i * ld
            let first = lo[i], last = hi[i]
            if first >= last { row.update(repeating: 0, count: width); continue }
            // Scale and find the max of the visible scores.
            var best = Lanes(repeating: -.infinity)
            var sawNaN = false
            var j = first
            while j + w <= last {
                let v = loadLanes(row + j) * scale
                storeLanes(v, row + j)
                best.replace(with: v, where: v .> best)
                sawNaN = sawNaN || any(v .!= v)
                j += w
            }
            if j < last {
                let v = loadPartial(row + j, last - j, fill: -.infinity) * scale
                storePartial(v, row + j, last - j)
                best.replace(with: v, where: v .> best)
                sawNaN = sawNaN || any(v .!= v)
            }
            let tileMax = sawNaN ? Float.nan : laneMax(best)
            let mOld = rowMax[i]
            let mNew = (tileMax > mOld || tileMax != tileMax) ? tileMax : mOld
            if first > 0 { row.update(repeating: 0, count: first) }
            if last < width { (row + last).update(repeating: 0, count: width - last) }
            if mNew == -.infinity { (row + first).update(repeating: 0, count: last - first); continue }
            // p = e^(s − m'), summed.
            var sum = Lanes()
            j = first
            while j + w <= last {
                let e = expLanes(loadLanes(row + j) - mNew)
                storeLanes(e, row + j)
                sum += e
                j += w
            }
            if j < last {
                let e = expLanes(loadPartial(row + j, last - j, fill: -.infinity) - mNew)
                storePartial(e, row + j, last - j)
                sum += e
            }
            let alpha = mOld == -.infinity ? 0 : scalarExp(mOld - mNew)
            rowSum[i] = rowSum[i] * alpha + laneSum(sum)
            rowMax[i] = mNew
            if alpha != 1 {
                let a = acc + i * d
                var c = 0
                while c + w <= d { storeLanes(loadLanes(a + c) * alpha, a + c); c += w }
                while c < d { a[c] *= alpha; c += 1 }
            }
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
        let w = Lanes.scalarCount
        for i in 0..<rows {
            let pi = p + i * ld, dsi = ds + i * ld
            let first = lo[i], last = hi[i]
            let rowLse = lse[i], rowDelta = delta[i]
            if first >= last || rowLse == -.infinity {
                pi.update(repeating: 0, count: width)
                dsi.update(repeating: 0, count: width)
                continue
            }
            var j = first
            while j + w <= last {
                let e = expLanes(fused(loadLanes(pi + j), Lanes(repeating: scale), Lanes(repeating: -rowLse)))
                storeLanes(e, pi + j)
                storeLanes(e * (loadLanes(dsi + j) - rowDelta) * scale, dsi + j)
                j += w
            }
            if j < last {
                let n = last - j
                let e = expLanes(fused(loadPartial(pi + j, n, fill: 0), Lanes(repeating: scale), Lanes(repeating: -rowLse)))
                storePartial(e, pi + j, n)
                storePartial(e * (loadPartial(dsi + j, n, fill: 0) - rowDelta) * scale, dsi + j, n)
            }
            if first > 0 { pi.update(repeating: 0, count: first); dsi.update(repeating: 0, count: first) }
            if last < width {
                (pi + last).update(repeating: 0, count: width - last)
                (dsi + last).update(repeating: 0, count: width - last)
            }
        }
    }
}
