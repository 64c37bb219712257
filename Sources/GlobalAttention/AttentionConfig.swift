import LocalAttention

/// A plan's shape and options, as the C ABI's `burst_attention_config` holds
/// them (enum fields stay raw `Int32` so out-of-range values can be reported).
public struct AttentionConfig: Sendable {
    public enum Layout: Int32 { case bshd = 0, bhsd = 1 }
    public enum Mask: Int32 { case none = 0, causal = 1 }
    public enum Distribution: Int32, Sendable {
        case contiguous = 0, zigzag = 1, striped = 2
        public var cName: String { ["BURST_DISTRIBUTION_CONTIGUOUS", "BURST_DISTRIBUTION_ZIGZAG", "BURST_DISTRIBUTION_STRIPED"][Int(rawValue)] }
    }
    public enum Pattern: Int32, Sendable { case burst = 0, ring = 1, allgather = 2, ulysses = 3, auto = 4 }
    /// The precision of the tile products (BURST_COMPUTE_*; the header states
    /// the contract): `exact` fp32 products (DESIGN §3), `fast` operands
    /// rounded to bf16 with fp32 accumulation, `default` fast for bf16
    /// storage on a CPU with bf16 products, else exact.
    public enum Compute: Int32, Sendable { case `default` = 0, exact = 1, fast = 2 }

    public var layout: Int32 = Layout.bshd.rawValue
    public var dtype: Int32 = 0
    public var mask: Int32 = Mask.none.rawValue
    public var distribution: Int32 = Distribution.contiguous.rawValue
    public var pattern: Int32 = Pattern.burst.rawValue
    public var batch: Int64 = 0
    public var seqLenLocal: Int64 = 0
    public var numHeadsQ: Int64 = 0
    public var numHeadsKV: Int64 = 0
    public var headDim: Int64 = 0
    public var softmaxScale: Float = 0
    public var windowLeft: Int64 = -1
    public var windowRight: Int64 = -1
    public var cuSeqlens: [Int64]? = nil
    public var numSequences: Int64 = 0
    public var numThreads: Int32 = 0
    public var intraGroupSize: Int32 = 0
    public var timeoutSeconds: Double = 0
    /// BURST_COMPUTE_* (0 = default; see `products`).
    public var compute: Int32 = Compute.default.rawValue
    /// Logit soft-capping: 0 = off, else finite and > 0 (scores become
    /// softcap·tanh(s/softcap), s the scaled score).
    public var softcap: Float = 0
    /// Attention sinks: nil = none, else one fp32 logit per query head
    /// (`numHeadsQ` values; the plan's initial values, `AttentionPlan.setSinks`
    /// replaces them).
    public var sinks: [Float]? = nil

    public init() {}

    /// The timeout every blocking wait of a call uses when the config says 0.
    public static let defaultTimeoutSeconds: Double = 300
    /// The longest timeout a config may ask for (a week): every wait is bounded.
    public static let maxTimeoutSeconds: Double = 604_800

    /// Largest number of elements of any one tensor (keeps every index
    /// computation far from overflow).
    static let maxElements: Int64 = 1 << 46

    public var effectiveTimeout: Double {
        timeoutSeconds > 0 && timeoutSeconds.isFinite ? timeoutSeconds : Self.defaultTimeoutSeconds
    }

    /// The element type of q, k, v, out, dout, dq, dk, dv (valid after `validate`).
    public var storage: StorageType { StorageType(rawValue: dtype) ?? .f32 }

    /// The tile products the kernels run (valid after `validate`): FAST →
    /// bf16; DEFAULT → bf16 iff the storage is bf16 (the caller already chose
    /// bf16 numerics; fp16 inputs would lose mantissa bits if rounded to
    /// bf16) and the CPU has bf16 products (emulated ones are slower than
    /// exact ones, and exact ones meet the FAST bounds); EXACT → fp32.
    public var products: LocalAttention.Products {
        products(bf16InHardware: LocalAttention.bf16InHardware)
    }

    func products(bf16InHardware: Bool) -> LocalAttention.Products {
        switch Compute(rawValue: compute) ?? .default {
        case .fast: return .bf16
        case .exact: return .exact
        case .default: return storage == .bf16 && bf16InHardware ? .bf16 : .exact
        }
    }

    /// Query heads per key/value head (GQA; 1 for MHA).
    public var group: Int { Int(numHeadsQ / max(numHeadsKV, 1)) }

    public var visibilityRule: VisibilityRule {
        VisibilityRule(causal: mask == Mask.causal.rawValue, windowLeft: Int(windowLeft), windowRight: Int(windowRight),
                       sequenceOffsets: cuSeqlens.map { $0.map { Int($0) } })
    }

