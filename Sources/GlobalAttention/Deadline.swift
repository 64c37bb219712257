#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// A point on the monotonic clock after which a blocking wait gives up.
public struct Deadline: Sendable {
    public let nanoseconds: UInt64

    public static func now() -> UInt64 {
        var ts = timespec()
        clock_gettime(CLOCK_MONOTONIC, &ts)
        return UInt64(ts.tv_sec) &* 1_000_000_000 &+ UInt64(ts.tv_nsec)
    }

    /// `seconds` from now; non-finite or huge values saturate (about 290 years).
    public static func after(seconds: Double) -> Deadline {
        let limit = 9.0e9
        let s = seconds.isFinite ? min(max(seconds, 0), limit) : limit
        return Deadline(nanoseconds: now() &+ UInt64(s * 1e9))
    }

    public var hasPassed: Bool { Deadline.now() >= nanoseconds }

    /// Seconds since some fixed point, for timing.
    public static func seconds() -> Double { Double(now()) * 1e-9 }
}

/// The pause between two tests of a non-blocking wait (the MPI and callback
/// transports' test loops): spins for the first 64 rounds, then yields for
/// 2 ms, then naps 50 µs at a time, so that ranks sharing a core still
/// progress.
public struct WaitBackoff {
    private var spins = 0
    private let started = Deadline.now()

    public init() {}

    public mutating func pause() {
        spins += 1
        if spins < 64 { return }
        if Deadline.now() - started < 2_000_000 {
            sched_yield()
        } else {
            var nap = timespec(tv_sec: 0, tv_nsec: 50_000)
            nanosleep(&nap, nil)
        }
    }
}
