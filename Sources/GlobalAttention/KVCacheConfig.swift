import LocalAttention

/// A KV cache's shape and options, as the C ABI's `burst_kv_cache_config`
/// holds them (enum fields raw, so out-of-range values can be reported).
public struct KVCacheConfig: Sendable {
    public var layout: Int32 = AttentionConfig.Layout.bshd.rawValue
    public var dtype: Int32 = 0
    public var numThreads: Int32 = 0
    public var numLayers: Int64 = 0
    public var numHeadsQ: Int64 = 0
    public var numHeadsKV: Int64 = 0
    public var headDim: Int64 = 0
    public var softmaxScale: Float = 0
    public var windowLeft: Int64 = -1
    public var blockTokens: Int64 = 0
    public var maxBytesLocal: Int64 = 0
    public var timeoutSeconds: Double = 0
    /// Logit soft-capping (0 = off), as `AttentionConfig.softcap`.
    public var softcap: Float = 0
    /// Sink logits of every layer, layer-major (numLayers × numHeadsQ; nil = none).
    public var sinks: [Float]? = nil

    public init() {}

    public static let defaultBlockTokens = 256
    static let maxBlockTokens: Int64 = 65_536
    static let maxLayers: Int64 = 1 << 20

    public var storage: StorageType { StorageType(rawValue: dtype) ?? .f32 }
    public var group: Int { Int(numHeadsQ / max(numHeadsKV, 1)) }
    public var effectiveBlockTokens: Int { blockTokens > 0 ? Int(blockTokens) : Self.defaultBlockTokens }
    public var effectiveScale: Float { softmaxScale != 0 ? softmaxScale : 1 / Float(Double(headDim).squareRoot()) }
    public var effectiveTimeout: Double {
        timeoutSeconds > 0 && timeoutSeconds.isFinite ? timeoutSeconds : AttentionConfig.defaultTimeoutSeconds
    }

    /// The checks one rank can make alone (INVALID_ARGUMENT, then UNSUPPORTED).
    public func validate() throws {
        func bad(_ message: String) -> BurstError { BurstError(.invalidArgument, message) }
        guard AttentionConfig.Layout(rawValue: layout) != nil else {
            throw bad("layout: unknown value \(layout) (BURST_LAYOUT_BSHD = 0, BURST_LAYOUT_BHSD = 1)")
        }
        guard StorageType(rawValue: dtype) != nil else {
            throw bad("dtype: unknown value \(dtype) (BURST_DTYPE_F32 = 0, BURST_DTYPE_BF16 = 1, BURST_DTYPE_F16 = 2)")
        }
        guard numThreads >= 0 else { throw bad("num_threads must be >= 0 (got \(numThreads))") }
        guard numLayers > 0, numLayers <= Self.maxLayers else { throw bad("num_layers must be in 1...\(Self.maxLayers) (got \(numLayers))") }
        try AttentionConfig.checkHeads(numHeadsQ, numHeadsKV, headDim: headDim, scale: softmaxScale)
        guard windowLeft >= -1 else { throw bad("window_left must be >= -1 (got \(windowLeft))") }
        guard blockTokens >= 0, blockTokens <= Self.maxBlockTokens else {
            throw bad("block_tokens must be in 0...\(Self.maxBlockTokens) (0 = \(Self.defaultBlockTokens); got \(blockTokens))")
        }
        guard maxBytesLocal >= 0 else { throw bad("max_bytes_local must be >= 0 (0 = no limit; got \(maxBytesLocal))") }
        try AttentionConfig.checkTimeout(timeoutSeconds)
        try AttentionConfig.checkSoftcap(softcap)
        if let sinks {
            guard Int64(sinks.count) == numLayers * numHeadsQ else {
                throw bad("sinks must hold num_layers × num_heads_q = \(numLayers * numHeadsQ) values (got \(sinks.count))")
            }
            try AttentionConfig.checkSinks(sinks)
        }
        // A block of every head must be addressable; heads·head_dim bounds every row.
        let (rowElements, o1) = numHeadsQ.multipliedReportingOverflow(by: headDim)
        let (blockElements, o2) = (2 * numHeadsKV).multipliedReportingOverflow(by: headDim * Int64(effectiveBlockTokens))
        guard !o1, !o2, rowElements <= 1 << 32, blockElements <= 1 << 40 else {
            throw bad("num_heads·head_dim (or a block of every key/value head) is too large")
        }
        guard headDim <= 65_536 else { throw BurstError(.unsupported, "head_dim above 65536 is not supported (got \(headDim))") }
    }

    /// Fields every rank must agree on, in ABI order (all but num_threads,
    /// max_bytes_local and timeout_seconds).
    public var agreedFields: [(name: String, value: Int64)] {
        [("layout", Int64(layout)), ("dtype", Int64(dtype)), ("num_layers", numLayers),
         ("num_heads_q", numHeadsQ), ("num_heads_kv", numHeadsKV), ("head_dim", headDim),
         ("softmax_scale", Int64(softmaxScale.bitPattern)), ("window_left", windowLeft),
         ("block_tokens", blockTokens), ("softcap", Int64(softcap.bitPattern)),
         ("sinks", AttentionConfig.sinksDigest(sinks))]
    }
}
