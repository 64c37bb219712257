// The half-precision vectors of Convert.swift for AVX2 + F16C: 8 lanes, the
// width of `Lanes` (Lanes.swift).
typealias HalfLanes = SIMD8<Float16>
typealias HalfBits = SIMD8<UInt16>
