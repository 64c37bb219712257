#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif
import CPrefetch

/// A fixed set of compute threads that run `parallelFor` loops.
///
/// The calling thread takes part in every loop, so a pool of `threadCount`
/// runs on `threadCount - 1` background threads plus the caller; a pool of 1
/// runs everything inline. Tasks are handed out one at a time from a shared
/// counter, so coarse tasks (a head, a tile row) balance across threads.
/// Results never depend on which thread ran a task: each task writes its own
/// outputs and reduces in a fixed order.
///
/// Workers never call MPI; only the caller's thread does (see DESIGN §2).
/// One loop runs at a time per pool; a pool belongs to one plan or context
/// driven by one thread at a time.
public final class WorkerPool {
    public let threadCount: Int
    private let shared: PoolState
    private var threads: [pthread_t] = []

    /// - Parameter threadCount: total threads including the caller (clamped to 1...256).
    public init(threadCount: Int) {
        self.threadCount = max(1, min(threadCount, 256))
        shared = PoolState()
        // More threads than CPUs: a spinning worker would take a CPU another
        // thread needs (the fuzzer's 3 ranks × 256 threads took 6 s a call).
        // Set before any worker starts (they read it without the mutex).
        shared.spins = self.threadCount <= Int(sysconf(Int32(_SC_NPROCESSORS_ONLN)))
        for worker in 1..<self.threadCount {
            // Each thread owns a reference to the shared state (never to the
            // pool), so the pool can go away whatever the threads are doing.
            let context = Unmanaged.passRetained(WorkerStart(state: shared, worker: worker)).toOpaque()
            var thread = pthread_t()
            if pthread_create(&thread, nil, workerEntry, context) == 0 {
                threads.append(thread)
            } else {
                Unmanaged<WorkerStart>.fromOpaque(context).release()
                break  // run with fewer threads rather than fail
            }
        }
        shared.workerCount = threads.count
    }

    deinit {
        shared.shutDown()
        for thread in threads { pthread_join(thread, nil) }
    }

    /// Runs `body(task, worker)` for every task in `0..<count`, spread over the
    /// pool's threads; returns when all tasks are done. `worker` is in
    /// `0..<threadCount` and identifies per-thread scratch space.
    public func parallelFor(_ count: Int, _ body: (_ task: Int, _ worker: Int) -> Void) {
        if count <= 0 { return }
        if threads.isEmpty || count == 1 {
            for task in 0..<count { body(task, 0) }
            return
        }
        withoutActuallyEscaping(body) { escapable in
            shared.run(count, escapable)
        }
    }
}

/// The synchronisation a pool shares with its threads.
private final class PoolState {
    private let mutex: UnsafeMutablePointer<pthread_mutex_t>
    private let wake: UnsafeMutablePointer<pthread_cond_t>
    private let finished: UnsafeMutablePointer<pthread_cond_t>
    private var generation = 0
    /// `generation`, published with release order for workers that spin
    /// (read with acquire order outside the mutex).
    private let published: UnsafeMutablePointer<Int>
    private var job: ((Int, Int) -> Void)?
    private var taskCount = 0
    private var nextTask = 0
    private var workersBusy = 0
    private var shuttingDown = false
    var workerCount = 0
    /// Whether idle workers spin before blocking (set once, before the
    /// workers start).
    var spins = true

    init() {
        mutex = .allocate(capacity: 1)
        published = .allocate(capacity: 1)
        published.initialize(to: 0)
        wake = .allocate(capacity: 1)
        finished = .allocate(capacity: 1)
        pthread_mutex_init(mutex, nil)
        pthread_cond_init(wake, nil)
        pthread_cond_init(finished, nil)
    }

    deinit {
        pthread_cond_destroy(wake)
        pthread_cond_destroy(finished)
        pthread_mutex_destroy(mutex)
        wake.deallocate()
        finished.deallocate()
        mutex.deallocate()
        published.deallocate()
    }

    func shutDown() {
        pthread_mutex_lock(mutex)
        shuttingDown = true
        pthread_cond_broadcast(wake)
        pthread_mutex_unlock(mutex)
    }

    /// One parallel loop: publish the job, take part, wait for every worker.
    /// Task 0 is kept for the caller, so the calling thread always runs at
    /// least one task: otherwise woken workers can take every task before the
    /// caller claims one, and whatever the caller does between its tiles
    /// (LocalAttention's progress hook: the ring's MPI polling) does not
    /// happen in that loop.
    func run(_ count: Int, _ body: @escaping (Int, Int) -> Void) {
        pthread_mutex_lock(mutex)
        job = body
        taskCount = count
        nextTask = 1
        workersBusy = workerCount
        generation &+= 1
        burst_store_release(published, generation)
        pthread_cond_broadcast(wake)
        pthread_mutex_unlock(mutex)

        body(0, 0)
        runTasks(worker: 0, job: body)

        pthread_mutex_lock(mutex)
        while workersBusy > 0 { pthread_cond_wait(finished, mutex) }
        job = nil
        pthread_mutex_unlock(mutex)
    }

