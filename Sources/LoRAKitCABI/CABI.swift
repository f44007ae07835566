// The C ABI of LoRAKit: thin @_cdecl shims over the Swift core. Declarations live in Include/lorakit.h.
//
// Every shim validates its pointers and handles, calls the core inside `guarded`, and turns any thrown
// LKError into a status code plus a thread-local message. No trap is reachable from C with bad input.
import LoRAKit
import Synchronization
#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

// MARK: - Status codes (mirror lorakit.h)

enum LKStatus {
    static let ok: Int32 = 0
    static let stopped: Int32 = 1
    static let invalidArgument: Int32 = -1
    static let invalidHandle: Int32 = -2
    static let shape: Int32 = -3
    static let unsupported: Int32 = -4
    static let io: Int32 = -5
    static let format: Int32 = -6
    static let outOfMemory: Int32 = -7
    static let abi: Int32 = -8
    static let bufferTooSmall: Int32 = -9
    static let `internal`: Int32 = -100
}

/// An error that carries its own status code (for C-only conditions such as a small buffer).
struct CError: Error {
    let status: Int32
    let message: String
}

func statusCode(_ e: LKError) -> Int32 {
    switch e {
    case .invalidArgument: return LKStatus.invalidArgument
    case .shapeMismatch: return LKStatus.shape
    case .unsupported: return LKStatus.unsupported
    case .io: return LKStatus.io
    case .format: return LKStatus.format
    case .outOfMemory: return LKStatus.outOfMemory
    case .invalidHandle: return LKStatus.invalidHandle
    case .abiMismatch: return LKStatus.abi
    case .internal: return LKStatus.internal
    }
}

// MARK: - Thread-local last error

enum LastError {
    static let key: pthread_key_t = {
        var k = pthread_key_t()
        pthread_key_create(&k) { raw in
            #if canImport(Darwin)
            free(raw)
            #else
            if let raw { free(raw) }
            #endif
        }
        return k
    }()
    nonisolated(unsafe) static let empty: UnsafeMutablePointer<CChar> = strdup("")!

    static func set(_ message: String) {
        let old = pthread_getspecific(key)
        let new = strdup(message)
        pthread_setspecific(key, new.map { UnsafeMutableRawPointer($0) })
        free(old)
    }

    static func clear() {
        let old = pthread_getspecific(key)
        pthread_setspecific(key, nil)
        free(old)
    }

    static func get() -> UnsafePointer<CChar> {
        if let p = pthread_getspecific(key) { return UnsafePointer(p.assumingMemoryBound(to: CChar.self)) }
        return UnsafePointer(empty)
    }
}

func fail(_ status: Int32, _ message: String) -> Int32 {
    LastError.set(message)
    return status
}

/// Run `body`, mapping errors to status codes. `function` names the C function in messages.
@inline(__always)
func guarded(_ function: String, _ body: () throws -> Int32) -> Int32 {
    do {
        return try body()
    } catch let e as LKError {
        return fail(statusCode(e), "\(function): \(e.message)")
    } catch let e as CError {
        return fail(e.status, "\(function): \(e.message)")
    } catch {
        return fail(LKStatus.internal, "\(function): \(error)")
    }
}

// MARK: - Handles

/// Handles given to C are never raw object addresses: they are unique, never-reused tokens looked up
/// in a registry, so a freed or forged handle is detected instead of dereferenced.
enum HandleKind: UInt8 { case tensor = 1, model, context, adapter, plugin, trainer, dataset }

final class Handles: @unchecked Sendable {
    static let shared = Handles()
    /// A registry entry. The objects are the library's own thread-safe classes (models, contexts, …),
    /// whose per-use locking is their own; the registry only hands out references.
    private struct Entry: @unchecked Sendable { let kind: HandleKind; let object: AnyObject }
    private let lock = Mutex<[UInt: Entry]>([:])
    private let counter = Atomic<UInt>(1)

    func register(_ object: AnyObject, kind: HandleKind) -> OpaquePointer {
        // Tokens are 16-aligned, start high, and grow monotonically: never NULL, never reused.
        let id = (0x10_0000 + counter.wrappingAdd(1, ordering: .relaxed).oldValue) << 4
        lock.withLock { $0[id] = Entry(kind: kind, object: object) }
        return OpaquePointer(bitPattern: id)!
    }

