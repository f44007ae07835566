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

/// Load every `--adapter` for `model`.
func loadAdapters(_ specs: [String], model: LlamaModel) throws(LKError) -> [(LoRAAdapter, Float)] {
    var out: [(LoRAAdapter, Float)] = []
    for s in specs {
        let (path, scale) = try parseAdapterSpec(s)
        out.append((try LoRAAdapter.load(path: path, model: model), scale))
    }
    return out
}

func attach(_ adapters: [(LoRAAdapter, Float)], to ctx: LlamaContext) throws(LKError) {
    for (a, s) in adapters { try ctx.attach(a, scale: s) }
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
            let adapters = try loadAdapters(adapter, model: m)
            try writeMergedGGUF(model: m, adapters: adapters, outType: t, path: out)
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

    func run() throws {
        try runReporting {
            guard let f = AdapterFormat(rawValue: to) else { throw LKError.invalidArgument("--to \(to): expected peft or gguf") }
            let m = try loadModel(model)
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

    func run() throws {
        try runReporting {
            guard !adapter.isEmpty else { throw LKError.invalidArgument("give at least one --adapter") }
            guard let f = AdapterFormat(rawValue: to) else { throw LKError.invalidArgument("--to \(to): expected peft or gguf") }
            let m = try loadModel(model)
            let adapters = try loadAdapters(adapter, model: m)
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
