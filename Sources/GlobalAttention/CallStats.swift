import LocalAttention

/// What one forward or backward call did on this rank (burst_stats).
public struct CallStats: Sendable, Equatable {
    public var bytesSent: UInt64 = 0
    public var bytesReceived: UInt64 = 0
    public var messagesSent: UInt64 = 0
    public var stepsComputed: UInt64 = 0
    public var stepsSkipped: UInt64 = 0
    public var computeSeconds: Double = 0
    public var commWaitSeconds: Double = 0
    public var totalSeconds: Double = 0
    /// Tiles computed and skipped (fully masked, including every tile of a
    /// skipped step): their sum is what a dense schedule would compute.
    public var tilesComputed: UInt64 = 0
    public var tilesSkipped: UInt64 = 0
    /// The part of bytesSent / bytesReceived whose peer is in another group
    /// (node) of the transport.
    public var bytesSentInterGroup: UInt64 = 0
    public var bytesReceivedInterGroup: UInt64 = 0
    /// The pattern the call ran (AUTO resolved) and the ring's group size.
    public var pattern: Int32 = 0
    public var intraGroupSize: Int32 = 0
    public init() {}

    mutating func add(_ tiles: LocalAttention.TileCounts) {
        tilesComputed += UInt64(tiles.computed)
        tilesSkipped += UInt64(tiles.skipped)
    }
}
