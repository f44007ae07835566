import ArgumentParser
import LoRAKit
#if canImport(Glibc)
import Glibc
#endif

/// Run a body that throws LKError and turn failures into a clean message and exit code 1.
func runReporting(_ body: () throws -> Void) throws {
    do {
        try body()
    } catch let e as LKError {
        writeStderr("lorakit: error: \(e.namingField(flagName).message)\n")
        throw ExitCode(1)
    }
}

/// The flag of an option the core names as C and Python do (`lr` → `--lr`, `sampler.top_k` → `--top-k`,
/// `warmup_steps` → `--warmup`, `layers[1]` → `--layers[1]`).
func flagName(_ field: String) -> String {
    let name = field.split(separator: ".").last.map(String.init) ?? field
    let base = String(name.prefix { $0 != "[" }), index = name.dropFirst(base.count)
    let renamed = ["temperature": "temp", "warmup_steps": "warmup", "init_adapter": "init", "out_dir": "out",
                   "resume_dir": "resume", "log_path": "log", "use_rslora": "rslora",
                   "completion_only_loss": "completion-only"][base] ?? String(base.map { $0 == "_" ? "-" : $0 })
    return "--" + renamed + index
}

func loadModel(_ path: String) throws(LKError) -> LlamaModel {
    try LlamaModel.load(path: path)
}

func printJSON(_ v: JSONValue) { print(JSON.serialize(v)) }

func readText(file: String?, text: String?) throws -> String {
    if let t = text { return t }
    guard let f = file else { throw ValidationError("give --file or --text") }
    let bytes = try readFile(f)
    return String(decoding: bytes, as: UTF8.self)
}

/// Peak resident set size of this process in bytes.
func peakRSSBytes() -> Int {
    var u = rusage()
    getrusage(RUSAGE_SELF.rawValue, &u)
    return Int(u.ru_maxrss) * 1024
}

struct ThreadOption: ParsableArguments {
    @Option(help: "Threads (default: all cores).") var threads: Int = ThreadPool.hardwareConcurrency
}

extension KVCacheType: ExpressibleByArgument {}

/// `--kv-type`: the element type of an inference context's KV cache.
struct KVTypeOption: ParsableArguments {
    @Option(help: "KV cache element type: f32 (exact) or f16 (half the memory and half the bytes a decoded token reads).")
    var kvType: KVCacheType = .f32
}

extension KeptActivations: ExpressibleByArgument {}

/// `--keep-activations`: how training keeps the activations its backward reads.
struct KeepActivationsOption: ParsableArguments {
    @Option(help: "Keep the activations the backward reads in f32 (default) or f16 (about half the activation memory; gradients within f16 rounding).")
    var keepActivations: KeptActivations = .f32
}

/// `--chat-limit NAME=VALUE`: the model's chat-template limits (TemplateLimits), for `generate --chat` and for
/// training on {"messages"} data.
struct ChatLimitOptions: ParsableArguments {
    @Option(help: ArgumentHelp("A chat-template limit NAME=VALUE (repeatable); NAME: \(ChatLimitOptions.names.joined(separator: ", ")).",
                               valueName: "name=value"))
    var chatLimit: [String] = []

    /// The limits' names as flags spell them (`loop-iterations`).
    static let names = TemplateLimits.named.map { dashed($0.name) }
    static func dashed(_ s: String) -> String { String(s.map { $0 == "_" ? "-" : $0 }) }

    /// Sets each given limit on `model`, failing with the flag, the name and the reason.
    func apply(to model: LlamaModel) throws(LKError) {
        let names = Self.names
        for spec in chatLimit {
            let parts = spec.split(separator: "=", maxSplits: 1).map(String.init)
            guard parts.count == 2, let i = names.firstIndex(of: Self.dashed(parts[0])) else {
                throw .invalidArgument("--chat-limit \"\(spec)\": expected NAME=VALUE with NAME one of \(names.joined(separator: ", "))")
            }
            guard let v = Int(parts[1]), v > 0 else {
                throw .invalidArgument("--chat-limit \(names[i])=\(parts[1]): the value must be a positive integer")
            }
            do throws(LKError) {
                _ = try model.exchangeChatTemplateLimit(TemplateLimits.named[i].field, v)
            } catch {
                throw .invalidArgument("--chat-limit \(names[i])=\(v): \(error.message)")
            }
        }
    }
}

