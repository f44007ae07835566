import LoRAKitCore
import LoRAKitKernels
import LoRAKitFormats
import LoRAKitTokenizer
import LoRAKitTemplates

/// A loaded LLaMA-architecture model: configuration and frozen weights. Immutable after loading and
/// shared read-only by any number of contexts (threads). Weights view the memory-mapped file in place.
public final class LlamaModel: @unchecked Sendable {
    public struct Layer: @unchecked Sendable {
        /// RMSNorm weights, f32 [C].
        public let attnNorm: Tensor
        public let ffnNorm: Tensor
        /// Linear weights indexed by `LinearModule.rawValue`, each [out, in] in its stored dtype.
        public let linear: [Tensor]
        public func weight(_ m: LinearModule) -> Tensor { linear[m.rawValue] }
    }

    public let config: LlamaConfig
    /// Token embedding [V, C] (any dtype).
    public let tokenEmbedding: Tensor
    public let layers: [Layer]
    /// Final RMSNorm weight, f32 [C].
    public let outputNorm: Tensor
    /// Output head [V, C] (the token embedding when tied).
    public let output: Tensor
    /// Where the model came from (path).
    public let source: String
    /// GGUF metadata (empty for Hugging Face folders).
    public let metadata: [String: GGUFValue]
    /// Model architecture name as stored ("llama").
    public let architecture: String
    /// Jinja chat template from the model's metadata, if any.
    public let chatTemplate: String?
    /// The GGUF file kept open (its map backs the weights), if loaded from GGUF.
    public let gguf: GGUFFile?
    /// The model's tokenizer, when its vocabulary is stored with it and supported.
    public let tokenizer: Tokenizer?
    /// Why `tokenizer` is nil (no vocabulary in the file, or an unsupported tokenizer type).
    public let tokenizerError: String?
    /// The parsed chat template and its limits (LlamaModel+Chat.swift).
    package let chatCache = ChatTemplateCache()

    /// The input embedding rows [n, C] (f32, dequantized) of token ids: what the model's first layer sees
    /// for them, e.g. to place caller-made rows (projected image features) between pieces of text.
    public func tokenEmbeddings(_ ids: [Int32], pool: ThreadPool = .shared) throws(LKError) -> [Float] {
        let c = config
        let n = try checkedProduct([ids.count, c.dim], what: "token embeddings")
        var out = [Float](repeating: 0, count: n)
        if ids.isEmpty { return out }
        try ids.withUnsafeBufferPointer { (ib) throws(LKError) in
            try out.withUnsafeMutableBufferPointer { (ob) throws(LKError) in
                try Ops.embeddingForward(table: UnsafeRawPointer(tokenEmbedding.rawPointer), dtype: tokenEmbedding.dtype,
                                         vocab: c.vocabSize, dim: c.dim, ids: ib.baseAddress!, rows: ids.count,
                                         out: ob.baseAddress!, pool: pool)
            }
        }
        return out
    }

    /// The tokenizer, or an error saying why there is none.
    public func requireTokenizer() throws(LKError) -> Tokenizer {
        guard let t = tokenizer else { throw .unsupported("\(source): no usable tokenizer: \(tokenizerError ?? "none stored")") }
        return t
    }

    init(config: LlamaConfig, tokenEmbedding: Tensor, layers: [Layer], outputNorm: Tensor, output: Tensor,
         source: String, metadata: [String: GGUFValue], architecture: String, chatTemplate: String?, gguf: GGUFFile?,
         tokenizer: Tokenizer? = nil, tokenizerError: String? = nil) {
        self.config = config
        self.tokenEmbedding = tokenEmbedding
        self.layers = layers
        self.outputNorm = outputNorm
        self.output = output
        self.source = source
        self.metadata = metadata
        self.architecture = architecture
        self.chatTemplate = chatTemplate
        self.gguf = gguf
        self.tokenizer = tokenizer
        self.tokenizerError = tokenizer == nil ? (tokenizerError ?? "the model has no tokenizer") : nil
    }

    /// Architectures loaded by this class (GGUF `general.architecture`).
    public static let supportedArchitectures: Set<String> = ["llama"]

