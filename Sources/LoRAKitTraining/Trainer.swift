import LoRAKitCore
import LoRAKitKernels
import LoRAKitFormats
import LoRAKitTokenizer
import LoRAKitTemplates
import LoRAKitModel

/// The training forward and backward through the LLaMA block stack with trainable LoRA modules on a
/// frozen base (any stored dtype: quantized weights stay quantized and are dequantized inside the GEMM
/// panels, QLoRA-style).
///
/// Shape legend: S = sequences in the batch, N = Σ rows of all sequences (each sequence is its prefix
/// embedding rows followed by its token rows), C = model width, H = query heads, Hkv = key/value heads,
/// D = head dim, Q = H·D, KV = Hkv·D, F = MLP width, V = vocabulary, r = LoRA rank.
///
/// Every linear product runs once over all N rows of the batch (one GEMM per module); attention runs per
/// sequence (causal, positions 0..<n within the sequence; sequences never see each other). The output
/// head and the loss run over the predicted rows only, `lossChunkRows` rows at a time and
/// `lossVocabBlock` vocabulary entries at a time, so neither the [N, V] logits nor a chunk's
/// [rows, V] logits are materialised.
#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// One training sequence: optional caller-given embedding rows (e.g. projected image features) followed
/// by tokens. `isTarget[j]` marks token j as predicted — from the rows before it (its prefix rows and
/// tokens 0..<j); token 0 can be a target only when there are prefix rows.
public struct TrainSequence: Sendable {
    public var tokens: [Int32]
    public var isTarget: [Bool]
    /// [P, C] row-major f32 values placed before the tokens (empty: no prefix).
    public var prefixEmbeddings: [Float]

    public init(tokens: [Int32], isTarget: [Bool], prefixEmbeddings: [Float] = []) {
        self.tokens = tokens; self.isTarget = isTarget; self.prefixEmbeddings = prefixEmbeddings
    }

    /// Whether token j is predicted: a target with something before it (token 0 only after prefix rows).
    @inline(__always) public func isPredicted(_ j: Int) -> Bool {
        isTarget[j] && (j > 0 || !prefixEmbeddings.isEmpty)
    }

    /// Number of predicted tokens.
    public var predictedCount: Int { isTarget.indices.reduce(0) { $0 + (isPredicted($1) ? 1 : 0) } }
}

/// What one forward (and backward) pass over a batch returns.
public struct TrainPassResult: Sendable {
    /// Σ of the negative log-likelihood of every predicted token (Double, summed in a fixed order).
    public var sumNLL: Double
    /// Number of predicted tokens.
    public var predicted: Int
    /// Rows evaluated (prefix rows + tokens of every sequence).
    public var rows: Int
    /// dLoss/d(input embeddings) per sequence ([P + T, C] row-major), when requested.
    public var inputGradients: [[Float]]?
    /// Mean NLL (NaN when nothing was predicted).
    public var meanNLL: Double { predicted > 0 ? sumNLL / Double(predicted) : .nan }
}

/// How a trainer keeps, between a layer's forward and its backward, the activations the backward reads
/// (queries, keys, values, attention output, the residual after attention, the gate and up products:
/// most of the activation memory; `LoRATrainer.activationBytes`).
public enum KeptActivations: String, Sendable, CaseIterable {
    /// As computed, in f32: gradients as PEFT computes them in f32 (the default, the parity tests' mode).
    case f32
    /// Rounded to f16 (nearest even) after each layer's forward and widened back before its backward:
    /// those buffers take half the memory; the losses are unchanged and the gradients differ from the f32
    /// ones by the rounding (relative ≈ 1e-3). The forward itself computes in f32 as before. A value beyond
    /// f16's range (|x| > 65504: outliers of the residual stream some large models have) becomes infinite
    /// and makes the gradients non-finite, which a training step reports as an error without updating the
    /// adapter; keep f32 for such a model.
    case f16
}

/// Trains the LoRA modules of one adapter on a frozen model. Not thread-safe: one trainer is used by one
/// thread at a time (its kernels use its own thread pool).
public final class LoRATrainer: @unchecked Sendable {
    public let model: LlamaModel
    public let pool: ThreadPool
    /// The adapter's settings (targets, ranks, alphas, rsLoRA) — the trained adapter keeps them.
    public let config: LoRAConfig
    public let name: String
    /// Trainable modules keyed by (layer, module), B rows in the model's row order.
    public let modules: [LoRAAdapter.Key: TrainableLoRAModule]
    /// All trainable tensors in a fixed order (by layer, module, then A before B): the optimizer's list.
    public let parameters: [TrainableTensor]
    /// LoRA dropout probability on the adapter inputs (0 = off).
    public var dropout: Float
    /// Seed of the dropout masks.
    public var dropoutSeed: UInt64
    /// Rows of the output head and loss computed at once. Each chunk reads (and dequantizes) the whole
    /// [V, C] head twice, forward and backward, so larger chunks amortise that over more rows: the default
    /// takes as many rows as fit in 96 MiB of logits (V·4 bytes a row), between 64 and 512 — 512 rows for
    /// V = 49152 (the two head products ≈ 8–10 % faster than 256 rows, 25–35 % faster than 64), 196 for
    /// V = 128256. Values do not depend on it (every row's products and loss are computed alike).
    public var lossChunkRows: Int
    /// Vocabulary entries of the output head and loss computed at once (0: whole rows). With blocks, a
    /// chunk of rows holds [rows, lossVocabBlock] logits instead of [rows, V] (4 MiB instead of 96 MiB for
    /// 512 rows of V = 49152): the loss takes an online log-sum-exp over the blocks and the gradient
    /// with respect to the hidden rows is accumulated block by block (`Ops.headLossBlockFold`), with the
    /// same two passes over the head weight. Losses and gradients equal the whole-row ones up to
    /// rounding (the exps are taken against running maxima).
    public var lossVocabBlock: Int = LoRATrainer.defaultLossVocabBlock
    /// The default `lossVocabBlock`: 2048 entries (a 512-row chunk's block of logits is 4 MiB).
    public static let defaultLossVocabBlock = 2048
    /// How the activations each layer's backward reads are kept between the forward and the backward
    /// (`.f32`, the default, or `.f16`: about half the activation memory; see `KeptActivations`).
    public var keptActivations: KeptActivations = .f32
    /// When set, every pass adds its time per part (and the GEMM flops) to it.
    public var profile: TrainProfile?

    private let byLayer: [[TrainableLoRAModule?]]
    /// The modules in `parameters` order.
    private let ordered: [TrainableLoRAModule]
    private let lowestLayer: Int
    /// The plugin adapter being trained (nil: LoRA), its trainable copies by layer and module.
    public let pluginAdapter: PluginAdapter?
    private let pluginByLayer: [[PluginTrainable?]]
    private let pluginModules: [PluginTrainable]
    private let maxRank: Int
    private var buffers: TrainBuffers?

