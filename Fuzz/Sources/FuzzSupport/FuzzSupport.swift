// Helpers shared by the libFuzzer targets in Fuzz/ (issue 14). Each target is one executable with a
// `LLVMFuzzerTestOneInput`; see Fuzz/README.md for how they are built and run.
//
// Every target feeds its input through the same code path as loading does (the input is written to a
// file in a private scratch folder and the public loader reads it), then checks properties that must
// hold for every input the loader accepts. A violated property calls `Fuzz.fail`, which prints the reason
// and aborts, so libFuzzer saves the input as a crash. Errors thrown by a loader are expected: hostile
// input must be refused with an `LKError`, never a trap, an out-of-bounds access, a leak or a hang.
import LoRAKit
#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

public enum Fuzz {
    /// The repository root: `LORAKIT_ROOT`, else three folders above this source file.
    public static let root: String = {
        if let r = getenv("LORAKIT_ROOT") { return String(cString: r) }
        var parts = "\(#filePath)".split(separator: "/", omittingEmptySubsequences: false).map(String.init)
        parts.removeLast(4)  // Fuzz/Sources/FuzzSupport/FuzzSupport.swift
        return parts.joined(separator: "/")
    }()

    /// The test fixtures (Tests/LoRAKitTests/Fixtures).
    public static var fixtures: String { root + "/Tests/LoRAKitTests/Fixtures" }

    /// A scratch folder private to this process, in /dev/shm when it exists (no disk writes), removed at exit.
    public static let scratch: String = {
        let base: String
        if access("/dev/shm", W_OK) == 0 { base = "/dev/shm" } else if let t = getenv("TMPDIR") { base = String(cString: t) } else { base = "/tmp" }
        var template = Array((base + "/lorakit-fuzz-XXXXXX").utf8CString)
        guard let p = template.withUnsafeMutableBufferPointer({ mkdtemp($0.baseAddress!) }) else {
            fatalError("fuzz: cannot create a scratch folder in \(base)")
        }
        let dir = String(cString: p)
        scratchForCleanup = strdup(dir)
        atexit { if let d = Fuzz.scratchForCleanup { Fuzz.removeTree(String(cString: d)) } }
        return dir
    }()
    nonisolated(unsafe) static var scratchForCleanup: UnsafeMutablePointer<CChar>? = nil

    /// Write a line to standard error.
    public static func printError(_ line: String) {
        let b = Array((line + "\n").utf8)
        b.withUnsafeBytes { _ = Glibc.write(2, $0.baseAddress!, $0.count) }
    }

    /// Report a violated property and abort (libFuzzer saves the input).
    public static func fail(_ message: String, file: StaticString = #fileID, line: UInt = #line) -> Never {
        printError("FUZZ PROPERTY VIOLATED (\(file):\(line)): \(message)")
        abort()
    }

    @inline(__always)
    public static func check(_ ok: Bool, _ message: @autoclosure () -> String, file: StaticString = #fileID, line: UInt = #line) {
        if !ok { fail(message(), file: file, line: line) }
    }

