import Foundation
import XCTest
@testable import LocalAttention

/// Every conversion path gives the scalar reference's bits, and the scalar
/// reference is right (checked against the standard library's Float16 and
/// against the definitions of bf16 rounding).
final class StorageConversionTests: XCTestCase {
    /// Every vector path this CPU has (the portable one is the reference).
    var vectorPaths: [StorageConversion.Path] {
        StorageConversion.Path.allCases.filter { $0 != .portable && StorageConversion.available($0) }
    }

    func testPathInUse() {
        // This test machine kind has AVX2 (and so F16C); AVX-512 where the CPU has it.
        XCTAssertTrue(StorageConversion.available(StorageConversion.path))
        print("storage conversion path: \(StorageConversion.path); vector paths tested: \(vectorPaths)")
    }

    /// Half → fp32 over all 65536 bit patterns, every path, bit for bit.
    func testWidenAllPatterns() {
        let all = (0...0xFFFF).map { UInt16($0) }
        for type in [StorageType.bf16, .f16] {
            let reference = all.map { type == .bf16 ? StorageConversion.bf16ToFloat($0) : StorageConversion.f16ToFloat($0) }
            for path in StorageConversion.Path.allCases where StorageConversion.available(path) {
                // Odd offsets and lengths exercise the vector tails.
                for (start, count) in [(0, all.count), (3, 1001), (65535, 1), (17, 7)] {
                    var got = [Float](repeating: .nan, count: count)
                    all.withUnsafeBufferPointer { s in got.withUnsafeMutableBufferPointer { d in
                        StorageConversion.widen(type, s.baseAddress! + start, into: d.baseAddress!, count: count, path: path)
                    } }
                    for i in 0..<count where got[i].bitPattern != reference[start + i].bitPattern {
                        XCTFail("\(type) \(path): widen(0x\(String(all[start + i], radix: 16))) = 0x\(String(got[i].bitPattern, radix: 16)), reference 0x\(String(reference[start + i].bitPattern, radix: 16))")
                        break
                    }
                }
            }
            // The reference: exact values and quiet NaNs.
            for h in all {
                let x = type == .bf16 ? StorageConversion.bf16ToFloat(h) : StorageConversion.f16ToFloat(h)
                if type == .f16 {
                    let expected = Float(Float16(bitPattern: h))
                    if expected.isNaN {
                        XCTAssertTrue(x.isNaN && x.bitPattern & 0x0040_0000 != 0, "f16 NaN 0x\(String(h, radix: 16)) not a quiet NaN")
                    } else {
                        XCTAssertEqual(x.bitPattern, expected.bitPattern, "f16 0x\(String(h, radix: 16))")
                    }
                } else if x.isNaN {
                    XCTAssertTrue(x.bitPattern & 0x0040_0000 != 0, "bf16 NaN 0x\(String(h, radix: 16)) not quiet")
                } else {
                    XCTAssertEqual(x.bitPattern, UInt32(h) << 16)
                }
            }
        }
    }

    /// fp32 values that probe every rounding case: for every exponent and
    /// sign and a spread of kept fractions, the dropped part at 0, just
    /// above 0, just below, at and just above the midpoint (ties), and all
    /// ones; plus zeros, infinities, NaNs (quiet and signalling), the
    /// overflow edge of fp16, fp32 subnormals and a pseudo-random sample.
    func probes(droppedBits: Int) -> [Float] {
        let dropped = UInt32(1) << UInt32(droppedBits), half = dropped / 2
        let lows: [UInt32] = [0, 1, half - 1, half, half + 1, dropped - 1]
        var values: [UInt32] = []
        let keptFractionBits = 23 - droppedBits
        let keptSamples: [UInt32] = [0, 1, 2, 3, (1 << keptFractionBits) - 2, (1 << keptFractionBits) - 1, 0x2A & ((1 << keptFractionBits) - 1)]
        for sign: UInt32 in [0, 0x8000_0000] {
            for exponent: UInt32 in 0...255 {
                for kept in keptSamples {
                    for low in lows {
                        values.append(sign | exponent << 23 | kept << UInt32(droppedBits) | low)
                    }
                }
            }
        }
        values += [0x7F80_0001, 0x7FBF_FFFF, 0x7FC0_0000, 0xFFC0_1234, 0x7F80_2000, 0x477F_E000, 0x477F_EFFF, 0x477F_F000,
                   0x477F_F001, 0x4780_0000, 0x3880_0000, 0x387F_FFFF, 0x3300_0000, 0x3300_0001, 0x32FF_FFFF, 0x3380_0000,
                   0x0000_0001, 0x007F_FFFF, 0x8000_0001]
        var state: UInt64 = 0x1234_5678_9ABC_DEF0
        for _ in 0..<200_000 {
            state = state &* 6364136223846793005 &+ 1442695040888963407
            values.append(UInt32(truncatingIfNeeded: state >> 32))
        }
        return values.map { Float(bitPattern: $0) }
    }

