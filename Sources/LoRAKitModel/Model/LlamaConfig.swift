import LoRAKitCore
import LoRAKitKernels
import LoRAKitFormats
import LoRAKitTokenizer
import LoRAKitTemplates

/// Hyper-parameters of a LLaMA-architecture model (SmolLM2, TinyLlama, Llama-2/3, Mistral).
public struct LlamaConfig: Sendable, Equatable {
    public var vocabSize: Int
    /// Model width (embedding length) C.
    public var dim: Int
    /// MLP hidden width.
    public var hiddenDim: Int
    public var nLayers: Int
    /// Query heads H.
    public var nHeads: Int
    /// Key/value heads (GQA): H must be a multiple.
    public var nKVHeads: Int
    /// Head dimension D (usually dim / nHeads).
    public var headDim: Int
    /// Training context length (a context may use up to this many positions).
    public var contextLength: Int
    /// Number of rotated dimensions per head (≤ D).
    public var ropeDims: Int
    public var ropeBase: Float
    public var normEps: Float
    /// Where RoPE pairs live: llama.cpp's converter permutes Q/K rows so GGUF models rotate adjacent
    /// pairs (`interleaved`); Hugging Face checkpoints rotate halves (`neox`).
    public var ropeLayout: RoPELayout
    /// The output head reuses the token embedding.
    public var tiedEmbeddings: Bool


    public var kvDim: Int { nKVHeads * headDim }
    public var qDim: Int { nHeads * headDim }
    /// Bytes one position takes in a KV cache of `type` (keys and values of every layer).
    public func kvBytesPerPosition(_ type: KVCacheType) -> Int { 2 * nLayers * kvDim * type.bytes }

    /// Checks the numbers fit together; errors name the field.
    public func validate(source: String) throws(LKError) {
        func check(_ ok: Bool, _ msg: String) throws(LKError) {
            if !ok { throw .format("\(source): \(msg)") }
        }
        try check(vocabSize > 0 && vocabSize <= 1 << 24, "vocabulary size \(vocabSize) out of range")
        try check(dim > 0 && dim <= 1 << 16, "embedding length \(dim) out of range")
        try check(hiddenDim > 0 && hiddenDim <= 1 << 18, "feed-forward length \(hiddenDim) out of range")
        try check(nLayers > 0 && nLayers <= 1024, "block count \(nLayers) out of range")
        try check(nHeads > 0 && nHeads <= 1024, "head count \(nHeads) out of range")
        try check(nKVHeads > 0 && nKVHeads <= nHeads && nHeads % nKVHeads == 0,
                  "head_count_kv \(nKVHeads) must divide head_count \(nHeads)")
        try check(headDim > 0 && headDim <= 1024 && headDim % 2 == 0, "head dimension \(headDim) must be even and ≤ 1024")
        try check(ropeDims > 0 && ropeDims <= headDim && ropeDims % 2 == 0, "rope dimension count \(ropeDims) must be even and ≤ head dimension \(headDim)")
        try check(contextLength > 0 && contextLength <= 1 << 22, "context length \(contextLength) out of range")
        try check(ropeBase.isFinite && ropeBase > 1, "rope base \(ropeBase) out of range")
        try check(normEps.isFinite && normEps > 0 && normEps < 1, "RMSNorm epsilon \(normEps) out of range")
    }
}

/// The linear layers of a LLaMA block that adapters can target.
public enum LinearModule: Int, CaseIterable, Sendable, CustomStringConvertible {
    case q = 0, k, v, o, gate, up, down

    /// Short name used on the command line and in the C API (`q,k,v,o,gate,up,down`).
    public var description: String {
        switch self {
        case .q: return "q"
        case .k: return "k"
        case .v: return "v"
        case .o: return "o"
        case .gate: return "gate"
        case .up: return "up"
        case .down: return "down"
        }
    }

    /// GGUF tensor name stem (`blk.N.<stem>.weight`).
    public var ggufName: String {
        switch self {
        case .q: return "attn_q"
        case .k: return "attn_k"
        case .v: return "attn_v"
        case .o: return "attn_output"
        case .gate: return "ffn_gate"
        case .up: return "ffn_up"
        case .down: return "ffn_down"
        }
    }

    /// GGUF name of the weight of this module in `layer`: `blk.N.<stem>.weight`.
    public func ggufWeightName(layer: Int) -> String { "blk.\(layer).\(ggufName).weight" }

    /// Hugging Face module path inside a layer (`model.layers.N.<path>`).
    public var hfName: String {
        switch self {
        case .q: return "self_attn.q_proj"
        case .k: return "self_attn.k_proj"
        case .v: return "self_attn.v_proj"
        case .o: return "self_attn.o_proj"
        case .gate: return "mlp.gate_proj"
        case .up: return "mlp.up_proj"
        case .down: return "mlp.down_proj"
        }
    }

    /// (out, in) features of this module's weight.
    public func shape(_ c: LlamaConfig) -> (out: Int, in: Int) {
        switch self {
        case .q: return (c.qDim, c.dim)
        case .k, .v: return (c.kvDim, c.dim)
        case .o: return (c.dim, c.qDim)
        case .gate, .up: return (c.hiddenDim, c.dim)
        case .down: return (c.dim, c.hiddenDim)
        }
    }

    /// Parse a name: short (`q`), GGUF (`attn_q`) or Hugging Face (`q_proj`) form.
    public init?(name: String) {
        let n = name.lowercased()
        for m in LinearModule.allCases {
            let hfLeaf = m.hfName.split(separator: ".").last.map(String.init) ?? ""
            if n == m.description || n == m.ggufName || n == hfLeaf || n == m.hfName { self = m; return }
        }
        return nil
    }
}
