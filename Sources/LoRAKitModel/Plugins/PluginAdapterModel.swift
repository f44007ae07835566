import CLoRAKitPlugin
import LoRAKitCore
import LoRAKitKernels
import LoRAKitFormats
#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// A whole-model adapter of a plugin type (IA³, DoRA, …): one `PluginModule` per targeted (layer, module)
/// of one model, the PEFT configuration it was loaded or created with, and the type.
///
/// Unlike a LoRA adapter, its instances are made for the model's actual weights (a plugin may read them:
/// DoRA's row norms), so it belongs to one `LlamaModel` (held strongly). Immutable after creation, except a
/// trainer's private copy. Files: PEFT folders (`adapter_config.json` + `adapter_model.safetensors`, keys
/// `base_model.model.model.layers.N.<module>.<parameter name>`), the format PEFT reads and writes.
public final class PluginAdapter: @unchecked Sendable {
    public let name: String
    public let type: PluginAdapterType
    /// The adapter_config.json object (PEFT field names), as loaded or created.
    public let config: JSONValue
    public let model: LlamaModel
    /// Sorted by (layer, module).
    public let modules: [PluginModule]

    package init(name: String, type: PluginAdapterType, config: JSONValue, model: LlamaModel, modules: [PluginModule]) {
        self.name = name
        self.type = type
        self.config = config
        self.model = model
        self.modules = modules.sorted { ($0.layer, $0.module.rawValue) < ($1.layer, $1.module.rawValue) }
    }

    public func module(_ layer: Int, _ m: LinearModule) -> PluginModule? {
        modules.first { $0.layer == layer && $0.module == m }
    }

    static let peftPrefix = "base_model.model."

    // MARK: Type lookup

    /// The plugin type that owns a PEFT config: a loaded one, else one from the search path. Errors name
    /// the file, the type and the plugin that would serve it.
    public static func resolveType(peftConfig cfg: JSONValue, file: String) throws(LKError) -> PluginAdapterType {
        if let t = PluginRegistry.shared.type(forPEFTConfig: cfg) { return t }
        let problems = PluginRegistry.shared.loadSearchPath()
        if let t = PluginRegistry.shared.type(forPEFTConfig: cfg) { return t }
        let pt = cfg["peft_type"]?.string ?? "(none)"
        var flags: [String: Bool] = [:]
        if case .object(let o) = cfg { for (k, v) in o { if let b = v.bool { flags[k] = b } } }
        let extra = problems.isEmpty ? "" : " (plugins on the search path that failed to load: \(problems.joined(separator: "; ")))"
        throw .unsupported("\(file): peft_type \"\(pt)\"\(flags["use_dora"] == true ? " with use_dora" : "") needs \(shippedPluginHint(peftType: pt, flags: flags)), which is not loaded: load it with lk_plugin_load (CLI: --plugin PATH) or put it on LORAKIT_PLUGIN_PATH (searched: \(PluginRegistry.searchPath.joined(separator: ":")))\(extra)")
    }

    /// Whether a PEFT folder holds an adapter a plugin serves (not a plain LoRA, which the host reads
    /// itself): its adapter_config.json has a peft_type other than LORA, or LORA with use_dora.
    public static func isPluginFolder(_ dir: String) -> Bool {
        guard isDirectory(dir), let cfg = try? JSON.parse(file: dir + "/adapter_config.json"),
              let pt = cfg["peft_type"]?.string else { return false }
        return pt.uppercased() != "LORA" || cfg["use_dora"]?.bool == true
    }

    // MARK: Targets

    /// The (layer, module) pairs a PEFT config targets: `target_modules` (a list: the full name
    /// `model.layers.N.self_attn.q_proj` equals an entry or ends with "." + entry; a string: a regular
    /// expression matching the whole name; "all-linear": every module), `layers_to_transform` (a number
    /// or a list), `exclude_modules` (same rules as target_modules).
    static func targets(config cfg: JSONValue, nLayers: Int) throws(LKError) -> [(Int, LinearModule)] {
        func matcher(_ key: String) throws(LKError) -> ((String) -> Bool)? {
            guard let v = cfg[key], !v.isNull else { return nil }
            if let s = v.string {
                if s == "all-linear" { return { _ in true } }
                guard let re = try? Regex(s) else { throw .invalidOption(field: key, problem: "\"\(s)\" is not a valid regular expression") }
                return { (try? re.wholeMatch(in: $0)) != nil }
            }
            guard let list = v.array else { throw .invalidOption(field: key, problem: "is neither a list of module names nor a string") }
            var names: [String] = []
            for x in list {
                guard let s = x.string else { throw .invalidOption(field: key, problem: "holds a non-string") }
                names.append(s)
            }
            return { full in names.contains { full == $0 || full.hasSuffix("." + $0) } }
        }
        guard let include = try matcher("target_modules") else {
            throw .invalidOption(field: "target_modules", problem: "is missing (which modules get the adapter?)")
        }
        let exclude = try matcher("exclude_modules")
        var layers: Set<Int>? = nil
        if let l = cfg["layers_to_transform"], !l.isNull {
            if let n = l.int { layers = [n] } else if let a = l.array {
                var s = Set<Int>()
                for x in a {
                    guard let n = x.int else { throw .invalidOption(field: "layers_to_transform", problem: "holds a non-integer") }
                    s.insert(n)
                }
                layers = s
            } else { throw .invalidOption(field: "layers_to_transform", problem: "is neither an integer nor a list") }
        }
        var out: [(Int, LinearModule)] = []
        for l in 0..<nLayers where layers?.contains(l) ?? true {
            for m in LinearModule.allCases {
                let full = LoRAConfig.hfModuleName(layer: l, module: m)
                if include(full) && !(exclude?(full) ?? false) { out.append((l, m)) }
            }
        }
        return out
    }

