import LocalAttention

/// BURST_PATTERN_ULYSSES (DeepSpeed-Ulysses): an all-to-all trades the
/// sequence split for a head split, every rank runs full-sequence attention
/// for heads/P heads, and a second all-to-all brings the output back.
///
/// STUB: to be written (issue 7).
extension AttentionPlan {
    /// Why ULYSSES cannot run this shape on `ranks` ranks (UNSUPPORTED naming
    /// the condition), or nil. Checked at plan creation, identically on every rank.
    static func ulyssesUnsupported(_ config: AttentionConfig, ranks: Int) -> BurstError? {
        nil
    }

    func prepareUlysses(backward: Bool) -> BurstError? {
        BurstError(.unsupported, "BURST_PATTERN_ULYSSES is not implemented yet")
    }

    func ulyssesForward(q: UnsafePointer<Float>?, k: UnsafePointer<Float>?, v: UnsafePointer<Float>?,
                        out: UnsafeMutablePointer<Float>?, lse: UnsafeMutablePointer<Float>?,
                        stats: inout CallStats, deadline: Deadline) throws {
        throw BurstError(.unsupported, "BURST_PATTERN_ULYSSES is not implemented yet")
    }

    func ulyssesBackward(q: UnsafePointer<Float>?, k: UnsafePointer<Float>?, v: UnsafePointer<Float>?,
                         out: UnsafePointer<Float>?, lse: UnsafePointer<Float>?, dout: UnsafePointer<Float>?,
                         dq: UnsafeMutablePointer<Float>?, dk: UnsafeMutablePointer<Float>?, dv: UnsafeMutablePointer<Float>?,
                         stats: inout CallStats, deadline: Deadline) throws {
        throw BurstError(.unsupported, "BURST_PATTERN_ULYSSES is not implemented yet")
    }
}
