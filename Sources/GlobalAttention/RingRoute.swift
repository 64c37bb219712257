/// The order in which blocks visit the ranks of a ring pattern: one ring, or
/// the paper's double ring (a ring inside each group of `groupSize`
/// consecutive ranks, inside a ring of the groups).
///
/// Rank r = g·G + i (group g of Q = P/G, member i). At step k = s·G + t
/// (outer step s, inner step t) rank (g, i) holds the block of rank
/// (g − s, i − t), indices modulo Q and G. So inside an outer step a block
/// moves along the group's ring (intra-group links), and between outer steps
/// it moves to the same member of the next group (inter-group links). The
/// inter-group transfer of the block needed at outer step s + 1 starts at
/// the first inner step of s, so it has G steps of compute to hide behind,
/// and every rank uses its own inter-group link (rail-optimised clusters:
/// one NIC per rank). G = P is the single ring; G = 1 is a single ring whose
/// every hop crosses groups.
public struct RingRoute: Sendable, Equatable {
    public let ranks: Int
    public let groupSize: Int

    /// `groupSize` must divide `ranks` (the plan checks it).
    public init(ranks: Int, groupSize: Int) {
        precondition(ranks > 0 && groupSize > 0 && ranks % groupSize == 0)
        self.ranks = ranks
        self.groupSize = groupSize
    }

    public var groups: Int { ranks / groupSize }
    public var isDoubleRing: Bool { groupSize < ranks }

    @inline(__always) func group(_ r: Int) -> Int { r / groupSize }
    @inline(__always) func member(_ r: Int) -> Int { r % groupSize }
    @inline(__always) func rank(group g: Int, member i: Int) -> Int {
        let q = groups, gs = groupSize
        return ((g % q + q) % q) * gs + (i % gs + gs) % gs
    }

    /// The block rank r holds at step k (0 ..< P); step 0 is its own.
    public func source(_ r: Int, step k: Int) -> Int {
        rank(group: group(r) - k / groupSize, member: member(r) - k % groupSize)
    }

    /// The step at which rank r holds the block of rank b.
    public func step(_ r: Int, holding b: Int) -> Int {
        let q = groups, gs = groupSize
        let s = ((group(r) - group(b)) % q + q) % q, t = ((member(r) - member(b)) % gs + gs) % gs
        return s * gs + t
    }

    /// Where rank r's block of step k (≥ 1) comes from: the previous member
    /// of its group (inner steps), or the same member of the previous group
    /// (the first step of an outer step).
    public func provider(_ r: Int, step k: Int) -> Int {
        k % groupSize != 0 ? rank(group: group(r), member: member(r) - 1) : rank(group: group(r) - 1, member: member(r))
    }

    /// The next member of r's group (intra-group successor).
    public func intraNext(_ r: Int) -> Int { rank(group: group(r), member: member(r) + 1) }
    /// The same member of the next group (inter-group successor).
    public func interNext(_ r: Int) -> Int { rank(group: group(r) + 1, member: member(r)) }

    /// The ranks that get block b from rank x: its intra-group successor if
    /// x is not the last of its outer step's chain, and its inter-group
    /// successor if x holds b at the first inner step of an outer step that
    /// is not the last.
    func children(of x: Int, block b: Int) -> [Int] {
        let k = step(x, holding: b), s = k / groupSize, t = k % groupSize
        var result: [Int] = []
        if t < groupSize - 1 { result.append(intraNext(x)) }
        if t == 0 && s < groups - 1 { result.append(interNext(x)) }
        return result
    }
}