    public var effectiveScale: Float {
        softmaxScale != 0 ? softmaxScale : 1 / Float(Double(headDim).squareRoot())
    }

    /// Checks the fields that one rank can check alone: ranges first
    /// (INVALID_ARGUMENT), then what this version does not implement
    /// (UNSUPPORTED). cu_seqlens is checked here for its start and order;
    /// its end needs every rank's size and is checked at plan creation.
    public func validate() throws {
        func bad(_ message: String) -> BurstError { BurstError(.invalidArgument, message) }
        guard Layout(rawValue: layout) != nil else { throw bad("layout: unknown value \(layout) (BURST_LAYOUT_BSHD = 0, BURST_LAYOUT_BHSD = 1)") }
        guard StorageType(rawValue: dtype) != nil else {
            throw bad("dtype: unknown value \(dtype) (BURST_DTYPE_F32 = 0, BURST_DTYPE_BF16 = 1, BURST_DTYPE_F16 = 2)")
        }
        guard Mask(rawValue: mask) != nil else { throw bad("mask: unknown value \(mask) (BURST_MASK_NONE = 0, BURST_MASK_CAUSAL = 1)") }
        guard Distribution(rawValue: distribution) != nil else { throw bad("distribution: unknown value \(distribution) (0..2)") }
        guard Pattern(rawValue: pattern) != nil else { throw bad("pattern: unknown value \(pattern) (0..4)") }
        guard batch > 0 else { throw bad("batch must be positive (got \(batch))") }
        guard seqLenLocal >= 0 else { throw bad("seq_len_local must be >= 0 (got \(seqLenLocal))") }
        try Self.checkHeads(numHeadsQ, numHeadsKV, headDim: headDim, scale: softmaxScale)
        guard windowLeft >= -1 else { throw bad("window_left must be >= -1 (got \(windowLeft))") }
        guard windowRight >= -1 else { throw bad("window_right must be >= -1 (got \(windowRight))") }
        guard numSequences >= 0 else { throw bad("num_sequences must be >= 0 (got \(numSequences))") }
        guard (cuSeqlens == nil) == (numSequences == 0) else {
            throw bad("cu_seqlens and num_sequences must be both set or both NULL/0")
        }
        guard numThreads >= 0 else { throw bad("num_threads must be >= 0 (got \(numThreads))") }
        guard intraGroupSize >= 0 else { throw bad("intra_group_size must be >= 0 (got \(intraGroupSize))") }
        try Self.checkTimeout(timeoutSeconds)
        guard Compute(rawValue: compute) != nil else {
            throw bad("compute: unknown value \(compute) (BURST_COMPUTE_DEFAULT = 0, BURST_COMPUTE_EXACT = 1, BURST_COMPUTE_FAST = 2)")
        }
        try Self.checkSoftcap(softcap)
        if let sinks {
            guard Int64(sinks.count) == numHeadsQ else {
                throw bad("sinks must hold num_heads_q = \(numHeadsQ) values (got \(sinks.count))")
            }
            try Self.checkSinks(sinks)
        }
        // Sizes: every tensor must be addressable without overflow.
        for (name, heads) in [("q", numHeadsQ), ("k", numHeadsKV)] {
            var total = batch
            for factor in [max(seqLenLocal, 1), heads, headDim] {
                let (product, overflow) = total.multipliedReportingOverflow(by: factor)
                guard !overflow, product <= Self.maxElements else {
                    throw bad("tensor \(name) is too large: batch·seq_len_local·heads·head_dim exceeds 2^46 elements")
                }
                total = product
            }
        }

        if let cuSeqlens {
            // Local checks; the end (= the global length) is checked once the
            // shard sizes are known (AttentionContext.makePlan).
            guard cuSeqlens.count >= 2, Int64(cuSeqlens.count) == numSequences + 1 else {
                throw bad("cu_seqlens must hold num_sequences + 1 = \(numSequences + 1) offsets (got \(cuSeqlens.count))")
            }
            if let first = cuSeqlens.first, first != 0 {
                throw bad("cu_seqlens[0] must be 0 (got \(first))")
            }
            for s in 1..<cuSeqlens.count where cuSeqlens[s] < cuSeqlens[s - 1] {
                throw bad("cu_seqlens must not decrease: cu_seqlens[\(s)] = \(cuSeqlens[s]) < cu_seqlens[\(s - 1)] = \(cuSeqlens[s - 1])")
            }
        }

        func unsupported(_ message: String) -> BurstError { BurstError(.unsupported, message) }
        // Tile kernels take 32-bit leading dimensions; no attention model comes near this.
        guard headDim <= 65_536 else { throw unsupported("head_dim above 65536 is not supported (got \(headDim))") }
    }

