#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

/// How much of the calling thread's stack is left, for code whose recursion follows its input (the chat
/// template's parser and interpreter): it checks `exhausted` at each level and stops with an error
/// instead of overflowing a thread whose stack is smaller than its depth limits assume. Those limits are
/// sized for release builds on 1 MiB; a debug build's frames are several times larger, and threads made by
/// libdispatch, Swift concurrency or a host program may have 512 KiB or less.
public struct StackGuard: Sendable {
    /// Addresses below this are the reserve (0 when the thread's stack bounds are unknown: never exhausted).
    public let limit: UInt

    /// A guard for the calling thread that leaves `reserve` bytes for the error path and the frames between
    /// two checks.
    public init(reserve: Int = 128 << 10) {
        limit = StackGuard.lowestAddress().map { $0 &+ UInt(reserve) } ?? 0
    }

    /// Whether the stack has grown into the reserve (stacks grow down on every platform this builds for).
    /// Only meaningful on the thread that made the guard.
    @inline(__always) public var exhausted: Bool { StackGuard.approximateStackPointer() < limit }

    /// The address of a local of a frame of its own: the stack pointer, give or take a frame.
    @inline(never) static func approximateStackPointer() -> UInt {
        var x: UInt8 = 0
        return withUnsafeMutablePointer(to: &x) { UInt(bitPattern: $0) }
    }

    #if os(Linux)
    /// glibc's and musl's pthread_getattr_np (a GNU extension the Swift C module does not declare), looked up once.
    private typealias GetAttrNP = @convention(c) (pthread_t, UnsafeMutablePointer<pthread_attr_t>) -> Int32
    nonisolated(unsafe) private static let getattrNP: GetAttrNP? = dlsym(nil, "pthread_getattr_np").map {
        unsafeBitCast($0, to: GetAttrNP.self)
    }
    #endif

    /// The lowest usable address of the calling thread's stack.
    static func lowestAddress() -> UInt? {
        #if os(Linux)
        guard let getattr = getattrNP else { return nil }
        var attr = pthread_attr_t()
        guard getattr(pthread_self(), &attr) == 0 else { return nil }
        defer { pthread_attr_destroy(&attr) }
        var addr: UnsafeMutableRawPointer?
        var size = 0
        guard pthread_attr_getstack(&attr, &addr, &size) == 0, let addr, size > 0 else { return nil }
        return UInt(bitPattern: addr)
        #elseif canImport(Darwin)
        let top = UInt(bitPattern: pthread_get_stackaddr_np(pthread_self()))
        let size = UInt(pthread_get_stacksize_np(pthread_self()))
        return top > size ? top - size : nil
        #else
        return nil
        #endif
    }
}
