/// Point-to-point and small collective operations over a group of ranks.
///
/// The schedules (forward, backward) only talk to a `Transport`; MPI and the
/// in-process loopback are two implementations. Every blocking operation takes
/// a deadline and throws `BurstError(.timeout)` once it passes, so a missing
/// peer becomes an error instead of a hang. Failures of the underlying
/// library throw `BurstError(.communication)`.
///
/// A transport is driven by one thread at a time.
public protocol Transport: AnyObject {
    var rank: Int { get }
    var size: Int { get }
    /// The group (node) of every rank, as ids that are equal for ranks that
    /// share memory: MPI_COMM_TYPE_SHARED for MPI, the simulated network's
    /// groups for the loopback. Stats count bytes between groups apart, and
    /// `intra_group_size = 0` takes the ring's groups from it.
    var nodes: [Int] { get }

    /// Collective: a transport over the same ranks whose messages never mix
    /// with this one's (MPI_Comm_dup).
    func duplicate(deadline: Deadline) throws -> Transport

    /// Collective: every rank contributes `send.count` bytes (the same count on
    /// every rank); `receive` (size · send.count bytes) gets them in rank order.
    func allgather(_ send: UnsafeRawBufferPointer, into receive: UnsafeMutableRawBufferPointer,
                   deadline: Deadline) throws

    /// Starts non-blocking transfers. Buffers must stay valid and untouched
    /// (receives) or unmodified (sends) until the returned transfer completes.
    /// Messages between the same two ranks with the same tag arrive in order.
    func start(sends: [OutgoingMessage], receives: [IncomingMessage]) throws -> PendingTransfer

    /// Releases the transport's resources (local). Outstanding transfers of a
    /// failed call are abandoned. Safe to call twice.
    func close()
}

public struct OutgoingMessage {
    public var buffer: UnsafeRawBufferPointer
    public var peer: Int
    public var tag: Int32
    public init(_ buffer: UnsafeRawBufferPointer, to peer: Int, tag: Int32) {
        self.buffer = buffer; self.peer = peer; self.tag = tag
    }
}

public struct IncomingMessage {
    public var buffer: UnsafeMutableRawBufferPointer
    public var peer: Int
    public var tag: Int32
    public init(_ buffer: UnsafeMutableRawBufferPointer, from peer: Int, tag: Int32) {
        self.buffer = buffer; self.peer = peer; self.tag = tag
    }
}

/// Transfers in flight. `wait` completes all of them or throws.
public protocol PendingTransfer: AnyObject {
    func wait(until deadline: Deadline) throws
    /// Lets the transfers progress without blocking (MPI_Testall); called
    /// between tiles from the calling thread while compute runs.
    func poll() throws
}

extension PendingTransfer {
    public func poll() throws {}
}

/// A transfer that is already complete (nothing to send or receive).
public final class CompletedTransfer: PendingTransfer {
    public init() {}
    public func wait(until deadline: Deadline) throws {}
}
