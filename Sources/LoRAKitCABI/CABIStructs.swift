// The struct_size rules of Include/lorakit.h for its params/info structs (imported from the header through
// CLoRAKit: Swift lays them out as C does, and lk_sizeof_*() returns their stride, which is C's sizeof).
//
// - Params structs (read): struct_size below the size of the struct's first version (ABI 1), which
//   includes 0 (an uninitialized struct), or above `implausibleStructSize` → LK_ERR_ABI. Otherwise the
//   first min(struct_size, our size) bytes come from the caller and the remaining fields keep their
//   defaults: an older, smaller struct gets defaults for fields added after it; a newer, larger struct
//   has the fields we know read and the rest ignored.
// - lk_<x>_params_init_sized(p, size) writes the defaults into the first min(size, our size) bytes only
//   (nothing when size is below the first version); lk_<x>_params_init, kept for programs built before
//   the header's macro of that name, fills the first version.
// - Info/result structs (written): the same bounds; only the first min(struct_size, our size) bytes are
//   written and struct_size itself is left as the caller set it.
import CLoRAKit
import LoRAKit

/// A struct_size larger than this is taken for an uninitialized struct, not a newer header.
let implausibleStructSize = 4096

/// A struct of lorakit.h that starts with `uint32_t struct_size`.
protocol SizedCStruct {
    init()
    var struct_size: UInt32 { get set }
    /// C name, for messages ("lk_context_params").
    static var cName: String { get }
    /// Bytes of the first published version (ABI 1): the end of its last field. When a field is appended,
    /// this stays where it is.
    static var firstVersionSize: Int { get }
    /// What `lk_<x>_params_init` writes: the core's defaults in C terms (zero for info/result structs).
    static var defaults: Self { get }
}

extension SizedCStruct {
    static var defaults: Self { Self() }
    static var size: Int { MemoryLayout<Self>.stride }

    /// The caller's struct_size at `p`, checked against the bounds (an error names `name`).
    static func checkedSize(_ p: UnsafeRawPointer, _ name: String) throws -> Int {
        let size = Int(p.loadUnaligned(as: UInt32.self))
        let hint = cName.hasSuffix("_params") ? " (fill it with \(cName)_init)" : " (set it to sizeof(\(cName)))"
        guard size >= firstVersionSize else {
            throw CError(LK_ERR_ABI, "\(name)->struct_size is \(size), smaller than the \(firstVersionSize) bytes of the first \(cName)\(hint)")
        }
        guard size <= implausibleStructSize else {
            throw CError(LK_ERR_ABI, "\(name)->struct_size is \(size), implausibly large for \(cName) (this library's is \(Self.size)); the struct looks uninitialized\(hint)")
        }
        return size
    }

    /// A caller's params struct (NULL: the defaults), read up to its struct_size.
    static func read(_ p: UnsafePointer<Self>?, _ name: String = "params") throws -> Self {
        var v = defaults
        guard let p else { return v }
        // MemoryLayout.size, not the stride: the bytes of `v` end before any tail padding (ASan).
        let n = min(try checkedSize(p, name), MemoryLayout<Self>.size)
        withUnsafeMutableBytes(of: &v) { $0.baseAddress!.copyMemory(from: p, byteCount: n) }
        return v
    }

    /// `lk_<x>_params_init_sized`.
    /// `size` is C's size_t: unsigned, so SIZE_MAX is clamped like any size above ours (read as an Int it
    /// was -1, "below the first version", and nothing was written; found by the ABI sweep).
    static func initSized(_ p: UnsafeMutablePointer<Self>?, _ size: UInt) {
        guard let p, size >= UInt(firstVersionSize) else { return }
        var v = defaults
        let n = Int(min(size, UInt(Self.size)))
        v.struct_size = UInt32(n)
        v.copyBytes(to: UnsafeMutableRawPointer(p), count: n)
    }

    /// An out-struct's struct_size, checked before any work (NULL: nothing to write).
    static func checkOut(_ p: UnsafeMutablePointer<Self>?, _ name: String) throws {
        if let p { _ = try checkedSize(p, name) }
    }

