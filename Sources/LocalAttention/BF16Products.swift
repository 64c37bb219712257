import CXSMM
import RowKernelsAVX512
#if canImport(Glibc)
import Glibc
#endif

/// The `.bf16` products of LocalAttention: q, k, v, dO, P and dS rounded to
/// bf16 (nearest even), every product accumulated in fp32, the online
/// softmax, lse, D and the accumulators in fp32 (FlashAttention's GPU recipe).
///
/// Two ways to run them, the same rounding, different summation order:
/// - hardware: libxsmm's bf16 kernels (AVX512-BF16 dot products of pairs)
///   on bf16 operands laid out for them: q and dO plain and transposed per
///   call, k and v as VNNI panels per key block, P and dS narrowed from the
///   fp32 row pass into the operand each product wants (BF16Operands);
/// - emulation: the exact fp32 kernels on operands rounded to bf16 values
///   (held as fp32), for CPUs without bf16 instructions, for
///   `BURST_BF16=emulated`, and as the reference the tests hold the
///   hardware path to.
/// The hardware path needs an even head dim and key tiles of a multiple of
/// 32 (BF16Operands.group); other shapes run the emulation.
final class BF16Workspace {
    /// How the products run.
    let hardware: Bool
    /// hardware: per key/value head and key tile, k and v as VNNI panels
    /// over d ([d/2][tileK][2], for S = Q·Kᵀ and dP = dO·Vᵀ) and k or v as
    /// VNNI pairs over the keys (permuted; for acc += P·V and dQ += dS·K).
    /// emulation: `rows` holds the rounded plain k or v.
    let keyPanels: FloatBuffer?, valuePanels: FloatBuffer?, rows: FloatBuffer
    /// Per call, grown on demand: the rounded (emulation) or bf16
    /// (hardware) copies of q and dO, and in the hardware backward their
    /// transposes [heads][d][rows rounded up to even].
    var queries: FloatBuffer?

    init?(hardware: Bool, panelElements: Int, rowElements: Int) {
        self.hardware = hardware
        if hardware {
            // bf16 elements, two per float
            guard let k = FloatBuffer(count: (panelElements + 1) / 2), let v = FloatBuffer(count: (panelElements + 1) / 2),
                  let r = FloatBuffer(count: (panelElements + 1) / 2) else { return nil }
            keyPanels = k; valuePanels = v; rows = r
        } else {
            guard let r = FloatBuffer(count: rowElements) else { return nil }
            keyPanels = nil; valuePanels = nil; rows = r
        }
    }

    /// `floats` floats of query operands, or nil if they cannot be allocated
    /// (the call then runs exact products: slower, never less accurate).
    func queryOperands(floats: Int) -> UnsafeMutablePointer<Float>? {
        if (queries?.count ?? 0) < floats {
            queries = nil
            queries = FloatBuffer(count: floats)
        }
        return queries?.pointer
    }

    var bytes: Int { ((keyPanels?.count ?? 0) + (valuePanels?.count ?? 0) + rows.count + (queries?.count ?? 0)) * 4 }
}

extension TileProducts {
    /// Whether bf16 products can run on this CPU's instructions: libxsmm
    /// generates AVX512-BF16 code ("cpx" or newer), JIT is allowed, and
    /// `BURST_BF16=emulated` is not set.
    static let bf16Hardware: Bool = {
        guard jitAllowed, vectorLevel == 2, cxsmm_has_bf16() != 0 else { return false }
        if let value = getenv("BURST_BF16"), String(cString: value) == "emulated" { return false }
        return true
    }()

    /// A bf16 kernel: row-major C[m×n] fp32 (ldc) (+)= A[m×k] bf16 (lda) ·
    /// B bf16 VNNI pairs [k/2][ldb][2] (k even): libxsmm's JIT kernel, or,
    /// should libxsmm have none for a shape, a portable loop with the same
    /// operands (slow, never wrong: nothing here may trap).
    func bf16Kernel(m: Int, n: Int, k: Int, lda: Int, ldb: Int, ldc: Int, accumulate: Bool) -> BF16Kernel {
        let jit = cxsmm_bdispatch(Int32(m), Int32(n), Int32(k), Int32(lda), Int32(ldb), Int32(ldc), accumulate ? 1 : 0)
        return BF16Kernel(jit: jit, m: m, n: n, k: k, lda: lda, ldb: ldb, ldc: ldc, accumulate: accumulate)
    }
}