    /// A trainer starting from `adapter`'s values (which are copied; the adapter is not modified).
    /// The adapter is checked against the model (sizes, shapes, finite values).
    public init(model: LlamaModel, adapter: LoRAAdapter, threads: Int? = nil, dropout: Float? = nil,
                dropoutSeed: UInt64 = 0) throws(LKError) {
        try adapter.check(against: model)
        let p = dropout ?? adapter.config.dropout
        guard p.isFinite, p >= 0, p < 1 else { throw .invalidArgument("trainer: dropout \(p) must be in [0, 1)") }
        if let t = threads, t < 1 || t > 512 { throw .invalidArgument("trainer: threads \(t) must be in 1...512") }
        let c = model.config
        let mods = try adapter.modules(for: c.ropeLayout)
        var dict: [LoRAAdapter.Key: TrainableLoRAModule] = [:]
        var params: [TrainableTensor] = []
        var ordered: [TrainableLoRAModule] = []
        var layers = [[TrainableLoRAModule?]](repeating: [TrainableLoRAModule?](repeating: nil,
                                                                                  count: LinearModule.allCases.count),
                                                count: c.nLayers)
        for k in mods.keys.sorted() {
            let prefix = "base_model.model." + LoRAConfig.hfModuleName(layer: k.layer, module: k.module)
            let t = try TrainableLoRAModule(from: mods[k]!, namePrefix: prefix)
            dict[k] = t
            layers[k.layer][k.module.rawValue] = t
            ordered.append(t)
            params.append(t.a)
            params.append(t.b)
        }
        self.model = model
        self.pool = ThreadPool(threads: threads ?? ThreadPool.hardwareConcurrency)
        self.config = adapter.config
        self.name = adapter.name
        self.modules = dict
        self.parameters = params
        self.dropout = p
        self.dropoutSeed = dropoutSeed
        self.byLayer = layers
        self.ordered = ordered
        self.lowestLayer = mods.keys.map(\.layer).min() ?? 0
        self.maxRank = mods.values.map(\.rank).max() ?? 1
        self.lossChunkRows = Self.defaultLossChunkRows(vocab: c.vocabSize)
        self.pluginAdapter = nil
        self.pluginByLayer = []
        self.pluginModules = []
    }

    /// A trainer of a plugin adapter (IA³, DoRA, …) starting from `plugin`'s values (copied: new instances
    /// of its type with their own parameters). Parameters are named by their PEFT keys; the type's
    /// `prepare` runs before every pass (after each optimizer step).
    public init(model: LlamaModel, plugin: PluginAdapter, threads: Int? = nil) throws(LKError) {
        try plugin.check(against: model)
        guard plugin.type.canTrain else {
            throw .unsupported("trainer: adapter type \"\(plugin.type.name)\" (plugin \(plugin.type.plugin.fileName)) cannot be trained (it has no backward)")
        }
        if let t = threads, t < 1 || t > 512 { throw .invalidArgument("trainer: threads \(t) must be in 1...512") }
        let c = model.config
        let pool = ThreadPool(threads: threads ?? ThreadPool.hardwareConcurrency)
        var layers = [[PluginTrainable?]](repeating: [PluginTrainable?](repeating: nil, count: LinearModule.allCases.count),
                                          count: c.nLayers)
        var all: [PluginTrainable] = []
        var params: [TrainableTensor] = []
        for m in plugin.modules {
            guard layers[m.layer][m.module.rawValue] == nil else {
                throw .invalidArgument("trainer: adapter \(plugin.name) has two instances on \(m.fullName)")
            }
            let t = try PluginTrainable(try m.copy(model: model, pool: pool))
            layers[m.layer][m.module.rawValue] = t
            all.append(t)
            params += t.tensors.compactMap { $0 }
        }
        self.model = model
        self.pool = pool
        self.config = LoRAConfig()
        self.name = plugin.name
        self.modules = [:]
        self.parameters = params
        self.dropout = 0
        self.dropoutSeed = 0
        self.byLayer = [[TrainableLoRAModule?]](repeating: [TrainableLoRAModule?](repeating: nil, count: LinearModule.allCases.count),
                                                count: c.nLayers)
        self.ordered = []
        self.lowestLayer = plugin.modules.map(\.layer).min() ?? 0
        self.maxRank = 1
        self.lossChunkRows = Self.defaultLossChunkRows(vocab: c.vocabSize)
        self.pluginAdapter = plugin
        self.pluginByLayer = layers
        self.pluginModules = all
    }

    /// The current values of a plugin adapter's training as a new adapter (own copies of the values).
    public func trainedPluginAdapter(name: String? = nil) throws(LKError) -> PluginAdapter {
        guard let p = pluginAdapter else { throw .invalidArgument("trainer: this trainer trains a LoRA adapter (use adapter())") }
        var mods: [PluginModule] = []
        for t in pluginModules { mods.append(try t.module.copy(model: model, pool: pool)) }
        return PluginAdapter(name: name ?? p.name, type: p.type, config: p.config, model: model, modules: mods)
    }

    /// Overwrite a plugin trainer's values with `plugin`'s (same type, modules and shapes), e.g. when
    /// resuming; `prepare` runs again before the next pass.
    public func load(plugin: PluginAdapter) throws(LKError) {
        guard let mine = pluginAdapter else {
            throw .invalidArgument("trainer: adapter \(plugin.name) is of plugin type \"\(plugin.type.name)\", but this trainer trains a LoRA adapter")
        }
        try plugin.check(against: model)
        guard plugin.type === mine.type else {
            throw .invalidArgument("trainer: adapter \(plugin.name) is of type \"\(plugin.type.name)\", the trainer trains type \"\(mine.type.name)\"")
        }
        let want = pluginModules.map { "\($0.module.fullName)" }, got = plugin.modules.map(\.fullName)
        guard want == got else {
            throw .shapeMismatch("trainer: adapter \(plugin.name) has modules [\(got.joined(separator: ", "))], the trainer trains [\(want.joined(separator: ", "))]")
        }
        for (t, m) in zip(pluginModules, plugin.modules) {
            for (i, (d, s)) in zip(t.module.values, m.values).enumerated() {
                guard d.shape == s.shape else {
                    throw .shapeMismatch("trainer: adapter \(plugin.name) \(m.fullName).\(m.parameters[i].name) has shape \(s.shape), training uses \(d.shape)")
                }
            }
        }
        for (t, m) in zip(pluginModules, plugin.modules) {
            for (d, s) in zip(t.module.values, m.values) { d.f32.update(from: s.f32, count: s.count) }
            try t.module.prepare(pool: pool)
        }
    }

    @inline(__always) private func plugin(_ l: Int, _ m: LinearModule) -> PluginTrainable? {
        pluginByLayer.isEmpty ? nil : pluginByLayer[l][m.rawValue]
    }

    /// The default `lossChunkRows` for a vocabulary of `vocab` entries (≤ 96 MiB of logits, 64...512 rows).
    public static func defaultLossChunkRows(vocab: Int) -> Int {
        min(512, max(64, (96 << 20) / (4 * max(vocab, 1))))
    }

    /// Set every gradient to zero (call before accumulating a step's micro-batches).
    public func zeroGradients() { for p in parameters { p.zeroGrad() } }

    /// The current values as an immutable adapter (rows in the model's order; saving to PEFT converts).
    public func adapter(name: String? = nil) throws(LKError) -> LoRAAdapter {
        var mods: [LoRAModule] = []
        for k in modules.keys.sorted() { mods.append(try modules[k]!.snapshot()) }
        return try LoRAAdapter(name: name ?? self.name, config: config, modelConfig: model.config,
                               rowLayout: model.config.ropeLayout, modules: mods)
    }

    /// Overwrite the trainable values with `adapter`'s (same modules and shapes), e.g. when resuming.
    public func load(_ adapter: LoRAAdapter) throws(LKError) {
        try adapter.check(against: model)
        let mods = try adapter.modules(for: model.config.ropeLayout)
        guard Set(mods.keys) == Set(modules.keys) else {
            throw .shapeMismatch("trainer: adapter \(adapter.name) has modules \(mods.count) that differ from the trained ones (\(modules.count))")
        }
        for (k, t) in modules {
            let m = mods[k]!
            guard m.rank == t.rank else {
                throw .shapeMismatch("trainer: adapter \(adapter.name) layer \(k.layer) \(k.module) has rank \(m.rank), training uses \(t.rank)")
            }
            t.a.values.update(from: m.a.f32, count: t.a.count)
            t.b.values.update(from: m.b.f32, count: t.b.count)
        }
    }

