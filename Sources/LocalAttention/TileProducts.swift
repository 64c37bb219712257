import CXSMM
#if canImport(Glibc)
import Glibc
#endif

/// The matrix products of the attention tiles, row-major:
///   nn: C[m×n] (+)= A[m×k] · B[k×n]
///   tn: C[m×n] (+)= Aᵀ · B   with A stored [k×m]
///
/// They run on libxsmm's JIT kernels, generated at run time for the CPU at
/// hand (AVX-512 here, AVX2 elsewhere and under valgrind, SSE as a last
/// resort), so the library needs no `-march` at build time. When libxsmm has
/// no kernel for a shape, or `BURST_KERNELS=portable` is set, the portable
/// Swift loops of TileMath.swift run instead. Either way the summation order
/// is fixed per shape, so results are reproducible run after run.
final class TileProducts {
    /// True unless BURST_KERNELS=portable.
    static let jitAllowed: Bool = {
        if let value = getenv("BURST_KERNELS"), String(cString: value) == "portable" { return false }
        cxsmm_init()
        return true
    }()

    /// libxsmm's name of the code path it generates ("cpx", "hsw", ...), or "portable".
    static var codePath: String {
        jitAllowed ? String(cString: cxsmm_target()) : "portable"
    }

    /// 2: AVX-512, 1: AVX2 + FMA, 0: baseline — the row kernels to run.
    static var vectorLevel: Int { jitAllowed ? Int(cxsmm_vector_level()) : 0 }

    let useJIT: Bool

    init(useJIT: Bool = TileProducts.jitAllowed) {
        self.useJIT = useJIT && TileProducts.jitAllowed
    }

    /// A kernel handle for one shape, made once and reused across tiles.
    struct Kernel {
        let jit: UnsafeMutableRawPointer?
        let m, n, k, lda, ldb, ldc: Int
        let transposedA: Bool
        let accumulate: Bool
    }

    func kernel(m: Int, n: Int, k: Int, lda: Int, ldb: Int, ldc: Int,
                transposedA: Bool, accumulate: Bool) -> Kernel {
        var jit: UnsafeMutableRawPointer?
        if useJIT && m > 0 && n > 0 && k > 0 {
            jit = cxsmm_dispatch(Int32(m), Int32(n), Int32(k), Int32(lda), Int32(ldb), Int32(ldc),
                                 transposedA ? 1 : 0, accumulate ? 1 : 0)
        }
        return Kernel(jit: jit, m: m, n: n, k: k, lda: lda, ldb: ldb, ldc: ldc,
                      transposedA: transposedA, accumulate: accumulate)
    }

    @inline(__always)
    func run(_ kernel: Kernel, _ a: UnsafePointer<Float>, _ b: UnsafePointer<Float>, _ c: UnsafeMutablePointer<Float>) {
        if let jit = kernel.jit {
            cxsmm_run(jit, a, b, c)
            return
        }
        if !kernel.accumulate {
            for i in 0..<kernel.m { (c + i * kernel.ldc).update(repeating: 0, count: kernel.n) }
        }
        if kernel.transposedA {
            gemmTN(kernel.m, kernel.n, kernel.k, a, kernel.lda, b, kernel.ldb, c, kernel.ldc)
        } else {
            gemmNN(kernel.m, kernel.n, kernel.k, a, kernel.lda, b, kernel.ldb, c, kernel.ldc)
        }
    }
}
