import LoRAKitCore

/// GGUF (llama.cpp's model file format), versions 2 and 3: reading (memory-mapped, tensors used in
/// place) and writing (atomically: temporary file, then rename).
///
/// Layout: magic "GGUF", u32 version, u64 tensor count, u64 metadata count, the metadata key/value
/// pairs, the tensor infos (name, n_dims, dims innermost first, ggml type, offset), padding to
/// `general.alignment` (default 32), then the tensor data. All little-endian.
///
/// Shapes: GGUF writes dims innermost first (ggml's `ne`); `GGUFTensorInfo.shape` is outermost first
/// (PyTorch order), so a linear weight `[out, in]` has `ne = [in, out]` in the file.
#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// A metadata value.
public enum GGUFValue: Equatable, Sendable {
    case uint8(UInt8), int8(Int8), uint16(UInt16), int16(Int16), uint32(UInt32), int32(Int32)
    case uint64(UInt64), int64(Int64), float32(Float), float64(Double), bool(Bool), string(String)
    /// An array; elements all have the type `elementType` (a GGUF value type id).
    case array(elementType: UInt32, [GGUFValue])

    /// Integer value of any integer (or bool) case.
    public var int: Int? {
        switch self {
        case .uint8(let v): return Int(v)
        case .int8(let v): return Int(v)
        case .uint16(let v): return Int(v)
        case .int16(let v): return Int(v)
        case .uint32(let v): return Int(v)
        case .int32(let v): return Int(v)
        case .uint64(let v): return v <= UInt64(Int.max) ? Int(v) : nil
        case .int64(let v): return Int(v)
        case .bool(let v): return v ? 1 : 0
        default: return nil
        }
    }

    public var double: Double? {
        switch self {
        case .float32(let v): return Double(v)
        case .float64(let v): return v
        default: return int.map(Double.init)
        }
    }

    public var string: String? { if case .string(let s) = self { return s } else { return nil } }
    public var bool: Bool? { if case .bool(let b) = self { return b } else { return nil } }

    public var array: [GGUFValue]? { if case .array(_, let a) = self { return a } else { return nil } }

    public var stringArray: [String]? { array?.compactMap(\.string) }

    /// The value as text (`lk_model_meta`): integers in decimal, floats in their shortest round-tripping
    /// form ("1e-05", "100000.0"), booleans "true"/"false", strings raw, arrays as compact JSON.
    public var text: String {
        switch self {
        case .string(let s): return s
        case .array: return JSON.serialize(json)
        case .bool(let b): return b ? "true" : "false"
        case .float32(let f): return "\(f)"
        case .float64(let d): return "\(d)"
        case .uint64(let u): return "\(u)"
        case .int64(let i): return "\(i)"
        default: return "\(int ?? 0)"
        }
    }

    /// The value as JSON: floats as their shortest round-tripping decimal (a float32 0.1 is 0.1, not
    /// 0.10000000149…), non-finite ones null.
    public var json: JSONValue {
        switch self {
        case .float32(let f): return f.isFinite ? .number(Double("\(f)") ?? Double(f)) : .null
        case .float64(let d): return d.isFinite ? .number(d) : .null
        case .bool(let b): return .bool(b)
        case .string(let s): return .string(s)
        case .array(_, let a): return .array(a.map(\.json))
        case .uint64(let u): return .number(Double(u))
        default: return .number(Double(int ?? 0))
        }
    }

    /// GGUF value type id of this value.
    public var typeID: UInt32 {
        switch self {
        case .uint8: return 0
        case .int8: return 1
        case .uint16: return 2
        case .int16: return 3
        case .uint32: return 4
        case .int32: return 5
        case .float32: return 6
        case .bool: return 7
        case .string: return 8
        case .array: return 9
        case .uint64: return 10
        case .int64: return 11
        case .float64: return 12
        }
    }
}

/// ggml tensor type ids used in GGUF, and their mapping to `DType`.
public enum GGMLType {
    public static func dtype(_ t: UInt32) -> DType? {
        switch t {
        case 0: return .f32
        case 1: return .f16
        case 2: return .q4_0
        case 3: return .q4_1
        case 8: return .q8_0
        case 30: return .bf16
        default: return nil
        }
    }

    public static func id(_ d: DType) -> UInt32 {
        switch d {
        case .f32: return 0
        case .f16: return 1
        case .q4_0: return 2
        case .q4_1: return 3
        case .q8_0: return 8
        case .bf16: return 30
        }
    }

