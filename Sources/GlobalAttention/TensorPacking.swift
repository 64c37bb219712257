/// Moves tensors between the caller's layout and the canonical layout the
/// kernels and the wire use: `[batch·heads, rows, headDim]`, each head's rows
/// contiguous. BHSD already is canonical; BSHD interleaves heads per token.
enum TensorPacking {
    /// canonical[b, h, i, :] = user[b, i, h, :] (BSHD) or a plain copy (BHSD).
    static func pack(_ user: UnsafePointer<Float>, layout: AttentionConfig.Layout,
                     batch: Int, heads: Int, rows: Int, headDim d: Int,
                     into canonical: UnsafeMutablePointer<Float>) {
        let total = batch * heads * rows * d
        if total == 0 { return }
        switch layout {
        case .bhsd:
            canonical.update(from: user, count: total)
        case .bshd:
            for b in 0..<batch {
                for i in 0..<rows {
                    let source = user + ((b * rows + i) * heads) * d
                    for h in 0..<heads {
                        (canonical + ((b * heads + h) * rows + i) * d).update(from: source + h * d, count: d)
                    }
                }
            }
        }
    }

    /// The inverse of `pack`.
    static func unpack(_ canonical: UnsafePointer<Float>, layout: AttentionConfig.Layout,
                       batch: Int, heads: Int, rows: Int, headDim d: Int,
                       into user: UnsafeMutablePointer<Float>) {
        let total = batch * heads * rows * d
        if total == 0 { return }
        switch layout {
        case .bhsd:
            user.update(from: canonical, count: total)
        case .bshd:
            for b in 0..<batch {
                for i in 0..<rows {
                    let target = user + ((b * rows + i) * heads) * d
                    for h in 0..<heads {
                        (target + h * d).update(from: canonical + ((b * heads + h) * rows + i) * d, count: d)
                    }
                }
            }
        }
    }
}
