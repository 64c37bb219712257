import LocalAttention

/// Receive buffers of a ring pass: two for blocks arriving over intra-group
/// links (step k uses slot k mod 2), two for blocks arriving over
/// inter-group links (outer step s uses slot s mod 2; only for a double
/// ring), and, for passes that carry an accumulator, three for the
/// travelling partial (step k uses slot k mod 3: it is received during step
/// k, sent on after it and in flight during step k + 1), one for this
/// step's own contribution while the partial is still arriving, and two for
/// the partials of other groups' chains coming home.
///
/// When the read-only block travels in a wire form other than fp32
/// (`WireFormat`: half storage types), the receive buffers hold the wire
/// form (`wireFloats` floats of capacity each), and one more buffer exists:
/// `decoded`, the fp32 block of the step being computed (one suffices:
/// steps compute one after the other). The wire form of this rank's own
/// block, sent at step 0, is encoded into a receive buffer that is free
/// until its sends are complete (`ownWireSlot`), so a single ring holds as
/// many bytes as with fp32 and a double ring fewer.
final class RingBuffers {
    let intra: [FloatBuffer], inter: [FloatBuffer], accumulator: [FloatBuffer], home: [FloatBuffer]
    let contribution: FloatBuffer?
    let decoded: FloatBuffer?

    /// Where the own block's wire form is written at step 0: inter-group
    /// slot 0 if there are groups (first received into at outer step 1, for
    /// outer step 2; the own block's sends are complete by the end of outer
    /// step 0), else intra slot 0 (first received into at step 1, for step
    /// 2; the own block's one send is complete by the end of step 0).
    var ownWireSlot: FloatBuffer? { inter.first ?? intra.first }

    init(readOnlyFloats: Int, accumulatorFloats: Int, route: RingRoute, wireFloats: Int? = nil) throws {
        let ring = route.ranks > 1
        func some(_ n: Int, _ count: Int, _ what: String, _ wanted: Bool) throws -> [FloatBuffer] {
            wanted ? try (0..<n).map { _ in try allocate(count, what) } : []
        }
        let carries = ring && accumulatorFloats > 0
        let received = wireFloats ?? readOnlyFloats
        intra = try some(2, received, "a ring receive buffer", ring && route.groupSize > 1)
        inter = try some(2, received, "an inter-group receive buffer", ring && route.groups > 1)
        decoded = try some(1, readOnlyFloats, "a decoded ring block", ring && wireFloats != nil).first
        accumulator = try some(3, accumulatorFloats, "a partial-gradient receive buffer", carries)
        contribution = try some(1, accumulatorFloats, "a partial-gradient scratch buffer", carries).first
        home = try some(2, accumulatorFloats, "a partial-gradient home buffer", carries && route.groups > 1)
    }

    var floats: Int { GlobalAttention.floats(intra + inter + accumulator + home) + GlobalAttention.floats(contribution, decoded) }
}

/// The four message kinds of a pass; distinct tags keep them apart.
struct RingTags {
    var readOnly: Int32, readOnlyInter: Int32, accumulator: Int32, home: Int32
}

/// Transfers of a pass still in flight, each with the step by whose end it
/// must be complete. The progress hook polls them between tiles.
private final class InFlight {
    struct Entry { var transfer: PendingTransfer; var waitBy: Int; var homeChain: Int? }
    var entries: [Entry] = []
    var pollError: BurstError?

    func poll() {
        guard pollError == nil else { return }
        do {
            for entry in entries { try entry.transfer.poll() }
        } catch let error as BurstError { pollError = error } catch { pollError = BurstError(.internalError, "\(error)") }
    }
}

