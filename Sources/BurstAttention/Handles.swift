#if canImport(Glibc)
import Glibc
#endif
import GlobalAttention

/// What a `burst_context *` points to.
final class ContextHandle {
    let context: AttentionContext
    let usesMPI: Bool
    /// For a caller's transport flagged BURST_TRANSPORT_SINGLE_THREADED: held
    /// for the whole of each call on the context, its plans and caches, so a
    /// second thread gets BUSY instead of running the callbacks concurrently.
    let exclusive: UnsafeMutablePointer<pthread_mutex_t>?
    init(context: AttentionContext, usesMPI: Bool, singleThreaded: Bool = false) {
        self.context = context
        self.usesMPI = usesMPI
        if singleThreaded {
            exclusive = .allocate(capacity: 1)
            pthread_mutex_init(exclusive!, nil)
        } else {
            exclusive = nil
        }
    }
    deinit {
        if let exclusive {
            pthread_mutex_destroy(exclusive)
            exclusive.deallocate()
        }
    }
}

/// What a `burst_plan *` points to. Keeps its context alive, so a context
/// destroyed too early does not leave the plan dangling.
final class PlanHandle {
    let plan: AttentionPlan
    let context: ContextHandle
    init(plan: AttentionPlan, context: ContextHandle) {
        self.plan = plan
        self.context = context
    }
}

/// What a `burst_kv_cache *` points to. Keeps its context alive.
final class CacheHandle {
    let cache: KVCache
    let context: ContextHandle
    init(cache: KVCache, context: ContextHandle) {
        self.cache = cache
        self.context = context
    }
}

/// The handles the library has given out and not yet seen destroyed. Every
/// call looks its handle up here before using it, so
///  - a pointer that is not a live handle (destroyed, never created, a plan
///    passed as a context) gives INVALID_ARGUMENT instead of a wild access
///    (a destroyed handle's address reused by a newer handle of the same kind
///    cannot be told apart: that one is the newer handle);
///  - a call holds its own reference for its duration, so a handle destroyed
///    by another thread meanwhile stays alive until that call returns, and
///    later calls see it as destroyed.
enum HandleRegistry {
    enum Kind { case context, plan, cache }

    private static let lock: UnsafeMutablePointer<pthread_mutex_t> = {
        let mutex = UnsafeMutablePointer<pthread_mutex_t>.allocate(capacity: 1)
        pthread_mutex_init(mutex, nil)
        return mutex
    }()
    nonisolated(unsafe) private static var live: [UInt: Kind] = [:]

    private static func locked<T>(_ body: () -> T) -> T {
        pthread_mutex_lock(lock)
        defer { pthread_mutex_unlock(lock) }
        return body()
    }

    /// Registers a new handle (+1 reference owned by the caller until destroy).
    static func publish(_ object: AnyObject, as kind: Kind) -> OpaquePointer {
        let pointer = Unmanaged.passRetained(object).toOpaque()
        locked { live[UInt(bitPattern: pointer)] = kind }
        return OpaquePointer(pointer)
    }

    /// The live handle at `pointer`, retained for the caller (balance with
    /// `Unmanaged.release`), or nil if `pointer` is no live handle of `kind`.
    static func retain<T: AnyObject>(_ pointer: OpaquePointer, as kind: Kind, _ type: T.Type) -> Unmanaged<T>? {
        locked {
            guard live[UInt(bitPattern: UnsafeRawPointer(pointer))] == kind else { return nil }
            return Unmanaged<T>.fromOpaque(UnsafeRawPointer(pointer)).retain()
        }
    }

    /// Forgets a handle and drops its creation reference; false (and nothing
    /// released) if `pointer` is no live handle of `kind`.
    static func destroy(_ pointer: OpaquePointer, as kind: Kind) -> Bool {
        let found: Bool = locked {
            let key = UInt(bitPattern: UnsafeRawPointer(pointer))
            guard live[key] == kind else { return false }
            live[key] = nil
            return true
        }
        if found { Unmanaged<AnyObject>.fromOpaque(UnsafeRawPointer(pointer)).release() }
        return found
    }

    /// Handles not yet destroyed, for tests.
    static var liveCount: Int { locked { live.count } }
}

/// Runs `body` with the live handle of `kind` at `pointer`, retained for the
/// call (INVALID_ARGUMENT naming `what` if NULL or not live).
private func withHandle<H: AnyObject, T>(_ pointer: OpaquePointer?, _ kind: HandleRegistry.Kind, _ type: H.Type,
                                         what: String, madeBy: String, _ body: (H) throws -> T) throws -> T {
    guard let pointer else { throw BurstError(.invalidArgument, "\(what) is NULL") }
    guard let handle = HandleRegistry.retain(pointer, as: kind, type) else {
        throw BurstError(.invalidArgument, "\(what) is not a live \(what) (already destroyed, or not made by \(madeBy))")
    }
    defer { handle.release() }
    return try body(handle.takeUnretainedValue())
}

/// Runs `body` with the live context at `pointer` (INVALID_ARGUMENT if NULL or not live).
func withContext<T>(_ pointer: OpaquePointer?, _ body: (ContextHandle) throws -> T) throws -> T {
    try withHandle(pointer, .context, ContextHandle.self, what: "context", madeBy: "burst_context_create_*", body)
}

/// Runs `body` with the live plan at `pointer` (INVALID_ARGUMENT if NULL or not live).
func withPlan<T>(_ pointer: OpaquePointer?, _ body: (PlanHandle) throws -> T) throws -> T {
    try withHandle(pointer, .plan, PlanHandle.self, what: "plan", madeBy: "burst_plan_create", body)
}

/// Runs `body` with the live KV cache at `pointer` (INVALID_ARGUMENT if NULL or not live).
func withCache<T>(_ pointer: OpaquePointer?, _ body: (CacheHandle) throws -> T) throws -> T {
    try withHandle(pointer, .cache, CacheHandle.self, what: "cache", madeBy: "burst_kv_cache_create", body)
}