    // MARK: Pass

    /// Forward over `batch`; with `gradients`, also the backward, accumulating
    /// d(lossScale · ΣNLL)/dθ into every parameter's `grad` (not zeroed here). `lossScale` defaults to
    /// 1/predicted (the mean over the batch's predicted tokens); pass 1/Σ over all micro-batches of a step
    /// for gradient accumulation. `inputGradients` also returns dLoss/d(input rows) per sequence.
    /// `inputGradients` without `gradients` runs the backward for the input gradients only (parameter
    /// gradients untouched). `step`/`microBatch` key the dropout masks. On error, parameters are unchanged (gradients may hold a
    /// partial sum: zero them before the next step).
    public func pass(_ batch: [TrainSequence], gradients: Bool, lossScale: Float? = nil,
                     inputGradients: Bool = false, step: Int = 0, microBatch: Int = 0) throws(LKError) -> TrainPassResult {
        let c = model.config
        guard !batch.isEmpty else { throw .invalidArgument("train: empty batch") }
        // Validate and lay out the rows.
        var offsets: [Int] = [], lengths: [Int] = [], prefixRows: [Int] = []
        var n = 0
        var predRows: [Int32] = [], predTargets: [Int32] = []
        for (s, seq) in batch.enumerated() {
            guard seq.isTarget.count == seq.tokens.count else {
                throw .invalidArgument("train: sequence \(s) has \(seq.tokens.count) tokens but \(seq.isTarget.count) target flags")
            }
            guard seq.prefixEmbeddings.count % c.dim == 0 else {
                throw .shapeMismatch("train: sequence \(s) prefix has \(seq.prefixEmbeddings.count) values, not a multiple of the width \(c.dim)")
            }
            for (j, t) in seq.tokens.enumerated() where t < 0 || Int(t) >= c.vocabSize {
                throw .invalidArgument("train: sequence \(s) token \(j) id \(t) is outside the vocabulary of \(c.vocabSize)")
            }
            for (i, v) in seq.prefixEmbeddings.enumerated() where !v.isFinite {
                throw .invalidArgument("train: sequence \(s) prefix value at row \(i / c.dim), column \(i % c.dim) is not finite (\(v))")
            }
            let p = seq.prefixEmbeddings.count / c.dim
            let len = p + seq.tokens.count
            guard len >= 1 else { throw .invalidArgument("train: sequence \(s) is empty") }
            guard len <= c.contextLength else {
                throw .invalidArgument("train: sequence \(s) has \(len) rows, more than the model's context of \(c.contextLength)")
            }
            for j in seq.isTarget.indices where seq.isPredicted(j) {
                predRows.append(Int32(n + p + j - 1))
                predTargets.append(seq.tokens[j])
            }
            offsets.append(n); lengths.append(len); prefixRows.append(p)
            n += len
        }
        let predicted = predRows.count
        let scale = lossScale ?? (predicted > 0 ? 1 / Float(predicted) : 0)
        guard scale.isFinite else { throw .invalidArgument("train: loss scale \(scale) is not finite") }
        guard lossChunkRows >= 1 else { throw .invalidArgument("train: lossChunkRows \(lossChunkRows) must be at least 1") }
        guard lossVocabBlock >= 0 else {
            throw .invalidArgument("train: lossVocabBlock \(lossVocabBlock) must be 0 (whole rows) or positive")
        }
        let buf = try buffers(rows: n)
        let backward = gradients || inputGradients

        // Input rows and positions.
        var t0 = tick()
        for (s, seq) in batch.enumerated() {
            let o = offsets[s], p = prefixRows[s]
            for i in 0..<lengths[s] { buf.positions[o + i] = Int32(i) }
            if p > 0 {
                seq.prefixEmbeddings.withUnsafeBufferPointer { src in
                    (buf.xs[0] + o * c.dim).update(from: src.baseAddress!, count: p * c.dim)
                }
            }
            if !seq.tokens.isEmpty {
                try seq.tokens.withUnsafeBufferPointer { (ids: UnsafeBufferPointer<Int32>) throws(LKError) in
                    try Ops.embeddingForward(table: UnsafeRawPointer(model.tokenEmbedding.rawPointer),
                                             dtype: model.tokenEmbedding.dtype, vocab: c.vocabSize, dim: c.dim,
                                             ids: ids.baseAddress!, rows: ids.count,
                                             out: buf.xs[0] + (o + p) * c.dim, pool: pool)
                }
            }
        }
        tock(.embedding, t0)
        let seqs = zip(offsets, lengths).map { (offset: $0, length: $1) }
        // The values may have changed since the last pass (optimizer step, `load`, direct writes).
        t0 = tick()
        for m in ordered { m.prepare(rows: n) }
        for p in pluginModules { try p.module.prepare(pool: pool) }
        tock(.lora, t0)
        let runner = Runner(trainer: self, buf: buf, seqs: seqs, step: step, micro: microBatch)
        for l in 0..<c.nLayers {
            try LlamaBlock.forward(runner, layer: l, rows: n, model: model)
            if backward && buf.half {
                let t1 = tick()
                buf.layers[l].stash(rows: n, pool: pool)
                tock(.elementwise, t1)
            }
        }

        // Final norm, output head and loss over the predicted rows.
        let xL = buf.xs[c.nLayers]
        t0 = tick()
        try Ops.rmsNormForward(x: xL, weight: model.outputNorm.f32, out: buf.xF, rstd: buf.rstdF, rows: n,
                               dim: c.dim, eps: c.normEps, pool: pool)
        tock(.norm, t0)
        t0 = tick()
        if backward { buf.dxF.update(repeating: 0, count: n * c.dim) }
        tock(.elementwise, t0)
        let headFlops = 2 * Double(c.vocabSize) * Double(c.dim)
        var sumNLL = 0.0
        let rc = buf.chunkRows
        var start = 0
        while start < predicted {
            let cnt = min(rc, predicted - start)
            t0 = tick()
            for i in 0..<cnt {
                (buf.gather + i * c.dim).update(from: buf.xF + Int(predRows[start + i]) * c.dim, count: c.dim)
                buf.chunkTargets[i] = predTargets[start + i]
            }
            tock(.elementwise, t0)
            if buf.vocabBlock > 0 {
                try blockedHeadLoss(rows: cnt, buf: buf, scale: scale, backward: backward)
                if backward {
                    t0 = tick()
                    for i in 0..<cnt {
                        (buf.dxF + Int(predRows[start + i]) * c.dim).update(from: buf.headAcc + i * c.dim, count: c.dim)
                    }
                    tock(.elementwise, t0)
                }
                for i in 0..<cnt { sumNLL += Double(buf.losses[i]) }
                start += cnt
                continue
            }
            t0 = tick()
            try GEMM.multiply(m: cnt, n: c.vocabSize, k: c.dim, a: GEMMLeft(UnsafePointer(buf.gather), rowStride: c.dim),
                              b: .weight(model.output, transposed: true), c: buf.logits, ldc: c.vocabSize, pool: pool)
            tock(.headForward, t0, flops: headFlops * Double(cnt))
            t0 = tick()
            if backward {
                // dlogits = rowScale · (unnormalised logits), the row factor applied after the product.
                try Ops.crossEntropyUnnormalizedBackwardInPlace(logits: buf.logits, rows: cnt, vocab: c.vocabSize,
                                                                targets: buf.chunkTargets, scale: scale,
                                                                losses: buf.losses, rowScale: buf.rowScale, pool: pool)
                tock(.loss, t0)
                t0 = tick()
                try GEMM.multiply(m: cnt, n: c.dim, k: c.vocabSize, a: GEMMLeft(UnsafePointer(buf.logits), rowStride: c.vocabSize),
                                  b: .weight(model.output, transposed: false), c: buf.gather, ldc: c.dim, pool: pool)
                tock(.headBackward, t0, flops: headFlops * Double(cnt))
                t0 = tick()
                for i in 0..<cnt {
                    let f = buf.rowScale[i], src = buf.gather + i * c.dim, dst = buf.dxF + Int(predRows[start + i]) * c.dim
                    for j in 0..<c.dim { dst[j] = f * src[j] }
                }
                tock(.elementwise, t0)
            } else {
                try Ops.crossEntropyForward(logits: buf.logits, rows: cnt, vocab: c.vocabSize,
                                            targets: buf.chunkTargets, losses: buf.losses, lse: nil, pool: pool)
                tock(.loss, t0)
            }
            for i in 0..<cnt { sumNLL += Double(buf.losses[i]) }
            start += cnt
        }
        var result = TrainPassResult(sumNLL: sumNLL, predicted: predicted, rows: n, inputGradients: nil)
        profile?.passes += 1
        guard backward else { return result }

        // Backward.
        let dX = buf.dX
        t0 = tick()
        dX.update(repeating: 0, count: n * c.dim)
        try Ops.rmsNormBackward(dout: buf.dxF, x: xL, weight: model.outputNorm.f32, rstd: buf.rstdF, dx: dX,
                                dweight: nil, rows: n, dim: c.dim, pool: pool)
        tock(.norm, t0)
        let stop = inputGradients ? 0 : lowestLayer
        for l in stride(from: c.nLayers - 1, through: stop, by: -1) {
            let needInput = l > stop || inputGradients
            if buf.half {
                let t1 = tick()
                buf.layers[l].unstash(rows: n, pool: pool)
                tock(.elementwise, t1)
            }
            try backwardLayer(l, rows: n, seqs: seqs, buf: buf, needInput: needInput, parameters: gradients, step: step,
                              micro: microBatch)
        }
        if inputGradients {
            var grads: [[Float]] = []
            for s in 0..<batch.count {
                grads.append(Array(UnsafeBufferPointer(start: dX + offsets[s] * c.dim, count: lengths[s] * c.dim)))
            }
            result.inputGradients = grads
        }
        return result
    }

