import GlobalAttention
import LocalAttention

/// What one forward or backward call did on one rank: the plan's stats, the
/// messages received (counted by `CountingTransport`), and the closed-form
/// bytes of the call where one applies.
struct CallRecord {
    var stats = CallStats()
    var messagesReceivedIntra = 0
    var messagesReceivedInter = 0
    /// Closed-form (sent, received) bytes, or nil where no formula applies.
    var formula: (sent: UInt64, received: UInt64)?

    /// Seconds this rank's incoming messages occupy their links on `network`:
    /// intra-group bytes / bandwidth + inter-group bytes / inter bandwidth
    /// (the split is the plan's bytes_received_inter_group) + one latency per
    /// received message of each kind (messages counted exactly, not
    /// estimated). Bandwidth 0 is infinite. It ignores that messages on
    /// different links overlap each other, so it is the link time the rank
    /// would wait for if no compute hid any of it.
    func transferSeconds(_ network: SimulatedNetwork) -> Double {
        let inter = Double(stats.bytesReceivedInterGroup)
        let intra = Double(stats.bytesReceived) - inter
        var t = Double(messagesReceivedIntra) * network.latency + Double(messagesReceivedInter) * network.interGroupLatency
        if network.bandwidth > 0 { t += intra / network.bandwidth }
        if network.interGroupBandwidth > 0 { t += inter / network.interGroupBandwidth }
        return t
    }

    // Fixed-length encoding for MPI_Gather (counts stay exact below 2^53).
    static let encodedCount = 19
    var encoded: [Double] {
        let s = stats
        return [Double(s.bytesSent), Double(s.bytesReceived), Double(s.messagesSent), Double(s.stepsComputed),
                Double(s.stepsSkipped), s.computeSeconds, s.commWaitSeconds, s.totalSeconds, Double(s.tilesComputed),
                Double(s.tilesSkipped), Double(s.bytesSentInterGroup), Double(s.bytesReceivedInterGroup),
                Double(s.pattern), Double(s.intraGroupSize), Double(messagesReceivedIntra), Double(messagesReceivedInter),
                formula == nil ? 0 : 1, Double(formula?.sent ?? 0), Double(formula?.received ?? 0)]
    }

    init() {}

    init(decoding x: ArraySlice<Double>) {
        let v = Array(x)
        stats.bytesSent = UInt64(v[0]); stats.bytesReceived = UInt64(v[1]); stats.messagesSent = UInt64(v[2])
        stats.stepsComputed = UInt64(v[3]); stats.stepsSkipped = UInt64(v[4])
        stats.computeSeconds = v[5]; stats.commWaitSeconds = v[6]; stats.totalSeconds = v[7]
        stats.tilesComputed = UInt64(v[8]); stats.tilesSkipped = UInt64(v[9])
        stats.bytesSentInterGroup = UInt64(v[10]); stats.bytesReceivedInterGroup = UInt64(v[11])
        stats.pattern = Int32(v[12]); stats.intraGroupSize = Int32(v[13])
        messagesReceivedIntra = Int(v[14]); messagesReceivedInter = Int(v[15])
        formula = v[16] != 0 ? (UInt64(v[17]), UInt64(v[18])) : nil
    }
}

/// One rank's share of a measurement: its last timed call of each kind and
/// the workspace its plan holds afterwards.
struct RankRecord {
    var rank = 0
    var tokens = 0
    var workspaceBytes = 0
    var forward = CallRecord()
    var backward: CallRecord?

    static let encodedCount = 4 + 2 * CallRecord.encodedCount
    var encoded: [Double] {
        [Double(rank), Double(tokens), Double(workspaceBytes), backward == nil ? 0 : 1]
            + forward.encoded + (backward ?? CallRecord()).encoded
    }

    init() {}

    init(decoding v: ArraySlice<Double>) {
        let base = v.startIndex, c = CallRecord.encodedCount
        rank = Int(v[base]); tokens = Int(v[base + 1]); workspaceBytes = Int(v[base + 2])
        forward = CallRecord(decoding: v[(base + 4)..<(base + 4 + c)])
        backward = v[base + 3] != 0 ? CallRecord(decoding: v[(base + 4 + c)..<(base + 4 + 2 * c)]) : nil
    }
}

