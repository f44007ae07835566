import LoRAKitCore
import LoRAKitKernels
import LoRAKitFormats
import LoRAKitTokenizer
import LoRAKitTemplates

/// Loading Hugging Face `LlamaForCausalLM` / `MistralForCausalLM` checkpoints: a folder with
/// `config.json` and `model.safetensors` (or `model.safetensors.index.json` and its shards).
#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

extension LlamaModel {
    /// `model_type` values loaded by `init(huggingFaceFolder:)` (Mistral uses LLaMA's tensors).
    public static let supportedHFModelTypes: Set<String> = ["llama", "mistral"]
    /// `architectures` entries loaded by `init(huggingFaceFolder:)`.
    public static let supportedHFArchitectures: Set<String> = ["LlamaForCausalLM", "MistralForCausalLM"]

    /// Load a Hugging Face checkpoint folder (`config.json` + safetensors weights).
    ///
    /// - Both `config.json` layouts: transformers 4 (top-level `rope_theta`, `torch_dtype`, `rope_scaling`)
    ///   and transformers 5 (`rope_parameters: {rope_theta, rope_type}`, `dtype`). RoPE scaling other
    ///   than the default is refused with `.unsupported` naming its type.
    /// - Weights are used in place from the memory map in their stored dtype (f32, f16 or bf16; no
    ///   conversion), except the RMSNorm weights, converted to f32 for the ops.
    /// - RoPE rotates halves (`ropeLayout = .neox`), as `rotate_half` in transformers: Q/K rows are in
    ///   Hugging Face order (GGUF files store them permuted and rotate adjacent pairs instead).
    /// - Every tensor's shape is checked against the config; errors name the tensor and its file.
    public convenience init(huggingFaceFolder path: String) throws(LKError) {
        let configPath = path + "/config.json"
        guard isRegularFile(configPath) else {
            throw .io("\(path): not a Hugging Face model folder (no config.json)")
        }
        let json = try JSON.parse(file: configPath)
        let (cfg, modelType) = try LlamaModel.hfConfig(json, source: configPath)

        // Weights: one file, or an index over shards.
        let single = path + "/model.safetensors", indexPath = path + "/model.safetensors.index.json"
        let weights: SafetensorsSource
        if isRegularFile(single) {
            weights = try SafetensorsFile(path: single)
        } else if isRegularFile(indexPath) {
            weights = try SafetensorsIndex(path: indexPath)
        } else if isRegularFile(path + "/pytorch_model.bin") || isRegularFile(path + "/pytorch_model.bin.index.json") {
            throw .unsupported("\(path): only PyTorch pickle weights (pytorch_model.bin) found; LoRAKit reads safetensors (re-save with safe_serialization=True)")
        } else {
            throw .io("\(path): no model.safetensors or model.safetensors.index.json")
        }

        func load(_ name: String, _ shape: [Int]) throws(LKError) -> Tensor {
            guard weights.info(name) != nil else {
                throw .format("\(path): missing tensor \(name) (weights: \(weights.filePath(of: name)))")
            }
            let t = try weights.tensor(name)
            guard t.shape == shape else {
                throw .format("\(weights.filePath(of: name)): tensor \(name) has shape \(t.shape), expected \(shape) from \(configPath)")
            }
            return t
        }
        func norm(_ name: String) throws(LKError) -> Tensor {
            let t = try load(name, [cfg.dim])
            return t.dtype == .f32 ? t : try t.converted(to: .f32)
        }

        let embd = try load("model.embed_tokens.weight", [cfg.vocabSize, cfg.dim])
        var layers: [Layer] = []
        layers.reserveCapacity(cfg.nLayers)
        for l in 0..<cfg.nLayers {
            let p = "model.layers.\(l)."
            var lin: [Tensor] = []
            for m in LinearModule.allCases {
                let (o, i) = m.shape(cfg)
                lin.append(try load(p + m.hfName + ".weight", [o, i]))
            }
            layers.append(Layer(attnNorm: try norm(p + "input_layernorm.weight"),
                                ffnNorm: try norm(p + "post_attention_layernorm.weight"), linear: lin))
        }
        let outNorm = try norm("model.norm.weight")
        let output = cfg.tiedEmbeddings ? embd : try load("lm_head.weight", [cfg.vocabSize, cfg.dim])
        // Tokenizer (tokenizer.json) and chat template (tokenizer_config.json `chat_template`, or
        // chat_template.jinja), when the folder has them.
        var tok: Tokenizer? = nil
        var tokErr: String? = "the folder has no tokenizer.json"
        var eosName: String? = nil
        var template: String? = nil
        if let tc = try? JSON.parse(file: path + "/tokenizer_config.json") {
            template = tc["chat_template"]?.string
            eosName = tc["eos_token"]?.string ?? tc["eos_token"]?["content"]?.string
        }
        if template == nil, let bytes = try? readFile(path + "/chat_template.jinja") {
            template = String(decoding: bytes, as: UTF8.self)
        }
        if access(path + "/tokenizer.json", F_OK) == 0 {
            do throws(LKError) {
                tok = try Tokenizer(tokenizerJSON: path + "/tokenizer.json", eos: eosName)
                tokErr = nil
                if let t = tok, t.vocabSize > cfg.vocabSize {
                    tokErr = "tokenizer has \(t.vocabSize) tokens but the model \(cfg.vocabSize)"
                    tok = nil
                }
            } catch {
                tokErr = error.message
            }
        }
        self.init(config: cfg, tokenEmbedding: embd, layers: layers, outputNorm: outNorm, output: output,
                  source: path, metadata: [:], architecture: modelType, chatTemplate: template, gguf: nil,
                  tokenizer: tok, tokenizerError: tokErr)
    }