    public static func name(_ t: UInt32) -> String {
        let names: [UInt32: String] = [
            0: "F32", 1: "F16", 2: "Q4_0", 3: "Q4_1", 6: "Q5_0", 7: "Q5_1", 8: "Q8_0", 9: "Q8_1",
            10: "Q2_K", 11: "Q3_K", 12: "Q4_K", 13: "Q5_K", 14: "Q6_K", 15: "Q8_K", 16: "IQ2_XXS",
            17: "IQ2_XS", 18: "IQ3_XXS", 19: "IQ1_S", 20: "IQ4_NL", 21: "IQ3_S", 22: "IQ2_S", 23: "IQ4_XS",
            24: "I8", 25: "I16", 26: "I32", 27: "I64", 28: "F64", 29: "IQ1_M", 30: "BF16",
        ]
        return names[t] ?? "type \(t)"
    }
}

/// One tensor's entry in a GGUF file.
public struct GGUFTensorInfo: Sendable {
    public let name: String
    /// Outermost first (reversed ggml `ne`).
    public let shape: [Int]
    /// The ggml type id as stored.
    public let ggmlType: UInt32
    /// The dtype, when LoRAKit supports the ggml type.
    public var dtype: DType? { GGMLType.dtype(ggmlType) }
    /// Offset relative to the start of the data section.
    public let offset: Int
}

/// A GGUF file opened for reading. Tensor data stays in the memory map and is viewed in place.
public final class GGUFFile: @unchecked Sendable {
    public let path: String
    public let version: UInt32
    /// Metadata in file order, and by key.
    public let metadataKeys: [String]
    public let metadata: [String: GGUFValue]
    public let tensors: [GGUFTensorInfo]
    public let tensorIndex: [String: Int]
    public let alignment: Int
    public let dataOffset: Int
    public let storage: Storage

    /// Refuse files that declare more than this many tensors or metadata entries.
    static let maxCount = 1 << 20

    /// Open and validate `path`. Every size and offset is checked against the file size before use.
    public init(path: String) throws(LKError) {
        self.path = path
        let storage = try Storage(mappingFile: path)
        self.storage = storage
        var r = ByteReader(base: UnsafeRawPointer(storage.base), count: storage.byteCount, path: path)
        let magic = try r.u32("magic")
        guard magic == 0x4655_4747 else {
            throw .format("\(path): not a GGUF file (magic \(hex(magic)), expected \"GGUF\")")
        }
        version = try r.u32("version")
        guard version == 2 || version == 3 else {
            throw .unsupported("\(path): GGUF version \(version) (supported: 2, 3)")
        }
        let nTensors = try r.u64("tensor_count")
        let nKV = try r.u64("metadata_kv_count")
        guard nTensors <= UInt64(GGUFFile.maxCount) else { throw .format("\(path): tensor_count \(nTensors) is absurd") }
        guard nKV <= UInt64(GGUFFile.maxCount) else { throw .format("\(path): metadata_kv_count \(nKV) is absurd") }

        var keys: [String] = []
        var md: [String: GGUFValue] = [:]
        for i in 0..<Int(nKV) {
            let key = try r.string("metadata key #\(i)")
            let type = try r.u32("type of \(key)")
            let value = try r.value(type: type, what: key, depth: 0)
            // A repeated key could show different values to readers that keep the first or the last
            // (llama.cpp refuses it too).
            guard md[key] == nil else { throw .format("\(path): duplicate metadata key \(key) (entry #\(i))") }
            keys.append(key)
            md[key] = value
        }
        metadataKeys = keys
        metadata = md

        var align = 32
        if let a = md["general.alignment"] {
            switch a {
            case .uint8, .uint16, .uint32, .uint64, .int8, .int16, .int32, .int64: break
            default: throw .format("\(path): general.alignment \(a) is not an integer")
            }
            guard let v = a.int, v > 0, v <= 1 << 20, v & (v - 1) == 0 else {
                throw .format("\(path): general.alignment \(a) is not a power of two in 1...\(1 << 20)")
            }
            align = v
        }
        alignment = align

        var infos: [GGUFTensorInfo] = []
        var index: [String: Int] = [:]
        for i in 0..<Int(nTensors) {
            let name = try r.string("tensor #\(i) name")
            let nDims = try r.u32("n_dims of \(name)")
            guard nDims >= 1, nDims <= 4 else { throw .format("\(path): tensor \(name): n_dims \(nDims) outside 1...4") }
            var ne: [Int] = []
            for d in 0..<Int(nDims) {
                let v = try r.u64("dim \(d) of \(name)")
                guard v <= UInt64(1 << 40) else { throw .format("\(path): tensor \(name): dimension \(v) is absurd") }
                ne.append(Int(v))
            }
            let type = try r.u32("type of \(name)")
            let off = try r.u64("offset of \(name)")
            guard off <= UInt64(storage.byteCount) else {
                throw .format("\(path): tensor \(name): offset \(off) is beyond the file size \(storage.byteCount)")
            }
            guard index[name] == nil else { throw .format("\(path): duplicate tensor name \(name)") }
            index[name] = infos.count
            infos.append(GGUFTensorInfo(name: name, shape: ne.reversed(), ggmlType: type, offset: Int(off)))
        }
        tensors = infos
        tensorIndex = index
        dataOffset = (r.position + align - 1) / align * align
        guard dataOffset <= storage.byteCount || infos.isEmpty else {
            throw .format("\(path): data section starts at \(dataOffset), beyond the file size \(storage.byteCount)")
        }
        // Validate every tensor's extent now, so later views cannot fail or read outside the map.
        for t in infos {
            guard t.offset % align == 0 else {
                throw .format("\(path): tensor \(t.name): offset \(t.offset) is not aligned to \(align)")
            }
            guard let dt = t.dtype else { continue }  // unsupported types are reported when used
            let bytes: Int
            do { bytes = try Tensor.byteCount(shape: t.shape, dtype: dt) } catch {
                throw .format("\(path): tensor \(t.name) (\(t.shape) \(dt)): \(error.message)")
            }
            let start = dataOffset + t.offset
            guard start <= storage.byteCount, bytes <= storage.byteCount - start else {
                throw .format("\(path): tensor \(t.name) (\(t.shape) \(dt), \(bytes) bytes at \(start)) extends beyond the end of the file (\(storage.byteCount) bytes): truncated file?")
            }
        }
    }