/// Closed-form bytes (sent, received) of one call on `plan`'s rank.
///
/// - ALLGATHER, ULYSSES: the patterns' own exact formulas
///   (`AttentionPlan.allgatherBytes`, `ulyssesBytes`), valid for any shards and masks.
/// - BURST, RING (ring or double ring of G ranks per group): only for equal
///   shards n and no mask (every block goes everywhere; by the route's
///   symmetry received = sent). Floats sent, Zq = batch·heads, Zkv =
///   batch·heads_kv:
///   forward 2·Zkv·n·d·(P−1);
///   BURST backward (P−1)(2d+2)·n·Zq (the bundle) + h·n·d·Zq (the partial dQ);
///   RING backward (P−1)·2·Zkv·n·d (K|V) + h·2·Zkv·n·d (the partial dK|dV),
///   where h = P accumulator hops per block (each of the P/G chains makes G−1
///   hops along its group and one home; the single ring's (P−1) + 1), or
///   P − 1 for G = 1 (the owner's own chain has no hop). Single ring, MHA:
///   BURST (P−1)(3nd+2n)Z + ndZ and RING (4P−2)·n·d·Z, as DESIGN.md §1 says.
func formulaBytes(plan: AttentionPlan, backward: Bool, masked: Bool) -> (sent: UInt64, received: UInt64)? {
    let cfg = plan.config
    let zq = Int(cfg.batch * cfg.numHeadsQ), zkv = Int(cfg.batch * cfg.numHeadsKV), d = Int(cfg.headDim)
    let storage = StorageType(rawValue: cfg.dtype) ?? .f32
    let e = storage.bytes   // bytes of a storage-typed element; statistics and partial sums are fp32
    switch plan.pattern {
    case .allgather:
        return AttentionPlan.allgatherBytes(tokens: plan.tokens, rank: plan.rank, zq: zq, zkv: zkv, headDim: d,
                                            backward: backward, storage: storage)
    case .ulysses:
        return AttentionPlan.ulyssesBytes(tokens: plan.tokens, rank: plan.rank, zq: zq, zkv: zkv, headDim: d,
                                          backward: backward, storage: storage)
    case .burst, .ring, .auto:
        let counts = plan.tokens.counts
        guard !masked, let n = counts.first, counts.allSatisfy({ $0 == n }) else { return nil }
        let p = plan.size, g = plan.groupSize
        guard p > 1 else { return (0, 0) }
        let hops = g == 1 ? p - 1 : p
        // Forward: K|V blocks (storage type). Backward: RING sends K|V (storage
        // type) and the dK|dV partial (fp32); BURST sends Q|dO (storage type),
        // D and lse (fp32) and the dQ partial (fp32).
        var bytes = 2 * zkv * n * d * (p - 1) * e
        if backward {
            bytes = plan.pattern == .ring
                ? (p - 1) * 2 * zkv * n * d * e + hops * 2 * zkv * n * d * 4
                : (p - 1) * (2 * d * e + 2 * 4) * n * zq + hops * n * d * zq * 4
        }
        return (UInt64(bytes), UInt64(bytes))
    }
}

/// JSON text of numbers and arrays (non-finite numbers become null).
enum JSON {
    static func number(_ x: Double) -> String { x.isFinite ? "\(x)" : "null" }
    static func number(_ x: Double?) -> String { x.map { number($0) } ?? "null" }
    static func array(_ xs: [Double]) -> String { "[" + xs.map { number($0) }.joined(separator: ",") + "]" }
    static func array(_ xs: [Int]) -> String { "[" + xs.map(String.init).joined(separator: ",") + "]" }
    static func array(_ xs: [UInt64]) -> String { "[" + xs.map { String($0) }.joined(separator: ",") + "]" }
    static func string(_ s: String?) -> String {
        guard let s else { return "null" }
        var escaped = ""
        for c in s {
            if c == "\"" || c == "\\" { escaped.append("\\") }
            escaped.append(c)
        }
        return "\"" + escaped + "\""
    }
    static func object(_ fields: [(String, String)]) -> String {
        "{" + fields.map { "\"\($0.0)\":\($0.1)" }.joined(separator: ",") + "}"
    }
}

