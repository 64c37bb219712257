import XCTest
import LocalAttention

/// The negative controls of scripts/sanitize.sh. Without BURST_SANITIZER_CONTROL
/// in the environment this test does nothing (so the normal suite is unchanged);
/// the script runs it alone with one of the values below, in the sanitizer
/// build, and fails unless the sanitizer reports the planted bug. A sanitizer
/// run that could not see these (an uninstrumented build, a report that goes
/// nowhere, a suppression or filter that hides the library's own code) would
/// make every real run look clean.
///
/// - `overflow`: writes one element past a FloatBuffer (AddressSanitizer).
/// - `leak`: loses a WorkerPool (LeakSanitizer; the filter must call it ours).
/// - `race`: the tasks of a two-thread WorkerPool loop all write one variable
///   with no synchronisation (ThreadSanitizer must see the pool's threads).
final class SanitizerControlTests: XCTestCase {
    func testPlantedBugForTheSanitizerScripts() {
        guard let raw = getenv("BURST_SANITIZER_CONTROL") else { return }
        switch String(cString: raw) {
        case "overflow":
            let buffer = FloatBuffer(count: 64)!
            let past = buffer.pointer + 64   // FloatBuffer allocates max(count, 16) floats
            past.pointee = 1
            print("sanitizer control: wrote past a 64-float buffer: \(buffer.pointer[0])")
        case "leak":
            let pool = WorkerPool(threadCount: 1)
            _ = Unmanaged.passRetained(pool)   // never released
            print("sanitizer control: lost a WorkerPool")
        case "race":
            let pool = WorkerPool(threadCount: 2)
            let shared = UnsafeMutablePointer<Int>.allocate(capacity: 1)
            shared.initialize(to: 0)
            pool.parallelFor(64) { _, _ in
                shared.pointee += 1   // every task, on both threads, unsynchronised
                usleep(200)
            }
            print("sanitizer control: racy sum \(shared.pointee)")
            shared.deallocate()
        default:
            XCTFail("unknown BURST_SANITIZER_CONTROL value")
        }
    }
}
