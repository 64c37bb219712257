#if canImport(Glibc)
import Glibc
#endif
import CBurstABI
import GlobalAttention

// The KV cache part of the C ABI (include/burst_attention.h, "Inference").
// Every export catches every error, as in Exports.swift.

/// Reads a caller's burst_kv_cache_config, checking struct_size first
/// (`checkStructSize`).
func readCacheConfig(_ pointer: UnsafePointer<burst_kv_cache_config>?) -> Result<KVCacheConfig, BurstError> {
    guard let pointer else { return .failure(invalid("config is NULL")) }
    if let error = checkStructSize(pointer, known: MemoryLayout<burst_kv_cache_config>.size, older: [cacheConfigSizeV07],
                                   what: "cache config", hint: "call burst_kv_cache_config_init") {
        return .failure(error)
    }
    var c = burst_kv_cache_config()   // all zero: the defaults of fields an older struct lacks
    copyDeclared(pointer, into: &c)
    guard c.reserved0 == 0 else {
        return .failure(BurstError(.version,
            "cache config reserved0 is \(c.reserved0): this library (version \(versionString)) knows no field there; upgrade the library or leave newer fields at their defaults (0)"))
    }
    var config = KVCacheConfig()
    config.layout = c.layout
    config.dtype = c.dtype
    config.numThreads = c.num_threads
    config.numLayers = c.num_layers
    config.numHeadsQ = c.num_heads_q
    config.numHeadsKV = c.num_heads_kv
    config.headDim = c.head_dim
    config.softmaxScale = c.softmax_scale
    config.windowLeft = c.window_left
    config.blockTokens = c.block_tokens
    config.maxBytesLocal = c.max_bytes_local
    config.timeoutSeconds = c.timeout_seconds
    config.softcap = c.softcap
    if let sinks = c.sinks {
        // Layers × heads values (an overflowing product counts as out of range).
        let (count, overflow) = c.num_layers.multipliedReportingOverflow(by: c.num_heads_q)
        let sign = c.num_layers > 0 && c.num_heads_q > 0
        switch copySinks(sinks, count: overflow || !sign ? -1 : count,
                         counted: "num_layers × num_heads_q (\(c.num_layers) × \(c.num_heads_q))") {
        case .success(let values): config.sinks = values
        case .failure(let error): return .failure(error)
        }
    }
    return .success(config)
}

/// sizeof(burst_kv_cache_config) of the 0.6 and 0.7 headers: it ended at
/// timeout_seconds.
let cacheConfigSizeV07 = MemoryLayout<burst_kv_cache_config>.offset(of: \burst_kv_cache_config.softcap)!

@c(burst_kv_cache_config_init_sized)
public func _burst_kv_cache_config_init_sized(_ config: UnsafeMutablePointer<burst_kv_cache_config>?, _ size: Int) -> burst_status {
    guardedCall {
        guard let config else { throw invalid("config is NULL") }
        let known = MemoryLayout<burst_kv_cache_config>.size
        guard size == cacheConfigSizeV07 || (size >= known && size <= maxStructSize) else {
            throw BurstError(.version, "cache config size \(size) is not one this library (version \(versionString)) knows: \(known) bytes, \(cacheConfigSizeV07) of the 0.6-0.7 headers (larger sizes up to \(maxStructSize) from newer headers); pass sizeof(burst_kv_cache_config)")
        }
        var c = burst_kv_cache_config()
        c.struct_size = UInt32(size)
        c.layout = Int32(BURST_LAYOUT_BSHD)
        c.dtype = Int32(BURST_DTYPE_F32)
        c.window_left = -1
        let target = UnsafeMutableRawPointer(config)
        withUnsafeBytes(of: &c) { target.copyMemory(from: $0.baseAddress!, byteCount: min(size, known)) }
        if size > known { (target + known).initializeMemory(as: UInt8.self, repeating: 0, count: size - known) }
    }
}

@c(burst_kv_cache_create)
public func _burst_kv_cache_create(_ context: OpaquePointer?, _ config: UnsafePointer<burst_kv_cache_config>?,
                                   _ out: UnsafeMutablePointer<OpaquePointer?>?) -> burst_status {
    guardedCall {
        out?.pointee = nil
        try withContext(context) { handle in
            // A NULL `out` or config goes through the agreement: every rank fails.
            var read = readCacheConfig(config)
            if out == nil { read = .failure(invalid("out is NULL")) }
            let cache = try withMPIAccess(handle) { try handle.context.makeKVCache(read) }
            out!.pointee = HandleRegistry.publish(CacheHandle(cache: cache, context: handle), as: .cache)
        }
    }
}

