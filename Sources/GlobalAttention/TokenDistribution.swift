import LocalAttention

/// How the tokens of the global sequence (positions 0 ..< total) are dealt to
/// the ranks: the rules of `BURST_DISTRIBUTION_*` in the header, in one place
/// for the schedules, the plan's checks and the exported sharding helpers.
///
/// - contiguous: rank r holds one run; `counts` (one per rank) say how long.
///   Without counts (the helpers) the balanced split: ⌊N/P⌋ each, the first
///   N mod P ranks one more.
/// - zigzag: the sequence — with packing, every sequence on its own — is cut
///   into 2P chunks, chunk c of length ⌊L/2P⌋ + (c < L mod 2P); rank r holds
///   chunks r and 2P−1−r.
/// - striped: position t on rank t mod P (packing does not change it).
/// A rank's rows are its tokens in increasing position.
public struct TokenDistribution: Sendable {
    public let kind: AttentionConfig.Distribution
    public let total: Int
    public let ranks: Int
    /// Sequence offsets (cu_seqlens) or nil; validated by `validate`.
    public let sequenceOffsets: [Int]?

    public init(kind: AttentionConfig.Distribution, total: Int, ranks: Int, sequenceOffsets: [Int]?) {
        self.kind = kind
        self.total = total
        self.ranks = ranks
        self.sequenceOffsets = sequenceOffsets
    }

    /// The sequences the rule cuts separately (zigzag with packing) or the
    /// whole buffer as one.
    private var pieces: [(start: Int, length: Int)] {
        if kind == .zigzag, let offsets = sequenceOffsets {
            return (0..<(offsets.count - 1)).map { (offsets[$0], offsets[$0 + 1] - offsets[$0]) }
        }
        return [(0, total)]
    }

    /// Zigzag chunk c of a piece of `length` tokens: (offset in the piece, length).
    private func chunk(_ c: Int, of length: Int) -> (Int, Int) {
        let parts = 2 * ranks, base = length / parts, extra = length % parts
        return (c * base + min(c, extra), base + (c < extra ? 1 : 0))
    }

    /// The number of tokens rank r holds (contiguous: the balanced split).
    public func count(rank r: Int) -> Int {
        switch kind {
        case .contiguous:
            return total / ranks + (r < total % ranks ? 1 : 0)
        case .striped:
            return r < total ? (total - r + ranks - 1) / ranks : 0
        case .zigzag:
            return pieces.reduce(0) { sum, piece in
                sum + chunk(r, of: piece.length).1 + chunk(2 * ranks - 1 - r, of: piece.length).1
            }
        }
    }

    /// Rank r's token positions, increasing. For contiguous, `counts` gives
    /// the split (nil: the balanced one).
    public func positions(rank r: Int, counts: [Int]? = nil) -> [Int] {
        switch kind {
        case .contiguous:
            if let counts {
                let start = counts.prefix(r).reduce(0, +)
                return Array(start..<(start + counts[r]))
            }
            // The balanced split in closed form: O(1), whatever the number of
            // ranks (the helpers accept any world_size).
            let start = r * (total / ranks) + min(r, total % ranks)
            return Array(start..<(start + count(rank: r)))
        case .striped:
            return Array(stride(from: r, to: total, by: ranks))
        case .zigzag:
            var result: [Int] = []
            result.reserveCapacity(count(rank: r))
            for piece in pieces {
                for c in [r, 2 * ranks - 1 - r] {
                    let (offset, length) = chunk(c, of: piece.length)
                    result.append(contentsOf: (piece.start + offset)..<(piece.start + offset + length))
                }
            }
            return result
        }
    }
}

/// Every rank's tokens for one plan, with what the schedules ask of them:
/// positions (for keys), key bounds (for queries), and which rank's queries
/// see which rank's keys at all.
public final class TokenLayout {
    public let counts: [Int]
    /// positions[r][i]: global position of rank r's row i (increasing).
    public let positions: [[Int]]
    /// Key-position bounds of every query row: lo[r][i] ... hi[r][i].
    public let lo: [[Int]], hi: [[Int]]
    /// visible[a * P + b]: some query of rank a sees some key of rank b.
    private let visible: [Bool]

    public var ranks: Int { counts.count }
    public var total: Int { counts.reduce(0, +) }
    public var maxCount: Int { counts.max() ?? 0 }

    public init(distribution: TokenDistribution, counts: [Int], rule: VisibilityRule) {
        self.counts = counts
        let p = counts.count
        positions = (0..<p).map { distribution.positions(rank: $0, counts: counts) }
        let bounds = positions.map { rule.rowBounds($0) }
        lo = bounds.map(\.lo)
        hi = bounds.map(\.hi)
        var visible = [Bool](repeating: false, count: p * p)
        for a in 0..<p {
            for b in 0..<p {
                visible[a * p + b] = Self.anyVisible(lo: lo[a], hi: hi[a], keys: positions[b])
            }
        }
        self.visible = visible
    }

    /// A two-pointer sweep: bounds and keys both increase, so the first key
    /// at or above lo only moves forward. O(rows + keys).
    private static func anyVisible(lo: [Int], hi: [Int], keys: [Int]) -> Bool {
        guard let firstKey = keys.first, let lastKey = keys.last, !lo.isEmpty else { return false }
        if firstKey > hi[hi.count - 1] || lastKey < lo[0] { return false }
        var k = 0
        for i in 0..<lo.count {
            while k < keys.count && keys[k] < lo[i] { k += 1 }
            if k == keys.count { return false }
            if keys[k] <= hi[i] { return true }
        }
        return false
    }

    /// True when some query of rank `queryRank` sees some key of rank `keyRank`.
    public func needs(queryRank a: Int, keyRank b: Int) -> Bool { visible[a * ranks + b] }
}
