import LocalAttention

/// How a message's floats travel: segments of fp32 values, each sent in its
/// wire type. Tensors that came from the caller in a half storage type (K,
/// V, Q, dO) travel in that type — fp32 → half → fp32 is lossless for them,
/// since they are half values widened — and halve their bytes; statistics
/// (lse, D) and partial sums travel as fp32, so every accumulation stays
/// fp32 ("all accumulation in fp32", as ring-flash-attention keeps its
/// travelling dK, dV in fp32).
///
/// A message is encoded once by its owner before it is first sent and
/// decoded into an fp32 buffer by each rank that computes with it, after the
/// receive completes and before the step's compute (O(block) work against
/// the step's O(n·block)). A rank that forwards a block forwards the bytes
/// it received. The segments follow each other without padding (an fp32
/// segment may start at an offset that is only 2-aligned: the codec copies
/// bytes).
struct WireFormat {
    struct Segment {
        var floats: Int
        var type: StorageType
    }
    var segments: [Segment]

    init(_ segments: [(floats: Int, type: StorageType)]) {
        self.segments = segments.map { Segment(floats: $0.floats, type: $0.type) }
    }

    /// Bytes on the wire.
    var bytes: Int { segments.reduce(0) { $0 + $1.floats * $1.type.bytes } }

    /// Floats of the decoded message.
    var floats: Int { segments.reduce(0) { $0 + $1.floats } }

    /// Every segment fp32: the wire form is the fp32 buffer itself.
    var isPlain: Bool { segments.allSatisfy { $0.type == .f32 } }

    /// Capacity in floats of a buffer that holds `bytes` wire bytes.
    static func floatsHolding(bytes: Int) -> Int { (bytes + 3) / 4 }

    /// Writes the wire form of `source` (`floats` values) to `wire`.
    func encode(_ source: UnsafePointer<Float>, into wire: UnsafeMutableRawPointer) {
        var from = source, to = wire
        for segment in segments {
            StorageConversion.store(segment.type, from, into: to, count: segment.floats)
            from += segment.floats
            to += segment.floats * segment.type.bytes
        }
    }

    /// Reads a wire form back into fp32 (exact).
    func decode(_ wire: UnsafeRawPointer, into target: UnsafeMutablePointer<Float>) {
        var from = wire, to = target
        for segment in segments {
            StorageConversion.load(segment.type, from, into: to, count: segment.floats)
            from += segment.floats * segment.type.bytes
            to += segment.floats
        }
    }
}
