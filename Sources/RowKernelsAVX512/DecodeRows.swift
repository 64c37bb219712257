// Decode's products over a bf16 KV cache, fused with the widening: written
// once over `Lanes` / `LaneBits` and compiled three times like RowKernels.swift
// (this file is the one copy; RowKernelsAVX2/DecodeRows.swift and
// LocalAttention/DecodeRows.swift are symbolic links to it).
//
// Why: a decode step reads every stored key and value once and does only
// 2·(rows) FLOPs per element, so it must run at the memory's pace. Widening
// a bf16 tile into scratch and then running a JIT product on it costs as
// much as the read itself; here each vector load of 2·L bf16 values is
// widened in registers and used at once.
//
// The layout that makes the widening free: bf16 values are stored in "pair
// groups" of 2·L (L = lanes): word w of a group (32 bits) holds element w in
// its low half and element w + L in its high half. A vector of L words then
// widens to elements 0..<L by a shift (`w << 16`) and to L..<2L by a mask
// (`w & 0xFFFF0000`) — exact fp32 values, in their natural order. Keys are
// grouped along the keys of a transposed tile, values along head_dim.
//
// Prefetch: each iteration of the scores asks for the line `ahead` bytes past
// the one it reads (the same row of a later key tile) and for one line of the
// value rows of its own tile (a tile of n keys has n·d·2/64 lines of values,
// no more than its n/(2·L)·d iterations), so memory works while the FMAs run and the
// values are in cache when their pass starts (measured, 65K tokens, 1 thread:
// 23 ms without prefetch, 14 with the keys', 12.7 with the values' too).
//
// Summation order: over head_dim in order (scores) and over keys in order
// (values), per lane: the same bits run after run.

import CPrefetch

public enum DecodeRows {
    /// Elements per pair group on this code path (2·L).
    public static var pairGroup: Int { 2 * Lanes.scalarCount }

    /// s[i·ld + j] = Σ_c q[i·d + c] · K[j][c] for the `tileKeys` keys of one
    /// transposed key tile (`[d][tileKeys]` bf16, pair groups along the keys;
    /// tileKeys a multiple of 2·L). Rows 4 at a time.
    @inline(never)
    public static func scoresBF16(_ q: UnsafePointer<Float>, _ rows: Int, _ d: Int,
                                  _ tile: UnsafeRawPointer, _ tileKeys: Int,
                                  _ s: UnsafeMutablePointer<Float>, _ ld: Int, _ ahead: Int,
                                  _ also: UnsafeRawPointer, _ alsoBytes: Int) {
        let l = Lanes.scalarCount, rowBytes = tileKeys * 2
        let mask = LaneBits(repeating: 0xFFFF_0000)
        var i0 = 0
        while i0 < rows {
            let q0 = q + i0 * d, q1 = q + min(i0 + 1, rows - 1) * d
            let q2 = q + min(i0 + 2, rows - 1) * d, q3 = q + min(i0 + 3, rows - 1) * d
            var group = 0
            while group * 2 * l < tileKeys {
                var lo0 = Lanes(), hi0 = Lanes(), lo1 = Lanes(), hi1 = Lanes()
                var lo2 = Lanes(), hi2 = Lanes(), lo3 = Lanes(), hi3 = Lanes()
                var p = tile + group * 4 * l
                for c in 0..<d {
                    if i0 == 0 {
                        burst_prefetch(p + ahead)
                        let line = (group * d + c) * 64   // the tile's iterations cover its value lines
                        if line < alsoBytes { burst_prefetch(also + line) }
                    }
                    let w = p.loadUnaligned(as: LaneBits.self)
                    let klo = unsafeBitCast(w &<< 16, to: Lanes.self), khi = unsafeBitCast(w & mask, to: Lanes.self)
                    let a0 = Lanes(repeating: q0[c]), a1 = Lanes(repeating: q1[c])
                    let a2 = Lanes(repeating: q2[c]), a3 = Lanes(repeating: q3[c])
                    lo0 = fused(a0, klo, lo0); hi0 = fused(a0, khi, hi0)
                    lo1 = fused(a1, klo, lo1); hi1 = fused(a1, khi, hi1)
                    lo2 = fused(a2, klo, lo2); hi2 = fused(a2, khi, hi2)
                    lo3 = fused(a3, klo, lo3); hi3 = fused(a3, khi, hi3)
                    p += rowBytes
                }
                let column = group * 2 * l
                func put(_ row: Int, _ lo: Lanes, _ hi: Lanes) {
                    guard row < rows else { return }
                    let out = UnsafeMutableRawPointer(s + row * ld + column)
                    out.storeBytes(of: lo, as: Lanes.self)
                    out.storeBytes(of: hi, toByteOffset: 4 * l, as: Lanes.self)
                }
                put(i0, lo0, hi0); put(i0 + 1, lo1, hi1); put(i0 + 2, lo2, hi2); put(i0 + 3, lo3, hi3)
                group += 1
            }
            i0 += 4
        }
    }

