import LoRAKitCore

/// safetensors (Hugging Face's tensor file format): reading (memory-mapped, tensors used in place),
/// writing (atomically: temporary file, then rename), and sharded checkpoints
/// (`model.safetensors.index.json`).
///
/// Layout: u64 little-endian N, then N bytes of UTF-8 JSON (the header), then the data section. The
/// header is one object: `{"__metadata__": {str: str}, name: {"dtype": "F32", "shape": [..],
/// "data_offsets": [begin, end]}, …}`; offsets are relative to the start of the data section, tensors
/// are row-major, little-endian, outermost dimension first (PyTorch order, as `Tensor.shape`).
///
/// Reader strictness, compared with the reference implementation (the Rust `safetensors` crate that the
/// Python package wraps): the same checks on the header (length within the file and ≤ 100 MB, valid
/// JSON object starting with `{`, string-only `__metadata__`, known dtypes, no duplicate names, each
/// tensor's byte size = elements × dtype size, offsets inside the data section) and no overlapping
/// tensors. The reference additionally refuses gaps between tensors and bytes after the last one; we
/// accept those (they cannot make a read go wrong), so every file the reference reads, we read.
#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// Every dtype name of the safetensors format. Only `F32`, `F16` and `BF16` can become `Tensor`s; the
/// others are listed (so files holding them open, and their tensors can be inspected) but `tensor(_:)`
/// refuses them with `.unsupported`.
public enum SafetensorsDType: String, CaseIterable, Sendable {
    case BOOL, U8, I8, F8_E5M2, F8_E4M3, F8_E8M0, F4, F6_E2M3, F6_E3M2
    case I16, U16, F16, BF16, I32, U32, F32, C64, F64, I64, U64

    /// Bits per element (F4 and F6 types are packed).
    public var bits: Int {
        switch self {
        case .F4: return 4
        case .F6_E2M3, .F6_E3M2: return 6
        case .BOOL, .U8, .I8, .F8_E5M2, .F8_E4M3, .F8_E8M0: return 8
        case .I16, .U16, .F16, .BF16: return 16
        case .I32, .U32, .F32: return 32
        case .C64, .F64, .I64, .U64: return 64
        }
    }

    /// The LoRAKit dtype, for the supported ones.
    public var dtype: DType? {
        switch self {
        case .F32: return .f32
        case .F16: return .f16
        case .BF16: return .bf16
        default: return nil
        }
    }

    public init?(_ d: DType) {
        switch d {
        case .f32: self = .F32
        case .f16: self = .F16
        case .bf16: self = .BF16
        default: return nil
        }
    }

    /// Rank in the reference writer's ordering (its `Dtype` enum order): tensors are written by
    /// descending rank, then by name, so larger elements come first and stay aligned.
    var sortRank: Int {
        switch self {
        case .BOOL: return 0
        case .F4: return 1
        case .F6_E2M3: return 2
        case .F6_E3M2: return 3
        case .U8: return 4
        case .I8: return 5
        case .F8_E5M2: return 6
        case .F8_E4M3: return 7
        case .F8_E8M0: return 8
        case .I16: return 9
        case .U16: return 10
        case .F16: return 11
        case .BF16: return 12
        case .I32: return 13
        case .U32: return 14
        case .F32: return 15
        case .C64: return 16
        case .F64: return 17
        case .I64: return 18
        case .U64: return 19
        }
    }
}

/// One tensor's entry in a safetensors header.
public struct SafetensorsTensorInfo: Sendable, Equatable {
    public let name: String
    public let fileDType: SafetensorsDType
    /// Outermost first; `[]` is a scalar.
    public let shape: [Int]
    /// Byte range relative to the start of the data section.
    public let begin: Int
    public let end: Int
    /// The LoRAKit dtype, when supported (F32, F16, BF16).
    public var dtype: DType? { fileDType.dtype }
    public var byteCount: Int { end - begin }
}

/// Something that holds named tensors stored as safetensors: one file or a sharded checkpoint.
public protocol SafetensorsSource: AnyObject {
    /// Tensor names, in file order (for an index: sorted).
    var tensorNames: [String] { get }
    func info(_ name: String) -> SafetensorsTensorInfo?
    /// The tensor, viewing the memory map when its bytes are aligned for its dtype (copied otherwise).
    func tensor(_ name: String) throws(LKError) -> Tensor
    /// The file that holds `name` (for error messages), or the source's path if unknown.
    func filePath(of name: String) -> String
}

/// A safetensors file opened for reading. The whole header is validated on open; tensor data stays in
/// the memory map and is viewed in place.
public final class SafetensorsFile: SafetensorsSource, @unchecked Sendable {
    public let path: String
    public let storage: Storage
    /// Bytes of the JSON header (the u64 at the start of the file).
    public let headerLength: Int
    /// Offset of the data section in the file (8 + headerLength).
    public let dataOffset: Int
    /// The `__metadata__` strings (empty when absent).
    public let metadata: [String: String]
    /// Tensor entries in header order.
    public let tensors: [SafetensorsTensorInfo]
    private let index: [String: Int]

