/// The control round that starts every collective call: each rank shares its
/// local outcome (and a few numbers), so that one rank's bad argument becomes
/// an error on every rank instead of a rank waiting forever for a peer that
/// has already returned.
///
/// Wire format (fixed size, native endianness — all ranks run this library):
/// status, operation and sequence, `payloadCount` Int64 values, then a
/// NUL-padded UTF-8 message.
enum Agreement {
    static let payloadCount = 24
    static let messageBytes = 400
    static let recordBytes = 4 + 4 + 8 + payloadCount * 8 + messageBytes

    enum Operation: Int32 {
        case planCreate = 1, forward = 2, backward = 3
        case cacheCreate = 4, cacheAdd = 5, cacheDrop = 6, cacheTruncate = 7, cachePrefill = 8, cacheDecode = 9
        var cName: String {
            switch self {
            case .planCreate: return "burst_plan_create"
            case .forward: return "burst_forward"
            case .backward: return "burst_backward"
            case .cacheCreate: return "burst_kv_cache_create"
            case .cacheAdd: return "burst_kv_cache_add"
            case .cacheDrop: return "burst_kv_cache_drop"
            case .cacheTruncate: return "burst_kv_cache_truncate"
            case .cachePrefill: return "burst_kv_cache_prefill"
            case .cacheDecode: return "burst_kv_cache_decode"
            }
        }
    }

    struct Record {
        var status: Int32
        var operation: Int32
        var sequence: UInt64
        var payload: [Int64]
        var message: String
    }

    static func encode(_ record: Record) -> [UInt8] {
        var bytes = [UInt8](repeating: 0, count: recordBytes)
        bytes.withUnsafeMutableBytes { raw in
            raw.storeBytes(of: record.status, toByteOffset: 0, as: Int32.self)
            raw.storeBytes(of: record.operation, toByteOffset: 4, as: Int32.self)
            raw.storeBytes(of: record.sequence, toByteOffset: 8, as: UInt64.self)
            for (i, value) in record.payload.prefix(payloadCount).enumerated() {
                raw.storeBytes(of: value, toByteOffset: 16 + 8 * i, as: Int64.self)
            }
            // Truncate on a UTF-8 boundary, keep a terminating NUL.
            var utf8 = Array(record.message.utf8.prefix(messageBytes - 1))
            while let last = utf8.last, last & 0xC0 == 0x80 { utf8.removeLast() }
            if let last = utf8.last, last >= 0xC0 { utf8.removeLast() }
            for (i, byte) in utf8.enumerated() { raw[16 + 8 * payloadCount + i] = byte }
        }
        return bytes
    }

    static func decode(_ raw: UnsafeRawBufferPointer) -> Record {
        let status = raw.loadUnaligned(fromByteOffset: 0, as: Int32.self)
        let operation = raw.loadUnaligned(fromByteOffset: 4, as: Int32.self)
        let sequence = raw.loadUnaligned(fromByteOffset: 8, as: UInt64.self)
        let payload = (0..<payloadCount).map { raw.loadUnaligned(fromByteOffset: 16 + 8 * $0, as: Int64.self) }
        let text = raw[(16 + 8 * payloadCount)...].prefix { $0 != 0 }
        return Record(status: status, operation: operation, sequence: sequence, payload: payload,
                      message: String(decoding: text, as: UTF8.self))
    }

    /// Collective. Returns every rank's payload (in rank order) when all
    /// ranks succeeded locally and made the same call; otherwise throws on
    /// every rank: this rank's own error first, else the lowest failing rank's
    /// status with its message. Transport failures (timeout, MPI error)
    /// propagate as thrown.
    static func agree(_ transport: Transport, operation: Operation, sequence: UInt64,
                      localError: BurstError?, payload: [Int64], deadline: Deadline) throws -> [[Int64]] {
        let mine = encode(Record(status: localError?.status.rawValue ?? 0, operation: operation.rawValue,
                                 sequence: sequence, payload: payload, message: localError?.message ?? ""))
        var all = [UInt8](repeating: 0, count: recordBytes * transport.size)
        try mine.withUnsafeBytes { send in
            try all.withUnsafeMutableBytes { receive in
                try transport.allgather(send, into: receive, deadline: deadline)
            }
        }
        let records = all.withUnsafeBytes { raw in
            (0..<transport.size).map { decode(UnsafeRawBufferPointer(rebasing: raw[($0 * recordBytes)..<(($0 + 1) * recordBytes)])) }
        }
        if let localError { throw localError }
        let me = transport.rank
        for (peer, record) in records.enumerated() where record.operation != operation.rawValue || record.sequence != sequence {
            let theirs = Operation(rawValue: record.operation)?.cName ?? "an unknown call"
            throw BurstError(.mismatch,
                             "ranks made different collective calls: rank \(me) called \(operation.cName) (call #\(sequence)) while rank \(peer) called \(theirs) (call #\(record.sequence))")
        }
        for (peer, record) in records.enumerated() where record.status != 0 {
            let status = Status(rawValue: record.status) ?? .internalError
            throw BurstError(status, "rank \(peer) failed: \(record.message)")
        }
        return records.map(\.payload)
    }
}
