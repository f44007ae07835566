// C ABI for LoRA adapters (lorakit.h, "LoRA adapters"): load/create/save adapters, attach them to
// contexts, merge them into a GGUF file.
//
// Thin shims: validate every pointer, handle, enum value and scale, then call the Swift core
// (LoRAAdapter, LlamaContext.attach/detach/setScale/detachAll, writeMergedGGUF) inside `guarded`.
import LoRAKit
#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

// MARK: - Handle object

/// What an lk_adapter handle refers to: an immutable adapter plus the model it was made for, held
/// strongly (freeing the model handle first is legal). Contexts that have the adapter attached hold
/// the LoRAAdapter themselves, so freeing the handle does not detach it.
final class AdapterBox: @unchecked Sendable {
    let adapter: LoRAAdapter
    let modelBox: ModelBox

    init(_ a: LoRAAdapter, _ m: ModelBox) {
        adapter = a
        modelBox = m
    }
}

func adapterArg(_ h: OpaquePointer?, _ name: String = "adapter") throws -> AdapterBox {
    try Handles.shared.lookup(h, kind: .adapter, as: AdapterBox.self, what: name)
}

/// An adapter may only be used with the model (the same lk_model load) it was made for.
func requireSameModel(_ a: AdapterBox, _ model: LlamaModel, _ name: String, _ what: String) throws {
    guard a.modelBox.model === model else {
        throw invalid("\(name) (\(a.adapter.name)) was made for another model (\(a.modelBox.model.source)), not for \(what) (\(model.source)); load or create it for this lk_model")
    }
}

// MARK: - lk_lora_params

/// typedef struct lk_lora_params { uint32_t struct_size; int32_t rank; float alpha; int32_t use_rslora;
///     const char *targets; float dropout; int32_t init; uint64_t seed; } lk_lora_params;
struct CLoRAParams: SizedCStruct {
    var struct_size: UInt32 = UInt32(MemoryLayout<CLoRAParams>.stride)
    var rank: Int32 = 8
    var alpha: Float = 16
    var use_rslora: Int32 = 0
    var targets: UnsafePointer<CChar>? = nil
    var dropout: Float = 0
    var initialization: Int32 = 0   // C field `init`
    var seed: UInt64 = 0

    static let cName = "lk_lora_params"
    static var firstVersionSize: Int { MemoryLayout<CLoRAParams>.offset(of: \.seed)! + 8 }
}

let LK_LORA_INIT_PEFT: Int32 = 0, LK_LORA_INIT_GAUSSIAN: Int32 = 1, LK_LORA_INIT_RANDOM: Int32 = 2
let LK_ADAPTER_PEFT: Int32 = 0, LK_ADAPTER_GGUF: Int32 = 1

@_cdecl("lk_lora_params_init")
public func lk_lora_params_init(_ p: UnsafeMutableRawPointer?) {
    guard let p else { return }
    p.assumingMemoryBound(to: CLoRAParams.self).pointee = CLoRAParams()
}

@_cdecl("lk_sizeof_lora_params")
public func lk_sizeof_lora_params() -> Int64 { Int64(MemoryLayout<CLoRAParams>.stride) }

// MARK: - Load, create, save, free

func returnAdapter(_ a: LoRAAdapter, _ m: ModelBox, _ out: UnsafeMutablePointer<OpaquePointer?>) -> Int32 {
    out.pointee = Handles.shared.register(AdapterBox(a, m), kind: .adapter)
    return LKStatus.ok
}

@_cdecl("lk_adapter_load")
public func lk_adapter_load(_ model: OpaquePointer?, _ path: UnsafePointer<CChar>?,
                            _ out: UnsafeMutablePointer<OpaquePointer?>?) -> Int32 {
    guarded("lk_adapter_load") {
        let o = try requirePointer(out, "out")
        let box = try modelArg(model)
        let p = try cStringArg(path, "path")
        guard !p.isEmpty else { throw invalid("path is empty") }
        let a = try LoRAAdapter.load(path: p, model: box.model)
        return returnAdapter(a, box, o)
    }
}

@_cdecl("lk_adapter_create")
public func lk_adapter_create(_ model: OpaquePointer?, _ params: UnsafeRawPointer?,
                              _ out: UnsafeMutablePointer<OpaquePointer?>?) -> Int32 {
    guarded("lk_adapter_create") {
        let o = try requirePointer(out, "out")
        let box = try modelArg(model)
        let lp = try CLoRAParams.read(params, defaults: CLoRAParams(), "params")
        guard lp.rank >= 1, lp.rank <= 4096 else { throw invalid("params->rank \(lp.rank) must be in 1...4096") }
        guard lp.alpha.isFinite, lp.alpha > 0 else { throw invalid("params->alpha \(lp.alpha) must be finite and > 0") }
        guard lp.use_rslora == 0 || lp.use_rslora == 1 else { throw invalid("params->use_rslora \(lp.use_rslora) must be 0 or 1") }
        guard lp.dropout.isFinite, lp.dropout >= 0, lp.dropout < 1 else {
            throw invalid("params->dropout \(lp.dropout) must be in [0, 1)")
        }
        let targetText = try lp.targets.map { try cStringArg($0, "params->targets") } ?? "q,v"
        let targets: Set<LinearModule>
        do throws(LKError) { targets = try LoRAConfig.parseTargets(targetText) } catch {
            throw invalid("params->targets \"\(targetText)\": \(error.message)")
        }
        let initialization: LoRAInitialization
        switch lp.initialization {
        case LK_LORA_INIT_PEFT: initialization = .peft
        case LK_LORA_INIT_GAUSSIAN: initialization = .gaussian
        case LK_LORA_INIT_RANDOM: initialization = .random(seed: lp.seed)
        default:
            throw invalid("params->init \(lp.initialization) must be LK_LORA_INIT_PEFT (0), LK_LORA_INIT_GAUSSIAN (1) or LK_LORA_INIT_RANDOM (2)")
        }
        let cfg = LoRAConfig(rank: Int(lp.rank), alpha: lp.alpha, useRSLoRA: lp.use_rslora == 1, targets: targets,
                             dropout: lp.dropout)
        let a = try LoRAAdapter.create(for: box.model, config: cfg, initialization: initialization, seed: lp.seed)
        return returnAdapter(a, box, o)
    }
}

