#if canImport(Glibc)
import Glibc
#endif
import GlobalAttention
import LocalAttention

/// `burst-bench --modifiers`: what attention sinks and logit soft-capping
/// cost (issue 18's target: each within 5% of plain attention). One rank
/// (the self context's kernels, --threads compute threads), five plans of
/// the same shape — plain, sinks, softcap (--softcap), both, and a cap of 1
/// that the logits reach (softcap_tight) — timed
/// round-robin, forward and forward+backward, one call of each per round
/// in a rotating order, so the VM's drift hits all of them alike. One JSON
/// line per variant with its medians and the ratio to plain's.
extension BurstBench {
    func runModifiers() throws {
        // "softcap_tight": a cap of 1 puts these inputs' logits (|x| up to ~1.5)
        // near it, so the kernels' tanh takes its general branch almost
        // everywhere (with the cap of 50 every vector has |x/c| <= 1/4: the
        // short series) - the cost when a model's logits do reach its cap.
        let variants: [(name: String, sinks: Bool, cap: Float)] = [("plain", false, 0), ("sinks", true, 0),
                                                                   ("softcap", false, softcap), ("both", true, softcap),
                                                                   ("softcap_tight", false, 1)]
        let context = AttentionContext(transport: LoopbackTransport.makeGroup(size: 1)[0], defaultThreads: threads)
        let plans = try variants.map { variant -> AttentionPlan in
            var c = config([seqLen], rank: 0, pattern: 0)
            c.softcap = variant.cap
            if variant.sinks { c.sinks = (0..<heads).map { Float($0 % 5) * 0.5 - 1 } }
            return try context.makePlan(.success(c))
        }
        let n = plans[0].tensorElements, kvN = plans[0].kvTensorElements
        let bytes = storage.bytes
        func buffer(_ count: Int, seed: UInt32) -> UnsafeMutableRawPointer {
            let raw = UnsafeMutableRawPointer.allocate(byteCount: max(count, 1) * 4, alignment: 64)
            let floats = raw.assumingMemoryBound(to: Float.self)
            var state = seed
            for i in 0..<count { state = state &* 1_664_525 &+ 1_013_904_223; floats[i] = Float(state >> 8) / Float(1 << 23) - 1 }
            if storage != .f32 {
                let copy = [Float](UnsafeBufferPointer(start: floats, count: count))
                copy.withUnsafeBufferPointer { StorageConversion.store(storage, $0.baseAddress!, into: raw, count: count) }
            }
            return raw
        }
        let q = buffer(n, seed: 1), k = buffer(kvN, seed: 2), v = buffer(kvN, seed: 3), dout = buffer(n, seed: 4)
        let out = UnsafeMutableRawPointer.allocate(byteCount: n * bytes, alignment: 64)
        let dq = UnsafeMutableRawPointer.allocate(byteCount: n * bytes, alignment: 64)
        let dk = UnsafeMutableRawPointer.allocate(byteCount: kvN * bytes, alignment: 64)
        let dv = UnsafeMutableRawPointer.allocate(byteCount: kvN * bytes, alignment: 64)
        let lse = UnsafeMutablePointer<Float>.allocate(capacity: plans[0].lseElements)
        defer { for p in [q, k, v, dout, out, dq, dk, dv] { p.deallocate() }; lse.deallocate() }

        var forward = [[Double]](repeating: [], count: variants.count), both = forward
        for round in 0..<(warmup + repeats) {
            for offset in 0..<variants.count {
                let i = (round + offset) % variants.count, plan = plans[i]
                let t0 = Deadline.seconds()
                try plan.forward(q: q, k: k, v: v, out: out, lse: lse)
                let t1 = Deadline.seconds()
                try plan.backward(q: q, k: k, v: v, out: out, lse: lse, dout: dout, dq: dq, dk: dk, dv: dv)
                let t2 = Deadline.seconds()
                if round >= warmup { forward[i].append(t1 - t0); both[i].append(t2 - t0) }
            }
        }
        func median(_ x: [Double]) -> Double { let s = x.sorted(); return s[s.count / 2] }
        let plainForward = median(forward[0]), plainBoth = median(both[0])
        for (i, variant) in variants.enumerated() {
            let f = median(forward[i]), b = median(both[i])
            print("{\"bench\":\"modifiers\",\"variant\":\"\(variant.name)\",\"softcap\":\(variant.cap),\"sinks\":\(variant.sinks),\"dtype\":\"\(dtype)\",\"compute\":\"\(compute)\",\"products\":\"\(plans[i].config.products == .bf16 ? "bf16-" + LocalAttention.bf16ProductPath : "fp32")\",\"batch\":\(batch),\"heads\":\(heads),\"heads_kv\":\(headsKv ?? heads),\"seq_len\":\(seqLen),\"head_dim\":\(headDim),\"causal\":\(causal),\"threads\":\(threads),\"runs\":\(both[i].count),\"fwd_median_s\":\(f),\"fwdbwd_median_s\":\(b),\"fwd_ratio_to_plain\":\(f / plainForward),\"fwdbwd_ratio_to_plain\":\(b / plainBoth),\"code_path\":\"\(LocalAttention.codePath)\"}")
            fflush(stdout)
        }
    }
}