struct BF16Kernel {
    let jit: UnsafeMutableRawPointer?
    let m, n, k, lda, ldb, ldc: Int
    let accumulate: Bool
}

/// Runs a bf16 kernel on a plain bf16 A, a VNNI bf16 B and an fp32 C.
@inline(__always)
func cxsmm_brun(_ kernel: BF16Kernel, _ a: UnsafePointer<UInt16>, _ b: UnsafePointer<UInt16>, _ c: UnsafeMutablePointer<Float>) {
    if let jit = kernel.jit { cxsmm_brun(jit, a, b, c); return }
    @inline(__always) func widen(_ h: UInt16) -> Float { Float(bitPattern: UInt32(h) << 16) }
    for i in 0..<kernel.m {
        let row = c + i * kernel.ldc
        if !kernel.accumulate { row.update(repeating: 0, count: kernel.n) }
        for p in 0..<kernel.k {
            let x = widen(a[i * kernel.lda + p])
            let pairs = b + (p / 2) * kernel.ldb * 2 + p % 2
            for j in 0..<kernel.n { row[j] += x * widen(pairs[j * 2]) }
        }
    }
}

@inline(__always)
func halves(_ p: UnsafeMutablePointer<Float>) -> UnsafeMutablePointer<UInt16> {
    UnsafeMutableRawPointer(p).assumingMemoryBound(to: UInt16.self)
}

extension LocalAttention {
    /// Rounds `count` contiguous floats to bf16 values in place (the
    /// emulation's operands), in parallel over the pool.
    func roundOperand(_ x: UnsafeMutablePointer<Float>, count: Int) {
        let block = 16_384
        pool.parallelFor((count + block - 1) / block) { task, _ in
            let start = task * block
            self.roundTile(x + start, block, min(block, count - start), 1)
        }
    }

    /// The row stride of the transposed q and dO: the rows rounded up to
    /// even plus two zero columns, so a row pair a product reads past a
    /// block's last row (an odd count) always finds a zero there.
    static func transposedStride(_ rows: Int) -> Int { (rows + 2) & ~1 }

    /// For the hardware path: q (or dO) of `heads` heads × `rows` rows as
    /// plain bf16 rows into `plain`, and, when `transposed` is given, as
    /// [heads][d][transposedStride(rows)] (the pad columns 0).
    func narrowQueries(_ x: UnsafePointer<Float>, heads: Int, rows: Int,
                       plain: UnsafeMutablePointer<UInt16>, transposed: UnsafeMutablePointer<UInt16>?) {
        let d = headDim, ld = Self.transposedStride(rows)
        pool.parallelFor(heads) { z, _ in
            let source = x + z * rows * d
            StorageConversion.narrow(.bf16, source, into: plain + z * rows * d, count: rows * d)
            guard let transposed else { return }
            let t = transposed + z * d * ld
            transpose(rows, d, UnsafePointer(plain + z * rows * d), d, t, ld)
            for c in 0..<d { (t + c * ld + rows).update(repeating: 0, count: ld - rows) }
        }
    }

