// The C ABI of LoRAKit: thin @_cdecl shims over the Swift core. Include/lorakit.h declares them; its
// types and constants come into Swift through the header-only CLoRAKit target, so the header is their
// only copy.
//
// Each shim maps its arguments in (pointers, handles, C enums and flags; params structs by the rules of
// CABIStructs.swift), calls the core, and maps what it throws out (`guarded`): a status code plus a
// thread-local message. The core validates its options and names the field; the shims check only what
// the core cannot see (NULL, handles, buffers, struct sizes, C strings, flags). No trap is reachable from
// C with bad input.
import CLoRAKit
import LoRAKit
import Synchronization
#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// An error that carries its own status code, for what only the C side sees (a NULL pointer, a handle, a
/// small buffer, a struct size).
struct CError: Error {
    let status: Int
    let message: String
    init(_ status: Int, _ message: String) { self.status = status; self.message = message }
}

func invalid(_ message: String) -> CError { CError(LK_ERR_INVALID_ARGUMENT, message) }

func statusCode(_ e: LKError) -> Int {
    switch e {
    case .invalidArgument, .invalidOption: LK_ERR_INVALID_ARGUMENT
    case .shapeMismatch: LK_ERR_SHAPE
    case .unsupported: LK_ERR_UNSUPPORTED
    case .io: LK_ERR_IO
    case .format: LK_ERR_FORMAT
    case .outOfMemory: LK_ERR_OUT_OF_MEMORY
    case .internal: LK_ERR_INTERNAL
    case .limit: LK_ERR_LIMIT
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
        return cString("")
    }
}

func fail(_ status: Int, _ message: String) -> Int32 {
    LastError.set(message)
    return Int32(truncatingIfNeeded: status)
}

/// Run a shim's body: the status it returns, or the status and message (after the C function's name) of
/// what it threw. A core option error names its field as C spells it: `params->lr`, and
/// `params->sampler->top_k` for the core's nested `sampler.top_k`.
@inline(__always)
func guarded(_ function: String, _ body: () throws -> Int) -> Int32 {
    do {
        return Int32(truncatingIfNeeded: try body())
    } catch let e as LKError {
        let named = e.namingField { "params->" + $0.split(separator: ".").joined(separator: "->") }
        return fail(statusCode(e), "\(function): \(named.message)")
    } catch let e as CError {
        return fail(e.status, "\(function): \(e.message)")
    } catch {
        return fail(LK_ERR_INTERNAL, "\(function): \(error)")
    }
}

// MARK: - Handles

/// Handles given to C are never raw object addresses: they are unique, never-reused tokens looked up
/// in a registry, so a freed or forged handle is detected instead of dereferenced.
enum HandleKind: UInt8 { case tensor = 1, model, context, adapter, trainer, projector, plugin, batch }

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
        guard let handle else { throw CError(LK_ERR_INVALID_HANDLE, "\(what) is NULL") }
        let id = UInt(bitPattern: Int(bitPattern: UnsafeRawPointer(handle)))
        guard let entry = lock.withLock({ $0[id] }) else {
            throw CError(LK_ERR_INVALID_HANDLE, "\(what) is not a live handle (freed or never created)")
        }
        guard entry.kind == kind, let typed = entry.object as? T else {
            throw CError(LK_ERR_INVALID_HANDLE, "\(what) is a \(entry.kind) handle, expected \(kind)")
        }
        return typed
    }

    /// Remove a handle; returns the object, or throws if it is not live or of another kind.
    @discardableResult
    func remove(_ handle: OpaquePointer, kind: HandleKind, what: String) throws -> AnyObject {
        let id = UInt(bitPattern: Int(bitPattern: UnsafeRawPointer(handle)))
        let result: Result<Entry, CError> = lock.withLock { table in
            guard let e = table[id] else {
                return .failure(CError(LK_ERR_INVALID_HANDLE, "\(what) is not a live handle (already freed or never created)"))
            }
            guard e.kind == kind else {
                return .failure(CError(LK_ERR_INVALID_HANDLE, "\(what) is a \(e.kind) handle, expected \(kind)"))
            }
            table[id] = nil
            return .success(e)
        }
        return try result.get().object
    }

    /// `lk_<x>_free`: NULL is a no-op; a freed or foreign handle is an error. A call running on the object
    /// (e.g. from inside its own callback) keeps its reference until it returns.
    func free(_ handle: OpaquePointer?, kind: HandleKind, what: String) throws -> Int {
        if let handle { try remove(handle, kind: kind, what: what) }
        return LK_OK
    }

    /// Register `object` and write its handle to `out`.
    func give(_ object: AnyObject, kind: HandleKind, to out: UnsafeMutablePointer<OpaquePointer?>) -> Int {
        out.pointee = register(object, kind: kind)
        return LK_OK
    }
}

