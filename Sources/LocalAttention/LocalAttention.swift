#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif
import RowKernelsAVX2
import RowKernelsAVX512

/// LAO — local attention of one rank's queries against one block of keys and
/// values, FlashAttention-style: tiles of `tileQ` queries × `tileK` keys, online
/// softmax in fp32, nothing of size n×n ever materialised.
///
/// Tensors are "canonical": `[heads, rows, headDim]` fp32, rows contiguous,
/// heads packed tightly (head stride = rows · headDim). Row vectors of one head
/// (`[heads, rows]`) hold the softmax statistics. Grouped-query attention:
/// the queries have `group` times as many heads as the keys and values, and
/// query head z reads key/value head z / group (with batch folded into the
/// head axis this is b·H_kv + h / group, the ABI's rule).
///
/// Masks arrive already resolved (see `VisibilityRule`): every query row
/// brings the interval of key positions it sees (`queryLo[i] ... queryHi[i]`,
/// non-decreasing in i) and every key row its global position (increasing).
/// So any distribution of tokens over ranks (contiguous, zigzag, striped),
/// any window and any packing of sequences go through the same kernels; a
/// tile no query of which sees any key is not computed.
///
/// Each call first transposes the key block (and in the backward the value
/// block) into "panels" — per head and key tile a `[headDim × tileK]` matrix,
/// zero-padded — so every score tile is a plain product Q·Kᵀ = Q·panel that a
/// JIT kernel runs (TileProducts). Memory: the panels (2 · kvHeads · keys ·
/// headDim floats at most), and per worker thread 2·tileQ·tileK floats of
/// scratch; all allocated once here, nothing in the loops.
public final class LocalAttention {
    public let headDim: Int
    public let scale: Float
    /// Logit soft-capping: 0 = off, else scores become
    /// softcap·tanh(scale·s/softcap) (`SoftmaxStep`), and the
    /// backward applies the derivative (`gradientTileCapped`).
    public let softcap: Float
    public let pool: WorkerPool
    public let tileQ: Int
    public let tileK: Int
    public let maxKVHeads: Int
    public let maxKeyRows: Int
    /// The precision of the tile products (`Products`), as resolved for
    /// this object: `.bf16` runs on the CPU's bf16 instructions when
    /// `bf16Hardware`, else through the emulation.
    public let products: Products
    /// Whether `.bf16` products run on the CPU's bf16 instructions (libxsmm's
    /// VNNI kernels, AVX512-BF16) rather than the portable emulation.
    public var bf16Hardware: Bool { bf16?.hardware ?? false }

    /// The precision of the six tile products.
    /// - exact: fp32 operands, fp32 products (the 0.x contract).
    /// - bf16: operands q, k, v, dO and the probabilities P and dS rounded
    ///   to bf16 (nearest even), products accumulated in fp32; the online
    ///   softmax, lse, D and every accumulator stay fp32 — what
    ///   FlashAttention does on GPUs.
    public enum Products: Sendable, Equatable { case exact, bf16 }

    let tileProducts: TileProducts
    let scratch: FloatBuffer
    let scratchPerWorker: Int
    let keyPanels: FloatBuffer
    let valuePanels: FloatBuffer
    /// What the backward's panels hold after its last call (`keyPanelsReady`
    /// reuses them only if the next call would build the same).
    var backwardPanels: BackwardPanels = .none
    enum BackwardPanels { case none, exact, emulated, hardware }
    let panelStride: Int   // floats per head of panels = tiles · d · tileK
    /// The bf16 products' panels and operands (nil for `.exact`).
    let bf16: BF16Workspace?

    // Kernels of the full tiles; edge tiles get theirs on demand.
    private let scoreKernel: TileProducts.Kernel
    private let valueKernel: TileProducts.Kernel
    private let gradVKernel: TileProducts.Kernel
    private let gradQKernel: TileProducts.Kernel

    /// The code paths in use: tile products ("cpx", "hsw", ... from libxsmm,
    /// or "portable") and row kernels ("avx512", "avx2", "baseline").
    public static var codePath: String {
        TileProducts.codePath + "+" + ["baseline", "avx2", "avx512"][TileProducts.vectorLevel]
    }

    /// How `.bf16` products run on this machine: "avx512_bf16" (libxsmm's
    /// VNNI kernels) or "emulated" (operands rounded to bf16, fp32 products;
    /// no bf16 instructions, BURST_BF16=emulated, or BURST_KERNELS=portable).
    public static var bf16ProductPath: String { TileProducts.bf16Hardware ? "avx512_bf16" : "emulated" }

    /// Whether `.bf16` products run on bf16 instructions here (for shapes
    /// with an even head dim and key tiles of a multiple of 32).
    public static var bf16InHardware: Bool { TileProducts.bf16Hardware }

    /// Tiles a call computed and skipped (fully masked). Their sum is the
    /// tile count of a dense computation: heads × query tiles × key tiles.
    public struct TileCounts: Equatable, Sendable {
        public var computed = 0, skipped = 0
        public init(computed: Int = 0, skipped: Int = 0) { self.computed = computed; self.skipped = skipped }
        public static func += (a: inout TileCounts, b: TileCounts) { a.computed += b.computed; a.skipped += b.skipped }
    }

