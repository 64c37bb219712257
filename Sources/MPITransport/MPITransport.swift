#if canImport(Glibc)
import Glibc
#endif
import CMPI
import GlobalAttention

/// `Transport` over an MPI communicator that this object owns (a duplicate
/// with MPI_ERRORS_RETURN, so an MPI failure comes back as a code instead of
/// aborting the job). Every wait is a test loop with a deadline: a peer that
/// never arrives becomes BURST_ERROR_TIMEOUT, never a hang.
///
/// Only the thread that calls the library calls MPI; compute threads never do.
public final class MPITransport: Transport {
    public let rank: Int
    public let size: Int
    /// Every rank's node: the lowest rank of its MPI_COMM_TYPE_SHARED group.
    public let nodes: [Int]
    private var communicator: MPI_Comm?
    /// Fault injection for the tests: BURST_TEST_MPI_FAULT_RANK=r makes rank r
    /// address its first data message to a rank that does not exist, so MPI
    /// itself fails (MPI_ERR_RANK) and the error path runs for real.
    private var injectFault: Bool = {
        guard let text = getenv("BURST_TEST_MPI_FAULT_RANK"), let value = Int(String(cString: text)) else { return false }
        var r: Int32 = -1
        MPI_Comm_rank(cmpi_comm_world(), &r)
        return value == Int(r)
    }()

    /// Takes ownership of `communicator` (already a private duplicate).
    init(owning communicator: MPI_Comm, nodes: [Int]? = nil) throws {
        self.communicator = communicator
        var r: Int32 = 0, s: Int32 = 0
        try Self.check(MPI_Comm_rank(communicator, &r), "MPI_Comm_rank")
        try Self.check(MPI_Comm_size(communicator, &s), "MPI_Comm_size")
        rank = Int(r)
        size = Int(s)
        self.nodes = nodes ?? [Int](repeating: 0, count: Int(s))
    }

    deinit { close() }

    // MARK: Creating

    /// True between MPI_Init and MPI_Finalize.
    public static var isUsable: Bool {
        var initialized: Int32 = 0, finalized: Int32 = 0
        MPI_Initialized(&initialized)
        MPI_Finalized(&finalized)
        return initialized != 0 && finalized == 0
    }

    /// Whether MPI was initialised with MPI_THREAD_MULTIPLE.
    public static var threadMultiple: Bool {
        var provided: Int32 = 0
        MPI_Query_thread(&provided)
        return provided >= cmpi_thread_multiple()
    }

    /// Collective over the communicator named by a Fortran handle
    /// (burst_context_create_mpi). Returns the transport and the number of
    /// ranks of the group that share this node.
    public static func create(fortranHandle: Int64) throws -> (MPITransport, localRanks: Int) {
        guard isUsable else {
            throw BurstError(.invalidArgument, "MPI is not initialised (or already finalised): call MPI_Init before burst_context_create_mpi")
        }
        var user: MPI_Comm?
        switch cmpi_comm_from_fortran(fortranHandle, &user) {
        case 0: break
        case 1: throw BurstError(.invalidArgument, "communicator handle \(fortranHandle) does not fit MPI_Fint (pass MPI_Comm_c2f(comm) or comm.py2f())")
        case 2: throw BurstError(.invalidArgument, "communicator handle \(fortranHandle) is not a valid MPI communicator")
        default: throw BurstError(.invalidArgument, "communicator handle \(fortranHandle) is MPI_COMM_NULL")
        }
        var dup: MPI_Comm?
        try check(MPI_Comm_dup(user, &dup), "MPI_Comm_dup")
        try check(MPI_Comm_set_errhandler(dup, cmpi_errors_return()), "MPI_Comm_set_errhandler")
        var r: Int32 = 0, s: Int32 = 0
        try check(MPI_Comm_rank(dup, &r), "MPI_Comm_rank")
        try check(MPI_Comm_size(dup, &s), "MPI_Comm_size")
        // Nodes: each rank learns the lowest rank of its shared-memory group,
        // and every rank's (one allgather at creation).
        var shared: MPI_Comm?
        var leader: Int32 = r
        if MPI_Comm_split_type(dup, cmpi_comm_type_shared(), 0, cmpi_info_null(), &shared) == cmpi_success() {
            var mine = r
            MPI_Allreduce(&mine, &leader, 1, cmpi_int(), cmpi_min(), shared)
            MPI_Comm_free(&shared)
        }
        var leaders = [Int32](repeating: 0, count: Int(s))
        try check(MPI_Allgather(&leader, 1, cmpi_int(), &leaders, 1, cmpi_int(), dup), "MPI_Allgather")
        let nodes = leaders.map { Int($0) }
        let transport = try MPITransport(owning: dup!, nodes: nodes)
        let localRanks = nodes.filter { $0 == nodes[Int(r)] }.count
        return (transport, localRanks)
    }