final class TensorBox {
    let tensor: Tensor
    init(_ t: Tensor) { tensor = t }
}

/// A handle object one call uses at a time (contexts, trainers): `busy` turns concurrent or re-entrant
/// use, which the header forbids, into an error instead of a data race.
class ExclusiveBox: @unchecked Sendable {
    let busy = Atomic<Bool>(false)
}

/// Run `body` with exclusive use of the object behind `h` (`rule` says why in the "in use" error).
func exclusive<B: ExclusiveBox, R>(_ h: OpaquePointer?, _ kind: HandleKind, _ name: String, rule: String,
                                   _ body: (B) throws -> R) throws -> R {
    let box = try Handles.shared.lookup(h, kind: kind, as: B.self, what: name)
    guard box.busy.compareExchange(expected: false, desired: true, ordering: .acquiring).exchanged else {
        throw invalid("\(name) is in use by another call (\(rule))")
    }
    defer { box.busy.store(false, ordering: .releasing) }
    return try body(box)
}

// MARK: - Argument helpers

func requirePointer<P>(_ p: P?, _ name: String) throws -> P {
    guard let p else { throw invalid("\(name) is NULL") }
    return p
}

/// A C enum value as the core's case, by a table of the header's constants (`names` names them in the
/// error, e.g. "LK_SCHEDULE_*").
func cEnum<T>(_ value: Int32, _ name: String, _ names: String, _ table: KeyValuePairs<Int, T>) throws -> T {
    guard let t = table.first(where: { $0.key == Int(value) }) else {
        throw invalid("\(name) \(value) must be one of \(names) (\(table.map { String($0.key) }.joined(separator: ", ")))")
    }
    return t.value
}

/// A C boolean documented as 0 or 1.
func flag(_ v: Int32, _ name: String) throws -> Bool {
    guard v == 0 || v == 1 else { throw invalid("\(name) \(v) must be 0 or 1") }
    return v == 1
}

/// A non-negative capacity (of a caller buffer).
func capacityArg(_ c: Int64, _ name: String = "capacity") throws -> Int64 {
    guard c >= 0 else { throw invalid("\(name) \(c) is negative") }
    return c
}

let dtypes: KeyValuePairs<Int, DType> = [LK_DTYPE_F32: .f32, LK_DTYPE_F16: .f16, LK_DTYPE_BF16: .bf16,
                                         LK_DTYPE_Q8_0: .q8_0, LK_DTYPE_Q4_0: .q4_0, LK_DTYPE_Q4_1: .q4_1]

func dtypeArg(_ raw: Int32, _ name: String = "dtype") throws -> DType { try cEnum(raw, name, "LK_DTYPE_*", dtypes) }

func cDType(_ d: DType) -> Int32 { Int32(dtypes.first { $0.value == d }?.key ?? -1) }

func shapeArg(_ nDims: Int32, _ shape: UnsafePointer<Int64>?) throws -> [Int] {
    guard nDims >= 1, nDims <= LK_MAX_DIMS else { throw invalid("n_dims \(nDims) is outside 1...\(LK_MAX_DIMS)") }
    let s = try requirePointer(shape, "shape")
    return try (0..<Int(nDims)).map { i in
        guard s[i] >= 0 else { throw invalid("shape[\(i)] = \(s[i]) is negative") }
        return Int(s[i])
    }
}

// MARK: - Library

@_cdecl("lk_abi_version")
public func lk_abi_version() -> Int32 { LK_ABI_VERSION }

nonisolated(unsafe) let versionCString: UnsafeMutablePointer<CChar> = strdup(LoRAKitVersion.string)!

@_cdecl("lk_version_string")
public func lk_version_string() -> UnsafePointer<CChar> { UnsafePointer(versionCString) }

@_cdecl("lk_last_error")
public func lk_last_error() -> UnsafePointer<CChar> { LastError.get() }

@_cdecl("lk_clear_error")
public func lk_clear_error() { LastError.clear() }

/// A static C string (string literals are stored NUL-terminated).
func cString(_ s: StaticString) -> UnsafePointer<CChar> { UnsafeRawPointer(s.utf8Start).assumingMemoryBound(to: CChar.self) }

