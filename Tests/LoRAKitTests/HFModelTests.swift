import Testing
@testable import LoRAKitCore
@testable import LoRAKitKernels
@testable import LoRAKitFormats
@testable import LoRAKitTokenizer
@testable import LoRAKitTemplates
@testable import LoRAKitModel
@testable import LoRAKitTraining
#if canImport(Glibc)
import Glibc
#endif

/// Largest |Δlogit| against `tiny_reference.json` over every position of both sequences, evaluated as
/// a whole prompt, in chunks of 5 through the KV cache, and token by token (last position).
func maxLogitError(_ model: LlamaModel, ref: String) throws -> Float {
    let r = TinyModelTests.reference
    let V = model.config.vocabSize
    var worst: Float = 0
    for (s, seqV) in r["sequences"]!.array!.enumerated() {
        let ids = ints(seqV)
        let expected = r["models"]![ref]!["sequences"]!.array![s]["logits"]!.array!.map { floats($0) }
        for batch in [512, 5] {
            let got = try LlamaContext(model: model, batch: batch, threads: 2).evaluate(.tokens(ids), logits: .all)
            #expect(got.count == ids.count * V)
            for i in 0..<ids.count {
                for v in 0..<V { worst = max(worst, abs(got[i * V + v] - expected[i][v])) }
            }
        }
        let ctx = try LlamaContext(model: model, threads: 1)
        var last: [Float] = []
        for t in ids { last = try ctx.evaluate(.tokens([t])) }
        worst = max(worst, zip(last, expected[ids.count - 1]).map { abs($0 - $1) }.max()!)
    }
    return worst
}

/// A scratch copy of an HF fixture folder: `config.json` rewritten by `edit`, weights symlinked (or
/// written by `weights`). Removed by `cleanup()`.
struct ScratchFolder {
    let path: String
    init(_ name: String, from fixture: String = "tiny-llama-hf",
         edit: (inout [(String, JSONValue)]) -> Void = { _ in },
         weights: ((String) throws -> Void)? = nil) throws {
        path = temporaryPath(name)
        mkdir(path, 0o755)
        let src = fixturePath("model/\(fixture)")
        var cfg = try JSON.parse(file: src + "/config.json").object!
        edit(&cfg)
        writeBytes(path + "/config.json", Array(JSON.serialize(.object(cfg), pretty: true).utf8))
        if let w = weights { try w(path + "/model.safetensors") } else { symlink(src + "/model.safetensors", path + "/model.safetensors") }
    }
    func cleanup() {
        for f in ["config.json", "model.safetensors", "model.safetensors.index.json",
                  "model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"] { unlink(path + "/" + f) }
        rmdir(path)
    }
}

func setKey(_ cfg: inout [(String, JSONValue)], _ key: String, _ value: JSONValue?) {
    cfg.removeAll { $0.0 == key }
    if let v = value { cfg.append((key, v)) }
}

@Suite struct HFModelTests {
    static let dir = fixturePath("model/")

    @Test func f32FolderMatchesTransformers() throws {
        let m = try LlamaModel(huggingFaceFolder: HFModelTests.dir + "tiny-llama-hf")
        #expect(m.config.ropeLayout == .neox && !m.config.tiedEmbeddings && m.config.headDim == 16)
        #expect(m.config.ropeBase == 10000 && m.config.normEps == 1e-5 && m.config.contextLength == 256)
        #expect(m.architecture == "llama" && m.gguf == nil)
        #expect(m.layers[1].weight(.k).dtype == .f32 && m.layers[1].weight(.k).shape == [32, 64])
        let err = try maxLogitError(m, ref: "hf")
        print("HF f32 folder: max |Δlogit| vs transformers \(err)")
        #expect(err < 2e-4)
    }

    @Test func shardedLegacyConfigFolderMatchesTransformers() throws {
        let m = try LlamaModel(huggingFaceFolder: HFModelTests.dir + "tiny-llama-hf-sharded")
        #expect(m.config.ropeBase == 10000 && !m.config.tiedEmbeddings)
        let err = try maxLogitError(m, ref: "hf")
        print("HF sharded folder (transformers-4 config): max |Δlogit| vs transformers \(err)")
        #expect(err < 2e-4)
    }

