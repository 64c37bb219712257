#if canImport(Glibc)
import Glibc
#endif
import ArgumentParser
import Dispatch
import Foundation
import CMPI
import GlobalAttention
import LocalAttention
import MPITransport

/// `burst-bench --decode`: the decode step over a KV cache of each length in
/// `--cache-lengths` (the whole sequence, sharded over the ranks by a
/// CONTIGUOUS prefill), and in the same process the memory read of a buffer
/// as large as this rank's shard — the bound a decode step, which reads its
/// shard once, cannot beat. One JSON line per length (rank 0 prints):
/// `"bench":"decode"` with the median step time, this rank's cache bytes,
/// the read time and rates, their ratio, and the merge (allgather) time.
extension BurstBench {
    func runDecode(worldRank: Int) throws {
        guard let type = ["f32": StorageType.f32, "bf16": .bf16, "f16": .f16][dtype] else {
            throw ValidationError("--dtype must be f32, bf16 or f16")
        }
        let lengths = cacheLengths.split(separator: ",").compactMap { Int($0) }
        guard !lengths.isEmpty, lengths.allSatisfy({ $0 >= ranks }) else { throw ValidationError("--cache-lengths: comma-separated lengths >= the ranks") }
        if mpi || ranks == 1 {
            let transport: Transport = mpi
                ? try MPITransport.create(fortranHandle: cmpi_comm_c2f(cmpi_comm_world())).0
                : LoopbackTransport.makeGroup(size: 1)[0]
            try decodeOnRank(AttentionContext(transport: transport, defaultThreads: threads), worldRank: worldRank, type: type, lengths: lengths)
            return
        }
        // In-process ranks (one thread each), with --network between them.
        let net = try network.map { try SimulatedNetwork(parsing: $0) }
        let transports = LoopbackTransport.makeGroup(size: ranks, network: net)
        let me = self
        // One slot per rank thread (no array shared between threads).
        let failures = UnsafeMutablePointer<String?>.allocate(capacity: ranks)
        failures.initialize(repeating: nil, count: ranks)
        defer { failures.deinitialize(count: ranks); failures.deallocate() }
        let address = UInt(bitPattern: failures)
        let group = DispatchGroup()
        for rank in 0..<ranks {
            group.enter()
            let thread = Thread {
                let slot = UnsafeMutablePointer<String?>(bitPattern: address)! + rank
                do { try me.decodeOnRank(AttentionContext(transport: transports[rank], defaultThreads: me.threads), worldRank: rank, type: type, lengths: lengths) }
                catch { slot.pointee = "\(error)" }
                group.leave()
            }
            thread.start()
        }
        group.wait()
        if let failure = (0..<ranks).compactMap({ failures[$0] }).first { throw ValidationError(failure) }
    }