@_cdecl("lk_status_string")
public func lk_status_string(_ status: Int32) -> UnsafePointer<CChar> {
    switch Int(status) {
    case LK_OK: cString("ok")
    case LK_STOPPED: cString("stopped by callback")
    case LK_ERR_INVALID_ARGUMENT: cString("invalid argument")
    case LK_ERR_INVALID_HANDLE: cString("invalid handle")
    case LK_ERR_SHAPE: cString("shape or dtype mismatch")
    case LK_ERR_UNSUPPORTED: cString("unsupported")
    case LK_ERR_IO: cString("I/O error")
    case LK_ERR_FORMAT: cString("malformed file")
    case LK_ERR_OUT_OF_MEMORY: cString("out of memory")
    case LK_ERR_ABI: cString("ABI mismatch")
    case LK_ERR_BUFFER_TOO_SMALL: cString("buffer too small")
    case LK_ERR_LIMIT: cString("limit exceeded")
    case LK_ERR_INTERNAL: cString("internal error")
    default: cString("unknown status")
    }
}

nonisolated(unsafe) let dtypeNames: [DType: UnsafeMutablePointer<CChar>] =
    Dictionary(uniqueKeysWithValues: DType.allCases.map { ($0, strdup($0.description)!) })

@_cdecl("lk_dtype_name")
public func lk_dtype_name(_ dtype: Int32) -> UnsafePointer<CChar>? {
    (try? dtypeArg(dtype)).flatMap { dtypeNames[$0] }.map { UnsafePointer($0) }
}

@_cdecl("lk_dtype_info")
public func lk_dtype_info(_ dtype: Int32, _ blockSize: UnsafeMutablePointer<Int64>?,
                          _ blockBytes: UnsafeMutablePointer<Int64>?) -> Int32 {
    guarded("lk_dtype_info") {
        let d = try dtypeArg(dtype)
        let bs = try requirePointer(blockSize, "block_size"), bb = try requirePointer(blockBytes, "block_bytes")
        bs.pointee = Int64(d.blockSize)
        bb.pointee = Int64(d.blockBytes)
        return LK_OK
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
        guard n >= 1, n <= 512 else { throw invalid("n_threads \(n) is outside 1...512") }
        let pool = ThreadPool(threads: Int(n))
        defaultPool.withLock { $0 = pool }
        return LK_OK
    }
}

@_cdecl("lk_get_default_threads")
public func lk_get_default_threads() -> Int32 { Int32(currentDefaultPool().activeCount) }

// MARK: - Tensors

func tensorArg(_ h: OpaquePointer?, _ name: String) throws -> Tensor {
    try Handles.shared.lookup(h, kind: .tensor, as: TensorBox.self, what: name).tensor
}

func giveTensor(_ t: Tensor, _ out: UnsafeMutablePointer<OpaquePointer?>) -> Int {
    Handles.shared.give(TensorBox(t), kind: .tensor, to: out)
}

@_cdecl("lk_tensor_new")
public func lk_tensor_new(_ dtype: Int32, _ nDims: Int32, _ shape: UnsafePointer<Int64>?,
                          _ out: UnsafeMutablePointer<OpaquePointer?>?) -> Int32 {
    guarded("lk_tensor_new") {
        let o = try requirePointer(out, "out")
        return giveTensor(try Tensor(zeros: try shapeArg(nDims, shape), dtype: try dtypeArg(dtype)), o)
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
        guard nValues >= 0 else { throw invalid("n_values \(nValues) is negative") }
        guard nValues == Int64(count) else {
            throw CError(LK_ERR_SHAPE, "n_values \(nValues) does not match shape \(s) (\(count) elements)")
        }
        let f = try Tensor(zeros: s, dtype: .f32)
        if count > 0 { f.f32.update(from: try requirePointer(data, "data"), count: count) }
        return giveTensor(d == .f32 ? f : try f.converted(to: d), o)
    }
}

@_cdecl("lk_tensor_convert")
public func lk_tensor_convert(_ t: OpaquePointer?, _ dtype: Int32, _ out: UnsafeMutablePointer<OpaquePointer?>?) -> Int32 {
    guarded("lk_tensor_convert") {
        let o = try requirePointer(out, "out")
        return giveTensor(try tensorArg(t, "t").converted(to: try dtypeArg(dtype)), o)
    }
}

@_cdecl("lk_tensor_free")
public func lk_tensor_free(_ t: OpaquePointer?) -> Int32 {
    guarded("lk_tensor_free") { try Handles.shared.free(t, kind: .tensor, what: "t") }
}

