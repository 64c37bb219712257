// RowKernels for AVX2 + FMA (this module is compiled with -target-cpu haswell).
typealias Lanes = SIMD8<Float>
typealias LaneBits = SIMD8<UInt32>
typealias LaneInts = SIMD8<Int32>

/// a·b + c with one rounding (vfmadd).
@inline(__always)
func fused(_ a: Lanes, _ b: Lanes, _ c: Lanes) -> Lanes { c.addingProduct(a, b) }