    /// The checks of the head counts, head_dim and softmax_scale a plan and a
    /// KV cache share (INVALID_ARGUMENT naming the field).
    static func checkHeads(_ heads: Int64, _ kvHeads: Int64, headDim: Int64, scale: Float) throws {
        func bad(_ message: String) -> BurstError { BurstError(.invalidArgument, message) }
        guard heads > 0 else { throw bad("num_heads_q must be positive (got \(heads))") }
        guard kvHeads > 0 else { throw bad("num_heads_kv must be positive (got \(kvHeads))") }
        guard headDim > 0 else { throw bad("head_dim must be positive (got \(headDim))") }
        guard heads % kvHeads == 0 else {
            throw bad("num_heads_q (\(heads)) must be a multiple of num_heads_kv (\(kvHeads))")
        }
        guard scale.isFinite, scale >= 0 else {
            throw bad("softmax_scale must be finite and >= 0 (0 = 1/sqrt(head_dim); got \(scale))")
        }
    }

    /// softcap: 0 (off) or finite and > 0.
    static func checkSoftcap(_ cap: Float) throws {
        guard cap.isFinite, cap >= 0 else {
            throw BurstError(.invalidArgument, "softcap must be 0 (off) or finite and > 0 (got \(cap))")
        }
    }

    /// Sink logits: every value finite (a NaN or infinite sink would make
    /// every output of its head NaN or 0).
    public static func checkSinks(_ sinks: [Float], what: String = "sinks") throws {
        if let i = sinks.firstIndex(where: { !$0.isFinite }) {
            throw BurstError(.invalidArgument, "\(what)[\(i)] is \(sinks[i]): sink logits must be finite")
        }
    }

    /// FNV-1a over the sink values' bits (0 when there are none), for the
    /// agreement of every call.
    public static func sinksDigest(_ sinks: [Float]?) -> Int64 {
        guard let sinks else { return 0 }
        var hash: UInt64 = 0xcbf2_9ce4_8422_2325 ^ UInt64(sinks.count)
        for value in sinks {
            var v = UInt64(value.bitPattern)
            for _ in 0..<4 {
                hash = (hash ^ (v & 0xff)) &* 0x100_0000_01b3
                v >>= 8
            }
        }
        return Int64(bitPattern: hash | 1)   // never 0 (= no sinks)
    }

    /// timeout_seconds: finite, >= 0 and at most a week (0 = the default).
    static func checkTimeout(_ seconds: Double) throws {
        guard seconds >= 0, seconds <= maxTimeoutSeconds else {
            throw BurstError(.invalidArgument, "timeout_seconds must be finite, >= 0 and <= \(Int(maxTimeoutSeconds)) (0 = the default \(Int(defaultTimeoutSeconds)) s; got \(seconds))")
        }
    }

    /// The fields that must agree across ranks, in ABI order, with their C
    /// names (everything but seq_len_local, num_threads and timeout_seconds).
    /// cu_seqlens is compared by content through a hash and its length.
    public var agreedFields: [(name: String, value: Int64)] {
        [("layout", Int64(layout)), ("dtype", Int64(dtype)), ("mask", Int64(mask)),
         ("distribution", Int64(distribution)), ("pattern", Int64(pattern)),
         ("batch", batch), ("num_heads_q", numHeadsQ), ("num_heads_kv", numHeadsKV),
         ("head_dim", headDim), ("softmax_scale", Int64(softmaxScale.bitPattern)),
         ("window_left", windowLeft), ("window_right", windowRight),
         ("cu_seqlens", cuSeqlensDigest), ("num_sequences", numSequences),
         ("intra_group_size", Int64(intraGroupSize)), ("compute", Int64(compute)),
         ("softcap", Int64(softcap.bitPattern)), ("sinks", Self.sinksDigest(sinks))]
    }

    /// FNV-1a over the offsets (0 when absent).
    var cuSeqlensDigest: Int64 {
        guard let cuSeqlens else { return 0 }
        var hash: UInt64 = 0xcbf2_9ce4_8422_2325
        for value in cuSeqlens {
            var v = UInt64(bitPattern: value)
            for _ in 0..<8 {
                hash = (hash ^ (v & 0xff)) &* 0x100_0000_01b3
                v >>= 8
            }
        }
        return Int64(bitPattern: hash)
    }
}