    /// One rank's part of `runDecode`.
    func decodeOnRank(_ context: AttentionContext, worldRank: Int, type: StorageType, lengths: [Int]) throws {
        let kvHeads = headsKv ?? heads, d = headDim
        for length in lengths {
            var cc = KVCacheConfig()
            cc.dtype = type.rawValue
            cc.numLayers = 1
            cc.numHeadsQ = Int64(heads); cc.numHeadsKV = Int64(kvHeads); cc.headDim = Int64(d)
            cc.windowLeft = Int64(windowLeft)
            cc.numThreads = Int32(threads)
            cc.blockTokens = Int64(blockTokens)
            cc.timeoutSeconds = timeout
            let cache = try context.makeKVCache(.success(cc))
            let ids = (0..<Int64(batch)).map { $0 }
            try ids.withUnsafeBufferPointer { try cache.add($0.baseAddress, count: Int64(batch)) }
            // Prefill from a CONTIGUOUS plan: rank r holds its run of every sequence.
            let deal = TokenDistribution(kind: .contiguous, total: length, ranks: ranks, sequenceOffsets: nil)
            var pc = AttentionConfig()
            pc.dtype = type.rawValue
            pc.mask = AttentionConfig.Mask.causal.rawValue
            pc.batch = Int64(batch)
            pc.seqLenLocal = Int64(deal.count(rank: worldRank))
            pc.numHeadsQ = Int64(heads); pc.numHeadsKV = Int64(kvHeads); pc.headDim = Int64(d)
            pc.numThreads = Int32(threads)
            pc.timeoutSeconds = timeout
            let plan = try context.makePlan(.success(pc))
            let kvElements = batch * plan.localRows * kvHeads * d
            do {
                let k = UnsafeMutableRawPointer.allocate(byteCount: max(kvElements, 1) * type.bytes, alignment: 64)
                defer { k.deallocate() }
                fillSmall(k, elements: kvElements, type: type)
                try ids.withUnsafeBufferPointer { try cache.prefill(layer: 0, plan: plan, planContext: context, ids: $0.baseAddress, k: k, v: k) }
            }
            // One decode step: T = --decode-tokens new tokens per sequence.
            let t = decodeTokens
            let qElements = batch * t * heads * d, newKV = batch * t * kvHeads * d
            let q = UnsafeMutableRawPointer.allocate(byteCount: qElements * type.bytes, alignment: 64)
            let kv = UnsafeMutableRawPointer.allocate(byteCount: newKV * type.bytes, alignment: 64)
            let out = UnsafeMutableRawPointer.allocate(byteCount: qElements * type.bytes, alignment: 64)
            defer { q.deallocate(); kv.deallocate(); out.deallocate() }
            fillSmall(q, elements: qElements, type: type)
            fillSmall(kv, elements: newKV, type: type)
            var times: [Double] = [], merges: [Double] = []
            for call in 0..<(warmup + repeats) {
                let t0 = Deadline.seconds()
                try ids.withUnsafeBufferPointer {
                    try cache.decode(layer: 0, ids: $0.baseAddress, count: Int64(batch), tokens: Int64(t), positions: nil,
                                     q: q, k: kv, v: kv, out: out, lse: nil)
                }
                if call >= warmup {
                    times.append(Deadline.seconds() - t0)
                    merges.append(cache.lastStats.commWaitSeconds)
                }
            }
            times.sort(); merges.sort()
            let cacheBytes = try cache.bytes()
            let kvBytes = 2 * batch * (length / ranks) * kvHeads * d * type.bytes   // K and V of this rank's shard
            let read = readSeconds(bytes: kvBytes, threads: threads)
            if worldRank == 0 {
                let step = times[times.count / 2]
                print("{\"bench\":\"decode\",\"dtype\":\"\(dtype)\",\"batch\":\(batch),\"heads\":\(heads),\"heads_kv\":\(kvHeads),\"head_dim\":\(d),\"tokens\":\(t),\"window\":\(windowLeft),\"cache_len\":\(length),\"ranks\":\(ranks),\"threads\":\(threads),\"runs\":\(times.count),\"median_s\":\(step),\"min_s\":\(times[0]),\"kv_bytes_local\":\(kvBytes),\"cache_bytes_local\":\(cacheBytes),\"read_s\":\(read),\"read_gbs\":\(Double(kvBytes) / read / 1e9),\"decode_gbs\":\(Double(kvBytes) / step / 1e9),\"fraction_of_read\":\(read / step),\"merge_median_s\":\(merges[merges.count / 2]),\"code_path\":\"\(LocalAttention.codePath)\"}")
                fflush(stdout)
            }
        }
    }

    /// Values in [-0.5, 0.5) in the storage type.
    private func fillSmall(_ p: UnsafeMutableRawPointer, elements: Int, type: StorageType) {
        var x: UInt32 = 12345
        let chunk = 4096
        let buffer = UnsafeMutablePointer<Float>.allocate(capacity: chunk)
        defer { buffer.deallocate() }
        var i = 0
        while i < elements {
            let n = min(chunk, elements - i)
            for j in 0..<n { x = x &* 1_664_525 &+ 1_013_904_223; buffer[j] = Float(x >> 8) / Float(1 << 24) - 0.5 }
            StorageConversion.store(type, buffer, into: p + i * type.bytes, count: n)
            i += n
        }
    }

    /// Median seconds to read `bytes` bytes (a sum over a buffer of that size,
    /// split over `threads` threads), after one untimed pass.
    private func readSeconds(bytes: Int, threads: Int) -> Double {
        let floats = max(bytes / 4, 16) / 16 * 16
        guard let buffer = FloatBuffer(count: floats) else { return .nan }
        for i in 0..<floats { buffer.pointer[i] = Float(i & 7) }
        let pool = WorkerPool(threadCount: threads)
        let sums = UnsafeMutablePointer<Float>.allocate(capacity: pool.threadCount)
        defer { sums.deallocate() }
        var times: [Double] = []
        for run in 0..<6 {
            let t0 = Deadline.seconds()
            pool.parallelFor(pool.threadCount) { task, _ in
                let per = floats / pool.threadCount / 16 * 16
                let start = task * per, end = task == pool.threadCount - 1 ? floats : start + per
                var a = SIMD16<Float>(), b = SIMD16<Float>()
                var i = start
                let raw = UnsafeRawPointer(buffer.pointer)
                while i + 32 <= end {
                    a += raw.loadUnaligned(fromByteOffset: i * 4, as: SIMD16<Float>.self)
                    b += raw.loadUnaligned(fromByteOffset: i * 4 + 64, as: SIMD16<Float>.self)
                    i += 32
                }
                while i < end { a[0] += buffer.pointer[i]; i += 1 }
                sums[task] = (a + b).sum()
            }
            if run > 0 { times.append(Deadline.seconds() - t0) }
        }
        times.sort()
        return times[times.count / 2]
    }
}
