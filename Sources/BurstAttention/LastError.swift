#if canImport(Glibc)
import Glibc
#endif

/// burst_last_error(): one message buffer per thread, freed when the thread
/// exits. Messages longer than the buffer are cut on a UTF-8 boundary.
enum LastError {
    static let capacity = 1024

    private static let key: pthread_key_t = {
        var key = pthread_key_t()
        pthread_key_create(&key) { free($0) }
        return key
    }()

    static var buffer: UnsafeMutablePointer<CChar> {
        if let existing = pthread_getspecific(key) {
            return existing.assumingMemoryBound(to: CChar.self)
        }
        let fresh = calloc(capacity, 1)!.assumingMemoryBound(to: CChar.self)
        pthread_setspecific(key, fresh)
        return fresh
    }

    static func set(_ message: String) {
        let target = buffer
        var bytes = Array(message.utf8.prefix(capacity - 1))
        if bytes.count == capacity - 1 {
            while let last = bytes.last, last & 0xC0 == 0x80 { bytes.removeLast() }
            if let last = bytes.last, last >= 0xC0 { bytes.removeLast() }
        }
        for (i, byte) in bytes.enumerated() { target[i] = CChar(bitPattern: byte) }
        target[bytes.count] = 0
    }
}
