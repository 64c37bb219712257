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
    /// lse `[batch, heads, rows]`. Parallel over heads (each head sums its
    /// rows in order, so the result does not depend on the threads).
    static func partial(sinks: [Float], out: UnsafeRawPointer, dout: UnsafeRawPointer, lse: UnsafePointer<Float>,
                        layout: AttentionConfig.Layout, storage: StorageType, batch: Int, heads: Int, rows: Int,
                        headDim d: Int, pool: WorkerPool) -> [Float] {
        var gradient = [Float](repeating: 0, count: heads)
        if rows == 0 { return gradient }
        let size = storage.bytes
        let scratch = UnsafeMutablePointer<Float>.allocate(capacity: 2 * d * max(pool.threadCount, 1))
        defer { scratch.deallocate() }
        gradient.withUnsafeMutableBufferPointer { result in
            let result = result.baseAddress!
            pool.parallelFor(heads) { h, worker in
                let o = scratch + 2 * d * worker, g = o + d
                let sink = Double(sinks[h])
                var sum: Double = 0
                for b in 0..<batch {
                    for i in 0..<rows {
                        let rowLse = lse[(b * heads + h) * rows + i]
                        // A row with no key and no sink (lse = −inf) has out = 0.
                        if rowLse == -.infinity { continue }
                        let element = layout == .bhsd ? ((b * heads + h) * rows + i) * d : ((b * rows + i) * heads + h) * d
                        StorageConversion.load(storage, out + element * size, into: o, count: d)
                        StorageConversion.load(storage, dout + element * size, into: g, count: d)
                        var delta: Double = 0
                        for c in 0..<d { delta += Double(o[c]) * Double(g[c]) }
                        sum -= exp(sink - Double(rowLse)) * delta
                    }
                }
                result[h] = Float(sum)
            }
        }
        return gradient
    }
}