    /// The tiles of a (queries × keys) pair: what a skipped ring step saves.
    public func denseTiles(queryHeads: Int, queryRows: Int, keyRows: Int) -> Int {
        queryHeads * ((queryRows + tileQ - 1) / tileQ) * ((keyRows + tileK - 1) / tileK)
    }

    typealias SoftmaxTile = (UnsafeMutablePointer<Float>, Int, Int, Int, UnsafePointer<Int>, UnsafePointer<Int>, Float,
                             UnsafeMutablePointer<Float>, UnsafeMutablePointer<Float>, UnsafeMutablePointer<Float>, Int) -> Void
    typealias GradientTile = (UnsafeMutablePointer<Float>, UnsafeMutablePointer<Float>, Int, Int, Int,
                              UnsafePointer<Int>, UnsafePointer<Int>, Float, UnsafePointer<Float>, UnsafePointer<Float>) -> Void
    /// The forward's softmax step (with the cap when there is one).
    let softmaxStep: SoftmaxStep
    let gradientTile: GradientTile
    typealias CapTile = (UnsafeMutablePointer<Float>, Int, Int, Int, UnsafePointer<Int>, UnsafePointer<Int>, Float, Float) -> Void
    typealias CappedGradientTile = (UnsafeMutablePointer<Float>, UnsafeMutablePointer<Float>, Int, Int, Int,
                                    UnsafePointer<Int>, UnsafePointer<Int>, Float, UnsafePointer<Float>, UnsafePointer<Float>,
                                    Float) -> Void
    let cappedGradientTile: CappedGradientTile
    typealias RoundTile = (UnsafeMutablePointer<Float>, Int, Int, Int) -> Void
    /// Rounds a tile to bf16 values in place (the emulated bf16 products).
    let roundTile: RoundTile

    /// Called between tiles by the calling thread (worker 0 of the pool, the
    /// only thread that may call MPI), at most every `progressInterval`
    /// nanoseconds: the ring uses it to let transfers progress while the
    /// tiles run (MPI moves a large message only inside MPI calls).
    public var progress: (() -> Void)?
    public var progressInterval: UInt64 = 200_000

    /// Bytes of the scratch space and panels this object allocated.
    public var workspaceBytes: Int {
        (scratch.count + keyPanels.count + valuePanels.count + (dqPartials?.count ?? 0)) * MemoryLayout<Float>.size
            + (bf16?.bytes ?? 0)
    }
    private var nextProgress: UInt64 = 0
    /// The backward's private dQ partials when key tiles are split over
    /// tasks (allocated on first need, kept).
    private var dqPartials: FloatBuffer?

    @inline(__always)
    func tick(_ worker: Int) {
        guard worker == 0, let progress else { return }
        var ts = timespec()
        clock_gettime(CLOCK_MONOTONIC, &ts)
        let now = UInt64(ts.tv_sec) &* 1_000_000_000 &+ UInt64(ts.tv_nsec)
        if now >= nextProgress {
            nextProgress = now &+ progressInterval
            progress()
        }
    }
    private let ranges: UnsafeMutablePointer<Int>   // per worker: lo[tileQ], hi[tileQ]
    private let counters: UnsafeMutablePointer<TileCounts>   // per worker

