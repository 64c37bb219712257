/// Which keys a query may attend to, in global token positions.
///
/// Key j is visible to query i when
/// - `i - windowLeft <= j <= i + windowRight` (a negative window side is unbounded),
/// - `j <= i` if `causal`,
/// - i and j lie in the same packed sequence, if `sequenceOffsets` is set
///   (flash-attn's cu_seqlens: sequence s holds positions
///   `offsets[s] ..< offsets[s + 1]`).
///
/// For every query the visible keys form one interval of positions,
/// `keyBounds(query:)`, and both ends of it never decrease as the query
/// position grows. The kernels rely on exactly these two facts: they get each
/// query row's bounds precomputed and each key row's position.
public struct VisibilityRule: Equatable, Sendable {
    public var causal: Bool
    public var windowLeft: Int
    public var windowRight: Int
    public var sequenceOffsets: [Int]?

    public init(causal: Bool, windowLeft: Int = -1, windowRight: Int = -1, sequenceOffsets: [Int]? = nil) {
        self.causal = causal
        self.windowLeft = windowLeft
        self.windowRight = windowRight
        self.sequenceOffsets = sequenceOffsets
    }

    /// The visible key positions of query position i: `lo...hi` (inclusive;
    /// `Int.min` / `Int.max` stand for unbounded).
    @inline(__always)
    public func keyBounds(query i: Int) -> (lo: Int, hi: Int) {
        // Saturating: a window wider than the positions (up to Int.max, which
        // the ABI accepts) is unbounded; a wrapped bound would hide every key
        // and break the bounds' order the tile skipping relies on.
        let (left, belowMin) = i.subtractingReportingOverflow(windowLeft)
        var lo = windowLeft >= 0 ? (belowMin ? Int.min : left) : Int.min
        var hi = causal ? i : Int.max
        if windowRight >= 0 {
            let (right, aboveMax) = i.addingReportingOverflow(windowRight)
            hi = min(hi, aboveMax ? Int.max : right)
        }
        if let offsets = sequenceOffsets, let s = Self.sequence(containing: i, offsets) {
            lo = max(lo, offsets[s])
            hi = min(hi, offsets[s + 1] - 1)
        }
        return (lo, hi)
    }

    @inline(__always)
    public func isVisible(query i: Int, key j: Int) -> Bool {
        let b = keyBounds(query: i)
        return j >= b.lo && j <= b.hi
    }

    /// The sequence s with offsets[s] <= i < offsets[s + 1] (nil outside the packing).
    static func sequence(containing i: Int, _ offsets: [Int]) -> Int? {
        // Largest s with offsets[s] <= i: empty sequences (equal offsets) are
        // passed over because the search finds the last of equal offsets.
        var low = 0, high = offsets.count   // first index with offsets[index] > i
        while low < high {
            let mid = (low + high) / 2
            if offsets[mid] <= i { low = mid + 1 } else { high = mid }
        }
        let s = low - 1
        return s >= 0 && s < offsets.count - 1 ? s : nil
    }

    /// Key bounds of every query at `positions` (increasing), as two arrays.
    public func rowBounds(_ positions: [Int]) -> (lo: [Int], hi: [Int]) {
        var lo = [Int](repeating: 0, count: positions.count), hi = lo
        for (row, position) in positions.enumerated() {
            (lo[row], hi[row]) = keyBounds(query: position)
        }
        return (lo, hi)
    }
}

/// The visible columns of one tile of queries against one tile of keys.
///
/// Query rows come with their key bounds (`lo[i]...hi[i]`, non-decreasing in
/// i), key columns with their positions (increasing). The visible columns of
/// a row are then one run, found by binary search; the tile's corners decide
/// the common cases (all hidden, all visible) without a search.
enum TileVisibility {
    /// True when certainly no query row sees any key (exact for the corners;
    /// a tile that passes may still turn out hidden row by row).
    @inline(__always)
    static func cornersHidden(rows: Int, lo: UnsafePointer<Int>, hi: UnsafePointer<Int>,
                              cols: Int, keys: UnsafePointer<Int>) -> Bool {
        rows == 0 || cols == 0 || keys[0] > hi[rows - 1] || keys[cols - 1] < lo[0]
    }

    /// Writes every row's visible columns `first[i] ..< last[i]`; returns
    /// false when no row sees any column.
    @inline(__always)
    static func columns(rows: Int, lo: UnsafePointer<Int>, hi: UnsafePointer<Int>,
                        cols: Int, keys: UnsafePointer<Int>,
                        first: UnsafeMutablePointer<Int>, last: UnsafeMutablePointer<Int>) -> Bool {
        if cornersHidden(rows: rows, lo: lo, hi: hi, cols: cols, keys: keys) { return false }
        let k0 = keys[0], k1 = keys[cols - 1]
        if k1 <= hi[0] && k0 >= lo[rows - 1] {   // every row sees every column
            for i in 0..<rows { first[i] = 0; last[i] = cols }
            return true
        }
        var any = false
        if k1 - k0 == cols - 1 {
            // Consecutive positions: the run is arithmetic.
            for i in 0..<rows {
                let a = lo[i] <= k0 ? 0 : min(cols, lo[i] - k0)
                let b = hi[i] >= k1 ? cols : max(0, hi[i] - k0 + 1)
                first[i] = a; last[i] = max(a, b)
                any = any || a < b
            }
        } else {
            for i in 0..<rows {
                let a = lowerBound(keys, cols, lo[i]), b = upperBound(keys, cols, hi[i])
                first[i] = a; last[i] = max(a, b)
                any = any || a < b
            }
        }
        return any
    }

    /// First index with keys[index] >= value.
    @inline(__always)
    static func lowerBound(_ keys: UnsafePointer<Int>, _ count: Int, _ value: Int) -> Int {
        var low = 0, high = count
        while low < high {
            let mid = (low + high) >> 1
            if keys[mid] < value { low = mid + 1 } else { high = mid }
        }
        return low
    }

    /// First index with keys[index] > value.
    @inline(__always)
    static func upperBound(_ keys: UnsafePointer<Int>, _ count: Int, _ value: Int) -> Int {
        var low = 0, high = count
        while low < high {
            let mid = (low + high) >> 1
            if keys[mid] <= value { low = mid + 1 } else { high = mid }
        }
        return low
    }
}
