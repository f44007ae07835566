// C ABI for LoRA adapters (lorakit.h, "LoRA adapters"): load/create/save adapters, attach them to
// contexts, merge them into a GGUF file.
import CLoRAKit
import LoRAKit

// MARK: - Handle object

/// What an lk_adapter handle refers to: an immutable adapter plus the model it was made for, held
/// strongly (freeing the model handle first is legal). Contexts that have the adapter attached hold
/// the adapter themselves, so freeing the handle does not detach it.
final class AdapterBox: @unchecked Sendable {
    let any: AnyAdapter
    let modelBox: ModelBox

    init(_ a: LoRAAdapter, _ m: ModelBox) {
        any = .lora(a)
        modelBox = m
    }

    init(plugin a: PluginAdapter, _ m: ModelBox) {
        any = .plugin(a)
        modelBox = m
    }

    /// The LoRA adapter (for functions that take only LoRA).
    func lora(_ what: String) throws -> LoRAAdapter {
        switch any {
        case .lora(let a): return a
        case .plugin(let a):
            throw CError(LK_ERR_UNSUPPORTED, "\(what): adapter \(a.name) is of plugin type \"\(a.type.name)\"; only LoRA adapters are supported here")
        }
    }
}

func adapterArg(_ h: OpaquePointer?, _ name: String = "adapter") throws -> AdapterBox {
    try Handles.shared.lookup(h, kind: .adapter, as: AdapterBox.self, what: name)
}

/// An adapter may only be used with the model (the same lk_model load) it was made for.
func requireSameModel(_ a: AdapterBox, _ model: LlamaModel, _ name: String, _ what: String) throws {
    guard a.modelBox.model === model else {
        throw invalid("\(name) (\(a.any.name)) was made for another model (\(a.modelBox.model.source)), not for \(what) (\(model.source)); load or create it for this lk_model")
    }
}

func giveAdapter(_ a: LoRAAdapter, _ m: ModelBox, _ out: UnsafeMutablePointer<OpaquePointer?>) -> Int {
    Handles.shared.give(AdapterBox(a, m), kind: .adapter, to: out)
}

/// The LoRA fields lk_lora_params and lk_train_params share, as a LoRAConfig (the core checks the ranges).
func loraConfig(rank: Int32, alpha: Float, useRSLoRA: Int32, targets: UnsafePointer<CChar>?, dropout: Float) throws -> LoRAConfig {
    let text = try targets.map { try cStringArg($0, "params->targets") } ?? "q,v"
    let parsed: Set<LinearModule>
    do throws(LKError) { parsed = try LoRAConfig.parseTargets(text) } catch {
        throw LKError.invalidOption(field: "targets", problem: "\"\(text)\": \(error.message)")
    }
    return LoRAConfig(rank: Int(rank), alpha: alpha, useRSLoRA: try flag(useRSLoRA, "params->use_rslora"),
                      targets: parsed, dropout: dropout)
}

func loraInitialization(_ v: Int32, seed: UInt64) throws -> LoRAInitialization {
    try cEnum(v, "params->init", "LK_LORA_INIT_*", [LK_LORA_INIT_PEFT: .peft, LK_LORA_INIT_GAUSSIAN: .gaussian,
                                                    LK_LORA_INIT_RANDOM: .random(seed: seed)])
}

let adapterFormats: KeyValuePairs<Int, AdapterFormat> = [LK_ADAPTER_PEFT: .peft, LK_ADAPTER_GGUF: .gguf]

// MARK: - Load, create, save, free

@_cdecl("lk_adapter_load")
public func lk_adapter_load(_ model: OpaquePointer?, _ path: UnsafePointer<CChar>?,
                            _ out: UnsafeMutablePointer<OpaquePointer?>?) -> Int32 {
    guarded("lk_adapter_load") {
        let o = try requirePointer(out, "out")
        let box = try modelArg(model)
        let p = try pathArg(path)
        if PluginAdapter.isPluginFolder(p) {
            let a = try PluginAdapter.load(peftDirectory: p, model: box.model, pool: currentDefaultPool())
            return Handles.shared.give(AdapterBox(plugin: a, box), kind: .adapter, to: o)
        }
        return giveAdapter(try LoRAAdapter.load(path: p, model: box.model), box, o)
    }
}

@_cdecl("lk_adapter_create")
public func lk_adapter_create(_ model: OpaquePointer?, _ params: UnsafePointer<lk_lora_params>?,
                              _ out: UnsafeMutablePointer<OpaquePointer?>?) -> Int32 {
    guarded("lk_adapter_create") {
        let o = try requirePointer(out, "out")
        let box = try modelArg(model)
        let p = try lk_lora_params.read(params)
        let config = try loraConfig(rank: p.rank, alpha: p.alpha, useRSLoRA: p.use_rslora, targets: p.targets, dropout: p.dropout)
        let extra = try adapterConfigArg(p.adapter_config)
        if let type = try adapterTypeArg(p.adapter_type) {  // a plugin adapter type (CABIPlugin.swift)
            let a = try createPluginAdapter(box.model, type: type, config: config, initialization: p.`init`,
                                            adapterConfig: extra, seed: p.seed)
            return Handles.shared.give(AdapterBox(plugin: a, box), kind: .adapter, to: o)
        }
        guard extra == nil else { throw invalid("params->adapter_config is set but params->adapter_type is NULL (the fields are for a plugin adapter type)") }
        let a = try LoRAAdapter.create(for: box.model, config: config,
                                       initialization: try loraInitialization(p.`init`, seed: p.seed), seed: p.seed)
        return giveAdapter(a, box, o)
    }
}