    /// The tensor named `name`, viewing the memory map (no copy).
    public func tensor(_ name: String) throws(LKError) -> Tensor {
        guard let i = tensorIndex[name] else { throw .format("\(path): missing tensor \(name)") }
        let info = tensors[i]
        guard let dt = info.dtype else {
            throw .unsupported("\(path): tensor \(name) has ggml type \(GGMLType.name(info.ggmlType)), which LoRAKit does not support (supported: F32, F16, BF16, Q8_0, Q4_0, Q4_1)")
        }
        return try Tensor(storage: storage, offset: dataOffset + info.offset, shape: info.shape, dtype: dt)
    }

    public func has(_ name: String) -> Bool { tensorIndex[name] != nil }

    // Typed metadata accessors that name the key and file on error.
    public func int(_ key: String) throws(LKError) -> Int {
        guard let v = metadata[key] else { throw .format("\(path): missing metadata \(key)") }
        guard let i = v.int else { throw .format("\(path): metadata \(key) is not an integer (\(v))") }
        return i
    }
    public func int(_ key: String, default d: Int) throws(LKError) -> Int {
        metadata[key] == nil ? d : try int(key)
    }
    public func double(_ key: String) throws(LKError) -> Double {
        guard let v = metadata[key] else { throw .format("\(path): missing metadata \(key)") }
        guard let x = v.double else { throw .format("\(path): metadata \(key) is not a number (\(v))") }
        return x
    }
    public func double(_ key: String, default d: Double) throws(LKError) -> Double {
        metadata[key] == nil ? d : try double(key)
    }
    public func string(_ key: String) throws(LKError) -> String {
        guard let v = metadata[key] else { throw .format("\(path): missing metadata \(key)") }
        guard let s = v.string else { throw .format("\(path): metadata \(key) is not a string") }
        return s
    }
}

/// Bounds-checked little-endian reader over a byte range.
struct ByteReader {
    let base: UnsafeRawPointer
    let count: Int
    let path: String
    var position = 0
    /// Array elements read so far (a `GGUFValue` takes ~20× the bytes of a u8 element: capped).
    var values = 0

    /// Most array elements accepted in one file's metadata (the largest vocabularies, ~260k tokens with
    /// their types, scores and merges, hold under 2^21).
    static let maxValues = 1 << 24

