import CPrefetch
import RowKernelsAVX2
import RowKernelsAVX512
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
/// `subTile` keys at a time, a tile of ≤ 16 KB that stays in L1: a widening
/// whose output spills to L2 ran at half the memory's read rate (measured:
/// 13 vs 28 GB/s of bf16 read). The summation order depends only on the
/// block sizes, so a given code path gives the same bits run after run.
public final class DecodeKernel {
    public let headDim: Int
    public let blockTokens: Int
    public let scale: Float
    public let storage: StorageType
    /// Keys per tile of a half block's transposed keys (`layout`).
    public let subTile: Int
    private let products: TileProducts
    private let softmax: LocalAttention.SoftmaxStep
    /// Logit soft-capping (0 = off), as `LocalAttention.softcap`.
    public let softcap: Float

    public init(headDim: Int, blockTokens: Int, scale: Float, storage: StorageType, softcap: Float = 0) {
        precondition(headDim > 0 && blockTokens > 0 && softcap >= 0 && softcap.isFinite)
        self.headDim = headDim
        self.blockTokens = blockTokens
        self.scale = scale
        self.softcap = softcap
        self.storage = storage
        let layout = Self.layout(headDim: headDim, blockTokens: blockTokens, storage: storage)
        subTile = layout.keyTile
        paired = layout.paired
        scoreStride = (blockTokens + subTile - 1) / subTile * subTile
        products = TileProducts()
        let level = TileProducts.vectorLevel
        softmax = LocalAttention.SoftmaxStep(level: level, scale: scale, softcap: softcap, headDim: headDim)
        switch level {
        case 2: (pairedScores, pairedValues) = (RowKernelsAVX512.DecodeRows.scoresBF16, RowKernelsAVX512.DecodeRows.valuesBF16)
        case 1: (pairedScores, pairedValues) = (RowKernelsAVX2.DecodeRows.scoresBF16, RowKernelsAVX2.DecodeRows.valuesBF16)
        default: (pairedScores, pairedValues) = (DecodeRows.scoresBF16, DecodeRows.valuesBF16)
        }
    }

    /// Elements per pair group of the bf16 kernels on this CPU's code path
    /// (2 × the vector lanes; DecodeRows.swift).
    public static var pairGroup: Int { [16, 16, 32][min(max(TileProducts.vectorLevel, 0), 2)] }

    /// How a block stores its keys: `keyTile` keys per tile of the transposed
    /// keys — the whole block for fp32 (the products read it in place); for
    /// half storage ≤ 16 KB of fp32 (a multiple of 32 keys) — and whether bf16
    /// keys and values are kept in pair groups for the fused kernels
    /// (DecodeRows.swift: head_dim and the tile a multiple of `pairGroup`).
    /// A half block stores its keys tile after tile (`[tiles][headDim][keyTile]`),
    /// so a tile is one contiguous read: rows of a `[headDim × blockTokens]`
    /// layout read a cache line each at a stride, as many streams as rows,
    /// which the prefetchers do not follow (measured: bf16 at 7 GB/s against
    /// 18 for fp32 read in place).
    public static func layout(headDim: Int, blockTokens: Int, storage: StorageType) -> (keyTile: Int, paired: Bool) {
        if storage == .f32 { return (blockTokens, false) }
        let tile = min(blockTokens, max(32, 4096 / headDim / 32 * 32))
        let group = pairGroup
        return (tile, storage == .bf16 && headDim % group == 0 && tile % group == 0)
    }

    /// Where element `index` of a row of a pair-grouped bf16 layout is
    /// stored: word w of a group of `group` elements holds elements w (low
    /// half) and w + group/2 (high half).
    @inline(__always)
    public static func pairPosition(_ index: Int, group: Int) -> Int {
        let half = group / 2, within = index % group
        return (index - within) + 2 * (within % half) + within / half
    }

    /// How many key tiles ahead the fused scores ask for memory.
    static let keyLookahead = 2

    /// bf16 rows kept in pair groups, for the fused kernels (`layout`).
    public let paired: Bool
    /// Columns of the score scratch per row: the block rounded up to whole tiles.
    public let scoreStride: Int
    private let pairedScores: (UnsafePointer<Float>, Int, Int, UnsafeRawPointer, Int, UnsafeMutablePointer<Float>, Int, Int, UnsafeRawPointer, Int) -> Void
    private let pairedValues: (UnsafePointer<Float>, Int, Int, Int, UnsafeRawPointer, Int, UnsafeMutablePointer<Float>) -> Void

    /// Floats of scratch one worker needs for `rows` query rows: the score
    /// rows, and for widened half storage one tile of fp32.
    public func scratchFloats(rows: Int) -> Int {
        rows * scoreStride + (storage == .f32 || paired ? 0 : headDim * subTile) + 32
    }

    /// The products of a block of `count` keys for `rows` query rows: the
    /// whole block (fp32 storage, read in place), or one sub-tile of `count`
    /// widened keys (half storage).
    public struct Products {
        let scores: TileProducts.Kernel
        let values: TileProducts.Kernel
    }