    /// For the hardware path: k (or v) of `heads` heads × `rows` rows into
    /// VNNI panels over d — head z, key tile t at z·panelStride + t·d·tileK
    /// bf16, element (c, j) at ((c/2)·tileK + j)·2 + c%2, keys past the
    /// block zero — and/or into VNNI pairs over the keys, permuted
    /// (BF16Operands.interleavePermuted), at the same offsets.
    func makeBF16Panels(_ x: UnsafePointer<Float>, heads: Int, rows: Int,
                        overD: UnsafeMutablePointer<UInt16>?, overKeys: UnsafeMutableRawPointer?) {
        let d = headDim, tk = tileK
        let tiles = (rows + tk - 1) / tk
        let stride = panelStride
        pool.parallelFor(heads * tiles) { task, worker in
            let z = task / tiles, t = task % tiles
            let j0 = t * tk, cols = min(tk, rows - j0)
            let source = x + (z * rows + j0) * d
            if let overD {
                // The tile's rows narrowed (in the worker's scratch, free
                // while panels are made), then its pairs of columns, 32-bit
                // words, transposed: word (c/2, j) = (x[j][c], x[j][c + 1]).
                let panel = overD + z * stride + t * d * tk
                if cols < tk { panel.update(repeating: 0, count: d * tk) }
                let narrowed = halves(self.scratch.pointer + worker * self.scratchPerWorker)
                StorageConversion.narrow(.bf16, source, into: narrowed, count: cols * d)
                UnsafeRawPointer(narrowed).withMemoryRebound(to: UInt32.self, capacity: cols * d / 2) { words in
                    UnsafeMutableRawPointer(panel).withMemoryRebound(to: UInt32.self, capacity: d * tk / 2) { target in
                        transpose(cols, d / 2, words, d / 2, target, tk)
                    }
                }
            }
            if let overKeys {
                RowKernelsAVX512.BF16Operands.interleavePermuted(source, ld: d, rows: cols, tile: tk, headDim: d,
                                                                 into: overKeys + (z * stride + t * d * tk) * 2)
            }
        }
    }

    // MARK: Hardware tiles

    /// forwardTile on bf16 operands: S = Q·Kᵀ (bf16 kernel), the fp32
    /// online softmax, P narrowed (permuted pairs), acc += P·V (bf16 kernel).
    func forwardTileBF16(q: UnsafePointer<UInt16>, rows: Int,
                         queryLo: UnsafePointer<Int>, queryHi: UnsafePointer<Int>,
                         keyPanels: UnsafePointer<UInt16>, valuePairs: UnsafePointer<UInt16>, nk: Int,
                         keyPositions: UnsafePointer<Int>,
                         acc: UnsafeMutablePointer<Float>,
                         rowMax: UnsafeMutablePointer<Float>, rowSum: UnsafeMutablePointer<Float>,
                         work: UnsafeMutablePointer<Float>, lo: UnsafeMutablePointer<Int>, worker: Int) -> TileCounts {
        let d = headDim, tk = tileK
        let hi = lo + tileQ
        let s = work
        let p = halves(work + tileQ * tk)
        let score = tileProducts.bf16Kernel(m: rows, n: tk, k: d, lda: d, ldb: tk, ldc: tk, accumulate: false)
        let value = tileProducts.bf16Kernel(m: rows, n: d, k: tk, lda: tk, ldb: d, ldc: d, accumulate: true)
        return forEachVisibleKeyTile(rows: rows, queryLo: queryLo, queryHi: queryHi, nk: nk, keyPositions: keyPositions,
                                     lo: lo, worker: worker) { j0, _, top, live in
            let scoreRows = live == rows ? score
                : tileProducts.bf16Kernel(m: live, n: tk, k: d, lda: d, ldb: tk, ldc: tk, accumulate: false)
            let valueRows = live == rows ? value
                : tileProducts.bf16Kernel(m: live, n: d, k: tk, lda: tk, ldb: d, ldc: d, accumulate: true)
            cxsmm_brun(scoreRows, q + top * d, keyPanels + (j0 / tk) * d * tk, s)
            softmaxStep(s, ld: tk, width: tk, rows: live, lo: lo + top, hi: hi + top,
                        rowMax: rowMax + top, rowSum: rowSum + top, acc: acc + top * d)
            RowKernelsAVX512.BF16Operands.narrowPermuted(s, ld: tk, rows: live, width: tk, into: UnsafeMutableRawPointer(p))
            cxsmm_brun(valueRows, p, valuePairs + (j0 / tk) * d * tk, acc + top * d)
        }
    }