    /// Write `self` into a caller's struct (checked with `checkOut`), up to its struct_size, which is kept.
    func write(to p: UnsafeMutablePointer<Self>?) {
        guard let p else { return }
        var v = self
        v.struct_size = UnsafeRawPointer(p).loadUnaligned(as: UInt32.self)
        v.copyBytes(to: UnsafeMutableRawPointer(p), count: min(Int(v.struct_size), Self.size))
    }

    /// Write the first `count` bytes of C's layout of `self` (count ≤ sizeof) to `p`. A Swift value holds
    /// MemoryLayout.size bytes, fewer than the stride (C's sizeof) when the struct has tail padding: those
    /// are copied and the padding zeroed (copying `count` bytes of the value read past it: a
    /// stack-buffer-overflow in lk_train_params_init_sized, found by make test-asan-c).
    func copyBytes(to p: UnsafeMutableRawPointer, count n: Int) {
        var v = self
        withUnsafeBytes(of: &v) { src in
            let k = min(n, src.count)
            p.copyMemory(from: src.baseAddress!, byteCount: k)
            if n > k { (p + k).initializeMemory(as: UInt8.self, repeating: 0, count: n - k) }
        }
    }
}

func end<T, V>(_ field: KeyPath<T, V>) -> Int { MemoryLayout<T>.offset(of: field)! + MemoryLayout<V>.size }

extension lk_model_params: SizedCStruct {
    static let cName = "lk_model_params"
    static let firstVersionSize = end(\lk_model_params.reserved)
}

extension lk_model_info: SizedCStruct {
    static let cName = "lk_model_info"
    static let firstVersionSize = end(\lk_model_info.weight_bytes)
}

extension lk_context_params: SizedCStruct {
    static let cName = "lk_context_params"
    static let firstVersionSize = end(\lk_context_params.n_threads)
}

extension lk_sampler_params: SizedCStruct {
    static let cName = "lk_sampler_params"
    static let firstVersionSize = end(\lk_sampler_params.seed)
    static var defaults: Self {
        let s = SamplerParams()
        return Self(struct_size: 0, temperature: s.temperature, top_k: Int32(s.topK), top_p: s.topP, min_p: s.minP,
                    repeat_penalty: s.repetitionPenalty, repeat_last_n: Int32(s.penaltyLastN), seed: s.seed)
    }
}

extension lk_generate_params: SizedCStruct {
    static let cName = "lk_generate_params"
    static let firstVersionSize = end(\lk_generate_params.user_data)
    static var defaults: Self {
        let g = GenerateParams()
        var p = Self()
        p.max_tokens = Int32(g.maxTokens)
        p.stop_at_eos = g.stopAtEOS ? 1 : 0
        return p
    }
}

extension lk_generate_result: SizedCStruct {
    static let cName = "lk_generate_result"
    static let firstVersionSize = end(\lk_generate_result.decode_seconds)
}

extension lk_lora_params: SizedCStruct {
    static let cName = "lk_lora_params"
    static let firstVersionSize = end(\lk_lora_params.seed)
    static var defaults: Self {
        let c = LoRAConfig()
        var p = Self()
        p.rank = Int32(c.rank)
        p.alpha = c.alpha
        p.dropout = c.dropout  // targets NULL: "q,v"; init 0: LK_LORA_INIT_PEFT
        return p
    }
}

extension lk_batch_params: SizedCStruct {
    static let cName = "lk_batch_params"
    static let firstVersionSize = end(\lk_batch_params.kv_type)
    static var defaults: Self {
        var p = Self()
        p.max_sequences = 8  // n_ctx, n_threads 0: the library's defaults; kv_type 0: LK_DTYPE_F32
        return p
    }
}

// Init, sizeof: the same pair for every params struct.

