import RowKernelsAVX2
import RowKernelsAVX512

/// The element type of the caller's q, k, v, out, dout, dq, dk, dv buffers
/// (BURST_DTYPE_*). lse and every accumulation stay fp32 whatever it is.
public enum StorageType: Int32, Sendable, CaseIterable {
    /// IEEE binary32.
    case f32 = 0
    /// bfloat16: the top 16 bits of an fp32 (8 exponent bits, 7 fraction bits).
    case bf16 = 1
    /// IEEE binary16 (5 exponent bits, 10 fraction bits).
    case f16 = 2

    /// Bytes per element.
    public var bytes: Int { self == .f32 ? 4 : 2 }
    public var cName: String { ["BURST_DTYPE_F32", "BURST_DTYPE_BF16", "BURST_DTYPE_F16"][Int(rawValue)] }
    /// The unit roundoff u of the type: |round(x) − x| ≤ u·|x| for x in its
    /// normal range (2^-24, 2^-8, 2^-11).
    public var unitRoundoff: Double { [0x1p-24, 0x1p-8, 0x1p-11][Int(rawValue)] }
}

/// Conversions between fp32 and the half storage types. Widening is exact;
/// narrowing rounds once, to nearest with ties to even; NaN stays NaN
/// (quieted, top payload bits kept), fp16 overflow gives ±inf, subnormals
/// are converted exactly / rounded correctly.
///
/// Three code paths give the same bits: the portable scalar code below (the
/// reference), and the vector code of RowKernelsAVX2 (AVX2 + F16C) and
/// RowKernelsAVX512 (AVX-512F), picked at run time like the row kernels
/// (`TileProducts.vectorLevel`: libxsmm's CPUID, and 0 — portable — under
/// `BURST_KERNELS=portable`). Every x86 CPU with AVX2 has F16C.
public enum StorageConversion {
    public enum Path: String, CaseIterable, Sendable {
        case portable, avx2, avx512
    }

    /// The path this process uses.
    public static let path: Path = [Path.portable, .avx2, .avx512][min(max(TileProducts.vectorLevel, 0), 2)]

    /// Whether `candidate` may run here (for tests that compare every path
    /// with the reference): the CPU has it and BURST_KERNELS=portable is not set.
    public static func available(_ candidate: Path) -> Bool {
        switch candidate {
        case .portable: return true
        case .avx2: return TileProducts.vectorLevel >= 1
        case .avx512: return TileProducts.vectorLevel >= 2
        }
    }

    /// target[i] = Float(source[i]) for a half type (`type` ≠ .f32).
    public static func widen(_ type: StorageType, _ source: UnsafePointer<UInt16>, into target: UnsafeMutablePointer<Float>,
                             count: Int, path: Path = path) {
        guard count > 0 else { return }
        switch (type, path) {
        case (.f16, .avx512): RowKernelsAVX512.HalfConvert.widenF16(source, target, count)
        case (.f16, .avx2): RowKernelsAVX2.HalfConvert.widenF16(source, target, count)
        case (.bf16, .avx512): RowKernelsAVX512.HalfConvert.widenBF16(source, target, count)
        case (.bf16, .avx2): RowKernelsAVX2.HalfConvert.widenBF16(source, target, count)
        case (.f16, .portable): for i in 0..<count { target[i] = f16ToFloat(source[i]) }
        case (.bf16, .portable): for i in 0..<count { target[i] = bf16ToFloat(source[i]) }
        case (.f32, _): preconditionFailure("widen: f32 is not a half type")
        }
    }

    /// target[i] = source[i] rounded to a half type (`type` ≠ .f32).
    public static func narrow(_ type: StorageType, _ source: UnsafePointer<Float>, into target: UnsafeMutablePointer<UInt16>,
                              count: Int, path: Path = path) {
        guard count > 0 else { return }
        switch (type, path) {
        case (.f16, .avx512): RowKernelsAVX512.HalfConvert.narrowF16(source, target, count)
        case (.f16, .avx2): RowKernelsAVX2.HalfConvert.narrowF16(source, target, count)
        case (.bf16, .avx512): RowKernelsAVX512.HalfConvert.narrowBF16(source, target, count)
        case (.bf16, .avx2): RowKernelsAVX2.HalfConvert.narrowBF16(source, target, count)
        case (.f16, .portable): for i in 0..<count { target[i] = floatToF16(source[i]) }
        case (.bf16, .portable): for i in 0..<count { target[i] = floatToBF16(source[i]) }
        case (.f32, _): preconditionFailure("narrow: f32 is not a half type")
        }
    }

