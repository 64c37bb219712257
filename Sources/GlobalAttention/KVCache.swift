import LocalAttention

/// A KV cache sharded over the ranks of a context (burst_kv_cache): the
/// sequences' past keys and values for `numLayers` layers of one shape, each
/// rank holding its shard (`KVCacheStore`), and the collective calls that
/// change or read them: add, drop, truncate, prefill (from a plan's prompt)
/// and decode (`DecodeSchedule`).
///
/// Every call is collective and runs like a plan's: local checks (and every
/// allocation the call needs), one agreement round carrying a digest of the
/// call's arguments (so ranks that disagree get MISMATCH, not wrong
/// answers), then the change. Nothing is written before every rank has
/// agreed, so a failed call leaves the cache as it was. Placement rule for
/// decoded tokens: position p lives on rank p mod P.
public final class KVCache {
    public let config: KVCacheConfig
    /// The context that made it: a prefill's plan must come from the same one.
    public let context: AttentionContext
    let transport: Transport
    let pool: WorkerPool
    let store: KVCacheStore
    let calls: CollectiveGuard
    let decoder: DecodeSchedule

    init(config: KVCacheConfig, context: AttentionContext, transport: Transport, threads: Int) {
        self.config = config
        self.context = context
        self.transport = transport
        pool = WorkerPool(threadCount: threads)
        store = KVCacheStore(layers: Int(config.numLayers), kvHeads: Int(config.numHeadsKV), headDim: Int(config.headDim),
                             blockTokens: config.effectiveBlockTokens, storage: config.storage,
                             maxBytes: Int(config.maxBytesLocal))
        var base = CallStats()
        base.pattern = -1
        calls = CollectiveGuard(owner: "the cache", transport: transport, timeoutSeconds: config.effectiveTimeout, baseStats: base)
        decoder = DecodeSchedule(config: config, pool: pool)
    }

    deinit { transport.close() }

    public var rank: Int { transport.rank }
    public var size: Int { transport.size }
    public var lastStats: CallStats { calls.lastStats }
    public func statsSnapshot() throws -> CallStats { try calls.statsSnapshot("burst_kv_cache_stats") }

    /// Bytes of blocks this rank holds.
    public func bytes() throws -> Int { try calls.locally("burst_kv_cache_bytes") { store.bytes } }

    /// A sequence's length in a layer and the tokens of it this rank holds.
    public func sequenceLength(_ id: Int64, layer: Int64) throws -> (length: Int, localTokens: Int) {
        try calls.locally("burst_kv_cache_sequence_length") {
            guard layer >= 0, layer < config.numLayers else { throw Self.badLayer(layer, config.numLayers) }
            guard let shard = store.shard(id, layer: Int(layer)) else { throw Self.unknown(id) }
            return (shard.length, shard.localTokens)
        }
    }

    // MARK: Sequences

    /// The most ids one call takes.
    static let maxIds: Int64 = 1 << 24

    /// Reads `count` ids from a caller's array: non-negative and distinct.
    static func readIds(_ pointer: UnsafePointer<Int64>?, count: Int64, _ name: String = "seq_ids") throws -> [Int64] {
        guard count >= 0, count <= maxIds else { throw BurstError(.invalidArgument, "count must be in 0...\(maxIds) (got \(count))") }
        if count == 0 { return [] }
        guard let pointer else { throw BurstError(.invalidArgument, "\(name) is NULL but count is \(count)") }
        let ids = Array(UnsafeBufferPointer(start: pointer, count: Int(count)))
        var seen = Set<Int64>()
        for id in ids {
            guard id >= 0 else { throw BurstError(.invalidArgument, "sequence id \(id) is negative (ids are >= 0)") }
            guard seen.insert(id).inserted else { throw BurstError(.invalidArgument, "sequence id \(id) appears twice in \(name)") }
        }
        return ids
    }

    static func unknown(_ id: Int64) -> BurstError { BurstError(.invalidArgument, "sequence id \(id) is not in the cache") }
    static func badLayer(_ layer: Int64, _ layers: Int64) -> BurstError {
        BurstError(.invalidArgument, "layer \(layer) is out of range (the cache holds \(layers) layers: 0...\(layers - 1))")
    }

    /// Throws MISMATCH on every rank when any rank's payload differs from rank
    /// 0's, naming the first field that does (every rank sees all payloads, so
    /// all name the same field).
    static func requireAgreement(_ payloads: [[Int64]], names: [String], call: String) throws {
        for (index, name) in names.enumerated() {
            for (peer, theirs) in payloads.enumerated() where theirs[index] != payloads[0][index] {
                throw BurstError(.mismatch, "\(call): ranks passed different \(name): rank 0 and rank \(peer) differ (every rank must make the same call)")
            }
        }
    }