    /// backwardHead on bf16 operands. Per tile: S = Q·Kᵀ and dP = dO·Vᵀ
    /// (bf16 kernels), the fp32 gradient pass (P, scale·dS), then P and dS
    /// narrowed into VNNI row pairs and dS into permuted plain rows;
    /// dVᵀ += dOᵀ·P and dKᵀ += Qᵀ·dS accumulate over the query tiles in the
    /// worker's fp32 [d × tileK] tiles, added (transposed) into dv, dk once
    /// per key tile; dQ += dS·K.
    func backwardHeadBF16(q: UnsafePointer<UInt16>, dOut: UnsafePointer<UInt16>,
                          qT: UnsafePointer<UInt16>, dOutT: UnsafePointer<UInt16>,
                          delta: UnsafePointer<Float>, lse: UnsafePointer<Float>,
                          dq: UnsafeMutablePointer<Float>, nq: Int,
                          queryLo: UnsafePointer<Int>, queryHi: UnsafePointer<Int>,
                          keyPanels: UnsafePointer<UInt16>, valuePanels: UnsafePointer<UInt16>, keyPairs: UnsafePointer<UInt16>,
                          dk: UnsafeMutablePointer<Float>, dv: UnsafeMutablePointer<Float>,
                          nk: Int, keyPositions: UnsafePointer<Int>, chunk: Int, chunks: Int,
                          work: UnsafeMutablePointer<Float>, lo: UnsafeMutablePointer<Int>, worker: Int) -> TileCounts {
        let d = headDim, tq = tileQ, tk = tileK
        let ldT = Self.transposedStride(nq)
        let (p, ds, pPairs, dsPairs, dsPlain, dvT, dkT) = bf16Scratch(work)
        // Kernels of full tiles (only when the block has one: gradT's A is
        // the transposed block, lda = ldT ≥ k = tq).
        let fullTiles = nq >= tq
        let gradQ = fullTiles ? tileProducts.bf16Kernel(m: tq, n: d, k: tk, lda: tk, ldb: d, ldc: d, accumulate: true) : nil
        let gradT = fullTiles ? tileProducts.bf16Kernel(m: d, n: tk, k: tq, lda: ldT, ldb: tk, ldc: tk, accumulate: true) : nil
        let score = fullTiles ? tileProducts.bf16Kernel(m: tq, n: tk, k: d, lda: d, ldb: tk, ldc: tk, accumulate: false) : nil
        return forEachVisibleTilePair(nq: nq, queryLo: queryLo, queryHi: queryHi, nk: nk, keyPositions: keyPositions,
                                      chunk: chunk, chunks: chunks, lo: lo, worker: worker,
                                      keyTileStart: { _ in
                                          dvT.update(repeating: 0, count: d * tk)
                                          dkT.update(repeating: 0, count: d * tk)
                                      },
                                      keyTileDone: { j0, cols in
                                          // dv[j0 + j][c] += dVᵀ[c][j], dk likewise.
                                          transposeAdd(d, cols, dvT, tk, dv + j0 * d, d)
                                          transposeAdd(d, cols, dkT, tk, dk + j0 * d, d)
                                      }) { j0, _, i0, rows, lo, hi in
            let offset = (j0 / tk) * d * tk
            let full = rows == tq
            let even = (rows + 1) & ~1
            let scoreKernel = full ? score!
                : tileProducts.bf16Kernel(m: rows, n: tk, k: d, lda: d, ldb: tk, ldc: tk, accumulate: false)
            cxsmm_brun(scoreKernel, q + i0 * d, keyPanels + offset, p)
            cxsmm_brun(scoreKernel, dOut + i0 * d, valuePanels + offset, ds)
            gradientStep(p, ds, ld: tk, width: tk, rows: rows, lo: lo, hi: hi, lse: lse + i0, delta: delta + i0)
            RowKernelsAVX512.BF16Operands.interleaveRowPairs(p, ld: tk, rows: rows, width: tk, into: UnsafeMutableRawPointer(pPairs))
            RowKernelsAVX512.BF16Operands.interleaveRowPairs(ds, ld: tk, rows: rows, width: tk, into: UnsafeMutableRawPointer(dsPairs))
            RowKernelsAVX512.BF16Operands.narrowPermuted(ds, ld: tk, rows: rows, width: tk, into: UnsafeMutableRawPointer(dsPlain))
            let transposedKernel = full ? gradT!
                : tileProducts.bf16Kernel(m: d, n: tk, k: even, lda: ldT, ldb: tk, ldc: tk, accumulate: true)
            cxsmm_brun(transposedKernel, dOutT + i0, pPairs, dvT)
            cxsmm_brun(transposedKernel, qT + i0, dsPairs, dkT)
            let gradQKernel = full ? gradQ!
                : tileProducts.bf16Kernel(m: rows, n: d, k: tk, lda: tk, ldb: d, ldc: d, accumulate: true)
            cxsmm_brun(gradQKernel, dsPlain, keyPairs + offset, dq + i0 * d)
        }
    }

