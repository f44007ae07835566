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

/// Replaces a folder as a whole: the new content is written to a temporary sibling, then renamed into place.
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

    package static func makeTempDir(_ parent: String, _ tag: String) throws(LKError) -> String {
        var template = Array((parent + "/.lorakit-\(tag)-XXXXXX").utf8CString)
        let p = template.withUnsafeMutableBufferPointer { mkdtemp($0.baseAddress!) }
        guard p != nil else { throw .io("\(parent): cannot create a temporary folder: \(String(cString: strerror(errno)))") }
        return template.withUnsafeBufferPointer { String(cString: $0.baseAddress!) }
    }

    package static func listDirectory(_ path: String) -> [String] {
        guard let d = opendir(path) else { return [] }
        defer { closedir(d) }
        var out: [String] = []
        while let ent = readdir(d) {
            let name = withUnsafeBytes(of: ent.pointee.d_name) { raw in
                String(cString: raw.bindMemory(to: CChar.self).baseAddress!)
            }
            if name != "." && name != ".." { out.append(name) }
        }
        return out
    }

    /// Remove a folder of plain files (our temporary folders).
    package static func removeFlat(_ path: String) {
        for name in listDirectory(path) { unlink(path + "/" + name) }
        rmdir(path)
    }
}
