/// Which keys a query may attend to, in global token positions.
///
/// Key j is visible to query i when `i - windowLeft <= j <= i + windowRight`
/// (a negative window is unbounded) and, if `causal`, `j <= i`. Positions are
/// global so that a shard's rule does not depend on where it was computed.
public struct VisibilityRule: Equatable, Sendable {
    public var causal: Bool
    public var windowLeft: Int
    public var windowRight: Int

    public init(causal: Bool, windowLeft: Int = -1, windowRight: Int = -1) {
        self.causal = causal
        self.windowLeft = windowLeft
        self.windowRight = windowRight
    }

    /// Upper bound of visible key positions for query position i (inclusive).
    @inline(__always)
    func lastKey(_ i: Int) -> Int {
        var last = Int.max
        if causal { last = i }
        if windowRight >= 0 { last = min(last, i &+ windowRight) }
        return last
    }

    /// Lower bound of visible key positions for query position i (inclusive).
    @inline(__always)
    func firstKey(_ i: Int) -> Int {
        windowLeft >= 0 ? i &- windowLeft : Int.min
    }

    @inline(__always)
    public func isVisible(query i: Int, key j: Int) -> Bool {
        j <= lastKey(i) && j >= firstKey(i)
    }

    public enum TileClass { case hidden, full, partial }

    /// Classifies a block of queries at positions q0...q1 against keys at
    /// k0...k1 (both inclusive, contiguous increasing positions).
    public func classify(queries q0: Int, _ q1: Int, keys k0: Int, _ k1: Int) -> TileClass {
        if q1 < q0 || k1 < k0 { return .hidden }
        // Bounds are monotone in i, so the extreme queries decide.
        if k0 > lastKey(q1) || k1 < firstKey(q0) { return .hidden }
        if k1 <= lastKey(q0) && k0 >= firstKey(q1) { return .full }
        return .partial
    }
}

extension VisibilityRule {
    /// The columns `lo..<hi` of a key tile (keys at positions k0 ..< k0 + count)
    /// that query position i sees; empty when lo >= hi. Visible keys of one
    /// query are always one contiguous run.
    @inline(__always)
    func visibleColumns(query i: Int, keyStart k0: Int, count: Int) -> (lo: Int, hi: Int) {
        let first = firstKey(i), last = lastKey(i)
        let lo = first == Int.min ? 0 : max(0, min(count, first &- k0))
        let hi = last == Int.max ? count : max(0, min(count, last &- k0 &+ 1))
        return (lo, hi)
    }
}
