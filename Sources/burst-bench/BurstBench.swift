#if canImport(Glibc)
import Glibc
#endif
import ArgumentParser
import CMPI
import GlobalAttention
import LocalAttention
import MPITransport

/// Times forward and forward+backward of the whole GAO — on an in-process
/// group (`--ranks`, loopback transport; 1 = the self context, so only the
/// LAO kernels run) or, with `--mpi` under mpirun, on MPI_COMM_WORLD — and
/// prints one JSON line per measurement (rank 0 prints): `"bench":"burst"`
/// (time, GFLOP/s) and `"bench":"comm"` (every rank's bytes, messages,
/// compute and wait, the closed-form bytes beside the measured ones, and
/// with a simulated network the link time and the share of it hidden).
/// `bench/run_comm.sh` and `bench/run_mpi_efficiency.sh` drive it.
@main
struct BurstBench: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "burst-bench",
        abstract: "Benchmark libburst_attention (one JSON line per measurement).")

    @Option(help: "Total sequence length N (split evenly over the ranks).") var seqLen: Int = 4096
    @Option(help: "Head dimension d.") var headDim: Int = 128
    @Option(help: "Heads (query heads).") var heads: Int = 8
    @Option(help: "Key/value heads (GQA; default: --heads).") var headsKv: Int?
    @Option(help: "Token distribution: contiguous, zigzag or striped.") var distribution: String = "contiguous"
    @Option(help: "Sliding window, keys to the left (-1 = unbounded).") var windowLeft: Int = -1
    @Option(help: "Sliding window, keys to the right (-1 = unbounded).") var windowRight: Int = -1
    @Option(help: "Batch.") var batch: Int = 1
    @Flag(help: "Causal mask.") var causal = false
    @Option(help: "Compute threads per rank.") var threads: Int = 1
    @Option(help: "In-process ranks (loopback transport, one thread each).") var ranks: Int = 1
    @Option(help: "Timed runs after one warm-up.") var repeats: Int = 5
    @Option(help: "fwd, fwdbwd or both.") var mode: String = "both"
    @Option(help: "Untimed calls before the timed ones.") var warmup: Int = 1
    @Option(help: "Per-call deadline in seconds (timeout_seconds; a slow simulated network needs more than the library's 300 s default).") var timeout: Double = 3600
    @Flag(help: "Run on MPI_COMM_WORLD (start under mpirun); --ranks is then the MPI world size.") var mpi = false
    @Flag(help: "Print every rank's counters (always on with --mpi).") var rankLines = false
    @Flag(help: "Also print the tile GEMM rate (128×128×d, the kernels' JIT product) on one thread and, with --threads > 1, summed over that many threads running at once: the roofline.") var gemm = false
    @Option(help: "Storage type of q, k, v, out and the gradients: f32, bf16 or f16 (lse and accumulation stay fp32).") var dtype: String = "f32"
    @Option(help: "Tile products: default, exact (fp32) or fast (bf16 operands, fp32 accumulation; BURST_COMPUTE_*).") var compute: String = "default"
    @Flag(help: "Print the time per tile of each kernel phase (score and value products, softmax, the backward's products; tiles of BURST_TILE_Q × BURST_TILE_K, one thread) and exit.") var phases = false
    @Option(help: "Communication pattern: burst, ring, allgather, ulysses or auto.") var pattern: String = "burst"
    @Option(help: "Ranks per group of the double ring (0 = detect from the transport's nodes; must divide the ranks).") var intraGroupSize: Int = 0
    @Option(help: "Simulated network of the loopback ranks, e.g. \"latency=5e-6,bandwidth=2e9,inter_bandwidth=2.5e8,group=4\" (seconds, bytes/s; 0 = infinite). Not with --mpi.") var network: String?
    @Option(help: "Set --network's intra-group bandwidth so one forward step's K,V block takes RATIO × one forward step's compute (measured first in an untimed run without network); keeps --network's latency, groups and inter/intra bandwidth ratio.") var calibrateTransfer: Double?

    @Flag(help: "Benchmark decode over a KV cache (see DecodeBench.swift) at each of --cache-lengths, with --batch sequences, --heads/--heads-kv, --dtype, --threads; --mpi for P > 1.") var decode = false
    @Option(help: "Cache lengths for --decode (tokens per sequence, comma-separated).") var cacheLengths: String = "16384,65536"
    @Option(help: "New tokens per sequence in each --decode step (T).") var decodeTokens: Int = 1
    @Option(help: "The cache's block_tokens for --decode (0 = the library's default).") var blockTokens: Int = 0
    @Flag(help: "Time plain attention, attention sinks, soft-capping (--softcap) and both on one rank, round-robin (see ModifierBench.swift).") var modifiers = false
    @Option(help: "The cap of --modifiers' soft-capped plans (Gemma 2 uses 50).") var softcap: Float = 50

    mutating func run() throws {
        var worldRank = 0
        if mpi {
            MPI_Init(nil, nil)
            var size: Int32 = 0, rank: Int32 = 0
            MPI_Comm_size(cmpi_comm_world(), &size)
            MPI_Comm_rank(cmpi_comm_world(), &rank)
            ranks = Int(size)
            worldRank = Int(rank)
        }
        defer { if mpi { MPI_Finalize() } }
        if decode { try runDecode(worldRank: worldRank); return }
        if modifiers { try runModifiers(); return }
        guard ranks >= 1, seqLen >= ranks, repeats >= 1, warmup >= 0 else {
            throw ValidationError("need ranks >= 1, seq-len >= ranks, repeats >= 1, warmup >= 0")
        }
        guard let kind = ["contiguous": AttentionConfig.Distribution.contiguous, "zigzag": .zigzag, "striped": .striped][distribution] else {
            throw ValidationError("--distribution must be contiguous, zigzag or striped")
        }
        let deal = TokenDistribution(kind: kind, total: seqLen, ranks: ranks, sequenceOffsets: nil)
        let counts = (0..<ranks).map { deal.count(rank: $0) }
        if gemm && worldRank == 0 {
            // One thread, and (with --threads > 1) that many threads at once: the
            // ceiling of the kernels' thread scaling on this machine.
            for t in Set([1, threads]).sorted() {
                let rate = LocalAttention.tileProductRate(headDim: headDim, threads: t)
                print("{\"bench\":\"tile_gemm\",\"m\":128,\"n\":128,\"k\":\(headDim),\"threads\":\(t),\"gflops\":\(rate),\"code_path\":\"\(LocalAttention.codePath)\"}")
            }
        }
        if phases {
            if worldRank == 0 {
                let tq = AttentionPlan.tuning("BURST_TILE_Q", 256), tk = AttentionPlan.tuning("BURST_TILE_K", 128)
                let rate = LocalAttention.tileProductRate(headDim: headDim)
                let parts = LocalAttention.phaseProfile(headDim: headDim, tileQ: tq, tileK: tk)
                let fields = parts.map { "\"\($0.phase)\":\($0.microseconds)" }.joined(separator: ",")
                print("{\"bench\":\"phases\",\"head_dim\":\(headDim),\"tile_q\":\(tq),\"tile_k\":\(tk),\"tile_gemm_gflops\":\(rate),\"microseconds_per_tile\":{\(fields)},\"code_path\":\"\(LocalAttention.codePath)\"}")
            }
            return
        }
        guard let patternValue = patternNames.firstIndex(of: pattern) else {
            throw ValidationError("--pattern must be burst, ring, allgather, ulysses or auto")
        }
        guard ["f32", "bf16", "f16"].contains(dtype) else { throw ValidationError("--dtype must be f32, bf16 or f16") }
        guard ["default", "exact", "fast"].contains(compute) else { throw ValidationError("--compute must be default, exact or fast") }
        guard ["fwd", "fwdbwd", "both"].contains(mode) else { throw ValidationError("--mode must be fwd, fwdbwd or both") }
        guard intraGroupSize >= 0 else { throw ValidationError("--intra-group-size must be >= 0") }
        if mpi && (network != nil || calibrateTransfer != nil) {
            throw ValidationError("--network and --calibrate-transfer simulate a network between loopback ranks; they do not apply to --mpi")
        }
        var net = try network.map { try SimulatedNetwork(parsing: $0) }
        var calibration: String?
        if let ratio = calibrateTransfer {
            guard let base = net, ratio > 0 else {
                throw ValidationError("--calibrate-transfer needs a ratio > 0 and --network (for the latency and groups)")
            }
            (net, calibration) = try calibrate(base: base, ratio: ratio, counts: counts, backward: mode != "fwd")
            print(calibration!)
            fflush(stdout)
        }
        let modes = mode == "both" ? ["fwd", "fwdbwd"] : [mode]
        for m in modes {
            var (times, records) = mpi
                ? try measureMPI(counts: counts, rank: worldRank, backward: m == "fwdbwd", pattern: Int32(patternValue))
                : try measure(counts: counts, backward: m == "fwdbwd", network: net, pattern: Int32(patternValue),
                              warmup: warmup, repeats: repeats)
            if worldRank != 0 { continue }
            times.sort()
            let median = times[times.count / 2]
            let pairs = visiblePairs()
            let flops = (m == "fwd" ? 4 : 14) * Double(batch * heads) * pairs * Double(headDim)
            var usage = rusage()
            getrusage(RUSAGE_SELF.rawValue, &usage)
            print("{\"bench\":\"burst\",\"mode\":\"\(m)\",\"dtype\":\"\(dtype)\",\"compute\":\"\(compute)\",\"products\":\"\(config([1], rank: 0, pattern: 0).products == .bf16 ? "bf16-" + LocalAttention.bf16ProductPath : "fp32")\",\"batch\":\(batch),\"heads\":\(heads),\"heads_kv\":\(headsKv ?? heads),\"seq_len\":\(seqLen),\"head_dim\":\(headDim),\"causal\":\(causal),\"distribution\":\"\(distribution)\",\"window\":[\(windowLeft),\(windowRight)],\"visible_pairs\":\(Int(pairs)),\"threads\":\(threads),\"ranks\":\(ranks),\"runs\":\(times.count),\"median_s\":\(median),\"min_s\":\(times[0]),\"gflops\":\(flops / median / 1e9),\"bytes_sent_rank0\":\(lastBytes(records)),\"peak_rss_mib\":\(usage.ru_maxrss / 1024),\"code_path\":\"\(LocalAttention.codePath)\"}")
            print(commLine(mode: m, times: times, records: records, network: net, calibration: calibration))
            fflush(stdout)
        }
    }

    /// Query-key pairs the mask lets through (the work, whatever the distribution).
    func visiblePairs() -> Double {
        var total = 0.0
        for i in 0..<seqLen {
            let lo = windowLeft >= 0 ? max(0, i - windowLeft) : 0
            var hi = causal ? i : seqLen - 1
            if windowRight >= 0 { hi = min(hi, i + windowRight) }
            total += Double(max(0, hi - lo + 1))
        }
        return total
    }

    /// Bytes rank 0 sent in the last measured call.
    private func lastBytes(_ records: [RankRecord]) -> UInt64 {
        guard let r = records.first else { return 0 }
        return (r.backward ?? r.forward).stats.bytesSent
    }

    /// Whether a mask hides some pairs (no closed form for the ring patterns' bytes then).
    var masked: Bool { causal || windowLeft >= 0 || windowRight >= 0 }

    /// Measures one forward step's compute on rank 0 (one untimed call of
    /// each kind, BURST, no network: stats.computeSeconds / stepsComputed of
    /// the forward) and returns `base` with the intra-group bandwidth that
    /// makes one K,V block (2·Zkv·n·d floats, n = rank 0's tokens) take
    /// `ratio` × that step, the inter-group bandwidth scaled alike (the
    /// ratio of `base`'s two bandwidths; infinite stays infinite), and the
    /// JSON line that says so.
    func calibrate(base: SimulatedNetwork, ratio: Double, counts: [Int], backward: Bool) throws -> (SimulatedNetwork, String) {
        if base.bandwidth == 0 && base.interGroupBandwidth > 0 {
            throw ValidationError("--calibrate-transfer keeps the inter/intra bandwidth ratio: give --network both bandwidth and inter_bandwidth (any scale), or neither")
        }
        let (_, records) = try measure(counts: counts, backward: backward, network: nil, pattern: AttentionConfig.Pattern.burst.rawValue,
                                       warmup: 0, repeats: 1, quiet: true)
        let f = records[0].forward.stats
        let step = f.computeSeconds / Double(max(f.stepsComputed, 1))
        let blockBytes = 2 * batch * (headsKv ?? heads) * counts[0] * headDim * MemoryLayout<Float>.size
        let bandwidth = Double(blockBytes) / (ratio * step)
        let interRatio = base.bandwidth > 0 ? base.interGroupBandwidth / base.bandwidth : 1
        var calibrated = SimulatedNetwork(latency: base.latency, bandwidth: bandwidth, interGroupLatency: base.interGroupLatency,
                                          interGroupBandwidth: bandwidth * interRatio, groupSize: base.groupSize)
        calibrated.interPort = base.interPort
        let line = JSON.object([
            ("bench", "\"calibration\""), ("ratio", JSON.number(ratio)), ("ranks", "\(counts.count)"), ("seq_len", "\(seqLen)"),
            ("heads", "\(heads)"), ("heads_kv", "\(headsKv ?? heads)"), ("head_dim", "\(headDim)"), ("threads", "\(threads)"),
            ("step_compute_s", JSON.number(step)), ("fwd_steps_computed", "\(f.stepsComputed)"),
            ("fwd_compute_s", JSON.number(f.computeSeconds)), ("block_bytes", "\(blockBytes)"),
            ("network_given", JSON.string(base.description)), ("network", JSON.string(calibrated.description)),
            // The calibration run is the same shape without a network: its waits are what
            // the ranks wait for each other (imbalance, time-slicing of shared cores), not for links.
            ("baseline_fwd_comm_wait_s", JSON.array(records.map(\.forward.stats.commWaitSeconds))),
            ("baseline_bwd_comm_wait_s", JSON.array(records.map { $0.backward?.stats.commWaitSeconds ?? 0 })),
            ("baseline_total_s", JSON.array(records.map { $0.forward.stats.totalSeconds + ($0.backward?.stats.totalSeconds ?? 0) })),
        ])
        return (calibrated, line)
    }

    /// The `"bench":"comm"` line of one measurement: the shape, the pattern
    /// asked for and run, every rank's counters of its last timed call of
    /// each kind (`callObject`), and totals over the calls: the wait each
    /// rank saw, its link time on the network, and the hidden fraction
    /// 1 − Σwait / Σtransfer (over ranks and calls; also the worst rank's).
    func commLine(mode m: String, times: [Double], records: [RankRecord], network net: SimulatedNetwork?, calibration: String?) -> String {
        let r0 = records.first?.forward.stats ?? CallStats()
        let calls = records.map { [$0.forward] + ($0.backward.map { [$0] } ?? []) }
        let wait = calls.map { $0.reduce(0) { $0 + $1.stats.commWaitSeconds } }
        let total = calls.map { $0.reduce(0) { $0 + $1.stats.totalSeconds } }
        let sent = calls.map { $0.reduce(UInt64(0)) { $0 + $1.stats.bytesSent } }
        var fields: [(String, String)] = [
            ("bench", "\"comm\""), ("pattern", JSON.string(pattern)),
            ("pattern_resolved", JSON.string(patternNames[Int(r0.pattern)])),
            ("ranks", "\(ranks)"), ("intra_group_size", "\(r0.intraGroupSize)"),
            ("intra_group_size_arg", "\(intraGroupSize)"), ("mpi", "\(mpi)"),
            ("network", JSON.string(net?.description)), ("network_arg", JSON.string(network)),
            ("calibrate_transfer", JSON.number(calibrateTransfer)),
            ("progress", "\(getenv("BURST_PROGRESS").map { String(cString: $0) != "0" } ?? true)"),
            ("mode", "\"\(m)\""), ("batch", "\(batch)"), ("seq_len", "\(seqLen)"), ("heads", "\(heads)"),
            ("heads_kv", "\(headsKv ?? heads)"), ("head_dim", "\(headDim)"), ("causal", "\(causal)"),
            ("distribution", "\"\(distribution)\""), ("window", "[\(windowLeft),\(windowRight)]"),
            ("threads", "\(threads)"), ("runs", "\(times.count)"),
            ("median_s", JSON.number(times[times.count / 2])), ("min_s", JSON.number(times[0])),
            ("tokens", JSON.array(records.map(\.tokens))), ("workspace_bytes", JSON.array(records.map(\.workspaceBytes))),
            ("fwd", callObject(records.map(\.forward), network: net)),
            ("bwd", records.allSatisfy { $0.backward != nil } && m == "fwdbwd" ? callObject(records.map { $0.backward! }, network: net) : "null"),
            ("comm_wait_s", JSON.array(wait)), ("total_s", JSON.array(total)),
            ("comm_wait_share_max", JSON.number(zip(wait, total).map { $1 > 0 ? $0 / $1 : 0 }.max())),
            ("bytes_sent_max", "\(sent.max() ?? 0)"),
        ]
        if let net {
            let transfer = calls.map { $0.reduce(0) { $0 + $1.transferSeconds(net) } }
            fields.append(("transfer_s", JSON.array(transfer)))
            fields.append(("transfer_s_max", JSON.number(transfer.max())))
            fields.append(("hidden_fraction", JSON.number(hidden(wait: wait.reduce(0, +), transfer: transfer.reduce(0, +)))))
            fields.append(("hidden_fraction_min", JSON.number(zip(wait, transfer).compactMap { hidden(wait: $0, transfer: $1) }.min())))
        } else {
            fields += [("transfer_s", "null"), ("transfer_s_max", "null"), ("hidden_fraction", "null"), ("hidden_fraction_min", "null")]
        }
        if let calibration { fields.append(("calibration", calibration)) }
        fields.append(("code_path", JSON.string(LocalAttention.codePath)))
        return JSON.object(fields)
    }

    var storage: StorageType { ["f32": .f32, "bf16": .bf16, "f16": .f16][dtype] ?? .f32 }

    func config(_ counts: [Int], rank: Int, pattern: Int32) -> AttentionConfig {
        var c = AttentionConfig()
        c.mask = causal ? 1 : 0
        c.distribution = ["contiguous": 0, "zigzag": 1, "striped": 2][distribution] ?? 0
        c.windowLeft = Int64(windowLeft); c.windowRight = Int64(windowRight)
        c.batch = Int64(batch); c.seqLenLocal = Int64(counts[rank])
        c.numHeadsQ = Int64(heads); c.numHeadsKV = Int64(headsKv ?? heads); c.headDim = Int64(headDim)
        c.numThreads = Int32(threads)
        c.timeoutSeconds = timeout
        c.pattern = pattern
        c.intraGroupSize = Int32(intraGroupSize)
        c.dtype = storage.rawValue
        c.compute = ["default": AttentionConfig.Compute.default, "exact": .exact, "fast": .fast][compute]!.rawValue
        return c
    }

    /// `warmup` untimed calls, then `repeats` timed calls of forward (+ backward)
    /// on one plan; returns the wall time of each timed call and this rank's
    /// record of the last call of each kind (`counts` is the plan
    /// transport's receive counter). Prints this rank's counters of the last
    /// call and its process CPU time per call (`cpuSeconds`: with one compute
    /// thread per rank that is the rank's own work, and it does not count
    /// time-slicing when ranks share cores) with --mpi or --rank-lines.
    func timeCalls(_ plan: AttentionPlan, backward: Bool, counts: MessageCounts, warmup: Int, repeats: Int,
                   quiet: Bool = false) throws -> ([Double], RankRecord) {
        let n = plan.tensorElements
        let x = FloatBuffer(count: n)!, out = FloatBuffer(count: n)!, lse = FloatBuffer(count: plan.lseElements)!
        let dq = FloatBuffer(count: n)!, dk = FloatBuffer(count: n)!, dv = FloatBuffer(count: n)!
        for i in 0..<n { x.pointer[i] = Float((i &* 2_654_435_761) % 1000) / 500 - 1 }
        if storage != .f32 {   // the same values in the storage type (in place: its elements are smaller)
            let values = FloatBuffer(count: n)!
            values.pointer.update(from: x.pointer, count: n)
            StorageConversion.store(storage, values.pointer, into: UnsafeMutableRawPointer(x.pointer), count: n)
        }
        var times: [Double] = []
        var cpu = 0.0
        var record = RankRecord()
        record.rank = plan.rank
        record.tokens = plan.localRows
        func finish(_ call: inout CallRecord, backward: Bool) {
            call.stats = plan.lastStats
            call.messagesReceivedIntra = counts.intra
            call.messagesReceivedInter = counts.inter
            call.formula = formulaBytes(plan: plan, backward: backward, masked: masked)
            counts.reset()
        }
        for run in 0..<(warmup + repeats) {
            let t0 = Deadline.seconds(), c0 = cpuSeconds()
            counts.reset()
            try plan.forward(q: x.pointer, k: x.pointer, v: x.pointer, out: out.pointer, lse: lse.pointer)
            finish(&record.forward, backward: false)
            if backward {
                try plan.backward(q: x.pointer, k: x.pointer, v: x.pointer, out: out.pointer, lse: lse.pointer,
                                  dout: x.pointer, dq: dq.pointer, dk: dk.pointer, dv: dv.pointer)
                var call = CallRecord()
                finish(&call, backward: true)
                record.backward = call
            }
            if run >= warmup { times.append(Deadline.seconds() - t0); cpu += cpuSeconds() - c0 }
        }
        record.workspaceBytes = plan.workspaceBytes
        if (mpi || rankLines) && !quiet {
            let f = record.forward.stats, b = record.backward?.stats ?? CallStats()
            print("{\"bench\":\"rank\",\"mode\":\"\(backward ? "fwdbwd" : "fwd")\",\"rank\":\(plan.rank),\"ranks\":\(plan.size),\"tokens\":\(plan.localRows),\"seq_len\":\(seqLen),\"distribution\":\"\(distribution)\",\"causal\":\(causal),\"window\":[\(windowLeft),\(windowRight)],\"heads\":\(heads),\"heads_kv\":\(headsKv ?? heads),\"pattern\":\"\(pattern)\",\"pattern_resolved\":\"\(patternNames[Int(f.pattern)])\",\"intra_group_size\":\(f.intraGroupSize),\"threads\":\(threads),\"runs\":\(times.count),\"median_s\":\(times.sorted()[times.count / 2]),\"cpu_s_per_call\":\(cpu / Double(repeats)),\"fwd_tiles_computed\":\(f.tilesComputed),\"fwd_tiles_skipped\":\(f.tilesSkipped),\"bwd_tiles_computed\":\(b.tilesComputed),\"bwd_tiles_skipped\":\(b.tilesSkipped),\"fwd_steps_computed\":\(f.stepsComputed),\"bwd_steps_computed\":\(b.stepsComputed),\"fwd_bytes_sent\":\(f.bytesSent),\"bwd_bytes_sent\":\(b.bytesSent),\"fwd_bytes_received\":\(f.bytesReceived),\"bwd_bytes_received\":\(b.bytesReceived),\"fwd_compute_s\":\(f.computeSeconds),\"bwd_compute_s\":\(b.computeSeconds),\"fwd_comm_wait_s\":\(f.commWaitSeconds),\"bwd_comm_wait_s\":\(b.commWaitSeconds),\"fwd_total_s\":\(f.totalSeconds),\"bwd_total_s\":\(b.totalSeconds),\"workspace_bytes\":\(record.workspaceBytes),\"progress\":\(getenv("BURST_PROGRESS").map { String(cString: $0) != "0" } ?? true)}")
            fflush(stdout)
        }
        return (times, record)
    }

    /// CPU time of this rank: the process under MPI (one rank per process),
    /// the calling thread in-process (exact with --threads 1).
    func cpuSeconds() -> Double {
        var ts = timespec()
        clock_gettime(mpi ? CLOCK_PROCESS_CPUTIME_ID : CLOCK_THREAD_CPUTIME_ID, &ts)
        return Double(ts.tv_sec) + Double(ts.tv_nsec) / 1e9
    }

    /// One plan on MPI_COMM_WORLD. Returns this rank's wall times and, on
    /// rank 0, every rank's record (MPI_Gather of their fixed-length
    /// encodings; other ranks get their own record only).
    func measureMPI(counts: [Int], rank: Int, backward: Bool, pattern: Int32) throws -> ([Double], [RankRecord]) {
        let (mpiTransport, localRanks) = try MPITransport.create(fortranHandle: cmpi_comm_c2f(cmpi_comm_world()))
        let messages = MessageCounts()
        let context = AttentionContext(transport: CountingTransport(mpiTransport, counts: messages),
                                       defaultThreads: max(1, availableCPUCount() / localRanks))
        let (times, record): ([Double], RankRecord) = try {
            let plan = try context.makePlan(.success(config(counts, rank: rank, pattern: pattern)))
            return try timeCalls(plan, backward: backward, counts: messages, warmup: warmup, repeats: repeats)
        }()
        let width = RankRecord.encodedCount
        let mine = record.encoded
        var all = [Double](repeating: 0, count: width * counts.count)
        let status = mine.withUnsafeBytes { send in
            all.withUnsafeMutableBytes { receive in
                MPI_Gather(send.baseAddress, Int32(width * 8), cmpi_byte(), receive.baseAddress, Int32(width * 8), cmpi_byte(),
                           0, cmpi_comm_world())
            }
        }
        guard status == cmpi_success() else { throw ValidationError("MPI_Gather of the ranks' records failed (\(status))") }
        if rank != 0 { return (times, [record]) }
        return (times, (0..<counts.count).map { RankRecord(decoding: all[($0 * width)..<(($0 + 1) * width)]) })
    }

    /// One plan per in-process rank, each driven by its own thread, on a
    /// loopback group (with `network`, the simulated one). Returns rank 0's
    /// wall time of each timed call and every rank's record.
    func measure(counts: [Int], backward: Bool, network: SimulatedNetwork?, pattern: Int32, warmup: Int, repeats: Int,
                 quiet: Bool = false) throws -> ([Double], [RankRecord]) {
        let transports = LoopbackTransport.makeGroup(size: counts.count, network: network)
        var rank0Times: [Double] = []
        var records = [RankRecord](repeating: RankRecord(), count: counts.count)
        var failure: Error?
        let lock = UnsafeMutablePointer<pthread_mutex_t>.allocate(capacity: 1)
        pthread_mutex_init(lock, nil)
        defer { lock.deallocate() }
        var started: [pthread_t] = []
        final class Job { let body: () -> Void; init(_ b: @escaping () -> Void) { body = b } }
        for rank in 0..<counts.count {
            let job = Job {
                do {
                    let messages = MessageCounts()
                    let plan = try AttentionContext(transport: CountingTransport(transports[rank], counts: messages), defaultThreads: 1)
                        .makePlan(.success(self.config(counts, rank: rank, pattern: pattern)))
                    let (times, record) = try self.timeCalls(plan, backward: backward, counts: messages, warmup: warmup,
                                                             repeats: repeats, quiet: quiet)
                    pthread_mutex_lock(lock)
                    if rank == 0 { rank0Times = times }
                    records[rank] = record
                    pthread_mutex_unlock(lock)
                } catch {
                    pthread_mutex_lock(lock); failure = error; pthread_mutex_unlock(lock)
                }
            }
            var thread = pthread_t()
            let context = Unmanaged.passRetained(job).toOpaque()
            pthread_create(&thread, nil, { raw in
                let job = Unmanaged<Job>.fromOpaque(raw!).takeRetainedValue()
                job.body()
                return nil
            }, context)
            started.append(thread)
        }
        for thread in started { pthread_join(thread, nil) }
        if let failure { throw failure }
        return (rank0Times, records)
    }
}