    func testNarrowEveryPathMatchesReference() {
        for type in [StorageType.bf16, .f16] {
            let values = probes(droppedBits: type == .bf16 ? 16 : 13)
            let reference = values.map { type == .bf16 ? StorageConversion.floatToBF16($0) : StorageConversion.floatToF16($0) }
            // Every x86-64 CPU these tests run on has AVX2 + F16C; under
            // BURST_KERNELS=portable only the portable path may run.
            let forcedPortable = ProcessInfo.processInfo.environment["BURST_KERNELS"] == "portable"
            XCTAssertTrue(forcedPortable || !vectorPaths.isEmpty, "no vector path to compare on this CPU")
            XCTAssertEqual(forcedPortable, StorageConversion.path == .portable)
            for path in vectorPaths {
                for (start, count) in [(0, values.count), (5, 999), (values.count - 3, 3)] {
                    var got = [UInt16](repeating: 0xDEAD, count: count)
                    values.withUnsafeBufferPointer { s in got.withUnsafeMutableBufferPointer { d in
                        StorageConversion.narrow(type, s.baseAddress! + start, into: d.baseAddress!, count: count, path: path)
                    } }
                    var failures = 0
                    for i in 0..<count where got[i] != reference[start + i] {
                        failures += 1
                        if failures <= 5 {
                            XCTFail("\(type) \(path): narrow(0x\(String(values[start + i].bitPattern, radix: 16))) = 0x\(String(got[i], radix: 16)), reference 0x\(String(reference[start + i], radix: 16))")
                        }
                    }
                }
            }
        }
    }

    /// The scalar reference against independent definitions: fp16 against
    /// the standard library's Float16(Float) (IEEE round to nearest even),
    /// bf16 against rounding by exact arithmetic on the dropped bits.
    func testNarrowReferenceIsCorrect() {
        for x in probes(droppedBits: 13) {
            let got = StorageConversion.floatToF16(x)
            if x.isNaN {
                XCTAssertEqual(got & 0x7E00, 0x7E00, "f16 NaN 0x\(String(x.bitPattern, radix: 16)) must give a quiet NaN")
                continue
            }
            XCTAssertEqual(got, Float16(x).bitPattern, "f16 of 0x\(String(x.bitPattern, radix: 16))")
        }
        for x in probes(droppedBits: 16) {
            let got = StorageConversion.floatToBF16(x)
            let bits = x.bitPattern
            if x.isNaN {
                XCTAssertTrue(StorageConversion.bf16ToFloat(got).isNaN && got & 0x40 != 0)
                continue
            }
            // Nearest of the two neighbours (truncated, truncated + 1 ulp), ties to the even one.
            let down = UInt16(bits >> 16), low = bits & 0xFFFF
            let expected: UInt16 = low > 0x8000 || (low == 0x8000 && down & 1 == 1) ? down &+ 1 : down
            XCTAssertEqual(got, expected, "bf16 of 0x\(String(bits, radix: 16))")
        }
        // Spot values.
        XCTAssertEqual(StorageConversion.floatToF16(65504), 0x7BFF)
        XCTAssertEqual(StorageConversion.floatToF16(65519.99), 0x7BFF)
        XCTAssertEqual(StorageConversion.floatToF16(65520), 0x7C00)
        XCTAssertEqual(StorageConversion.floatToF16(-1e6), 0xFC00)
        XCTAssertEqual(StorageConversion.floatToF16(0x1p-24), 0x0001)
        XCTAssertEqual(StorageConversion.floatToF16(0x1p-25), 0x0000)          // tie to even (0)
        XCTAssertEqual(StorageConversion.floatToF16(0x1.8p-24), 0x0002)        // tie to even (2)
        XCTAssertEqual(StorageConversion.floatToBF16(Float.greatestFiniteMagnitude), 0x7F80)
        XCTAssertEqual(StorageConversion.floatToBF16(1 + 0x1p-8), 0x3F80)      // tie to even
        XCTAssertEqual(StorageConversion.floatToBF16(1 + 0x1.8p-7), 0x3F82)    // tie to even (up)
    }
}