    /// Returns nil if the workspace cannot be allocated.
    /// - Parameters:
    ///   - maxKVHeads, maxKeyRows: the largest key block a call will pass.
    ///   - useJIT: false forces the portable Swift products (for tests).
    ///   - products: `.bf16` rounds the products' operands (`Products`).
    ///   - bf16Instructions: false runs `.bf16` through the emulation even
    ///     where the CPU has bf16 instructions (the tests compare the two).
    ///   - softcap: logit soft-capping (0 = off; else finite and > 0).
    public init?(headDim: Int, scale: Float, pool: WorkerPool,
                 maxKVHeads: Int, maxKeyRows: Int,
                 tileQ: Int = 64, tileK: Int = 64, useJIT: Bool = true, products: Products = .exact,
                 bf16Instructions: Bool = true, softcap: Float = 0) {
        precondition(headDim > 0 && tileQ > 0 && tileK > 0 && softcap >= 0 && softcap.isFinite)
        self.headDim = headDim
        self.scale = scale
        self.softcap = softcap
        self.pool = pool
        self.tileQ = tileQ
        self.tileK = tileK
        self.maxKVHeads = max(maxKVHeads, 0)
        self.maxKeyRows = max(maxKeyRows, 0)
        self.products = products
        let hardware = products == .bf16 && useJIT && bf16Instructions && TileProducts.bf16Hardware
            && headDim % 2 == 0 && tileK % RowKernelsAVX512.BF16Operands.group == 0
        self.tileProducts = TileProducts(useJIT: useJIT)
        let level = useJIT ? TileProducts.vectorLevel : 0
        gradientTile = Self.rowKernels(level: level).1
        cappedGradientTile = Self.capKernels(level: level).1
        softmaxStep = SoftmaxStep(level: level, scale: scale, softcap: softcap, headDim: headDim)
        roundTile = [RowKernels.roundToBF16, RowKernelsAVX2.RowKernels.roundToBF16, RowKernelsAVX512.RowKernels.roundToBF16][level]
        scratchPerWorker = hardware ? Self.bf16ScratchFloats(tileQ: tileQ, tileK: tileK, headDim: headDim)
            : (2 * tileQ * tileK + 15) / 16 * 16
        panelStride = (self.maxKeyRows + tileK - 1) / tileK * tileK * headDim
        guard let buffer = FloatBuffer(count: scratchPerWorker * pool.threadCount),
              let kp = FloatBuffer(count: self.maxKVHeads * panelStride),
              let vp = FloatBuffer(count: self.maxKVHeads * panelStride) else { return nil }
        if products == .bf16 {
            guard let workspace = BF16Workspace(hardware: hardware, panelElements: self.maxKVHeads * panelStride,
                                                rowElements: self.maxKVHeads * self.maxKeyRows * headDim) else { return nil }
            bf16 = workspace
        } else {
            bf16 = nil
        }
        // Raw allocations only after the last way out: a failable init that
        // returns nil runs no deinit, so anything allocated before would leak.
        ranges = .allocate(capacity: 2 * tileQ * max(pool.threadCount, 1))
        counters = .allocate(capacity: max(pool.threadCount, 1))
        counters.initialize(repeating: TileCounts(), count: max(pool.threadCount, 1))
        scratch = buffer
        keyPanels = kp
        valuePanels = vp
        let d = headDim
        // S = Q·panel; acc += P·V; dP = dO·Vpanel; dV,dK += Pᵀ·dO, dSᵀ·Q; dQ += dS·K
        scoreKernel = tileProducts.kernel(m: tileQ, n: tileK, k: d, lda: d, ldb: tileK, ldc: tileK,
                                      transposedA: false, accumulate: false)
        valueKernel = tileProducts.kernel(m: tileQ, n: d, k: tileK, lda: tileK, ldb: d, ldc: d,
                                      transposedA: false, accumulate: true)
        gradVKernel = tileProducts.kernel(m: tileK, n: d, k: tileQ, lda: tileK, ldb: d, ldc: d,
                                      transposedA: true, accumulate: true)
        gradQKernel = valueKernel
    }

    /// The row kernels of a vector level (2: AVX-512, 1: AVX2, 0: baseline):
    /// the best the CPU has is chosen at run time.
    static func rowKernels(level: Int) -> (SoftmaxTile, GradientTile) {
        switch level {
        case 2: return (RowKernelsAVX512.RowKernels.softmaxTile, RowKernelsAVX512.RowKernels.gradientTile)
        case 1: return (RowKernelsAVX2.RowKernels.softmaxTile, RowKernelsAVX2.RowKernels.gradientTile)
        default: return (RowKernels.softmaxTile, RowKernels.gradientTile)
        }
    }

    /// The soft-capping row kernels of a vector level (as `rowKernels`).
    static func capKernels(level: Int) -> (CapTile, CappedGradientTile) {
        switch level {
        case 2: return (RowKernelsAVX512.RowKernels.capTile, RowKernelsAVX512.RowKernels.gradientTileCapped)
        case 1: return (RowKernelsAVX2.RowKernels.capTile, RowKernelsAVX2.RowKernels.gradientTileCapped)
        default: return (RowKernels.capTile, RowKernels.gradientTileCapped)
        }
    }

    /// The forward's softmax step of one score tile, for the training
    /// kernels and decode alike: `softmaxTile` of the row kernels picked for
    /// the CPU, the scores soft-capped first (`capTile`) when `softcap` > 0
    /// (then already scaled, so the softmax runs at scale 1).
    struct SoftmaxStep {
        let softmaxTile: SoftmaxTile
        let capTile: CapTile
        let scale: Float, softcap: Float, headDim: Int

        init(level: Int, scale: Float, softcap: Float, headDim: Int) {
            softmaxTile = LocalAttention.rowKernels(level: level).0
            capTile = LocalAttention.capKernels(level: level).0
            self.scale = scale
            self.softcap = softcap
            self.headDim = headDim
        }

        @inline(__always)
        func callAsFunction(_ s: UnsafeMutablePointer<Float>, ld: Int, width: Int, rows: Int,
                            lo: UnsafePointer<Int>, hi: UnsafePointer<Int>, rowMax: UnsafeMutablePointer<Float>,
                            rowSum: UnsafeMutablePointer<Float>, acc: UnsafeMutablePointer<Float>) {
            if softcap > 0 {
                capTile(s, ld, width, rows, lo, hi, scale, softcap)
                softmaxTile(s, ld, width, rows, lo, hi, 1, rowMax, rowSum, acc, headDim)
            } else {
                softmaxTile(s, ld, width, rows, lo, hi, scale, rowMax, rowSum, acc, headDim)
            }
        }
    }

    /// The backward's elementwise step of one tile (`gradientTile`, or
    /// `gradientTileCapped` when `softcap` > 0).
    @inline(__always)
    func gradientStep(_ p: UnsafeMutablePointer<Float>, _ ds: UnsafeMutablePointer<Float>, ld: Int, width: Int, rows: Int,
                      lo: UnsafePointer<Int>, hi: UnsafePointer<Int>, lse: UnsafePointer<Float>, delta: UnsafePointer<Float>) {
        if softcap > 0 {
            cappedGradientTile(p, ds, ld, width, rows, lo, hi, scale, lse, delta, softcap)
        } else {
            gradientTile(p, ds, ld, width, rows, lo, hi, scale, lse, delta)
        }
    }

