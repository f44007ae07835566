import LoRAKitCore
import LoRAKitKernels
import LoRAKitFormats

// MARK: - Merge plugin adapters into the base weights

/// The f32 weights [OUT, IN] of every module the plugin adapters touch, with each adapter folded in (at
/// its scale, in list order) by its type's `merge`. A type without merge: `.unsupported` naming it.
func mergedPluginWeights(model: LlamaModel, adapters: [(PluginAdapter, Float)], pool: ThreadPool)
    throws(LKError) -> [(layer: Int, module: LinearModule, values: [Float])] {
    guard !adapters.isEmpty else { throw .invalidArgument("merge: no adapters") }
    for (i, (a, s)) in adapters.enumerated() {
        guard s.isFinite else { throw .invalidArgument("merge: scale \(s) of adapter \(a.name) is not finite") }
        for j in 0..<i where adapters[j].0 === a {
            throw .invalidArgument("merge: adapter \(a.name) is listed twice (add the scales instead)")
        }
        try a.check(against: model)
        guard a.type.canMerge else {
            throw .unsupported("merge: adapter \(a.name) is of type \"\(a.type.name)\" (plugin \(a.type.plugin.fileName)), which does not support merging into the base weight")
        }
    }
    var order: [Int] = []
    var values: [Int: [Float]] = [:]
    for (a, s) in adapters {
        for m in a.modules {
            let k = m.layer * 8 + m.module.rawValue
            if values[k] == nil {
                values[k] = m.weight.floats()
                order.append(k)
            }
            try values[k]!.withUnsafeMutableBufferPointer { (b: inout UnsafeMutableBufferPointer<Float>) throws(LKError) in
                try m.merge(rowBegin: 0, rows: m.outFeatures, w: b.baseAddress!, scale: s, pool: pool)
            }
        }
    }
    return order.sorted().map { (layer: $0 / 8, module: LinearModule(rawValue: $0 % 8)!, values: values[$0]!) }
}

/// A new model with the plugin adapters merged into its weights (merged weights in `outType`, default the
/// f32 values; other weights shared). Equal to the model with the adapters attached (to rounding).
public func mergedWithPlugins(model: LlamaModel, adapters: [(PluginAdapter, Float)], outType: DType? = nil,
                              pool: ThreadPool = .shared) throws(LKError) -> LlamaModel {
    let ws = try mergedPluginWeights(model: model, adapters: adapters, pool: pool)
    var lin = model.layers.map(\.linear)
    for w in ws {
        let shape = model.layers[w.layer].weight(w.module).shape
        var t = try Tensor(w.values, shape: shape)
        if let dt = outType, dt != .f32 { t = try t.converted(to: dt) }
        lin[w.layer][w.module.rawValue] = t
    }
    var layers: [LlamaModel.Layer] = []
    for (i, l) in model.layers.enumerated() {
        layers.append(LlamaModel.Layer(attnNorm: l.attnNorm, ffnNorm: l.ffnNorm, linear: lin[i]))
    }
    let names = adapters.map(\.0.name).joined(separator: "+")
    return LlamaModel(config: model.config, tokenEmbedding: model.tokenEmbedding, layers: layers,
                      outputNorm: model.outputNorm, output: model.output, source: "\(model.source) + \(names)",
                      metadata: model.metadata, architecture: model.architecture, chatTemplate: model.chatTemplate,
                      gguf: model.gguf, tokenizer: model.tokenizer, tokenizerError: model.tokenizerError)
}

/// `writeMergedGGUF` with plugin adapters too: the plugin adapters are folded first (each type's merge, in
/// list order), then the LoRA adapters on top (W' = merge_plugins(W) + Σ scale·s·B·A). Exact when no LoRA
/// module shares a module with an input-point plugin instance (IA³ on a feed-forward module scales the
/// input LoRA reads; merged, LoRA would read the unscaled input). Atomic; the model must come from GGUF.
public func writeMergedGGUF(model: LlamaModel, adapters: [(LoRAAdapter, Float)], plugins: [(PluginAdapter, Float)],
                            outType: MergedWeightType = .same, path: String, pool: ThreadPool = .shared) throws(LKError) {
    if plugins.isEmpty {
        try writeMergedGGUF(model: model, adapters: adapters, outType: outType, path: path, pool: pool)
        return
    }
    guard let f = model.gguf else {
        throw .unsupported("writeMergedGGUF: \(model.source) was not loaded from a GGUF file")
    }
    var byName: [String: (String, [Float])] = [:]
    for w in try mergedPluginWeights(model: model, adapters: plugins, pool: pool) {
        byName["blk.\(w.layer).\(w.module.ggufName).weight"] = ("layer \(w.layer) \(w.module)", w.values)
    }
    if !adapters.isEmpty {
        let base = try mergedWithPlugins(model: model, adapters: plugins, pool: pool)
        for (k, v) in try mergedWeights(model: base, adapters: adapters, pool: pool) {
            byName["blk.\(k.layer).\(k.module.ggufName).weight"] = ("layer \(k.layer) \(k.module)", v)
        }
    }
    var w = GGUFWriter()
    w.alignment = f.alignment
    for key in f.metadataKeys { if let v = f.metadata[key] { w.set(key, v) } }
    for info in f.tensors {
        let base = try f.tensor(info.name)
        guard let (what, v) = byName[info.name] else { try w.add(info.name, base); continue }
        for (i, x) in v.enumerated() where !x.isFinite {
            throw .invalidArgument("merge: \(what) merged weight element \(i) is \(x) (overflow)")
        }
        let dt: DType
        switch outType {
        case .f32: dt = .f32
        case .f16: dt = .f16
        case .q8_0: dt = .q8_0
        case .same: dt = base.dtype
        }
        var t = try Tensor(v, shape: base.shape)
        if dt != .f32 {
            do throws(LKError) { t = try t.converted(to: dt) } catch {
                throw .shapeMismatch("writeMergedGGUF: \(what): \(error.message)")
            }
        }
        try w.add(info.name, t)
    }
    try w.write(to: path)
}