    /// burst_kv_cache_add. Collective.
    public func add(_ pointer: UnsafePointer<Int64>?, count: Int64) throws {
        var ids: [Int64] = []
        let local: BurstError? = {
            do { ids = try Self.readIds(pointer, count: count) } catch let e as BurstError { return e } catch { return nil }
            for id in ids where store.contains(id) { return BurstError(.invalidArgument, "sequence id \(id) is already in the cache") }
            return nil
        }()
        try calls.run(.cacheAdd, localCheck: { local }, payload: [count, Digest.of(ids)]) { payloads, _, _ in
            try Self.requireAgreement(payloads, names: ["count", "seq_ids"], call: "burst_kv_cache_add")
            store.add(ids)
        }
    }

    /// burst_kv_cache_drop. Collective.
    public func drop(_ pointer: UnsafePointer<Int64>?, count: Int64) throws {
        var ids: [Int64] = []
        let local: BurstError? = {
            do { ids = try Self.readIds(pointer, count: count) } catch let e as BurstError { return e } catch { return nil }
            for id in ids where !store.contains(id) { return Self.unknown(id) }
            return nil
        }()
        try calls.run(.cacheDrop, localCheck: { local }, payload: [count, Digest.of(ids)]) { payloads, _, _ in
            try Self.requireAgreement(payloads, names: ["count", "seq_ids"], call: "burst_kv_cache_drop")
            store.drop(ids)
        }
    }

    /// burst_kv_cache_truncate. Collective.
    public func truncate(_ pointer: UnsafePointer<Int64>?, lengths: UnsafePointer<Int64>?, count: Int64) throws {
        var ids: [Int64] = [], keep: [Int64] = []
        let local: BurstError? = {
            do { ids = try Self.readIds(pointer, count: count) } catch let e as BurstError { return e } catch { return nil }
            guard ids.isEmpty || lengths != nil else { return BurstError(.invalidArgument, "lengths is NULL but count is \(count)") }
            if let lengths { keep = Array(UnsafeBufferPointer(start: lengths, count: ids.count)) }
            for (id, length) in zip(ids, keep) {
                guard store.contains(id) else { return Self.unknown(id) }
                guard length >= 0 else { return BurstError(.invalidArgument, "length \(length) for sequence \(id) is negative") }
            }
            return nil
        }()
        try calls.run(.cacheTruncate, localCheck: { local }, payload: [count, Digest.of(ids), Digest.of(keep)]) { payloads, _, _ in
            try Self.requireAgreement(payloads, names: ["count", "seq_ids", "lengths"], call: "burst_kv_cache_truncate")
            for (id, length) in zip(ids, keep) { store.truncate(id, to: Int(length)) }
        }
    }

    // MARK: Prefill

