import ArgumentParser
import LoRAKit

/// `PATH[:SCALE]` → (path, scale). The suffix after the last ':' is a scale only if it parses as a number.
func parseAdapterSpec(_ spec: String) throws(LKError) -> (String, Float) {
    if let i = spec.lastIndex(of: ":"), let s = Float(spec[spec.index(after: i)...]) {
        guard s.isFinite else { throw .invalidArgument("adapter scale in \"\(spec)\" is not finite") }
        return (String(spec[..<i]), s)
    }
    return (spec, 1)
}

/// `--plugin PATH` (repeatable): adapter plugins to load before any adapter (shipped plugins and those on
/// LORAKIT_PLUGIN_PATH are found without it).
struct PluginOption: ParsableArguments {
    @Option(help: "Load this adapter plugin (a shared library; repeatable) before the adapters.") var plugin: [String] = []

    func load() throws(LKError) {
        for p in plugin { try PluginRegistry.shared.load(path: p) }
    }
}

/// The adapters given with `--adapter`: LoRA ones and plugin-type ones (IA³, DoRA, …), with their scales.
struct LoadedAdapters {
    var lora: [(LoRAAdapter, Float)] = []
    var plugins: [(PluginAdapter, Float)] = []

    /// The LoRA adapters, or an error naming the first plugin adapter (for LoRA-only commands).
    func loraOnly(_ command: String) throws(LKError) -> [(LoRAAdapter, Float)] {
        if let (p, _) = plugins.first {
            throw .unsupported("\(command): adapter \(p.name) is of plugin type \"\(p.type.name)\"; \(command) takes LoRA adapters only")
        }
        return lora
    }
}

/// Load every `--adapter` for `model` (a PEFT folder of a plugin type becomes a plugin adapter).
func loadAdapters(_ specs: [String], model: LlamaModel) throws(LKError) -> LoadedAdapters {
    var out = LoadedAdapters()
    for s in specs {
        let (path, scale) = try parseAdapterSpec(s)
        if PluginAdapter.isPluginFolder(path) {
            out.plugins.append((try PluginAdapter.load(peftDirectory: path, model: model), scale))
        } else {
            out.lora.append((try LoRAAdapter.load(path: path, model: model), scale))
        }
    }
    return out
}

func attach(_ adapters: LoadedAdapters, to ctx: LlamaContext) throws(LKError) {
    for (a, s) in adapters.lora { try ctx.attach(a, scale: s) }
    for (a, s) in adapters.plugins { try ctx.attach(a, scale: s) }
}

struct MergeCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "merge",
        abstract: "Write a GGUF model with adapters merged into its weights: W' = W + Σ scale·s·B·A.")
    @Option(help: "Base model (GGUF).") var model: String
    @Option(help: "Adapter PATH[:SCALE] (PEFT folder or GGUF LoRA; repeatable).") var adapter: [String] = []
    @Option(help: "Output GGUF file.") var out: String
    @Option(help: "Type of the merged weights: f32, f16, q8_0, or same (the base's type, re-quantized).")
    var outtype: String = "same"
    @OptionGroup var plugins: PluginOption

    func run() throws {
        try runReporting {
            guard !adapter.isEmpty else { throw LKError.invalidArgument("give at least one --adapter") }
            let m = try loadModel(model)
            let t: MergedWeightType
            switch outtype {
            case "f32": t = .f32
            case "f16": t = .f16
            case "q8_0": t = .q8_0
            case "same": t = .same
            default: throw LKError.invalidArgument("--outtype \(outtype): expected f32, f16, q8_0 or same")
            }
            try plugins.load()
            let adapters = try loadAdapters(adapter, model: m)
            try writeMergedGGUF(model: m, adapters: adapters.lora, plugins: adapters.plugins, outType: t, path: out)
            print("wrote \(out)")
        }
    }
}

