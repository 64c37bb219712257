#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// An owned, 64-byte-aligned array of `Float` whose allocation can fail
/// without trapping (Swift's own allocators trap on exhaustion; a library
/// must report OUT_OF_MEMORY instead).
public final class FloatBuffer {
    public let pointer: UnsafeMutablePointer<Float>
    public let count: Int

    /// Returns nil if `count` floats cannot be allocated.
    public init?(count: Int) {
        guard count >= 0 else { return nil }
        let (bytes, overflow) = max(count, 16).multipliedReportingOverflow(by: MemoryLayout<Float>.stride)
        if overflow { return nil }
        var raw: UnsafeMutableRawPointer?
        guard posix_memalign(&raw, 64, bytes) == 0, let raw else { return nil }
        pointer = raw.bindMemory(to: Float.self, capacity: max(count, 16))
        self.count = count
    }

    deinit { free(pointer) }

    public func fill(_ value: Float, count n: Int? = nil) {
        pointer.update(repeating: value, count: n ?? count)
    }
}
