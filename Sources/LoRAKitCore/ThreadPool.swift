#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif
import Synchronization

/// A persistent pool of worker threads. `run` hands one job to `threadCount` participants (the calling
/// thread is participant 0) and returns when all are done. Threads are created once; between jobs they
/// spin briefly (decode issues hundreds of small jobs per token) and then sleep on a condition variable.
///
/// Kernels receive `(index, count)` and take a contiguous range of the work with `partition`.
/// A pool is meant to be used by one thread at a time (a context owns its pool). If a second thread calls
/// `run` while a job is in flight, that call runs all of its parts on its own thread instead of waiting.
/// `run` must not be called from inside a job of the same pool (nested calls run serially too).
public final class ThreadPool: @unchecked Sendable {
    public let threadCount: Int
    /// State shared with the workers. Workers retain the core, never the pool, so releasing the pool
    /// runs its deinit, which stops and joins the workers.
    private let core: PoolCore
    private var workers: [pthread_t] = []

    /// The number of online CPUs.
    public static var hardwareConcurrency: Int {
        let n = sysconf(Int32(_SC_NPROCESSORS_ONLN))
        return n > 0 ? n : 1
    }

    /// A pool shared by code that has no context (tests, the CLI's bench); sized to the CPU count.
    public static let shared: ThreadPool = ThreadPool(threads: hardwareConcurrency)

    /// Create a pool with `threads` participants (1 = run everything on the calling thread).
    public init(threads: Int) {
        threadCount = max(1, min(threads, 512))
        core = PoolCore()
        for i in 1..<threadCount {
            let box = Unmanaged.passRetained(WorkerArg(core: core, index: i))
            var t = pthread_t()
            let rc = pthread_create(&t, nil, { raw in
                #if canImport(Darwin)
                let arg = Unmanaged<WorkerArg>.fromOpaque(raw).takeRetainedValue()
                #else
                let arg = Unmanaged<WorkerArg>.fromOpaque(raw!).takeRetainedValue()
                #endif
                arg.core.workerLoop(index: arg.index)
                return nil
            }, box.toOpaque())
            if rc != 0 {
                box.release()
                break
            }
            workers.append(t)
        }
        core.workerCount = workers.count
    }

    deinit {
        core.shutdown()
        for t in workers { pthread_join(t, nil) }
    }

    private final class WorkerArg {
        let core: PoolCore
        let index: Int
        init(core: PoolCore, index: Int) { self.core = core; self.index = index }
    }

    /// A 64-byte aligned scratch buffer of at least `bytes` bytes private to the calling OS thread (so
    /// it is private to the participant running on it). Valid until the next `scratch` call on the same
    /// thread; contents are not preserved. `index` is accepted for readability at call sites.
    /// Allocation failure is fatal (the sizes asked for are small, bounded by the blocking parameters).
    public func scratch(_ index: Int, bytes: Int) -> UnsafeMutableRawPointer {
        ThreadScratch.get(bytes: bytes)
    }

    /// Jobs handed to the workers so far (`run` calls with more than one participant that woke them;
    /// inline runs are not counted): what a profile multiplies by the cost of one hand-out.
    public var handOutCount: Int { core.handOuts.load(ordering: .relaxed) }

    /// Participants actually available (threads that failed to start are not counted).
    public var activeCount: Int { workers.count + 1 }

    /// Run `body(index, count)` for every index in `0..<count` where `count = min(activeCount, maxTasks)`,
    /// in parallel, and wait for all. With `maxTasks` = 1 (or a 1-thread pool) the body runs inline.
    @inline(never)
    public func run(maxTasks: Int = Int.max, _ body: (Int, Int) -> Void) {
        let n = min(activeCount, max(1, maxTasks))
        if n == 1 {
            body(0, 1)
            return
        }
        core.run(n, body)
    }
}

/// The synchronisation state of a pool, shared by its caller and its workers.
final class PoolCore: @unchecked Sendable {
    private let generation = Atomic<UInt64>(0)
    private let remaining = Atomic<Int>(0)
    private let sleepers = Atomic<Int>(0)
    private let busy = Atomic<Bool>(false)
    let handOuts = Atomic<Int>(0)
    private let stopping = Atomic<Bool>(false)
    private let mutex: UnsafeMutablePointer<pthread_mutex_t>
    private let cond: UnsafeMutablePointer<pthread_cond_t>
    var workerCount = 0
    // The current job; valid only while a `run` is in flight.
    private var job: ((Int, Int) -> Void)? = nil

    /// Spin iterations before a worker sleeps (≈ tens of microseconds).
    private static let spinLimit = 20_000

    init() {
        mutex = .allocate(capacity: 1)
        mutex.initialize(to: pthread_mutex_t())
        pthread_mutex_init(mutex, nil)
        cond = .allocate(capacity: 1)
        cond.initialize(to: pthread_cond_t())
        pthread_cond_init(cond, nil)
    }

