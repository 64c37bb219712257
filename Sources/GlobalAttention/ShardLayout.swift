import LocalAttention

/// Where every rank's tokens sit in the global sequence (contiguous
/// distribution: rank r holds positions offsets[r] ..< offsets[r] + counts[r]).
public struct ShardLayout: Sendable {
    public let counts: [Int]
    public let offsets: [Int]
    public var total: Int { (offsets.last ?? 0) + (counts.last ?? 0) }
    public var maxCount: Int { counts.max() ?? 0 }

    public init(counts: [Int]) {
        self.counts = counts
        var running = 0
        offsets = counts.map { count in defer { running += count }; return running }
    }

    /// True when some query of rank `queryRank` sees some key of rank `keyRank`.
    public func needs(queryRank q: Int, keyRank k: Int, rule: VisibilityRule) -> Bool {
        guard counts[q] > 0, counts[k] > 0 else { return false }
        return rule.classify(queries: offsets[q], offsets[q] + counts[q] - 1,
                             keys: offsets[k], offsets[k] + counts[k] - 1) != .hidden
    }

    /// Forward ring: at hop `hop` (0-based) the K,V block of rank `source` sits
    /// on rank (source + hop) mod P. That rank passes it on only if a rank still
    /// ahead of it on the ring (the next P − 1 − hop ranks) needs it.
    public func forwardsBlock(holder: Int, source: Int, hop: Int, rule: VisibilityRule) -> Bool {
        let p = counts.count
        guard hop < p - 1 else { return false }
        for ahead in 1...(p - 1 - hop) where needs(queryRank: (holder + ahead) % p, keyRank: source, rule: rule) {
            return true
        }
        return false
    }
}