/// What a ring pass of one plan moves, for every rank alike: which ranks a
/// block must reach (`delivered`), and for passes that carry an accumulator
/// (the backward's partial dQ, or dK|dV), the stretch of each chain — the
/// ranks of one outer step — that it travels.
///
/// A block goes to rank x when x or a rank that gets the block from x needs
/// it (`needs(holder, block)`), so no transfer is made that nobody uses.
/// A chain's accumulator starts at its first rank that needs the block (the
/// owner itself for chain 0), moves along the group to the chain's last rank
/// that needs the block, and goes home from there; the owner adds the chains
/// in outer-step order (chain 0 lands in place), so the sum is the same on
/// every run.
public struct RingPass: Sendable {
    public let route: RingRoute
    /// needs[b·P + x]: rank x computes with block b.
    private let needs: [Bool]
    /// delivered[b·P + x]: block b is sent to x (x ≠ b).
    private let delivered: [Bool]
    /// chains[b·Q + c]: inner positions (first, last) the accumulator of
    /// block b travels in outer step c, or nil if it does not exist.
    private let chains: [ClosedRange<Int>?]

    public init(route: RingRoute, needs need: (_ holder: Int, _ block: Int) -> Bool) {
        self.route = route
        let p = route.ranks, q = route.groups, g = route.groupSize
        var needs = [Bool](repeating: false, count: p * p)
        for b in 0..<p { for x in 0..<p { needs[b * p + x] = need(x, b) } }
        var delivered = [Bool](repeating: false, count: p * p)
        var chains = [ClosedRange<Int>?](repeating: nil, count: p * q)
        for b in 0..<p {
            // Steps decrease, so every child is settled before its parent.
            for k in stride(from: p - 1, through: 1, by: -1) {
                let x = route.rank(group: route.group(b) + k / g, member: route.member(b) + k % g)
                delivered[b * p + x] = needs[b * p + x] || route.children(of: x, block: b).contains { delivered[b * p + $0] }
            }
            for c in 0..<q {
                let members = (0..<g).filter { t in
                    needs[b * p + route.rank(group: route.group(b) + c, member: route.member(b) + t)]
                }
                if c == 0 {
                    chains[b * q] = 0...(members.last ?? 0)
                } else if let first = members.first, let last = members.last {
                    chains[b * q + c] = first...last
                }
            }
        }
        self.needs = needs
        self.delivered = delivered
        self.chains = chains
    }

    public func needs(holder x: Int, block b: Int) -> Bool { needs[b * route.ranks + x] }
    public func isDelivered(block b: Int, to x: Int) -> Bool { x != b && delivered[b * route.ranks + x] }
    /// Inner positions the accumulator of block b travels in outer step c.
    public func chain(block b: Int, outer c: Int) -> ClosedRange<Int>? { chains[b * route.groups + c] }

    /// The rank at inner position t of chain c of block b.
    public func chainRank(block b: Int, outer c: Int, position t: Int) -> Int {
        route.rank(group: route.group(b) + c, member: route.member(b) + t)
    }
}

extension RingPass {
    /// What a pass with these block sizes moves, per rank: amounts sent and
    /// received (in the unit of the sizes given: the cost model passes bytes)
    /// and messages sent — the same rules the ring runs by, for the
    /// cost model (tests check the measured counts against an independent
    /// statement of the rules).
    public func traffic(readOnly: (Int) -> Int, accumulator: ((Int) -> Int)?) -> [(sent: Int, received: Int, messages: Int)] {
        let p = route.ranks
        var result = [(sent: Int, received: Int, messages: Int)](repeating: (0, 0, 0), count: p)
        func move(_ floats: Int, _ from: Int, _ to: Int) {
            result[from].sent += floats; result[from].messages += 1; result[to].received += floats
        }
        for b in 0..<p {
            for x in 0..<p where isDelivered(block: b, to: x) {
                move(readOnly(b), route.provider(x, step: route.step(x, holding: b)), x)
            }
            guard let accumulator else { continue }
            for c in 0..<route.groups {
                guard let chain = chain(block: b, outer: c) else { continue }
                let at = { (t: Int) in chainRank(block: b, outer: c, position: t) }
                for t in chain.lowerBound..<chain.upperBound { move(accumulator(b), at(t), at(t + 1)) }
                if at(chain.upperBound) != b { move(accumulator(b), at(chain.upperBound), b) }
            }
        }
        return result
    }
}
