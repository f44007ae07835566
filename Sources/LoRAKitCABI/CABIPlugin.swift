// C ABI for adapter plugins (lorakit.h, "Adapter plugins"): load, list, describe.
import CLoRAKit
import LoRAKit

/// What an lk_plugin handle refers to (the plugin itself stays loaded after the handle is freed).
final class PluginBox: @unchecked Sendable {
    let plugin: AdapterPlugin
    init(_ p: AdapterPlugin) { plugin = p }
}

@_cdecl("lk_plugin_load")
public func lk_plugin_load(_ path: UnsafePointer<CChar>?, _ out: UnsafeMutablePointer<OpaquePointer?>?) -> Int32 {
    guarded("lk_plugin_load") {
        let o = try requirePointer(out, "out")
        let p = try pathArg(path)
        let loaded: AdapterPlugin
        do throws(PluginLoadError) { loaded = try PluginRegistry.shared.loadReporting(path: p) } catch {
            if error.isABI { throw CError(LK_ERR_ABI, error.error.message) }
            throw error.error
        }
        return Handles.shared.give(PluginBox(loaded), kind: .plugin, to: o)
    }
}

@_cdecl("lk_plugin_free")
public func lk_plugin_free(_ plugin: OpaquePointer?) -> Int32 {
    guarded("lk_plugin_free") { try Handles.shared.free(plugin, kind: .plugin, what: "plugin") }
}

@_cdecl("lk_plugin_info_json")
public func lk_plugin_info_json(_ plugin: OpaquePointer?, _ buf: UnsafeMutablePointer<CChar>?, _ capacity: Int64,
                                _ needed: UnsafeMutablePointer<Int64>?) -> Int32 {
    guarded("lk_plugin_info_json") {
        let p = try Handles.shared.lookup(plugin, kind: .plugin, as: PluginBox.self, what: "plugin").plugin
        return try copyString(JSON.serialize(p.info), buf: buf, capacity: capacity, needed: needed)
    }
}

@_cdecl("lk_plugins_json")
public func lk_plugins_json(_ loadSearchPath: Int32, _ buf: UnsafeMutablePointer<CChar>?, _ capacity: Int64,
                            _ needed: UnsafeMutablePointer<Int64>?) -> Int32 {
    guarded("lk_plugins_json") {
        let errors = try flag(loadSearchPath, "load_search_path") ? PluginRegistry.shared.loadSearchPath() : []
        let list = PluginRegistry.shared.plugins.map(\.info) + errors.map { JSONValue.object([("error", .string($0))]) }
        return try copyString(JSON.serialize(.array(list)), buf: buf, capacity: capacity, needed: needed)
    }
}

// MARK: - New adapters of a plugin type (lk_lora_params / lk_train_params .adapter_type, .adapter_config)

/// params->adapter_type: NULL (LoRA) or a non-empty UTF-8 type name.
func adapterTypeArg(_ p: UnsafePointer<CChar>?) throws -> String? {
    try p.map { try pathArg($0, "params->adapter_type", " (use NULL for LoRA)") }
}

/// params->adapter_config: NULL or a JSON object (the core names a non-object).
func adapterConfigArg(_ p: UnsafePointer<CChar>?) throws -> JSONValue? {
    guard let p else { return nil }
    let text = try cStringArg(p, "params->adapter_config")
    do throws(LKError) { return try JSON.parse(text) } catch {
        throw invalid("params->adapter_config is not JSON: \(error.message)")
    }
}

/// lk_adapter_create with params->adapter_type: the type's PEFT config from the LoRA fields and
/// adapter_config (PluginAdapter.peftOptions), then PluginAdapter.create.
func createPluginAdapter(_ model: LlamaModel, type name: String, config: LoRAConfig, initialization: Int32,
                         adapterConfig extra: JSONValue?, seed: UInt64) throws -> PluginAdapter {
    guard initialization == LK_LORA_INIT_PEFT else {
        throw invalid("params->init \(initialization): an adapter of plugin type \"\(name)\" starts from its type's own initialisation; leave init at LK_LORA_INIT_PEFT")
    }
    guard config.dropout == 0 else {
        throw invalid("params->dropout \(config.dropout): adapters of plugin type \"\(name)\" have no dropout; set it to 0")
    }
    try config.validate()
    let type = try PluginAdapter.resolveType(named: name)
    let cfg = try PluginAdapter.peftOptions(type: type, targets: config.targets, layers: config.layers, rank: config.rank,
                                            alpha: config.alpha, useRSLoRA: config.useRSLoRA, extra: extra)
    return try PluginAdapter.create(type: type, model: model, options: cfg, seed: seed, name: type.name,
                                    pool: currentDefaultPool())
}
