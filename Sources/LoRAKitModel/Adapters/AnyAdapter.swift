import LoRAKitCore

/// Any adapter a context or a batch sequence can have attached: a LoRA adapter, or an adapter of a
/// plugin type (IA³, DoRA, …: Include/lorakit_plugin.h). Both are immutable once made and shared by
/// reference; `same(as:)` is identity.
public enum AnyAdapter: Sendable {
    case lora(LoRAAdapter)
    case plugin(PluginAdapter)

    public var name: String {
        switch self {
        case .lora(let a): return a.name
        case .plugin(let a): return a.name
        }
    }

    /// The adapter object (for identity).
    public var object: AnyObject {
        switch self {
        case .lora(let a): return a
        case .plugin(let a): return a
        }
    }

    public func same(as o: AnyAdapter) -> Bool { object === o.object }

    /// Save as `format` (a plugin adapter: PEFT only).
    public func save(path: String, format: AdapterFormat) throws(LKError) {
        switch self {
        case .lora(let a): try a.save(path: path, format: format)
        case .plugin(let a):
            guard format == .peft else {
                throw .unsupported("adapter \(a.name) is of plugin type \"\(a.type.name)\": GGUF LoRA files hold LoRA only; save it as PEFT")
            }
            try a.save(peftDirectory: path)
        }
    }

    /// Whether the adapter was made for `model` (sizes, layers, finite values): the adapter's own check.
    public func check(against model: LlamaModel) throws(LKError) {
        switch self {
        case .lora(let a): try a.check(against: model)
        case .plugin(let a): try a.check(against: model)
        }
    }
}
