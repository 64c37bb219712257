#if canImport(Glibc)
import Glibc
#endif
import CBurstABI
import GlobalAttention
import LocalAttention
import MPITransport

// The C ABI of include/burst_attention.h. Every export catches every error:
// nothing Swift throws or traps on crosses into the caller (arguments are
// validated before any arithmetic that could trap).

/// Runs `body`, turning a thrown error into its status and burst_last_error().
@inline(__always)
func guardedCall(_ body: () throws -> Void) -> burst_status { guarded(body) }

@inline(__always)
private func guarded(_ body: () throws -> Void) -> burst_status {
    do {
        try body()
        return BURST_OK
    } catch let error as BurstError {
        LastError.set(error.message)
        return burst_status(rawValue: UInt32(error.status.rawValue))
    } catch {
        LastError.set("internal error: \(error)")
        return BURST_ERROR_INTERNAL
    }
}

func invalid(_ message: String) -> BurstError { BurstError(.invalidArgument, message) }

/// Without MPI_THREAD_MULTIPLE only one thread may be inside MPI at a time:
/// a second thread calling into an MPI plan meanwhile gets BUSY instead of
/// corrupting MPI's state.
private let mpiSerializer: UnsafeMutablePointer<pthread_mutex_t> = {
    let mutex = UnsafeMutablePointer<pthread_mutex_t>.allocate(capacity: 1)
    pthread_mutex_init(mutex, nil)
    return mutex
}()

func withMPIAccess<T>(_ context: ContextHandle, _ body: () throws -> T) throws -> T {
    if let exclusive = context.exclusive {
        guard pthread_mutex_trylock(exclusive) == 0 else {
            throw BurstError(.busy, "another thread is inside a call on this context, whose transport is BURST_TRANSPORT_SINGLE_THREADED")
        }
        defer { pthread_mutex_unlock(exclusive) }
        return try body()
    }
    guard context.usesMPI, !MPITransport.threadMultiple else { return try body() }
    guard pthread_mutex_trylock(mpiSerializer) == 0 else {
        throw BurstError(.busy, "another thread is inside an MPI call of this library and MPI was not initialised with MPI_THREAD_MULTIPLE")
    }
    defer { pthread_mutex_unlock(mpiSerializer) }
    return try body()
}

@c(burst_version)
public func _burst_version() -> UInt32 {
    versionMajor * 10000 + versionMinor * 100 + versionPatch
}

/// "libburst_attention 0.9.0; kernels <tile>+<rows>; convert <path>; bf16_products <path>; cpus <n>",
/// made once: the version and the kernel code paths the run-time dispatch picked on this
/// CPU (BURST_KERNELS / LIBXSMM_TARGET are read at the first call); bf16_products: how
/// BURST_COMPUTE_FAST runs, "avx512_bf16" or "emulated".
private let buildInfo: UnsafeMutablePointer<CChar> = {
    let text = "libburst_attention \(versionMajor).\(versionMinor).\(versionPatch); kernels \(LocalAttention.codePath); convert \(StorageConversion.path.rawValue); bf16_products \(LocalAttention.bf16ProductPath); cpus \(availableCPUCount())"
    return strdup(text)!
}()

@c(burst_build_info)
public func _burst_build_info() -> UnsafePointer<CChar> {
    UnsafePointer(buildInfo)
}

private let statusNames: [StaticString] = [
    "BURST_OK", "BURST_ERROR_INVALID_ARGUMENT", "BURST_ERROR_UNSUPPORTED", "BURST_ERROR_OUT_OF_MEMORY",
    "BURST_ERROR_MISMATCH", "BURST_ERROR_COMMUNICATION", "BURST_ERROR_INTERNAL", "BURST_ERROR_VERSION",
    "BURST_ERROR_TIMEOUT", "BURST_ERROR_BUSY",
]
private let unknownStatusName: StaticString = "BURST_ERROR_UNKNOWN"

@c(burst_status_string)
public func _burst_status_string(_ status: burst_status) -> UnsafePointer<CChar> {
    let index = Int(status.rawValue)
    let name = index < statusNames.count ? statusNames[index] : unknownStatusName
    return UnsafeRawPointer(name.utf8Start).assumingMemoryBound(to: CChar.self)
}

@c(burst_last_error)
public func _burst_last_error() -> UnsafePointer<CChar> {
    UnsafePointer(LastError.buffer)
}

