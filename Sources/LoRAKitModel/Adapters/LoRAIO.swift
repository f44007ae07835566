import LoRAKitCore
import LoRAKitKernels
import LoRAKitFormats
import LoRAKitTokenizer
import LoRAKitTemplates

/// Loading and saving `LoRAAdapter`s in the formats people use: PEFT folders (adapter_config.json +
/// adapter_model.safetensors) and llama.cpp GGUF LoRA files.
#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

public enum AdapterFormat: String, Sendable, CaseIterable {
    case peft, gguf
}

extension LoRAAdapter {
    /// Build a runtime adapter from file tensors, checked against `model` (architecture sizes, shapes,
    /// NaN/Inf). The adapter keeps the file's row order; attaching permutes q/k rows when needed.
    public convenience init(tensors t: LoRATensors, model: LlamaModel, name: String) throws(LKError) {
        try t.check(model.config)
        var mods: [LoRAModule] = []
        for e in t.entries {
            mods.append(try LoRAModule(layer: e.layer, module: e.module, a: e.a, b: e.b, alpha: e.alpha,
                                       rsLoRA: t.useRSLoRA))
        }
        let targets = Set(t.entries.map(\.module))
        let layers = Array(Set(t.entries.map(\.layer))).sorted()
        // The config summarises the file; exact per-module ranks/alphas live in the modules.
        let ranks = t.entries.map(\.rank)
        let common = LoRATensors.mostCommon(ranks) ?? ranks.first ?? 1
        var cfg = LoRAConfig(rank: common, alpha: LoRATensors.mostCommon(t.entries.map(\.alpha)) ?? Float(common))
        cfg.useRSLoRA = t.useRSLoRA
        cfg.targets = targets
        cfg.layers = layers.count == model.config.nLayers ? nil : layers
        cfg.dropout = t.dropout
        for e in t.entries {
            let key = LoRAConfig.hfModuleName(layer: e.layer, module: e.module)
            if e.rank != cfg.rank { cfg.rankPattern[key] = e.rank }
            if e.alpha != cfg.alpha { cfg.alphaPattern[key] = e.alpha }
        }
        try self.init(name: name, config: cfg, modelConfig: model.config, rowLayout: t.rowLayout, modules: mods)
        try check(against: model)
    }

    /// Load a PEFT folder or a GGUF LoRA file for `model`.
    public static func load(path: String, model: LlamaModel, name: String? = nil) throws(LKError) -> LoRAAdapter {
        var st = stat()
        guard stat(path, &st) == 0 else { throw .io("\(path): cannot open adapter: \(String(cString: strerror(errno)))") }
        let isDir = (st.st_mode & S_IFMT) == S_IFDIR
        let tensors = isDir ? try LoRATensors(peftDirectory: path) : try LoRATensors(ggufFile: path)
        let base = path.split(separator: "/").last.map(String.init) ?? path
        return try LoRAAdapter(tensors: tensors, model: model, name: name ?? base)
    }

    /// The adapter's tensors (each module's own rank and alpha), in its row order.
    public func fileTensors() throws(LKError) -> LoRATensors {
        var entries: [LoRATensors.Entry] = []
        for k in keys {
            guard let m = modules[k] else { continue }
            entries.append(LoRATensors.Entry(layer: m.layer, module: m.module, a: m.a, b: m.b, alpha: m.alpha))
        }
        var t = try LoRATensors(entries: entries, useRSLoRA: config.useRSLoRA, rowLayout: rowLayout)
        t.dropout = config.dropout
        return t
    }

    /// Save as a PEFT folder or a GGUF LoRA file (atomically).
    public func save(path: String, format: AdapterFormat) throws(LKError) {
        let t = try fileTensors()
        switch format {
        case .peft: try t.writePEFT(directory: path, config: modelConfig)
        case .gguf: try t.writeGGUF(path: path, config: modelConfig)
        }
    }
}