@_cdecl("lk_tensor_shape")
public func lk_tensor_shape(_ t: OpaquePointer?, _ nDims: UnsafeMutablePointer<Int32>?,
                            _ shape: UnsafeMutablePointer<Int64>?, _ capacity: Int32) -> Int32 {
    guarded("lk_tensor_shape") {
        let tensor = try tensorArg(t, "t")
        let nd = try requirePointer(nDims, "n_dims")
        guard capacity >= 0 else { throw invalid("capacity \(capacity) is negative") }
        // *n_dims is written on success and with LK_ERR_BUFFER_TOO_SMALL (the needed capacity), never on
        // another error (a NULL shape with a capacity used to get *n_dims written, then an error).
        if capacity == 0 && shape == nil {
            nd.pointee = Int32(tensor.rank)
            return LK_OK
        }
        guard Int(capacity) >= tensor.rank else {
            nd.pointee = Int32(tensor.rank)
            throw CError(LK_ERR_BUFFER_TOO_SMALL, "capacity \(capacity) < n_dims \(tensor.rank)")
        }
        let s = try requirePointer(shape, "shape")
        for (i, d) in tensor.shape.enumerated() { s[i] = Int64(d) }
        nd.pointee = Int32(tensor.rank)
        return LK_OK
    }
}

@_cdecl("lk_tensor_dtype")
public func lk_tensor_dtype(_ t: OpaquePointer?, _ dtype: UnsafeMutablePointer<Int32>?) -> Int32 {
    guarded("lk_tensor_dtype") {
        let tensor = try tensorArg(t, "t")
        try requirePointer(dtype, "dtype").pointee = cDType(tensor.dtype)
        return LK_OK
    }
}

@_cdecl("lk_tensor_size")
public func lk_tensor_size(_ t: OpaquePointer?, _ nElements: UnsafeMutablePointer<Int64>?,
                           _ nBytes: UnsafeMutablePointer<Int64>?) -> Int32 {
    guarded("lk_tensor_size") {
        let tensor = try tensorArg(t, "t")
        let ne = try requirePointer(nElements, "n_elements"), nb = try requirePointer(nBytes, "n_bytes")
        ne.pointee = Int64(tensor.count)
        nb.pointee = Int64(tensor.byteCount)
        return LK_OK
    }
}

/// Check that a caller buffer of `capacity` units holds `n` (`unit` names them in the error).
func checkFits(_ capacity: Int64, _ n: Int, _ unit: String) throws {
    guard try capacityArg(capacity) >= Int64(n) else { throw CError(LK_ERR_BUFFER_TOO_SMALL, "capacity \(capacity) < \(n) \(unit)") }
}

@_cdecl("lk_tensor_copy_to_f32")
public func lk_tensor_copy_to_f32(_ t: OpaquePointer?, _ dst: UnsafeMutablePointer<Float>?, _ capacity: Int64) -> Int32 {
    guarded("lk_tensor_copy_to_f32") {
        let tensor = try tensorArg(t, "t")
        try checkFits(capacity, tensor.count, "elements")
        if tensor.count > 0 { try requirePointer(dst, "dst").update(from: tensor.toFloats(), count: tensor.count) }
        return LK_OK
    }
}

@_cdecl("lk_tensor_copy_bytes")
public func lk_tensor_copy_bytes(_ t: OpaquePointer?, _ dst: UnsafeMutableRawPointer?, _ capacity: Int64) -> Int32 {
    guarded("lk_tensor_copy_bytes") {
        let tensor = try tensorArg(t, "t")
        try checkFits(capacity, tensor.byteCount, "bytes")
        if tensor.byteCount == 0 { return LK_OK }
        let d = try requirePointer(dst, "dst")
        guard tensor.isContiguous else { throw CError(LK_ERR_UNSUPPORTED, "tensor is a strided view") }
        d.copyMemory(from: tensor.rawPointer, byteCount: tensor.byteCount)
        return LK_OK
    }
}

// MARK: - Ops

@_cdecl("lk_matmul")
public func lk_matmul(_ x: OpaquePointer?, _ w: OpaquePointer?, _ transposeW: Int32, _ out: OpaquePointer?) -> Int32 {
    guarded("lk_matmul") {
        let xt = try tensorArg(x, "x"), wt = try tensorArg(w, "w"), ot = try tensorArg(out, "out")
        guard xt.storage !== ot.storage, wt.storage !== ot.storage else {
            throw invalid("out must not share storage with x or w")
        }
        try Linear.matmul(x: xt, weight: wt, transposeWeight: transposeW != 0, out: ot, pool: currentDefaultPool())
        return LK_OK
    }
}

// MARK: - Strings

