// RowKernels for AVX-512 (this module is compiled with -target-cpu skylake-avx512).
typealias Lanes = SIMD16<Float>
typealias LaneBits = SIMD16<UInt32>
typealias LaneInts = SIMD16<Int32>

/// a·b + c with one rounding (vfmadd).
@inline(__always)
func fused(_ a: Lanes, _ b: Lanes, _ c: Lanes) -> Lanes { c.addingProduct(a, b) }
