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
