/// A schedule of burst_forward and burst_backward: the ring (`RingSchedule`:
/// BURST and RING, single or double), `AllgatherSchedule`, `UlyssesSchedule`.
/// The plan picks one at creation from its pattern and hands it the
/// `ScheduleEnvironment` (shape, tokens, transport, threads); the schedule
/// owns its workspace and kernels.
///
/// A call runs in two parts, around the plan's agreement round:
/// - `prepareForward` / `prepareBackward` run inside the local check, after
///   the argument checks: they allocate what the call needs (once; kept for
///   later calls) or say why they cannot, so a rank that cannot go on makes
///   every rank return its error instead of leaving them in a collective.
/// - `forward` / `backward` run after every rank agreed to go on: the
///   collective itself, with the caller's pointers (nil only where this
///   rank's tensor is empty, as the plan checked), counting into `stats`
///   and giving up at `deadline`.
protocol TrainingSchedule: Schedule {
    func prepareForward() -> BurstError?
    func prepareBackward() -> BurstError?

    func forward(q: UnsafeRawPointer?, k: UnsafeRawPointer?, v: UnsafeRawPointer?,
                 out: UnsafeMutableRawPointer?, lse: UnsafeMutablePointer<Float>?,
                 stats: inout CallStats, deadline: Deadline) throws

    func backward(q: UnsafeRawPointer?, k: UnsafeRawPointer?, v: UnsafeRawPointer?,
                  out: UnsafeRawPointer?, lse: UnsafePointer<Float>?, dout: UnsafeRawPointer?,
                  dq: UnsafeMutableRawPointer?, dk: UnsafeMutableRawPointer?, dv: UnsafeMutableRawPointer?,
                  stats: inout CallStats, deadline: Deadline) throws
}

/// Runs the allocations of a prepare step and returns what they throw as
/// the error the local check reports (nil when all went well).
func preparing(_ allocations: () throws -> Void) -> BurstError? {
    do {
        try allocations()
        return nil
    } catch let error as BurstError {
        return error
    } catch {
        return BurstError(.internalError, "\(error)")
    }
}
