// The bf16 operands of the tile products (LocalAttention's `.bf16` products
// on a CPU with AVX512-BF16), written from fp32 tiles and blocks. libxsmm's
// bf16 kernels take a plain bf16 A and a B in VNNI pairs (two consecutive
// rows of the reduction axis interleaved: element (p, j) of B[k × n] at
// ((p/2)·n + j)·2 + p%2), and accumulate fp32.
//
// Every narrowing rounds to nearest, ties to even (adding 0x7FFF plus the
// lowest kept bit) and quiets a NaN first, so a NaN stays NaN; the same
// rounding as HalfConvert.narrowBF16 and as the emulation of these products.
//
// "Permuted" pairs: a reduction over the 32 columns c₀ … c₀+31 of a tile
// may run in any order, so the plain operand P (scores × values) stores the
// pair (c₀+i, c₀+16+i) in its i-th 32-bit word, which is two 16-lane
// vectors narrowed and merged with vertical operations only, and the VNNI
// operand pairs the same two rows (`interleaveRows(permuted: true)`).

/// An fp32 lane vector as bf16 bits in the upper 16 bits of each lane
/// (rounded to nearest even; NaN quieted), the lower 16 bits garbage.
@inline(__always)
func roundedBF16(_ v: Lanes) -> LaneBits {
    let bits = unsafeBitCast(v, to: LaneBits.self)
    let nan = (bits & LaneBits(repeating: 0x7FFF_FFFF)) .> LaneBits(repeating: 0x7F80_0000)
    let quiet = bits.replacing(with: bits | LaneBits(repeating: 0x0040_0000), where: nan)
    return quiet &+ LaneBits(repeating: 0x7FFF) &+ ((quiet &>> 16) & LaneBits(repeating: 1))
}

/// Two fp32 vectors narrowed and merged: word i holds a[i] in its low and
/// b[i] in its high half (little endian: a[i] first in memory).
@inline(__always)
func pairBF16(_ a: Lanes, _ b: Lanes) -> LaneBits {
    (roundedBF16(a) &>> 16) | (roundedBF16(b) & LaneBits(repeating: 0xFFFF_0000))
}

@inline(__always)
private func load(_ p: UnsafePointer<Float>) -> Lanes { UnsafeRawPointer(p).loadUnaligned(as: Lanes.self) }

@inline(__always)
private func store(_ v: LaneBits, _ p: UnsafeMutableRawPointer) { p.storeBytes(of: v, as: LaneBits.self) }

public enum BF16Operands {
    /// Columns per permuted group (two vectors).
    public static let group = 2 * Lanes.scalarCount

    /// A plain operand with permuted pairs from an fp32 tile: `rows` rows of
    /// `width` (a multiple of `group`) columns at leading dimension `ld`,
    /// into `target` [rows × width] bf16 (32-bit word g·16 + i of a row
    /// holds columns g·32 + i and g·32 + 16 + i).
    @inline(never)
    public static func narrowPermuted(_ source: UnsafePointer<Float>, ld: Int, rows: Int, width: Int,
                                      into target: UnsafeMutableRawPointer) {
        let w = Lanes.scalarCount
        for r in 0..<rows {
            let s = source + r * ld
            let t = target + r * width * 2
            var j = 0
            while j < width {
                store(pairBF16(load(s + j), load(s + j + w)), t + j * 2)
                j += 2 * w
            }
        }
    }

    /// A VNNI operand from the rows of an fp32 tile: rows 2r and 2r + 1
    /// interleaved into `target` [(rows + 1)/2][width][2] bf16; an odd last
    /// row is paired with zeros. `width` a multiple of the lanes.
    @inline(never)
    public static func interleaveRowPairs(_ source: UnsafePointer<Float>, ld: Int, rows: Int, width: Int,
                                          into target: UnsafeMutableRawPointer) {
        let w = Lanes.scalarCount
        var r = 0
        while r < rows {
            let a = source + r * ld
            let t = target + (r / 2) * width * 4
            var j = 0
            if r + 1 < rows {
                let b = a + ld
                while j < width { store(pairBF16(load(a + j), load(b + j)), t + j * 4); j += w }
            } else {
                while j < width { store(pairBF16(load(a + j), Lanes()), t + j * 4); j += w }
            }
            r += 2
        }
    }

    /// A VNNI operand over the rows of a block (keys × d, rows at leading
    /// dimension `ld`): `rows` ≤ `tile` rows of one tile, pairs permuted as
    /// the plain operand's columns (pair g·16 + i = rows g·32 + i and
    /// g·32 + 16 + i), rows past `rows` zero; into `target` [tile/2][d][2].
    /// `tile` a multiple of `group`.
    @inline(never)
    public static func interleavePermuted(_ source: UnsafePointer<Float>, ld: Int, rows: Int, tile: Int, headDim d: Int,
                                          into target: UnsafeMutableRawPointer) {
        let w = Lanes.scalarCount
        let half = Lanes.scalarCount
        for pair in 0..<(tile / 2) {
            let rowA = pair / half * 2 * half + pair % half, rowB = rowA + half
            let t = target + pair * d * 4
            let a: UnsafePointer<Float>? = rowA < rows ? source + rowA * ld : nil
            let b: UnsafePointer<Float>? = rowB < rows ? source + rowB * ld : nil
            var c = 0
            while c + w <= d {
                store(pairBF16(a.map { load($0 + c) } ?? Lanes(), b.map { load($0 + c) } ?? Lanes()), t + c * 4)
                c += w
            }
            while c < d {
                let word = pairBF16(Lanes(repeating: a?[c] ?? 0), Lanes(repeating: b?[c] ?? 0))[0]
                (t + c * 4).storeBytes(of: word, as: UInt32.self)
                c += 1
            }
        }
    }
}
