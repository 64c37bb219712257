#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif
import LocalAttention

/// The gradient of attention sinks (header, "Score modifiers"): a sink s_h
/// is one more logit in the softmax of every row of query head h, with no
/// value, so its probability in row i is exp(s_h − lse_i) and
///
///     dL/ds_h = Σ_i exp(s_h − lse_i) · (0 − D_i),   D_i = Σ_c dO_ic · O_ic
///
/// (the softmax's backward, dS = P∘(dP − D), at the sink's column, whose dP
/// is 0). It needs only a row's lse, out and dout, which live on the rank
/// that owns the row whatever the pattern did, so every pattern gives the
/// same bits: computed here once, from the caller's tensors, in Double.
enum SinkGradient {
    /// This rank's partial dL/ds over its `rows` query rows and every batch:
    /// `heads` values. out and dout in the plan's layout and storage type,
    /// lse `[batch, heads, rows]`. Parallel over chunks of `chunkRows` rows
    /// of a batch, each walking its rows in memory order (BSHD: every head of
    /// a row, then the next row; a head at a time would stride through the
    /// tensors and defeat the prefetchers: 13 ms for 4096 rows × 8 heads ×
    /// 128); the chunks' per-head sums are added in chunk order, so the
    /// result depends on neither the threads nor the layout.
    static func partial(sinks: [Float], out: UnsafeRawPointer, dout: UnsafeRawPointer, lse: UnsafePointer<Float>,
                        layout: AttentionConfig.Layout, storage: StorageType, batch: Int, heads: Int, rows: Int,
                        headDim d: Int, pool: WorkerPool) -> [Float] {
        if rows == 0 { return [Float](repeating: 0, count: heads) }
        let size = storage.bytes
        let chunks = (rows + chunkRows - 1) / chunkRows, tasks = batch * chunks
        let workers = max(pool.threadCount, 1)
        let scratch = UnsafeMutablePointer<Float>.allocate(capacity: 2 * d * workers)
        let sums = UnsafeMutablePointer<Double>.allocate(capacity: tasks * heads)
        defer { scratch.deallocate(); sums.deallocate() }
        pool.parallelFor(tasks) { task, worker in
            let b = task / chunks, i0 = (task % chunks) * chunkRows, i1 = min(rows, i0 + chunkRows)
            let o = scratch + 2 * d * worker, g = o + d
            let sum = sums + task * heads
            sum.initialize(repeating: 0, count: heads)
            func row(_ i: Int, _ h: Int) {
                let rowLse = lse[(b * heads + h) * rows + i]
                // A row with no key and no sink (lse = −inf) has out = 0.
                if rowLse == -.infinity { return }
                let element = layout == .bhsd ? ((b * heads + h) * rows + i) * d : ((b * rows + i) * heads + h) * d
                let x: UnsafePointer<Float>, y: UnsafePointer<Float>
                if storage == .f32 {
                    x = (out + element * size).assumingMemoryBound(to: Float.self)
                    y = (dout + element * size).assumingMemoryBound(to: Float.self)
                } else {
                    StorageConversion.load(storage, out + element * size, into: o, count: d)
                    StorageConversion.load(storage, dout + element * size, into: g, count: d)
                    x = UnsafePointer(o); y = UnsafePointer(g)
                }
                sum[h] -= exp(Double(sinks[h]) - Double(rowLse)) * dot(x, y, count: d)
            }
            // Memory order; each head's rows are summed in increasing i either way.
            if layout == .bhsd {
                for h in 0..<heads { for i in i0..<i1 { row(i, h) } }
            } else {
                for i in i0..<i1 { for h in 0..<heads { row(i, h) } }
            }
        }
        var gradient = [Float](repeating: 0, count: heads)
        for h in 0..<heads {
            var total: Double = 0
            for task in 0..<tasks { total += sums[task * heads + h] }
            gradient[h] = Float(total)
        }
        return gradient
    }

    /// Rows per task of `partial`.
    static let chunkRows = 256

    /// Σ x_c·y_c in Double: eight lanes (independent chains), summed in a
    /// fixed order, then the tail.
    @inline(__always)
    static func dot(_ x: UnsafePointer<Float>, _ y: UnsafePointer<Float>, count d: Int) -> Double {
        var lanes = SIMD8<Double>()
        var c = 0
        while c + 8 <= d {
            let a = SIMD8<Double>(UnsafeRawPointer(x + c).loadUnaligned(as: SIMD8<Float>.self))
            let b = SIMD8<Double>(UnsafeRawPointer(y + c).loadUnaligned(as: SIMD8<Float>.self))
            lanes.addProduct(a, b)
            c += 8
        }
        var total = lanes.sum()
        while c < d { total += Double(x[c]) * Double(y[c]); c += 1 }
        return total
    }
}
