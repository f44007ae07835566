// Swift mirrors of the params/info structs of Include/lorakit.h, and the struct_size rules.
//
// Layout: each mirror declares the C fields in the same order with the same fixed-size types, so Swift
// lays them out as C does (natural alignment, declaration order). lk_sizeof_*() returns
// MemoryLayout<T>.stride (C's sizeof includes tail padding, as Swift's stride does); Tests/c/test_model.c
// and the Python binding check these against sizeof / ctypes.sizeof.
//
// struct_size rules (stated in lorakit.h):
// - Params structs (read): struct_size below the size of the struct's first version (ABI 1), which
//   includes 0 (an uninitialized struct), or above `implausibleStructSize` → LK_ERR_ABI. Otherwise the
//   first min(struct_size, our size) bytes come from the caller and the remaining fields keep their
//   defaults: an older, smaller struct gets defaults for fields added after it; a newer, larger struct
//   has the fields we know read and the rest ignored.
// - Info/result structs (written): the same bounds; only the first min(struct_size, our size) bytes are
//   written and struct_size itself is left as the caller set it.
#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// A struct_size larger than this is taken for an uninitialized struct, not a newer header.
let implausibleStructSize: UInt32 = 4096

/// typedef int32_t (*lk_token_callback)(const char *piece, int64_t piece_len, int32_t token, void *user_data);
typealias CTokenCallback = @convention(c) (UnsafePointer<CChar>?, Int64, Int32, UnsafeMutableRawPointer?) -> Int32

/// A struct that starts with `uint32_t struct_size`.
protocol SizedCStruct {
    /// C name, for messages ("lk_context_params").
    static var cName: String { get }
    /// Bytes of the first published version (ABI 1). When a field is appended, keep this at the end of
    /// the last ABI-1 field.
    static var firstVersionSize: Int { get }
    var struct_size: UInt32 { get set }
}

extension SizedCStruct {
    static var ourSize: Int { MemoryLayout<Self>.stride }

    static func checkSize(_ size: UInt32, _ argName: String) throws {
        let initHint = cName.hasSuffix("_params") ? " (fill it with \(cName)_init)" : " (set it to sizeof(\(cName)))"
        guard Int(size) >= firstVersionSize else {
            throw CError(status: LKStatus.abi, message: "\(argName)->struct_size is \(size), smaller than the \(firstVersionSize) bytes of the first \(cName)\(initHint)")
        }
        guard size <= implausibleStructSize else {
            throw CError(status: LKStatus.abi, message: "\(argName)->struct_size is \(size), implausibly large for \(cName) (this library's is \(ourSize)); the struct looks uninitialized\(initHint)")
        }
    }

    /// Read a caller's struct (NULL → `defaults`), honouring struct_size.
    static func read(_ p: UnsafeRawPointer?, defaults: Self, _ argName: String) throws -> Self {
        var v = defaults
        guard let p else { return v }
        let size = p.loadUnaligned(as: UInt32.self)
        try checkSize(size, argName)
        // MemoryLayout.size, not the stride: the bytes of `v` end before its tail padding.
        let n = min(Int(size), MemoryLayout<Self>.size)
        withUnsafeMutableBytes(of: &v) { dst in
            dst.baseAddress!.copyMemory(from: p, byteCount: n)
        }
        v.struct_size = UInt32(ourSize)
        return v
    }

    /// Write `value` into a caller's struct, only up to its struct_size (checked first with `checkOut`).
    func write(to p: UnsafeMutableRawPointer) {
        let size = p.loadUnaligned(as: UInt32.self)
        var v = self
        v.struct_size = size  // left as the caller set it
        let n = min(Int(size), MemoryLayout<Self>.size)  // the bytes of `v` (no tail padding)
        withUnsafeBytes(of: &v) { src in
            p.copyMemory(from: src.baseAddress!, byteCount: n)
        }
    }

    /// Validate an out-struct's struct_size before doing any work.
    static func checkOut(_ p: UnsafeMutableRawPointer, _ argName: String) throws {
        try checkSize(p.loadUnaligned(as: UInt32.self), argName)
    }
}