    deinit {
        ranges.deallocate()
        counters.deinitialize(count: max(pool.threadCount, 1))
        counters.deallocate()
    }

    /// Transposes a key (or value) block into panels: for head z and key tile
    /// t, panel[c][j] = x[t·tileK + j][c], zero beyond the last key.
    func makePanels(_ x: UnsafePointer<Float>, heads: Int, rows: Int, into panels: UnsafeMutablePointer<Float>) {
        let d = headDim, tk = tileK
        let tiles = (rows + tk - 1) / tk
        pool.parallelFor(heads * tiles) { task, _ in
            let z = task / tiles, t = task % tiles
            let j0 = t * tk, cols = min(tk, rows - j0)
            let panel = panels + z * panelStride + t * d * tk
            if cols < tk { panel.update(repeating: 0, count: d * tk) }
            transpose(cols, d, x + (z * rows + j0) * d, d, panel, tk)
        }
    }

    /// Runs `body` over `count` tasks and sums the tile counts the tasks add
    /// to their worker's counter.
    private func countingParallelFor(_ count: Int, _ body: (_ task: Int, _ worker: Int, _ tiles: inout TileCounts) -> Void) -> TileCounts {
        let workers = max(pool.threadCount, 1)
        for w in 0..<workers { counters[w] = TileCounts() }
        let counters = self.counters
        pool.parallelFor(count) { task, worker in body(task, worker, &counters[worker]) }
        var total = TileCounts()
        for w in 0..<workers { total += counters[w] }
        return total
    }

    // MARK: Forward

    /// Sets the running state to "no key seen": acc = 0, rowMax = -inf,
    /// rowSum = 0 — or, with attention sinks, "only the sink seen": rowMax =
    /// s, rowSum = 1 (= e^(s − s)), acc = 0 (the sink has no value), so the
    /// online softmax adds e^s to the denominator exactly once and a row
    /// that sees no key ends with O = 0, lse = s. Head z of the state uses
    /// sinks[z % sinks.count] (heads of every batch on one axis), or
    /// `sinkHeads(z)` if given (ULYSSES holds a slice of the heads).
    public static func resetForwardState(heads: Int, rows: Int, headDim: Int,
                                         acc: UnsafeMutablePointer<Float>,
                                         rowMax: UnsafeMutablePointer<Float>,
                                         rowSum: UnsafeMutablePointer<Float>,
                                         sinks: [Float]? = nil, sinkHead: ((Int) -> Int)? = nil) {
        // No rows: nothing to set (and no loop over the heads, which may
        // number batch × heads = 2^34 for an empty shard — the fuzzer's case).
        guard heads > 0, rows > 0 else { return }
        acc.update(repeating: 0, count: heads * rows * headDim)
        guard let sinks, !sinks.isEmpty else {
            rowMax.update(repeating: -.infinity, count: heads * rows)
            rowSum.update(repeating: 0, count: heads * rows)
            return
        }
        for z in 0..<heads {
            (rowMax + z * rows).update(repeating: sinks[sinkHead?(z) ?? z % sinks.count], count: rows)
        }
        rowSum.update(repeating: 1, count: heads * rows)
    }

