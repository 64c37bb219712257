import LocalAttention

/// Moves tensors between the caller's layout and the canonical layout the
/// kernels and the wire use: `[batch·heads, rows, headDim]`, each head's rows
/// contiguous. BHSD already is canonical; BSHD interleaves heads per token.
/// The caller's elements are of the plan's storage type; the canonical
/// tensors are fp32. Packing widens (exact), unpacking rounds once (round to
/// nearest even) while it transposes (`StorageConversion`).
enum TensorPacking {
    /// canonical[b, h, i, :] = user[b, i, h, :] (BSHD) or a plain copy (BHSD), as fp32.
    static func pack(_ user: UnsafeRawPointer, type: StorageType = .f32, layout: AttentionConfig.Layout,
                     batch: Int, heads: Int, rows: Int, headDim d: Int,
                     into canonical: UnsafeMutablePointer<Float>, pool: WorkerPool? = nil) {
        let total = batch * heads * rows * d
        if total == 0 { return }
        let size = type.bytes
        switch layout {
        case .bhsd:
            spread(pool, total / d, elementsPerUnit: d) { range in
                StorageConversion.load(type, user + range.lowerBound * d * size, into: canonical + range.lowerBound * d,
                                       count: range.count * d)
            }
        case .bshd:
            spread(pool, batch * rows, elementsPerUnit: heads * d) { tokens in
                for token in tokens {
                    let b = token / rows, i = token % rows
                    let source = user + ((b * rows + i) * heads) * d * size
                    for h in 0..<heads {
                        StorageConversion.load(type, source + h * d * size, into: canonical + ((b * heads + h) * rows + i) * d,
                                               count: d)
                    }
                }
            }
        }
    }

    /// The inverse of `pack` (rounding to the storage type).
    static func unpack(_ canonical: UnsafePointer<Float>, type: StorageType = .f32, layout: AttentionConfig.Layout,
                       batch: Int, heads: Int, rows: Int, headDim d: Int,
                       into user: UnsafeMutableRawPointer, pool: WorkerPool? = nil) {
        let total = batch * heads * rows * d
        if total == 0 { return }
        let size = type.bytes
        switch layout {
        case .bhsd:
            spread(pool, total / d, elementsPerUnit: d) { range in
                StorageConversion.store(type, canonical + range.lowerBound * d, into: user + range.lowerBound * d * size,
                                        count: range.count * d)
            }
        case .bshd:
            spread(pool, batch * rows, elementsPerUnit: heads * d) { tokens in
                for token in tokens {
                    let b = token / rows, i = token % rows
                    let target = user + ((b * rows + i) * heads) * d * size
                    for h in 0..<heads {
                        StorageConversion.store(type, canonical + ((b * heads + h) * rows + i) * d, into: target + h * d * size,
                                                count: d)
                    }
                }
            }
        }
    }

    /// Runs `body` over `0..<units` in contiguous ranges: on the calling
    /// thread for small tensors or without a pool, else over the pool's
    /// threads (each range writes its own part; no order matters).
    private static func spread(_ pool: WorkerPool?, _ units: Int, elementsPerUnit: Int, _ body: (Range<Int>) -> Void) {
        let perTask = max(1, 32_768 / max(elementsPerUnit, 1))   // ≥ 32K elements a task: below, threads cost more than they save
        guard let pool, pool.threadCount > 1, units >= 2 * perTask else { body(0..<units); return }
        let tasks = min(units / perTask, 4 * pool.threadCount)
        pool.parallelFor(tasks) { t, _ in body((t * units / tasks)..<((t + 1) * units / tasks)) }
    }
}