    /// Headers larger than this are refused (as the reference implementation does).
    public static let maxHeaderLength = 100_000_000

    public var tensorNames: [String] { tensors.map(\.name) }

    /// Open and validate `path`.
    public init(path: String) throws(LKError) {
        self.path = path
        let storage = try Storage(mappingFile: path)
        self.storage = storage
        let size = storage.byteCount
        guard size >= 8 else {
            throw .format("\(path): truncated safetensors file: \(size) bytes, shorter than the 8-byte header length")
        }
        let n = UInt64(littleEndian: UnsafeRawPointer(storage.base).loadUnaligned(as: UInt64.self))
        guard n <= UInt64(size - 8) else {
            throw .format("\(path): safetensors header length \(n) exceeds the \(size - 8) bytes after it (truncated or not a safetensors file)")
        }
        guard n <= UInt64(SafetensorsFile.maxHeaderLength) else {
            throw .format("\(path): safetensors header length \(n) exceeds the limit of \(SafetensorsFile.maxHeaderLength) bytes")
        }
        let hlen = Int(n)
        headerLength = hlen
        dataOffset = 8 + hlen
        let headerBytes = UnsafeRawBufferPointer(start: storage.base + 8, count: hlen)
        guard hlen >= 2, headerBytes[0] == UInt8(ascii: "{") else {
            throw .format("\(path): safetensors header does not start with '{' (not a safetensors file?)")
        }
        let header = try JSON.parse(headerBytes, path: "\(path) (safetensors header)")
        guard let members = header.object else {
            throw .format("\(path): safetensors header is not a JSON object")
        }
        let dataSize = size - dataOffset
        var md: [String: String] = [:]
        var infos: [SafetensorsTensorInfo] = []
        var idx: [String: Int] = [:]
        var sawMetadata = false
        for (name, v) in members {
            if name == "__metadata__" {
                guard !sawMetadata else { throw .format("\(path): duplicate __metadata__ entry in the header") }
                sawMetadata = true
                if v.isNull { continue }
                guard let o = v.object else { throw .format("\(path): __metadata__ is not an object of strings") }
                for (k, s) in o {
                    guard let str = s.string else {
                        throw .format("\(path): __metadata__ value of \"\(k)\" is not a string (safetensors metadata maps strings to strings)")
                    }
                    guard md[k] == nil else { throw .format("\(path): duplicate __metadata__ key \"\(k)\"") }
                    md[k] = str
                }
                continue
            }
            guard idx[name] == nil else { throw .format("\(path): duplicate tensor name \(name) in the header") }
            let info = try SafetensorsFile.parseInfo(name: name, v, dataSize: dataSize, path: path)
            idx[name] = infos.count
            infos.append(info)
        }
        // No two non-empty tensors may share bytes.
        let spans = infos.filter { $0.end > $0.begin }.sorted { ($0.begin, $0.end) < ($1.begin, $1.end) }
        for (a, b) in zip(spans, spans.dropFirst()) where b.begin < a.end {
            throw .format("\(path): tensors \(a.name) (bytes \(a.begin)..<\(a.end)) and \(b.name) (bytes \(b.begin)..<\(b.end)) overlap")
        }
        metadata = md
        tensors = infos
        index = idx
    }

    static func parseInfo(name: String, _ v: JSONValue, dataSize: Int, path: String) throws(LKError) -> SafetensorsTensorInfo {
        func bad(_ msg: String) -> LKError { .format("\(path): tensor \(name): \(msg)") }
        guard v.object != nil else { throw bad("header entry is not an object") }
        guard let dtName = v["dtype"]?.string else { throw bad("missing or non-string \"dtype\"") }
        guard let dt = SafetensorsDType(rawValue: dtName) else {
            throw bad("unknown dtype \"\(dtName)\" (known: \(SafetensorsDType.allCases.map(\.rawValue).joined(separator: ", ")))")
        }
        guard let shapeV = v["shape"]?.array else { throw bad("missing or non-array \"shape\"") }
        var shape: [Int] = []
        for d in shapeV {
            guard let i = d.int, i >= 0, i <= 1 << 48 else { throw bad("shape \(JSON.serialize(.array(shapeV))) has an invalid dimension") }
            shape.append(i)
        }
        guard let offs = v["data_offsets"]?.array, offs.count == 2, let b = offs[0].int, let e = offs[1].int else {
            throw bad("\"data_offsets\" must be an array of two integers")
        }
        guard b >= 0, b <= e else { throw bad("data_offsets [\(b), \(e)] are not an increasing byte range") }
        guard e <= dataSize else {
            throw bad("data_offsets [\(b), \(e)] extend beyond the data section of \(dataSize) bytes (truncated file?)")
        }
        let n: Int
        do { n = try checkedProduct(shape, what: "tensor \(name)") } catch { throw bad("shape \(shape) overflows") }
        let (bitsTotal, o) = n.multipliedReportingOverflow(by: dt.bits)
        guard !o, bitsTotal % 8 == 0 else { throw bad("shape \(shape) of \(dtName) is not a whole number of bytes") }
        guard bitsTotal / 8 == e - b else {
            throw bad("shape \(shape) of \(dtName) needs \(bitsTotal / 8) bytes but data_offsets [\(b), \(e)] hold \(e - b)")
        }
        return SafetensorsTensorInfo(name: name, fileDType: dt, shape: shape, begin: b, end: e)
    }