@c(burst_attention_config_init)
public func _burst_attention_config_init(_ config: UnsafeMutablePointer<burst_attention_config>?) {
    // The unsized entry point (what clients built against 0.4 and older call):
    // their struct is the 0.4-0.6 one, which ends at timeout_seconds. Writing
    // this version's larger struct would overrun it.
    _ = _burst_attention_config_init_sized(config, configSizeV06)
}

@c(burst_attention_config_init_sized)
public func _burst_attention_config_init_sized(_ config: UnsafeMutablePointer<burst_attention_config>?, _ size: Int) -> burst_status {
    guarded {
        guard let config else { throw invalid("config is NULL") }
        let known = MemoryLayout<burst_attention_config>.size
        // This version's size, the 0.4-0.6 one (it ends at timeout_seconds),
        // the 0.7 one (it ends before sinks), or a newer header's larger one.
        // Anything else is no struct this library knows: write nothing
        // rather than overrun it.
        guard size == configSizeV06 || size == configSizeV07 || (size >= known && size <= maxStructSize) else {
            throw BurstError(.version, "config size \(size) is not one this library (version \(versionString)) knows: \(known) bytes, \(configSizeV07) of the 0.7 header, \(configSizeV06) of the 0.4-0.6 headers (larger sizes up to \(maxStructSize) from newer headers); pass sizeof(burst_attention_config)")
        }
        var c = burst_attention_config()   // all zero
        c.struct_size = UInt32(size)
        c.layout = Int32(BURST_LAYOUT_BSHD)
        c.dtype = Int32(BURST_DTYPE_F32)
        c.mask = Int32(BURST_MASK_NONE)
        c.distribution = Int32(BURST_DISTRIBUTION_CONTIGUOUS)
        c.pattern = Int32(BURST_PATTERN_BURST)
        c.window_left = -1
        c.window_right = -1
        c.compute = Int32(BURST_COMPUTE_DEFAULT)
        let target = UnsafeMutableRawPointer(config)
        withUnsafeBytes(of: &c) { target.copyMemory(from: $0.baseAddress!, byteCount: min(size, known)) }
        // Fields of a newer header: zero, which a newer library reads as their default.
        if size > known { (target + known).initializeMemory(as: UInt8.self, repeating: 0, count: size - known) }
    }
}

// MARK: Contexts

/// Compute threads per rank when a config says 0: the CPUs this process may
/// use, shared among the ranks on this node.
private func defaultThreads(ranksOnNode: Int) -> Int {
    let online = max(1, Int(sysconf(Int32(_SC_NPROCESSORS_ONLN))))
    return max(1, min(availableCPUCount(), online / max(1, ranksOnNode)))
}

@c(burst_context_create_mpi)
public func _burst_context_create_mpi(_ handle: Int64, _ out: UnsafeMutablePointer<OpaquePointer?>?) -> burst_status {
    guarded {
        guard let out else { throw invalid("out is NULL") }
        out.pointee = nil
        let (transport, localRanks) = try MPITransport.create(fortranHandle: handle)
        let context = AttentionContext(transport: transport, defaultThreads: defaultThreads(ranksOnNode: localRanks))
        out.pointee = HandleRegistry.publish(ContextHandle(context: context, usesMPI: true), as: .context)
    }
}

@c(burst_context_create_self)
public func _burst_context_create_self(_ out: UnsafeMutablePointer<OpaquePointer?>?) -> burst_status {
    guarded {
        guard let out else { throw invalid("out is NULL") }
        let transport = LoopbackTransport.makeGroup(size: 1)[0]
        let context = AttentionContext(transport: transport, defaultThreads: defaultThreads(ranksOnNode: 1))
        out.pointee = HandleRegistry.publish(ContextHandle(context: context, usesMPI: false), as: .context)
    }
}

@c(burst_context_create_loopback)
public func _burst_context_create_loopback(_ worldSize: Int32, _ out: UnsafeMutablePointer<OpaquePointer?>?) -> burst_status {
    guarded {
        guard let out else { throw invalid("out is NULL") }
        guard (1...1024).contains(worldSize) else { throw invalid("world_size must be in 1...1024 (got \(worldSize))") }
        let threads = defaultThreads(ranksOnNode: Int(worldSize))
        // A simulated network (latency, bandwidth, slower links between
        // groups) from BURST_SIMULATED_NETWORK; see SimulatedNetwork.
        var network: SimulatedNetwork?
        if let text = getenv("BURST_SIMULATED_NETWORK").map({ String(cString: $0) }), !text.isEmpty {
            network = try SimulatedNetwork(parsing: text)
        }
        for (rank, transport) in LoopbackTransport.makeGroup(size: Int(worldSize), network: network).enumerated() {
            let context = AttentionContext(transport: transport, defaultThreads: threads)
            out[rank] = HandleRegistry.publish(ContextHandle(context: context, usesMPI: false), as: .context)
        }
    }
}

