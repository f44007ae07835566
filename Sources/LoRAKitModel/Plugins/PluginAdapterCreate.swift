import LoRAKitCore

/// Creating a new adapter of a plugin type from the settings a LoRA adapter is created with (targets,
/// layers, rank, alpha, rsLoRA) plus the type's own PEFT config fields: what `lk_adapter_create` and the
/// trainer (`TrainingSession`, `lk_trainer_create`, `lorakit train --adapter-type`) do for `adapter_type`.
extension PluginAdapter {
    /// The adapter type named `name` (as `lkp_adapter_type.name`, e.g. "ia3", "dora"): a loaded one, else
    /// one from the search path. The error lists the types that are loaded and the search path.
    public static func resolveType(named name: String) throws(LKError) -> PluginAdapterType {
        if let t = PluginRegistry.shared.type(named: name) { return t }
        let problems = PluginRegistry.shared.loadSearchPath()
        if let t = PluginRegistry.shared.type(named: name) { return t }
        let known = PluginRegistry.shared.types.map { "\($0.name) (\($0.plugin.fileName))" }
        let extra = problems.isEmpty ? "" : "; plugins on the search path that failed to load: \(problems.joined(separator: "; "))"
        throw .invalidOption(field: "adapter_type", problem: "\"\(name)\" is not an adapter type of any loaded plugin (loaded: \(known.isEmpty ? "none" : known.joined(separator: ", "))); load its plugin (lk_plugin_load, CLI --plugin PATH) or put it on LORAKIT_PLUGIN_PATH (searched: \(PluginRegistry.searchPath.joined(separator: ":")))\(extra)")
    }

    /// The PEFT config fields of a new adapter of `type`: `target_modules` (the targets' PEFT names, e.g.
    /// `q_proj`), `layers_to_transform` (when `layers` is set), for a type whose `peft_type` is `LORA`
    /// (DoRA) also `r`, `lora_alpha` and `use_rslora`; for `IA3` without `feedforward_modules` in `extra`,
    /// PEFT's LLaMA default (`down_proj` when targeted, so the saved config reads the same in PEFT). Then
    /// every field of `extra` (a JSON object of PEFT config fields) is set, replacing a derived one.
    public static func peftOptions(type: PluginAdapterType, targets: Set<LinearModule>, layers: [Int]?,
                                   rank: Int, alpha: Float, useRSLoRA: Bool, extra: JSONValue?) throws(LKError) -> JSONValue {
        var extraFields: [(String, JSONValue)] = []
        if let e = extra {
            guard case .object(let o) = e else {
                throw .invalidOption(field: "adapter_config", problem: "must be a JSON object of PEFT config fields (e.g. {\"target_modules\": [\"k_proj\"]}), not \(JSON.serialize(e).prefix(80))")
            }
            extraFields = o
        }
        func leaf(_ m: LinearModule) -> String { String(m.hfName.split(separator: ".").last!) }
        let mods = LinearModule.allCases.filter { targets.contains($0) }
        var fields: [(String, JSONValue)] = [("target_modules", .array(mods.map { .string(leaf($0)) }))]
        if let l = layers { fields.append(("layers_to_transform", .array(l.map { .number(Double($0)) }))) }
        switch type.peftType.uppercased() {
        case "LORA":
            fields += [("r", .number(Double(rank))), ("lora_alpha", .number(Double(alpha))), ("use_rslora", .bool(useRSLoRA))]
        case "IA3" where !extraFields.contains(where: { $0.0 == "feedforward_modules" }):
            fields.append(("feedforward_modules", .array(mods.filter { $0 == .down }.map { .string(leaf($0)) })))
        default:
            break
        }
        for (k, v) in extraFields {
            fields.removeAll { $0.0 == k }
            fields.append((k, v))
        }
        return .object(fields)
    }
}