@_cdecl("lk_adapter_save")
public func lk_adapter_save(_ adapter: OpaquePointer?, _ path: UnsafePointer<CChar>?, _ format: Int32) -> Int32 {
    guarded("lk_adapter_save") {
        let a = try adapterArg(adapter).adapter
        let p = try cStringArg(path, "path")
        guard !p.isEmpty else { throw invalid("path is empty") }
        let f: AdapterFormat
        switch format {
        case LK_ADAPTER_PEFT: f = .peft
        case LK_ADAPTER_GGUF: f = .gguf
        default: throw invalid("format \(format) must be LK_ADAPTER_PEFT (0) or LK_ADAPTER_GGUF (1)")
        }
        try a.save(path: p, format: f)
        return LKStatus.ok
    }
}

@_cdecl("lk_adapter_free")
public func lk_adapter_free(_ adapter: OpaquePointer?) -> Int32 {
    guarded("lk_adapter_free") {
        guard let adapter else { return LKStatus.ok }
        try Handles.shared.remove(adapter, kind: .adapter, what: "adapter")
        return LKStatus.ok
    }
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
            try box.context.attach(a.adapter, scale: s)
        }
        return LKStatus.ok
    }
}

@_cdecl("lk_context_detach_adapter")
public func lk_context_detach_adapter(_ ctx: OpaquePointer?, _ adapter: OpaquePointer?) -> Int32 {
    guarded("lk_context_detach_adapter") {
        let a = try adapterArg(adapter)
        try withContext(ctx) { try $0.context.detach(a.adapter) }
        return LKStatus.ok
    }
}

@_cdecl("lk_context_set_adapter_scale")
public func lk_context_set_adapter_scale(_ ctx: OpaquePointer?, _ adapter: OpaquePointer?, _ scale: Float) -> Int32 {
    guarded("lk_context_set_adapter_scale") {
        let a = try adapterArg(adapter)
        try withContext(ctx) { box in
            let s = try scaleArg(scale)
            try box.context.setScale(s, for: a.adapter)
        }
        return LKStatus.ok
    }
}

@_cdecl("lk_context_detach_all")
public func lk_context_detach_all(_ ctx: OpaquePointer?) -> Int32 {
    guarded("lk_context_detach_all") {
        try withContext(ctx) { $0.context.detachAll() }
        return LKStatus.ok
    }
}

// MARK: - Merge

@_cdecl("lk_model_merge_to_file")
public func lk_model_merge_to_file(_ model: OpaquePointer?, _ adapters: UnsafePointer<OpaquePointer?>?,
                                   _ scales: UnsafePointer<Float>?, _ n: Int32, _ outType: Int32,
                                   _ path: UnsafePointer<CChar>?) -> Int32 {
    guarded("lk_model_merge_to_file") {
        let box = try modelArg(model)
        guard n >= 1 else { throw invalid("n \(n) must be ≥ 1") }
        guard n <= 4096 else { throw invalid("n \(n) is too large (at most 4096)") }
        let ap = try requirePointer(adapters, "adapters")
        let sp = try requirePointer(scales, "scales")
        var list: [(LoRAAdapter, Float)] = []
        for i in 0..<Int(n) {
            let a = try adapterArg(ap[i], "adapters[\(i)]")
            try requireSameModel(a, box.model, "adapters[\(i)]", "model")
            let s = try scaleArg(sp[i], "scales[\(i)]")
            if let j = list.firstIndex(where: { $0.0 === a.adapter }) {
                throw invalid("adapters[\(i)] is the same adapter as adapters[\(j)] (add the scales instead)")
            }
            list.append((a.adapter, s))
        }
        let t: MergedWeightType
        switch outType {
        case -1: t = .same
        case 0: t = .f32
        case 1: t = .f16
        case 3: t = .q8_0
        default:
            throw invalid("out_type \(outType) must be LK_DTYPE_F32 (0), LK_DTYPE_F16 (1), LK_DTYPE_Q8_0 (3) or -1 (the base weight's type)")
        }
        let p = try cStringArg(path, "path")
        guard !p.isEmpty else { throw invalid("path is empty") }
        try writeMergedGGUF(model: box.model, adapters: list, outType: t, path: p)
        return LKStatus.ok
    }
}