@c(burst_context_create_transport)
public func _burst_context_create_transport(_ transport: UnsafePointer<burst_transport>?,
                                            _ out: UnsafeMutablePointer<OpaquePointer?>?) -> burst_status {
    guarded {
        guard let out else { throw invalid("out is NULL") }
        out.pointee = nil
        let (callbacks, localRanks) = try CallbackTransport.create(transport)
        let singleThreaded = callbacks.core.callbacks.flags & UInt32(BURST_TRANSPORT_SINGLE_THREADED) != 0
        let context = AttentionContext(transport: callbacks, defaultThreads: defaultThreads(ranksOnNode: localRanks))
        out.pointee = HandleRegistry.publish(ContextHandle(context: context, usesMPI: false, singleThreaded: singleThreaded),
                                             as: .context)
    }
}

@c(burst_context_rank)
public func _burst_context_rank(_ context: OpaquePointer?, _ rank: UnsafeMutablePointer<Int32>?,
                                _ size: UnsafeMutablePointer<Int32>?) -> burst_status {
    guarded {
        try withContext(context) { handle in
            rank?.pointee = Int32(handle.context.rank)
            size?.pointee = Int32(handle.context.size)
        }
    }
}

@c(burst_context_destroy)
public func _burst_context_destroy(_ context: OpaquePointer?) {
    guard let context else { return }
    // The transport frees its communicator when the last reference (this
    // handle, a plan still holding it, or a call in flight on another
    // thread) goes away; after MPI_Finalize it skips MPI calls. A pointer
    // that is no live context (destroyed twice, foreign) is ignored.
    _ = HandleRegistry.destroy(context, as: .context)
}

// MARK: Plans

@c(burst_plan_create)
public func _burst_plan_create(_ context: OpaquePointer?, _ config: UnsafePointer<burst_attention_config>?,
                               _ out: UnsafeMutablePointer<OpaquePointer?>?) -> burst_status {
    guarded {
        out?.pointee = nil
        try withContext(context) { handle in
            // A NULL `out` or config is reported through the agreement, so the
            // other ranks fail too instead of waiting for this one.
            var read = readConfig(config)
            if out == nil { read = .failure(invalid("out is NULL")) }
            let plan = try withMPIAccess(handle) { try handle.context.makePlan(read) }
            out!.pointee = HandleRegistry.publish(PlanHandle(plan: plan, context: handle), as: .plan)
        }
    }
}

@c(burst_forward)
public func _burst_forward(_ plan: OpaquePointer?, _ q: UnsafeRawPointer?, _ k: UnsafeRawPointer?,
                           _ v: UnsafeRawPointer?, _ out: UnsafeMutableRawPointer?,
                           _ lse: UnsafeMutablePointer<Float>?) -> burst_status {
    guarded {
        try withPlan(plan) { handle in
            try withMPIAccess(handle.context) { try handle.plan.forward(q: q, k: k, v: v, out: out, lse: lse) }
        }
    }
}

@c(burst_backward)
public func _burst_backward(_ plan: OpaquePointer?, _ q: UnsafeRawPointer?, _ k: UnsafeRawPointer?,
                            _ v: UnsafeRawPointer?, _ out: UnsafeRawPointer?, _ lse: UnsafePointer<Float>?,
                            _ dout: UnsafeRawPointer?, _ dq: UnsafeMutableRawPointer?,
                            _ dk: UnsafeMutableRawPointer?, _ dv: UnsafeMutableRawPointer?) -> burst_status {
    guarded {
        try withPlan(plan) { handle in
            try withMPIAccess(handle.context) {
                try handle.plan.backward(q: q, k: k, v: v, out: out, lse: lse, dout: dout, dq: dq, dk: dk, dv: dv)
            }
        }
    }
}