    /// The output head and loss of the `cnt` rows in buf.gather (targets in buf.chunkTargets) in
    /// vocabulary blocks of buf.vocabBlock entries: losses in buf.losses and, with `backward`,
    /// scale · dLoss/d(row) in buf.headAcc (buf.gather is overwritten with the targets' head rows).
    private func blockedHeadLoss(rows cnt: Int, buf: TrainBuffers, scale: Float, backward: Bool) throws(LKError) {
        let c = model.config, w = model.output
        let (vocab, dim) = (c.vocabSize, c.dim)
        let rb = try w.dtype.rowBytes(dim)
        let head = UnsafeRawPointer(w.rawPointer)
        let acc: UnsafeMutablePointer<Float>? = backward ? buf.headAcc : nil
        var t0 = tick()
        try Ops.headLossBlockBegin(rows: cnt, runningMax: buf.runMax, runningSum: buf.runSum, targetLogit: buf.targetLogit)
        tock(.loss, t0)
        var v0 = 0
        while v0 < vocab {
            let cols = min(buf.vocabBlock, vocab - v0)
            let wb = head + v0 * rb
            let flops = 2 * Double(cnt) * Double(cols) * Double(dim)
            t0 = tick()
            // logits[cnt, cols] = X · W[v0 ..< v0 + cols]ᵀ
            try GEMM.multiply(m: cnt, n: cols, k: dim, a: GEMMLeft(UnsafePointer(buf.gather), rowStride: dim),
                              b: .weight(wb, dtype: w.dtype, rows: cols, cols: dim, transposed: true),
                              c: buf.logits, ldc: cols, pool: pool)
            tock(.headForward, t0, flops: flops)
            t0 = tick()
            try Ops.headLossBlockFold(logits: buf.logits, ld: cols, rows: cnt, cols: cols, vocabStart: v0,
                                      targets: buf.chunkTargets, runningMax: buf.runMax, runningSum: buf.runSum,
                                      targetLogit: buf.targetLogit, acc: acc, dim: dim, pool: pool)
            tock(.loss, t0)
            if let acc {
                t0 = tick()
                // acc[cnt, C] (+)= exp(logits − running max) · W[v0 ..< v0 + cols]
                try GEMM.multiply(m: cnt, n: dim, k: cols, a: GEMMLeft(UnsafePointer(buf.logits), rowStride: cols),
                                  b: .weight(wb, dtype: w.dtype, rows: cols, cols: dim, transposed: false),
                                  beta: v0 == 0 ? 0 : 1, c: acc, ldc: dim, pool: pool)
                tock(.headBackward, t0, flops: flops)
            }
            v0 += cols
        }
        t0 = tick()
        if backward {
            try Ops.embeddingForward(table: head, dtype: w.dtype, vocab: vocab, dim: dim, ids: buf.chunkTargets,
                                     rows: cnt, out: buf.gather, pool: pool)
        }
        try Ops.headLossBlockFinish(rows: cnt, vocab: vocab, dim: dim, targets: buf.chunkTargets, scale: scale,
                                    runningMax: buf.runMax, runningSum: buf.runSum, targetLogit: buf.targetLogit,
                                    losses: buf.losses, acc: acc, targetRows: backward ? UnsafePointer(buf.gather) : nil,
                                    pool: pool)
        tock(.loss, t0)
    }

    // MARK: Layers

    /// y = x·Wᵀ + the LoRA term of (layer, module), keeping t (and using dropout) for the backward.
    private func project(_ l: Int, _ m: LinearModule, x: UnsafePointer<Float>, rows n: Int,
                         y: UnsafeMutablePointer<Float>, buf: TrainBuffers, step: Int, micro: Int) throws(LKError) {
        let w = model.layers[l].weight(m)
        if let pm = plugin(l, m) {
            let t0 = tick()
            defer { tock(.lora, t0) }
            try pm.forward(x: x, rows: n, y: y, weight: w, pool: pool)
            return
        }
        // Always the GEMM (never the decode mat-vec): the same f32 arithmetic on the dequantized weights for
        // any row count, so losses do not depend on how a batch is split.
        var t0 = tick()
        try GEMM.multiply(m: n, n: w.shape[0], k: w.shape[1], a: GEMMLeft(x, rowStride: w.shape[1]),
                          b: .weight(w, transposed: true), c: y, ldc: w.shape[0], pool: pool)
        tock(.baseForward, t0, flops: 2 * Double(n) * Double(w.shape[0]) * Double(w.shape[1]))
        guard let tm = byLayer[l][m.rawValue] else { return }
        t0 = tick()
        defer { tock(.lora, t0) }
        var xin = x
        if dropout > 0 {
            LoRADropout.apply(x, out: buf.xDrop, count: n * tm.inFeatures, p: dropout,
                              key: LoRADropout.key(seed: dropoutSeed, step: step, micro: micro, layer: l, module: m),
                              pool: pool)
            xin = UnsafePointer(buf.xDrop)
        }
        try tm.forward(x: xin, rows: n, y: y, scale: 1, workspace: buf.t(l, m), pool: pool)
    }

