import LocalAttention

/// ULYSSES moves tensors in "head slices": slice j of a rank's tensor holds
/// heads [j·h/P, (j+1)·h/P) of every batch of that rank's rows, canonical
/// inside the slice: `[batch, h/P, rows, d]`. The slices of one rank's
/// message lie at `base + j·sliceStride`.
enum HeadSlices {
    /// slice_j[b, h mod hs, i, :] = user[b, i, h, :] (BSHD) or user[b, h, i, :] (BHSD), j = h / hs,
    /// widened from the storage type to fp32.
    static func pack(_ user: UnsafeRawPointer, type: StorageType = .f32, layout: AttentionConfig.Layout, batch: Int, heads: Int,
                     rows: Int, headDim d: Int, slices: Int, into base: UnsafeMutablePointer<Float>, sliceStride: Int) {
        let size = type.bytes
        eachRow(layout: layout, batch: batch, heads: heads, rows: rows, headDim: d, slices: slices,
                sliceStride: sliceStride) { sliced, unsliced in
            StorageConversion.load(type, user + unsliced * size, into: base + sliced, count: d)
        }
    }

    /// The inverse of `pack` (rounding to the storage type).
    static func unpack(_ base: UnsafePointer<Float>, sliceStride: Int, type: StorageType = .f32, layout: AttentionConfig.Layout,
                       batch: Int, heads: Int, rows: Int, headDim d: Int, slices: Int, into user: UnsafeMutableRawPointer) {
        let size = type.bytes
        eachRow(layout: layout, batch: batch, heads: heads, rows: rows, headDim: d, slices: slices,
                sliceStride: sliceStride) { sliced, unsliced in
            StorageConversion.store(type, base + sliced, into: user + unsliced * size, count: d)
        }
    }

    /// Calls `body(slice offset, user offset)` for every row of d floats.
    @inline(__always)
    private static func eachRow(layout: AttentionConfig.Layout, batch: Int, heads: Int, rows: Int, headDim d: Int,
                                slices: Int, sliceStride: Int, _ body: (Int, Int) -> Void) {
        let hs = heads / slices
        for b in 0..<batch {
            for h in 0..<heads {
                let slice = (h / hs) * sliceStride + (b * hs + h % hs) * rows * d
                for i in 0..<rows {
                    body(slice + i * d, layout == .bhsd ? ((b * heads + h) * rows + i) * d : ((b * rows + i) * heads + h) * d)
                }
            }
        }
    }

    /// full[z, positions[i], :] = part[z, i, :] for z < heads: one source
    /// rank's rows placed at their global positions of the whole sequence.
    static func scatter(_ part: UnsafePointer<Float>, heads: Int, rows: Int, width: Int, positions: [Int],
                        total: Int, into full: UnsafeMutablePointer<Float>) {
        for z in 0..<heads {
            for (i, position) in positions.enumerated() {
                (full + (z * total + position) * width).update(from: part + (z * rows + i) * width, count: width)
            }
        }
    }

    /// part[z, i, :] = full[z, positions[i], :]: the inverse of `scatter`.
    static func gather(_ full: UnsafePointer<Float>, heads: Int, total: Int, width: Int, positions: [Int],
                       into part: UnsafeMutablePointer<Float>) {
        let rows = positions.count
        for z in 0..<heads {
            for (i, position) in positions.enumerated() {
                (part + (z * rows + i) * width).update(from: full + (z * total + position) * width, count: width)
            }
        }
    }
}
