/// BURST_PATTERN_AUTO: the pattern a plan runs, chosen at plan creation from
/// the shape alone, so every rank picks the same one.
///
/// The model, for a forward + backward pair:
/// 1. **Shape**: ULYSSES only when num_heads_kv is divisible by P.
/// 2. **Memory**: the workspace estimate of a pattern (`workspaceFloats`)
///    must be at most twice the smallest candidate's. This is what rules
///    ALLGATHER out at large P: it holds every K,V of the sequence.
/// 3. **Cost** = the busiest rank's bytes sent + received (exact, for this
///    mask, distribution, shard sizes and GQA ratio: the ring rules of
///    `RingPass.traffic`, `AttentionPlan.allgatherBytes`, `ulyssesBytes`)
///    + 64 KiB per message it sends (a message's latency, ~5 µs, at
///    ~12.5 GB/s). ULYSSES' bytes count twice: its all-to-alls happen before
///    and after the compute, while the ring patterns and ALLGATHER move their
///    data while the tiles run.
/// The lowest cost wins; ties go to the earlier of BURST, RING, ALLGATHER,
/// ULYSSES. So: MHA picks BURST (25 % fewer bytes than RING) until
/// ULYSSES' ~11·Z·N·d/P (doubled) drops below BURST's ~5·Z·N·d at P ≥ 5
/// with divisible heads; GQA with a group of 2 or more picks RING (K,V side
/// is group× smaller than the query side); windows and causal masks let the
/// ring patterns skip transfers, which ULYSSES cannot.
/// `burst_stats.pattern` reports the choice.
public enum CostModel {
    public struct Estimate: Sendable {
        public var pattern: AttentionConfig.Pattern
        public var bytes: Int          // busiest rank, forward + backward, sent + received
        public var messages: Int       // busiest rank's messages sent, forward + backward
        public var workspaceFloats: Int
        public var cost: Double
        public var eligible: Bool
    }

    static let messageBytes = 65_536.0

    static func choose(_ config: AttentionConfig, tokens: TokenLayout, groupSize: Int) -> AttentionConfig.Pattern {
        estimates(config, tokens: tokens, groupSize: groupSize).filter(\.eligible).min { $0.cost < $1.cost }?.pattern ?? .burst
    }

    /// Every pattern's estimate (for the choice, the docs and the tests).
    public static func estimates(_ config: AttentionConfig, tokens: TokenLayout, groupSize: Int) -> [Estimate] {
        let p = tokens.ranks, d = Int(config.headDim), batch = Int(config.batch)
        let zq = batch * Int(config.numHeadsQ), zkv = batch * Int(config.numHeadsKV)
        let n = tokens.maxCount, total = tokens.total
        let route = RingRoute(ranks: p, groupSize: groupSize)
        let keyPass = RingPass(route: route) { tokens.needs(queryRank: $0, keyRank: $1) }
        let queryPass = RingPass(route: route) { tokens.needs(queryRank: $1, keyRank: $0) }
        // Traffic in bytes: storage-typed parts (K, V, Q, dO) at e bytes an
        // element, the fp32 parts (D, lse, partial sums) at 4.
        let e = config.storage.bytes
        let kv = { (b: Int) in 2 * zkv * tokens.counts[b] * d * e }
        let partialKV = { (b: Int) in 4 * 2 * zkv * tokens.counts[b] * d }
        let forward = keyPass.traffic(readOnly: kv, accumulator: nil)
        let burst = queryPass.traffic(readOnly: { zq * tokens.counts[$0] * (2 * d * e + 8) },
                                      accumulator: { 4 * zq * tokens.counts[$0] * d })
        let ring = keyPass.traffic(readOnly: kv, accumulator: partialKV)

        func ringEstimate(_ backward: [(sent: Int, received: Int, messages: Int)]) -> (Int, Int) {
            var bytes = 0, messages = 0
            for r in 0..<p {
                bytes = max(bytes, forward[r].sent + forward[r].received + backward[r].sent + backward[r].received)
                messages = max(messages, forward[r].messages + backward[r].messages)
            }
            return (bytes, messages)
        }
        func collectiveEstimate(_ count: (Int, Bool) -> (sent: UInt64, received: UInt64), phases: Int) -> (Int, Int) {
            var bytes = 0
            for r in 0..<p {
                let f = count(r, false), b = count(r, true)
                bytes = max(bytes, Int(f.sent + f.received + b.sent + b.received))
            }
            return (bytes, phases * (p - 1))
        }
        // Workspace estimates (floats, the larger of forward and backward), n = the largest shard.
        let m = n
        let ringForward = 2 * zq * n * d + 2 * zkv * n * d + 2 * zq * n + 4 * zkv * m * d * (route.groups > 1 ? 2 : 1)
        let local = zq * n * (2 * d + 2) + zq * n * d + 4 * zkv * n * d
        let burstBackward = local + (2 * zq * m * (2 * d + 2) + 2 * zq * m * d) * (route.groups > 1 ? 2 : 1)
        let ringBackward = local + (8 * zkv * m * d) * (route.groups > 1 ? 2 : 1)
        let allgather = max(2 * zq * n * d + 2 * zq * n + 2 * zkv * total * d,
                            zq * n * (3 * d + 1) + 2 * zkv * total * d + (p + 1) * 2 * zkv * n * d + 4 * zkv * m * d)
        let zqs = zq / max(p, 1), zkvs = zkv / max(p, 1)
        let ulysses = max(2 * (zqs + 2 * zkvs) * total * d + zqs * total * (3 * d + 3),
                          2 * (zqs * (2 * d + 2) + 2 * zkvs * d) * total + zqs * total * (4 * d + 2) + 4 * zkvs * total * d
                              + 2 * (zqs + 2 * zkvs) * total * d)

        var result: [Estimate] = []
        func add(_ pattern: AttentionConfig.Pattern, _ traffic: (Int, Int), workspace: Int, weight: Double, shapeOK: Bool) {
            let cost = weight * Double(traffic.0) + messageBytes * Double(traffic.1)
            result.append(Estimate(pattern: pattern, bytes: traffic.0, messages: traffic.1, workspaceFloats: workspace,
                                   cost: cost, eligible: shapeOK))
        }
        add(.burst, ringEstimate(burst), workspace: max(ringForward, burstBackward), weight: 1, shapeOK: true)
        add(.ring, ringEstimate(ring), workspace: max(ringForward, ringBackward), weight: 1, shapeOK: true)
        add(.allgather, collectiveEstimate({ AttentionPlan.allgatherBytes(tokens: tokens, rank: $0, zq: zq, zkv: zkv, headDim: d, backward: $1, storage: config.storage) }, phases: 3),
            workspace: allgather, weight: 1, shapeOK: true)
        let ulyssesOK = AttentionPlan.ulyssesUnsupported(config, ranks: p) == nil
        add(.ulysses, ulyssesOK ? collectiveEstimate({ AttentionPlan.ulyssesBytes(tokens: tokens, rank: $0, zq: zq, zkv: zkv, headDim: d, backward: $1, storage: config.storage) }, phases: 4) : (0, 0),
            workspace: ulysses, weight: 2, shapeOK: ulyssesOK)
        let smallest = result.filter(\.eligible).map(\.workspaceFloats).min() ?? 0
        for i in result.indices where result[i].workspaceFloats > 2 * smallest { result[i].eligible = false }
        if p == 1 { for i in result.indices { result[i].eligible = result[i].pattern == .burst } }
        return result
    }
}