@c(burst_kv_cache_destroy)
public func _burst_kv_cache_destroy(_ cache: OpaquePointer?) {
    guard let cache else { return }
    _ = HandleRegistry.destroy(cache, as: .cache)
}

/// Runs a collective cache call under the MPI access rule.
private func collective(_ cache: OpaquePointer?, _ body: (KVCache) throws -> Void) -> burst_status {
    guardedCall {
        try withCache(cache) { handle in try withMPIAccess(handle.context) { try body(handle.cache) } }
    }
}

@c(burst_kv_cache_add)
public func _burst_kv_cache_add(_ cache: OpaquePointer?, _ ids: UnsafePointer<Int64>?, _ count: Int64) -> burst_status {
    collective(cache) { try $0.add(ids, count: count) }
}

@c(burst_kv_cache_drop)
public func _burst_kv_cache_drop(_ cache: OpaquePointer?, _ ids: UnsafePointer<Int64>?, _ count: Int64) -> burst_status {
    collective(cache) { try $0.drop(ids, count: count) }
}

@c(burst_kv_cache_truncate)
public func _burst_kv_cache_truncate(_ cache: OpaquePointer?, _ ids: UnsafePointer<Int64>?,
                                     _ lengths: UnsafePointer<Int64>?, _ count: Int64) -> burst_status {
    collective(cache) { try $0.truncate(ids, lengths: lengths, count: count) }
}

@c(burst_kv_cache_prefill)
public func _burst_kv_cache_prefill(_ cache: OpaquePointer?, _ layer: Int64, _ plan: OpaquePointer?,
                                    _ ids: UnsafePointer<Int64>?, _ k: UnsafeRawPointer?, _ v: UnsafeRawPointer?) -> burst_status {
    guardedCall {
        try withCache(cache) { handle in
            // A NULL or dead plan is this rank's argument error, agreed like any other.
            var planHandle: PlanHandle?
            if let plan { planHandle = try? withPlan(plan) { $0 } }
            try withMPIAccess(handle.context) {
                try handle.cache.prefill(layer: layer, plan: planHandle?.plan, planContext: planHandle?.context.context,
                                         ids: ids, k: k, v: v)
            }
        }
    }
}

@c(burst_kv_cache_decode)
public func _burst_kv_cache_decode(_ cache: OpaquePointer?, _ layer: Int64, _ ids: UnsafePointer<Int64>?,
                                   _ count: Int64, _ tokens: Int64, _ positions: UnsafePointer<Int64>?,
                                   _ q: UnsafeRawPointer?, _ k: UnsafeRawPointer?, _ v: UnsafeRawPointer?,
                                   _ out: UnsafeMutableRawPointer?, _ lse: UnsafeMutablePointer<Float>?) -> burst_status {
    collective(cache) {
        try $0.decode(layer: layer, ids: ids, count: count, tokens: tokens, positions: positions,
                      q: q, k: k, v: v, out: out, lse: lse)
    }
}

@c(burst_kv_cache_sequence_length)
public func _burst_kv_cache_sequence_length(_ cache: OpaquePointer?, _ id: Int64, _ layer: Int64,
                                            _ length: UnsafeMutablePointer<Int64>?,
                                            _ localTokens: UnsafeMutablePointer<Int64>?) -> burst_status {
    guardedCall {
        let found = try withCache(cache) { try $0.cache.sequenceLength(id, layer: layer) }
        length?.pointee = Int64(found.length)
        localTokens?.pointee = Int64(found.localTokens)
    }
}

@c(burst_kv_cache_bytes)
public func _burst_kv_cache_bytes(_ cache: OpaquePointer?, _ bytes: UnsafeMutablePointer<UInt64>?) -> burst_status {
    guardedCall {
        let held = try withCache(cache) { try $0.cache.bytes() }
        guard let bytes else { throw invalid("bytes is NULL") }
        bytes.pointee = UInt64(held)
    }
}

@c(burst_kv_cache_stats)
public func _burst_kv_cache_stats(_ cache: OpaquePointer?, _ stats: UnsafeMutablePointer<burst_stats>?) -> burst_status {
    guardedCall {
        _ = try withCache(cache) { _ in true }
        guard let stats else { throw invalid("stats is NULL") }
        try writeStats(stats) { try withCache(cache) { try $0.cache.statsSnapshot() } }
    }
}