let patternNames = ["burst", "ring", "allgather", "ulysses", "auto"]

/// The JSON object of one kind of call over every rank: per-rank arrays,
/// the formula beside the measured bytes, and, with a network, the link
/// time of each rank's incoming messages and the share of it compute hid.
func callObject(_ calls: [CallRecord], network: SimulatedNetwork?) -> String {
    let s = calls.map(\.stats)
    var fields: [(String, String)] = [
        ("bytes_sent", JSON.array(s.map(\.bytesSent))),
        ("bytes_received", JSON.array(s.map(\.bytesReceived))),
        ("bytes_sent_inter_group", JSON.array(s.map(\.bytesSentInterGroup))),
        ("bytes_received_inter_group", JSON.array(s.map(\.bytesReceivedInterGroup))),
        ("messages_sent", JSON.array(s.map(\.messagesSent))),
        ("messages_received", JSON.array(calls.map { $0.messagesReceivedIntra + $0.messagesReceivedInter })),
        ("messages_received_inter_group", JSON.array(calls.map(\.messagesReceivedInter))),
        ("steps_computed", JSON.array(s.map(\.stepsComputed))),
        ("steps_skipped", JSON.array(s.map(\.stepsSkipped))),
        ("tiles_computed", JSON.array(s.map(\.tilesComputed))),
        ("tiles_skipped", JSON.array(s.map(\.tilesSkipped))),
        ("compute_s", JSON.array(s.map(\.computeSeconds))),
        ("comm_wait_s", JSON.array(s.map(\.commWaitSeconds))),
        ("total_s", JSON.array(s.map(\.totalSeconds))),
    ]
    let formulas = calls.map(\.formula)
    if formulas.allSatisfy({ $0 != nil }) {
        let f = formulas.map { $0! }
        fields.append(("formula_bytes_sent", JSON.array(f.map(\.sent))))
        fields.append(("formula_bytes_received", JSON.array(f.map(\.received))))
        let agree = zip(f, s).allSatisfy { $0.sent == $1.bytesSent && $0.received == $1.bytesReceived }
        fields.append(("formula_agrees", "\(agree)"))
    } else {
        fields += [("formula_bytes_sent", "null"), ("formula_bytes_received", "null"), ("formula_agrees", "null")]
    }
    if let network {
        let transfer = calls.map { $0.transferSeconds(network) }
        fields.append(("transfer_s", JSON.array(transfer)))
        fields.append(("hidden_fraction", JSON.array(zip(s, transfer).map { hidden(wait: $0.commWaitSeconds, transfer: $1) ?? .nan })))
    } else {
        fields += [("transfer_s", "null"), ("hidden_fraction", "null")]
    }
    fields.append(("max", JSON.object([
        ("bytes_sent", "\(s.map(\.bytesSent).max() ?? 0)"),
        ("comm_wait_s", JSON.number(s.map(\.commWaitSeconds).max() ?? 0)),
        ("total_s", JSON.number(s.map(\.totalSeconds).max() ?? 0)),
        ("compute_s", JSON.number(s.map(\.computeSeconds).max() ?? 0)),
    ])))
    let count = Double(max(s.count, 1))
    fields.append(("mean", JSON.object([
        ("bytes_sent", JSON.number(Double(s.map(\.bytesSent).reduce(0, +)) / count)),
        ("comm_wait_s", JSON.number(s.map(\.commWaitSeconds).reduce(0, +) / count)),
        ("total_s", JSON.number(s.map(\.totalSeconds).reduce(0, +) / count)),
        ("compute_s", JSON.number(s.map(\.computeSeconds).reduce(0, +) / count)),
    ])))
    return JSON.object(fields)
}

/// 1 − wait / transfer, clamped to [0, 1]; nil without transfer time.
func hidden(wait: Double, transfer: Double) -> Double? {
    guard transfer > 0 else { return nil }
    return min(1, max(0, 1 - wait / transfer))
}