    private func claimTask() -> Int {
        pthread_mutex_lock(mutex)
        let task = nextTask
        nextTask += 1
        pthread_mutex_unlock(mutex)
        return task
    }

    private func runTasks(worker: Int, job: (Int, Int) -> Void) {
        while true {
            let task = claimTask()
            if task >= taskCount { return }
            job(task, worker)
        }
    }

    func workerLoop(worker: Int) {
        var seen = 0
        while true {
            spin(past: seen)
            pthread_mutex_lock(mutex)
            while generation == seen && !shuttingDown { pthread_cond_wait(wake, mutex) }
            if shuttingDown { pthread_mutex_unlock(mutex); return }
            seen = generation
            pthread_mutex_unlock(mutex)

            runCurrentJob(worker: worker)

            pthread_mutex_lock(mutex)
            workersBusy -= 1
            if workersBusy == 0 { pthread_cond_signal(finished) }
            pthread_mutex_unlock(mutex)
        }
    }

    /// Not inlined so that the worker's reference to the (non-escaping) job
    /// is gone before it reports back; `parallelFor` checks that on return.
    /// Spins up to `spinNanoseconds` for the next job before the worker
    /// blocks: the parallel loops of one call (packing, panels, tiles,
    /// finishing) follow each other within microseconds, and waking a thread
    /// that went to sleep costs far more on a VM whose idle vCPU halted
    /// (measured: a 1K-token one-head forward on 2 threads ran at the
    /// 1-thread time, median 2.7 ms, best 1.6 ms; spinning: median 1.5 ms).
    /// OpenMP runtimes spin the same way (KMP_BLOCKTIME, GOMP_SPINCOUNT).
    /// Not at all when the pool has more threads than the machine has CPUs,
    /// and yielding between rounds of polls.
    private func spin(past seen: Int) {
        if Self.spinNanoseconds == 0 || !spins { return }
        var start = timespec()
        clock_gettime(CLOCK_MONOTONIC, &start)
        while true {
            for _ in 0..<64 {
                if burst_load_acquire(published) != seen { return }
                burst_cpu_relax()
            }
            // Other threads runnable here (ranks in one process, a caller's
            // own threads) get the CPU first.
            sched_yield()
            var now = timespec()
            clock_gettime(CLOCK_MONOTONIC, &now)
            let elapsed = (now.tv_sec - start.tv_sec) * 1_000_000_000 + (now.tv_nsec - start.tv_nsec)
            if elapsed > Self.spinNanoseconds { return }
        }
    }

    /// 2 ms by default, `BURST_SPIN_US` microseconds if set (0: block at
    /// once). The gap between two calls of a tight loop (a benchmark, a
    /// decode loop) is often longer than 200 µs, which still paid the wake;
    /// 2 ms keeps the second thread hot across it and costs a caller that
    /// does other work between calls at most 2 ms of one core per call.
    static let spinNanoseconds: Int = {
        if let value = getenv("BURST_SPIN_US"), let us = Int(String(cString: value)), us >= 0 { return us * 1000 }
        return 2_000_000
    }()

    @inline(never)
    private func runCurrentJob(worker: Int) {
        pthread_mutex_lock(mutex)
        let current = job
        pthread_mutex_unlock(mutex)
        if let current { runTasks(worker: worker, job: current) }
    }
}

private final class WorkerStart {
    let state: PoolState
    let worker: Int
    init(state: PoolState, worker: Int) { self.state = state; self.worker = worker }
}

private func workerEntry(_ context: UnsafeMutableRawPointer?) -> UnsafeMutableRawPointer? {
    let start = Unmanaged<WorkerStart>.fromOpaque(context!).takeRetainedValue()
    start.state.workerLoop(worker: start.worker)
    return nil
}

/// CPUs this process may run on (its affinity mask, as mpirun's binding sets
/// it), at least 1. Read from /proc/self/status: Glibc's module does not
/// export sched_getaffinity (it needs _GNU_SOURCE).
public func availableCPUCount() -> Int {
    let online = max(1, Int(sysconf(Int32(_SC_NPROCESSORS_ONLN))))
    guard let file = fopen("/proc/self/status", "r") else { return online }
    defer { fclose(file) }
    var line: UnsafeMutablePointer<CChar>?
    var capacity = 0
    defer { free(line) }
    while getline(&line, &capacity, file) > 0, let line {
        let text = String(cString: line)
        guard text.hasPrefix("Cpus_allowed:") else { continue }
        var count = 0
        for character in text.dropFirst("Cpus_allowed:".count) {
            if let nibble = character.hexDigitValue { count += nibble.nonzeroBitCount }
        }
        return count > 0 ? count : online
    }
    return online
}