    /// The hardware backward's per-worker scratch, carved from `work`.
    func bf16Scratch(_ work: UnsafeMutablePointer<Float>)
        -> (UnsafeMutablePointer<Float>, UnsafeMutablePointer<Float>, UnsafeMutablePointer<UInt16>, UnsafeMutablePointer<UInt16>,
            UnsafeMutablePointer<UInt16>, UnsafeMutablePointer<Float>, UnsafeMutablePointer<Float>) {
        let tq = tileQ, tk = tileK, d = headDim
        let tile = (tq * tk + 15) / 16 * 16           // floats of an fp32 tile
        let pairs = ((tq + 1) / 2 * tk + 15) / 16 * 16   // floats of a row-pair operand
        let p = work, ds = work + tile
        let pPairs = work + 2 * tile, dsPairs = pPairs + pairs, dsPlain = dsPairs + pairs
        let dvT = dsPlain + tile / 2 + 16, dkT = dvT + d * tk
        return (p, ds, halves(pPairs), halves(dsPairs), halves(dsPlain), dvT, dkT)
    }

    /// Floats of per-worker scratch the hardware path needs (≥ the exact path's).
    static func bf16ScratchFloats(tileQ tq: Int, tileK tk: Int, headDim d: Int) -> Int {
        let tile = (tq * tk + 15) / 16 * 16
        let pairs = ((tq + 1) / 2 * tk + 15) / 16 * 16
        return 2 * tile + 2 * pairs + tile / 2 + 16 + 2 * d * tk
    }
}

extension LocalAttention {
    /// The operands of a forward call, made ready for its products.
    enum ForwardOperands {
        /// fp32 products; keyPanels holds k's panels. `rounded`: q, v and
        /// the panels are bf16 values (the emulation), so P is rounded too.
        case fp32(q: UnsafePointer<Float>, v: UnsafePointer<Float>, rounded: Bool)
        /// bf16 products (hardware): q plain, k panels over d, v pairs over keys.
        case bf16(q: UnsafePointer<UInt16>, keyPanels: UnsafePointer<UInt16>, valuePairs: UnsafePointer<UInt16>)
    }

    func forwardOperands(q: UnsafePointer<Float>, heads: Int, rows: Int,
                         k: UnsafePointer<Float>, v: UnsafePointer<Float>, kvHeads: Int, keyRows: Int) -> ForwardOperands {
        let d = headDim
        backwardPanels = .none
        if let bf16 {
            let queryElements = heads * rows * d, keyElements = kvHeads * keyRows * d
            if bf16.hardware, let qb = bf16.queryOperands(floats: (queryElements + 1) / 2) {
                narrowQueries(q, heads: heads, rows: rows, plain: halves(qb), transposed: nil)
                makeBF16Panels(k, heads: kvHeads, rows: keyRows, overD: halves(bf16.keyPanels!.pointer), overKeys: nil)
                makeBF16Panels(v, heads: kvHeads, rows: keyRows, overD: nil, overKeys: UnsafeMutableRawPointer(bf16.rows.pointer))
                return .bf16(q: halves(qb), keyPanels: halves(bf16.keyPanels!.pointer), valuePairs: halves(bf16.rows.pointer))
            }
            if !bf16.hardware, let qr = bf16.queryOperands(floats: queryElements) {
                qr.update(from: q, count: queryElements)
                roundOperand(qr, count: queryElements)
                makePanels(k, heads: kvHeads, rows: keyRows, into: keyPanels.pointer)
                roundOperand(keyPanels.pointer, count: kvHeads * panelStride)
                bf16.rows.pointer.update(from: v, count: keyElements)
                roundOperand(bf16.rows.pointer, count: keyElements)
                return .fp32(q: qr, v: bf16.rows.pointer, rounded: true)
            }
        }
        makePanels(k, heads: kvHeads, rows: keyRows, into: keyPanels.pointer)
        return .fp32(q: q, v: v, rounded: false)
    }

