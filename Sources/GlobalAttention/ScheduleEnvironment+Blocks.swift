import LocalAttention

/// The LAO calls every pattern makes: one block of queries (with their key
/// bounds) against one block of keys (with their positions), timed into
/// `stats.computeSeconds` and counted into the tile stats.
extension ScheduleEnvironment {
    /// Folds a K,V block into the running softmax state of the queries.
    func foldBlock(_ kernels: LocalAttention, queryHeads zq: Int, q: UnsafePointer<Float>, rows: Int,
                   lo: [Int], hi: [Int], k: UnsafePointer<Float>, v: UnsafePointer<Float>,
                   keyRows: Int, keyPositions: [Int], acc: UnsafeMutablePointer<Float>,
                   rowMax: UnsafeMutablePointer<Float>, rowSum: UnsafeMutablePointer<Float>, stats: inout CallStats) {
        let tiles = timed(&stats.computeSeconds) {
            lo.withUnsafeBufferPointer { lo in hi.withUnsafeBufferPointer { hi in keyPositions.withUnsafeBufferPointer { keys in
                kernels.forwardAccumulate(queryHeads: zq, group: group, q: q, queryRows: rows,
                                          queryLo: lo.baseAddress!, queryHi: hi.baseAddress!, k: k, v: v,
                                          keyRows: keyRows, keyPositions: keys.baseAddress!,
                                          acc: acc, rowMax: rowMax, rowSum: rowSum)
            } } }
        }
        stats.add(tiles)
    }

    /// Adds a (query block, key block) pair's contribution to dQ, dK, dV.
    /// `bundle` is [Q | dO | D | lse] of the `rows` queries.
    func gradientBlock(_ kernels: LocalAttention, queryHeads zq: Int, bundle: UnsafePointer<Float>,
                       dq: UnsafeMutablePointer<Float>, rows: Int, lo: [Int], hi: [Int],
                       k: UnsafePointer<Float>, v: UnsafePointer<Float>,
                       dk: UnsafeMutablePointer<Float>, dv: UnsafeMutablePointer<Float>,
                       keyRows: Int, keyPositions: [Int], keyPanelsReady: Bool = false, stats: inout CallStats) {
        let d = headDim, m = rows
        gradientBlock(kernels, queryHeads: zq, q: bundle, dOut: bundle + zq * m * d, delta: bundle + 2 * zq * m * d,
                      lse: bundle + 2 * zq * m * d + zq * m, dq: dq, rows: rows, lo: lo, hi: hi, k: k, v: v,
                      dk: dk, dv: dv, keyRows: keyRows, keyPositions: keyPositions, keyPanelsReady: keyPanelsReady,
                      stats: &stats)
    }

    /// The same with q, dO, D and lse in separate buffers.
    func gradientBlock(_ kernels: LocalAttention, queryHeads zq: Int, q: UnsafePointer<Float>, dOut: UnsafePointer<Float>,
                       delta: UnsafePointer<Float>, lse: UnsafePointer<Float>,
                       dq: UnsafeMutablePointer<Float>, rows: Int, lo: [Int], hi: [Int],
                       k: UnsafePointer<Float>, v: UnsafePointer<Float>,
                       dk: UnsafeMutablePointer<Float>, dv: UnsafeMutablePointer<Float>,
                       keyRows: Int, keyPositions: [Int], keyPanelsReady: Bool = false, stats: inout CallStats) {
        let tiles = timed(&stats.computeSeconds) {
            lo.withUnsafeBufferPointer { lo in hi.withUnsafeBufferPointer { hi in keyPositions.withUnsafeBufferPointer { keys in
                kernels.backwardAccumulate(keyPanelsReady: keyPanelsReady, queryHeads: zq, group: group,
                                           q: q, dOut: dOut, delta: delta, lse: lse, dq: dq, queryRows: rows,
                                           queryLo: lo.baseAddress!, queryHi: hi.baseAddress!, k: k, v: v,
                                           dk: dk, dv: dv, keyRows: keyRows, keyPositions: keys.baseAddress!)
            } } }
        }
        stats.add(tiles)
    }

    /// The end of a forward on this rank's n rows: O = acc / l in place,
    /// lse = m + ln l, then O back to the caller's layout and storage type
    /// (rounded once).
    func finishRows(acc: UnsafeMutablePointer<Float>, rowMax: UnsafePointer<Float>, rowSum: UnsafePointer<Float>,
                    out: UnsafeMutableRawPointer?, lse: UnsafeMutablePointer<Float>?, stats: inout CallStats) {
        let n = localRows
        timed(&stats.computeSeconds) {
            LocalAttention.finishForward(heads: zHeads, rows: n, headDim: headDim, acc: acc, rowMax: rowMax, rowSum: rowSum,
                                         out: acc, lse: lse)
        }
        if n > 0, let out {
            unpack(acc, heads: heads, into: out, pool: pool)
        }
    }
}