    /// The fewest bytes a value of GGUF type `type` takes in the file, or nil for an unknown type.
    static func minimumSize(type: UInt32) -> Int? {
        switch type {
        case 0, 1, 7: return 1        // u8, i8, bool
        case 2, 3: return 2           // u16, i16
        case 4, 5, 6: return 4        // u32, i32, f32
        case 8, 10, 11, 12: return 8  // string (its u64 length), u64, i64, f64
        case 9: return 12             // array (u32 element type, u64 length)
        default: return nil
        }
    }

    mutating func need(_ n: Int, _ what: @autoclosure () -> String) throws(LKError) {
        guard n >= 0, n <= count - position else {
            throw .format("\(path): truncated file: reading \(what()) needs \(n) bytes at offset \(position), file has \(count)")
        }
    }
    mutating func u8(_ what: @autoclosure () -> String) throws(LKError) -> UInt8 {
        try need(1, what()); defer { position += 1 }
        return base.load(fromByteOffset: position, as: UInt8.self)
    }
    mutating func u16(_ what: @autoclosure () -> String) throws(LKError) -> UInt16 {
        try need(2, what()); defer { position += 2 }
        return UInt16(littleEndian: base.loadUnaligned(fromByteOffset: position, as: UInt16.self))
    }
    mutating func u32(_ what: @autoclosure () -> String) throws(LKError) -> UInt32 {
        try need(4, what()); defer { position += 4 }
        return UInt32(littleEndian: base.loadUnaligned(fromByteOffset: position, as: UInt32.self))
    }
    mutating func u64(_ what: @autoclosure () -> String) throws(LKError) -> UInt64 {
        try need(8, what()); defer { position += 8 }
        return UInt64(littleEndian: base.loadUnaligned(fromByteOffset: position, as: UInt64.self))
    }
    mutating func string(_ what: @autoclosure () -> String) throws(LKError) -> String {
        let n = try u64("length of \(what())")
        guard n <= UInt64(count - position) else {
            throw .format("\(path): truncated file or corrupt length: \(what()) claims \(n) bytes at offset \(position), file has \(count)")
        }
        let len = Int(n)
        let s = String(decoding: UnsafeRawBufferPointer(start: base + position, count: len), as: UTF8.self)
        position += len
        return s
    }

    mutating func value(type: UInt32, what: @autoclosure () -> String, depth: Int) throws(LKError) -> GGUFValue {
        switch type {
        case 0: return .uint8(try u8(what()))
        case 1: return .int8(Int8(bitPattern: try u8(what())))
        case 2: return .uint16(try u16(what()))
        case 3: return .int16(Int16(bitPattern: try u16(what())))
        case 4: return .uint32(try u32(what()))
        case 5: return .int32(Int32(bitPattern: try u32(what())))
        case 6: return .float32(Float(bitPattern: try u32(what())))
        case 7:
            let b = try u8(what())
            guard b <= 1 else { throw .format("\(path): \(what()): bool value \(b) at offset \(position - 1)") }
            return .bool(b == 1)
        case 8: return .string(try string(what()))
        case 9:
            guard depth < 4 else { throw .format("\(path): \(what()): arrays nested too deeply") }
            let et = try u32("element type of \(what())")
            // Checked even for an empty array, so every value read has a known type.
            guard let minBytes = ByteReader.minimumSize(type: et) else {
                throw .format("\(path): \(what()): unknown array element type \(et) at offset \(position - 4)")
            }
            let n = try u64("length of \(what())")
            // Every element takes at least `minBytes` bytes: a length beyond the remaining bytes is corrupt
            // (checked before anything is reserved for the elements).
            guard n <= UInt64((count - position) / minBytes) else {
                throw .format("\(path): \(what()): array of \(n) elements of type \(et) needs at least \(n) × \(minBytes) bytes, the file has \(count - position) left")
            }
            values += Int(n)
            guard values <= ByteReader.maxValues else {
                throw .format("\(path): \(what()): the metadata holds more than \(ByteReader.maxValues) array elements")
            }
            var out: [GGUFValue] = []
            out.reserveCapacity(Int(n))
            for i in 0..<Int(n) {
                out.append(try value(type: et, what: "\(what())[\(i)]", depth: depth + 1))
            }
            return .array(elementType: et, out)
        case 10: return .uint64(try u64(what()))
        case 11: return .int64(Int64(bitPattern: try u64(what())))
        case 12: return .float64(Double(bitPattern: try u64(what())))
        default:
            throw .format("\(path): \(what()): unknown metadata value type \(type) at offset \(position - 4)")
        }
    }
}

func hex(_ v: UInt32) -> String { "0x" + String(v, radix: 16) }

