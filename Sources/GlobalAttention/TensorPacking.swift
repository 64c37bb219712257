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
                     into canonical: UnsafeMutablePointer<Float>) {
        let total = batch * heads * rows * d
        if total == 0 { return }
        let size = type.bytes
        switch layout {
        case .bhsd:
            StorageConversion.load(type, user, into: canonical, count: total)
        case .bshd:
            for b in 0..<batch {
                for i in 0..<rows {
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
                       into user: UnsafeMutableRawPointer) {
        let total = batch * heads * rows * d
        if total == 0 { return }
        let size = type.bytes
        switch layout {
        case .bhsd:
            StorageConversion.store(type, canonical, into: user, count: total)
        case .bshd:
            for b in 0..<batch {
                for i in 0..<rows {
                    let target = user + ((b * rows + i) * heads) * d * size
                    for h in 0..<heads {
                        StorageConversion.store(type, canonical + ((b * heads + h) * rows + i) * d, into: target + h * d * size,
                                                count: d)
                    }
                }
            }
        }
    }
}
