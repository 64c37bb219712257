#if canImport(Glibc)
import Glibc
#endif
import LocalAttention

/// A group of ranks (burst_context): a transport plus the defaults its plans
/// inherit. Collective calls on a context must be made in the same order on
/// every rank.
public final class AttentionContext {
    public let transport: Transport
    /// Compute threads a plan gets when its config says 0.
    public let defaultThreads: Int
    /// Collective calls made on the context itself (plan and cache creation),
    /// which the agreement round pairs across ranks.
    private var plansCreated: UInt64 = 0
    /// Set by a TIMEOUT or COMMUNICATION error in plan creation. A timed-out
    /// rank cannot know whether its peers completed the call (they may have
    /// seen its record in time), and its record may still be in flight, so
    /// the context's collective sequence can no longer be trusted: every later
    /// plan creation on it fails at once (its peers then fail within their
    /// own timeout instead of pairing with a stale record).
    private var poisoned: BurstError?

    public init(transport: Transport, defaultThreads: Int) {
        self.transport = transport
        self.defaultThreads = max(1, defaultThreads)
    }

    public var rank: Int { transport.rank }
    public var size: Int { transport.size }

    /// Collective (burst_plan_create). `config` is this rank's config, or the
    /// error found while reading it (NULL pointer, wrong struct_size); either
    /// way every rank takes part in the agreement, so all ranks fail together.
    public func makePlan(_ config: Result<AttentionConfig, BurstError>) throws -> AttentionPlan {
        if let poisoned {
            throw BurstError(poisoned.status, "the context is unusable after an earlier failure of burst_plan_create (\(poisoned.message)); destroy it and create a new one")
        }
        do {
            return try makePlanOnce(config)
        } catch let error as BurstError {
            if error.poisonsPlan { poisoned = error }
            throw error
        }
    }

    private func makePlanOnce(_ config: Result<AttentionConfig, BurstError>) throws -> AttentionPlan {
        plansCreated += 1
        var localError: BurstError?
        var payload: [Int64] = []
        var timeout = AttentionConfig.defaultTimeoutSeconds
        switch config {
        case .failure(let error):
            localError = error
        case .success(let cfg):
            timeout = cfg.effectiveTimeout
            do {
                try cfg.validate()
                payload = [cfg.seqLenLocal] + cfg.agreedFields.map(\.value)
            } catch let error as BurstError {
                localError = error
            }
        }
        let deadline = Deadline.after(seconds: timeout)
        let all = try Agreement.agree(transport, operation: .planCreate, sequence: plansCreated,
                                      localError: localError, payload: payload, deadline: deadline)
        guard case .success(let cfg) = config else { throw BurstError(.internalError, "unreachable") }

        // Every rank's config is valid on its own; now they must agree.
        // Compared against rank 0 so that every rank names the same field.
        let fields = cfg.agreedFields
        for (index, field) in fields.enumerated() {
            let reference = all[0][index + 1]
            for (peer, theirs) in all.enumerated() where theirs[index + 1] != reference {
                throw BurstError(.mismatch,
                                 "config field '\(field.name)' differs across ranks: rank 0 has \(describe(field.name, reference)), rank \(peer) has \(describe(field.name, theirs[index + 1]))")
            }
        }
        let counts = all.map { Int($0[0]) }
        var total: Int64 = 0
        for count in counts {
            total += Int64(count)
            if total > AttentionConfig.maxElements {
                throw BurstError(.invalidArgument, "the global sequence length (sum of seq_len_local) is too large")
            }
        }
        // The plan keeps O(N) token metadata (every token's position and key
        // bounds, 3 Ints a token): a trial allocation of that size, agreed,
        // turns a shape too long for this machine into OUT_OF_MEMORY on every
        // rank instead of a trap inside Swift's array allocation.
        let metadataBytes = Int(total) * 3 * MemoryLayout<Int>.stride + counts.count * counts.count
        var metadataError: BurstError?
        // (mmap, not malloc: the optimiser may elide an unused malloc/free pair.)
        let trial = mmap(nil, max(metadataBytes, 1), PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0)
        if trial != MAP_FAILED, let trial { munmap(trial, max(metadataBytes, 1)) } else {
            metadataError = BurstError(.outOfMemory, "rank \(rank): cannot allocate the plan's token metadata: \(metadataBytes) bytes for \(total) tokens (3 Ints a token)")
        }
        _ = try Agreement.agree(transport, operation: .planCreate, sequence: plansCreated,
                                localError: metadataError, payload: [], deadline: deadline)
        // Every rank has the same counts and config here, so the checks below
        // fail on every rank alike, with the same message.
        let layout = try Self.tokenLayout(cfg, counts: counts, total: Int(total))
        let groupSize = try Self.ringGroupSize(cfg, nodes: transport.nodes)
        var pattern = AttentionConfig.Pattern(rawValue: cfg.pattern)!
        if pattern == .auto { pattern = CostModel.choose(cfg, tokens: layout, groupSize: groupSize) }
        if pattern == .ulysses, let error = AttentionPlan.ulyssesUnsupported(cfg, ranks: counts.count) { throw error }
        let planTransport = try transport.duplicate(deadline: deadline)
        let threads = cfg.numThreads > 0 ? Int(cfg.numThreads) : defaultThreads
        return AttentionPlan(config: cfg, transport: planTransport, tokens: layout, threads: threads,
                             pattern: pattern, groupSize: groupSize)
    }

