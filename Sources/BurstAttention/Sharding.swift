import CBurstABI
import GlobalAttention

// The token distribution helpers of the C ABI (burst_shard_positions,
// burst_shard, burst_unshard): local, thread-safe, no context. They use the
// same `TokenDistribution` rules as the plans.

/// Reads and checks the arguments every helper shares.
private func distribution(_ kind: Int32, _ total: Int64, _ offsets: UnsafePointer<Int64>?, _ sequences: Int64,
                          _ worldSize: Int32, _ rank: Int32) throws -> TokenDistribution {
    func bad(_ message: String) -> BurstError { BurstError(.invalidArgument, message) }
    guard let kindValue = AttentionConfig.Distribution(rawValue: kind) else {
        throw bad("distribution: unknown value \(kind) (0..2)")
    }
    guard worldSize > 0 else { throw bad("world_size must be positive (got \(worldSize))") }
    guard rank >= 0 && rank < worldSize else { throw bad("rank must be in 0..<world_size = \(worldSize) (got \(rank))") }
    guard total >= 0, total <= 1 << 46 else { throw bad("total_tokens must be in 0...2^46 (got \(total))") }
    var cu: [Int]? = nil
    if let offsets {
        guard sequences > 0, sequences < 1 << 32 else {
            throw bad("cu_seqlens is set but num_sequences is \(sequences) (it must be positive)")
        }
        let values = Array(UnsafeBufferPointer(start: offsets, count: Int(sequences) + 1))
        guard values[0] == 0 else { throw bad("cu_seqlens[0] must be 0 (got \(values[0]))") }
        for s in 1..<values.count where values[s] < values[s - 1] {
            throw bad("cu_seqlens must not decrease: cu_seqlens[\(s)] = \(values[s]) < cu_seqlens[\(s - 1)] = \(values[s - 1])")
        }
        guard values.last! == total else {
            throw bad("cu_seqlens[num_sequences] = \(values.last!) must equal total_tokens = \(total)")
        }
        cu = values.map { Int($0) }
    } else if sequences != 0 {
        throw bad("num_sequences is \(sequences) but cu_seqlens is NULL")
    }
    return TokenDistribution(kind: kindValue, total: Int(total), ranks: Int(worldSize), sequenceOffsets: cu)
}

@c(burst_shard_positions)
public func _burst_shard_positions(_ kind: Int32, _ total: Int64, _ offsets: UnsafePointer<Int64>?, _ sequences: Int64,
                                   _ worldSize: Int32, _ rank: Int32,
                                   _ positions: UnsafeMutablePointer<Int64>?, _ capacity: Int64,
                                   _ count: UnsafeMutablePointer<Int64>?) -> burst_status {
    guardedCall {
        guard let count else { throw BurstError(.invalidArgument, "count is NULL") }
        let rule = try distribution(kind, total, offsets, sequences, worldSize, rank)
        let n = rule.count(rank: Int(rank))
        count.pointee = Int64(n)
        if positions == nil && capacity == 0 { return }
        guard let positions else { throw BurstError(.invalidArgument, "positions is NULL but capacity is \(capacity)") }
        guard capacity >= n else {
            throw BurstError(.invalidArgument, "capacity \(capacity) is below the \(n) positions rank \(rank) holds")
        }
        for (i, position) in rule.positions(rank: Int(rank)).enumerated() { positions[i] = Int64(position) }
    }
}

/// Shared by burst_shard and burst_unshard: checks sizes, then copies every
/// row of rank `rank` between the full buffer and the local one.
private func copyRows(_ kind: Int32, _ total: Int64, _ offsets: UnsafePointer<Int64>?, _ sequences: Int64,
                      _ worldSize: Int32, _ rank: Int32, _ outer: Int64, _ rowBytes: Int64,
                      full: UnsafeRawPointer?, local: UnsafeRawPointer?, toLocal: Bool) throws {
    func bad(_ message: String) -> BurstError { BurstError(.invalidArgument, message) }
    let rule = try distribution(kind, total, offsets, sequences, worldSize, rank)
    guard outer >= 0 else { throw bad("outer must be >= 0 (got \(outer))") }
    guard rowBytes >= 0 else { throw bad("row_bytes must be >= 0 (got \(rowBytes))") }
    let (rows, o1) = outer.multipliedReportingOverflow(by: total)
    let (bytes, o2) = rows.multipliedReportingOverflow(by: rowBytes)
    guard !o1, !o2, bytes <= 1 << 60 else { throw bad("outer · total_tokens · row_bytes overflows") }
    let n = rule.count(rank: Int(rank))
    if bytes == 0 || n == 0 { return }
    guard let full else { throw bad("full is NULL") }
    guard let local else { throw bad("local is NULL") }
    let fullEnd = full + Int(bytes), localEnd = local + Int(outer) * n * Int(rowBytes)
    guard fullEnd <= local || localEnd <= full else { throw bad("full and local overlap") }
    let positions = rule.positions(rank: Int(rank))
    let width = Int(rowBytes), count = Int(total)
    for block in 0..<Int(outer) {
        let fullBlock = full + block * count * width, localBlock = local + block * n * width
        for (i, position) in positions.enumerated() {
            let a = fullBlock + position * width, b = localBlock + i * width
            if toLocal {
                UnsafeMutableRawPointer(mutating: b).copyMemory(from: a, byteCount: width)
            } else {
                UnsafeMutableRawPointer(mutating: a).copyMemory(from: b, byteCount: width)
            }
        }
    }
}

@c(burst_shard)
public func _burst_shard(_ kind: Int32, _ total: Int64, _ offsets: UnsafePointer<Int64>?, _ sequences: Int64,
                         _ worldSize: Int32, _ rank: Int32, _ outer: Int64, _ rowBytes: Int64,
                         _ full: UnsafeRawPointer?, _ local: UnsafeMutableRawPointer?) -> burst_status {
    guardedCall {
        try copyRows(kind, total, offsets, sequences, worldSize, rank, outer, rowBytes,
                     full: full, local: local.map { UnsafeRawPointer($0) }, toLocal: true)
    }
}

@c(burst_unshard)
public func _burst_unshard(_ kind: Int32, _ total: Int64, _ offsets: UnsafePointer<Int64>?, _ sequences: Int64,
                           _ worldSize: Int32, _ rank: Int32, _ outer: Int64, _ rowBytes: Int64,
                           _ local: UnsafeRawPointer?, _ full: UnsafeMutableRawPointer?) -> burst_status {
    guardedCall {
        try copyRows(kind, total, offsets, sequences, worldSize, rank, outer, rowBytes,
                     full: full.map { UnsafeRawPointer($0) }, local: local, toLocal: false)
    }
}