    /// Kernels for `rows` query rows and `count` keys: a block (fp32) or a
    /// sub-tile (half). Dispatch once per call for the full size; a partly
    /// filled block gets its own.
    public func products(rows m: Int, count n: Int) -> Products {
        let d = headDim, b = blockTokens
        let ldb = storage == .f32 ? b : subTile   // keys: the block's Kᵀ, or the widened sub-tile
        return Products(
            scores: products.kernel(m: m, n: n, k: d, lda: d, ldb: ldb, ldc: scoreStride, transposedA: false, accumulate: false),
            values: products.kernel(m: m, n: d, k: n, lda: scoreStride, ldb: d, ldc: d, transposedA: false, accumulate: true))
    }

    /// The size `products` must be called with for a call's full blocks.
    public var fullCount: Int { storage == .f32 ? blockTokens : subTile }

    /// Folds one block into the running state (rowMax, rowSum, acc) of `rows`
    /// query rows (`q`: `[rows × headDim]` fp32, unscaled). Query row i sees the
    /// block's columns `lo[i] ..< hi[i]` (of `count` filled slots).
    /// `keysT`, `values`: the block's slices of one key/value head, storage
    /// type; keys `[tiles][headDim][keyTile]` (one tile for fp32).
    /// `full`: `products(rows: rows, count: fullCount)`.
    public func fold(_ full: Products, q: UnsafePointer<Float>, rows: Int,
                     keysT: UnsafeRawPointer, values: UnsafeRawPointer, count: Int,
                     lo: UnsafePointer<Int>, hi: UnsafePointer<Int>,
                     rowMax: UnsafeMutablePointer<Float>, rowSum: UnsafeMutablePointer<Float>,
                     acc: UnsafeMutablePointer<Float>, scratch: UnsafeMutablePointer<Float>) {
        let d = headDim, b = scoreStride
        let s = scratch
        if storage == .f32 {
            let kernels = count == blockTokens ? full : products(rows: rows, count: count)
            products.run(kernels.scores, q, keysT.assumingMemoryBound(to: Float.self), s)
            softmax(s, ld: b, width: count, rows: rows, lo: lo, hi: hi, rowMax: rowMax, rowSum: rowSum, acc: acc)
            products.run(kernels.values, s, values.assumingMemoryBound(to: Float.self), acc)
            return
        }
        if paired {
            // bf16 in pair groups: widened in registers by the fused kernels,
            // which ask for the lines ahead of the ones they read.
            let tile = subTile, tileBytes = d * tile * 2
            var t = 0
            while t * tile < count {
                // The value rows of this tile ride along, a line per key row.
                pairedScores(q, rows, d, keysT + t * tileBytes, tile, s + t * tile, b, Self.keyLookahead * tileBytes,
                             values + t * tileBytes, min(tile, count - t * tile) * d * 2)
                t += 1
            }
            softmax(s, ld: b, width: count, rows: rows, lo: lo, hi: hi, rowMax: rowMax, rowSum: rowSum, acc: acc)
            pairedValues(s, b, rows, count, values, d, acc)
            return
        }
        // Other half storage: scores of every sub-tile, one softmax over the block,
        // then the values sub-tile by sub-tile; one L1-sized scratch tile.
        let tile = scratch + rows * b, sub = subTile, e = storage.bytes
        let halfK = keysT.assumingMemoryBound(to: UInt16.self), halfV = values.assumingMemoryBound(to: UInt16.self)
        // Each step asks for the next tile's bytes (the next key tile, then the
        // first value tiles) while this one's products run.
        burst_prefetch_range(halfK, d * sub * e)
        var j0 = 0
        while j0 < count {
            let cols = min(sub, count - j0)
            let kernels = cols == sub ? full : products(rows: rows, count: cols)
            if j0 + sub < count { burst_prefetch_range(halfK + (j0 + sub) * d, d * sub * e) } else { burst_prefetch_range(halfV, min(count, sub) * d * e) }
            // The whole tile, unfilled slots too (zero): one contiguous read.
            StorageConversion.widen(storage, halfK + j0 * d, into: tile, count: d * sub)
            products.run(kernels.scores, q, tile, s + j0)
            j0 += sub
        }
        softmax(s, ld: b, width: count, rows: rows, lo: lo, hi: hi, rowMax: rowMax, rowSum: rowSum, acc: acc)
        j0 = 0
        while j0 < count {
            let cols = min(sub, count - j0)
            let kernels = cols == sub ? full : products(rows: rows, count: cols)
            if j0 + sub < count { burst_prefetch_range(halfV + (j0 + sub) * d, min(sub, count - j0 - sub) * d * e) }
            StorageConversion.widen(storage, halfV + j0 * d, into: tile, count: cols * d)
            products.run(kernels.values, s + j0, tile, acc)
            j0 += sub
        }
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