    /// Load a GGUF file written by llama.cpp's converter (architecture `llama`).
    public convenience init(gguf path: String) throws(LKError) {
        let f = try GGUFFile(path: path)
        let arch = try f.string("general.architecture")
        guard LlamaModel.supportedArchitectures.contains(arch) else {
            throw .unsupported("\(path): architecture \"\(arch)\" is not supported (supported: \(LlamaModel.supportedArchitectures.sorted().joined(separator: ", ")))")
        }
        let p = arch + "."
        let dim = try f.int(p + "embedding_length")
        let nHeads = try f.int(p + "attention.head_count")
        guard nHeads > 0 else { throw .format("\(path): \(p)attention.head_count is \(nHeads)") }
        let headDim = try f.int(p + "attention.key_length", default: dim / nHeads)
        let embd = try f.tensor("token_embd.weight")
        let vocab = try f.int(p + "vocab_size", default: embd.shape.first ?? 0)
        var cfg = LlamaConfig(
            vocabSize: vocab,
            dim: dim,
            hiddenDim: try f.int(p + "feed_forward_length"),
            nLayers: try f.int(p + "block_count"),
            nHeads: nHeads,
            nKVHeads: try f.int(p + "attention.head_count_kv", default: nHeads),
            headDim: headDim,
            contextLength: try f.int(p + "context_length", default: 2048),
            ropeDims: try f.int(p + "rope.dimension_count", default: headDim),
            ropeBase: Float(try f.double(p + "rope.freq_base", default: 10000)),
            normEps: Float(try f.double(p + "attention.layer_norm_rms_epsilon", default: 1e-5)),
            ropeLayout: .interleaved,
            tiedEmbeddings: !f.has("output.weight"))
        if cfg.ropeDims == 0 { cfg.ropeDims = headDim }
        try cfg.validate(source: path)
        if f.has("rope_freqs.weight") {
            throw .unsupported("\(path): RoPE frequency factors (rope_freqs.weight, Llama 3.1-style scaling) are not supported yet")
        }
        if let scaling = f.metadata[p + "rope.scaling.type"]?.string, scaling != "none" {
            throw .unsupported("\(path): RoPE scaling \"\(scaling)\" is not supported yet")
        }

        func expectShape(_ t: Tensor, _ name: String, _ shape: [Int]) throws(LKError) {
            guard t.shape == shape else {
                throw .format("\(path): tensor \(name) has shape \(t.shape), expected \(shape) from the metadata")
            }
        }
        func norm(_ name: String) throws(LKError) -> Tensor {
            let t = try f.tensor(name)
            try expectShape(t, name, [cfg.dim])
            return t.dtype == .f32 ? t : try t.converted(to: .f32)
        }
        try expectShape(embd, "token_embd.weight", [cfg.vocabSize, cfg.dim])
        var layers: [Layer] = []
        for l in 0..<cfg.nLayers {
            var lin: [Tensor] = []
            for m in LinearModule.allCases {
                let name = m.ggufWeightName(layer: l)
                let t = try f.tensor(name)
                let (o, i) = m.shape(cfg)
                try expectShape(t, name, [o, i])
                lin.append(t)
            }
            layers.append(Layer(attnNorm: try norm("blk.\(l).attn_norm.weight"),
                                ffnNorm: try norm("blk.\(l).ffn_norm.weight"), linear: lin))
        }
        let outNorm = try norm("output_norm.weight")
        var output = embd
        if !cfg.tiedEmbeddings {
            output = try f.tensor("output.weight")
            try expectShape(output, "output.weight", [cfg.vocabSize, cfg.dim])
        }
        var tok: Tokenizer? = nil
        var tokErr: String? = nil
        if f.metadata["tokenizer.ggml.model"] != nil {
            do throws(LKError) {
                tok = try Tokenizer(gguf: f)
                if let t = tok, t.vocabSize > cfg.vocabSize {
                    tokErr = "tokenizer has \(t.vocabSize) tokens but the model \(cfg.vocabSize)"
                    tok = nil
                }
            } catch {
                tokErr = error.message
            }
        } else {
            tokErr = "the file stores no tokenizer (tokenizer.ggml.* metadata)"
        }
        self.init(config: cfg, tokenEmbedding: embd, layers: layers, outputNorm: outNorm, output: output,
                  source: path, metadata: f.metadata, architecture: arch,
                  chatTemplate: f.metadata["tokenizer.chat_template"]?.string, gguf: f,
                  tokenizer: tok, tokenizerError: tokErr)
    }

    /// Total bytes of weights (as stored).
    public var weightBytes: Int {
        var n = tokenEmbedding.byteCount + outputNorm.byteCount
        if !config.tiedEmbeddings { n += output.byteCount }
        for l in layers {
            n += l.attnNorm.byteCount + l.ffnNorm.byteCount
            for t in l.linear { n += t.byteCount }
        }
        return n
    }
}