    @Test func tiedBF16FolderMatchesTransformers() throws {
        let m = try LlamaModel(huggingFaceFolder: HFModelTests.dir + "tiny-llama-hf-tied-bf16")
        #expect(m.config.tiedEmbeddings)
        #expect(m.tokenEmbedding.dtype == .bf16 && m.layers[0].weight(.q).dtype == .bf16)
        #expect(m.output.storage === m.tokenEmbedding.storage && m.output.offset == m.tokenEmbedding.offset)
        #expect(m.outputNorm.dtype == .f32 && m.layers[0].attnNorm.dtype == .f32)
        let err = try maxLogitError(m, ref: "tied_bf16")
        print("HF tied bf16 folder: max |Δlogit| vs transformers \(err)")
        // transformers widens the bf16 weights exactly and computes in f32, as we do from the bf16 bytes.
        #expect(err < 1e-4)
    }

    /// The GGUF stores Q/K rows permuted and rotates adjacent pairs; the HF folder rotates halves. The
    /// two must give the same logits.
    @Test func hfFolderAndGGUFGiveTheSameLogits() throws {
        let hf = try LlamaModel.load(path: HFModelTests.dir + "tiny-llama-hf")
        let gg = try LlamaModel.load(path: HFModelTests.dir + "tiny-llama-f32.gguf")
        #expect(hf.config.ropeLayout == .neox && gg.config.ropeLayout == .interleaved)
        var c1 = hf.config, c2 = gg.config
        c1.ropeLayout = .interleaved
        c2.ropeLayout = .interleaved
        #expect(c1 == c2)
        var worst: Float = 0
        for seqV in TinyModelTests.reference["sequences"]!.array! {
            let ids = ints(seqV)
            let a = try LlamaContext(model: hf, threads: 2).evaluate(.tokens(ids), logits: .all)
            let b = try LlamaContext(model: gg, threads: 2).evaluate(.tokens(ids), logits: .all)
            worst = max(worst, zip(a, b).map { abs($0 - $1) }.max()!)
        }
        print("HF folder vs f32 GGUF: max |Δlogit| \(worst)")
        #expect(worst < 1e-4)
        // The layout does matter: the GGUF weights rotated as halves give other logits.
        let wrong = LlamaModel(config: hf.config, tokenEmbedding: gg.tokenEmbedding, layers: gg.layers,
                               outputNorm: gg.outputNorm, output: gg.output, source: "", metadata: [:],
                               architecture: "llama", chatTemplate: nil, gguf: nil)
        let ids = ints(TinyModelTests.reference["sequences"]!.array![1])
        let a = try LlamaContext(model: hf, threads: 2).evaluate(.tokens(ids))
        let b = try LlamaContext(model: wrong, threads: 2).evaluate(.tokens(ids))
        #expect(zip(a, b).map { abs($0 - $1) }.max()! > 0.1)
    }

    @Test func loadPicksTheFormat() throws {
        #expect(try LlamaModel.load(path: HFModelTests.dir + "tiny-llama-hf-sharded").gguf == nil)
        #expect(try LlamaModel.load(path: HFModelTests.dir + "tiny-llama-hf/config.json").gguf == nil)
        #expect(try LlamaModel.load(path: HFModelTests.dir + "tiny-llama-q8_0.gguf").gguf != nil)
        #expect(throws: LKError.self) { try LlamaModel.load(path: HFModelTests.dir + "tiny-llama-hf/model.safetensors") }
        #expect(throws: LKError.self) { try LlamaModel.load(path: HFModelTests.dir + "nope") }
        #expect(throws: LKError.self) { try LlamaModel.load(path: HFModelTests.dir) }  // folder without config.json
        #expect(throws: LKError.self) { try LlamaModel(huggingFaceFolder: HFModelTests.dir) }
    }