    public func duplicate(deadline: Deadline) throws -> Transport {
        guard let communicator else { throw BurstError(.communication, "the communicator was already released") }
        var dup: MPI_Comm?
        var request: MPI_Request? = cmpi_request_null()
        try Self.check(MPI_Comm_idup(communicator, &dup, &request), "MPI_Comm_idup")
        var requests = [request]
        try waitAll(&requests, deadline: deadline, what: "duplicating the communicator")
        try Self.check(MPI_Comm_set_errhandler(dup, cmpi_errors_return()), "MPI_Comm_set_errhandler")
        return try MPITransport(owning: dup!, nodes: nodes)
    }

    // MARK: Communicating

    public func allgather(_ send: UnsafeRawBufferPointer, into receive: UnsafeMutableRawBufferPointer,
                          deadline: Deadline) throws {
        guard let communicator else { throw BurstError(.communication, "the communicator was already released") }
        var request: MPI_Request? = cmpi_request_null()
        try Self.check(MPI_Iallgather(send.baseAddress, Int32(send.count), cmpi_byte(),
                                      receive.baseAddress, Int32(send.count), cmpi_byte(),
                                      communicator, &request), "MPI_Iallgather")
        var requests = [request]
        try waitAll(&requests, deadline: deadline, what: "the agreement round (did every rank make the same call? a rank that died, hangs or runs late looks the same)")
    }

    public func start(sends: [OutgoingMessage], receives: [IncomingMessage]) throws -> PendingTransfer {
        guard let communicator else { throw BurstError(.communication, "the communicator was already released") }
        var requests: [MPI_Request?] = []
        requests.reserveCapacity(sends.count + receives.count)
        // MPI counts are int: messages are split into chunks below 2^31 bytes.
        let chunk = 1 << 30
        for message in receives {
            var offset = 0
            while offset < message.buffer.count {
                let length = min(chunk, message.buffer.count - offset)
                var request: MPI_Request? = cmpi_request_null()
                try Self.check(MPI_Irecv(message.buffer.baseAddress! + offset, Int32(length), cmpi_byte(),
                                         Int32(message.peer), message.tag, communicator, &request), "MPI_Irecv")
                requests.append(request)
                offset += length
            }
        }
        for message in sends {
            var offset = 0
            while offset < message.buffer.count {
                let length = min(chunk, message.buffer.count - offset)
                var request: MPI_Request? = cmpi_request_null()
                var peer = Int32(message.peer)
                if injectFault { injectFault = false; peer = Int32(size) }
                try Self.check(MPI_Isend(message.buffer.baseAddress! + offset, Int32(length), cmpi_byte(),
                                         peer, message.tag, communicator, &request), "MPI_Isend")
                requests.append(request)
                offset += length
            }
        }
        return MPIPending(transport: self, requests: requests)
    }

    /// Tests the requests until all complete or the deadline passes. Spins
    /// briefly, then yields, then sleeps in short naps so that ranks sharing
    /// a core still progress.
    fileprivate func waitAll(_ requests: inout [MPI_Request?], deadline: Deadline, what: String) throws {
        if requests.isEmpty { return }
        var backoff = WaitBackoff()
        while true {
            var done: Int32 = 0
            let code = requests.withUnsafeMutableBufferPointer {
                MPI_Testall(Int32($0.count), $0.baseAddress, &done, cmpi_statuses_ignore())
            }
            try Self.check(code, "MPI_Testall")
            if done != 0 { return }
            if deadline.hasPassed {
                throw BurstError(.timeout, "rank \(rank) timed out waiting for \(what); the plan (or, in a creation, the context) is now unusable")
            }
            backoff.pause()
        }
    }

    public func close() {
        guard communicator != nil else { return }
        if Self.isUsable { MPI_Comm_free(&communicator) }
        communicator = nil
    }

    static func check(_ code: Int32, _ call: String) throws {
        guard code != cmpi_success() else { return }
        var text = [CChar](repeating: 0, count: Int(cmpi_max_error_string()) + 1)
        var length: Int32 = 0
        MPI_Error_string(code, &text, &length)
        let message = String(decoding: text.prefix(Int(length)).map { UInt8(bitPattern: $0) }, as: UTF8.self)
        throw BurstError(.communication, "\(call) failed: \(message) (MPI error \(code))")
    }
}

private final class MPIPending: PendingTransfer {
    let transport: MPITransport
    var requests: [MPI_Request?]
    init(transport: MPITransport, requests: [MPI_Request?]) {
        self.transport = transport
        self.requests = requests
    }
    func wait(until deadline: Deadline) throws {
        try transport.waitAll(&requests, deadline: deadline, what: "a ring transfer")
        requests = []
    }

    /// One MPI_Testall: OpenMPI moves a large (rendezvous) message only
    /// inside MPI calls, so the ring calls this between tiles.
    func poll() throws {
        if requests.isEmpty { return }
        var done: Int32 = 0
        let code = requests.withUnsafeMutableBufferPointer {
            MPI_Testall(Int32($0.count), $0.baseAddress, &done, cmpi_statuses_ignore())
        }
        try MPITransport.check(code, "MPI_Testall")
        if done != 0 { requests = [] }
    }
}