/// typedef struct lk_model_params { uint32_t struct_size; int32_t reserved; } lk_model_params;
struct CModelParams: SizedCStruct {
    var struct_size: UInt32 = UInt32(MemoryLayout<CModelParams>.stride)
    var reserved: Int32 = 0

    static let cName = "lk_model_params"
    static var firstVersionSize: Int { MemoryLayout<CModelParams>.offset(of: \.reserved)! + 4 }
}

/// typedef struct lk_model_info { ... } lk_model_info;
struct CModelInfo: SizedCStruct {
    var struct_size: UInt32 = UInt32(MemoryLayout<CModelInfo>.stride)
    var n_vocab: Int32 = 0
    var n_ctx_train: Int32 = 0
    var n_embd: Int32 = 0
    var n_ff: Int32 = 0
    var n_layer: Int32 = 0
    var n_head: Int32 = 0
    var n_head_kv: Int32 = 0
    var head_dim: Int32 = 0
    var n_rot: Int32 = 0
    var rope_base: Float = 0
    var norm_eps: Float = 0
    var tied_embeddings: Int32 = 0
    var bos_token: Int32 = -1
    var eos_token: Int32 = -1
    var eot_token: Int32 = -1
    var has_tokenizer: Int32 = 0
    var has_chat_template: Int32 = 0
    var weight_bytes: Int64 = 0

    static let cName = "lk_model_info"
    static var firstVersionSize: Int { MemoryLayout<CModelInfo>.offset(of: \.weight_bytes)! + 8 }
}

/// typedef struct lk_context_params { uint32_t struct_size; int32_t n_ctx, n_batch, n_threads; }
struct CContextParams: SizedCStruct {
    var struct_size: UInt32 = UInt32(MemoryLayout<CContextParams>.stride)
    var n_ctx: Int32 = 0
    var n_batch: Int32 = 0
    var n_threads: Int32 = 0

    static let cName = "lk_context_params"
    static var firstVersionSize: Int { MemoryLayout<CContextParams>.offset(of: \.n_threads)! + 4 }
}

/// typedef struct lk_sampler_params { ... } lk_sampler_params;
struct CSamplerParams: SizedCStruct {
    var struct_size: UInt32 = UInt32(MemoryLayout<CSamplerParams>.stride)
    var temperature: Float = 0.8
    var top_k: Int32 = 40
    var top_p: Float = 0.95
    var min_p: Float = 0.05
    var repeat_penalty: Float = 1
    var repeat_last_n: Int32 = 64
    var seed: UInt64 = 0

    static let cName = "lk_sampler_params"
    static var firstVersionSize: Int { MemoryLayout<CSamplerParams>.offset(of: \.seed)! + 8 }
}

/// typedef struct lk_generate_params { ... } lk_generate_params;
struct CGenerateParams: SizedCStruct {
    var struct_size: UInt32 = UInt32(MemoryLayout<CGenerateParams>.stride)
    var max_tokens: Int32 = 128
    var sampler: UnsafeRawPointer? = nil
    var stop: UnsafePointer<UnsafePointer<CChar>?>? = nil
    var n_stop: Int32 = 0
    var stop_at_eos: Int32 = 1
    var callback: CTokenCallback? = nil
    var user_data: UnsafeMutableRawPointer? = nil

    static let cName = "lk_generate_params"
    static var firstVersionSize: Int { MemoryLayout<CGenerateParams>.offset(of: \.user_data)! + MemoryLayout<UnsafeMutableRawPointer?>.size }
}

/// typedef struct lk_generate_result { ... } lk_generate_result;
struct CGenerateResult: SizedCStruct {
    var struct_size: UInt32 = UInt32(MemoryLayout<CGenerateResult>.stride)
    var n_prompt_tokens: Int32 = 0
    var n_tokens: Int32 = 0
    var stop_reason: Int32 = 0
    var prefill_seconds: Double = 0
    var decode_seconds: Double = 0

    static let cName = "lk_generate_result"
    static var firstVersionSize: Int { MemoryLayout<CGenerateResult>.offset(of: \.decode_seconds)! + 8 }
}

/// typedef struct lk_chat_message { const char *role; const char *content; } lk_chat_message;
struct CChatMessage {
    var role: UnsafePointer<CChar>?
    var content: UnsafePointer<CChar>?
}