    func lookup<T: AnyObject>(_ handle: OpaquePointer?, kind: HandleKind, as: T.Type, what: String) throws -> T {
        guard let handle else { throw CError(status: LKStatus.invalidHandle, message: "\(what) is NULL") }
        let id = UInt(bitPattern: Int(bitPattern: UnsafeRawPointer(handle)))
        guard let entry = lock.withLock({ $0[id] }) else {
            throw CError(status: LKStatus.invalidHandle, message: "\(what) is not a live handle (freed or never created)")
        }
        guard entry.kind == kind, let typed = entry.object as? T else {
            throw CError(status: LKStatus.invalidHandle, message: "\(what) is a \(entry.kind) handle, expected \(kind)")
        }
        return typed
    }

    /// Remove a handle; returns the object, or throws if it is not live or of another kind.
    @discardableResult
    func remove(_ handle: OpaquePointer, kind: HandleKind, what: String) throws -> AnyObject {
        let id = UInt(bitPattern: Int(bitPattern: UnsafeRawPointer(handle)))
        let result: Result<Entry, CError> = lock.withLock { table in
            guard let e = table[id] else {
                return .failure(CError(status: LKStatus.invalidHandle, message: "\(what) is not a live handle (already freed or never created)"))
            }
            guard e.kind == kind else {
                return .failure(CError(status: LKStatus.invalidHandle, message: "\(what) is a \(e.kind) handle, expected \(kind)"))
            }
            table[id] = nil
            return .success(e)
        }
        return try result.get().object
    }
}

final class TensorBox {
    let tensor: Tensor
    init(_ t: Tensor) { tensor = t }
}

// MARK: - Argument helpers

func requirePointer<T>(_ p: UnsafePointer<T>?, _ name: String) throws -> UnsafePointer<T> {
    guard let p else { throw CError(status: LKStatus.invalidArgument, message: "\(name) is NULL") }
    return p
}

func requirePointer<T>(_ p: UnsafeMutablePointer<T>?, _ name: String) throws -> UnsafeMutablePointer<T> {
    guard let p else { throw CError(status: LKStatus.invalidArgument, message: "\(name) is NULL") }
    return p
}

func dtypeArg(_ raw: Int32, _ name: String = "dtype") throws -> DType {
    guard let d = DType(rawValue: raw) else {
        throw CError(status: LKStatus.invalidArgument, message: "\(name) \(raw) is not a known lk_dtype (0...\(DType.allCases.count - 1))")
    }
    return d
}

let maxDims: Int32 = 8

func shapeArg(_ nDims: Int32, _ shape: UnsafePointer<Int64>?) throws -> [Int] {
    guard nDims >= 1, nDims <= maxDims else {
        throw CError(status: LKStatus.invalidArgument, message: "n_dims \(nDims) is outside 1...\(maxDims)")
    }
    let s = try requirePointer(shape, "shape")
    var out: [Int] = []
    for i in 0..<Int(nDims) {
        let d = s[i]
        guard d >= 0 else { throw CError(status: LKStatus.invalidArgument, message: "shape[\(i)] = \(d) is negative") }
        guard d <= Int64(Int.max) else { throw CError(status: LKStatus.invalidArgument, message: "shape[\(i)] = \(d) is too large") }
        out.append(Int(d))
    }
    return out
}

// MARK: - Library

@_cdecl("lk_abi_version")
public func lk_abi_version() -> Int32 { LoRAKitVersion.abi }

nonisolated(unsafe) let versionCString: UnsafeMutablePointer<CChar> = strdup(LoRAKitVersion.string)!

@_cdecl("lk_version_string")
public func lk_version_string() -> UnsafePointer<CChar> { UnsafePointer(versionCString) }

@_cdecl("lk_last_error")
public func lk_last_error() -> UnsafePointer<CChar> { LastError.get() }

@_cdecl("lk_clear_error")
public func lk_clear_error() { LastError.clear() }

