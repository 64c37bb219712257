#if canImport(Glibc)
import Glibc
#endif
import CBurstABI
import GlobalAttention

/// Reads a caller's burst_attention_config into an `AttentionConfig`,
/// checking struct_size before touching anything past it: a struct of an
/// older released size (`configSizeV06`, `configSizeV07`) is copied as far
/// as it goes and the fields it lacks keep their defaults (zero). The sink
/// logits are copied (num_heads_q floats).
func readConfig(_ pointer: UnsafePointer<burst_attention_config>?) -> Result<AttentionConfig, BurstError> {
    guard let pointer else { return .failure(BurstError(.invalidArgument, "config is NULL")) }
    let known = MemoryLayout<burst_attention_config>.size
    if let error = checkStructSize(pointer, known: known, older: [configSizeV06, configSizeV07], what: "config",
                                   hint: "call burst_attention_config_init, and check that the header matches the library") {
        return .failure(error)
    }
    var c = burst_attention_config()   // all zero: the defaults of fields an older struct lacks
    copyDeclared(pointer, into: &c)
    var config = AttentionConfig()
    config.layout = c.layout
    config.dtype = c.dtype
    config.mask = c.mask
    config.distribution = c.distribution
    config.pattern = c.pattern
    config.batch = c.batch
    config.seqLenLocal = c.seq_len_local
    config.numHeadsQ = c.num_heads_q
    config.numHeadsKV = c.num_heads_kv
    config.headDim = c.head_dim
    config.softmaxScale = c.softmax_scale
    config.windowLeft = c.window_left
    config.windowRight = c.window_right
    config.numSequences = c.num_sequences
    if let offsets = c.cu_seqlens {
        guard c.num_sequences > 0, c.num_sequences <= maxSequences else {
            return .failure(BurstError(.invalidArgument,
                "cu_seqlens is set but num_sequences is \(c.num_sequences) (it must be in 1...\(maxSequences); cu_seqlens holds num_sequences + 1 offsets)"))
        }
        // Copied through malloc first: an allocation that fails is OUT_OF_MEMORY, not a trap.
        let count = Int(c.num_sequences) + 1
        guard let copy = malloc(count * MemoryLayout<Int64>.size)?.assumingMemoryBound(to: Int64.self) else {
            return .failure(BurstError(.outOfMemory, "cannot allocate a copy of cu_seqlens (\(count) offsets)"))
        }
        defer { free(copy) }
        copy.update(from: offsets, count: count)
        config.cuSeqlens = Array(UnsafeBufferPointer(start: copy, count: count))
    }
    config.numThreads = c.num_threads
    config.intraGroupSize = c.intra_group_size
    config.timeoutSeconds = c.timeout_seconds
    config.compute = c.compute
    config.softcap = c.softcap
    if let sinks = c.sinks {
        switch copySinks(sinks, count: c.num_heads_q, counted: "num_heads_q") {
        case .success(let values): config.sinks = values
        case .failure(let error): return .failure(error)
        }
    }
    return .success(config)
}

/// The struct_size rules of every config struct (include/burst_attention.h: "Config structs carry their own size"):
/// this version's size; an older released header's (`older`: its fields
/// are read, the ones appended since keep their defaults); or a newer
/// header's larger one (up to 4096 bytes) whose bytes past this layout are
/// all zero, i.e. fields left at their defaults. nil when `pointer`'s
/// struct_size passes.
func checkStructSize(_ pointer: UnsafeRawPointer, known: Int, older: [Int] = [], what: String, hint: String) -> BurstError? {
    let declared = Int(pointer.load(as: UInt32.self))
    if older.contains(declared) { return nil }
    guard declared >= known, declared <= maxStructSize else {
        let olderText = older.isEmpty ? "" : ", \(older.map(String.init).joined(separator: ", ")) of older headers"
        return BurstError(.version,
            "\(what) struct_size is \(declared) but this library (version \(versionString)) knows \(known)\(olderText) (or larger, up to \(maxStructSize), from a newer header): \(hint)")
    }
    if declared > known {
        let tail = UnsafeRawBufferPointer(start: pointer + known, count: declared - known)
        if let offset = tail.firstIndex(where: { $0 != 0 }) {
            return BurstError(.version,
                "\(what) struct_size is \(declared): byte \(known + offset) sets a field this library (version \(versionString), \(known)-byte \(what)) does not know; upgrade the library or leave newer fields at their defaults")
        }
    }
    return nil
}

/// Copies a caller's config struct into `value` as far as its struct_size
/// goes (checked by `checkStructSize` first); the fields an older struct
/// lacks keep what `value` holds (zero: their defaults).
func copyDeclared<T>(_ pointer: UnsafePointer<T>, into value: inout T) {
    let declared = Int(UnsafeRawPointer(pointer).load(as: UInt32.self))
    withUnsafeMutableBytes(of: &value) {
        $0.baseAddress!.copyMemory(from: pointer, byteCount: min(declared, MemoryLayout<T>.size))
    }
}

/// Copies `count` sink logits from a caller's pointer (`counted` names what
/// the count comes from: num_heads_q, or num_layers × num_heads_q). The
/// count must be positive and at most `maxSinkValues`, else INVALID_ARGUMENT
/// before anything is read.
func copySinks(_ pointer: UnsafePointer<Float>, count: Int64, counted: String) -> Result<[Float], BurstError> {
    guard count > 0, count <= maxSinkValues else {
        return .failure(BurstError(.invalidArgument,
            "sinks is set but \(counted) = \(count): it must be in 1...\(maxSinkValues) (the sinks are copied)"))
    }
    return .success(Array(UnsafeBufferPointer(start: pointer, count: Int(count))))
}

/// The most sink values a config may point to (2^24): they are copied.
let maxSinkValues: Int64 = 1 << 24

/// sizeof(burst_attention_config) of the 0.7 header: it ended at softcap
/// (then named reserved0, always 0), before sinks.
let configSizeV07 = MemoryLayout<burst_attention_config>.offset(of: \burst_attention_config.sinks)!

/// sizeof(burst_attention_config) of the headers 0.4 to 0.6 (every one had
/// this layout): it ended at timeout_seconds. Their clients' configs read
/// compute as 0 (BURST_COMPUTE_DEFAULT).
let configSizeV06 = MemoryLayout<burst_attention_config>.offset(of: \burst_attention_config.timeout_seconds)! + MemoryLayout<Double>.size

/// The most sequences a packed config may hold (2^31 − 1): cu_seqlens is
/// copied at plan creation, 8 bytes an offset.
let maxSequences: Int64 = (1 << 31) - 1

// The header's version macros are the single source of truth.
let versionMajor = UInt32(BURST_VERSION_MAJOR)
let versionMinor = UInt32(BURST_VERSION_MINOR)
let versionPatch = UInt32(BURST_VERSION_PATCH)
var versionString: String { "\(versionMajor).\(versionMinor).\(versionPatch)" }