// MARK: - Writing

/// Builds a GGUF v3 file in memory order and writes it atomically.
public struct GGUFWriter {
    public var metadata: [(String, GGUFValue)] = []
    public var tensors: [(name: String, tensor: Tensor)] = []
    public var alignment = 32

    public init() {}

    public mutating func set(_ key: String, _ value: GGUFValue) {
        if let i = metadata.firstIndex(where: { $0.0 == key }) { metadata[i].1 = value } else { metadata.append((key, value)) }
    }

    /// Add a tensor (contiguous; shape outermost first).
    public mutating func add(_ name: String, _ tensor: Tensor) throws(LKError) {
        guard tensor.isContiguous else { throw .unsupported("GGUF writer: tensor \(name) is not contiguous") }
        guard tensor.rank >= 1, tensor.rank <= 4 else { throw .unsupported("GGUF writer: tensor \(name) has rank \(tensor.rank)") }
        guard !tensors.contains(where: { $0.name == name }) else { throw .invalidArgument("GGUF writer: duplicate tensor \(name)") }
        tensors.append((name, tensor))
    }

    /// Write to `path` through a temporary file in the same folder, fsync, then rename: a crash leaves
    /// either the old file or the new one, never a partial file.
    public func write(to path: String) throws(LKError) {
        var out = ByteWriter()
        out.u32(0x4655_4747)
        out.u32(3)
        out.u64(UInt64(tensors.count))
        var md = metadata
        if alignment != 32, !md.contains(where: { $0.0 == "general.alignment" }) {
            md.append(("general.alignment", .uint32(UInt32(alignment))))
        }
        out.u64(UInt64(md.count))
        for (k, v) in md {
            out.string(k)
            out.u32(v.typeID)
            out.value(v)
        }
        var offset = 0
        var offsets: [Int] = []
        for (name, t) in tensors {
            out.string(name)
            out.u32(UInt32(t.rank))
            for d in t.shape.reversed() { out.u64(UInt64(d)) }
            out.u32(GGMLType.id(t.dtype))
            out.u64(UInt64(offset))
            offsets.append(offset)
            offset += (t.byteCount + alignment - 1) / alignment * alignment
        }
        out.pad(to: alignment)
        let header = out.bytes
        try AtomicFile.write(path: path) { (fd: Int32) throws(LKError) in
            try writeAll(fd, header, path: path)
            var pos = 0
            for (i, (_, t)) in tensors.enumerated() {
                if offsets[i] > pos { try writeZeros(fd, offsets[i] - pos, path: path); pos = offsets[i] }
                try writeAll(fd, UnsafeRawBufferPointer(start: t.rawPointer, count: t.byteCount), path: path)
                pos += t.byteCount
            }
            let end = (pos + alignment - 1) / alignment * alignment
            if end > pos { try writeZeros(fd, end - pos, path: path) }
        }
    }
}

struct ByteWriter {
    var bytes: [UInt8] = []
    mutating func u8(_ v: UInt8) { bytes.append(v) }
    mutating func u16(_ v: UInt16) { withUnsafeBytes(of: v.littleEndian) { bytes.append(contentsOf: $0) } }
    mutating func u32(_ v: UInt32) { withUnsafeBytes(of: v.littleEndian) { bytes.append(contentsOf: $0) } }
    mutating func u64(_ v: UInt64) { withUnsafeBytes(of: v.littleEndian) { bytes.append(contentsOf: $0) } }
    mutating func string(_ s: String) { let u = Array(s.utf8); u64(UInt64(u.count)); bytes.append(contentsOf: u) }
    mutating func pad(to a: Int) { while bytes.count % a != 0 { bytes.append(0) } }
    mutating func value(_ v: GGUFValue) {
        switch v {
        case .uint8(let x): u8(x)
        case .int8(let x): u8(UInt8(bitPattern: x))
        case .uint16(let x): u16(x)
        case .int16(let x): u16(UInt16(bitPattern: x))
        case .uint32(let x): u32(x)
        case .int32(let x): u32(UInt32(bitPattern: x))
        case .uint64(let x): u64(x)
        case .int64(let x): u64(UInt64(bitPattern: x))
        case .float32(let x): u32(x.bitPattern)
        case .float64(let x): u64(x.bitPattern)
        case .bool(let b): u8(b ? 1 : 0)
        case .string(let s): string(s)
        case .array(let et, let items):
            u32(et)
            u64(UInt64(items.count))
            for it in items { value(it) }
        }
    }
}