nonisolated(unsafe) let statusStrings: [Int32: UnsafeMutablePointer<CChar>] = [
    LKStatus.ok: strdup("ok")!,
    LKStatus.stopped: strdup("stopped by callback")!,
    LKStatus.invalidArgument: strdup("invalid argument")!,
    LKStatus.invalidHandle: strdup("invalid handle")!,
    LKStatus.shape: strdup("shape or dtype mismatch")!,
    LKStatus.unsupported: strdup("unsupported")!,
    LKStatus.io: strdup("I/O error")!,
    LKStatus.format: strdup("malformed file")!,
    LKStatus.outOfMemory: strdup("out of memory")!,
    LKStatus.abi: strdup("ABI mismatch")!,
    LKStatus.bufferTooSmall: strdup("buffer too small")!,
    LKStatus.internal: strdup("internal error")!,
]
nonisolated(unsafe) let unknownStatus: UnsafeMutablePointer<CChar> = strdup("unknown status")!

@_cdecl("lk_status_string")
public func lk_status_string(_ status: Int32) -> UnsafePointer<CChar> {
    UnsafePointer(statusStrings[status] ?? unknownStatus)
}

nonisolated(unsafe) let dtypeNames: [UnsafeMutablePointer<CChar>] = DType.allCases.map { strdup($0.description)! }

@_cdecl("lk_dtype_name")
public func lk_dtype_name(_ dtype: Int32) -> UnsafePointer<CChar>? {
    guard let d = DType(rawValue: dtype) else { return nil }
    return UnsafePointer(dtypeNames[Int(d.rawValue)])
}

@_cdecl("lk_dtype_info")
public func lk_dtype_info(_ dtype: Int32, _ blockSize: UnsafeMutablePointer<Int64>?,
                          _ blockBytes: UnsafeMutablePointer<Int64>?) -> Int32 {
    guarded("lk_dtype_info") {
        let d = try dtypeArg(dtype)
        let bs = try requirePointer(blockSize, "block_size")
        let bb = try requirePointer(blockBytes, "block_bytes")
        bs.pointee = Int64(d.blockSize)
        bb.pointee = Int64(d.blockBytes)
        return LKStatus.ok
    }
}

@_cdecl("lk_cpu_count")
public func lk_cpu_count() -> Int32 { Int32(ThreadPool.hardwareConcurrency) }

/// The pool used by context-free calls. Replaced (not mutated) by lk_set_default_threads, so a call in
/// flight keeps the pool it started with.
let defaultPool = Mutex<ThreadPool?>(nil)

func currentDefaultPool() -> ThreadPool {
    defaultPool.withLock { p in
        if let p { return p }
        let np = ThreadPool(threads: ThreadPool.hardwareConcurrency)
        p = np
        return np
    }
}

@_cdecl("lk_set_default_threads")
public func lk_set_default_threads(_ n: Int32) -> Int32 {
    guarded("lk_set_default_threads") {
        guard n >= 1, n <= 512 else {
            throw CError(status: LKStatus.invalidArgument, message: "n_threads \(n) is outside 1...512")
        }
        let pool = ThreadPool(threads: Int(n))
        defaultPool.withLock { $0 = pool }
        return LKStatus.ok
    }
}

@_cdecl("lk_get_default_threads")
public func lk_get_default_threads() -> Int32 { Int32(currentDefaultPool().activeCount) }

// MARK: - Tensors

func tensorArg(_ h: OpaquePointer?, _ name: String) throws -> Tensor {
    try Handles.shared.lookup(h, kind: .tensor, as: TensorBox.self, what: name).tensor
}

func returnTensor(_ t: Tensor, _ out: UnsafeMutablePointer<OpaquePointer?>) -> Int32 {
    out.pointee = Handles.shared.register(TensorBox(t), kind: .tensor)
    return LKStatus.ok
}

@_cdecl("lk_tensor_new")
public func lk_tensor_new(_ dtype: Int32, _ nDims: Int32, _ shape: UnsafePointer<Int64>?,
                          _ out: UnsafeMutablePointer<OpaquePointer?>?) -> Int32 {
    guarded("lk_tensor_new") {
        let o = try requirePointer(out, "out")
        let d = try dtypeArg(dtype)
        let s = try shapeArg(nDims, shape)
        return returnTensor(try Tensor(zeros: s, dtype: d), o)
    }
}