    /// The operands of a backward call.
    enum BackwardOperands {
        /// fp32 products; keyPanels, valuePanels hold k's and v's panels.
        /// `rounded`: all of them are bf16 values (the emulation).
        case fp32(q: UnsafePointer<Float>, dOut: UnsafePointer<Float>, k: UnsafePointer<Float>, rounded: Bool)
        /// bf16 products (hardware).
        case bf16(q: UnsafePointer<UInt16>, dOut: UnsafePointer<UInt16>, qT: UnsafePointer<UInt16>, dOutT: UnsafePointer<UInt16>,
                  keyPanels: UnsafePointer<UInt16>, valuePanels: UnsafePointer<UInt16>, keyPairs: UnsafePointer<UInt16>)
    }

    func backwardOperands(keyPanelsReady: Bool, q: UnsafePointer<Float>, dOut: UnsafePointer<Float>, heads: Int, rows: Int,
                          k: UnsafePointer<Float>, v: UnsafePointer<Float>, kvHeads: Int, keyRows: Int) -> BackwardOperands {
        let d = headDim
        func panels(_ kind: BackwardPanels, _ make: () -> Void) {
            if !(keyPanelsReady && backwardPanels == kind) { make() }
            backwardPanels = kind
        }
        if let bf16 {
            let queryElements = heads * rows * d, keyElements = kvHeads * keyRows * d
            let transposedElements = heads * d * Self.transposedStride(rows)
            if bf16.hardware, let buffer = bf16.queryOperands(floats: queryElements + transposedElements) {
                let qb = halves(buffer), dob = qb + queryElements
                let qT = dob + queryElements, doT = qT + transposedElements
                narrowQueries(q, heads: heads, rows: rows, plain: qb, transposed: qT)
                narrowQueries(dOut, heads: heads, rows: rows, plain: dob, transposed: doT)
                let kp = halves(bf16.keyPanels!.pointer), vp = halves(bf16.valuePanels!.pointer), kr = halves(bf16.rows.pointer)
                panels(.hardware) {
                    makeBF16Panels(k, heads: kvHeads, rows: keyRows, overD: kp, overKeys: UnsafeMutableRawPointer(kr))
                    makeBF16Panels(v, heads: kvHeads, rows: keyRows, overD: vp, overKeys: nil)
                }
                return .bf16(q: qb, dOut: dob, qT: qT, dOutT: doT, keyPanels: kp, valuePanels: vp, keyPairs: kr)
            }
            if !bf16.hardware, let qr = bf16.queryOperands(floats: 2 * queryElements) {
                let dor = qr + queryElements
                qr.update(from: q, count: queryElements)
                dor.update(from: dOut, count: queryElements)
                roundOperand(qr, count: 2 * queryElements)
                panels(.emulated) {
                    makePanels(k, heads: kvHeads, rows: keyRows, into: keyPanels.pointer)
                    makePanels(v, heads: kvHeads, rows: keyRows, into: valuePanels.pointer)
                    roundOperand(keyPanels.pointer, count: kvHeads * panelStride)
                    roundOperand(valuePanels.pointer, count: kvHeads * panelStride)
                    bf16.rows.pointer.update(from: k, count: keyElements)
                    roundOperand(bf16.rows.pointer, count: keyElements)
                }
                return .fp32(q: qr, dOut: dor, k: bf16.rows.pointer, rounded: true)
            }
        }
        panels(.exact) {
            makePanels(k, heads: kvHeads, rows: keyRows, into: keyPanels.pointer)
            makePanels(v, heads: kvHeads, rows: keyRows, into: valuePanels.pointer)
        }
        return .fp32(q: q, dOut: dOut, k: k, rounded: false)
    }
}
