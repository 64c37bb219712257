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

extension LocalAttention {
    /// GFLOP/s of the tile product the kernels run, C[128×128] = A[128×d]·B[d×128]:
    /// the libxsmm JIT kernel, or the portable loops when JIT is off — the
    /// roofline burst-bench prints beside attention. With `threads` > 1,
    /// that many threads each run their own tile products at once and the
    /// rate is their sum: what the machine's cores give together (shared
    /// caches, clocks and, in a VM, the host), the ceiling of thread scaling.
    public static func tileProductRate(headDim d: Int, threads: Int = 1, seconds: Double = 0.5) -> Double {
        let pool = WorkerPool(threadCount: max(threads, 1))
        let rates = UnsafeMutablePointer<Double>.allocate(capacity: pool.threadCount)
        defer { rates.deallocate() }
        rates.initialize(repeating: 0, count: pool.threadCount)
        pool.parallelFor(pool.threadCount) { task, _ in rates[task] = singleTileProductRate(headDim: d, seconds: seconds) }
        return (0..<pool.threadCount).reduce(0) { $0 + rates[$1] }
    }

    private static func singleTileProductRate(headDim d: Int, seconds: Double) -> Double {
        let products = TileProducts()
        let kernel = products.kernel(m: 128, n: 128, k: d, lda: d, ldb: 128, ldc: 128,
                                     transposedA: false, accumulate: false)
        guard let a = FloatBuffer(count: 128 * d), let b = FloatBuffer(count: d * 128),
              let c = FloatBuffer(count: 128 * 128) else { return 0 }
        for i in 0..<(128 * d) { a.pointer[i] = Float(i % 7) * 1e-2; b.pointer[i] = Float(i % 5) * 1e-2 }
        var calls = 0
        var ts = timespec()
        clock_gettime(CLOCK_MONOTONIC, &ts)
        let start = Double(ts.tv_sec) + Double(ts.tv_nsec) * 1e-9
        var elapsed = 0.0
        while elapsed < seconds {
            for _ in 0..<64 { products.run(kernel, a.pointer, b.pointer, c.pointer) }
            calls += 64
            clock_gettime(CLOCK_MONOTONIC, &ts)
            elapsed = Double(ts.tv_sec) + Double(ts.tv_nsec) * 1e-9 - start
        }
        return 2 * 128 * 128 * Double(d) * Double(calls) / elapsed / 1e9
    }
}