    // MARK: Create

    /// A new adapter of `type` for `model`: `options` are PEFT config fields (`target_modules`, `r`,
    /// `lora_alpha`, `feedforward_modules`, …; `peft_type` and the type's flag are set here). Parameters
    /// are initialised by their declared rules from `seed`, then by the plugin.
    public static func create(type: PluginAdapterType, model: LlamaModel, options: JSONValue, seed: UInt64 = 0,
                              name: String? = nil, pool: ThreadPool = .shared) throws(LKError) -> PluginAdapter {
        guard case .object(var fields) = options else { throw .invalidArgument("adapter options must be a JSON object") }
        fields.removeAll { $0.0 == "peft_type" || $0.0 == type.peftFlag }
        fields.append(("peft_type", .string(type.peftType)))
        if let f = type.peftFlag { fields.append((f, .bool(true))) }
        if !fields.contains(where: { $0.0 == "task_type" }) { fields.append(("task_type", .string("CAUSAL_LM"))) }
        let cfg = JSONValue.object(fields)
        let targets = try targets(config: cfg, nLayers: model.config.nLayers)
        guard !targets.isEmpty else {
            throw .invalidOption(field: "target_modules", problem: "\(JSON.serialize(cfg["target_modules"] ?? .null)) matches no module of the model")
        }
        let pc = PluginConfig(cfg)
        var rng = SplitMix64(seed: seed)
        var mods: [PluginModule] = []
        for (l, m) in targets {
            let mod = try PluginModule(type: type, config: pc, model: model, layer: l, module: m)
            try mod.initialise(rng: &rng, pool: pool)
            mods.append(mod)
        }
        return PluginAdapter(name: name ?? type.name, type: type, config: cfg, model: model, modules: mods)
    }

    // MARK: PEFT files