    /// dx (= or +=, by `beta`) dy·W + the LoRA input gradient; accumulates the LoRA parameter gradients.
    /// `dx` nil: only the parameter gradients.
    private func projectBackward(_ l: Int, _ m: LinearModule, x: UnsafePointer<Float>, dy: UnsafePointer<Float>,
                                 rows n: Int, dx: UnsafeMutablePointer<Float>?, beta: Float, buf: TrainBuffers,
                                 parameters: Bool, step: Int, micro: Int) throws(LKError) {
        let w = model.layers[l].weight(m)
        let (nOut, nIn) = (w.shape[0], w.shape[1])
        if let pm = plugin(l, m) {
            let t0 = tick()
            defer { tock(.lora, t0) }
            try pm.backward(x: x, dy: dy, rows: n, dx: dx, beta: beta, weight: w, parameters: parameters, pool: pool)
            return
        }
        var t0 = tick()
        if let dx {
            try GEMM.multiply(m: n, n: nIn, k: nOut, a: GEMMLeft(dy, rowStride: nOut),
                              b: .weight(w, transposed: false), beta: beta, c: dx, ldc: nIn, pool: pool)
            tock(.baseBackward, t0, flops: 2 * Double(n) * Double(nOut) * Double(nIn))
        }
        guard let tm = byLayer[l][m.rawValue] else { return }
        t0 = tick()
        defer { tock(.lora, t0) }
        if dropout > 0 {
            let key = LoRADropout.key(seed: dropoutSeed, step: step, micro: micro, layer: l, module: m)
            LoRADropout.apply(x, out: buf.xDrop, count: n * nIn, p: dropout, key: key, pool: pool)
            try tm.backward(x: UnsafePointer(buf.xDrop), t: UnsafePointer(buf.t(l, m)), dy: dy, rows: n, u: buf.u,
                            dx: dx == nil ? nil : buf.tmp, dxBeta: 0, parameters: parameters, pool: pool)
            if let dx {
                LoRADropout.apply(UnsafePointer(buf.tmp), out: buf.tmp, count: n * nIn, p: dropout, key: key, pool: pool)
                try Ops.addInPlace(dx, buf.tmp, count: n * nIn, pool: pool)
            }
        } else {
            try tm.backward(x: x, t: UnsafePointer(buf.t(l, m)), dy: dy, rows: n, u: buf.u, dx: dx, dxBeta: 1,
                            parameters: parameters, pool: pool)
        }
    }

    /// Training's side of `LlamaBlock`: every activation kept per layer for the backward, one GEMM per
    /// module over the whole batch (LoRA with dropout, t kept), attention per sequence, each part timed.
    private struct Runner: LlamaBlockRunner {
        unowned let trainer: LoRATrainer
        let buf: TrainBuffers
        let seqs: [(offset: Int, length: Int)]
        let step: Int, micro: Int
        var pool: ThreadPool { trainer.pool }
        var positions: UnsafePointer<Int32> { UnsafePointer(buf.positions) }
        var ropeTable: RoPETable? { buf.rope }

        func buffers(layer l: Int) -> LlamaBlock.Buffers {
            let S = buf.layers[l]
            return LlamaBlock.Buffers(x: buf.xs[l], xn1: buf.xn, rstd1: S.rstd1, q: S.q, k: S.k, v: S.v, att: S.att,
                                      o: buf.tmp, xMid: S.xMid, xn2: buf.xn, rstd2: S.rstd2, gate: S.gate, up: S.up,
                                      h: buf.h, down: buf.tmp, xOut: buf.xs[l + 1])
        }

        func project(_ l: Int, _ ms: [LinearModule], x: UnsafePointer<Float>, rows: Int,
                     ys: [UnsafeMutablePointer<Float>]) throws(LKError) {
            for (m, y) in zip(ms, ys) {
                try trainer.project(l, m, x: x, rows: rows, y: y, buf: buf, step: step, micro: micro)
            }
        }

        func attention(_ l: Int, _ b: LlamaBlock.Buffers, rows: Int) throws(LKError) {
            let c = trainer.model.config
            let t0 = tick()
            try Ops.attentionForward(q: b.q, k: b.k, v: b.v, out: b.att, lse: buf.layers[l].lse, sequences: seqs,
                                     heads: c.nHeads, kvHeads: c.nKVHeads, headDim: c.headDim, pool: pool)
            trainer.tock(.attentionForward, t0, flops: trainer.attentionFlops(seqs))
        }

        func tick() -> Double { trainer.tick() }

        func tock(_ step: LlamaBlock.Step, _ t0: Double) {
            switch step {
            case .norm: trainer.tock(.norm, t0)
            case .rope: trainer.tock(.rope, t0)
            case .residual: trainer.tock(.elementwise, t0)
            case .activation: trainer.tock(.activation, t0)
            }
        }
    }

    /// Multiply-add pairs ×2 of one attention forward (two products over the causal half) for `seqs`.
    private func attentionFlops(_ seqs: [(offset: Int, length: Int)]) -> Double {
        let c = model.config
        return seqs.reduce(0.0) { acc, s in
            acc + 2 * 2 * Double(s.length) * Double(s.length + 1) / 2 * Double(c.nHeads * c.headDim)
        }
    }

    /// Start timing a part (0 when no profile is attached).
    @inline(__always) private func tick() -> Double { profile == nil ? 0 : monotonicSeconds() }

    /// End timing a part started at `t0` (`flops` is evaluated only when a profile is attached).
    @inline(__always) private func tock(_ part: TrainProfile.Part, _ t0: Double,
                                        flops: @autoclosure () -> Double = 0) {
        guard let p = profile else { return }
        p.add(part, seconds: monotonicSeconds() - t0, flops: flops())
    }