    /// Folds one key/value block into the running softmax state of the queries.
    ///
    /// For every query row i and visible key j: s = scale·⟨q_i, k_j⟩;
    /// m' = max(m, max_j s); l' = l·e^(m−m') + Σ_j e^(s−m');
    /// acc' = acc·e^(m−m') + Σ_j e^(s−m')·v_j. Rows that have seen no visible
    /// key keep m = −inf, l = 0, acc = 0 (no exp of −inf − (−inf)).
    ///
    /// q, acc, rowMax, rowSum have `queryHeads` heads; k and v have
    /// queryHeads / group. Parallel over (query head, query tile); each task
    /// owns its rows. kvHeads ≤ maxKVHeads and `nk` ≤ maxKeyRows.
    @discardableResult
    public func forwardAccumulate(queryHeads zq: Int, group g: Int,
                                  q: UnsafePointer<Float>, queryRows nq: Int,
                                  queryLo: UnsafePointer<Int>, queryHi: UnsafePointer<Int>,
                                  k: UnsafePointer<Float>, v: UnsafePointer<Float>,
                                  keyRows nk: Int, keyPositions: UnsafePointer<Int>,
                                  acc: UnsafeMutablePointer<Float>,
                                  rowMax: UnsafeMutablePointer<Float>,
                                  rowSum: UnsafeMutablePointer<Float>) -> TileCounts {
        if zq == 0 || nq == 0 || nk == 0 { return TileCounts() }
        precondition(g > 0 && zq % g == 0 && zq / g <= maxKVHeads && nk <= maxKeyRows, "key block larger than the workspace")
        let dense = denseTiles(queryHeads: zq, queryRows: nq, keyRows: nk)
        if TileVisibility.cornersHidden(rows: nq, lo: queryLo, hi: queryHi, cols: nk, keys: keyPositions) {
            return TileCounts(skipped: dense)
        }
        let d = headDim
        let operands = forwardOperands(q: q, heads: zq, rows: nq, k: k, v: v, kvHeads: zq / g, keyRows: nk)
        // Few rows (a short shard, one head): smaller query tiles, so every
        // thread gets work — at least two tasks per thread, tiles ≥ 32 rows.
        var tq = tileQ
        while pool.threadCount > 1 && tq > 32 && zq * ((nq + tq - 1) / tq) < 2 * pool.threadCount { tq = (tq + 1) / 2 }
        let qTiles = (nq + tq - 1) / tq
        // Tasks go out last query tile first, across heads: under a causal
        // mask the later query tiles see the most keys, and handing the
        // largest tasks out first balances the threads (longest first).
        let counts = countingParallelFor(zq * qTiles) { task, worker, tiles in
            let z = task % zq, kv = z / g
            let i0 = (qTiles - 1 - task / zq) * tq
            let rows = min(tq, nq - i0)
            let work = scratch.pointer + worker * scratchPerWorker
            switch operands {
            case .fp32(let q, let v, let rounded):
                tiles += forwardTile(q: q + (z * nq + i0) * d, rows: rows,
                                     queryLo: queryLo + i0, queryHi: queryHi + i0,
                                     panels: keyPanels.pointer + kv * panelStride,
                                     v: v + kv * nk * d, nk: nk, keyPositions: keyPositions,
                                     acc: acc + (z * nq + i0) * d,
                                     rowMax: rowMax + z * nq + i0, rowSum: rowSum + z * nq + i0,
                                     work: work, lo: ranges + worker * 2 * tileQ, worker: worker, roundP: rounded)
            case .bf16(let q, let keyPanels, let valuePairs):
                tiles += forwardTileBF16(q: q + (z * nq + i0) * d, rows: rows,
                                         queryLo: queryLo + i0, queryHi: queryHi + i0,
                                         keyPanels: keyPanels + kv * panelStride, valuePairs: valuePairs + kv * panelStride,
                                         nk: nk, keyPositions: keyPositions,
                                         acc: acc + (z * nq + i0) * d,
                                         rowMax: rowMax + z * nq + i0, rowSum: rowSum + z * nq + i0,
                                         work: work, lo: ranges + worker * 2 * tileQ, worker: worker)
            }
        }
        // Tile counts are in tileQ × tileK tiles whatever rows ran together.
        return tq == tileQ ? counts : nominalTiles(heads: zq, queryRows: nq, queryLo: queryLo, queryHi: queryHi,
                                                   keyRows: nk, keyPositions: keyPositions)
    }

    /// The computed/skipped counts of the tileQ × tileK tiles of one call
    /// (every head has the same mask).
    private func nominalTiles(heads zq: Int, queryRows nq: Int, queryLo: UnsafePointer<Int>, queryHi: UnsafePointer<Int>,
                              keyRows nk: Int, keyPositions: UnsafePointer<Int>) -> TileCounts {
        var perHead = TileCounts()
        var i0 = 0
        while i0 < nq {
            var j0 = 0
            while j0 < nk {
                let seen = TileVisibility.columns(rows: min(tileQ, nq - i0), lo: queryLo + i0, hi: queryHi + i0,
                                                  cols: min(tileK, nk - j0), keys: keyPositions + j0,
                                                  first: ranges, last: ranges + tileQ)
                if seen { perHead.computed += 1 } else { perHead.skipped += 1 }
                j0 += tileK
            }
            i0 += tileQ
        }
        return TileCounts(computed: zq * perHead.computed, skipped: zq * perHead.skipped)
    }

    private func forwardTile(q: UnsafePointer<Float>, rows: Int,
                             queryLo: UnsafePointer<Int>, queryHi: UnsafePointer<Int>,
                             panels: UnsafePointer<Float>, v: UnsafePointer<Float>, nk: Int,
                             keyPositions: UnsafePointer<Int>,
                             acc: UnsafeMutablePointer<Float>,
                             rowMax: UnsafeMutablePointer<Float>, rowSum: UnsafeMutablePointer<Float>,
                             work: UnsafeMutablePointer<Float>, lo: UnsafeMutablePointer<Int>, worker: Int,
                             roundP: Bool) -> TileCounts {
        let d = headDim, tk = tileK
        let hi = lo + tileQ
        let s = work   // [tileQ × tk] scores, then probabilities
        let score = scoreKernel
        return forEachVisibleKeyTile(rows: rows, queryLo: queryLo, queryHi: queryHi, nk: nk, keyPositions: keyPositions,
                                     lo: lo, worker: worker) { j0, cols, top, live in
            let scoreRows = live == tileQ ? score
                : tileProducts.kernel(m: live, n: tk, k: d, lda: d, ldb: tk, ldc: tk, transposedA: false, accumulate: false)
            tileProducts.run(scoreRows, q + top * d, panels + (j0 / tk) * d * tk, s)
            softmaxStep(s, ld: tk, width: tk, rows: live, lo: lo + top, hi: hi + top,
                        rowMax: rowMax + top, rowSum: rowSum + top, acc: acc + top * d)
            if roundP { roundTile(s, tk, tk, live) }
            let value = cols == tk && live == tileQ ? valueKernel
                : tileProducts.kernel(m: live, n: d, k: cols, lda: tk, ldb: d, ldc: d, transposedA: false, accumulate: true)
            tileProducts.run(value, s, v + j0 * d, acc + top * d)
        }
    }

