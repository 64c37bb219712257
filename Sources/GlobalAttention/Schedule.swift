/// A way of computing attention over the ranks of a transport: the ring
/// (BURST, RING; single or double), ALLGATHER, ULYSSES, and decode over a KV
/// cache. Each schedule is a type of its own, in a file named for it, and
/// owns its workspace; the object that drives it (a plan, a KV cache) keeps
/// only what every collective call shares (`CollectiveGuard`: busy guard,
/// agreement, poisoning, stats).
public protocol Schedule: AnyObject {
    /// Bytes of workspace the schedule holds now (its buffers and kernels'
    /// scratch), beyond the caller's tensors.
    var workspaceBytes: Int { get }
}