/// Copy `bytes` plus a NUL into a caller buffer of `capacity` bytes; `*needed` receives bytes + 1 either
/// way. A too-small capacity returns LK_ERR_BUFFER_TOO_SMALL and leaves `buf` untouched. `buf` may be
/// NULL when capacity is 0 (a size query). `terminate: false` copies the bytes only (lk_token_bytes).
func copyBytes<C: Collection<UInt8>>(_ bytes: C, buf: UnsafeMutablePointer<CChar>?, capacity: Int64,
                                     needed: UnsafeMutablePointer<Int64>?, terminate: Bool = true) throws -> Int {
    let nd = try requirePointer(needed, "needed")
    if try capacityArg(capacity) > 0 && buf == nil { throw invalid("buf is NULL but capacity is \(capacity)") }
    let need = Int64(bytes.count) + (terminate ? 1 : 0)
    nd.pointee = need
    guard capacity >= need else {
        throw CError(LK_ERR_BUFFER_TOO_SMALL, "capacity \(capacity) is smaller than the \(need) bytes needed\(terminate ? " (including the NUL)" : "")")
    }
    guard let buf, need > 0 else { return LK_OK }
    let b = UnsafeMutableRawPointer(buf).assumingMemoryBound(to: UInt8.self)
    _ = UnsafeMutableBufferPointer(start: b, count: bytes.count).initialize(from: bytes)
    if terminate { b[bytes.count] = 0 }
    return LK_OK
}

/// `copyBytes` of a string's UTF-8.
func copyString(_ s: String, buf: UnsafeMutablePointer<CChar>?, capacity: Int64,
                needed: UnsafeMutablePointer<Int64>?) throws -> Int {
    try copyBytes(s.utf8, buf: buf, capacity: capacity, needed: needed)
}

/// A malloc'ed NUL-terminated copy of `s` (freed by the caller with lk_string_free, i.e. free()).
func mallocString(_ s: String) throws -> UnsafeMutablePointer<CChar> {
    let n = s.utf8.count
    guard let p = malloc(n + 1) else { throw CError(LK_ERR_OUT_OF_MEMORY, "cannot allocate \(n + 1) bytes for the text") }
    UnsafeMutableRawBufferPointer(start: p, count: n).copyBytes(from: s.utf8)
    p.storeBytes(of: 0, toByteOffset: n, as: UInt8.self)
    return p.assumingMemoryBound(to: CChar.self)
}

/// A text length above this (1 TiB) cannot describe a real buffer: it is taken for garbage.
let maxTextBytes: Int64 = 1 << 40

/// `len` bytes of UTF-8 text (NULL allowed when len is 0) as a String; invalid UTF-8 is an error
/// naming the byte offset.
func utf8Arg(_ p: UnsafePointer<CChar>?, _ len: Int64, _ name: String) throws -> String {
    guard len >= 0 else { throw invalid("\(name)_len \(len) is negative") }
    if len == 0 { return "" }
    guard let p else { throw invalid("\(name) is NULL but \(name)_len is \(len)") }
    // The bytes are read as given, so an implausible length (garbage, INT64_MAX) must be refused before
    // the first read: it used to run the UTF-8 check off the end of the caller's buffer (SIGSEGV).
    guard len <= maxTextBytes else {
        throw invalid("\(name)_len \(len) is implausibly large (more than \(maxTextBytes) bytes)")
    }
    let buf = UnsafeBufferPointer(start: UnsafeRawPointer(p).assumingMemoryBound(to: UInt8.self), count: Int(len))
    var parser = Unicode.UTF8.ForwardParser(), it = buf.makeIterator(), offset = 0
    while true {
        switch parser.parseScalar(from: &it) {
        case .valid(let enc): offset += enc.count
        case .emptyInput: return String(decoding: buf, as: UTF8.self)
        case .error: throw invalid("\(name) is not valid UTF-8 (at byte \(offset))")
        }
    }
}

/// A NUL-terminated UTF-8 C string argument (NULL and invalid UTF-8 are errors naming `name`).
func cStringArg(_ p: UnsafePointer<CChar>?, _ name: String) throws -> String {
    let q = try requirePointer(p, name)
    return try utf8Arg(q, Int64(strlen(q)), name)
}

/// A non-empty C string (a path).
func pathArg(_ p: UnsafePointer<CChar>?, _ name: String = "path", _ empty: String = "") throws -> String {
    let s = try cStringArg(p, name)
    guard !s.isEmpty else { throw invalid("\(name) is empty\(empty)") }
    return s
}

/// An optional, non-empty C string (a path): NULL is nil.
func optionalPath(_ p: UnsafePointer<CChar>?, _ name: String) throws -> String? {
    try p.map { try pathArg($0, name, " (use NULL for none)") }
}
