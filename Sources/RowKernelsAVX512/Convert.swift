// Storage-type conversions (bf16, fp16 <-> fp32), written once over the
// module's vector types (`Lanes`, `LaneBits` from Lanes.swift; `HalfLanes`,
// `HalfBits` from ConvertLanes.swift) and compiled twice: in
// RowKernelsAVX512 (16 lanes, AVX-512F) and RowKernelsAVX2 (8 lanes,
// AVX2 + F16C). This file is the one copy; RowKernelsAVX2/Convert.swift is a
// symbolic link to it. LocalAttention's Convert.swift holds the portable
// scalar reference every path must match bit for bit, and picks the path
// at run time.
//
// fp16 uses the hardware conversions (Swift's Float16 vector conversions
// lower to vcvtph2ps / vcvtps2ph with round-to-nearest-even under the
// default MXCSR): exact widening, one rounding when narrowing, NaN stays a
// quiet NaN (payload kept in the top bits), overflow gives ±inf,
// subnormals are handled by the instruction. bf16 is integer arithmetic on
// the fp32 bits: widening is a 16-bit shift (a signalling NaN is quieted),
// narrowing adds 0x7FFF plus the lowest kept bit (round to nearest, ties to
// even; overflow carries into ±inf) and keeps the top half; a NaN keeps its
// top bits and is quieted.

@inline(__always)
private func loadHalfBits(_ p: UnsafePointer<UInt16>, _ count: Int) -> HalfBits {
    if count == HalfBits.scalarCount { return UnsafeRawPointer(p).loadUnaligned(as: HalfBits.self) }
    var v = HalfBits(repeating: 0)
    for i in 0..<count { v[i] = p[i] }
    return v
}

@inline(__always)
private func storeHalfBits(_ v: HalfBits, _ p: UnsafeMutablePointer<UInt16>, _ count: Int) {
    if count == HalfBits.scalarCount { UnsafeMutableRawPointer(p).storeBytes(of: v, as: HalfBits.self); return }
    for i in 0..<count { p[i] = v[i] }
}

@inline(__always)
private func loadFloats(_ p: UnsafePointer<Float>, _ count: Int) -> Lanes {
    if count == Lanes.scalarCount { return UnsafeRawPointer(p).loadUnaligned(as: Lanes.self) }
    var v = Lanes(repeating: 0)
    for i in 0..<count { v[i] = p[i] }
    return v
}

@inline(__always)
private func storeFloats(_ v: Lanes, _ p: UnsafeMutablePointer<Float>, _ count: Int) {
    if count == Lanes.scalarCount { UnsafeMutableRawPointer(p).storeBytes(of: v, as: Lanes.self); return }
    for i in 0..<count { p[i] = v[i] }
}

public enum HalfConvert {
    /// d[i] = Float(fp16 bits s[i]), exactly.
    @inline(never)
    public static func widenF16(_ s: UnsafePointer<UInt16>, _ d: UnsafeMutablePointer<Float>, _ n: Int) {
        let w = Lanes.scalarCount
        var i = 0
        while i < n {
            let c = min(w, n - i)
            let h = unsafeBitCast(loadHalfBits(s + i, c), to: HalfLanes.self)
            storeFloats(Lanes(h), d + i, c)
            i += w
        }
    }

    /// d[i] = fp16 bits of s[i], rounded to nearest even.
    @inline(never)
    public static func narrowF16(_ s: UnsafePointer<Float>, _ d: UnsafeMutablePointer<UInt16>, _ n: Int) {
        let w = Lanes.scalarCount
        var i = 0
        while i < n {
            let c = min(w, n - i)
            let h = HalfLanes(loadFloats(s + i, c))
            storeHalfBits(unsafeBitCast(h, to: HalfBits.self), d + i, c)
            i += w
        }
    }

    /// d[i] = Float(bf16 bits s[i]), exactly (bits << 16; a NaN is quieted).
    /// A plain loop: LLVM vectorises it for the module's ISA (zero-extending
    /// loads, shifts, a compare and a blend), which the SIMD-type spelling
    /// of the UInt16 → UInt32 widening did not (it went through the stack).
    @inline(never)
    public static func widenBF16(_ s: UnsafePointer<UInt16>, _ d: UnsafeMutablePointer<Float>, _ n: Int) {
        for i in 0..<n {
            let bits = UInt32(s[i]) << 16
            let nan = bits & 0x7FFF_FFFF > 0x7F80_0000
            d[i] = Float(bitPattern: nan ? bits | 0x0040_0000 : bits)
        }
    }

    /// d[i] = bf16 bits of s[i], rounded to nearest even (a NaN is quieted).
    @inline(never)
    public static func narrowBF16(_ s: UnsafePointer<Float>, _ d: UnsafeMutablePointer<UInt16>, _ n: Int) {
        for i in 0..<n {
            let bits = s[i].bitPattern
            let rounded = (bits &+ 0x7FFF &+ ((bits >> 16) & 1)) >> 16
            let nan = bits & 0x7FFF_FFFF > 0x7F80_0000
            d[i] = UInt16(truncatingIfNeeded: nan ? (bits >> 16) | 0x40 : rounded)
        }
    }
}