    /// The key tiles of `nk` keys that some of a forward task's `rows` query
    /// rows see, in order: for each, after the progress tick, `body(j0,
    /// cols, top, live)` with lo/hi (tileQ apart) holding the rows' visible
    /// columns and [top, top + live) the rows that see a key of it — the
    /// only rows the products run over (a causal diagonal hides the first
    /// ones). Splitting a full tile into blocks of rows measured no gain:
    /// the scores stay in L2 either way and the softmax costs its
    /// arithmetic, not their round trip. Returns the tile counts.
    @inline(__always)
    func forEachVisibleKeyTile(rows: Int, queryLo: UnsafePointer<Int>, queryHi: UnsafePointer<Int>, nk: Int,
                               keyPositions: UnsafePointer<Int>, lo: UnsafeMutablePointer<Int>, worker: Int,
                               _ body: (_ j0: Int, _ cols: Int, _ top: Int, _ live: Int) -> Void) -> TileCounts {
        let tk = tileK
        var tiles = TileCounts()
        var j0 = 0
        while j0 < nk {
            let cols = min(tk, nk - j0)
            if TileVisibility.columns(rows: rows, lo: queryLo, hi: queryHi, cols: cols, keys: keyPositions + j0,
                                      first: lo, last: lo + tileQ) {
                tiles.computed += 1
                tick(worker)
                let (top, live) = Self.visibleRows(rows, lo, lo + tileQ)
                body(j0, cols, top, live)
            } else {
                tiles.skipped += 1
            }
            j0 += tk
        }
        return tiles
    }

