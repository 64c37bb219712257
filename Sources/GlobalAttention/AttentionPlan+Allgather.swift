import LocalAttention

/// BURST_PATTERN_ALLGATHER (Megatron / Llama-3 context parallelism): every
/// rank gathers every rank's K,V, computes its queries against the whole
/// sequence, and the backward reduce-scatters dK, dV to their owners.
///
/// STUB: to be written (issue 7).
extension AttentionPlan {
    /// Allocates the pattern's workspace for a forward or backward call, or
    /// says why it cannot.
    func prepareAllgather(backward: Bool) -> BurstError? {
        BurstError(.unsupported, "BURST_PATTERN_ALLGATHER is not implemented yet")
    }

    func allgatherForward(q: UnsafePointer<Float>?, k: UnsafePointer<Float>?, v: UnsafePointer<Float>?,
                          out: UnsafeMutablePointer<Float>?, lse: UnsafeMutablePointer<Float>?,
                          stats: inout CallStats, deadline: Deadline) throws {
        throw BurstError(.unsupported, "BURST_PATTERN_ALLGATHER is not implemented yet")
    }

    func allgatherBackward(q: UnsafePointer<Float>?, k: UnsafePointer<Float>?, v: UnsafePointer<Float>?,
                           out: UnsafePointer<Float>?, lse: UnsafePointer<Float>?, dout: UnsafePointer<Float>?,
                           dq: UnsafeMutablePointer<Float>?, dk: UnsafeMutablePointer<Float>?, dv: UnsafeMutablePointer<Float>?,
                           stats: inout CallStats, deadline: Deadline) throws {
        throw BurstError(.unsupported, "BURST_PATTERN_ALLGATHER is not implemented yet")
    }
}
