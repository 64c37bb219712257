/// A network model for the loopback transport, so that one machine can show
/// what a cluster would do: how much of the transfer time the ring hides
/// behind compute, where a pattern becomes communication-bound, and what the
/// double ring gains when links between nodes are slower than inside them.
///
/// Model: ranks form groups (nodes) of `groupSize` consecutive ranks. Every
/// rank has two ports, each with an outgoing and an incoming side: one for
/// messages inside its group (`bandwidth`, `latency`) and one for messages
/// to and from other groups (`interGroupBandwidth`, `interGroupLatency`; one
/// NIC per rank, as in rail-optimised clusters). A message of b bytes holds
/// the sender's outgoing side and the receiver's incoming side of its port
/// for b / bandwidth seconds, starting when both are free (so a rank that
/// sends to P − 1 ranks at once, or receives from them, shares its port
/// among them), and arrives `latency` seconds after its last byte left. Sends
/// never block (the loopback copies eagerly); a receive completes no earlier
/// than the arrival time. Compute is not modelled: it is whatever the ranks'
/// threads take on this machine, so calibrate the bandwidth against a
/// measured step (the benchmark does).
///
/// Where inter-group messages queue (`inter_port`):
/// - `rank` (the default): each rank has its own inter-group port, as above;
/// - `node`: one full-duplex port per group (one NIC per node, shared by the
///   node's ranks; the sender's group's outgoing side, the receiver's group's
///   incoming side);
/// - `link`: one port for every inter-group message in both directions — a
///   single shared link, which is what a rate limit on a loopback interface
///   is (scripts/cluster.sh: `tc ... tbf` on the namespace's `lo` queues the
///   packets of both directions in one queue).
///
/// Set it for `burst_context_create_loopback` with the environment variable
/// `BURST_SIMULATED_NETWORK`, e.g.
/// `latency=5e-6,bandwidth=2e9,inter_bandwidth=2.5e8,group=4,inter_port=link`
/// (seconds, bytes per second; `inter_latency` defaults to `latency`,
/// `inter_bandwidth` to `bandwidth`, `group` to all ranks in one group,
/// `inter_port` to `rank`; bandwidth 0 = infinite).
public struct SimulatedNetwork: Sendable, Equatable, CustomStringConvertible {
    public var latency: Double
    public var bandwidth: Double
    public var interGroupLatency: Double
    public var interGroupBandwidth: Double
    /// Ranks per group; 0 = one group of every rank.
    public var groupSize: Int
    /// Where inter-group messages queue (see the type's documentation).
    public enum InterPort: String, Sendable { case rank, node, link }
    public var interPort: InterPort = .rank

    public init(latency: Double = 0, bandwidth: Double = 0, interGroupLatency: Double? = nil,
                interGroupBandwidth: Double? = nil, groupSize: Int = 0) {
        self.latency = latency
        self.bandwidth = bandwidth
        self.interGroupLatency = interGroupLatency ?? latency
        self.interGroupBandwidth = interGroupBandwidth ?? bandwidth
        self.groupSize = groupSize
    }

    /// Parses the `BURST_SIMULATED_NETWORK` syntax; throws INVALID_ARGUMENT
    /// naming the bad item.
    public init(parsing text: String) throws {
        var values: [String: Double] = [:]
        var port = InterPort.rank
        for item in text.filter({ !$0.isWhitespace }).split(separator: ",") {
            let parts = item.split(separator: "=", maxSplits: 1).map(String.init)
            if parts.count == 2, parts[0] == "inter_port" {
                guard let value = InterPort(rawValue: parts[1]) else {
                    throw BurstError(.invalidArgument, "simulated network: inter_port must be rank, node or link (got '\(parts[1])')")
                }
                port = value
                continue
            }
            guard parts.count == 2, let value = Double(parts[1]), value.isFinite, value >= 0 else {
                throw BurstError(.invalidArgument, "simulated network: '\(item)' is not name=value with a finite value >= 0")
            }
            guard ["latency", "bandwidth", "inter_latency", "inter_bandwidth", "group"].contains(parts[0]) else {
                throw BurstError(.invalidArgument, "simulated network: unknown item '\(parts[0])' (latency, bandwidth, inter_latency, inter_bandwidth, group, inter_port)")
            }
            values[parts[0]] = value
        }
        self.init(latency: values["latency"] ?? 0, bandwidth: values["bandwidth"] ?? 0,
                  interGroupLatency: values["inter_latency"], interGroupBandwidth: values["inter_bandwidth"],
                  groupSize: Int(values["group"] ?? 0))
        interPort = port
    }

    /// The group of rank r among `ranks`.
    public func group(of r: Int, ranks: Int) -> Int { groupSize > 0 ? r / groupSize : 0 }

    /// (seconds the link is busy, latency) for one message.
    public func cost(bytes: Int, from source: Int, to destination: Int, ranks: Int) -> (Double, Double) {
        let inter = group(of: source, ranks: ranks) != group(of: destination, ranks: ranks)
        let bw = inter ? interGroupBandwidth : bandwidth
        return (bw > 0 ? Double(bytes) / bw : 0, inter ? interGroupLatency : latency)
    }

    /// The (outgoing, incoming) port slots a message holds: index 2·r for
    /// rank r's intra-group port, 2·r + 1 for the inter-group one (with
    /// `node`, the group's first rank's; with `link`, rank 0's for both).
    public func ports(from source: Int, to destination: Int, ranks: Int) -> (Int, Int) {
        let inter = group(of: source, ranks: ranks) != group(of: destination, ranks: ranks)
        guard inter else { return (2 * source, 2 * destination) }
        switch interPort {
        case .rank: return (2 * source + 1, 2 * destination + 1)
        case .node:
            let first = { (r: Int) in self.groupSize > 0 ? r / self.groupSize * self.groupSize : 0 }
            return (2 * first(source) + 1, 2 * first(destination) + 1)
        case .link: return (1, 1)
        }
    }

    public var description: String {
        "latency=\(latency),bandwidth=\(bandwidth),inter_latency=\(interGroupLatency),inter_bandwidth=\(interGroupBandwidth),group=\(groupSize)" + (interPort == .rank ? "" : ",inter_port=\(interPort.rawValue)")
    }
}