extension RingSchedule {
    /// Runs one ring pass on this rank (BurstAttention's GAO with the
    /// paper's double buffering: the block of step k + 1 is in flight while
    /// step k computes, and an inter-group block has a whole outer step).
    ///
    /// - `readOnlyFloats(b)`: size of block b's travelling read-only part
    ///   (forward: K|V; BURST backward: Q|dO|D|lse; RING backward: K|V).
    /// - `accumulatorFloats(b)`: size of its travelling accumulator (BURST
    ///   backward: dQ; RING backward: dK|dV), nil for the forward.
    /// - `compute(b, data, accumulator, stats)`: this rank's work with block
    ///   b; called only at the steps where `pass.needs(holder: rank, block: b)`.
    ///
    /// - `readOnlyWire(b)`: the wire form of block b's read-only part, or
    ///   nil when it travels as its fp32 floats. Blocks are then received
    ///   and forwarded in wire form and decoded (exactly) into
    ///   `buffers.decoded` before a step computes with them; this rank's own
    ///   block is encoded once, at step 0, if it is sent (into
    ///   `buffers.ownWireSlot`). The accumulator
    ///   always travels as fp32.
    ///
    /// At the end `ownAccumulator` holds the sum of every rank's
    /// contribution to this rank's block, added in a fixed order.
    func runRing(_ pass: RingPass, tags: RingTags, readOnlyFloats: (Int) -> Int, readOnlyWire: ((Int) -> WireFormat)? = nil,
                 accumulatorFloats: ((Int) -> Int)?,
                 ownReadOnly: UnsafeMutablePointer<Float>, ownAccumulator: UnsafeMutablePointer<Float>?,
                 buffers: RingBuffers, stats: inout CallStats, deadline: Deadline,
                 compute: (_ block: Int, _ data: UnsafeMutablePointer<Float>, _ accumulator: UnsafeMutablePointer<Float>?,
                           _ stats: inout CallStats) throws -> Void) throws {
        let env = self.env
        let route = pass.route, p = route.ranks, g = route.groupSize, q = route.groups, r = env.rank
        let carries = accumulatorFloats != nil
        let inFlight = InFlight()
        let coded = readOnlyWire != nil
        /// Bytes of block b's read-only part on the wire.
        func readOnlyBytes(_ b: Int) -> Int { readOnlyWire.map { $0(b).bytes } ?? bytes(readOnlyFloats(b)) }
        var ownEncoded = false
        /// What this rank sends of its own block: the block itself, or its
        /// wire form (encoded at the first send).
        func ownOutgoing() throws -> UnsafeMutablePointer<Float> {
            guard let readOnlyWire else { return ownReadOnly }
            guard let wire = buffers.ownWireSlot else { throw BurstError(.internalError, "ring: no wire buffer for the own block") }
            if !ownEncoded {
                env.timed(&stats.computeSeconds) { readOnlyWire(r).encode(ownReadOnly, into: wire.pointer) }
                ownEncoded = true
            }
            return wire.pointer
        }

        func start(sends: [OutgoingMessage], receives: [IncomingMessage], waitBy: Int, homeChain: Int? = nil) throws {
            let transfer = try env.startTransfer(sends: sends, receives: receives, stats: &stats)
            inFlight.entries.append(.init(transfer: transfer, waitBy: waitBy, homeChain: homeChain))
        }
        func bytes(_ floats: Int) -> Int { floats * MemoryLayout<Float>.size }
        func receive(_ buffer: UnsafeMutablePointer<Float>, bytes count: Int, from peer: Int, tag: Int32) -> IncomingMessage {
            IncomingMessage(UnsafeMutableRawBufferPointer(start: buffer, count: count), from: peer, tag: tag)
        }
        func send(_ buffer: UnsafeMutablePointer<Float>, bytes count: Int, to peer: Int, tag: Int32) -> OutgoingMessage {
            OutgoingMessage(UnsafeRawBufferPointer(start: buffer, count: count), to: peer, tag: tag)
        }
        func receive(_ buffer: UnsafeMutablePointer<Float>, floats: Int, from peer: Int, tag: Int32) -> IncomingMessage {
            receive(buffer, bytes: bytes(floats), from: peer, tag: tag)
        }
        func send(_ buffer: UnsafeMutablePointer<Float>, floats: Int, to peer: Int, tag: Int32) -> OutgoingMessage {
            send(buffer, bytes: bytes(floats), to: peer, tag: tag)
        }
        /// The accumulator of block b travels into rank x at step k (x is
        /// past the first rank of its chain and not past the last).
        func accumulatorArrives(_ x: Int, block b: Int, step k: Int) -> Bool {
            guard let chain = pass.chain(block: b, outer: k / g) else { return false }
            return k % g > chain.lowerBound && k % g <= chain.upperBound
        }
        /// Completes every transfer due by the end of step k, then adds the
        /// partials of other groups that came home, in chain order.
        func settle(through k: Int) throws {
            var kept: [InFlight.Entry] = []
            var arrived: [Int] = []
            for entry in inFlight.entries {
                if entry.waitBy <= k {
                    try env.timed(&stats.commWaitSeconds) { try entry.transfer.wait(until: deadline) }
                    if let c = entry.homeChain, c > 0 { arrived.append(c) }
                } else {
                    kept.append(entry)
                }
            }
            inFlight.entries = kept
            guard let ownAccumulator, let accumulatorFloats else { return }
            let count = accumulatorFloats(r)
            for c in arrived.sorted() {
                let partial = buffers.home[c % 2].pointer
                env.timed(&stats.computeSeconds) { add(partial, into: ownAccumulator, count: count) }
            }
        }

        var current: UnsafeMutablePointer<Float>? = ownReadOnly
        var next: UnsafeMutablePointer<Float>?           // block of step k + 1 (intra)
        var nextOuter: [UnsafeMutablePointer<Float>?] = [nil, nil]   // by outer step mod 2
        var partialNext: PendingTransfer?                // the partial of step k + 1, arriving
        for k in 0..<p {
            let partialIn = partialNext                  // the partial of this step
            partialNext = nil
            let s = k / g, t = k % g
            let b = route.source(r, step: k)
            if k > 0 {
                current = t == 0 ? nextOuter[s % 2] : next
            }
            next = nil

            // 1. Receives this step posts: the next block (intra), the next
            //    outer step's block (inter), the next accumulator, and this
            //    rank's own partials coming home.
            if t < g - 1 && k + 1 < p {
                let b1 = route.source(r, step: k + 1)
                if pass.isDelivered(block: b1, to: r) {
                    let buffer = buffers.intra[(k + 1) % 2].pointer
                    try start(sends: [], receives: [receive(buffer, bytes: readOnlyBytes(b1), from: route.provider(r, step: k + 1),
                                                            tag: tags.readOnly)], waitBy: k)
                    next = buffer
                }
                // The partial of step k + 1 is needed only after that step's
                // compute: it has all of it to arrive.
                if let accumulatorFloats, accumulatorArrives(r, block: b1, step: k + 1) {
                    try start(sends: [], receives: [receive(buffers.accumulator[(k + 1) % 3].pointer, floats: accumulatorFloats(b1),
                                                            from: route.provider(r, step: k + 1), tag: tags.accumulator)],
                              waitBy: k + 1)
                    partialNext = inFlight.entries.last?.transfer
                }
            }
            if t == 0 && s + 1 < q {
                let k2 = (s + 1) * g, b2 = route.source(r, step: k2)
                nextOuter[(s + 1) % 2] = nil
                if pass.isDelivered(block: b2, to: r) {
                    let buffer = buffers.inter[(s + 1) % 2].pointer
                    try start(sends: [], receives: [receive(buffer, bytes: readOnlyBytes(b2), from: route.provider(r, step: k2),
                                                            tag: tags.readOnlyInter)], waitBy: k2 - 1)
                    nextOuter[(s + 1) % 2] = buffer
                }
            }
            if let accumulatorFloats, let ownAccumulator {
                // Chain c of this rank's block comes home from its last rank:
                // chain 0 into place (step 0 computed it in a slot, see 3.);
                // chain c ≥ 1 into a home buffer, posted
                // at its outer step and added (in order) after it arrives.
                let c: Int? = k == 1 && g > 1 ? 0 : (t == 0 && s >= 1 ? s : nil)
                if let c, let chain = pass.chain(block: r, outer: c), c > 0 || chain.upperBound > 0 {
                    let target = c == 0 ? ownAccumulator : buffers.home[c % 2].pointer
                    try start(sends: [], receives: [receive(target, floats: accumulatorFloats(r),
                                                            from: pass.chainRank(block: r, outer: c, position: chain.upperBound), tag: tags.home)],
                              waitBy: min((c + 2) * g - 1, p - 1), homeChain: c)
                }
            }

            // 2. The read-only block goes on before the compute.
            //    A received block goes on as it came (wire form); the own
            //    block (step 0) as its wire form.
            if let current {
                func outgoing() throws -> UnsafeMutablePointer<Float> {
                    if k == 0 { return try ownOutgoing() }
                    return current
                }
                var sends: [OutgoingMessage] = []
                if t < g - 1, pass.isDelivered(block: b, to: route.intraNext(r)) {
                    sends.append(send(try outgoing(), bytes: readOnlyBytes(b), to: route.intraNext(r),
                                      tag: tags.readOnly))
                }
                if !sends.isEmpty { try start(sends: sends, receives: [], waitBy: k) }
                if t == 0 && s + 1 < q, pass.isDelivered(block: b, to: route.interNext(r)) {
                    try start(sends: [send(try outgoing(), bytes: readOnlyBytes(b), to: route.interNext(r),
                                           tag: tags.readOnlyInter)],
                              receives: [], waitBy: (s + 1) * g - 1)
                }
            } else if pass.isDelivered(block: b, to: r) || b == r {
                throw BurstError(.internalError, "ring: block of rank \(b) for step \(k) was never received")
            }

            // 3. Compute, polling the transfers in flight between tiles. The
            //    accumulator: at step 0 this rank's own (in a slot when it
            //    travels, so that chain 0 can come home into place); a zeroed
            //    slot where a chain starts; and where a partial is arriving,
            //    the contribution is computed apart and added to the partial
            //    once it is in (partial + contribution, the same order every run).
            var accumulator: UnsafeMutablePointer<Float>?   // what this step sends on
            var target: UnsafeMutablePointer<Float>?        // what the compute adds to
            let arriving = carries && k > 0 && accumulatorArrives(r, block: b, step: k)
            if let accumulatorFloats {
                let slot = buffers.accumulator.isEmpty ? nil : buffers.accumulator[k % 3].pointer
                if k == 0 {
                    let travels = (pass.chain(block: r, outer: 0)?.upperBound ?? 0) > 0
                    accumulator = travels ? slot : ownAccumulator
                    if travels { slot!.update(repeating: 0, count: accumulatorFloats(r)) }
                    target = accumulator
                } else if arriving {
                    accumulator = slot
                    target = buffers.contribution!.pointer
                    target!.update(repeating: 0, count: accumulatorFloats(b))
                } else if let chain = pass.chain(block: b, outer: s), chain.lowerBound == t {
                    accumulator = slot
                    accumulator!.update(repeating: 0, count: accumulatorFloats(b))
                    target = accumulator
                }
            }
            let computes = pass.needs(holder: r, block: b)
            if computes {
                guard let current, !carries || target != nil else {
                    throw BurstError(.internalError, "ring: rank \(r) lacks the data of block \(b) at step \(k)")
                }
                var data = current
                if coded && k > 0, let readOnlyWire {
                    // The block arrived in wire form: fp32 for the compute (exact).
                    guard let decoded = buffers.decoded else { throw BurstError(.internalError, "ring: no decode buffer") }
                    env.timed(&stats.computeSeconds) { readOnlyWire(b).decode(current, into: decoded.pointer) }
                    data = decoded.pointer
                }
                if ScheduleEnvironment.progressPolling { kernels?.progress = { inFlight.poll() } }
                defer { kernels?.progress = nil }
                try compute(b, data, target, &stats)
                if let error = inFlight.pollError { throw error }
                stats.stepsComputed += 1
            } else {
                stats.stepsSkipped += 1
            }
            if arriving, let accumulatorFloats, let accumulator {
                if let partialIn { try env.timed(&stats.commWaitSeconds) { try partialIn.wait(until: deadline) } }
                if computes, let target {
                    env.timed(&stats.computeSeconds) { add(target, into: accumulator, count: accumulatorFloats(b)) }
                }
            }

            // 4. The accumulator goes on along the chain, or home from its
            //    end; its transfer overlaps the next step (slot k mod 3 is
            //    not reused before step k + 3).
            if let accumulatorFloats, let accumulator, let chain = pass.chain(block: b, outer: s), chain.contains(t) {
                if t < chain.upperBound {
                    try start(sends: [send(accumulator, floats: accumulatorFloats(b), to: route.intraNext(r), tag: tags.accumulator)],
                              receives: [], waitBy: k + 1)
                } else if b != r {
                    try start(sends: [send(accumulator, floats: accumulatorFloats(b), to: b, tag: tags.home)],
                              receives: [], waitBy: k + 1)
                }
            }

            // 5. Everything due by the end of this step.
            try settle(through: k)
        }
        try settle(through: Int.max)
    }
}

/// y += x, elementwise (a partial gradient added to another).
private func add(_ x: UnsafePointer<Float>, into y: UnsafeMutablePointer<Float>, count: Int) {
    for i in 0..<count { y[i] += x[i] }
}