struct InfoCommand: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "info", abstract: "Show a model's architecture, sizes, vocabulary and chat template.")
    @Argument(help: "GGUF file or Hugging Face folder.") var model: String
    @Flag(help: "Print JSON.") var json = false

    func run() throws {
        try runReporting {
            let m = try loadModel(model)
            let c = m.config
            let tok = m.tokenizer
            var dtypes: [String: Int] = [:]
            for l in m.layers { for t in l.linear { dtypes[t.dtype.description, default: 0] += 1 } }
            let obj: [(String, JSONValue)] = [
                ("path", .string(m.source)),
                ("architecture", .string(m.architecture)),
                ("vocab_size", .number(Double(c.vocabSize))),
                ("context_length", .number(Double(c.contextLength))),
                ("embedding_length", .number(Double(c.dim))),
                ("feed_forward_length", .number(Double(c.hiddenDim))),
                ("block_count", .number(Double(c.nLayers))),
                ("head_count", .number(Double(c.nHeads))),
                ("head_count_kv", .number(Double(c.nKVHeads))),
                ("head_dim", .number(Double(c.headDim))),
                ("rope_dims", .number(Double(c.ropeDims))),
                ("rope_base", .number(Double(c.ropeBase))),
                ("rms_norm_eps", .number(Double(c.normEps))),
                ("rope_layout", .string(c.ropeLayout == .interleaved ? "interleaved" : "neox")),
                ("tied_embeddings", .bool(c.tiedEmbeddings)),
                ("weight_bytes", .number(Double(m.weightBytes))),
                ("embedding_dtype", .string(m.tokenEmbedding.dtype.description)),
                ("linear_dtypes", .object(dtypes.sorted { $0.key < $1.key }.map { ($0.key, .number(Double($0.value))) })),
                ("tokenizer", tok.map { t in .object([
                    ("vocab_size", .number(Double(t.vocabSize))),
                    ("pre_tokenizer", .string(t.preTokenizer.rawValue)),
                    ("bos", t.bos.map { .number(Double($0)) } ?? .null),
                    ("eos", t.eos.map { .number(Double($0)) } ?? .null),
                    ("eot", t.eot.map { .number(Double($0)) } ?? .null),
                    ("add_bos", .bool(t.addBOS)),
                ]) } ?? .string("none: \(m.tokenizerError ?? "")")),
                ("chat_template", m.chatTemplate.map { .string($0) } ?? .null),
                // A template that does not parse is shown with the reason (the model still loads and runs).
                ("chat_template_error", m.chatTemplate == nil ? .null : { () -> JSONValue in
                    do throws(LKError) { _ = try m.chatFormatter(); return .null } catch { return .string(error.message) }
                }()),
            ]
            if json {
                printJSON(.object(obj))
            } else {
                for (k, v) in obj {
                    switch v {
                    case .string(let s): print("\(k): \(s)")
                    default: print("\(k): \(JSON.serialize(v))")
                    }
                }
            }
        }
    }
}

struct TokenizeCommand: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "tokenize", abstract: "Tokenize text with the model's tokenizer.")
    @Option(help: "GGUF file or Hugging Face folder.") var model: String
    @Option(help: "Text file to tokenize.") var file: String?
    @Option(help: "Text to tokenize.") var text: String?
    @Flag(help: "Do not add BOS/EOS (default: as the model's metadata says).") var noAddSpecial = false
    @Flag(help: "Treat special-token text such as <|im_start|> as plain text.") var noParseSpecial = false
    @Flag(help: "Print JSON: {\"tokens\": [...], \"count\": n}.") var json = false

    func run() throws {
        try runReporting {
            let m = try loadModel(model)
            let tok = try m.requireTokenizer()
            let s = try readText(file: file, text: text)
            let ids = tok.encode(s, addSpecial: noAddSpecial ? false : nil, parseSpecial: !noParseSpecial)
            if json {
                printJSON(.object([("tokens", .array(ids.map { .number(Double($0)) })), ("count", .number(Double(ids.count)))]))
            } else {
                for id in ids { print("\(id)\t\(JSON.serialize(.string(tok.token(id) ?? "")))") }
            }
        }
    }
}

struct SamplingOptions: ParsableArguments {
    @Option(name: .customLong("temp"), help: "Temperature (0 = greedy).") var temperature: Float = 0.8
    @Option(help: "Top-k (0 = off).") var topK: Int = 40
    @Option(help: "Top-p (1 = off).") var topP: Float = 0.95
    @Option(help: "Min-p (0 = off).") var minP: Float = 0.05
    @Option(help: "Repetition penalty (1 = off).") var repeatPenalty: Float = 1.0
    @Option(help: "Tokens the penalty looks back (0 = all).") var repeatLastN: Int = 64
    @Option(help: "Random seed.") var seed: UInt64 = 0

    var params: SamplerParams {
        var p = SamplerParams()
        p.temperature = temperature
        p.topK = topK
        p.topP = topP
        p.minP = minP
        p.repetitionPenalty = repeatPenalty
        p.penaltyLastN = repeatLastN
        p.seed = seed
        return p
    }
}