    /// burst_kv_cache_prefill. Collective: stores this rank's shard of the
    /// plan's prompt (its k, v in the plan's layout) into `layer`, in place.
    public func prefill(layer: Int64, plan: AttentionPlan?, planContext: AttentionContext?,
                        ids pointer: UnsafePointer<Int64>?, k: UnsafeRawPointer?, v: UnsafeRawPointer?) throws {
        var ids: [Int64] = []
        var reservation = KVCacheStore.Reservation()
        // Per sequence of the prompt: this rank's rows and their positions in the sequence.
        var pieces: [(id: Int64, batch: Int, rows: [Int], positions: [Int], length: Int)] = []
        let local: BurstError? = {
            guard let plan else { return BurstError(.invalidArgument, "plan is NULL") }
            guard planContext === context else {
                return BurstError(.invalidArgument, "the plan was made on another context than the cache (a cache and the plans that prefill it share one context)")
            }
            let p = plan.config
            for (name, mine, theirs) in [("num_heads_q", config.numHeadsQ, p.numHeadsQ), ("num_heads_kv", config.numHeadsKV, p.numHeadsKV),
                                         ("head_dim", config.headDim, p.headDim), ("dtype", Int64(config.dtype), Int64(p.dtype))]
                where mine != theirs {
                return BurstError(.invalidArgument, "the plan's \(name) is \(theirs) but the cache's is \(mine)")
            }
            guard layer >= 0, layer < config.numLayers else { return Self.badLayer(layer, config.numLayers) }
            let sequencesPerRow = max(1, Int(p.numSequences)), expected = Int(p.batch) * sequencesPerRow
            do { ids = try Self.readIds(pointer, count: Int64(expected)) } catch let e as BurstError { return e } catch { return nil }
            for id in ids {
                guard let shard = store.shard(id, layer: Int(layer)) else { return Self.unknown(id) }
                guard shard.length == 0 else {
                    return BurstError(.invalidArgument, "sequence \(id) already holds \(shard.length) tokens in layer \(layer): prefill fills an empty layer (decode appends)")
                }
            }
            let n = plan.localRows
            if n > 0 && (k == nil || v == nil) {
                return BurstError(.invalidArgument, "\(k == nil ? "k" : "v") is NULL but this rank holds \(n) tokens of the prompt")
            }
            let offsets = p.cuSeqlens.map { $0.map { Int($0) } } ?? [0, plan.tokens.total]
            let positions = plan.tokens.positions[plan.rank]
            var row = 0
            var perSequence: [(rows: [Int], positions: [Int], length: Int)] = []
            for s in 0..<(offsets.count - 1) {
                var rows: [Int] = [], at: [Int] = []
                while row < positions.count && positions[row] < offsets[s + 1] {
                    rows.append(row); at.append(positions[row] - offsets[s]); row += 1
                }
                perSequence.append((rows, at, offsets[s + 1] - offsets[s]))
            }
            for b in 0..<Int(p.batch) {
                for s in 0..<sequencesPerRow {
                    let piece = perSequence[s]
                    pieces.append((ids[b * sequencesPerRow + s], b, piece.rows, piece.positions, piece.length))
                }
            }
            do {
                reservation = try store.reserve(layer: Int(layer), tokens: pieces.map { ($0.id, $0.rows.count) })
            } catch let e as BurstError { return e } catch { return nil }
            return nil
        }()
        try calls.run(.cachePrefill, localCheck: { local }, payload: [layer, Int64(ids.count), Digest.of(ids)]) { payloads, stats, _ in
            try Self.requireAgreement(payloads, names: ["layer", "number of sequences", "seq_ids"], call: "burst_kv_cache_prefill")
            guard let plan, let k, let v else {
                for piece in pieces { store.setLength(piece.id, layer: Int(layer), piece.length) }
                return
            }
            let t0 = Deadline.seconds()
            let e = config.storage.bytes, d = Int(config.headDim), hkv = Int(config.numHeadsKV), n = plan.localRows
            let bhsd = plan.config.layout == AttentionConfig.Layout.bhsd.rawValue
            func element(_ b: Int, _ row: Int, _ h: Int) -> Int {
                bhsd ? ((b * hkv + h) * n + row) * d : ((b * n + row) * hkv + h) * d
            }
            for piece in pieces {
                store.commit(&reservation, id: piece.id, layer: Int(layer), rows: piece.rows.count,
                             position: { piece.positions[$0] },
                             key: { k + element(piece.batch, piece.rows[$0], $1) * e },
                             value: { v + element(piece.batch, piece.rows[$0], $1) * e })
                store.setLength(piece.id, layer: Int(layer), piece.length)
            }
            stats.computeSeconds += Deadline.seconds() - t0
        }
    }

    // MARK: Decode