    /// On entry buf.dX = dLoss/d(layer output); on exit dLoss/d(layer input) (when `needInput`).
    /// `parameters`: accumulate the LoRA parameter gradients (false: input gradients only).
    private func backwardLayer(_ l: Int, rows n: Int, seqs: [(offset: Int, length: Int)], buf: TrainBuffers, needInput: Bool,
                               parameters: Bool, step: Int, micro: Int) throws(LKError) {
        let c = model.config
        let L = model.layers[l], S = buf.layers[l]
        let mods = byLayer[l]
        func has(_ ms: LinearModule...) -> Bool { ms.contains { mods[$0.rawValue] != nil || plugin(l, $0) != nil } }
        let attnPart = needInput || has(.q, .k, .v, .o)
        let dX = buf.dX
        let pos = UnsafePointer(buf.positions)
        // MLP: xOut = xMid + down(swiglu(gate(xn2), up(xn2))).
        if attnPart || has(.gate, .up, .down) {
            var t0 = tick()
            // h = swiglu(gate, up) is the input of down: needed (recomputed, not kept) only for its LoRA.
            if has(.down) {
                try Ops.swigluForward(gate: S.gate, up: S.up, out: buf.h, count: n * c.hiddenDim, pool: pool)
            }
            tock(.activation, t0)
            let needDh = attnPart || has(.gate, .up)
            try projectBackward(l, .down, x: buf.h, dy: dX, rows: n, dx: needDh ? buf.dh : nil, beta: 0, buf: buf, parameters: parameters,
                                step: step, micro: micro)
            if needDh {
                t0 = tick()
                try Ops.swigluBackward(gate: S.gate, up: S.up, dout: buf.dh, dgate: buf.dGate, dup: buf.dUp,
                                       count: n * c.hiddenDim, accumulate: false, pool: pool)
                tock(.activation, t0)
                if has(.gate, .up) {
                    // xn2, the input of gate and up, for their adapters (not kept by the forward).
                    t0 = tick()
                    try Ops.rmsNormForward(x: S.xMid, weight: L.ffnNorm.f32, out: buf.xn, rstd: nil, rows: n, dim: c.dim,
                                           eps: c.normEps, pool: pool)
                    tock(.norm, t0)
                }
                try projectBackward(l, .gate, x: buf.xn, dy: buf.dGate, rows: n, dx: attnPart ? buf.dxn : nil, beta: 0,
                                    buf: buf, parameters: parameters, step: step, micro: micro)
                try projectBackward(l, .up, x: buf.xn, dy: buf.dUp, rows: n, dx: attnPart ? buf.dxn : nil, beta: 1,
                                    buf: buf, parameters: parameters, step: step, micro: micro)
                if attnPart {
                    t0 = tick()
                    try Ops.rmsNormBackward(dout: buf.dxn, x: S.xMid, weight: L.ffnNorm.f32, rstd: S.rstd2, dx: dX,
                                            dweight: nil, rows: n, dim: c.dim, pool: pool)
                    tock(.norm, t0)
                }
            }
        }
        guard attnPart else { return }
        // Attention: xMid = xIn + o(attention(rope(q(xn1)), rope(k(xn1)), v(xn1))).
        try projectBackward(l, .o, x: S.att, dy: dX, rows: n, dx: buf.dAtt, beta: 0, buf: buf, parameters: parameters, step: step,
                            micro: micro)
        let needQKV = needInput || has(.q, .k, .v)
        guard needQKV else { return }
        // The batched backward overwrites dq, dk, dv on every row (the sequences cover all rows).
        var t0 = tick()
        try Ops.attentionBackward(q: S.q, k: S.k, v: S.v, out: S.att, dout: buf.dAtt, lse: S.lse, dq: buf.dq, dk: buf.dk,
                                  dv: buf.dv, sequences: seqs, heads: c.nHeads, kvHeads: c.nKVHeads,
                                  headDim: c.headDim, pool: pool)
        tock(.attentionBackward, t0, flops: 2.5 * attentionFlops(seqs))
        t0 = tick()
        try Ops.ropeBackward(dout: buf.dq, dx: buf.dqr, rows: n, heads: c.nHeads, headDim: c.headDim,
                             nRot: c.ropeDims, base: c.ropeBase, positions: pos, layout: c.ropeLayout,
                             accumulate: false, table: buf.rope, pool: pool)
        try Ops.ropeBackward(dout: buf.dk, dx: buf.dkr, rows: n, heads: c.nKVHeads, headDim: c.headDim,
                             nRot: c.ropeDims, base: c.ropeBase, positions: pos, layout: c.ropeLayout,
                             accumulate: false, table: buf.rope, pool: pool)
        tock(.rope, t0)
        let dxn: UnsafeMutablePointer<Float>? = needInput ? buf.dxn : nil
        if has(.q, .k, .v) {
            // xn1, the input of q, k and v, for their adapters (not kept by the forward).
            t0 = tick()
            try Ops.rmsNormForward(x: buf.xs[l], weight: L.attnNorm.f32, out: buf.xn, rstd: nil, rows: n, dim: c.dim,
                                   eps: c.normEps, pool: pool)
            tock(.norm, t0)
        }
        try projectBackward(l, .q, x: buf.xn, dy: buf.dqr, rows: n, dx: dxn, beta: 0, buf: buf, parameters: parameters, step: step, micro: micro)
        try projectBackward(l, .k, x: buf.xn, dy: buf.dkr, rows: n, dx: dxn, beta: 1, buf: buf, parameters: parameters, step: step, micro: micro)
        try projectBackward(l, .v, x: buf.xn, dy: buf.dv, rows: n, dx: dxn, beta: 1, buf: buf, parameters: parameters, step: step, micro: micro)
        if needInput {
            t0 = tick()
            try Ops.rmsNormBackward(dout: buf.dxn, x: buf.xs[l], weight: L.attnNorm.f32, rstd: S.rstd1, dx: dX,
                                    dweight: nil, rows: n, dim: c.dim, pool: pool)
            tock(.norm, t0)
        }
    }

    // MARK: Buffers

    private func buffers(rows n: Int) throws(LKError) -> TrainBuffers {
        // Loss chunks never hold more rows than a batch has.
        func chunk(_ cap: Int) -> Int { max(1, min(lossChunkRows, cap)) }
        let block = Self.vocabBlock(lossVocabBlock, vocab: model.config.vocabSize)
        let half = keptActivations == .f16
        if let b = buffers, b.capacity >= n, b.chunkRows == chunk(b.capacity), b.vocabBlock == block, b.half == half {
            return b
        }
        let cap = max(n, buffers?.capacity ?? 0)
        buffers = nil
        let b = try TrainBuffers(config: model.config, capacity: cap, chunkRows: chunk(cap), vocabBlock: block,
                                 maxRank: maxRank, modules: byLayer, half: half)
        buffers = b
        return b
    }

    /// The vocabulary block the buffers use for a `lossVocabBlock` setting: 0 (whole rows) or 1...V.
    static func vocabBlock(_ setting: Int, vocab: Int) -> Int { setting <= 0 ? 0 : min(setting, max(vocab, 1)) }

    /// Bytes of activation memory the trainer holds for batches of up to `rows` rows (`TrainBuffers` and
    /// `LayerActivations`, buffer by buffer; the LoRA workspaces counted as rows × maxRank per module).
    public static func activationBytes(config c: LlamaConfig, rows n: Int, maxRank: Int, adapterModules: Int,
                                       chunkRows: Int? = nil, vocabBlock: Int? = nil,
                                       kept: KeptActivations = .f32) -> Int {
        let rc = max(1, min(chunkRows ?? defaultLossChunkRows(vocab: c.vocabSize), n))
        let vb = Self.vocabBlock(vocabBlock ?? defaultLossVocabBlock, vocab: c.vocabSize)
        let wide = max(c.dim, c.qDim, c.hiddenDim)
        // Kept per layer: q, k, v, att, xMid, gate, up (f32, or f16 with one f32 working set for the layer
        // being computed), attention lse, two rstd (the normed inputs are not kept).
        let keptFloats = n * LayerActivations.keptFloatsPerRow(c)
        let perLayer = keptFloats + n * (c.nHeads + 2)
        // xs, xF, dxF, dX, dxn, xn, rstdF, dAtt, dq, dqr, dk, dkr, dv, dh, dGate, dUp, h, u, xDrop, tmp,
        // positions, the RoPE table; per loss chunk: gather, logits, losses, rowScale, targets, and with
        // vocabulary blocks headAcc, runMax, targetLogit, runSum (f64).
        let shared = n * ((c.nLayers + 1) * c.dim + 5 * c.dim + 1 + 3 * c.qDim + 3 * c.kvDim + 4 * c.hiddenDim
                          + maxRank + 2 * wide + 1 + c.ropeDims)
            + rc * ((vb > 0 ? vb : c.vocabSize) + c.dim + 3) + (vb > 0 ? rc * (c.dim + 4) : 0)
        // f16 keeping: each layer's kept floats take 2 bytes instead of 4, plus one f32 working set.
        let f16Saving = kept == .f16 ? c.nLayers * keptFloats * 2 - keptFloats * 4 : 0
        return 4 * (c.nLayers * perLayer + shared + adapterModules * n * maxRank) - f16Saving
    }
}