@_cdecl("lk_tensor_from_f32")
public func lk_tensor_from_f32(_ data: UnsafePointer<Float>?, _ nValues: Int64, _ dtype: Int32, _ nDims: Int32,
                               _ shape: UnsafePointer<Int64>?, _ out: UnsafeMutablePointer<OpaquePointer?>?) -> Int32 {
    guarded("lk_tensor_from_f32") {
        let o = try requirePointer(out, "out")
        let d = try dtypeArg(dtype)
        let s = try shapeArg(nDims, shape)
        let count = try checkedProduct(s, what: "shape")
        guard nValues >= 0 else {
            throw CError(status: LKStatus.invalidArgument, message: "n_values \(nValues) is negative")
        }
        guard nValues == Int64(count) else {
            throw CError(status: LKStatus.shape, message: "n_values \(nValues) does not match shape \(s) (\(count) elements)")
        }
        if count > 0 { _ = try requirePointer(data, "data") }
        let f = try Tensor(zeros: s, dtype: .f32)
        if count > 0, let data { f.f32.update(from: data, count: count) }
        let t = d == .f32 ? f : try f.converted(to: d)
        return returnTensor(t, o)
    }
}

@_cdecl("lk_tensor_convert")
public func lk_tensor_convert(_ t: OpaquePointer?, _ dtype: Int32, _ out: UnsafeMutablePointer<OpaquePointer?>?) -> Int32 {
    guarded("lk_tensor_convert") {
        let o = try requirePointer(out, "out")
        let src = try tensorArg(t, "t")
        let d = try dtypeArg(dtype)
        return returnTensor(try src.converted(to: d), o)
    }
}

@_cdecl("lk_tensor_free")
public func lk_tensor_free(_ t: OpaquePointer?) -> Int32 {
    guarded("lk_tensor_free") {
        guard let t else { return LKStatus.ok }
        try Handles.shared.remove(t, kind: .tensor, what: "t")
        return LKStatus.ok
    }
}

@_cdecl("lk_tensor_shape")
public func lk_tensor_shape(_ t: OpaquePointer?, _ nDims: UnsafeMutablePointer<Int32>?,
                            _ shape: UnsafeMutablePointer<Int64>?, _ capacity: Int32) -> Int32 {
    guarded("lk_tensor_shape") {
        let tensor = try tensorArg(t, "t")
        let nd = try requirePointer(nDims, "n_dims")
        guard capacity >= 0 else { throw CError(status: LKStatus.invalidArgument, message: "capacity \(capacity) is negative") }
        // *n_dims is written on success and with LK_ERR_BUFFER_TOO_SMALL (the needed capacity), never on
        // another error (a NULL shape with a capacity used to get *n_dims written, then an error).
        if capacity == 0 && shape == nil {
            nd.pointee = Int32(tensor.rank)
            return LKStatus.ok
        }
        guard Int(capacity) >= tensor.rank else {
            nd.pointee = Int32(tensor.rank)
            throw CError(status: LKStatus.bufferTooSmall, message: "capacity \(capacity) < n_dims \(tensor.rank)")
        }
        let s = try requirePointer(shape, "shape")
        for (i, d) in tensor.shape.enumerated() { s[i] = Int64(d) }
        nd.pointee = Int32(tensor.rank)
        return LKStatus.ok
    }
}

@_cdecl("lk_tensor_dtype")
public func lk_tensor_dtype(_ t: OpaquePointer?, _ dtype: UnsafeMutablePointer<Int32>?) -> Int32 {
    guarded("lk_tensor_dtype") {
        let tensor = try tensorArg(t, "t")
        try requirePointer(dtype, "dtype").pointee = tensor.dtype.rawValue
        return LKStatus.ok
    }
}

