#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// A region of bytes that tensors view. Owned storage is 64-byte aligned and zero-filled; mapped
/// storage is a read-only memory map of a file; borrowed storage points into memory owned by someone
/// else (a C caller, or another `Storage` kept alive through `owner`).
public final class Storage: @unchecked Sendable {
    public enum Kind: Sendable { case owned, mapped, borrowed }

    /// Start of the bytes.
    public let base: UnsafeMutableRawPointer
    /// Number of bytes.
    public let byteCount: Int
    public let kind: Kind
    /// Keeps whatever the bytes belong to alive (for `borrowed`).
    private let owner: AnyObject?
    private let mapBase: UnsafeMutableRawPointer?
    private let mapLength: Int

    /// Largest single allocation we accept (guards against absurd sizes from corrupt files): 64 GiB.
    public static let maxAllocation = 64 << 30

    /// Allocate `byteCount` zeroed bytes, 64-byte aligned.
    public init(byteCount: Int) throws(LKError) {
        guard byteCount >= 0 else { throw .invalidArgument("negative allocation size \(byteCount)") }
        guard byteCount <= Storage.maxAllocation else {
            throw .outOfMemory("refusing to allocate \(byteCount) bytes (limit \(Storage.maxAllocation))")
        }
        let n = max(byteCount, 64)
        var p: UnsafeMutableRawPointer? = nil
        guard posix_memalign(&p, 64, (n + 63) & ~63) == 0, let ptr = p else {
            throw .outOfMemory("could not allocate \(byteCount) bytes")
        }
        memset(ptr, 0, n)
        self.base = ptr
        self.byteCount = byteCount
        self.kind = .owned
        self.owner = nil
        self.mapBase = nil
        self.mapLength = 0
    }

    /// Reserve `byteCount` zero bytes with an anonymous memory map: pages are not touched (and do not
    /// count in the resident set) until first written. For KV caches and large activation buffers.
    public init(lazyZeroedBytes byteCount: Int) throws(LKError) {
        guard byteCount >= 0 else { throw .invalidArgument("negative allocation size \(byteCount)") }
        guard byteCount <= Storage.maxAllocation else {
            throw .outOfMemory("refusing to allocate \(byteCount) bytes (limit \(Storage.maxAllocation))")
        }
        let len = max(byteCount, 4096)
        guard let m = mmap(nil, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0), m != MAP_FAILED else {
            throw .outOfMemory("could not map \(byteCount) bytes: \(String(cString: strerror(errno)))")
        }
        self.base = m
        self.byteCount = byteCount
        self.kind = .mapped
        self.owner = nil
        self.mapBase = m
        self.mapLength = len
    }

    /// View memory owned elsewhere. `owner` (if any) is retained for the lifetime of this storage.
    public init(borrowing base: UnsafeMutableRawPointer, byteCount: Int, owner: AnyObject? = nil) {
        self.base = base
        self.byteCount = byteCount
        self.kind = .borrowed
        self.owner = owner
        self.mapBase = nil
        self.mapLength = 0
    }

    /// Memory-map a whole file read-only. Pages are loaded lazily by the kernel and shared between
    /// processes that map the same file.
    public init(mappingFile path: String) throws(LKError) {
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { throw .io("\(path): cannot open: \(String(cString: strerror(errno)))") }
        defer { close(fd) }
        var st = stat()
        guard fstat(fd, &st) == 0 else { throw .io("\(path): cannot stat: \(String(cString: strerror(errno)))") }
        guard (st.st_mode & S_IFMT) == S_IFREG else { throw .io("\(path): not a regular file") }
        let size = Int(st.st_size)
        if size == 0 {
            // mmap of length 0 fails; represent an empty file with a tiny owned buffer.
            var p: UnsafeMutableRawPointer? = nil
            _ = posix_memalign(&p, 64, 64)
            guard let ptr = p else { throw .outOfMemory("\(path): allocation failed") }
            self.base = ptr
            self.byteCount = 0
            self.kind = .owned
            self.owner = nil
            self.mapBase = nil
            self.mapLength = 0
            return
        }
        guard let m = mmap(nil, size, PROT_READ, MAP_PRIVATE, fd, 0), m != MAP_FAILED else {
            throw .io("\(path): mmap of \(size) bytes failed: \(String(cString: strerror(errno)))")
        }
        self.base = m
        self.byteCount = size
        self.kind = .mapped
        self.owner = nil
        self.mapBase = m
        self.mapLength = size
    }

    deinit {
        switch kind {
        case .owned: free(base)
        case .mapped: if let m = mapBase { munmap(m, mapLength) }
        case .borrowed: break
        }
    }
}
