// Files: whole-file reads and whole-folder replacement. Single files are written atomically by
// `AtomicFile` (AtomicFile.swift); folders (PEFT adapters, checkpoints) by `DirectoryReplace`.
#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// Read a whole file. Errors name the path and the system's reason.
public func readFile(_ path: String) throws(LKError) -> [UInt8] {
    let fd = open(path, O_RDONLY | O_CLOEXEC)
    guard fd >= 0 else { throw .io("\(path): cannot open: \(String(cString: strerror(errno)))") }
    defer { close(fd) }
    var st = stat()
    guard fstat(fd, &st) == 0 else { throw .io("\(path): cannot stat: \(String(cString: strerror(errno)))") }
    guard (st.st_mode & S_IFMT) != S_IFDIR else { throw .io("\(path): is a directory") }
    var out = [UInt8]()
    let hint = max(Int(st.st_size), 0)
    out.reserveCapacity(hint + 1)
    var chunk = [UInt8](repeating: 0, count: max(min(hint + 1, 1 << 24), 1 << 16))
    while true {
        let n = chunk.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
        if n < 0 {
            if errno == EINTR { continue }
            throw .io("\(path): read failed: \(String(cString: strerror(errno)))")
        }
        if n == 0 { break }
        out.append(contentsOf: chunk[0..<n])
    }
    return out
}

/// Replaces a folder as a whole: the new content is written to a temporary sibling, then renamed into place
/// (over an existing folder with an atomic exchange on Linux, so a crash leaves the old folder or the new
/// one at the path, never none; elsewhere in two renames, with a moment where the path is missing).
package enum DirectoryReplace {
    /// Build a folder's content in a temporary sibling, then put it in place of `directory`.
    package static func write(directory: String, _ fill: (String) throws(LKError) -> Void) throws(LKError) {
        var dir = directory
        while dir.count > 1 && dir.hasSuffix("/") { dir.removeLast() }
        let parent = AtomicFile.parentDirectory(dir)
        var st = stat()
        let exists = lstat(dir, &st) == 0
        if exists && (st.st_mode & S_IFMT) != S_IFDIR {
            throw .io("\(dir): exists and is not a folder")
        }
        let tmp = try makeTempDir(parent, "new")
        var done = false
        defer { if !done { removeFlat(tmp) } }
        try fill(tmp)
        if !exists {
            guard rename(tmp, dir) == 0 else { throw .io("\(dir): rename failed: \(String(cString: strerror(errno)))") }
        } else if exchange(tmp, dir) {
            // One atomic step: `dir` now holds the new content and `tmp` the old one, so at every moment
            // `dir` is a complete folder (old or new). Found by the kill test (Tests/kill): with the
            // two renames below, a kill between them left no folder at `dir`.
            for name in listDirectory(tmp) {
                let src = tmp + "/" + name, dst = dir + "/" + name
                if access(dst, F_OK) == 0 { unlink(src) } else { rename(src, dst) }
            }
            rmdir(tmp)
        } else {
            let old = try makeTempDir(parent, "old")
            rmdir(old)  // only its unique name is wanted
            guard rename(dir, old) == 0 else { throw .io("\(dir): cannot move the old folder aside: \(String(cString: strerror(errno)))") }
            guard rename(tmp, dir) == 0 else {
                let e = errno
                rename(old, dir)
                throw .io("\(dir): rename failed: \(String(cString: strerror(e)))")
            }
            // Keep the old folder's other files (model cards, training state, …).
            for name in listDirectory(old) {
                let src = old + "/" + name, dst = dir + "/" + name
                if access(dst, F_OK) == 0 { unlink(src) } else { rename(src, dst) }
            }
            rmdir(old)
        }
        done = true
        let dfd = open(parent, O_RDONLY)
        if dfd >= 0 { fsync(dfd); close(dfd) }
    }

    /// Atomically swap two paths (Linux `renameat2(RENAME_EXCHANGE)`); false where the system or the
    /// file system cannot (the caller then replaces in two renames).
    static func exchange(_ a: String, _ b: String) -> Bool {
        #if os(Linux)
        typealias RenameAt2 = @convention(c) (Int32, UnsafePointer<CChar>, Int32, UnsafePointer<CChar>, UInt32) -> Int32
        guard let sym = renameat2Symbol else { return false }
        let f = unsafeBitCast(sym, to: RenameAt2.self)
        return f(AT_FDCWD, a, AT_FDCWD, b, 2 /* RENAME_EXCHANGE */) == 0
        #else
        return false
        #endif
    }

    #if os(Linux)
    /// glibc's renameat2 (2.28+), looked up at run time: Swift's Glibc module does not declare it.
    nonisolated(unsafe) static let renameat2Symbol: UnsafeMutableRawPointer? = dlsym(nil, "renameat2")
    #endif

    package static func makeTempDir(_ parent: String, _ tag: String) throws(LKError) -> String {
        var template = Array((parent + "/.lorakit-\(tag)-XXXXXX").utf8CString)
        let p = template.withUnsafeMutableBufferPointer { mkdtemp($0.baseAddress!) }
        guard p != nil else { throw .io("\(parent): cannot create a temporary folder: \(String(cString: strerror(errno)))") }
        let path = template.withUnsafeBufferPointer { String(cString: $0.baseAddress!) }
        // mkdtemp makes the folder private (0700); the folder it becomes is a normal one (as mkdir -p).
        chmod(path, 0o755)
        return path
    }

    package static func listDirectory(_ path: String) -> [String] {
        guard let d = opendir(path) else { return [] }
        defer { closedir(d) }
        var out: [String] = []
        while let ent = readdir(d) {
            let name = direntName(ent)
            if name != "." && name != ".." { out.append(name) }
        }
        return out
    }

    /// The name in a `readdir` entry, read in place: glibc's entries are only as long as their name
    /// (`d_reclen`), so copying the whole `d_name` array (256 bytes) read past the end of the last entry
    /// of the buffer (heap-buffer-overflow, found by make test-asan).
    package static func direntName(_ ent: UnsafeMutablePointer<dirent>) -> String {
        let offset = MemoryLayout<dirent>.offset(of: \dirent.d_name)!
        return String(cString: (UnsafeRawPointer(ent) + offset).assumingMemoryBound(to: CChar.self))
    }

    /// Remove a folder of plain files (our temporary folders).
    package static func removeFlat(_ path: String) {
        for name in listDirectory(path) { unlink(path + "/" + name) }
        rmdir(path)
    }
}