    /// The `LlamaConfig` described by a Hugging Face `config.json`, and its `model_type`. Errors name
    /// `source` and the field.
    static func hfConfig(_ j: JSONValue, source: String) throws(LKError) -> (LlamaConfig, String) {
        guard j.object != nil else { throw .format("\(source): not a JSON object") }
        func present(_ k: String) -> JSONValue? {
            guard let v = j[k], !v.isNull else { return nil }
            return v
        }
        func int(_ k: String) throws(LKError) -> Int {
            guard let v = present(k) else { throw .format("\(source): missing field \(k)") }
            guard let i = v.int else { throw .format("\(source): field \(k) is not an integer (\(JSON.serialize(v)))") }
            return i
        }
        func int(_ k: String, default d: Int) throws(LKError) -> Int { present(k) == nil ? d : try int(k) }
        func double(_ v: JSONValue, _ k: String) throws(LKError) -> Double {
            guard let x = v.double, x.isFinite else { throw .format("\(source): field \(k) is not a number (\(JSON.serialize(v)))") }
            return x
        }
        func bool(_ k: String, default d: Bool) throws(LKError) -> Bool {
            guard let v = present(k) else { return d }
            guard let b = v.bool else { throw .format("\(source): field \(k) is not a boolean (\(JSON.serialize(v)))") }
            return b
        }

        // What model this is.
        let modelType = present("model_type")?.string
        let archs = present("architectures")?.array?.compactMap(\.string)
        if let mt = modelType {
            guard supportedHFModelTypes.contains(mt) else {
                throw .unsupported("\(source): model_type \"\(mt)\" is not supported (supported: \(supportedHFModelTypes.sorted().joined(separator: ", ")))")
            }
        }
        if let a = archs, !a.isEmpty, !a.contains(where: supportedHFArchitectures.contains) {
            throw .unsupported("\(source): architectures \(a) are not supported (supported: \(supportedHFArchitectures.sorted().joined(separator: ", ")))")
        }
        guard modelType != nil || archs?.isEmpty == false else {
            throw .format("\(source): missing field model_type (and no architectures)")
        }
        let type = modelType ?? (archs!.contains("MistralForCausalLM") ? "mistral" : "llama")

        // Features this loader does not implement: refuse rather than compute something else.
        if present("quantization_config") != nil {
            throw .unsupported("\(source): quantized checkpoints (quantization_config) are not supported")
        }
        if try bool("attention_bias", default: false) { throw .unsupported("\(source): attention_bias = true is not supported") }
        if try bool("mlp_bias", default: false) { throw .unsupported("\(source): mlp_bias = true is not supported") }
        if let act = present("hidden_act") ?? present("hidden_activation") {
            guard act.string == "silu" else { throw .unsupported("\(source): hidden_act \(JSON.serialize(act)) is not supported (only silu)") }
        }

        // RoPE: transformers 5 `rope_parameters`, else transformers 4 top-level `rope_theta` / `rope_scaling`.
        var ropeTheta = 10000.0
        let ropeParams = present("rope_parameters")
        if let rp = ropeParams {
            guard rp.object != nil else { throw .format("\(source): rope_parameters is not an object") }
            if let t = rp["rope_theta"], !t.isNull { ropeTheta = try double(t, "rope_parameters.rope_theta") }
            else if let t = present("rope_theta") { ropeTheta = try double(t, "rope_theta") }
            let kind = rp["rope_type"]?.string ?? rp["type"]?.string ?? "default"
            guard kind == "default" else {
                throw .unsupported("\(source): RoPE scaling \"\(kind)\" (rope_parameters.rope_type) is not supported yet")
            }
        } else if let t = present("rope_theta") {
            ropeTheta = try double(t, "rope_theta")
        }
        if let rs = present("rope_scaling") {
            let kind = rs["rope_type"]?.string ?? rs["type"]?.string ?? JSON.serialize(rs)
            guard kind == "default" else {
                throw .unsupported("\(source): RoPE scaling \"\(kind)\" (rope_scaling) is not supported yet")
            }
        }
        if let f = present("partial_rotary_factor"), f.double != 1 {
            throw .unsupported("\(source): partial_rotary_factor \(JSON.serialize(f)) is not supported")
        }
        // dtype (transformers 5) / torch_dtype (4) only says how the weights were saved; the tensors'
        // own dtypes are what we use. Type-check it so a garbled config is noticed.
        for k in ["dtype", "torch_dtype"] {
            if let v = present(k), v.string == nil { throw .format("\(source): field \(k) is not a string (\(JSON.serialize(v)))") }
        }

        let dim = try int("hidden_size")
        let nHeads = try int("num_attention_heads")
        guard nHeads > 0 else { throw .format("\(source): num_attention_heads is \(nHeads)") }
        let nKV = try int("num_key_value_heads", default: nHeads)
        guard nKV > 0, nHeads % nKV == 0 else {
            throw .format("\(source): num_key_value_heads \(nKV) does not divide num_attention_heads \(nHeads)")
        }
        let headDim: Int
        if present("head_dim") != nil {
            headDim = try int("head_dim")
        } else {
            guard dim % nHeads == 0 else {
                throw .format("\(source): hidden_size \(dim) is not divisible by num_attention_heads \(nHeads) (and no head_dim)")
            }
            headDim = dim / nHeads
        }
        var context = try int("max_position_embeddings", default: 2048)
        // Mistral's sliding-window attention equals full causal attention up to the window length:
        // limit the context to it rather than compute something else beyond.
        if type == "mistral", present("sliding_window") != nil {
            let w = try int("sliding_window")
            if w > 0 { context = min(context, w) }
        }
        var eps = 1e-6
        if let e = present("rms_norm_eps") { eps = try double(e, "rms_norm_eps") }
        let cfg = LlamaConfig(
            vocabSize: try int("vocab_size"),
            dim: dim,
            hiddenDim: try int("intermediate_size"),
            nLayers: try int("num_hidden_layers"),
            nHeads: nHeads,
            nKVHeads: nKV,
            headDim: headDim,
            contextLength: context,
            ropeDims: headDim,
            ropeBase: Float(ropeTheta),
            normEps: Float(eps),
            ropeLayout: .neox,
            tiedEmbeddings: try bool("tie_word_embeddings", default: false))
        try cfg.validate(source: source)
        return (cfg, type)
    }

    /// Load a model from a GGUF file or a Hugging Face folder (one containing `config.json`).
    public static func load(path: String) throws(LKError) -> LlamaModel {
        var st = stat()
        guard stat(path, &st) == 0 else { throw .io("\(path): cannot open: \(String(cString: strerror(errno)))") }
        if (st.st_mode & S_IFMT) == S_IFDIR {
            guard isRegularFile(path + "/config.json") else {
                throw .io("\(path): a folder without config.json (expected a Hugging Face model folder or a GGUF file)")
            }
            return try LlamaModel(huggingFaceFolder: path)
        }
        if path.hasSuffix("/config.json") || path == "config.json" {
            return try LlamaModel(huggingFaceFolder: AtomicFile.parentDirectory(path))
        }
        if path.hasSuffix(".safetensors") || path.hasSuffix(".safetensors.index.json") {
            throw .invalidArgument("\(path): pass the Hugging Face model folder (with config.json), not a weights file")
        }
        return try LlamaModel(gguf: path)
    }
}

func isRegularFile(_ path: String) -> Bool {
    var st = stat()
    return stat(path, &st) == 0 && (st.st_mode & S_IFMT) == S_IFREG
}
