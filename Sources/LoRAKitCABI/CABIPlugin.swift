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
