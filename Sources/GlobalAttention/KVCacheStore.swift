#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif
import LocalAttention

/// One block of a rank's KV cache: `capacity` token slots of every key/value
/// head of one (sequence, layer), in the storage type:
/// keys transposed, per head `[tiles][headDim][keyTile]` (slot j in tile
/// j / keyTile, column j % keyTile; fp32 has one tile of `capacity`, see
/// `DecodeKernel.keyTile`), values per head `[capacity][headDim]`, then each
/// slot's position (Int). One allocation, zero-filled (unfilled slots are
/// read as whole tiles, so they must be defined bytes).
final class KVBlock {
    let raw: UnsafeMutableRawPointer
    let bytes: Int
    let capacity: Int
    var count = 0
    let kvHeads: Int, headDim: Int, elementBytes: Int, keyTile: Int
    /// Bytes of one head's keys / values.
    let keyHeadBytes: Int, valueHeadBytes: Int

    static func layout(kvHeads: Int, headDim: Int, capacity: Int, elementBytes: Int, keyTile: Int) -> (keys: Int, values: Int, total: Int) {
        let tiles = (capacity + keyTile - 1) / keyTile
        let keys = tiles * keyTile * headDim * elementBytes, values = capacity * headDim * elementBytes
        return (keys, values, kvHeads * (keys + values) + capacity * MemoryLayout<Int>.stride)
    }

    /// nil when the memory cannot be had.
    init?(kvHeads: Int, headDim: Int, capacity: Int, elementBytes: Int, keyTile: Int) {
        let layout = Self.layout(kvHeads: kvHeads, headDim: headDim, capacity: capacity, elementBytes: elementBytes, keyTile: keyTile)
        guard let raw = calloc(1, layout.total) else { return nil }
        self.raw = raw
        bytes = layout.total
        self.capacity = capacity
        self.kvHeads = kvHeads
        self.headDim = headDim
        self.elementBytes = elementBytes
        self.keyTile = keyTile
        keyHeadBytes = layout.keys
        valueHeadBytes = layout.values
    }

    deinit { free(raw) }

    /// Kᵀ of head h: `[tiles][headDim][keyTile]`.
    func keys(head h: Int) -> UnsafeMutableRawPointer { raw + h * keyHeadBytes }
    /// V of head h: `[capacity][headDim]`.
    func values(head h: Int) -> UnsafeMutableRawPointer { raw + kvHeads * keyHeadBytes + h * valueHeadBytes }
    var positions: UnsafeMutablePointer<Int> {
        (raw + kvHeads * (keyHeadBytes + valueHeadBytes)).assumingMemoryBound(to: Int.self)
    }
    var firstPosition: Int { positions[0] }
    var lastPosition: Int { positions[count - 1] }

    /// Stores one token in the next slot: its key and value rows of every head
    /// (`key(h)` / `value(h)` give head h's `headDim` elements, storage type).
    func append(position: Int, key: (Int) -> UnsafeRawPointer, value: (Int) -> UnsafeRawPointer) {
        let slot = count, e = elementBytes, d = headDim
        // Element c of the key goes to row c of its tile, column slot % keyTile.
        let first = (slot / keyTile) * keyTile * d + slot % keyTile
        for h in 0..<kvHeads {
            let kt = keys(head: h), src = key(h)
            if e == 4 {
                let s = src.assumingMemoryBound(to: Float.self), t = kt.assumingMemoryBound(to: Float.self) + first
                for c in 0..<d { t[c * keyTile] = s[c] }
            } else {
                let s = src.assumingMemoryBound(to: UInt16.self), t = kt.assumingMemoryBound(to: UInt16.self) + first
                for c in 0..<d { t[c * keyTile] = s[c] }
            }
            (values(head: h) + slot * d * e).copyMemory(from: value(h), byteCount: d * e)
        }
        positions[slot] = position
        count += 1
    }
}

/// This rank's shard of one sequence in one layer: its blocks (positions
/// increasing across them) and the sequence's length in the layer — the next
/// position, the same on every rank.
struct LayerShard {
    var blocks: [KVBlock] = []
    var length = 0
    var localTokens: Int { blocks.reduce(0) { $0 + $1.count } }
    /// Free slots in the last block.
    var spare: Int { blocks.last.map { $0.capacity - $0.count } ?? 0 }
}

/// A rank's KV cache storage: sequence id → layers → blocks. Knows nothing
/// of ranks or communication; the `KVCache` decides what is stored where.
///
/// Every store runs in two steps, so a failure leaves the cache unchanged:
/// `reserve` allocates every block the store needs (or fails, having
/// allocated nothing that stays), and `commit` writes the tokens into the
/// reserved blocks. Between the two the caller agrees with its peers.
final class KVCacheStore {
    let layers: Int, kvHeads: Int, headDim: Int, blockTokens: Int
    let storage: StorageType
    /// 0 = no limit but memory.
    let maxBytes: Int
    private(set) var sequences: [Int64: [LayerShard]] = [:]
    private(set) var bytes = 0

