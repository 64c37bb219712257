// RowKernels (RowKernels.swift, shared with the ISA modules) for baseline
// x86-64: no FMA instruction is assumed, so `fused` is a multiply and an add
// (an FMA here would become a slow library call).
typealias Lanes = SIMD8<Float>
typealias LaneBits = SIMD8<UInt32>
typealias LaneInts = SIMD8<Int32>

@inline(__always)
func fused(_ a: Lanes, _ b: Lanes, _ c: Lanes) -> Lanes { a * b + c }