@_cdecl("lk_model_params_init_sized")
public func lk_model_params_init_sized(_ p: UnsafeMutablePointer<lk_model_params>?, _ size: UInt) { lk_model_params.initSized(p, size) }
@_cdecl("lk_model_params_init")
public func lk_model_params_init(_ p: UnsafeMutablePointer<lk_model_params>?) { lk_model_params.initSized(p, UInt(lk_model_params.firstVersionSize)) }
@_cdecl("lk_context_params_init_sized")
public func lk_context_params_init_sized(_ p: UnsafeMutablePointer<lk_context_params>?, _ size: UInt) { lk_context_params.initSized(p, size) }
@_cdecl("lk_context_params_init")
public func lk_context_params_init(_ p: UnsafeMutablePointer<lk_context_params>?) { lk_context_params.initSized(p, UInt(lk_context_params.firstVersionSize)) }
@_cdecl("lk_sampler_params_init_sized")
public func lk_sampler_params_init_sized(_ p: UnsafeMutablePointer<lk_sampler_params>?, _ size: UInt) { lk_sampler_params.initSized(p, size) }
@_cdecl("lk_sampler_params_init")
public func lk_sampler_params_init(_ p: UnsafeMutablePointer<lk_sampler_params>?) { lk_sampler_params.initSized(p, UInt(lk_sampler_params.firstVersionSize)) }
@_cdecl("lk_generate_params_init_sized")
public func lk_generate_params_init_sized(_ p: UnsafeMutablePointer<lk_generate_params>?, _ size: UInt) { lk_generate_params.initSized(p, size) }
@_cdecl("lk_generate_params_init")
public func lk_generate_params_init(_ p: UnsafeMutablePointer<lk_generate_params>?) { lk_generate_params.initSized(p, UInt(lk_generate_params.firstVersionSize)) }
@_cdecl("lk_lora_params_init_sized")
public func lk_lora_params_init_sized(_ p: UnsafeMutablePointer<lk_lora_params>?, _ size: UInt) { lk_lora_params.initSized(p, size) }
@_cdecl("lk_lora_params_init")
public func lk_lora_params_init(_ p: UnsafeMutablePointer<lk_lora_params>?) { lk_lora_params.initSized(p, UInt(lk_lora_params.firstVersionSize)) }
@_cdecl("lk_train_params_init_sized")
public func lk_train_params_init_sized(_ p: UnsafeMutablePointer<lk_train_params>?, _ size: UInt) { lk_train_params.initSized(p, size) }
@_cdecl("lk_train_params_init")
public func lk_train_params_init(_ p: UnsafeMutablePointer<lk_train_params>?) { lk_train_params.initSized(p, UInt(lk_train_params.firstVersionSize)) }

@_cdecl("lk_batch_params_init_sized")
public func lk_batch_params_init_sized(_ p: UnsafeMutablePointer<lk_batch_params>?, _ size: UInt) { lk_batch_params.initSized(p, size) }
@_cdecl("lk_batch_params_init")
public func lk_batch_params_init(_ p: UnsafeMutablePointer<lk_batch_params>?) { lk_batch_params.initSized(p, UInt(lk_batch_params.firstVersionSize)) }

@_cdecl("lk_sizeof_model_params") public func lk_sizeof_model_params() -> Int64 { Int64(lk_model_params.size) }
@_cdecl("lk_sizeof_model_info") public func lk_sizeof_model_info() -> Int64 { Int64(lk_model_info.size) }
@_cdecl("lk_sizeof_context_params") public func lk_sizeof_context_params() -> Int64 { Int64(lk_context_params.size) }
@_cdecl("lk_sizeof_sampler_params") public func lk_sizeof_sampler_params() -> Int64 { Int64(lk_sampler_params.size) }
@_cdecl("lk_sizeof_generate_params") public func lk_sizeof_generate_params() -> Int64 { Int64(lk_generate_params.size) }
@_cdecl("lk_sizeof_generate_result") public func lk_sizeof_generate_result() -> Int64 { Int64(lk_generate_result.size) }
@_cdecl("lk_sizeof_chat_message") public func lk_sizeof_chat_message() -> Int64 { Int64(MemoryLayout<lk_chat_message>.stride) }
@_cdecl("lk_sizeof_lora_params") public func lk_sizeof_lora_params() -> Int64 { Int64(lk_lora_params.size) }
@_cdecl("lk_sizeof_train_params") public func lk_sizeof_train_params() -> Int64 { Int64(lk_train_params.size) }
@_cdecl("lk_sizeof_batch_params") public func lk_sizeof_batch_params() -> Int64 { Int64(lk_batch_params.size) }
@_cdecl("lk_sizeof_train_progress") public func lk_sizeof_train_progress() -> Int64 { Int64(lk_train_progress.size) }