    deinit {
        pthread_cond_destroy(cond)
        pthread_mutex_destroy(mutex)
        cond.deallocate()
        mutex.deallocate()
    }

    func shutdown() {
        pthread_mutex_lock(mutex)
        stopping.store(true, ordering: .sequentiallyConsistent)
        generation.add(1, ordering: .sequentiallyConsistent)
        pthread_cond_broadcast(cond)
        pthread_mutex_unlock(mutex)
    }

    func run(_ n: Int, _ body: (Int, Int) -> Void) {
        // If another thread is already running a job on this pool (two C callers sharing the default
        // pool), run all `n` parts on this thread: same partition, same results, no data race.
        guard busy.compareExchange(expected: false, desired: true, ordering: .acquiring).exchanged else {
            for i in 0..<n { body(i, n) }
            return
        }
        defer { busy.store(false, ordering: .releasing) }
        handOuts.add(1, ordering: .relaxed)
        withoutActuallyEscaping(body) { escaping in
            let used = n
            job = { i, _ in if i < used { escaping(i, used) } }
            remaining.store(workerCount, ordering: .relaxed)
            // Sequentially consistent store/load pair with the worker's (sleepers, generation) pair:
            // either we see its sleeper count or it sees our new generation.
            generation.add(1, ordering: .sequentiallyConsistent)
            if sleepers.load(ordering: .sequentiallyConsistent) > 0 {
                pthread_mutex_lock(mutex)
                pthread_cond_broadcast(cond)
                pthread_mutex_unlock(mutex)
            }
            escaping(0, used)
            var spins = 0
            while remaining.load(ordering: .acquiring) > 0 {
                spins += 1
                if spins > 1000 { sched_yield() }
            }
            job = nil
        }
    }

    func workerLoop(index: Int) {
        var seen: UInt64 = 0
        while true {
            var spins = 0
            var g = generation.load(ordering: .acquiring)
            while g == seen {
                spins += 1
                if spins < PoolCore.spinLimit {
                    g = generation.load(ordering: .acquiring)
                    continue
                }
                pthread_mutex_lock(mutex)
                sleepers.add(1, ordering: .sequentiallyConsistent)
                g = generation.load(ordering: .sequentiallyConsistent)
                while g == seen && !stopping.load(ordering: .sequentiallyConsistent) {
                    pthread_cond_wait(cond, mutex)
                    g = generation.load(ordering: .acquiring)
                }
                sleepers.subtract(1, ordering: .relaxed)
                pthread_mutex_unlock(mutex)
                spins = 0
            }
            seen = g
            if stopping.load(ordering: .sequentiallyConsistent) { return }
            if let j = job { j(index, workerCount + 1) }
            remaining.subtract(1, ordering: .releasing)
        }
    }
}

/// The contiguous sub-range of `0..<total` that participant `index` of `count` takes, with range starts
/// aligned to `align` (all but possibly the last range have a length that is a multiple of `align`).
@inlinable
public func partition(_ total: Int, index: Int, count: Int, align: Int = 1) -> Range<Int> {
    let units = (total + align - 1) / align
    let per = units / count
    let extra = units % count
    let startU = index * per + min(index, extra)
    let endU = startU + per + (index < extra ? 1 : 0)
    return min(total, startU * align)..<min(total, endU * align)
}

/// Thread-local scratch memory (one growable buffer per OS thread, freed when the thread exits).
enum ThreadScratch {
    private struct Header { var size: Int; var ptr: UnsafeMutableRawPointer? }
    private static let key: pthread_key_t = {
        var k = pthread_key_t()
        pthread_key_create(&k) { raw in
            #if canImport(Darwin)
            let h = raw.assumingMemoryBound(to: Header.self)
            #else
            guard let raw else { return }
            let h = raw.assumingMemoryBound(to: Header.self)
            #endif
            free(h.pointee.ptr)
            free(h)
        }
        return k
    }()

    static func get(bytes: Int) -> UnsafeMutableRawPointer {
        let need = (max(bytes, 64) + 63) & ~63
        var h: UnsafeMutablePointer<Header>
        if let raw = pthread_getspecific(key) {
            h = raw.assumingMemoryBound(to: Header.self)
        } else {
            guard let m = malloc(MemoryLayout<Header>.stride) else {
                fatalError("LoRAKit: out of memory allocating kernel scratch")
            }
            h = m.bindMemory(to: Header.self, capacity: 1)
            h.initialize(to: Header(size: 0, ptr: nil))
            pthread_setspecific(key, h)
        }
        if h.pointee.size < need {
            free(h.pointee.ptr)
            h.pointee.ptr = nil
            h.pointee.size = 0
            var p: UnsafeMutableRawPointer? = nil
            if posix_memalign(&p, 64, need) != 0 || p == nil {
                fatalError("LoRAKit: out of memory allocating \(need) bytes of kernel scratch")
            }
            h.pointee.ptr = p
            h.pointee.size = need
        }
        return h.pointee.ptr!
    }
}