    public func info(_ name: String) -> SafetensorsTensorInfo? { index[name].map { tensors[$0] } }
    public func has(_ name: String) -> Bool { index[name] != nil }
    public func filePath(of name: String) -> String { path }

    /// The tensor named `name`: a view of the memory map (no copy) when its first byte is aligned for its
    /// dtype, as files written by the reference writer always are; a private copy otherwise.
    public func tensor(_ name: String) throws(LKError) -> Tensor {
        guard let i = index[name] else { throw .format("\(path): missing tensor \(name)") }
        let info = tensors[i]
        guard let dt = info.dtype else {
            throw .unsupported("\(path): tensor \(name) has dtype \(info.fileDType.rawValue), which LoRAKit does not support (supported: F32, F16, BF16)")
        }
        let start = dataOffset + info.begin
        if start % dt.blockBytes == 0 {
            return try Tensor(storage: storage, offset: start, shape: info.shape, dtype: dt)
        }
        let t = try Tensor(zeros: info.shape, dtype: dt)
        t.rawPointer.copyMemory(from: storage.base + start, byteCount: info.byteCount)
        return t
    }
}

// MARK: - Sharded checkpoints

/// A sharded checkpoint: `model.safetensors.index.json` (`{"metadata": {...}, "weight_map": {tensor:
/// shard file}}`) and its shard files in the same folder, presented as one tensor namespace. Every shard
/// is opened and validated on init, and every tensor the map names must be in its shard. The namespace
/// is the `weight_map`: tensors a shard holds but the map does not name are not visible.
public final class SafetensorsIndex: SafetensorsSource, @unchecked Sendable {
    /// Path of the index JSON.
    public let path: String
    /// The folder holding the shards.
    public let directory: String
    /// The index's `metadata` object (e.g. `total_size`), if any.
    public let metadata: JSONValue?
    /// Tensor name → shard file name (relative to `directory`).
    public let weightMap: [String: String]
    /// Opened shards by file name.
    public let shards: [String: SafetensorsFile]

    public var tensorNames: [String] { weightMap.keys.sorted() }

    public init(path: String) throws(LKError) {
        self.path = path
        directory = AtomicFile.parentDirectory(path)
        let root = try JSON.parse(file: path)
        guard root.object != nil else { throw .format("\(path): the index is not a JSON object") }
        metadata = root["metadata"]
        guard let wm = root["weight_map"]?.object else {
            throw .format("\(path): missing or non-object \"weight_map\"")
        }
        var map: [String: String] = [:]
        for (name, v) in wm {
            guard let file = v.string else { throw .format("\(path): weight_map entry \(name) is not a file name") }
            guard !file.isEmpty, !file.hasPrefix("/"), !file.split(separator: "/").contains("..") else {
                throw .format("\(path): weight_map entry \(name) names \"\(file)\", which is not a file inside the checkpoint folder")
            }
            guard map[name] == nil else { throw .format("\(path): weight_map lists tensor \(name) twice") }
            map[name] = file
        }
        var files: [String: SafetensorsFile] = [:]
        for file in Set(map.values).sorted() {
            files[file] = try SafetensorsFile(path: directory + "/" + file)
        }
        for (name, file) in map where !(files[file]!.has(name)) {
            throw .format("\(path): weight_map puts tensor \(name) in \(file), but \(directory)/\(file) does not hold it")
        }
        weightMap = map
        shards = files
    }

    public func info(_ name: String) -> SafetensorsTensorInfo? {
        guard let f = weightMap[name] else { return nil }
        return shards[f]?.info(name)
    }

    public func filePath(of name: String) -> String {
        guard let f = weightMap[name], let s = shards[f] else { return path }
        return s.path
    }

    public func tensor(_ name: String) throws(LKError) -> Tensor {
        guard let f = weightMap[name], let s = shards[f] else {
            throw .format("\(path): missing tensor \(name) (not in the weight_map)")
        }
        return try s.tensor(name)
    }
}

// MARK: - Writing