/// Activations kept for the backward, per layer. All [N, ·] f32 with N = capacity. The normed inputs
/// xn1, xn2 are not kept: the forward writes them to the shared `TrainBuffers.xn`, and the backward
/// recomputes them (from x and xMid, kept anyway) only for a layer whose q/k/v or gate/up carry an
/// adapter (the base products' backward does not read their input).
///
/// With f16 keeping (`KeptActivations.f16`) the seven large ones (q, k, v, att, xMid, gate, up) point
/// into one f32 working set shared by all layers: the forward computes a layer there and `stash` rounds
/// them into the layer's f16 copy; `unstash` widens them back before the layer's backward.
final class LayerActivations {
    let storage: [Storage]
    let q, k, v, att, lse, xMid, gate, up, rstd1, rstd2: UnsafeMutablePointer<Float>
    /// t = s · x̃·Aᵀ per module with an adapter ([N, r]): the module's forward workspace.
    let t: [UnsafeMutablePointer<Float>?]
    /// The f16 copy of q, k, v, att, xMid, gate, up (in that order, contiguous like the working set), or nil.
    private let half: UnsafeMutablePointer<UInt16>?
    /// Where each of q, k, v, att, xMid, gate, up starts in the working set (and the f16 copy), in floats,
    /// and its floats per row: a pass of n rows converts the first n rows of each.
    private let segments: [(start: Int, width: Int)]

    /// Floats per row of q, k, v, att, xMid, gate and up.
    static func keptFloatsPerRow(_ c: LlamaConfig) -> Int { 2 * c.qDim + 2 * c.kvDim + c.dim + 2 * c.hiddenDim }

    /// The f32 working set of f16 keeping for `capacity` rows: q, k, v, att, xMid, gate, up, contiguous.
    static func workingSet(config c: LlamaConfig, capacity n: Int) throws(LKError) -> Storage {
        try Storage(lazyZeroedBytes: max(n * keptFloatsPerRow(c), 1) * 4)
    }

    /// `work`: the working set (f16 keeping) or nil (each layer keeps its own f32 buffers).
    init(config c: LlamaConfig, capacity n: Int, modules: [TrainableLoRAModule?], work: Storage?) throws(LKError) {
        var st: [Storage] = []
        func alloc(_ floats: Int) throws(LKError) -> UnsafeMutablePointer<Float> {
            let s = try Storage(lazyZeroedBytes: max(floats, 1) * 4)
            st.append(s)
            return s.base.assumingMemoryBound(to: Float.self)
        }
        let keptFloats = n * Self.keptFloatsPerRow(c)
        var segs: [(start: Int, width: Int)] = [], start = 0
        for w in [c.qDim, c.kvDim, c.kvDim, c.qDim, c.dim, c.hiddenDim, c.hiddenDim] {
            segs.append((start, w))
            start += n * w
        }
        segments = segs
        let base: UnsafeMutablePointer<Float>
        if let work {
            base = work.base.assumingMemoryBound(to: Float.self)
            let h = try Storage(lazyZeroedBytes: max(keptFloats, 1) * 2)
            st.append(h)
            half = h.base.assumingMemoryBound(to: UInt16.self)
        } else {
            base = try alloc(keptFloats)
            half = nil
        }
        (q, k, v, att) = (base + segs[0].start, base + segs[1].start, base + segs[2].start, base + segs[3].start)
        (xMid, gate, up) = (base + segs[4].start, base + segs[5].start, base + segs[6].start)
        lse = try alloc(n * c.nHeads)
        rstd1 = try alloc(n); rstd2 = try alloc(n)
        var ts: [UnsafeMutablePointer<Float>?] = []
        for m in modules { ts.append(m == nil ? nil : try alloc(m!.workspaceFloats(rows: n))) }
        t = ts
        storage = st
    }

    /// f16 keeping: round the first `rows` rows of the working set (this layer's forward) into the layer's
    /// f16 copy. Else nothing.
    func stash(rows n: Int, pool: ThreadPool) {
        guard let half else { return }
        let src = UnsafePointer(q)
        for (start, width) in segments {
            Ops.parallelFlat(n * width, pool) { r in
                quantize(src + start + r.lowerBound, count: r.count, dtype: .f16, into: half + start + r.lowerBound)
            }
        }
    }

    /// f16 keeping: widen the first `rows` rows of the layer's f16 copy into the working set (before its
    /// backward). Else nothing.
    func unstash(rows n: Int, pool: ThreadPool) {
        guard let half else { return }
        let dst = q
        for (start, width) in segments {
            Ops.parallelFlat(n * width, pool) { r in
                dequantize(UnsafeRawPointer(half + start + r.lowerBound), dtype: .f16, count: r.count,
                           into: dst + start + r.lowerBound)
            }
        }
    }
}

/// All buffers of a trainer for batches of up to `capacity` rows.
final class TrainBuffers {
    let capacity: Int
    let chunkRows: Int
    /// Vocabulary entries of the loss per block (0: whole rows).
    let vocabBlock: Int
    /// The layers keep their large activations in f16 (`KeptActivations.f16`).
    let half: Bool
    let layers: [LayerActivations]
    /// Residual stream at the input of each layer and after the last: nLayers + 1 of [N, C].
    let xs: [UnsafeMutablePointer<Float>]
    let xF, rstdF, dxF, dX, dxn, xn, dAtt, dq, dqr, dk, dkr, dv, dh, dGate, dUp, h, u, xDrop, tmp: UnsafeMutablePointer<Float>
    let gather, logits, losses, rowScale: UnsafeMutablePointer<Float>
    /// With vocabulary blocks: Σ exp·W then the rows' gradient [rc, C]; running max, target logit [rc].
    let headAcc, runMax, targetLogit: UnsafeMutablePointer<Float>
    /// With vocabulary blocks: running Σ exp per row [rc] (f64).
    let runSum: UnsafeMutablePointer<Double>
    let chunkTargets: UnsafeMutablePointer<Int32>
    let positions: UnsafeMutablePointer<Int32>
    /// cos/sin of the rotary angles for every position a sequence of up to `capacity` rows uses.
    let rope: RoPETable
    private var storage: [Storage] = []