@_cdecl("lk_adapter_save")
public func lk_adapter_save(_ adapter: OpaquePointer?, _ path: UnsafePointer<CChar>?, _ format: Int32) -> Int32 {
    guarded("lk_adapter_save") {
        let fmt = try cEnum(format, "format", "LK_ADAPTER_*", adapterFormats)
        switch try adapterArg(adapter).any {
        case .lora(let a): try a.save(path: try pathArg(path), format: fmt)
        case .plugin(let a):
            guard fmt == .peft else {
                throw CError(LK_ERR_UNSUPPORTED, "adapter \(a.name) is of plugin type \"\(a.type.name)\": GGUF LoRA files hold LoRA only; save it as LK_ADAPTER_PEFT")
            }
            try a.save(peftDirectory: try pathArg(path))
        }
        return LK_OK
    }
}

@_cdecl("lk_adapter_free")
public func lk_adapter_free(_ adapter: OpaquePointer?) -> Int32 {
    guarded("lk_adapter_free") { try Handles.shared.free(adapter, kind: .adapter, what: "adapter") }
}

// MARK: - Attach to contexts

func scaleArg(_ s: Float, _ name: String = "scale") throws -> Float {
    guard s.isFinite else { throw invalid("\(name) \(s) is not finite") }
    return s
}

@_cdecl("lk_context_attach_adapter")
public func lk_context_attach_adapter(_ ctx: OpaquePointer?, _ adapter: OpaquePointer?, _ scale: Float) -> Int32 {
    guarded("lk_context_attach_adapter") {
        let a = try adapterArg(adapter)
        try withContext(ctx) { box in
            let s = try scaleArg(scale)
            try requireSameModel(a, box.context.model, "adapter", "ctx's model")
            switch a.any {
            case .lora(let l): try box.context.attach(l, scale: s)
            case .plugin(let p): try box.context.attach(p, scale: s)
            }
        }
        return LK_OK
    }
}

@_cdecl("lk_context_detach_adapter")
public func lk_context_detach_adapter(_ ctx: OpaquePointer?, _ adapter: OpaquePointer?) -> Int32 {
    guarded("lk_context_detach_adapter") {
        let a = try adapterArg(adapter)
        try withContext(ctx) { box in
            switch a.any {
            case .lora(let l): try box.context.detach(l)
            case .plugin(let p): try box.context.detach(p)
            }
        }
        return LK_OK
    }
}

@_cdecl("lk_context_set_adapter_scale")
public func lk_context_set_adapter_scale(_ ctx: OpaquePointer?, _ adapter: OpaquePointer?, _ scale: Float) -> Int32 {
    guarded("lk_context_set_adapter_scale") {
        let a = try adapterArg(adapter)
        try withContext(ctx) { box in
            let s = try scaleArg(scale)
            switch a.any {
            case .lora(let l): try box.context.setScale(s, for: l)
            case .plugin(let p): try box.context.setScale(s, for: p)
            }
        }
        return LK_OK
    }
}

@_cdecl("lk_context_detach_all")
public func lk_context_detach_all(_ ctx: OpaquePointer?) -> Int32 {
    guarded("lk_context_detach_all") {
        try withContext(ctx) {
            $0.context.detachAll()
            $0.context.detachAllPlugins()
        }
        return LK_OK
    }
}

// MARK: - Merge

@_cdecl("lk_model_merge_to_file")
public func lk_model_merge_to_file(_ model: OpaquePointer?, _ adapters: UnsafePointer<OpaquePointer?>?,
                                   _ scales: UnsafePointer<Float>?, _ n: Int32, _ outType: Int32,
                                   _ path: UnsafePointer<CChar>?) -> Int32 {
    guarded("lk_model_merge_to_file") {
        let box = try modelArg(model)
        guard n >= 1, n <= 4096 else { throw invalid("n \(n) must be in 1...4096") }
        let ap = try requirePointer(adapters, "adapters"), sp = try requirePointer(scales, "scales")
        var all: [AnyAdapter] = []
        var list: [(LoRAAdapter, Float)] = []
        var plugins: [(PluginAdapter, Float)] = []
        for i in 0..<Int(n) {
            let a = try adapterArg(ap[i], "adapters[\(i)]")
            try requireSameModel(a, box.model, "adapters[\(i)]", "model")
            let s = try scaleArg(sp[i], "scales[\(i)]")
            if let j = all.firstIndex(where: { $0.same(as: a.any) }) {
                throw invalid("adapters[\(i)] is the same adapter as adapters[\(j)] (add the scales instead)")
            }
            all.append(a.any)
            switch a.any {
            case .lora(let l): list.append((l, s))
            case .plugin(let p): plugins.append((p, s))
            }
        }
        let t = try cEnum(outType, "out_type", "LK_DTYPE_F32, LK_DTYPE_F16, LK_DTYPE_Q8_0 or -1 (the base weight's type)",
                          [LK_DTYPE_F32: MergedWeightType.f32, LK_DTYPE_F16: .f16, LK_DTYPE_Q8_0: .q8_0, -1: .same])
        try writeMergedGGUF(model: box.model, adapters: list, plugins: plugins, outType: t, path: try pathArg(path))
        return LK_OK
    }
}
