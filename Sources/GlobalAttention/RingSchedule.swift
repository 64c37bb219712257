import LocalAttention

/// BURST_PATTERN_BURST and BURST_PATTERN_RING on one ring or a double ring
/// (`RingRoute`): blocks travel rank to rank while every rank computes with
/// the block it holds (BurstAttention's GAO; the pass is in
/// `RingSchedule+Pass`). The two patterns share the forward, where K|V
/// travel (`RingSchedule+Forward`), and differ in the backward
/// (`RingSchedule+Backward`): BURST moves the query side, RING the key side.
final class RingSchedule: TrainingSchedule {
    let env: ScheduleEnvironment
    /// RING: K|V and the partial dK|dV travel in the backward. BURST: the
    /// query bundle and the partial dQ.
    let keysTravel: Bool
    let route: RingRoute

    /// Who needs whose blocks on the route: keys and values go to the ranks
    /// whose queries see them (forward, RING backward); query bundles go to
    /// the ranks whose keys they see (BURST backward). Built on first use.
    lazy var keyPass = RingPass(route: route) { holder, block in self.env.tokens.needs(queryRank: holder, keyRank: block) }
    lazy var queryPass = RingPass(route: route) { holder, block in self.env.tokens.needs(queryRank: block, keyRank: holder) }

    // Workspace, allocated on first use and kept (no allocation per call after that).
    var kernels: LocalAttention?
    var forwardSpace: ForwardWorkspace?
    var backwardSpace: BackwardWorkspace?

    /// `pattern`: .ring, or .burst for BURST; `groupSize`: ranks per group
    /// of the double ring (the number of ranks for one ring).
    init(_ env: ScheduleEnvironment, pattern: AttentionConfig.Pattern, groupSize: Int) {
        self.env = env
        self.keysTravel = pattern == .ring
        self.route = RingRoute(ranks: env.size, groupSize: groupSize)
    }

    /// Both directions' buffers (including the pass's receive buffers) and
    /// the kernels' panels and scratch.
    var workspaceBytes: Int {
        ((forwardSpace?.floats ?? 0) + (backwardSpace?.floats ?? 0)) * MemoryLayout<Float>.size
            + (kernels?.workspaceBytes ?? 0)
    }

    /// The kernels see one rank's block at a time: Zkv heads × n_max keys.
    private func prepareKernels() throws {
        if kernels == nil { kernels = try env.makeKernels(maxKVHeads: env.zKV, maxKeyRows: env.tokens.maxCount) }
    }

    func prepareForward() -> BurstError? {
        preparing {
            try prepareKernels()
            if forwardSpace == nil {
                forwardSpace = try ForwardWorkspace(zq: env.zHeads, zkv: env.zKV, rows: env.localRows, maxRows: env.tokens.maxCount,
                                                    headDim: env.headDim, route: route, storage: env.storage)
            }
        }
    }

    func prepareBackward() -> BurstError? {
        preparing {
            try prepareKernels()
            if backwardSpace == nil {
                backwardSpace = try BackwardWorkspace(zq: env.zHeads, zkv: env.zKV, rows: env.localRows, maxRows: env.tokens.maxCount,
                                                      headDim: env.headDim, route: route, keysTravel: keysTravel,
                                                      storage: env.storage)
            }
        }
    }
}