struct GenerateCommand: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "generate", abstract: "Generate text from a prompt.")
    @Option(help: "GGUF file or Hugging Face folder.") var model: String
    @Option(help: "Prompt text.") var prompt: String
    @Flag(help: "Wrap the prompt as a user message in the model's chat template.") var chat = false
    @Option(help: "System message (with --chat).") var system: String?
    @Option(help: "Maximum tokens to generate.") var maxTokens: Int = 128
    @Option(help: "Stop when the output contains this string (repeatable).") var stop: [String] = []
    @Option(help: "Context size (default: min(model context, 4096)).") var ctx: Int?
    @Option(help: "LoRA adapter PATH[:SCALE] (PEFT folder or GGUF LoRA; repeatable: adapters stack).")
    var adapter: [String] = []
    @OptionGroup var plugins: PluginOption
    @OptionGroup var sampling: SamplingOptions
    @OptionGroup var threadOpt: ThreadOption
    @OptionGroup var kv: KVTypeOption
    @OptionGroup var chatLimits: ChatLimitOptions
    @Flag(help: "Print JSON with the text, token ids and timings (no streaming).") var json = false

    func run() throws {
        try runReporting {
            let m = try loadModel(model)
            try chatLimits.apply(to: m)
            let tok = try m.requireTokenizer()
            var text = prompt
            if chat {
                var msgs: [ChatMessage] = []
                if let s = system { msgs.append(ChatMessage(role: "system", content: s)) }
                msgs.append(ChatMessage(role: "user", content: prompt))
                text = try m.applyChatTemplate(messages: msgs, addGenerationPrompt: true)
            }
            let ids = tok.encode(text, addSpecial: chat ? false : nil)
            let context = try LlamaContext(model: m, maxPositions: ctx, threads: threadOpt.threads, kvType: kv.kvType)
            try plugins.load()
            try attach(try loadAdapters(adapter, model: m), to: context)
            var p = GenerateParams()
            p.maxTokens = maxTokens
            p.sampler = sampling.params
            p.stop = stop
            let r = try generate(context: context, prompt: ids, params: p, onText: json ? nil : { piece, _ in
                writeStdout(piece)
                return true
            })
            if json {
                printJSON(.object([
                    ("text", .string(r.text)),
                    ("tokens", .array(r.tokens.map { .number(Double($0)) })),
                    ("prompt_tokens", .number(Double(r.promptTokens))),
                    ("stop_reason", .string(r.stopReason.rawValue)),
                    ("prefill_seconds", .number(r.prefillSeconds)),
                    ("decode_seconds", .number(r.decodeSeconds)),
                ]))
            } else {
                print("")
            }
        }
    }
}

struct ScoreCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "score",
        abstract: "Perplexity of a text: windows of --ctx tokens from token 0, each evaluated alone, every position but the first predicted.")
    @Option(help: "GGUF file or Hugging Face folder.") var model: String
    @Option(help: "Text file (tokenized without BOS).") var file: String
    @Option(help: "Window size in tokens.") var ctx: Int = 512
    @Option(help: "Score only the first N tokens.") var maxTokens: Int?
    @Option(help: "LoRA adapter PATH[:SCALE] (repeatable).") var adapter: [String] = []
    @OptionGroup var plugins: PluginOption
    @OptionGroup var threadOpt: ThreadOption
    @OptionGroup var kv: KVTypeOption
    @Flag(help: "Print JSON: {\"tokens\", \"nll\", \"ppl\"}.") var json = false

    func run() throws {
        try runReporting {
            let m = try loadModel(model)
            let tok = try m.requireTokenizer()
            let text = String(decoding: try readFile(file), as: UTF8.self)
            let ids = tok.encode(text, addSpecial: false)
            let context = try LlamaContext(model: m, maxPositions: ctx, batch: ctx, threads: threadOpt.threads,
                                           kvType: kv.kvType)
            try plugins.load()
            try attach(try loadAdapters(adapter, model: m), to: context)
            let r = try score(context: context, tokens: ids, window: ctx, maxTokens: maxTokens)
            if json {
                printJSON(.object([("tokens", .number(Double(r.tokens))), ("nll", .number(r.meanNLL)),
                                   ("ppl", .number(r.perplexity)), ("seconds", .number(r.seconds))]))
            } else {
                print("tokens: \(r.tokens)  mean NLL: \(r.meanNLL)  perplexity: \(r.perplexity)  (\(r.seconds) s)")
            }
        }
    }
}

/// Unbuffered writes to the standard streams (no shared FILE* globals under strict concurrency).
func writeStdout(_ s: String) { var b = Array(s.utf8); _ = write(1, &b, b.count) }
func writeStderr(_ s: String) { var b = Array(s.utf8); _ = write(2, &b, b.count) }