@c(burst_plan_set_sinks)
public func _burst_plan_set_sinks(_ plan: OpaquePointer?, _ sinks: UnsafePointer<Float>?) -> burst_status {
    guarded {
        try withPlan(plan) { handle in
            let plan = handle.plan
            try plan.setSinks(sinks.map { Array(UnsafeBufferPointer(start: $0, count: Int(plan.config.numHeadsQ))) })
        }
    }
}

@c(burst_plan_sinks_gradient)
public func _burst_plan_sinks_gradient(_ plan: OpaquePointer?, _ dsinks: UnsafeMutablePointer<Float>?) -> burst_status {
    guarded {
        try withPlan(plan) { handle in
            guard let dsinks else { throw invalid("dsinks is NULL") }
            let gradient = try handle.plan.sinksGradient()
            dsinks.update(from: gradient, count: gradient.count)
        }
    }
}

@c(burst_plan_stats)
public func _burst_plan_stats(_ plan: OpaquePointer?, _ stats: UnsafeMutablePointer<burst_stats>?) -> burst_status {
    guarded {
        // The plan first: a NULL or dead plan is INVALID_ARGUMENT whatever the struct says.
        _ = try withPlan(plan) { _ in true }
        guard let stats else { throw invalid("stats is NULL") }
        try writeStats(stats) { try withPlan(plan) { try $0.plan.statsSnapshot() } }
    }
}

/// Checks a caller's burst_stats struct_size, then writes `read()`'s
/// counters into it (burst_plan_stats, burst_kv_cache_stats).
func writeStats(_ stats: UnsafeMutablePointer<burst_stats>, _ read: () throws -> CallStats) throws {
    let declared = Int(UnsafeRawPointer(stats).load(as: UInt32.self))
    let known = MemoryLayout<burst_stats>.size
    // Known sizes: this version's and the two older ones (a client built
    // against an older header gets the fields it knows). A larger size is a
    // newer client: it gets this version's fields, zeros past them, and
    // struct_size = the bytes this library wrote.
    guard declared == known || declared == statsSizeV02 || declared == statsSizeV01
          || (declared > known && declared <= maxStructSize) else {
        throw BurstError(.version, "stats struct_size is \(declared) but this library (version \(versionString)) knows \(known) (and \(statsSizeV02) of version 0.2, \(statsSizeV01) of 0.1; larger sizes up to \(maxStructSize) from newer headers): set struct_size = sizeof(burst_stats)")
    }
    let s = try read()
    var c = burst_stats()
    c.struct_size = UInt32(min(declared, known))
    c.bytes_sent = s.bytesSent
    c.bytes_received = s.bytesReceived
    c.messages_sent = s.messagesSent
    c.steps_computed = s.stepsComputed
    c.steps_skipped = s.stepsSkipped
    c.compute_seconds = s.computeSeconds
    c.comm_wait_seconds = s.commWaitSeconds
    c.total_seconds = s.totalSeconds
    c.tiles_computed = s.tilesComputed
    c.tiles_skipped = s.tilesSkipped
    c.bytes_sent_inter_group = s.bytesSentInterGroup
    c.bytes_received_inter_group = s.bytesReceivedInterGroup
    c.pattern = s.pattern
    c.intra_group_size = s.intraGroupSize
    // An older client's struct is shorter: write only what it has.
    let target = UnsafeMutableRawPointer(stats)
    withUnsafeBytes(of: &c) { target.copyMemory(from: $0.baseAddress!, byteCount: min(declared, known)) }
    if declared > known { (target + known).initializeMemory(as: UInt8.self, repeating: 0, count: declared - known) }
}

/// The largest struct_size accepted from a newer header (config and stats).
let maxStructSize = 4096

/// sizeof(burst_stats) in version 0.2: it ended at tiles_skipped.
private let statsSizeV02 = MemoryLayout<burst_stats>.offset(of: \burst_stats.tiles_skipped)! + MemoryLayout<UInt64>.size
/// sizeof(burst_stats) in version 0.1: it ended at total_seconds.
private let statsSizeV01 = MemoryLayout<burst_stats>.offset(of: \burst_stats.total_seconds)! + MemoryLayout<Double>.size

@c(burst_plan_destroy)
public func _burst_plan_destroy(_ plan: OpaquePointer?) {
    guard let plan else { return }
    // A call in flight on another thread keeps the plan alive until it
    // returns; a pointer that is no live plan is ignored.
    _ = HandleRegistry.destroy(plan, as: .plan)
}