    /// acc[i·d + c] += Σ_{j < count} p[i·ldp + j] · V[j][c], V rows of d bf16
    /// stored in pair groups along head_dim (d a multiple of 2·L). Rows 4 at a
    /// time, one pair group of head_dim at a time (8 accumulators).
    @inline(never)
    public static func valuesBF16(_ p: UnsafePointer<Float>, _ ldp: Int, _ rows: Int, _ count: Int,
                                  _ v: UnsafeRawPointer, _ d: Int, _ acc: UnsafeMutablePointer<Float>) {
        let l = Lanes.scalarCount, rowBytes = d * 2
        let mask = LaneBits(repeating: 0xFFFF_0000)
        var i0 = 0
        while i0 < rows {
            let r1 = min(i0 + 1, rows - 1), r2 = min(i0 + 2, rows - 1), r3 = min(i0 + 3, rows - 1)
            let p0 = p + i0 * ldp, p1 = p + r1 * ldp, p2 = p + r2 * ldp, p3 = p + r3 * ldp
            var group = 0
            while group * 2 * l < d {
                let column = group * 2 * l
                func load(_ row: Int) -> (Lanes, Lanes) {
                    let a = UnsafeRawPointer(acc + row * d + column)
                    return (a.loadUnaligned(as: Lanes.self), a.loadUnaligned(fromByteOffset: 4 * l, as: Lanes.self))
                }
                var (lo0, hi0) = load(i0), (lo1, hi1) = load(r1), (lo2, hi2) = load(r2), (lo3, hi3) = load(r3)
                var x = v + group * 4 * l
                for j in 0..<count {
                    let w = x.loadUnaligned(as: LaneBits.self)
                    let vlo = unsafeBitCast(w &<< 16, to: Lanes.self), vhi = unsafeBitCast(w & mask, to: Lanes.self)
                    let a0 = Lanes(repeating: p0[j]), a1 = Lanes(repeating: p1[j])
                    let a2 = Lanes(repeating: p2[j]), a3 = Lanes(repeating: p3[j])
                    lo0 = fused(a0, vlo, lo0); hi0 = fused(a0, vhi, hi0)
                    lo1 = fused(a1, vlo, lo1); hi1 = fused(a1, vhi, hi1)
                    lo2 = fused(a2, vlo, lo2); hi2 = fused(a2, vhi, hi2)
                    lo3 = fused(a3, vlo, lo3); hi3 = fused(a3, vhi, hi3)
                    x += rowBytes
                }
                func put(_ row: Int, _ lo: Lanes, _ hi: Lanes) {
                    guard row < rows else { return }
                    let a = UnsafeMutableRawPointer(acc + row * d + column)
                    a.storeBytes(of: lo, as: Lanes.self)
                    a.storeBytes(of: hi, toByteOffset: 4 * l, as: Lanes.self)
                }
                put(i0, lo0, hi0); put(i0 + 1, lo1, hi1); put(i0 + 2, lo2, hi2); put(i0 + 3, lo3, hi3)
                group += 1
            }
            i0 += 4
        }
    }
}