    /// Write `bytes` to `path` (plain write, replacing the file).
    public static func write(_ bytes: UnsafeRawBufferPointer, to path: String) {
        let fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o644)
        if fd < 0 { fail("cannot create \(path): \(String(cString: strerror(errno)))") }
        var off = 0
        while off < bytes.count {
            let n = Glibc.write(fd, bytes.baseAddress! + off, bytes.count - off)
            if n <= 0 { fail("cannot write \(path)") }
            off += n
        }
        close(fd)
    }

    public static func write(_ bytes: [UInt8], to path: String) {
        bytes.withUnsafeBytes { write($0, to: path) }
    }

    /// A folder `name` inside the scratch folder, emptied.
    public static func folder(_ name: String) -> String {
        let d = scratch + "/" + name
        removeTree(d)
        mkdir(d, 0o755)
        return d
    }

    /// The input as a buffer (libFuzzer may pass NULL with size 0).
    public static func buffer(_ data: UnsafePointer<UInt8>?, _ size: Int) -> UnsafeRawBufferPointer {
        guard let d = data, size > 0 else { return UnsafeRawBufferPointer(start: nil, count: 0) }
        return UnsafeRawBufferPointer(start: d, count: size)
    }

    /// The separator between the files of a multi-file input (Fuzz/README.md).
    public static let separator: [UInt8] = Array("\n#LORAKIT-FUZZ-NEXT-FILE#\n".utf8)

    /// Split a multi-file input at each separator.
    public static func split(_ b: UnsafeRawBufferPointer) -> [[UInt8]] {
        var parts: [[UInt8]] = []
        var start = 0, i = 0
        let sep = separator, n = b.count
        while i + sep.count <= n {
            var match = true
            for k in 0..<sep.count where b[i + k] != sep[k] { match = false; break }
            if match {
                parts.append(Array(b[start..<i]))
                i += sep.count
                start = i
            } else {
                i += 1
            }
        }
        parts.append(Array(b[start..<n]))
        return parts
    }

    /// Check that a tensor returned by a loader lies inside its storage, with a shape and dtype whose byte
    /// count is computable, then read every byte of it (and its values, for small tensors). Memory maps
    /// are invisible to AddressSanitizer, so the bounds are checked here explicitly.
    public static func checkTensor(_ t: Tensor, _ what: String) {
        let bytes: Int
        do { bytes = try Tensor.byteCount(shape: t.shape, dtype: t.dtype) } catch {
            fail("\(what): a loaded tensor has shape \(t.shape) \(t.dtype) whose size is not computable: \(error)")
        }
        check(t.offset >= 0 && t.offset <= t.storage.byteCount && bytes <= t.storage.byteCount - t.offset,
              "\(what): tensor \(t.shape) \(t.dtype) (\(bytes) bytes at offset \(t.offset)) lies outside its storage of \(t.storage.byteCount) bytes")
        check(t.isContiguous || !t.dtype.isQuantized, "\(what): a quantized tensor is not contiguous")
        var sum: UInt8 = 0
        let p = UnsafeRawPointer(t.rawPointer)
        for i in 0..<bytes { sum &+= p.load(fromByteOffset: i, as: UInt8.self) }
        blackHole(sum)
        if t.count <= 1 << 16 {
            let v = t.toFloats()
            check(v.count == t.count, "\(what): toFloats returned \(v.count) values for \(t.count) elements")
        }
    }

    /// Keep a value alive so the reads producing it are not optimized away.
    @inline(never) public static func blackHole<T>(_ x: T) { withExtendedLifetime(x) {} }

    /// Run two tokens through a context over `model`, optionally with `adapter` attached; the logits must
    /// have the vocabulary's length.
    public static func forward(_ model: LlamaModel, adapter: LoRAAdapter? = nil, what: String) {
        let c = model.config
        do {
            let ctx = try LlamaContext(model: model, maxPositions: min(c.contextLength, 4), batch: 2, threads: 1)
            if let a = adapter { try ctx.attach(a, scale: 0.5) }
            let ids: [Int32] = c.contextLength >= 2 ? [0, Int32(c.vocabSize - 1)] : [0]
            let logits = try ctx.evaluate(.tokens(ids), logits: .last)
            check(logits.count == c.vocabSize, "\(what): \(logits.count) logits for a vocabulary of \(c.vocabSize)")
            let one = try ctx.evaluate(.tokens([Int32(c.vocabSize / 2)]), logits: .last)
            check(one.count == c.vocabSize || c.contextLength < 3, "\(what): decode returned \(one.count) logits")
        } catch {
            // A context over a loaded model may fail only for a resource limit (the sizes were validated).
            if case .outOfMemory = error { return }
            if case .invalidArgument(let m) = error, m.contains("overflow the context") { return }
            fail("\(what): a model that loaded cannot run two tokens: \(error)")
        }
    }

    /// Properties of a tokenizer on `text`: ids in range; decoding the ids gives back the bytes of the
    /// tokens (and `UTF8StreamDecoder` fed token by token gives the same text as `decode`).
    public static func checkTokenizer(_ tok: Tokenizer, _ text: String, parseSpecial: Bool, what: String) -> [Int32] {
        let ids = tok.encode(text, addBOS: true, addEOS: true, parseSpecial: parseSpecial)
        for (k, id) in ids.enumerated() {
            check(id >= 0 && Int(id) < tok.vocabSize, "\(what): id \(id) at \(k) is outside the vocabulary of \(tok.vocabSize)")
        }
        let decoded: String
        do { decoded = try tok.decode(ids) } catch { fail("\(what): decode of encode's ids failed: \(error)") }
        var stream = UTF8StreamDecoder()
        var streamed = ""
        var bytes: [UInt8] = []
        for id in ids {
            let b = tok.tokenBytes(id)
            bytes += b
            streamed += stream.append(b)
        }
        streamed += stream.flush()
        // decode drops the SentencePiece space prefix of the first non-control token; compare the rest.
        if !tok.addSpacePrefix {
            check(Array(decoded.utf8) == Array(String(decoding: bytes, as: UTF8.self).utf8),
                  "\(what): decode differs from the concatenated token bytes")
            check(streamed == decoded, "\(what): UTF8StreamDecoder gives \(Array(streamed.utf8)) but decode gives \(Array(decoded.utf8))")
        }
        return ids
    }

    /// Delete a file or a folder tree (symbolic links are removed, not followed).
    public static func removeTree(_ path: String) {
        var st = stat()
        guard lstat(path, &st) == 0 else { return }
        if (st.st_mode & S_IFMT) == S_IFDIR {
            if let d = opendir(path) {
                var names: [String] = []
                while let e = readdir(d) {
                    let off = MemoryLayout<dirent>.offset(of: \dirent.d_name)!  // read in place (entries are short)
                    let name = String(cString: (UnsafeRawPointer(e) + off).assumingMemoryBound(to: CChar.self))
                    if name != "." && name != ".." { names.append(name) }
                }
                closedir(d)
                for n in names { removeTree(path + "/" + n) }
            }
            rmdir(path)
        } else {
            unlink(path)
        }
    }

    /// Load a fixture model once (the base for adapter targets); a missing fixture is fatal.
    public static func loadModel(_ relativePath: String) -> LlamaModel {
        do { return try LlamaModel.load(path: fixtures + "/" + relativePath) } catch {
            fatalError("fuzz: cannot load the fixture \(relativePath): \(error)")
        }
    }

    /// `s·B` for each module (the adapter's effective low-rank factor with A), keyed by (layer, module),
    /// for comparing adapters across formats whose alphas fold differently.
    public static func effective(_ t: LoRATensors) -> [String: (a: [Float], sb: [Float], shapeA: [Int], shapeB: [Int])] {
        var out: [String: (a: [Float], sb: [Float], shapeA: [Int], shapeB: [Int])] = [:]
        for e in t.entries {
            let s = t.scaling(e)
            out["\(e.layer).\(e.module)"] = (e.a.toFloats(), e.b.toFloats().map { $0 * s }, e.a.shape, e.b.shape)
        }
        return out
    }

    /// Relative closeness of two float arrays (|x − y| ≤ tol·max(|x|, |y|) elementwise; NaN never close).
    public static func approxEqual(_ x: [Float], _ y: [Float], tol: Float) -> Bool {
        guard x.count == y.count else { return false }
        for (a, b) in zip(x, y) {
            if a == b { continue }
            guard a.isFinite, b.isFinite else { return false }
            if abs(a - b) > tol * max(abs(a), abs(b)) + 16 * Float.leastNormalMagnitude { return false }
        }
        return true
    }
}