    /// The first row of a tile that sees one of its keys and the count from
    /// there to the last such row (lo, hi: the rows' visible columns; at
    /// least one row sees something).
    @inline(__always)
    static func visibleRows(_ rows: Int, _ lo: UnsafePointer<Int>, _ hi: UnsafePointer<Int>) -> (top: Int, count: Int) {
        var top = 0, bottom = rows
        while top < rows - 1 && lo[top] >= hi[top] { top += 1 }
        while bottom > top + 1 && lo[bottom - 1] >= hi[bottom - 1] { bottom -= 1 }
        return (top, bottom - top)
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
                // Eight at a time, explicitly: `out` may be `acc`, so the
                // compiler would not vectorise the plain loop.
                var c = 0
                while c + 8 <= d {
                    let x = UnsafeRawPointer(a + c).loadUnaligned(as: SIMD8<Float>.self) * inv
                    UnsafeMutableRawPointer(o + c).storeBytes(of: x, as: SIMD8<Float>.self)
                    c += 8
                }
                while c < d { o[c] = a[c] * inv; c += 1 }
                lse?[r] = rowMax[r] + logf(l)
            }
        }
    }

    // MARK: Backward

    /// D_i = Σ_c dO[i,c]·O[i,c] for every row (the backward's "delta").
    /// Summed in order c = 0, 1, …: the order of the JIT kernels' dot
    /// products, so where dP_ij = D_i exactly (a row that sees one key) dS is
    /// exactly 0 (a lane-parallel sum measured 1.7e-7 off there).
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
    /// accumulate into their buffers. q, dOut, delta, lse, dq have
    /// `queryHeads` heads; k, v, dk, dv have queryHeads / group.
    ///
    /// Parallel over key/value heads and, when they do not split evenly over
    /// the threads (one head, or a head count the thread count does not
    /// divide), over key tiles too: each key/value head's key tiles are dealt
    /// to `chunks` tasks (boustrophedon: 0,1,1,0,0,1,… for two, which evens
    /// out a causal mask's linear trend). A task runs the `group` query heads
    /// of its key/value head one after the other over its key tiles, so it
    /// owns its dK and dV rows. The dQ rows are shared by the chunks of a
    /// head: chunk 0 adds into dq, chunk c > 0 into a private partial, and
    /// the partials are added to dq afterwards in chunk order. The summation
    /// order depends only on the thread count, so results are bitwise
    /// repeatable at a given count. `keyPanelsReady`: the previous
    /// call had the same k and v (the backward's keys stay on their rank for
    /// every ring step), so their panels are still in place.
    @discardableResult
    public func backwardAccumulate(keyPanelsReady: Bool = false, queryHeads zq: Int, group g: Int,
                                   q: UnsafePointer<Float>, dOut: UnsafePointer<Float>,
                                   delta: UnsafePointer<Float>, lse: UnsafePointer<Float>,
                                   dq: UnsafeMutablePointer<Float>, queryRows nq: Int,
                                   queryLo: UnsafePointer<Int>, queryHi: UnsafePointer<Int>,
                                   k: UnsafePointer<Float>, v: UnsafePointer<Float>,
                                   dk: UnsafeMutablePointer<Float>, dv: UnsafeMutablePointer<Float>,
                                   keyRows nk: Int, keyPositions: UnsafePointer<Int>) -> TileCounts {
        if zq == 0 || nq == 0 || nk == 0 { return TileCounts() }
        precondition(g > 0 && zq % g == 0 && zq / g <= maxKVHeads && nk <= maxKeyRows, "key block larger than the workspace")
        let dense = denseTiles(queryHeads: zq, queryRows: nq, keyRows: nk)
        if TileVisibility.cornersHidden(rows: nq, lo: queryLo, hi: queryHi, cols: nk, keys: keyPositions) {
            return TileCounts(skipped: dense)
        }
        let zkv = zq / g
        let operands = backwardOperands(keyPanelsReady: keyPanelsReady, q: q, dOut: dOut, heads: zq, rows: nq,
                                        k: k, v: v, kvHeads: zkv, keyRows: nk)
        let d = headDim
        let chunks = keyChunks(kvHeads: zkv, queryElements: zq * nq * d)
        let partials = chunks > 1 ? dqPartials!.pointer : dq
        if chunks > 1 { partials.update(repeating: 0, count: (chunks - 1) * zq * nq * d) }
        let counts = countingParallelFor(zkv * chunks) { task, worker, tiles in
            let kv = task / chunks, chunk = task % chunks
            let work = scratch.pointer + worker * scratchPerWorker
            for z in (kv * g)..<((kv + 1) * g) {
                let dqTarget = chunk == 0 ? dq + z * nq * d : partials + ((chunk - 1) * zq + z) * nq * d
                switch operands {
                case .fp32(let q, let dOut, let k, let rounded):
                    tiles += backwardHead(q: q + z * nq * d, dOut: dOut + z * nq * d,
                                          delta: delta + z * nq, lse: lse + z * nq, dq: dqTarget,
                                          nq: nq, queryLo: queryLo, queryHi: queryHi,
                                          k: k + kv * nk * d,
                                          keyPanels: keyPanels.pointer + kv * panelStride,
                                          valuePanels: valuePanels.pointer + kv * panelStride,
                                          dk: dk + kv * nk * d, dv: dv + kv * nk * d, nk: nk, keyPositions: keyPositions,
                                          chunk: chunk, chunks: chunks,
                                          work: work, lo: ranges + worker * 2 * tileQ, worker: worker, roundPD: rounded)
                case .bf16(let q, let dOut, let qT, let dOutT, let keyPanels, let valuePanels, let keyPairs):
                    let ldT = Self.transposedStride(nq)
                    tiles += backwardHeadBF16(q: q + z * nq * d, dOut: dOut + z * nq * d,
                                              qT: qT + z * d * ldT, dOutT: dOutT + z * d * ldT,
                                              delta: delta + z * nq, lse: lse + z * nq, dq: dqTarget,
                                              nq: nq, queryLo: queryLo, queryHi: queryHi,
                                              keyPanels: keyPanels + kv * panelStride, valuePanels: valuePanels + kv * panelStride,
                                              keyPairs: keyPairs + kv * panelStride,
                                              dk: dk + kv * nk * d, dv: dv + kv * nk * d, nk: nk, keyPositions: keyPositions,
                                              chunk: chunk, chunks: chunks,
                                              work: work, lo: ranges + worker * 2 * tileQ, worker: worker)
                }
            }
        }
        if chunks > 1 {
            // dq += partial₁ + partial₂ + … element by element, in chunk order.
            let total = zq * nq * d, block = 16_384
            pool.parallelFor((total + block - 1) / block) { task, _ in
                let start = task * block, end = min(start + block, total)
                for c in 1..<chunks {
                    let part = partials + (c - 1) * total
                    for e in start..<end { dq[e] += part[e] }
                }
            }
        }
        return counts
    }

    /// How many tasks share each key/value head's key tiles in the backward:
    /// 1 when the heads split evenly over the threads, else the smallest
    /// count that makes heads × chunks a multiple of the threads. Grows the
    /// dQ partials' buffer if needed; if that allocation fails, 1 (slower,
    /// never wrong).
    private func keyChunks(kvHeads zkv: Int, queryElements: Int) -> Int {
        let threads = pool.threadCount
        if threads <= 1 || zkv % threads == 0 { return 1 }
        func gcd(_ a: Int, _ b: Int) -> Int { b == 0 ? a : gcd(b, a % b) }
        let chunks = threads / gcd(zkv, threads)
        let needed = (chunks - 1) * queryElements
        if (dqPartials?.count ?? 0) < needed {
            dqPartials = nil
            dqPartials = FloatBuffer(count: needed)
            if dqPartials == nil { return 1 }
        }
        return chunks
    }

    /// Whether key tile t belongs to chunk c of `chunks` (boustrophedon order).
    @inline(__always)
    static func keyTile(_ t: Int, inChunk c: Int, of chunks: Int) -> Bool {
        if chunks == 1 { return true }
        let r = t % (2 * chunks)
        return (r < chunks ? r : 2 * chunks - 1 - r) == c
    }

    private func backwardHead(q: UnsafePointer<Float>, dOut: UnsafePointer<Float>,
                              delta: UnsafePointer<Float>, lse: UnsafePointer<Float>,
                              dq: UnsafeMutablePointer<Float>, nq: Int,
                              queryLo: UnsafePointer<Int>, queryHi: UnsafePointer<Int>,
                              k: UnsafePointer<Float>, keyPanels: UnsafePointer<Float>, valuePanels: UnsafePointer<Float>,
                              dk: UnsafeMutablePointer<Float>, dv: UnsafeMutablePointer<Float>,
                              nk: Int, keyPositions: UnsafePointer<Int>, chunk: Int, chunks: Int,
                              work: UnsafeMutablePointer<Float>, lo: UnsafeMutablePointer<Int>, worker: Int,
                              roundPD: Bool) -> TileCounts {
        let d = headDim, tq = tileQ, tk = tileK
        let p = work                   // [tq × tk] scores, then probabilities
        let ds = work + tq * tk        // [tq × tk] dP, then scale·dS
        return forEachVisibleTilePair(nq: nq, queryLo: queryLo, queryHi: queryHi, nk: nk, keyPositions: keyPositions,
                                      chunk: chunk, chunks: chunks, lo: lo, worker: worker) { j0, cols, i0, rows, lo, hi in
            let kPanel = keyPanels + (j0 / tk) * d * tk, vPanel = valuePanels + (j0 / tk) * d * tk
            let qi = q + i0 * d, doi = dOut + i0 * d
            let full = rows == tq && cols == tk
            let score = rows == tq ? scoreKernel
                : tileProducts.kernel(m: rows, n: tk, k: d, lda: d, ldb: tk, ldc: tk, transposedA: false, accumulate: false)
            tileProducts.run(score, qi, kPanel, p)
            tileProducts.run(score, doi, vPanel, ds)
            gradientStep(p, ds, ld: tk, width: tk, rows: rows, lo: lo, hi: hi, lse: lse + i0, delta: delta + i0)
            if roundPD { roundTile(p, tk, tk, rows); roundTile(ds, tk, tk, rows) }
            // dV[j] += Σ_i P[i,j]·dO[i];  dK[j] += Σ_i dS[i,j]·Q[i];  dQ[i] += Σ_j dS[i,j]·K[j]
            let gradV = full ? gradVKernel
                : tileProducts.kernel(m: cols, n: d, k: rows, lda: tk, ldb: d, ldc: d, transposedA: true, accumulate: true)
            tileProducts.run(gradV, p, doi, dv + j0 * d)
            tileProducts.run(gradV, ds, qi, dk + j0 * d)
            let gradQ = full ? gradQKernel
                : tileProducts.kernel(m: rows, n: d, k: cols, lda: tk, ldb: d, ldc: d, transposedA: false, accumulate: true)
            tileProducts.run(gradQ, ds, k + j0 * d, dq + i0 * d)
        }
    }

    /// The (key tile, query tile) pairs of a backward task: the key tiles
    /// of `chunk` (boustrophedon, `keyTile`) that some query of the block
    /// sees, and for each the query tiles that see it, in order. `tile(j0,
    /// cols, i0, rows, lo, hi)` runs after the progress tick with the query
    /// tile trimmed to the rows that see a key of the key tile (from the
    /// first to the last; a causal diagonal hides the first ones — the
    /// others add nothing) and lo/hi their visible columns; `keyTileDone(j0,
    /// cols)` after a key tile's last query tile. Returns the tile counts.
    @inline(__always)
    func forEachVisibleTilePair(nq: Int, queryLo: UnsafePointer<Int>, queryHi: UnsafePointer<Int>,
                                nk: Int, keyPositions: UnsafePointer<Int>, chunk: Int, chunks: Int,
                                lo: UnsafeMutablePointer<Int>, worker: Int,
                                keyTileStart: (_ j0: Int) -> Void = { _ in },
                                keyTileDone: (_ j0: Int, _ cols: Int) -> Void = { _, _ in },
                                _ tile: (_ j0: Int, _ cols: Int, _ i0: Int, _ rows: Int,
                                         _ lo: UnsafePointer<Int>, _ hi: UnsafePointer<Int>) -> Void) -> TileCounts {
        let tq = tileQ, tk = tileK
        let hi = lo + tq
        let qTiles = (nq + tq - 1) / tq
        var tiles = TileCounts()
        var j0 = 0
        while j0 < nk {
            defer { j0 += tk }
            if !Self.keyTile(j0 / tk, inChunk: chunk, of: chunks) { continue }
            let cols = min(tk, nk - j0)
            let keys = keyPositions + j0
            // Skip the whole key tile if no query of the block sees it.
            if TileVisibility.cornersHidden(rows: nq, lo: queryLo, hi: queryHi, cols: cols, keys: keys) {
                tiles.skipped += qTiles
                continue
            }
            keyTileStart(j0)
            var i0 = 0
            while i0 < nq {
                let rows = min(tq, nq - i0)
                if TileVisibility.columns(rows: rows, lo: queryLo + i0, hi: queryHi + i0, cols: cols, keys: keys,
                                          first: lo, last: hi) {
                    tiles.computed += 1
                    tick(worker)
                    let (top, live) = Self.visibleRows(rows, lo, hi)
                    tile(j0, cols, i0 + top, live, lo + top, hi + top)
                } else {
                    tiles.skipped += 1
                }
                i0 += tq
            }
            keyTileDone(j0, cols)
        }
        return tiles
    }
}