    /// Load a PEFT folder whose config names a plugin type (see `resolveType`) for `model`. Every file
    /// tensor must belong to a module of the model and be one of the type's parameters (named by the
    /// type's key suffixes), of the declared shape; every parameter of every module in the file must be
    /// present. Values are converted to f32 (F32/F16/BF16 files) and q/k rows reordered to the model's.
    public static func load(peftDirectory dir: String, model: LlamaModel, name: String? = nil,
                            pool: ThreadPool = .shared) throws(LKError) -> PluginAdapter {
        let cfgPath = dir + "/adapter_config.json"
        let cfg = try JSON.parse(file: cfgPath)
        guard cfg.object != nil else { throw .format("\(cfgPath): not a JSON object") }
        guard cfg["peft_type"]?.string != nil else {
            throw .format("\(cfgPath): missing \"peft_type\" (not a PEFT adapter config?)")
        }
        let type = try resolveType(peftConfig: cfg, file: cfgPath)
        let stPath = dir + "/adapter_model.safetensors"
        guard access(stPath, F_OK) == 0 else {
            throw .io("\(stPath): missing (a PEFT folder holds adapter_config.json and adapter_model.safetensors)")
        }
        let file = try SafetensorsFile(path: stPath)
        // Group the file's keys by module.
        let c = model.config
        var byModule: [Int: [String: String]] = [:]  // layer*8+module → suffix → key
        let prefix = peftPrefix + "model.layers."
        for key in file.tensorNames {
            guard key.hasPrefix(prefix) else { throw .format("\(stPath): unknown tensor \(key) (expected \(prefix)N.<module>.<\(type.keySuffixes.joined(separator: "|"))>)") }
            let rest = key.dropFirst(prefix.count)
            guard let dot = rest.firstIndex(of: "."), let layer = Int(rest[..<dot]), layer >= 0 else {
                throw .format("\(stPath): unknown tensor \(key) (no layer number)")
            }
            let tail = String(rest[rest.index(after: dot)...])
            guard let m = LinearModule.allCases.first(where: { tail.hasPrefix($0.hfName + ".") }) else {
                throw .format("\(stPath): tensor \(key) is not on a linear module of a LLaMA block (q,k,v,o,gate,up,down)")
            }
            let suffix = String(tail.dropFirst(m.hfName.count + 1))
            guard type.keySuffixes.contains(suffix) else {
                throw .format("\(stPath): tensor \(key): \"\(suffix)\" is not a parameter of adapter type \"\(type.name)\" (it owns \(type.keySuffixes.joined(separator: ", ")))")
            }
            guard layer < c.nLayers else {
                throw .shapeMismatch("\(stPath): tensor \(key) is for layer \(layer), the model (\(model.source)) has \(c.nLayers) layers")
            }
            byModule[layer * 8 + m.rawValue, default: [:]][suffix] = key
        }
        guard !byModule.isEmpty else { throw .format("\(stPath): holds no tensors of adapter type \"\(type.name)\"") }
        let pc = PluginConfig(cfg)
        var mods: [PluginModule] = []
        for k in byModule.keys.sorted() {
            let keys = byModule[k]!
            let layer = k / 8, m = LinearModule(rawValue: k % 8)!
            let mod = try PluginModule(type: type, config: pc, model: model, layer: layer, module: m)
            for (p, v) in zip(mod.parameters, mod.values) {
                guard let key = keys[p.name] else {
                    throw .format("\(stPath): \(mod.fullName) has no tensor \(peftPrefix)\(mod.fullName).\(p.name) (adapter type \"\(type.name)\" needs \(mod.parameters.map(\.name).joined(separator: ", ")))")
                }
                let t = try file.tensor(key)
                guard t.shape == p.shape else {
                    throw .shapeMismatch("\(stPath): \(key) has shape \(t.shape), expected \(p.shape) for \(mod.fullName) of this model (\(model.source))")
                }
                let f = (t.dtype == .f32 && t.isContiguous) ? t : try t.converted(to: .f32)
                if let axis = p.outAxis, m == .q || m == .k {
                    try permuteOutAxis(UnsafePointer(f.f32), v.f32, shape: p.shape, axis: axis, from: .neox,
                                       to: c.ropeLayout, headDim: c.headDim)
                } else {
                    v.f32.update(from: f.f32, count: p.count)
                }
            }
            try mod.checkFinite()
            try mod.prepare(pool: pool)
            mods.append(mod)
        }
        let base = dir.split(separator: "/").last.map(String.init) ?? dir
        return PluginAdapter(name: name ?? base, type: type, config: cfg, model: model, modules: mods)
    }

    /// Write a PEFT folder (atomically): the config (with `peft_type` and the type's flag) and every
    /// parameter as F32 under its PEFT key, q/k rows in Hugging Face order.
    public func save(peftDirectory dir: String) throws(LKError) {
        let c = model.config
        var w = SafetensorsWriter()
        w.metadata = ["format": "pt"]
        for mod in modules {
            for (p, v) in zip(mod.parameters, mod.values) {
                let out = try Tensor(zeros: p.shape, dtype: .f32)
                if let axis = p.outAxis, mod.module == .q || mod.module == .k {
                    try permuteOutAxis(UnsafePointer(v.f32), out.f32, shape: p.shape, axis: axis, from: c.ropeLayout,
                                       to: .neox, headDim: c.headDim)
                } else {
                    out.f32.update(from: v.f32, count: p.count)
                }
                try w.add("\(PluginAdapter.peftPrefix)\(mod.fullName).\(p.name)", out)
            }
        }
        guard case .object(var fields) = config else { throw .internal("plugin adapter config is not an object") }
        fields.removeAll { $0.0 == "inference_mode" }
        fields.append(("inference_mode", .bool(true)))
        fields.sort { $0.0 < $1.0 }
        let json = Array((JSON.serialize(.object(fields), pretty: true) + "\n").utf8)
        try DirectoryReplace.write(directory: dir) { (tmp: String) throws(LKError) in
            try AtomicFile.write(path: tmp + "/adapter_config.json", bytes: json)
            try w.write(to: tmp + "/adapter_model.safetensors")
        }
    }

    /// Checks the adapter may be used with `model`: the same model object it was made for.
    public func check(against model: LlamaModel) throws(LKError) {
        guard model === self.model else {
            throw .invalidArgument("adapter \(name) (type \(type.name)) was made for another model (\(self.model.source)), not \(model.source): plugin adapters are bound to the weights they were loaded for")
        }
    }
}