@_cdecl("lk_tensor_size")
public func lk_tensor_size(_ t: OpaquePointer?, _ nElements: UnsafeMutablePointer<Int64>?,
                           _ nBytes: UnsafeMutablePointer<Int64>?) -> Int32 {
    guarded("lk_tensor_size") {
        let tensor = try tensorArg(t, "t")
        let ne = try requirePointer(nElements, "n_elements")
        let nb = try requirePointer(nBytes, "n_bytes")
        ne.pointee = Int64(tensor.count)
        nb.pointee = Int64(tensor.byteCount)
        return LKStatus.ok
    }
}

@_cdecl("lk_tensor_copy_to_f32")
public func lk_tensor_copy_to_f32(_ t: OpaquePointer?, _ dst: UnsafeMutablePointer<Float>?, _ capacity: Int64) -> Int32 {
    guarded("lk_tensor_copy_to_f32") {
        let tensor = try tensorArg(t, "t")
        guard capacity >= 0 else { throw CError(status: LKStatus.invalidArgument, message: "capacity \(capacity) is negative") }
        let n = tensor.count
        guard capacity >= Int64(n) else {
            throw CError(status: LKStatus.bufferTooSmall, message: "capacity \(capacity) < \(n) elements")
        }
        if n == 0 { return LKStatus.ok }
        let d = try requirePointer(dst, "dst")
        let values = tensor.toFloats()
        values.withUnsafeBufferPointer { d.update(from: $0.baseAddress!, count: n) }
        return LKStatus.ok
    }
}

@_cdecl("lk_tensor_copy_bytes")
public func lk_tensor_copy_bytes(_ t: OpaquePointer?, _ dst: UnsafeMutableRawPointer?, _ capacity: Int64) -> Int32 {
    guarded("lk_tensor_copy_bytes") {
        let tensor = try tensorArg(t, "t")
        guard capacity >= 0 else { throw CError(status: LKStatus.invalidArgument, message: "capacity \(capacity) is negative") }
        let n = tensor.byteCount
        guard capacity >= Int64(n) else {
            throw CError(status: LKStatus.bufferTooSmall, message: "capacity \(capacity) < \(n) bytes")
        }
        if n == 0 { return LKStatus.ok }
        guard let dst else { throw CError(status: LKStatus.invalidArgument, message: "dst is NULL") }
        guard tensor.isContiguous else { throw CError(status: LKStatus.unsupported, message: "tensor is a strided view") }
        dst.copyMemory(from: tensor.rawPointer, byteCount: n)
        return LKStatus.ok
    }
}

// MARK: - Ops

@_cdecl("lk_matmul")
public func lk_matmul(_ x: OpaquePointer?, _ w: OpaquePointer?, _ transposeW: Int32, _ out: OpaquePointer?) -> Int32 {
    guarded("lk_matmul") {
        let xt = try tensorArg(x, "x")
        let wt = try tensorArg(w, "w")
        let ot = try tensorArg(out, "out")
        guard xt.storage !== ot.storage, wt.storage !== ot.storage else {
            throw CError(status: LKStatus.invalidArgument, message: "out must not share storage with x or w")
        }
        try Linear.matmul(x: xt, weight: wt, transposeWeight: transposeW != 0, out: ot, pool: currentDefaultPool())
        return LKStatus.ok
    }
}

// MARK: - String helpers (model, tokenizer and chat functions)

/// Copy `bytes` plus a NUL into a caller buffer of `capacity` bytes; `*needed` receives bytes + 1 either
/// way. A too-small capacity returns LK_ERR_BUFFER_TOO_SMALL and leaves `buf` untouched. `buf` may be
/// NULL when capacity is 0 (a size query). `terminate: false` copies the bytes only (lk_token_bytes).
func copyBytes<C: Collection<UInt8>>(_ bytes: C, buf: UnsafeMutablePointer<CChar>?, capacity: Int64,
                                     needed: UnsafeMutablePointer<Int64>?, terminate: Bool = true) throws -> Int32 {
    let nd = try requirePointer(needed, "needed")
    guard capacity >= 0 else { throw CError(status: LKStatus.invalidArgument, message: "capacity \(capacity) is negative") }
    if capacity > 0 && buf == nil { throw CError(status: LKStatus.invalidArgument, message: "buf is NULL but capacity is \(capacity)") }
    let count = bytes.count
    let need = Int64(count) + (terminate ? 1 : 0)
    nd.pointee = need
    guard capacity >= need else {
        throw CError(status: LKStatus.bufferTooSmall, message: "capacity \(capacity) is smaller than the \(need) bytes needed\(terminate ? " (including the NUL)" : "")")
    }
    if need == 0 { return LKStatus.ok }
    let b = UnsafeMutableRawPointer(buf!).assumingMemoryBound(to: UInt8.self)
    var i = 0
    for x in bytes { b[i] = x; i += 1 }
    if terminate { b[count] = 0 }
    return LKStatus.ok
}

