import LoRAKitCore
import LoRAKitKernels
import LoRAKitFormats

// MARK: - Merge plugin adapters into the base weights

/// The f32 weights [OUT, IN] of every module the adapters touch, each with everything attached to it folded
/// in (plugin adapters by their type's `merge`, LoRA as scale·s·B·A), in the order the stack computes them
/// (`AdapterPoint`): with W0 the base weight,
///     W' = ( outputs(W0) + Σ_add (merge_add(W0) − W0) + Σ_LoRA scale·s·B·A ) · inputs
/// — output points (row scalings) on W0, every added term relative to W0 (DoRA's norms are of W0, as in
/// its forward), then the input points (column scalings of what every term reads: LoRA and IA³ on a
/// feed-forward module give (W0 + s·B·A)·diag(l)). A module with one plugin instance and nothing else is
/// merged directly. A type without merge: `.unsupported` naming it.
func mergedAdapterWeights(model: LlamaModel, lora: [(LoRAAdapter, Float)], plugins adapters: [(PluginAdapter, Float)],
                          pool: ThreadPool) throws(LKError) -> [(layer: Int, module: LinearModule, values: [Float])] {
    guard !adapters.isEmpty || !lora.isEmpty else { throw .invalidArgument("merge: no adapters") }
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
    for (i, (a, s)) in lora.enumerated() {
        guard s.isFinite else { throw .invalidArgument("merge: scale \(s) of adapter \(a.name) is not finite") }
        for j in 0..<i where lora[j].0 === a {
            throw .invalidArgument("merge: adapter \(a.name) is listed twice (add the scales instead)")
        }
        try a.check(against: model)
    }
    let (loraModules, loraKeys) = try modulesByAdapter(lora, layout: model.config.ropeLayout)
    var instances: [Int: [(PluginModule, Float)]] = [:]
    for (a, s) in adapters { for m in a.modules { instances[m.layer * 8 + m.module.rawValue, default: []].append((m, s)) } }
    var keys = Set(instances.keys)
    for k in loraKeys { keys.insert(k.layer * 8 + k.module.rawValue) }
    var out: [(layer: Int, module: LinearModule, values: [Float])] = []
    for k in keys.sorted() {
        let layer = k / 8, module = LinearModule(rawValue: k % 8)!
        let list = instances[k] ?? []
        let w0 = model.layers[layer].weight(module).toFloats()
        func merge(_ m: PluginModule, _ s: Float, _ w: inout [Float]) throws(LKError) {
            try w.withUnsafeMutableBufferPointer { (b: inout UnsafeMutableBufferPointer<Float>) throws(LKError) in
                try m.merge(rowBegin: 0, rows: m.outFeatures, w: b.baseAddress!, scale: s, pool: pool)
            }
        }
        var w = w0
        var changed = false
        for (m, s) in list where m.point == .output { try merge(m, s, &w); changed = true }
        for (m, s) in list where m.point == .add {
            if !changed {
                try merge(m, s, &w)
                changed = true
            } else {
                var d = w0
                try merge(m, s, &d)
                for i in 0..<w.count { w[i] += d[i] - w0[i] }
            }
        }
        let key = LoRAAdapter.Key(layer, module)
        for (i, (_, scale)) in lora.enumerated() {
            guard let m = loraModules[i][key], scale != 0 else { continue }
            try w.withUnsafeMutableBufferPointer { (b: inout UnsafeMutableBufferPointer<Float>) throws(LKError) in
                try m.merge(into: b.baseAddress!, scale: scale, pool: pool)
            }
        }
        for (m, s) in list where m.point == .input { try merge(m, s, &w) }
        let nIn = w0.count / max(1, model.layers[layer].weight(module).shape[0])
        for (i, v) in w.enumerated() where !v.isFinite {
            throw .invalidArgument("merge: layer \(layer) \(module) merged weight [\(i / nIn), \(i % nIn)] is \(v) (overflow)")
        }
        out.append((layer: layer, module: module, values: w))
    }
    return out
}

func mergedPluginWeights(model: LlamaModel, adapters: [(PluginAdapter, Float)], pool: ThreadPool)
    throws(LKError) -> [(layer: Int, module: LinearModule, values: [Float])] {
    try mergedAdapterWeights(model: model, lora: [], plugins: adapters, pool: pool)
}

/// A new model with the plugin adapters merged into its weights (merged weights in `outType`, default the
/// f32 values; other weights shared). Equal to the model with the adapters attached (to rounding).
public func mergedWithPlugins(model: LlamaModel, adapters: [(PluginAdapter, Float)], outType: DType? = nil,
                              pool: ThreadPool = .shared) throws(LKError) -> LlamaModel {
    try mergedWithAdapters(model: model, lora: [], plugins: adapters, outType: outType, pool: pool)
}

/// A new model with LoRA and plugin adapters merged together (`mergedAdapterWeights`: exact for any stack
/// of them on a module, e.g. LoRA and an input-side IA³ on down_proj). Equal to the model with the
/// adapters attached (to rounding).
public func mergedWithAdapters(model: LlamaModel, lora: [(LoRAAdapter, Float)], plugins adapters: [(PluginAdapter, Float)],
                               outType: DType? = nil, pool: ThreadPool = .shared) throws(LKError) -> LlamaModel {
    let ws = try mergedAdapterWeights(model: model, lora: lora, plugins: adapters, pool: pool)
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
    let names = (lora.map(\.0.name) + adapters.map(\.0.name)).joined(separator: "+")
    return LlamaModel(config: model.config, tokenEmbedding: model.tokenEmbedding, layers: layers,
                      outputNorm: model.outputNorm, output: model.output, source: "\(model.source) + \(names)",
                      metadata: model.metadata, architecture: model.architecture, chatTemplate: model.chatTemplate,
                      gguf: model.gguf, tokenizer: model.tokenizer, tokenizerError: model.tokenizerError)
}

/// `writeMergedGGUF` with plugin adapters too: every touched weight as `mergedAdapterWeights` folds it
/// (output points, added terms and LoRA relative to the base, then the input points), so the file equals
/// the stack for any mix (LoRA with IA³ on the same module included). Atomic; the model must come from GGUF.
public func writeMergedGGUF(model: LlamaModel, adapters: [(LoRAAdapter, Float)], plugins: [(PluginAdapter, Float)],
                            outType: MergedWeightType = .same, path: String, pool: ThreadPool = .shared) throws(LKError) {
    if plugins.isEmpty {
        try writeMergedGGUF(model: model, adapters: adapters, outType: outType, path: path, pool: pool)
        return
    }
    guard let f = model.gguf else {
        throw .unsupported("writeMergedGGUF: \(model.source) was not loaded from a GGUF file")
    }
    var byName: [String: (what: String, values: [Float])] = [:]
    for w in try mergedAdapterWeights(model: model, lora: adapters, plugins: plugins, pool: pool) {
        byName["blk.\(w.layer).\(w.module.ggufName).weight"] = ("layer \(w.layer) \(w.module)", w.values)
    }
    try writeGGUF(copying: f, replacing: byName, outType: outType, path: path)
}
