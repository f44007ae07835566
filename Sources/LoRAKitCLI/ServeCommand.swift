import ArgumentParser
import Dispatch
import LoRAKit
import LoRAKitServe
#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// `lorakit serve`: the OpenAI-compatible HTTP server (LoRAKitServe).
struct ServeCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "serve",
        abstract: "Serve the model and LoRA adapters over OpenAI-compatible HTTP, with continuous batching.",
        discussion: """
            Routes: POST /v1/completions, POST /v1/chat/completions (stream: true for server-sent events), GET /v1/models, \
            POST /v1/load_lora_adapter {lora_name, lora_path}, POST /v1/unload_lora_adapter {lora_name}, GET /health, \
            GET /metrics (Prometheus text). A request's "model" names the base model (--model-name) or an adapter.
            """)
    @Option(help: "GGUF file or Hugging Face folder.") var model: String
    @Option(help: "Adapter NAME=PATH (PEFT folder or GGUF LoRA; repeatable); requests select it with \"model\": NAME.")
    var adapter: [String] = []
    @Option(help: "The base model's name in requests and /v1/models (default: the file name without .gguf).")
    var modelName: String?
    @Option(help: "Sequences decoded together (slots of the continuous batch).") var maxSequences: Int = 4
    @Option(help: "Requests that may wait for a free sequence; more get 429.") var maxQueue: Int = 64
    @Option(help: "Tokens one engine step evaluates at most: long prompts are prefilled in chunks of this size, so they do not stall the other streams (vLLM's --max-num-batched-tokens).")
    var maxBatchTokens: Int = 512
    @Option(help: "Positions per sequence, prompt + completion (default: min(model context, 4096)).") var ctx: Int?
    @Option(help: "Engine: batch (one BatchContext: each step reads the weights once for all sequences) or contexts (one LlamaContext per sequence, evaluated one after the other).")
    var engine: String = "batch"
    @Option(help: "Require Authorization: Bearer KEY on every route but /health (default: $LORAKIT_API_KEY if set).")
    var apiKey: String?
    @Option(help: "Address to listen on.") var host: String = "127.0.0.1"
    @Option(help: "Port (0 = any free port; the chosen one is printed).") var port: Int = 8000
    @OptionGroup var threadOpt: ThreadOption
    @OptionGroup var kv: KVTypeOption

    func run() throws {
        try runReporting {
            let m = try loadModel(model)
            var name = modelName ?? String(model.split(separator: "/").last ?? Substring(model))
            if modelName == nil, name.hasSuffix(".gguf") { name.removeLast(5) }
            var opts = ServeOptions(modelName: name, modelPath: model)
            opts.maxSequences = maxSequences
            opts.maxQueue = maxQueue
            opts.maxStepTokens = maxBatchTokens
            opts.apiKey = apiKey ?? getenvString("LORAKIT_API_KEY")
            opts.host = host
            opts.port = port
            let (eng, engName, positions) = try makeServeEngine(engine, model: m, maxSequences: maxSequences, ctx: ctx,
                                                                threads: threadOpt.threads, kvType: kv.kvType)
            let server = try LoRAServer(model: m, engine: eng, engineName: engName, maxPositions: positions, options: opts)
            for spec in adapter {
                guard let eq = spec.firstIndex(of: "=") else {
                    throw LKError.invalidArgument("--adapter \"\(spec)\": expected NAME=PATH")
                }
                do throws(ServeError) {
                    try server.registry.load(name: String(spec[..<eq]), path: String(spec[spec.index(after: eq)...]))
                } catch {
                    throw LKError.invalidArgument("--adapter \"\(spec)\": \(error.message)")
                }
            }
            let served = [name] + server.registry.list().map(\.name)
            let done = DispatchSemaphore(value: 0)
            nonisolated(unsafe) var failure: (any Error)? = nil
            Task.detached {
                do {
                    try await server.run { h, p in
                        writeStderr("lorakit serve: listening on http://\(h):\(p) (engine \(engName), \(maxSequences) sequences × \(positions) positions, \(kv.kvType.rawValue) KV cache, models: \(served.joined(separator: ", ")))\n")
                    }
                } catch {
                    failure = error
                }
                done.signal()
            }
            done.wait()
            if let failure { throw LKError.io("lorakit serve: \(failure)") }
        }
    }
}

func getenvString(_ name: String) -> String? {
    guard let v = getenv(name) else { return nil }
    return String(cString: v)
}

/// The engine `--engine` names, for `maxSequences` sequences of `ctx` positions, KV caches of `kvType`.
func makeServeEngine(_ kind: String, model: LlamaModel, maxSequences: Int, ctx: Int?,
                     threads: Int, kvType: KVCacheType = .f32) throws(LKError) -> (any SequenceBatchEngine, String, Int) {
    switch kind {
    case "batch":
        let e = try BatchContext(model: model, maxSequences: maxSequences, maxPositions: ctx, threads: threads, kvType: kvType)
        return (e, "batch", e.maxPositions)
    case "contexts":
        let e = try LlamaContextEngine(model: model, maxSequences: maxSequences, maxPositions: ctx, threads: threads,
                                       kvType: kvType)
        return (e, "contexts", e.maxPositions)
    default:
        throw .invalidOption(field: "engine", problem: "\"\(kind)\" must be batch or contexts")
    }
}