/// Builds a safetensors file the way the reference writer (Python `safetensors.*.save_file`) does, byte
/// for byte: tensors ordered by dtype (larger element types first: F32, BF16, F16) then by name (byte
/// order), packed without gaps; the header is compact JSON with `__metadata__` first (keys sorted here:
/// the reference writes them in hash order), padded with spaces to a multiple of 8 bytes. Written
/// atomically.
public struct SafetensorsWriter {
    /// `__metadata__` strings (written only when non-empty). PyTorch checkpoints carry `format: pt`.
    public var metadata: [String: String] = [:]
    public private(set) var tensors: [(name: String, tensor: Tensor)] = []

    public init() {}

    /// Add a tensor (f32, f16 or bf16; a strided view is copied to contiguous order).
    public mutating func add(_ name: String, _ tensor: Tensor) throws(LKError) {
        guard name != "__metadata__" else { throw .invalidArgument("safetensors writer: the tensor name __metadata__ is reserved") }
        guard SafetensorsDType(tensor.dtype) != nil else {
            throw .unsupported("safetensors writer: tensor \(name) has dtype \(tensor.dtype) (supported: f32, f16, bf16)")
        }
        guard !tensors.contains(where: { $0.name == name }) else {
            throw .invalidArgument("safetensors writer: duplicate tensor \(name)")
        }
        tensors.append((name, tensor.isContiguous ? tensor : try SafetensorsWriter.contiguousCopy(tensor)))
    }

    static func contiguousCopy(_ t: Tensor) throws(LKError) -> Tensor {
        let out = try Tensor(zeros: t.shape, dtype: t.dtype)
        let es = t.dtype.blockBytes
        let n = t.count
        if n == 0 { return out }
        var idx = [Int](repeating: 0, count: t.rank)
        for i in 0..<n {
            var off = 0
            for d in 0..<t.rank { off += idx[d] * t.strides[d] }
            (out.rawPointer + i * es).copyMemory(from: t.rawPointer + off * es, byteCount: es)
            var d = t.rank - 1
            while d >= 0 {
                idx[d] += 1
                if idx[d] < t.shape[d] { break }
                idx[d] = 0
                d -= 1
            }
        }
        return out
    }

    /// Tensors in the order they are written.
    var ordered: [(name: String, tensor: Tensor)] {
        tensors.sorted { a, b in
            let ra = SafetensorsDType(a.tensor.dtype)!.sortRank, rb = SafetensorsDType(b.tensor.dtype)!.sortRank
            if ra != rb { return ra > rb }
            return a.name.utf8.lexicographicallyPrecedes(b.name.utf8)
        }
    }

    /// The 8-byte length and the padded header.
    public func headerBytes() -> [UInt8] {
        var h: [UInt8] = [UInt8(ascii: "{")]
        var first = true
        func sep() { if !first { h.append(UInt8(ascii: ",")) }; first = false }
        if !metadata.isEmpty {
            sep()
            JSON.writeString("__metadata__", into: &h)
            h.append(contentsOf: ":{".utf8)
            for (i, k) in metadata.keys.sorted(by: { $0.utf8.lexicographicallyPrecedes($1.utf8) }).enumerated() {
                if i > 0 { h.append(UInt8(ascii: ",")) }
                JSON.writeString(k, into: &h)
                h.append(UInt8(ascii: ":"))
                JSON.writeString(metadata[k]!, into: &h)
            }
            h.append(UInt8(ascii: "}"))
        }
        var offset = 0
        for (name, t) in ordered {
            sep()
            JSON.writeString(name, into: &h)
            h.append(contentsOf: ":{\"dtype\":\"\(SafetensorsDType(t.dtype)!.rawValue)\",\"shape\":[".utf8)
            h.append(contentsOf: t.shape.map(String.init).joined(separator: ",").utf8)
            let end = offset + t.byteCount
            h.append(contentsOf: "],\"data_offsets\":[\(offset),\(end)]}".utf8)
            offset = end
        }
        h.append(UInt8(ascii: "}"))
        while h.count % 8 != 0 { h.append(UInt8(ascii: " ")) }
        var out: [UInt8] = []
        out.reserveCapacity(8 + h.count)
        withUnsafeBytes(of: UInt64(h.count).littleEndian) { out.append(contentsOf: $0) }
        out.append(contentsOf: h)
        return out
    }

    /// Write to `path` through a temporary file in the same folder, fsync, then rename.
    public func write(to path: String) throws(LKError) {
        let header = headerBytes()
        let list = ordered
        try AtomicFile.write(path: path) { (fd: Int32) throws(LKError) in
            try writeAll(fd, header, path: path)
            for (_, t) in list where t.byteCount > 0 {
                try writeAll(fd, UnsafeRawBufferPointer(start: t.rawPointer, count: t.byteCount), path: path)
            }
        }
    }
}