    func expectConfigError(_ name: String, _ needles: [String], fixture: String = "tiny-llama-hf",
                           edit: (inout [(String, JSONValue)]) -> Void,
                           sourceLocation: SourceLocation = #_sourceLocation) throws {
        let s = try ScratchFolder(name, from: fixture, edit: edit)
        defer { s.cleanup() }
        do {
            _ = try LlamaModel(huggingFaceFolder: s.path)
            Issue.record("\(name): accepted", sourceLocation: sourceLocation)
        } catch {
            for n in needles + ["config.json"] {
                #expect(error.message.contains(n), "\(name): \(error.message)", sourceLocation: sourceLocation)
            }
        }
    }

    @Test func configErrorsAreClear() throws {
        try expectConfigError("nohidden", ["missing field hidden_size"]) { setKey(&$0, "hidden_size", nil) }
        try expectConfigError("novocab", ["missing field vocab_size"]) { setKey(&$0, "vocab_size", .null) }
        try expectConfigError("gpt2", ["model_type \"gpt2\"", "not supported"]) { setKey(&$0, "model_type", .string("gpt2")) }
        try expectConfigError("arch", ["Qwen2ForCausalLM"]) {
            setKey(&$0, "model_type", nil)
            setKey(&$0, "architectures", .array([.string("Qwen2ForCausalLM")]))
        }
        try expectConfigError("notype", ["model_type"]) {
            setKey(&$0, "model_type", nil)
            setKey(&$0, "architectures", nil)
        }
        try expectConfigError("kv3", ["num_key_value_heads 3", "num_attention_heads 4"]) {
            setKey(&$0, "num_key_value_heads", .number(3))
        }
        try expectConfigError("heads5", ["hidden_size 64", "num_attention_heads 5"]) {
            setKey(&$0, "num_attention_heads", .number(5))
            setKey(&$0, "num_key_value_heads", .number(5))
            setKey(&$0, "head_dim", nil)
        }
        try expectConfigError("strlayers", ["num_hidden_layers", "not an integer"]) {
            setKey(&$0, "num_hidden_layers", .string("2"))
        }
        try expectConfigError("yarn", ["\"yarn\"", "rope_parameters"]) {
            setKey(&$0, "rope_parameters", .object([("rope_theta", .number(10000)), ("rope_type", .string("yarn")), ("factor", .number(4))]))
        }
        try expectConfigError("llama3", ["\"llama3\"", "rope_scaling"], fixture: "tiny-llama-hf-sharded") {
            setKey(&$0, "rope_scaling", .object([("rope_type", .string("llama3")), ("factor", .number(8))]))
        }
        try expectConfigError("linear", ["\"linear\""], fixture: "tiny-llama-hf-sharded") {
            setKey(&$0, "rope_scaling", .object([("type", .string("linear")), ("factor", .number(2))]))
        }
        try expectConfigError("bias", ["attention_bias"]) { setKey(&$0, "attention_bias", .bool(true)) }
        try expectConfigError("gelu", ["hidden_act", "gelu"]) { setKey(&$0, "hidden_act", .string("gelu")) }
        // A layer count the weights don't have: the missing tensor is named.
        let s = try ScratchFolder("layers3") { setKey(&$0, "num_hidden_layers", .number(3)) }
        defer { s.cleanup() }
        do {
            _ = try LlamaModel(huggingFaceFolder: s.path)
            Issue.record("3 layers accepted")
        } catch {
            #expect(error.message.contains("missing tensor model.layers.2.self_attn.q_proj.weight"), "\(error.message)")
        }
        // Accepted variants: mistral model_type with a sliding window; rope_scaling null; tied flag absent.
        let ok = try ScratchFolder("mistral", from: "tiny-llama-hf-sharded") {
            setKey(&$0, "model_type", .string("mistral"))
            setKey(&$0, "architectures", .array([.string("MistralForCausalLM")]))
            setKey(&$0, "sliding_window", .number(128))
            setKey(&$0, "rope_scaling", .null)
            setKey(&$0, "tie_word_embeddings", nil)
        }
        defer { ok.cleanup() }
        try ok.linkShards()
        let m = try LlamaModel(huggingFaceFolder: ok.path)
        #expect(m.architecture == "mistral" && m.config.contextLength == 128 && !m.config.tiedEmbeddings)
    }