/// `copyBytes` of a string's UTF-8.
func copyString(_ s: String, buf: UnsafeMutablePointer<CChar>?, capacity: Int64,
                needed: UnsafeMutablePointer<Int64>?) throws -> Int32 {
    try copyBytes(s.utf8, buf: buf, capacity: capacity, needed: needed)
}

/// A malloc'ed NUL-terminated copy of `s` (freed by the caller with lk_string_free, i.e. free()).
func mallocString(_ s: String) throws -> UnsafeMutablePointer<CChar> {
    let bytes = Array(s.utf8)
    guard let p = malloc(bytes.count + 1)?.assumingMemoryBound(to: UInt8.self) else {
        throw CError(status: LKStatus.outOfMemory, message: "cannot allocate \(bytes.count + 1) bytes for the text")
    }
    bytes.withUnsafeBufferPointer { p.update(from: $0.baseAddress!, count: bytes.count) }
    p[bytes.count] = 0
    return UnsafeMutableRawPointer(p).assumingMemoryBound(to: CChar.self)
}

/// Byte offset of the first invalid UTF-8 sequence, or nil when `bytes` is valid UTF-8.
func firstInvalidUTF8(_ bytes: UnsafeBufferPointer<UInt8>) -> Int? {
    var parser = Unicode.UTF8.ForwardParser()
    var it = bytes.makeIterator()
    var offset = 0
    while true {
        switch parser.parseScalar(from: &it) {
        case .valid(let enc): offset += enc.count
        case .emptyInput: return nil
        case .error: return offset
        }
    }
}

/// A text length above this (1 TiB) cannot describe a real buffer: it is taken for garbage.
let maxTextBytes: Int64 = 1 << 40

/// `len` bytes of UTF-8 text (NULL allowed when len is 0) as a String; invalid UTF-8 is an error
/// naming the byte offset.
func utf8Arg(_ p: UnsafePointer<CChar>?, _ len: Int64, _ name: String) throws -> String {
    guard len >= 0 else { throw CError(status: LKStatus.invalidArgument, message: "\(name)_len \(len) is negative") }
    if len == 0 { return "" }
    guard let p else { throw CError(status: LKStatus.invalidArgument, message: "\(name) is NULL but \(name)_len is \(len)") }
    // The bytes are read as given, so an implausible length (garbage, INT64_MAX) must be refused before
    // the first read: it used to run the UTF-8 check off the end of the caller's buffer (SIGSEGV).
    guard len <= maxTextBytes else {
        throw CError(status: LKStatus.invalidArgument, message: "\(name)_len \(len) is implausibly large (more than \(maxTextBytes) bytes)")
    }
    let buf = UnsafeBufferPointer(start: UnsafeRawPointer(p).assumingMemoryBound(to: UInt8.self), count: Int(len))
    if let bad = firstInvalidUTF8(buf) {
        throw CError(status: LKStatus.invalidArgument, message: "\(name) is not valid UTF-8 (at byte \(bad))")
    }
    return String(decoding: buf, as: UTF8.self)
}

/// A NUL-terminated UTF-8 C string argument (NULL and invalid UTF-8 are errors naming `name`).
func cStringArg(_ p: UnsafePointer<CChar>?, _ name: String) throws -> String {
    guard let p else { throw CError(status: LKStatus.invalidArgument, message: "\(name) is NULL") }
    return try utf8Arg(p, Int64(strlen(p)), name)
}
