import Foundation

/// Float64 reference attention over the whole sequence, canonical layout
/// [Z, N, d] (Z = batch·heads). The oracle the tests compare against.
struct ReferenceAttention {
    let z: Int, n: Int, d: Int
    let scale: Double
    let causal: Bool

    func visible(_ i: Int, _ j: Int) -> Bool { !causal || j <= i }

    /// out [Z, N, d], lse [Z, N] (-inf for rows that see nothing).
    func forward(q: [Double], k: [Double], v: [Double]) -> (out: [Double], lse: [Double]) {
        var out = [Double](repeating: 0, count: z * n * d)
        var lse = [Double](repeating: -.infinity, count: z * n)
        var s = [Double](repeating: 0, count: n)
        for h in 0..<z {
            let base = h * n * d
            for i in 0..<n {
                var m = -Double.infinity
                for j in 0..<n where visible(i, j) {
                    var dot = 0.0
                    for c in 0..<d { dot += q[base + i * d + c] * k[base + j * d + c] }
                    s[j] = dot * scale
                    m = max(m, s[j])
                }
                if m == -.infinity { continue }
                var l = 0.0
                for j in 0..<n where visible(i, j) { s[j] = exp(s[j] - m); l += s[j] }
                for j in 0..<n where visible(i, j) {
                    let w = s[j] / l
                    for c in 0..<d { out[base + i * d + c] += w * v[base + j * d + c] }
                }
                lse[h * n + i] = m + log(l)
            }
        }
        return (out, lse)
    }

    func backward(q: [Double], k: [Double], v: [Double], out: [Double], lse: [Double], dout: [Double])
        -> (dq: [Double], dk: [Double], dv: [Double]) {
        var dq = [Double](repeating: 0, count: z * n * d)
        var dk = dq, dv = dq
        for h in 0..<z {
            let base = h * n * d
            for i in 0..<n {
                let rowLse = lse[h * n + i]
                if rowLse == -.infinity { continue }
                var delta = 0.0
                for c in 0..<d { delta += dout[base + i * d + c] * out[base + i * d + c] }
                for j in 0..<n where visible(i, j) {
                    var dot = 0.0, dp = 0.0
                    for c in 0..<d {
                        dot += q[base + i * d + c] * k[base + j * d + c]
                        dp += dout[base + i * d + c] * v[base + j * d + c]
                    }
                    let p = exp(dot * scale - rowLse)
                    let ds = p * (dp - delta) * scale
                    for c in 0..<d {
                        dv[base + j * d + c] += p * dout[base + i * d + c]
                        dk[base + j * d + c] += ds * q[base + i * d + c]
                        dq[base + i * d + c] += ds * k[base + j * d + c]
                    }
                }
            }
        }
        return (dq, dk, dv)
    }
}

/// Deterministic inputs in [-1, 1): a splitmix64 stream.
func randomTensor(_ count: Int, seed: UInt64) -> [Double] {
    var state = seed &* 0x9E37_79B9_7F4A_7C15 &+ 0x1234_5678
    return (0..<count).map { _ in
        state &+= 0x9E37_79B9_7F4A_7C15
        var x = state
        x = (x ^ (x >> 30)) &* 0xBF58_476D_1CE4_E5B9
        x = (x ^ (x >> 27)) &* 0x94D0_49BB_1331_11EB
        x ^= x >> 31
        return Double(x >> 11) / Double(1 << 53) * 2 - 1
    }
}

func maxAbs(_ x: [Double]) -> Double { x.reduce(0) { max($0, abs($1)) } }