    @Test func missingOrMisshapenTensorsAreNamed() throws {
        let src = try SafetensorsFile(path: HFModelTests.dir + "tiny-llama-hf/model.safetensors")
        func folder(_ name: String, _ change: @escaping (inout SafetensorsWriter, String, Tensor) throws -> Void) throws -> ScratchFolder {
            try ScratchFolder(name, weights: { p in
                var w = SafetensorsWriter()
                for n in src.tensorNames { try change(&w, n, try src.tensor(n)) }
                try w.write(to: p)
            })
        }
        let missing = try folder("missing") { w, n, t in if n != "model.layers.1.mlp.up_proj.weight" { try w.add(n, t) } }
        defer { missing.cleanup() }
        do {
            _ = try LlamaModel(huggingFaceFolder: missing.path)
            Issue.record("missing tensor accepted")
        } catch {
            #expect(error.message.contains("missing tensor model.layers.1.mlp.up_proj.weight"), "\(error.message)")
            #expect(error.message.contains(missing.path), "\(error.message)")
        }
        let shaped = try folder("shape") { w, n, t in
            try w.add(n, n == "model.layers.0.self_attn.k_proj.weight" ? try Tensor(zeros: [64, 64]) : t)
        }
        defer { shaped.cleanup() }
        do {
            _ = try LlamaModel(huggingFaceFolder: shaped.path)
            Issue.record("wrong shape accepted")
        } catch {
            #expect(error.message.contains("model.layers.0.self_attn.k_proj.weight has shape [64, 64], expected [32, 64]"), "\(error.message)")
            #expect(error.message.contains(shaped.path + "/model.safetensors"), "\(error.message)")
        }
        // Tied config over untied weights is fine (lm_head ignored); untied config without lm_head is not.
        let nohead = try folder("nohead") { w, n, t in if n != "lm_head.weight" { try w.add(n, t) } }
        defer { nohead.cleanup() }
        #expect(throws: LKError.self) { try LlamaModel(huggingFaceFolder: nohead.path) }
        let f64 = try ScratchFolder("f64", weights: { p in
            // An F64 weight: the file opens, the model load names the dtype.
            var bytes = readBytes(HFModelTests.dir + "tiny-llama-hf/model.safetensors")
            let n = Int(bytes.prefix(8).withUnsafeBytes { $0.loadUnaligned(as: UInt64.self) })
            var header = String(decoding: bytes[8..<(8 + n)], as: UTF8.self)
            header = header.replacingFirst(#""model.norm.weight":{"dtype":"F32","shape":[64]"#,
                                           with: #""model.norm.weight":{"dtype":"F64","shape":[32]"#)
            bytes.replaceSubrange(8..<(8 + n), with: Array(header.utf8))
            writeBytes(p, bytes)
        })
        defer { f64.cleanup() }
        do {
            _ = try LlamaModel(huggingFaceFolder: f64.path)
            Issue.record("F64 weight accepted")
        } catch {
            #expect(error.message.contains("model.norm.weight") && error.message.contains("F64"), "\(error.message)")
        }
    }
}

extension ScratchFolder {
    /// Symlink the sharded fixture's index and shards (instead of model.safetensors).
    func linkShards() throws {
        unlink(path + "/model.safetensors")
        let src = fixturePath("model/tiny-llama-hf-sharded")
        for f in ["model.safetensors.index.json", "model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"] {
            symlink(src + "/" + f, path + "/" + f)
        }
    }
}

extension String {
    /// Replace the first occurrence of `a` (byte-wise; no Foundation).
    func replacingFirst(_ a: String, with b: String) -> String {
        let s = Array(utf8), x = Array(a.utf8)
        guard !x.isEmpty, s.count >= x.count else { return self }
        for i in 0...(s.count - x.count) where Array(s[i..<(i + x.count)]) == x {
            return String(decoding: s[..<i] + Array(b.utf8) + s[(i + x.count)...], as: UTF8.self)
        }
        return self
    }
}
