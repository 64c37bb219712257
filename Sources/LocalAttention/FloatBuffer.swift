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
        if let limit = FloatBuffer.failingThreshold, count >= limit { return nil }
        let (bytes, overflow) = max(count, 16).multipliedReportingOverflow(by: MemoryLayout<Float>.stride)
        if overflow { return nil }
        var raw: UnsafeMutableRawPointer?
        guard posix_memalign(&raw, 64, bytes) == 0, let raw else { return nil }
        pointer = raw.bindMemory(to: Float.self, capacity: max(count, 16))
        self.count = count
    }

    deinit { free(pointer) }

    /// Fault injection for the tests (issue 9: "an allocation failure on one
    /// rank is an error on every rank"): on the calling thread only, buffers
    /// of at least `count` floats fail as if memory were exhausted; nil ends it.
    public static func failAllocations(atLeast count: Int?) {
        let old = pthread_getspecific(thresholdKey)
        if let old { free(old) }
        guard let count else { pthread_setspecific(thresholdKey, nil); return }
        let slot = malloc(MemoryLayout<Int>.size)!.assumingMemoryBound(to: Int.self)
        slot.pointee = count
        pthread_setspecific(thresholdKey, slot)
    }

    static var failingThreshold: Int? {
        pthread_getspecific(thresholdKey).map { $0.assumingMemoryBound(to: Int.self).pointee }
    }

    private static let thresholdKey: pthread_key_t = {
        var key = pthread_key_t()
        pthread_key_create(&key) { free($0) }
        return key
    }()

    public func fill(_ value: Float, count n: Int? = nil) {
        pointer.update(repeating: value, count: n ?? count)
    }
}