    init(config c: LlamaConfig, capacity n: Int, chunkRows rc: Int, vocabBlock vb: Int, maxRank: Int,
         modules: [[TrainableLoRAModule?]], half: Bool) throws(LKError) {
        capacity = n
        chunkRows = rc
        vocabBlock = vb
        self.half = half
        rope = try RoPETable(nRot: c.ropeDims, base: c.ropeBase, positions: min(n, c.contextLength))
        var st: [Storage] = []
        func alloc(_ floats: Int) throws(LKError) -> UnsafeMutablePointer<Float> {
            let s = try Storage(lazyZeroedBytes: max(floats, 1) * 4)
            st.append(s)
            return s.base.assumingMemoryBound(to: Float.self)
        }
        let work = half ? try LayerActivations.workingSet(config: c, capacity: n) : nil
        if let work { st.append(work) }
        var ls: [LayerActivations] = []
        for l in 0..<c.nLayers {
            ls.append(try LayerActivations(config: c, capacity: n, modules: modules[l], work: work))
        }
        layers = ls
        var x: [UnsafeMutablePointer<Float>] = []
        for _ in 0...c.nLayers { x.append(try alloc(n * c.dim)) }
        xs = x
        let wide = max(c.dim, c.qDim, c.hiddenDim)
        xF = try alloc(n * c.dim); rstdF = try alloc(n); dxF = try alloc(n * c.dim); dX = try alloc(n * c.dim)
        dxn = try alloc(n * c.dim); xn = try alloc(n * c.dim); dAtt = try alloc(n * c.qDim); dq = try alloc(n * c.qDim)
        dqr = try alloc(n * c.qDim); dk = try alloc(n * c.kvDim); dkr = try alloc(n * c.kvDim)
        dv = try alloc(n * c.kvDim); dh = try alloc(n * c.hiddenDim); dGate = try alloc(n * c.hiddenDim)
        dUp = try alloc(n * c.hiddenDim); h = try alloc(n * c.hiddenDim); u = try alloc(n * maxRank)
        xDrop = try alloc(n * wide); tmp = try alloc(n * wide)
        gather = try alloc(rc * c.dim); logits = try alloc(rc * (vb > 0 ? vb : c.vocabSize)); losses = try alloc(rc)
        rowScale = try alloc(rc)
        let blocked = vb > 0 ? rc : 0
        headAcc = try alloc(blocked * c.dim); runMax = try alloc(blocked); targetLogit = try alloc(blocked)
        runSum = try alloc(2 * blocked).withMemoryRebound(to: Double.self, capacity: max(blocked, 1)) { $0 }
        chunkTargets = try alloc(rc).withMemoryRebound(to: Int32.self, capacity: rc) { $0 }
        positions = try alloc(n).withMemoryRebound(to: Int32.self, capacity: n) { $0 }
        storage = st
    }

    @inline(__always) func t(_ l: Int, _ m: LinearModule) -> UnsafeMutablePointer<Float> {
        layers[l].t[m.rawValue]!
    }
}

// MARK: - Plugin adapters

/// One plugin instance being trained: its module (own parameters), the parameters as trainable tensors
/// (sharing the values; nil for frozen ones) and the activations its backward reads, for batches of up to
/// `capacity` rows: x' (input point) or h = W x (output and added points).
final class PluginTrainable {
    let module: PluginModule
    let tensors: [TrainableTensor?]
    private var capacity = 0
    private var saved: Storage?
    private var scratch: [Storage] = []
    private var workspace: Storage?

    init(_ m: PluginModule) throws(LKError) {
        module = m
        var ts: [TrainableTensor?] = []
        let prefix = "base_model.model." + m.fullName + "."
        for (p, v) in zip(m.parameters, m.values) {
            ts.append(p.trainable ? try TrainableTensor(name: prefix + p.name, sharing: v) : nil)
        }
        tensors = ts
    }

    private func f(_ s: Storage) -> UnsafeMutablePointer<Float> { s.base.assumingMemoryBound(to: Float.self) }

    private func ensure(rows n: Int) throws(LKError) {
        let wide = max(module.inFeatures, module.outFeatures)
        let ws = max(module.workspaceFloats(call: Int32(0), rows: n), module.workspaceFloats(call: Int32(1), rows: n), 1)
        if n > capacity {
            saved = try Storage(lazyZeroedBytes: n * wide * 4)
            scratch = [try Storage(lazyZeroedBytes: n * wide * 4), try Storage(lazyZeroedBytes: n * wide * 4)]
            capacity = n
        }
        if workspace == nil || workspace!.byteCount < ws * 4 { workspace = try Storage(lazyZeroedBytes: ws * 4) }
    }

    /// y[T, OUT] = the module with the instance (scale 1) on x[T, IN], keeping what the backward reads.
    func forward(x: UnsafePointer<Float>, rows n: Int, y: UnsafeMutablePointer<Float>, weight w: Tensor,
                 pool: ThreadPool) throws(LKError) {
        try ensure(rows: n)
        let nIn = module.inFeatures, nOut = module.outFeatures
        let keep = f(saved!), ws = f(workspace!)
        func base(_ xin: UnsafePointer<Float>, _ out: UnsafeMutablePointer<Float>) throws(LKError) {
            try GEMM.multiply(m: n, n: nOut, k: nIn, a: GEMMLeft(xin, rowStride: nIn), b: .weight(w, transposed: true),
                              c: out, ldc: nOut, pool: pool)
        }
        switch module.point {
        case .input:
            try module.forward(x: x, baseY: nil, rows: n, y: keep, scale: 1, workspace: ws, pool: pool)
            try base(UnsafePointer(keep), y)
        case .output:
            try base(x, keep)
            try module.forward(x: x, baseY: UnsafePointer(keep), rows: n, y: y, scale: 1, workspace: ws, pool: pool)
        case .add:
            try base(x, y)
            keep.update(from: y, count: n * nOut)
            try module.forward(x: x, baseY: UnsafePointer(keep), rows: n, y: y, scale: 1, workspace: ws, pool: pool)
        }
    }

    /// dx (= or +=, by `beta`) dL/dx through the module and the instance; accumulates the instance's
    /// parameter gradients when `parameters`. dx nil: parameter gradients only.
    func backward(x: UnsafePointer<Float>, dy: UnsafePointer<Float>, rows n: Int, dx: UnsafeMutablePointer<Float>?,
                  beta: Float, weight w: Tensor, parameters: Bool, pool: ThreadPool) throws(LKError) {
        try ensure(rows: n)
        let nIn = module.inFeatures, nOut = module.outFeatures
        let keep = UnsafePointer(f(saved!)), ws = f(workspace!), a = f(scratch[0]), b = f(scratch[1])
        let grads: [UnsafeMutablePointer<Float>?] = tensors.map { parameters ? $0?.grad : nil }
        if !parameters && dx == nil { return }
        // dx (beta) += d · W for d [T, OUT].
        func throughW(_ d: UnsafePointer<Float>, into out: UnsafeMutablePointer<Float>, beta: Float) throws(LKError) {
            try GEMM.multiply(m: n, n: nIn, k: nOut, a: GEMMLeft(d, rowStride: nOut), b: .weight(w, transposed: false),
                              beta: beta, c: out, ldc: nIn, pool: pool)
        }
        switch module.point {
        case .input:
            // dL/dx' = dy · W, then the instance maps it to dL/dx (all of it).
            try throughW(dy, into: a, beta: 0)
            if dx != nil { b.update(repeating: 0, count: n * nIn) }
            try module.backward(x: x, baseY: nil, dy: UnsafePointer(a), rows: n, dx: dx == nil ? nil : b, dBaseY: nil,
                                paramGrads: grads, scale: 1, workspace: ws, pool: pool)
            if let dx { for i in 0..<(n * nIn) { dx[i] = (beta == 0 ? 0 : dx[i]) + b[i] } }
        case .output:
            a.update(repeating: 0, count: n * nOut)
            try module.backward(x: x, baseY: keep, dy: dy, rows: n, dx: nil, dBaseY: a, paramGrads: grads, scale: 1,
                                workspace: ws, pool: pool)
            if let dx { try throughW(UnsafePointer(a), into: dx, beta: beta) }
        case .add:
            a.update(repeating: 0, count: n * nOut)
            if dx != nil { b.update(repeating: 0, count: n * nIn) }
            try module.backward(x: x, baseY: keep, dy: dy, rows: n, dx: dx == nil ? nil : b, dBaseY: a, paramGrads: grads,
                                scale: 1, workspace: ws, pool: pool)
            if let dx {
                for i in 0..<(n * nOut) { a[i] += dy[i] }
                try throughW(UnsafePointer(a), into: dx, beta: beta)
                for i in 0..<(n * nIn) { dx[i] += b[i] }
            }
        }
    }
}