    /// Copies `count` elements of `type` into fp32 (a plain copy for f32).
    /// The pointers may be unaligned.
    public static func load(_ type: StorageType, _ source: UnsafeRawPointer, into target: UnsafeMutablePointer<Float>, count: Int) {
        guard count > 0 else { return }
        if type == .f32 {
            UnsafeMutableRawPointer(target).copyMemory(from: source, byteCount: 4 * count)
        } else {
            widen(type, source.assumingMemoryBound(to: UInt16.self), into: target, count: count)
        }
    }

    /// Writes `count` fp32 values as `type` (rounded once; a copy for f32).
    public static func store(_ type: StorageType, _ source: UnsafePointer<Float>, into target: UnsafeMutableRawPointer, count: Int) {
        guard count > 0 else { return }
        if type == .f32 {
            target.copyMemory(from: source, byteCount: 4 * count)
        } else {
            narrow(type, source, into: target.assumingMemoryBound(to: UInt16.self), count: count)
        }
    }

    // MARK: The scalar reference.

    /// bf16 → fp32: the bits shifted up; a signalling NaN is quieted.
    @inline(__always)
    public static func bf16ToFloat(_ h: UInt16) -> Float {
        var bits = UInt32(h) << 16
        if bits & 0x7FFF_FFFF > 0x7F80_0000 { bits |= 0x0040_0000 }
        return Float(bitPattern: bits)
    }

    /// fp32 → bf16, round to nearest even: adding 0x7FFF plus the lowest
    /// kept bit carries exactly when the dropped half is above (or at, for
    /// an odd kept part) the midpoint; the largest finite values carry into
    /// the exponent and give ±inf. A NaN keeps its top bits, quieted.
    @inline(__always)
    public static func floatToBF16(_ x: Float) -> UInt16 {
        let bits = x.bitPattern
        if bits & 0x7FFF_FFFF > 0x7F80_0000 { return UInt16(truncatingIfNeeded: bits >> 16) | 0x40 }
        return UInt16(truncatingIfNeeded: (bits &+ 0x7FFF &+ ((bits >> 16) & 1)) >> 16)
    }

    /// fp16 → fp32, exactly: normal numbers rebias the exponent (15 → 127),
    /// subnormals m·2^-24 are computed in fp32 (exact: m < 2^10), inf stays
    /// inf, a NaN keeps its payload in the top fraction bits and is quieted.
    @inline(__always)
    public static func f16ToFloat(_ h: UInt16) -> Float {
        let sign = UInt32(h & 0x8000) << 16, exponent = UInt32(h >> 10) & 0x1F, fraction = UInt32(h & 0x3FF)
        switch exponent {
        case 0x1F:
            return Float(bitPattern: sign | 0x7F80_0000 | fraction << 13 | (fraction != 0 ? 0x0040_0000 : 0))
        case 0:
            let magnitude = Float(fraction) * 0x1p-24
            return sign != 0 ? -magnitude : magnitude
        default:
            return Float(bitPattern: sign | (exponent + 112) << 23 | fraction << 13)
        }
    }

    /// fp32 → fp16, round to nearest even. |x| ≥ 65520 (the midpoint between
    /// 65504, the largest fp16, and 2^16) gives ±inf; normal results round
    /// the rebiased bits like bf16 (13 bits dropped; a carry into the
    /// exponent is the correct result); below 2^-14 the result is the
    /// subnormal round(|x|·2^24) (the scaling is exact; 1024 is the smallest
    /// normal, which is the right carry); a NaN keeps its top payload bits,
    /// quieted (as vcvtps2ph does).
    @inline(__always)
    public static func floatToF16(_ x: Float) -> UInt16 {
        let bits = x.bitPattern
        let sign = UInt16(truncatingIfNeeded: bits >> 16) & 0x8000
        let magnitude = bits & 0x7FFF_FFFF
        if magnitude > 0x7F80_0000 { return sign | 0x7E00 | UInt16(truncatingIfNeeded: (magnitude >> 13) & 0x3FF) }
        if magnitude >= 0x477F_F000 { return sign | 0x7C00 }
        if magnitude >= 0x3880_0000 {
            let rebiased = magnitude &- (112 << 23)
            return sign | UInt16(truncatingIfNeeded: (rebiased &+ 0xFFF &+ ((rebiased >> 13) & 1)) >> 13)
        }
        let scaled = (Float(bitPattern: magnitude) * 0x1p24).rounded(.toNearestOrEven)
        return sign | UInt16(scaled)
    }
}
