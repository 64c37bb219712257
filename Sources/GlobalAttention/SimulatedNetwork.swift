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
/// Set it for `burst_context_create_loopback` with the environment variable
/// `BURST_SIMULATED_NETWORK`, e.g.
/// `latency=5e-6,bandwidth=2e9,inter_bandwidth=2.5e8,group=4`
/// (seconds, bytes per second; `inter_latency` defaults to `latency`,
/// `inter_bandwidth` to `bandwidth`, `group` to all ranks in one group;
/// bandwidth 0 = infinite).
public struct SimulatedNetwork: Sendable, Equatable, CustomStringConvertible {
    public var latency: Double
    public var bandwidth: Double
    public var interGroupLatency: Double
    public var interGroupBandwidth: Double
    /// Ranks per group; 0 = one group of every rank.
    public var groupSize: Int

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
        for item in text.filter({ !$0.isWhitespace }).split(separator: ",") {
            let parts = item.split(separator: "=", maxSplits: 1).map(String.init)
            guard parts.count == 2, let value = Double(parts[1]), value.isFinite, value >= 0 else {
                throw BurstError(.invalidArgument, "simulated network: '\(item)' is not name=value with a finite value >= 0")
            }
            guard ["latency", "bandwidth", "inter_latency", "inter_bandwidth", "group"].contains(parts[0]) else {
                throw BurstError(.invalidArgument, "simulated network: unknown item '\(parts[0])' (latency, bandwidth, inter_latency, inter_bandwidth, group)")
            }
            values[parts[0]] = value
        }
        self.init(latency: values["latency"] ?? 0, bandwidth: values["bandwidth"] ?? 0,
                  interGroupLatency: values["inter_latency"], interGroupBandwidth: values["inter_bandwidth"],
                  groupSize: Int(values["group"] ?? 0))
    }

    /// The group of rank r among `ranks`.
    public func group(of r: Int, ranks: Int) -> Int { groupSize > 0 ? r / groupSize : 0 }

    /// (seconds the link is busy, latency) for one message.
    public func cost(bytes: Int, from source: Int, to destination: Int, ranks: Int) -> (Double, Double) {
        let inter = group(of: source, ranks: ranks) != group(of: destination, ranks: ranks)
        let bw = inter ? interGroupBandwidth : bandwidth
        return (bw > 0 ? Double(bytes) / bw : 0, inter ? interGroupLatency : latency)
    }

    public var description: String {
        "latency=\(latency),bandwidth=\(bandwidth),inter_latency=\(interGroupLatency),inter_bandwidth=\(interGroupBandwidth),group=\(groupSize)"
    }
}