    init(layers: Int, kvHeads: Int, headDim: Int, blockTokens: Int, storage: StorageType, maxBytes: Int) {
        self.layers = layers
        self.kvHeads = kvHeads
        self.headDim = headDim
        self.blockTokens = blockTokens
        self.storage = storage
        self.maxBytes = maxBytes
    }

    var keyTile: Int { DecodeKernel.keyTile(headDim: headDim, blockTokens: blockTokens, storage: storage) }
    var blockBytes: Int {
        KVBlock.layout(kvHeads: kvHeads, headDim: headDim, capacity: blockTokens, elementBytes: storage.bytes, keyTile: keyTile).total
    }

    func contains(_ id: Int64) -> Bool { sequences[id] != nil }
    func shard(_ id: Int64, layer: Int) -> LayerShard? { sequences[id]?[layer] }

    func add(_ ids: [Int64]) {
        for id in ids { sequences[id] = Array(repeating: LayerShard(), count: layers) }
    }

    func drop(_ ids: [Int64]) {
        for id in ids {
            guard let shards = sequences.removeValue(forKey: id) else { continue }
            for shard in shards { bytes -= shard.blocks.reduce(0) { $0 + $1.bytes } }
        }
    }

    /// Keeps the tokens at positions < `length` in every layer of `id`.
    func truncate(_ id: Int64, to length: Int) {
        guard var shards = sequences[id] else { return }
        for l in 0..<layers {
            var shard = shards[l]
            while let last = shard.blocks.last, last.count > 0, last.lastPosition >= length {
                // Positions increase along the block: cut at the first one ≥ length.
                var keep = last.count
                while keep > 0 && last.positions[keep - 1] >= length { keep -= 1 }
                if keep == 0 {
                    bytes -= last.bytes
                    shard.blocks.removeLast()
                } else {
                    last.count = keep
                }
            }
            shard.length = min(shard.length, length)
            shards[l] = shard
        }
        sequences[id] = shards
    }

    /// Blocks allocated for a store that has not been committed yet.
    struct Reservation {
        /// Per (sequence, layer) target: the new blocks, in order.
        var blocks: [Int64: [KVBlock]] = [:]
        var bytes = 0
    }

    /// Allocates the blocks that `tokens[id]` more tokens need in `layer` of
    /// each sequence. Throws OUT_OF_MEMORY (nothing kept) when the limit
    /// would be passed or memory runs out.
    func reserve(layer: Int, tokens: [(id: Int64, count: Int)]) throws -> Reservation {
        var needed: [(Int64, Int)] = []
        var newBytes = 0
        for (id, count) in tokens where count > 0 {
            let spare = sequences[id]?[layer].spare ?? 0
            let blocks = count > spare ? (count - spare + blockTokens - 1) / blockTokens : 0
            if blocks > 0 {
                needed.append((id, blocks))
                newBytes += blocks * blockBytes
            }
        }
        if maxBytes > 0 && bytes + newBytes > maxBytes {
            throw BurstError(.outOfMemory, "the cache would hold \(bytes + newBytes) bytes on this rank, past its max_bytes_local of \(maxBytes) (\(bytes) in use, \(newBytes) more needed)")
        }
        var reservation = Reservation()
        for (id, count) in needed {
            var list: [KVBlock] = []
            for _ in 0..<count {
                guard let block = KVBlock(kvHeads: kvHeads, headDim: headDim, capacity: blockTokens, elementBytes: storage.bytes,
                                          keyTile: keyTile) else {
                    throw BurstError(.outOfMemory, "cannot allocate \(blockBytes) bytes for a cache block (\(bytes + reservation.bytes) bytes held on this rank)")
                }
                list.append(block)
                reservation.bytes += block.bytes
            }
            reservation.blocks[id] = list
        }
        return reservation
    }

    /// Writes tokens into `layer` of sequence `id`, using the reserved blocks
    /// once the last block is full. `rows` tokens, row i at `position(i)`
    /// (increasing, past every stored position), its key and value rows of
    /// head h at `key(i, h)` / `value(i, h)`.
    func commit(_ reservation: inout Reservation, id: Int64, layer: Int, rows: Int, position: (Int) -> Int,
                key: (Int, Int) -> UnsafeRawPointer, value: (Int, Int) -> UnsafeRawPointer) {
        guard rows > 0, var shards = sequences[id] else { return }
        var shard = shards[layer]
        for i in 0..<rows {
            if shard.spare == 0 {
                let block = reservation.blocks[id]!.removeFirst()
                bytes += block.bytes
                reservation.bytes -= block.bytes
                shard.blocks.append(block)
            }
            shard.blocks.last!.append(position: position(i), key: { key(i, $0) }, value: { value(i, $0) })
        }
        shards[layer] = shard
        sequences[id] = shards
    }

    /// Sets a sequence's length in a layer (the next position).
    func setLength(_ id: Int64, layer: Int, _ length: Int) {
        sequences[id]?[layer].length = length
    }
}
