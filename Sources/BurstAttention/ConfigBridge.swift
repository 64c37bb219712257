import CBurstABI
import GlobalAttention

/// Reads a caller's burst_attention_config into an `AttentionConfig`,
/// checking struct_size before touching anything past it.
func readConfig(_ pointer: UnsafePointer<burst_attention_config>?) -> Result<AttentionConfig, BurstError> {
    guard let pointer else { return .failure(BurstError(.invalidArgument, "config is NULL")) }
    let declared = UnsafeRawPointer(pointer).load(as: UInt32.self)
    let known = MemoryLayout<burst_attention_config>.size
    guard declared == known else {
        return .failure(BurstError(.version,
            "config struct_size is \(declared) but this library (version \(versionString)) knows only \(known): call burst_attention_config_init, and check that the header matches the library"))
    }
    let c = pointer.pointee
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
        guard c.num_sequences > 0, c.num_sequences < (1 << 32) else {
            return .failure(BurstError(.invalidArgument,
                "cu_seqlens is set but num_sequences is \(c.num_sequences) (it must be positive; cu_seqlens holds num_sequences + 1 offsets)"))
        }
        config.cuSeqlens = Array(UnsafeBufferPointer(start: offsets, count: Int(c.num_sequences) + 1))
    }
    config.numThreads = c.num_threads
    config.intraGroupSize = c.intra_group_size
    config.timeoutSeconds = c.timeout_seconds
    return .success(config)
}

// The header's version macros are the single source of truth.
let versionMajor = UInt32(BURST_VERSION_MAJOR)
let versionMinor = UInt32(BURST_VERSION_MINOR)
let versionPatch = UInt32(BURST_VERSION_PATCH)
var versionString: String { "\(versionMajor).\(versionMinor).\(versionPatch)" }
