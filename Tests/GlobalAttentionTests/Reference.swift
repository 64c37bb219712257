import Foundation

/// The mask written the obvious way, independent of the library's
/// `VisibilityRule`: a sequence id per position and three comparisons.
struct ReferenceMask {
    let causal: Bool
    let windowLeft: Int, windowRight: Int
    let sequenceOf: [Int]?

    init(causal: Bool, windowLeft: Int = -1, windowRight: Int = -1, cuSeqlens: [Int]? = nil, n: Int) {
        self.causal = causal
        self.windowLeft = windowLeft
        self.windowRight = windowRight
        if let cu = cuSeqlens {
            var ids = [Int](repeating: -1, count: n)
            for s in 0..<(cu.count - 1) { for t in cu[s]..<cu[s + 1] { ids[t] = s } }
            sequenceOf = ids
        } else {
            sequenceOf = nil
        }
    }

    func visible(_ i: Int, _ j: Int) -> Bool {
        if causal && j > i { return false }
        if windowLeft >= 0 && j < i - windowLeft { return false }
        if windowRight >= 0 && j > i + windowRight { return false }
        if let ids = sequenceOf, ids[i] != ids[j] { return false }
        return true
    }
}

/// Float64 reference attention over the whole sequence, canonical layout
/// [batch·heads, N, d] for q/out/dout and [batch·kvHeads, N, d] for k/v
/// (query head h of a batch reads kv head h / (heads / kvHeads)). The oracle
/// the tests compare against.
///
/// Score modifiers (header, "Score modifiers"): `softcap` c > 0 replaces
/// the scaled score x by c·tanh(x/c); `sinks` (one logit per query head of
/// a batch) adds e^(s_h) to every denominator of head h.
struct ReferenceAttention {
    let batch: Int, heads: Int, kvHeads: Int, n: Int, d: Int
    let scale: Double
    let mask: ReferenceMask
    var softcap = 0.0
    var sinks: [Double]? = nil

    init(batch: Int = 1, heads: Int, kvHeads: Int? = nil, n: Int, d: Int, scale: Double, mask: ReferenceMask) {
        self.batch = batch; self.heads = heads; self.kvHeads = kvHeads ?? heads
        self.n = n; self.d = d; self.scale = scale; self.mask = mask
    }

    /// The logit of a raw dot product (scaled, then capped).
    func logit(_ dot: Double) -> Double { softcap > 0 ? softcap * tanh(dot * scale / softcap) : dot * scale }
    /// d logit / d dot.
    func logitSlope(_ dot: Double) -> Double {
        guard softcap > 0 else { return scale }
        let t = tanh(dot * scale / softcap)
        return scale * (1 - t * t)
    }
    /// The sink of canonical query head h (-inf: none).
    func sink(_ h: Int) -> Double { sinks.map { $0[h % heads] } ?? -.infinity }

    /// MHA over z = batch·heads heads with a plain causal (or no) mask.
    init(z: Int, n: Int, d: Int, scale: Double, causal: Bool) {
        self.init(batch: 1, heads: z, n: n, d: d, scale: scale, mask: ReferenceMask(causal: causal, n: n))
    }

    func visible(_ i: Int, _ j: Int) -> Bool { mask.visible(i, j) }

    /// The kv head (canonical index) query head `h` (canonical index) reads.
    func kvHead(_ h: Int) -> Int { (h / heads) * kvHeads + (h % heads) / (heads / kvHeads) }

    /// out [Zq, N, d], lse [Zq, N] (-inf for rows that see nothing).
    func forward(q: [Double], k: [Double], v: [Double]) -> (out: [Double], lse: [Double]) {
        let z = batch * heads
        var out = [Double](repeating: 0, count: z * n * d)
        var lse = [Double](repeating: -.infinity, count: z * n)
        var s = [Double](repeating: 0, count: n)
        for h in 0..<z {
            let base = h * n * d, kvBase = kvHead(h) * n * d
            for i in 0..<n {
                var m = -Double.infinity
                for j in 0..<n where visible(i, j) {
                    var dot = 0.0
                    for c in 0..<d { dot += q[base + i * d + c] * k[kvBase + j * d + c] }
                    s[j] = logit(dot)
                    m = max(m, s[j])
                }
                let sink = sink(h)
                m = max(m, sink)
                if m == -.infinity { continue }
                var l = sink == -.infinity ? 0.0 : exp(sink - m)
                for j in 0..<n where visible(i, j) { s[j] = exp(s[j] - m); l += s[j] }
                for j in 0..<n where visible(i, j) {
                    let w = s[j] / l
                    for c in 0..<d { out[base + i * d + c] += w * v[kvBase + j * d + c] }
                }
                lse[h * n + i] = m + log(l)
            }
        }
        return (out, lse)
    }

    /// dq [Zq, N, d]; dk, dv [Zkv, N, d] (summed over the query heads of a group).
    func backward(q: [Double], k: [Double], v: [Double], out: [Double], lse: [Double], dout: [Double])
        -> (dq: [Double], dk: [Double], dv: [Double]) {
        let all = backwardWithSinks(q: q, k: k, v: v, out: out, lse: lse, dout: dout)
        return (all.dq, all.dk, all.dv)
    }

    /// `backward` and dL/d sinks ([heads], summed over batch and rows; zeros without sinks).
    func backwardWithSinks(q: [Double], k: [Double], v: [Double], out: [Double], lse: [Double], dout: [Double])
        -> (dq: [Double], dk: [Double], dv: [Double], dsinks: [Double]) {
        var dsinks = [Double](repeating: 0, count: heads)
        let z = batch * heads
        var dq = [Double](repeating: 0, count: z * n * d)
        var dk = [Double](repeating: 0, count: batch * kvHeads * n * d), dv = dk
        for h in 0..<z {
            let base = h * n * d, kvBase = kvHead(h) * n * d
            for i in 0..<n {
                let rowLse = lse[h * n + i]
                if rowLse == -.infinity { continue }
                var delta = 0.0
                for c in 0..<d { delta += dout[base + i * d + c] * out[base + i * d + c] }
                if sinks != nil { dsinks[h % heads] -= exp(sink(h) - rowLse) * delta }
                for j in 0..<n where visible(i, j) {
                    var dot = 0.0, dp = 0.0
                    for c in 0..<d {
                        dot += q[base + i * d + c] * k[kvBase + j * d + c]
                        dp += dout[base + i * d + c] * v[kvBase + j * d + c]
                    }
                    let p = exp(logit(dot) - rowLse)
                    let ds = p * (dp - delta) * logitSlope(dot)
                    for c in 0..<d {
                        dv[kvBase + j * d + c] += p * dout[base + i * d + c]
                        dk[kvBase + j * d + c] += ds * q[base + i * d + c]
                        dq[base + i * d + c] += ds * k[kvBase + j * d + c]
                    }
                }
            }
        }
        return (dq, dk, dv, dsinks)
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
