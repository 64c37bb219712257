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
/// prints one JSON line per measurement (rank 0 prints).
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
    @Flag(help: "Run on MPI_COMM_WORLD (start under mpirun); --ranks is then the MPI world size.") var mpi = false
    @Flag(help: "Print every rank's counters (always on with --mpi).") var rankLines = false
    @Flag(help: "Also print the tile GEMM rate (128×128×d, the kernels' JIT product, one thread): the roofline.") var gemm = false

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
        guard ranks >= 1, seqLen >= ranks, repeats >= 1, warmup >= 0 else {
            throw ValidationError("need ranks >= 1, seq-len >= ranks, repeats >= 1, warmup >= 0")
        }
        guard let kind = ["contiguous": AttentionConfig.Distribution.contiguous, "zigzag": .zigzag, "striped": .striped][distribution] else {
            throw ValidationError("--distribution must be contiguous, zigzag or striped")
        }
        let deal = TokenDistribution(kind: kind, total: seqLen, ranks: ranks, sequenceOffsets: nil)
        let counts = (0..<ranks).map { deal.count(rank: $0) }
        if gemm && worldRank == 0 {
            let rate = LocalAttention.tileProductRate(headDim: headDim)
            print("{\"bench\":\"tile_gemm\",\"m\":128,\"n\":128,\"k\":\(headDim),\"threads\":1,\"gflops\":\(rate),\"code_path\":\"\(LocalAttention.codePath)\"}")
        }
        let modes = mode == "both" ? ["fwd", "fwdbwd"] : [mode]
        for m in modes {
            var times = mpi ? try measureMPI(counts: counts, rank: worldRank, backward: m == "fwdbwd")
                            : try measure(counts: counts, backward: m == "fwdbwd")
            if worldRank != 0 { continue }
            times.sort()
            let median = times[times.count / 2]
            let pairs = visiblePairs()
            let flops = (m == "fwd" ? 4 : 14) * Double(batch * heads) * pairs * Double(headDim)
            var usage = rusage()
            getrusage(RUSAGE_SELF.rawValue, &usage)
            print("{\"bench\":\"burst\",\"mode\":\"\(m)\",\"batch\":\(batch),\"heads\":\(heads),\"heads_kv\":\(headsKv ?? heads),\"seq_len\":\(seqLen),\"head_dim\":\(headDim),\"causal\":\(causal),\"distribution\":\"\(distribution)\",\"window\":[\(windowLeft),\(windowRight)],\"visible_pairs\":\(Int(pairs)),\"threads\":\(threads),\"ranks\":\(ranks),\"runs\":\(times.count),\"median_s\":\(median),\"min_s\":\(times[0]),\"gflops\":\(flops / median / 1e9),\"bytes_sent_rank0\":\(lastBytes),\"peak_rss_mib\":\(usage.ru_maxrss / 1024),\"code_path\":\"\(LocalAttention.codePath)\"}")
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
    private var lastBytes: UInt64 { BenchState.bytes }

    func config(_ counts: [Int], rank: Int) -> AttentionConfig {
        var c = AttentionConfig()
        c.mask = causal ? 1 : 0
        c.distribution = ["contiguous": 0, "zigzag": 1, "striped": 2][distribution] ?? 0
        c.windowLeft = Int64(windowLeft); c.windowRight = Int64(windowRight)
        c.batch = Int64(batch); c.seqLenLocal = Int64(counts[rank])
        c.numHeadsQ = Int64(heads); c.numHeadsKV = Int64(headsKv ?? heads); c.headDim = Int64(headDim)
        c.numThreads = Int32(threads)
        return c
    }

    /// `warmup` untimed calls, then `repeats` timed calls of forward (+ backward)
    /// on one plan; returns the wall time of each timed call. Prints this
    /// rank's counters of the last call and its process CPU time per call
    /// (`cpuSeconds`: with one compute thread per rank that is the rank's own
    /// work, and it does not count time-slicing when ranks share cores).
    func timeCalls(_ plan: AttentionPlan, backward: Bool) throws -> [Double] {
        let n = plan.tensorElements
        let x = FloatBuffer(count: n)!, out = FloatBuffer(count: n)!, lse = FloatBuffer(count: plan.lseElements)!
        let dq = FloatBuffer(count: n)!, dk = FloatBuffer(count: n)!, dv = FloatBuffer(count: n)!
        for i in 0..<n { x.pointer[i] = Float((i &* 2_654_435_761) % 1000) / 500 - 1 }
        var times: [Double] = []
        var cpu = 0.0
        var forwardStats = CallStats(), backwardStats = CallStats()
        for run in 0..<(warmup + repeats) {
            let t0 = Deadline.seconds(), c0 = cpuSeconds()
            try plan.forward(q: x.pointer, k: x.pointer, v: x.pointer, out: out.pointer, lse: lse.pointer)
            forwardStats = plan.lastStats
            if backward {
                try plan.backward(q: x.pointer, k: x.pointer, v: x.pointer, out: out.pointer, lse: lse.pointer,
                                  dout: x.pointer, dq: dq.pointer, dk: dk.pointer, dv: dv.pointer)
                backwardStats = plan.lastStats
            }
            if run >= warmup { times.append(Deadline.seconds() - t0); cpu += cpuSeconds() - c0 }
        }
        BenchState.bytes = plan.lastStats.bytesSent
        if mpi || rankLines {
            let f = forwardStats, b = backwardStats
            print("{\"bench\":\"rank\",\"mode\":\"\(backward ? "fwdbwd" : "fwd")\",\"rank\":\(plan.rank),\"tokens\":\(plan.localRows),\"distribution\":\"\(distribution)\",\"causal\":\(causal),\"window\":[\(windowLeft),\(windowRight)],\"heads\":\(heads),\"heads_kv\":\(headsKv ?? heads),\"cpu_s_per_call\":\(cpu / Double(repeats)),\"fwd_tiles_computed\":\(f.tilesComputed),\"fwd_tiles_skipped\":\(f.tilesSkipped),\"bwd_tiles_computed\":\(b.tilesComputed),\"bwd_tiles_skipped\":\(b.tilesSkipped),\"fwd_steps_computed\":\(f.stepsComputed),\"bwd_steps_computed\":\(b.stepsComputed),\"fwd_bytes_sent\":\(f.bytesSent),\"bwd_bytes_sent\":\(b.bytesSent),\"fwd_compute_s\":\(f.computeSeconds),\"bwd_compute_s\":\(b.computeSeconds)}")
            fflush(stdout)
        }
        return times
    }

    /// CPU time of this rank: the process under MPI (one rank per process),
    /// the calling thread in-process (exact with --threads 1).
    func cpuSeconds() -> Double {
        var ts = timespec()
        clock_gettime(mpi ? CLOCK_PROCESS_CPUTIME_ID : CLOCK_THREAD_CPUTIME_ID, &ts)
        return Double(ts.tv_sec) + Double(ts.tv_nsec) / 1e9
    }

    func measureMPI(counts: [Int], rank: Int, backward: Bool) throws -> [Double] {
        let (transport, localRanks) = try MPITransport.create(fortranHandle: cmpi_comm_c2f(cmpi_comm_world()))
        let context = AttentionContext(transport: transport, defaultThreads: max(1, availableCPUCount() / localRanks))
        let plan = try context.makePlan(.success(config(counts, rank: rank)))
        return try timeCalls(plan, backward: backward)
    }

    /// One plan per in-process rank, each driven by its own thread. Returns
    /// rank 0's wall time of each timed call.
    func measure(counts: [Int], backward: Bool) throws -> [Double] {
        let transports = LoopbackTransport.makeGroup(size: counts.count)
        var rank0Times: [Double] = []
        var failure: Error?
        let lock = UnsafeMutablePointer<pthread_mutex_t>.allocate(capacity: 1)
        pthread_mutex_init(lock, nil)
        defer { lock.deallocate() }
        var started: [pthread_t] = []
        final class Job { let body: () -> Void; init(_ b: @escaping () -> Void) { body = b } }
        for rank in 0..<counts.count {
            let job = Job {
                do {
                    let plan = try AttentionContext(transport: transports[rank], defaultThreads: 1)
                        .makePlan(.success(self.config(counts, rank: rank)))
                    let times = try self.timeCalls(plan, backward: backward)
                    if rank == 0 {
                        pthread_mutex_lock(lock); rank0Times = times; pthread_mutex_unlock(lock)
                    }
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
        return rank0Times
    }
}

enum BenchState {
    nonisolated(unsafe) static var bytes: UInt64 = 0
}
