// The half-precision vectors of Convert.swift for AVX-512: 16 lanes, the
// width of `Lanes` (Lanes.swift).
typealias HalfLanes = SIMD16<Float16>
typealias HalfBits = SIMD16<UInt16>