struct ConvertCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "convert",
        abstract: "Convert an adapter between PEFT and llama.cpp GGUF LoRA (rsLoRA and rank/alpha patterns are folded exactly into GGUF).")
    @Option(help: "The base model the adapter belongs to (checks shapes; gives Q/K row order).") var model: String
    @Option(help: "Input adapter (PEFT folder or GGUF LoRA).") var adapter: String
    @Option(help: "Output format: peft or gguf.") var to: String
    @Option(help: "Output path (folder for peft, file for gguf).") var out: String
    @OptionGroup var plugins: PluginOption

    func run() throws {
        try runReporting {
            guard let f = AdapterFormat(rawValue: to) else { throw LKError.invalidArgument("--to \(to): expected peft or gguf") }
            let m = try loadModel(model)
            try plugins.load()
            if PluginAdapter.isPluginFolder(adapter) {
                let a = try PluginAdapter.load(peftDirectory: adapter, model: m)
                guard f == .peft else {
                    throw LKError.unsupported("convert: \(adapter) is of plugin type \"\(a.type.name)\": GGUF LoRA files hold LoRA only (--to peft re-saves it)")
                }
                try a.save(peftDirectory: out)
                print("wrote \(out)")
                return
            }
            let a = try LoRAAdapter.load(path: adapter, model: m)
            try a.save(path: out, format: f)
            print("wrote \(out)")
        }
    }
}

struct CombineCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "combine",
        abstract: "Combine adapters into one: the exact weighted sum (ranks concatenated), or its SVD truncation to --rank.")
    @Option(help: "The base model the adapters belong to.") var model: String
    @Option(help: "Adapter PATH[:WEIGHT] (repeatable).") var adapter: [String] = []
    @Option(help: "Truncate each module's weighted sum to this rank (SVD); default: exact.") var rank: Int?
    @Option(help: "Output format: peft or gguf.") var to: String = "peft"
    @Option(help: "Output path.") var out: String
    @Flag(help: "Print JSON.") var json = false
    @OptionGroup var plugins: PluginOption

    func run() throws {
        try runReporting {
            guard !adapter.isEmpty else { throw LKError.invalidArgument("give at least one --adapter") }
            guard let f = AdapterFormat(rawValue: to) else { throw LKError.invalidArgument("--to \(to): expected peft or gguf") }
            let m = try loadModel(model)
            try plugins.load()
            let adapters = try loadAdapters(adapter, model: m).loraOnly("combine")
            let (c, energy) = try combine(adapters, rank: rank)
            try c.save(path: out, format: f)
            if json {
                printJSON(.object([("out", .string(out)), ("retained_energy", energy.map { .number($0) } ?? .null)]))
            } else {
                print("wrote \(out)" + (energy.map { "; retained energy \($0)" } ?? ""))
            }
        }
    }
}

struct PluginsCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "plugins",
        abstract: "List the adapter plugins: those given with --plugin, on LORAKIT_PLUGIN_PATH and shipped (.build/plugins or <prefix>/lib/lorakit/plugins).")
    @OptionGroup var plugins: PluginOption
    @Flag(help: "Print JSON (as lk_plugins_json).") var json = false

    func run() throws {
        try runReporting {
            try plugins.load()
            let errors = PluginRegistry.shared.loadSearchPath()
            let all = PluginRegistry.shared.plugins
            if json {
                printJSON(.array(all.map(\.info) + errors.map { .object([("error", .string($0))]) }))
                return
            }
            print("search path: \(PluginRegistry.searchPath.joined(separator: ":"))")
            for p in all {
                print("\(p.name) \(p.version) (ABI \(p.abiMajor).\(p.abiMinor)) \(p.path)")
                for t in p.types {
                    let flag = t.peftFlag.map { " + \($0)" } ?? ""
                    print("  \(t.name): \(t.summary) [peft_type \(t.peftType)\(flag); keys \(t.keySuffixes.joined(separator: ", "))\(t.canMerge ? "; merge" : "")\(t.canTrain ? "; train" : "")]")
                }
            }
            for e in errors { print("not loaded: \(e)") }
        }
    }
}
