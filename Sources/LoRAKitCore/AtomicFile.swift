#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// Atomic file replacement: write to a temporary file in the destination's folder, fsync it, rename it
/// over the destination, fsync the folder. A crash at any point leaves the old file or the new one.
public enum AtomicFile {
    public static func write(path: String, _ body: (Int32) throws(LKError) -> Void) throws(LKError) {
        let dir = parentDirectory(path)
        var template = Array((dir + "/.lorakit-tmp-XXXXXX").utf8CString)
        let fd = template.withUnsafeMutableBufferPointer { mkstemp($0.baseAddress!) }
        guard fd >= 0 else { throw .io("\(path): cannot create a temporary file in \(dir): \(String(cString: strerror(errno)))") }
        let tmp = template.withUnsafeBufferPointer { String(cString: $0.baseAddress!) }
        var ok = false
        defer { if !ok { unlink(tmp) } }
        do throws(LKError) {
            try body(fd)
        } catch {
            close(fd)
            throw error
        }
        guard fsync(fd) == 0 else { let e = errno; close(fd); throw .io("\(path): fsync failed: \(String(cString: strerror(e)))") }
        fchmod(fd, 0o644)
        guard close(fd) == 0 else { throw .io("\(path): close failed: \(String(cString: strerror(errno)))") }
        guard rename(tmp, path) == 0 else { throw .io("\(path): rename failed: \(String(cString: strerror(errno)))") }
        ok = true
        let dfd = open(dir, O_RDONLY)
        if dfd >= 0 { fsync(dfd); close(dfd) }
    }

    /// Write `bytes` to `path` atomically.
    public static func write(path: String, bytes: [UInt8]) throws(LKError) {
        try write(path: path) { (fd: Int32) throws(LKError) in try writeAll(fd, bytes, path: path) }
    }

    package static func parentDirectory(_ path: String) -> String {
        guard let slash = path.lastIndex(of: "/") else { return "." }
        let d = String(path[..<slash])
        return d.isEmpty ? "/" : d
    }
}

package func writeAll(_ fd: Int32, _ bytes: [UInt8], path: String) throws(LKError) {
    try asLKError { try bytes.withUnsafeBytes { b in try writeAll(fd, b, path: path) } }
}

/// Run a closure that can only throw LKError through an untyped `rethrows` API, keeping the type.
@inline(__always)
package func asLKError<T>(_ body: () throws -> T) throws(LKError) -> T {
    do { return try body() } catch let e as LKError { throw e } catch { throw .internal("\(error)") }
}

package func writeAll(_ fd: Int32, _ buf: UnsafeRawBufferPointer, path: String) throws(LKError) {
    var off = 0
    while off < buf.count {
        let n = sysWrite(fd, buf.baseAddress! + off, buf.count - off)
        if n < 0 {
            if errno == EINTR { continue }
            throw .io("\(path): write failed: \(String(cString: strerror(errno)))")
        }
        off += n
    }
}

package func writeZeros(_ fd: Int32, _ n: Int, path: String) throws(LKError) {
    let zeros = [UInt8](repeating: 0, count: min(n, 4096))
    var left = n
    while left > 0 {
        let k = min(left, zeros.count)
        try asLKError { try zeros.withUnsafeBytes { b in try writeAll(fd, UnsafeRawBufferPointer(rebasing: b[0..<k]), path: path) } }
        left -= k
    }
}

@inline(__always) func sysWrite(_ fd: Int32, _ p: UnsafeRawPointer, _ n: Int) -> Int {
    #if canImport(Glibc)
    return Glibc.write(fd, p, n)
    #else
    return Darwin.write(fd, p, n)
    #endif
}
