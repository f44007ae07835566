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
    /// An adapter of a file's modules for `model`, checked against it (architecture sizes, shapes,
    /// NaN/Inf). The adapter keeps the file's row order; attaching permutes q/k rows when needed. The
    /// config summarises the file (`LoRAConfig(describing:)`); exact ranks and alphas live in the modules.
    public convenience init(tensors t: LoRATensors, model: LlamaModel, name: String) throws(LKError) {
        try t.check(model.config, for: model.source)
        try self.init(name: name, config: LoRAConfig(describing: t.entries, nLayers: model.config.nLayers, dropout: t.dropout),
                      modelConfig: model.config, rowLayout: t.rowLayout, modules: t.entries)
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

    /// The adapter's modules (each with its own rank and alpha), in its row order.
    public func fileTensors() -> LoRATensors { tensors }

    /// Save as a PEFT folder or a GGUF LoRA file (atomically).
    public func save(path: String, format: AdapterFormat) throws(LKError) {
        let t = fileTensors()
        switch format {
        case .peft: try t.writePEFT(directory: path, config: modelConfig)
        case .gguf: try t.writeGGUF(path: path, config: modelConfig)
        }
    }
}
