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

    /// Whether the adapter was made for `model` (sizes, layers, finite values): the adapter's own check.
    public func check(against model: LlamaModel) throws(LKError) {
        switch self {
        case .lora(let a): try a.check(against: model)
        case .plugin(let a): try a.check(against: model)
        }
    }
}
