#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// A value guarded by a pthread mutex, with the same `withLock` shape as the standard library's
/// `Synchronization.Mutex`. The library uses this one for its shared state (handle registry, plugin
/// registry, caches) because ThreadSanitizer intercepts pthread mutexes and so sees the happens-before
/// edge a lock gives; `Mutex` waits on a raw futex that TSan does not model, which turned every access
/// made under it into a reported race (issue 14) and made `make test-tsan` useless for finding real ones.
/// Uncontended, a pthread mutex costs about what `Mutex` does (one atomic exchange each way).
public final class Locked<Value>: @unchecked Sendable {
    private let mutex: UnsafeMutablePointer<pthread_mutex_t>
    private var value: Value

    public init(_ value: Value) {
        self.value = value
        mutex = .allocate(capacity: 1)
        mutex.initialize(to: pthread_mutex_t())
        pthread_mutex_init(mutex, nil)
    }

    deinit {
        pthread_mutex_destroy(mutex)
        mutex.deinitialize(count: 1)
        mutex.deallocate()
    }

    /// Runs `body` with exclusive access to the value; the lock is released however `body` ends.
    @inline(__always)
    public func withLock<R, E: Error>(_ body: (inout Value) throws(E) -> R) throws(E) -> R {
        pthread_mutex_lock(mutex)
        defer { pthread_mutex_unlock(mutex) }
        return try body(&value)
    }
}
