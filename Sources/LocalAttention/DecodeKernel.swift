#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// LAO for decode: a few query rows (the T new tokens × the query heads of
/// one key/value head's group) against a run of KV-cache blocks.
///
/// A block holds `blockTokens` token slots of one key/value head: keys
/// transposed, `[headDim × blockTokens]`, and values `[blockTokens × headDim]`,
/// in the cache's storage type. Keys are kept transposed so the score product
/// S = Q·Kᵀ reads them as they lie — decode reads every stored byte once per
/// step, so a transpose per call (as the training kernels' panels do) would
/// double the traffic that bounds it.
///
/// Per block: S[m × n] = Q[m × d] · Kᵀ[d × n] (a JIT product, vectorised along
/// the keys), the online-softmax row pass of the training kernels (same
/// `softmaxTile`, same exponential, same two phases), and acc[m × d] += P·V
/// (vectorised along d). Half storage is widened into per-worker scratch
/// first. The summation order depends only on the block sizes, so a given
/// code path gives the same bits run after run.
public final class DecodeKernel {
    public let headDim: Int
    public let blockTokens: Int
    public let scale: Float
    public let storage: StorageType
    private let products: TileProducts
    private let softmaxTile: LocalAttention.SoftmaxTile

    public init(headDim: Int, blockTokens: Int, scale: Float, storage: StorageType) {
        precondition(headDim > 0 && blockTokens > 0)
        self.headDim = headDim
        self.blockTokens = blockTokens
        self.scale = scale
        self.storage = storage
        products = TileProducts()
        softmaxTile = LocalAttention.rowKernels(level: TileProducts.vectorLevel).0
    }

    /// Floats of scratch one worker needs for `rows` query rows: the score
    /// tile, and for half storage the widened keys and values of one block.
    public func scratchFloats(rows: Int) -> Int {
        rows * blockTokens + (storage == .f32 ? 0 : 2 * headDim * blockTokens) + 32
    }

    /// The two products of a block of `count` keys for `rows` query rows.
    public struct Products {
        let scores: TileProducts.Kernel
        let values: TileProducts.Kernel
    }

    /// Kernels for `rows` query rows and `count` keys (dispatch once per call
    /// for full blocks; a partly filled block gets its own).
    public func products(rows m: Int, count n: Int) -> Products {
        let d = headDim, b = blockTokens
        return Products(
            scores: products.kernel(m: m, n: n, k: d, lda: d, ldb: b, ldc: b, transposedA: false, accumulate: false),
            values: products.kernel(m: m, n: d, k: n, lda: b, ldb: d, ldc: d, transposedA: false, accumulate: true))
    }

    /// Folds one block into the running state (rowMax, rowSum, acc) of `rows`
    /// query rows (`q`: `[rows × headDim]` fp32, unscaled). Query row i sees the
    /// block's columns `lo[i] ..< hi[i]` (of `count` filled slots).
    /// `keysT`, `values`: the block's slices of one key/value head, storage type.
    public func fold(_ kernels: Products, q: UnsafePointer<Float>, rows: Int,
                     keysT: UnsafeRawPointer, values: UnsafeRawPointer, count: Int,
                     lo: UnsafePointer<Int>, hi: UnsafePointer<Int>,
                     rowMax: UnsafeMutablePointer<Float>, rowSum: UnsafeMutablePointer<Float>,
                     acc: UnsafeMutablePointer<Float>, scratch: UnsafeMutablePointer<Float>) {
        let d = headDim, b = blockTokens
        let s = scratch
        var k = keysT.assumingMemoryBound(to: Float.self)
        var v = values.assumingMemoryBound(to: Float.self)
        if storage != .f32 {
            // Only the filled slots: keys row by row (each row is b slots wide).
            let wideK = scratch + rows * b, wideV = wideK + d * b
            let halfK = keysT.assumingMemoryBound(to: UInt16.self)
            if count == b {
                StorageConversion.widen(storage, halfK, into: wideK, count: d * b)
            } else {
                for c in 0..<d { StorageConversion.widen(storage, halfK + c * b, into: wideK + c * b, count: count) }
            }
            StorageConversion.widen(storage, values.assumingMemoryBound(to: UInt16.self), into: wideV, count: count * d)
            k = UnsafePointer(wideK)
            v = UnsafePointer(wideV)
        }
        products.run(kernels.scores, q, k, s)
        softmaxTile(s, b, count, rows, lo, hi, scale, rowMax, rowSum, acc, d)
        products.run(kernels.values, s, v, acc)
    }

    /// Merges the running state `b` into `a` (rows × (max, sum, acc)), the
    /// online-softmax combination: m = max(mₐ, m_b), l = lₐ·e^(mₐ−m) + l_b·e^(m_b−m),
    /// acc likewise. A state that has seen no key (m = −inf) contributes nothing.
    public static func mergeState(rows: Int, headDim d: Int,
                                  maxA: UnsafeMutablePointer<Float>, sumA: UnsafeMutablePointer<Float>,
                                  accA: UnsafeMutablePointer<Float>,
                                  maxB: UnsafePointer<Float>, sumB: UnsafePointer<Float>, accB: UnsafePointer<Float>) {
        for r in 0..<rows {
            let mb = maxB[r]
            if mb == -.infinity { continue }
            let ma = maxA[r]
            let a = accA + r * d, bb = accB + r * d
            if ma == -.infinity {
                maxA[r] = mb; sumA[r] = sumB[r]
                for c in 0..<d { a[c] = bb[c] }
                continue
            }
            let m = (mb > ma || mb != mb) ? mb : ma
            let wa = expf(ma - m), wb = expf(mb - m)
            maxA[r] = m
            sumA[r] = sumA[r] * wa + sumB[r] * wb
            for c in 0..<d { a[c] = a[c] * wa + bb[c] * wb }
        }
    }
}
