// Small dense products on row-major fp32 tiles, written in "axpy" form
// (the innermost loop runs over a contiguous row of the output), which the
// compiler vectorises for whatever SIMD width the build targets. Summation
// order is fixed, so results are bitwise reproducible.
//
// These are the seam for faster tile kernels (libxsmm, BLAS, ISA-specific
// micro-kernels): callers only rely on the contracts stated here.

/// y[0..<n] += a * x[0..<n]
@inline(__always)
func axpy(_ n: Int, _ a: Float, _ x: UnsafePointer<Float>, _ y: UnsafeMutablePointer<Float>) {
    for j in 0..<n { y[j] += a * x[j] }
}

/// C[m×n] += A[m×k] · B[k×n]   (leading dimensions lda, ldb, ldc; row-major)
@inline(__always)
func gemmNN(_ m: Int, _ n: Int, _ k: Int,
            _ a: UnsafePointer<Float>, _ lda: Int,
            _ b: UnsafePointer<Float>, _ ldb: Int,
            _ c: UnsafeMutablePointer<Float>, _ ldc: Int) {
    for i in 0..<m {
        let ci = c + i * ldc
        let ai = a + i * lda
        var p = 0
        while p + 4 <= k {
            let a0 = ai[p], a1 = ai[p + 1], a2 = ai[p + 2], a3 = ai[p + 3]
            let b0 = b + p * ldb, b1 = b0 + ldb, b2 = b1 + ldb, b3 = b2 + ldb
            for j in 0..<n {
                ci[j] += (a0 * b0[j] + a1 * b1[j]) + (a2 * b2[j] + a3 * b3[j])
            }
            p += 4
        }
        while p < k {
            axpy(n, ai[p], b + p * ldb, ci)
            p += 1
        }
    }
}

/// C[m×n] += Aᵀ · B  where A is [k×m] (lda) and B is [k×n] (ldb).
@inline(__always)
func gemmTN(_ m: Int, _ n: Int, _ k: Int,
            _ a: UnsafePointer<Float>, _ lda: Int,
            _ b: UnsafePointer<Float>, _ ldb: Int,
            _ c: UnsafeMutablePointer<Float>, _ ldc: Int) {
    for i in 0..<m {
        let ci = c + i * ldc
        var p = 0
        while p + 4 <= k {
            let a0 = a[p * lda + i], a1 = a[(p + 1) * lda + i]
            let a2 = a[(p + 2) * lda + i], a3 = a[(p + 3) * lda + i]
            let b0 = b + p * ldb, b1 = b0 + ldb, b2 = b1 + ldb, b3 = b2 + ldb
            for j in 0..<n {
                ci[j] += (a0 * b0[j] + a1 * b1[j]) + (a2 * b2[j] + a3 * b3[j])
            }
            p += 4
        }
        while p < k {
            axpy(n, a[p * lda + i], b + p * ldb, ci)
            p += 1
        }
    }
}

/// dst[cols×rows] = src[rows×cols]ᵀ  (src leading dimension lds, dst leading dimension ldd)
///
/// Eight source rows at a time: each destination row gets eight
/// contiguous elements gathered from the eight source rows (in L1), instead
/// of one scattered store per element, which touched a different cache line
/// each time (the panels' transposes were ~5% of a 1K-token forward).
/// For fp32 and for bf16 elements (UInt16) or pairs of them (UInt32).
@inline(__always)
func transpose<T: SIMDScalar>(_ rows: Int, _ cols: Int,
                              _ src: UnsafePointer<T>, _ lds: Int,
                              _ dst: UnsafeMutablePointer<T>, _ ldd: Int) {
    var r = 0
    while r + 8 <= rows {
        let s0 = src + r * lds, s1 = s0 + lds, s2 = s1 + lds, s3 = s2 + lds
        let s4 = s3 + lds, s5 = s4 + lds, s6 = s5 + lds, s7 = s6 + lds
        for c in 0..<cols {
            let v = SIMD8<T>(s0[c], s1[c], s2[c], s3[c], s4[c], s5[c], s6[c], s7[c])
            UnsafeMutableRawPointer(dst + c * ldd + r).storeBytes(of: v, as: SIMD8<T>.self)
        }
        r += 8
    }
    while r < rows {
        let s = src + r * lds
        for c in 0..<cols { dst[c * ldd + r] = s[c] }
        r += 1
    }
}

/// dst[cols×rows] += src[rows×cols]ᵀ, eight source rows at a time (as `transpose`).
@inline(__always)
func transposeAdd(_ rows: Int, _ cols: Int,
                  _ src: UnsafePointer<Float>, _ lds: Int,
                  _ dst: UnsafeMutablePointer<Float>, _ ldd: Int) {
    var r = 0
    while r + 8 <= rows {
        let s0 = src + r * lds, s1 = s0 + lds, s2 = s1 + lds, s3 = s2 + lds
        let s4 = s3 + lds, s5 = s4 + lds, s6 = s5 + lds, s7 = s6 + lds
        for c in 0..<cols {
            let v = SIMD8<Float>(s0[c], s1[c], s2[c], s3[c], s4[c], s5[c], s6[c], s7[c])
            let target = UnsafeMutableRawPointer(dst + c * ldd + r)
            target.storeBytes(of: target.loadUnaligned(as: SIMD8<Float>.self) + v, as: SIMD8<Float>.self)
        }
        r += 8
    }
    while r < rows {
        let s = src + r * lds
        for c in 0..<cols { dst[c * ldd + r] += s[c] }
        r += 1
    }
}