    /// burst_kv_cache_decode. Collective.
    public func decode(layer: Int64, ids pointer: UnsafePointer<Int64>?, count: Int64, tokens: Int64,
                       positions: UnsafePointer<Int64>?, q: UnsafeRawPointer?, k: UnsafeRawPointer?, v: UnsafeRawPointer?,
                       out: UnsafeMutableRawPointer?, lse: UnsafeMutablePointer<Float>?) throws {
        var ids: [Int64] = [], starts: [Int] = [], oldLengths: [Int] = []
        var reservation = KVCacheStore.Reservation()
        var digests: [Int64] = [0, 0, 0, 0]
        let p = size, r = rank, e = config.storage.bytes, d = Int(config.headDim)
        let hq = Int(config.numHeadsQ), hkv = Int(config.numHeadsKV)
        let local: BurstError? = {
            guard layer >= 0, layer < config.numLayers else { return Self.badLayer(layer, config.numLayers) }
            guard count >= 1 else { return BurstError(.invalidArgument, "num_seqs must be >= 1 (got \(count))") }
            guard tokens >= 1, tokens <= 1 << 20 else { return BurstError(.invalidArgument, "tokens (T) must be in 1...\(1 << 20) (got \(tokens))") }
            do { ids = try Self.readIds(pointer, count: count) } catch let e as BurstError { return e } catch { return nil }
            let (rowsTimesT, o1) = count.multipliedReportingOverflow(by: tokens)
            let (elements, o2) = rowsTimesT.multipliedReportingOverflow(by: Int64(hq * d))
            guard !o1, !o2, elements <= 1 << 36 else { return BurstError(.invalidArgument, "num_seqs·T·num_heads_q·head_dim is too large") }
            let t = Int(tokens), qElements = Int(elements), kvElements = Int(rowsTimesT) * hkv * d
            for (name, pointer) in [("q", q), ("k", k), ("v", v)] where pointer == nil {
                return BurstError(.invalidArgument, "\(name) is NULL")
            }
            guard out != nil else { return BurstError(.invalidArgument, "out is NULL") }
            if let error = AttentionPlan.requireDisjoint(
                outputs: [.init(out, "out", bytes: qElements * e), .init(lse, "lse", bytes: Int(rowsTimesT) * hq * 4)],
                inputs: [.init(q, "q", bytes: qElements * e), .init(k, "k", bytes: kvElements * e), .init(v, "v", bytes: kvElements * e)]) {
                return error
            }
            var shards: [LayerShard] = []
            for (i, id) in ids.enumerated() {
                guard let shard = store.shard(id, layer: Int(layer)) else { return Self.unknown(id) }
                let start = positions.map { Int($0[i]) } ?? shard.length
                guard start >= shard.length else {
                    return BurstError(.invalidArgument, "positions[\(i)] = \(start) goes back: sequence \(id) already holds positions up to \(shard.length - 1) in layer \(layer)")
                }
                guard start <= Int(AttentionConfig.maxElements) else { return BurstError(.invalidArgument, "positions[\(i)] = \(start) is too large") }
                starts.append(start)
                oldLengths.append(shard.length)
                shards.append(shard)
            }
            // This rank's new tokens: position p on rank p mod P.
            let mine = starts.map { start in (0..<t).filter { (start + $0) % p == r }.count }
            do {
                reservation = try store.reserve(layer: Int(layer), tokens: zip(ids, mine).map { ($0, $1) })
            } catch let e as BurstError { return e } catch { return nil }
            let blocks = zip(shards, mine).map { shard, extra in
                (shard.localTokens + extra + store.blockTokens - 1) / store.blockTokens
            }
            let units = DecodeSchedule.unitCount(blocks: blocks, kvHeads: hkv)
            if let error = decoder.prepare(sequences: ids.count, tokens: t, units: units, ranks: p) { return error }
            digests = [Digest.of(ids), Digest.of(starts.map { Int64($0) }),
                       Digest.of(q!, bytes: qElements * e), Digest.of(k!, bytes: kvElements * e) ^ Digest.of(v!, bytes: kvElements * e)]
            return nil
        }()
        try calls.run(.cacheDecode, localCheck: { local }, payload: [layer, count, tokens] + digests) { payloads, stats, deadline in
            try Self.requireAgreement(payloads, names: ["layer", "num_seqs", "tokens (T)", "seq_ids", "positions", "q", "k or v"],
                                      call: "burst_kv_cache_decode")
            let t = Int(tokens), kv = (k!, v!)
            // Append this rank's share of the new tokens, then attend.
            for (i, id) in ids.enumerated() {
                let own = (0..<t).filter { (starts[i] + $0) % p == r }
                store.commit(&reservation, id: id, layer: Int(layer), rows: own.count,
                             position: { starts[i] + own[$0] },
                             key: { kv.0 + self.decoder.kvOffset(i, own[$0], $1, tokens: t) * e },
                             value: { kv.1 + self.decoder.kvOffset(i, own[$0], $1, tokens: t) * e })
                store.setLength(id, layer: Int(layer), starts[i] + t)
            }
            do {
                let heads = Int(config.numHeadsQ)
                let call = DecodeSchedule.Call(sequences: ids.map { store.shard($0, layer: Int(layer))!.blocks },
                                               starts: starts, tokens: t,
                                               sinks: config.sinks.map { Array($0[(Int(layer) * heads)..<(Int(layer) + 1) * heads]) })
                try decoder.run(call, q: q!, out: out!, lse: lse, transport: transport, stats: &stats, deadline: deadline)
            } catch {
                // The exchange failed (the cache is poisoned anyway): leave no
                // half-done step behind on this rank.
                for (id, length) in zip(ids, oldLengths) { store.truncate(id, to: length) }
                throw error
            }
        }
    }
}

/// A 64-bit digest of a call's arguments for the agreement round (ranks that
/// pass different values get MISMATCH). Not cryptographic: it catches
/// mistakes, not adversaries.
enum Digest {
    static func of(_ values: [Int64]) -> Int64 {
        values.withUnsafeBytes { of($0.baseAddress, bytes: $0.count) } ^ Int64(values.count)
    }

    static func of(_ pointer: UnsafeRawPointer?, bytes: Int) -> Int64 {
        guard let pointer, bytes > 0 else { return 0 }
        var hash: UInt64 = 0xcbf2_9ce4_8422_2325 ^ UInt64(bytes)
        var i = 0
        while i + 8 <= bytes {
            hash = (hash ^ pointer.loadUnaligned(fromByteOffset: i, as: UInt64.self)) &* 0x100_0000_01b3
            hash ^= hash >> 29
            i += 8
        }
        while i < bytes {
            hash = (hash ^ UInt64(pointer.load(fromByteOffset: i, as: UInt8.self))) &* 0x100_0000_01b3
            i += 1
        }
        return Int64(bitPattern: hash)
    }
}
