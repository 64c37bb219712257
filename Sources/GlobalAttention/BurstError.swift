/// Status codes; raw values are the C ABI's `burst_status` values.
public enum Status: Int32, Sendable {
    case ok = 0
    case invalidArgument = 1
    case unsupported = 2
    case outOfMemory = 3
    case mismatch = 4
    case communication = 5
    case internalError = 6
    case version = 7
    case timeout = 8
    case busy = 9

    public var name: String {
        switch self {
        case .ok: return "BURST_OK"
        case .invalidArgument: return "BURST_ERROR_INVALID_ARGUMENT"
        case .unsupported: return "BURST_ERROR_UNSUPPORTED"
        case .outOfMemory: return "BURST_ERROR_OUT_OF_MEMORY"
        case .mismatch: return "BURST_ERROR_MISMATCH"
        case .communication: return "BURST_ERROR_COMMUNICATION"
        case .internalError: return "BURST_ERROR_INTERNAL"
        case .version: return "BURST_ERROR_VERSION"
        case .timeout: return "BURST_ERROR_TIMEOUT"
        case .busy: return "BURST_ERROR_BUSY"
        }
    }
}

/// The one error type of the library: a status and a message for the user.
public struct BurstError: Error, CustomStringConvertible, Sendable {
    public var status: Status
    public var message: String

    public init(_ status: Status, _ message: String) {
        self.status = status
        self.message = message
    }

    public var description: String { "\(status.name): \(message)" }

    /// True for the failures after which a plan must not be used again.
    public var poisonsPlan: Bool { status == .timeout || status == .communication }
}