    /// Collective (burst_kv_cache_create): validates the config, checks that
    /// every agreed field matches across ranks, and gives the cache its own
    /// duplicate of the transport. A failure poisons the context as a plan
    /// creation's would.
    public func makeKVCache(_ config: Result<KVCacheConfig, BurstError>) throws -> KVCache {
        if let poisoned {
            throw BurstError(poisoned.status, "the context is unusable after an earlier failure of a collective call (\(poisoned.message)); destroy it and create a new one")
        }
        do {
            plansCreated += 1
            var localError: BurstError?
            var payload: [Int64] = []
            var timeout = AttentionConfig.defaultTimeoutSeconds
            switch config {
            case .failure(let error): localError = error
            case .success(let cfg):
                timeout = cfg.effectiveTimeout
                do { try cfg.validate(); payload = cfg.agreedFields.map(\.value) } catch let error as BurstError { localError = error }
            }
            let deadline = Deadline.after(seconds: timeout)
            let all = try Agreement.agree(transport, operation: .cacheCreate, sequence: plansCreated,
                                          localError: localError, payload: payload, deadline: deadline)
            guard case .success(let cfg) = config else { throw BurstError(.internalError, "unreachable") }
            for (index, field) in cfg.agreedFields.enumerated() {
                for (peer, theirs) in all.enumerated() where theirs[index] != all[0][index] {
                    throw BurstError(.mismatch, "cache config field '\(field.name)' differs across ranks: rank 0 has \(describe(field.name, all[0][index])), rank \(peer) has \(describe(field.name, theirs[index]))")
                }
            }
            let cacheTransport = try transport.duplicate(deadline: deadline)
            let threads = cfg.numThreads > 0 ? Int(cfg.numThreads) : defaultThreads
            return KVCache(config: cfg, context: self, transport: cacheTransport, threads: threads)
        } catch let error as BurstError {
            if error.poisonsPlan { poisoned = error }
            throw error
        }
    }

    /// Where every rank's tokens are, once the shard sizes are known: checks
    /// that cu_seqlens ends at the global length and that each rank holds the
    /// count its distribution gives it.
    static func tokenLayout(_ cfg: AttentionConfig, counts: [Int], total: Int) throws -> TokenLayout {
        if let offsets = cfg.cuSeqlens, offsets.last! != Int64(total) {
            throw BurstError(.invalidArgument,
                             "cu_seqlens[num_sequences] = \(offsets.last!) must equal the global number of tokens \(total) (the sum of every rank's seq_len_local)")
        }
        let kind = AttentionConfig.Distribution(rawValue: cfg.distribution)!
        let distribution = TokenDistribution(kind: kind, total: total, ranks: counts.count,
                                             sequenceOffsets: cfg.cuSeqlens.map { $0.map { Int($0) } })
        if kind != .contiguous {
            for (rank, count) in counts.enumerated() where count != distribution.count(rank: rank) {
                throw BurstError(.invalidArgument,
                                 "seq_len_local of rank \(rank) is \(count), but \(kind.cName) deals that rank \(distribution.count(rank: rank)) of the \(total) tokens (burst_shard_positions gives every rank's count)")
            }
        }
        return TokenLayout(distribution: distribution, counts: counts, rule: cfg.visibilityRule)
    }

    /// Ranks per group of the double ring. intra_group_size > 0 must divide
    /// the number of ranks (G = P is the single ring). 0 detects the groups
    /// from the transport's nodes: when they are runs of consecutive ranks of
    /// one size G (mpirun's default by-slot mapping), the double ring over
    /// them; otherwise the single ring.
    static func ringGroupSize(_ cfg: AttentionConfig, nodes: [Int]) throws -> Int {
        let p = nodes.count
        if cfg.intraGroupSize > 0 {
            let g = Int(cfg.intraGroupSize)
            guard g <= p, p % g == 0 else {
                throw BurstError(.invalidArgument, "intra_group_size (\(g)) must divide the number of ranks (\(p)); 0 detects it, \(p) is the single ring")
            }
            return g
        }
        var g = 1
        while g < p && nodes[g] == nodes[0] { g += 1 }
        guard p % g == 0 else { return p }
        for r in 0..<p where nodes[r] != nodes[r - r % g] || (r % g == 0 && r > 0 && nodes[r] == nodes[r - 1]) { return p }
        return g
    }

    private func describe(_ name: String, _ value: Int64) -> String {
        if name == "softmax_scale" { return "\(Float(bitPattern: UInt32(truncatingIfNeeded: value)))" }
        if name == "cu_seqlens" { return value == 0 ? "NULL" : "contents with digest \(String(UInt64(bitPattern: value), radix: 16))" }
        return "\(value)"
    }
}
