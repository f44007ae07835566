import LoRAKitCore
import LoRAKitKernels
import LoRAKitFormats
import LoRAKitTokenizer
import LoRAKitTemplates
import LoRAKitModel

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// Everything a training run is configured with. Errors name each option as users see it: the C struct
/// field, which is also the Python keyword (given in brackets below where the Swift name differs); the CLI
/// shows its flag.
public struct TrainingOptions: Sendable {
    /// The adapter to create when `initAdapter` is nil (`rank`, `alpha`, `use_rslora`, `targets`, `layers`,
    /// patterns, `dropout`). With `initAdapter`, only its `dropout` is used.
    public var lora = LoRAConfig(rank: 8, alpha: 16, targets: [.q, .v])
    /// Start from this adapter (PEFT folder or GGUF LoRA) instead of a new one [`init_adapter`].
    public var initAdapter: String? = nil
    /// Initialization of a new adapter (PEFT's by default) [`init`].
    public var initialization: LoRAInitialization = .peft
    /// AdamW and clipping (`lr`, `adam_beta1`, `adam_beta2`, `adam_epsilon`, `weight_decay`,
    /// `max_grad_norm`; nil or 0: no clipping).
    public var optimizer = OptimizerConfig(lr: 2e-4, weightDecay: 0.01, maxGradNorm: 1.0)
    public var schedule: LRScheduleKind = .constant
    /// [`warmup_steps`]
    public var warmupSteps = 0
    /// The cosine schedule decays to `lr · lrMinRatio` instead of 0, in [0, 1] [`lr_min_ratio`].
    public var lrMinRatio = 0.0
    /// Optimizer steps; nil → from `epochs`.
    public var steps: Int? = nil
    /// Passes over the training data (used when `steps` is nil; default 1).
    public var epochs: Double? = nil
    /// Examples per micro-batch [`batch`].
    public var batchSize = 4
    /// Micro-batches per optimizer step [`grad_accum`].
    public var gradAccum = 1
    /// Seeds the data order (when shuffling), the adapter initialization and the dropout masks.
    public var seed: UInt64 = 0
    /// nil: one per CPU core.
    public var threads: Int? = nil
    public var shuffle = true
    /// Tokenization, truncation (`seq`, `truncate`), packing, completion-only loss.
    public var data = TrainDataOptions(seq: 512)
    /// Where checkpoints and the final adapter go (nil: nothing is written) [`out_dir`].
    public var outDir: String? = nil
    /// Format of the final adapter in `outDir` (checkpoints are always PEFT + optimizer state).
    public var format: AdapterFormat = .peft
    /// Save a checkpoint every this many steps (nil or 0: only at the end) [`save_every`].
    public var saveEvery: Int? = nil
    /// Checkpoints kept.
    public var keep = 2
    /// Validate every this many steps (nil or 0: only at the end, when there is validation data)
    /// [`valid_every`].
    public var validEvery: Int? = nil
    /// Continue from the latest checkpoint in this folder [`resume_dir`].
    public var resume: String? = nil
    /// Append one JSON line per step (and per validation) to this file [`log_path`].
    public var logPath: String? = nil
    /// Train a new adapter of this plugin type (`PluginAdapterType.name`, e.g. "ia3", "dora"; a loaded
    /// plugin's, else one on the search path) instead of LoRA [`adapter_type`]. Its PEFT config comes from
    /// `lora` (targets, layers; rank, alpha and rsLoRA for a `LORA`-based type such as DoRA) and
    /// `adapterConfig` (`PluginAdapter.peftOptions`); its parameters start from the type's init rules and
    /// `seed`. Plugin adapters train without dropout, start with the type's own initialisation and save
    /// as PEFT. An `initAdapter` folder of a plugin type trains that type (this field may then name it).
    public var adapterType: String? = nil
    /// PEFT config fields for `adapterType` (a JSON object, e.g. `{"feedforward_modules": ["down_proj"]}`),
    /// set over those derived from `lora` [`adapter_config`].
    public var adapterConfig: JSONValue? = nil
    /// How the activations each layer's backward reads are kept: f32 (default) or f16, about half the
    /// activation memory with gradients within f16 rounding (`KeptActivations`) [`kept_activations`].
    public var keptActivations: KeptActivations = .f32

    public init() {}

    /// Whether the run trains a plugin adapter (`adapterType` set, or `initAdapter` a plugin type's folder).
    public var trainsPlugin: Bool { adapterType != nil || initAdapter.map(PluginAdapter.isPluginFolder) == true }

    /// Checks every option, before anything is loaded; the error (`LKError.invalidOption`) names the field
    /// as above. With `model`, the layers are checked against it. The optimizer's, the schedule's and the
    /// data's own rules are theirs (`OptimizerConfig.validate`, `LRSchedule.init`, `TrainDataOptions.validate`).
    public func validate(for model: LlamaModel? = nil) throws(LKError) {
        func bad(_ field: String, _ problem: String) -> LKError { .invalidOption(field: field, problem: problem) }
        guard lora.dropout.isFinite, lora.dropout >= 0, lora.dropout < 1 else { throw bad("dropout", "\(lora.dropout) must be in [0, 1)") }
        if initAdapter == nil {
            let ranks = LoRAModule.rankRange
            guard ranks.contains(lora.rank) else { throw bad("rank", "\(lora.rank) must be in \(ranks.lowerBound)...\(ranks.upperBound)") }
            guard lora.alpha.isFinite, lora.alpha > 0 else { throw bad("alpha", "\(lora.alpha) must be finite and > 0") }
            guard !lora.targets.isEmpty else { throw bad("targets", "is empty: no module would be trained") }
            let layers = lora.layers ?? [], n = model?.config.nLayers ?? 1 << 20
            for (i, l) in layers.enumerated() {
                guard l >= 0, l < n else { throw bad("layers[\(i)]", "= \(l) is not a layer of the model (0...\(n - 1))") }
                if let j = layers[..<i].firstIndex(of: l) { throw bad("layers[\(i)]", "= \(l) is listed twice (also layers[\(j)])") }
            }
            try lora.validate()  // the rank and alpha patterns
        }
        try optimizer.validate()
        if let s = steps, s < 1 || s > 100_000_000 { throw bad("steps", "\(s) must be in 1...100000000 (unset: from epochs)") }
        if let e = epochs, !(e.isFinite && e > 0 && e <= 1_000_000) { throw bad("epochs", "\(e) must be a finite number in (0, 1e6]") }
        _ = try LRSchedule(kind: schedule, warmupSteps: warmupSteps, totalSteps: steps ?? 1, minRatio: lrMinRatio)
        guard batchSize >= 1, batchSize <= 65536 else { throw bad("batch", "\(batchSize) must be in 1...65536") }
        guard gradAccum >= 1, gradAccum <= 65536 else { throw bad("grad_accum", "\(gradAccum) must be in 1...65536") }
        if let t = threads, t < 1 || t > 512 { throw bad("threads", "\(t) must be in 1...512 (unset: one per CPU core)") }
        try data.validate()
        if let s = saveEvery, s < 0 { throw bad("save_every", "\(s) must be ≥ 0 (0: only at the end)") }
        guard keep >= 1 else { throw bad("keep", "\(keep) must be ≥ 1") }
        if let v = validEvery, v < 0 { throw bad("valid_every", "\(v) must be ≥ 0 (0: at the last step)") }
        for (field, path) in [("out_dir", outDir), ("resume_dir", resume), ("init_adapter", initAdapter), ("log_path", logPath),
                              ("adapter_type", adapterType)]
        where path?.isEmpty == true {
            throw bad(field, "is empty (unset it for none)")
        }
        if let c = adapterConfig {
            guard adapterType != nil else { throw bad("adapter_config", "is set but adapter_type is not (the fields are for a plugin adapter type)") }
            guard c.object != nil else { throw bad("adapter_config", "must be a JSON object of PEFT config fields, not \(JSON.serialize(c).prefix(80))") }
        }
        if trainsPlugin {
            let what = "adapter_type \(adapterType ?? "(from init_adapter)")"
            guard lora.dropout == 0 else { throw bad("dropout", "\(lora.dropout): plugin adapters (\(what)) train without dropout; set it to 0") }
            guard initialization == .peft else { throw bad("init", "plugin adapters (\(what)) start from their type's own initialisation; leave init at its default (PEFT)") }
            guard format == .peft else { throw bad("format", "gguf holds LoRA adapters only; a plugin adapter (\(what)) is saved as PEFT") }
        }
    }

    /// The PEFT config of a new adapter of plugin type `type` (see `adapterType`).
    public func pluginConfig(for type: PluginAdapterType) throws(LKError) -> JSONValue {
        try PluginAdapter.peftOptions(type: type, targets: lora.targets, layers: lora.layers, rank: lora.rank,
                                      alpha: lora.alpha, useRSLoRA: lora.useRSLoRA, extra: adapterConfig)
    }

    /// `seq` capped at the model's context length (examples are cut to it like to any `seq`), and the note
    /// saying so when it was.
    func fitted(to model: LlamaModel) -> (TrainingOptions, String?) {
        let ctx = model.config.contextLength
        guard data.seq > ctx else { return (self, nil) }
        var o = self
        o.data.seq = ctx
        return (o, "seq \(data.seq) capped at the model's context of \(ctx) tokens")
    }

    /// The adapter (loaded from `initAdapter` or created), its trainer and an AdamW over its tensors.
    static func makeTrainer(model: LlamaModel, options: TrainingOptions,
                            projector: Projector? = nil) throws(LKError) -> (LoRATrainer, AdamW) {
        let trainer: LoRATrainer
        if options.trainsPlugin {
            let plugin: PluginAdapter
            if let path = options.initAdapter {
                guard PluginAdapter.isPluginFolder(path) else {
                    throw .invalidOption(field: "init_adapter", problem: "\(path) is not a PEFT folder of a plugin adapter type (adapter_type \"\(options.adapterType ?? "")\" trains one)")
                }
                plugin = try PluginAdapter.load(peftDirectory: path, model: model)
                if let t = options.adapterType, t != plugin.type.name {
                    throw .invalidOption(field: "adapter_type", problem: "\"\(t)\", but init_adapter \(path) is of type \"\(plugin.type.name)\"")
                }
            } else {
                let type = try PluginAdapter.resolveType(named: options.adapterType!)
                plugin = try PluginAdapter.create(type: type, model: model, options: try options.pluginConfig(for: type),
                                                  seed: options.seed, name: type.name)
            }
            trainer = try LoRATrainer(model: model, plugin: plugin, threads: options.threads)
        } else {
            let adapter: LoRAAdapter
            if let path = options.initAdapter {
                adapter = try LoRAAdapter.load(path: path, model: model)
            } else {
                adapter = try LoRAAdapter.create(for: model, config: options.lora, initialization: options.initialization,
                                                 seed: options.seed, name: "lora")
            }
            trainer = try LoRATrainer(model: model, adapter: adapter, threads: options.threads,
                                      dropout: options.lora.dropout, dropoutSeed: options.seed)
        }
        var params: [OptimizerParameter] = []
        for p in trainer.parameters {
            let (v, g) = try p.tensors()
            params.append(try OptimizerParameter(name: p.name, value: v, grad: g))
        }
        for p in projector?.parameters ?? [] {
            params.append(try OptimizerParameter(name: TrainingSession.projectorPrefix + p.name, value: p.value, grad: p.grad))
        }
        trainer.keptActivations = options.keptActivations
        return (trainer, try AdamW(parameters: params, config: options.optimizer))
    }

    /// The options as JSON (written into checkpoints and the log header).
    public var json: JSONValue {
        var o: [(String, JSONValue)] = [
            ("rank", .number(Double(lora.rank))), ("alpha", .number(Double(lora.alpha))),
            ("rslora", .bool(lora.useRSLoRA)),
            ("targets", .string(LinearModule.allCases.filter { lora.targets.contains($0) }.map(\.description).joined(separator: ","))),
            ("dropout", .number(Double(lora.dropout))),
            ("optimizer", optimizer.json), ("schedule", .string(schedule.rawValue)),
            ("warmup", .number(Double(warmupSteps))), ("batch", .number(Double(batchSize))),
            ("grad_accum", .number(Double(gradAccum))), ("seed", .string(String(seed))),
            ("shuffle", .bool(shuffle)), ("data", data.json), ("format", .string(format.rawValue)),
        ]
        if let s = steps { o.append(("steps", .number(Double(s)))) }
        if let e = epochs { o.append(("epochs", .number(e))) }
        if let l = lora.layers { o.append(("layers", .array(l.map { .number(Double($0)) }))) }
        if let i = initAdapter { o.append(("init", .string(i))) }
        if lrMinRatio != 0 { o.append(("lr_min_ratio", .number(lrMinRatio))) }
        if let t = adapterType { o.append(("adapter_type", .string(t))) }
        if let c = adapterConfig { o.append(("adapter_config", c)) }
        if keptActivations != .f32 { o.append(("kept_activations", .string(keptActivations.rawValue))) }
        return .object(o)
    }
}

/// Reported to the progress callback after every optimizer step.
public struct TrainProgress: Sendable {
    /// Steps done (1-based: the first report has step 1).
    public var step: Int
    public var totalSteps: Int
    /// The step's loss (before its update).
    public var loss: Double
    /// Learning rate used by the step's update.
    public var lr: Double
    /// Global gradient norm before clipping.
    public var gradNorm: Double
    /// Input tokens of the step / its wall time.
    public var tokensPerSecond: Double
    /// Input tokens of the step, and predicted tokens.
    public var tokens: Int
    public var predicted: Int
    /// Epochs done (fractional).
    public var epoch: Double
    /// Seconds since this run (or resume) started.
    public var elapsed: Double
    /// Validation loss when this step ran a validation.
    public var validLoss: Double?
}

/// What a finished (or stopped) run returns.
public struct TrainSummary: Sendable {
    public var steps: Int
    public var stoppedByCallback: Bool
    public var finalLoss: Double?
    public var validLoss: Double?
    /// The final adapter's path (when an output folder was given).
    public var adapterPath: String?
    public var losses: [Double]
}

/// A training run: adapter, trainer, AdamW, clipping, validation, checkpoints, resume, logging — and,
/// with training data, the data loop (schedule, gradient accumulation, progress); what `lorakit train` and
/// `lk_trainer_*` run.
///
/// With training data, one optimizer step takes `gradAccum` micro-batches of `batchSize` examples from the
/// data iterator. Its loss is Σ NLL of every predicted token of the step / the number of those tokens (as
/// transformers computes it with labels and `num_items_in_batch`), and the gradient is that loss's
/// gradient. Then: clip by global norm, AdamW update with the scheduled learning rate (transformers'
/// schedules: step 0 of a warm-up has lr 0), log, callback, checkpoint. Deterministic: the data order, the
/// dropout masks (keyed by seed, step and micro-batch) and every kernel are independent of the thread
/// count, so the same seed gives the same losses, and a resumed run gives the losses of an uninterrupted one.
///
/// Without training data the caller drives each step, one sequence at a time (token ids with target flags,
/// optionally after caller-given embedding rows such as projected image features):
///
///     s.zeroGradients()
///     for q in stepSequences { try s.forwardBackward(q, lossScale: 1 / Float(N)) }   // N = Σ predicted
///     let norm = try s.optimizerStep(lr: lr)
///
/// gives the update `trainStep` makes for the same rows (the loss is Σ sumNLL / N). Its checkpoints have no
/// data position (`"manual": true` in trainer_state.json), so only a session without data resumes from
/// them (it resumes from any session's).
public final class TrainingSession: @unchecked Sendable {
    public let model: LlamaModel
    public let options: TrainingOptions
    public let valid: TrainDataset?
    public let trainer: LoRATrainer
    public let optimizer: AdamW
    /// A multimodal projector trained with the adapter (a session driven step by step only): its
    /// parameters are optimised by the same AdamW (named `projector.mm.0.weight`, …), zeroed by
    /// `zeroGradients`, saved in checkpoints (`projector.gguf`) and restored on resume. The caller runs its
    /// forward and backward around `forwardBackward` (the input-embedding gradient of its rows).
    public let projector: Projector?
    /// Prefix of the projector's parameter names in the optimizer state.
    public static let projectorPrefix = "projector."
    /// Optimizer steps of the run: `options.steps`, or from `options.epochs` over the training data (without
    /// training data: `options.steps`, 0 when unset).
    public let totalSteps: Int
    /// Optimizer steps done (including those restored from a checkpoint).
    public private(set) var step = 0
    /// The loss of every step `trainStep` ran (and those restored).
    public private(set) var losses: [Double] = []
    /// Messages worth showing the user (data summary, checkpoint fallbacks).
    public private(set) var notes: [String] = []
    /// The training data, its position and the schedule; nil for a session driven step by step.
    private var source: Source?
    private typealias Source = (data: TrainDataset, iterator: TrainDataIterator, schedule: LRSchedule)
    /// `forwardBackward` calls since the last optimizer step (they key the dropout masks).
    private var microBatch = 0
    /// The JSONL log (opened by the first `runStep`) and when that step started.
    private var log: LogFile? = nil
    private var runStart: Double? = nil

    /// The training data (nil: the caller drives the steps).
    public var train: TrainDataset? { source?.data }
    /// The learning-rate schedule over `totalSteps` (nil without training data: the caller gives each
    /// step's learning rate).
    public var schedule: LRSchedule? { source?.schedule }

    /// Validate the options, load the data (`trainPath` nil: none, the caller drives the steps), create (or
    /// load) the adapter and — with `options.resume` — restore the latest checkpoint there. Nothing is
    /// written yet.
    public init(model: LlamaModel, trainPath: String?, validPath: String? = nil, options requested: TrainingOptions,
                projector: Projector? = nil) throws(LKError) {
        try requested.validate(for: model)
        if let projector {
            guard trainPath == nil else {
                throw .invalidArgument("projector: a projector trains in a session driven step by step (no training data file): the data file has no images")
            }
            try projector.checkFits(model)
        }
        self.projector = projector
        let (options, capNote) = requested.fitted(to: model)
        if let n = capNote { notes.append(n) }
        self.model = model
        self.options = options
        func load(_ path: String) throws(LKError) -> TrainDataset {
            try TrainDataset.load(path: path, model: model, options: options.data)
        }
        let train = try trainPath.map(load)
        if let t = train, t.examples.isEmpty { throw .invalidArgument("\(trainPath ?? ""): no training examples (\(t.summary))") }
        valid = try validPath.map(load)
        if let t = train { notes.append("train: \(t.summary)") }
        if let v = valid { notes.append("valid: \(v.summary)") }
        (trainer, optimizer) = try TrainingOptions.makeTrainer(model: model, options: options, projector: projector)
        if let train {
            let it = try TrainDataIterator(examples: train.examples, batchSize: options.batchSize,
                                           shuffle: options.shuffle, seed: options.seed)
            let micro = Double(it.batchesPerEpoch) * (options.epochs ?? 1)
            totalSteps = options.steps ?? max(1, Int((micro / Double(options.gradAccum)).rounded(.up)))
            source = (train, it, try LRSchedule(kind: options.schedule, warmupSteps: options.warmupSteps,
                                                totalSteps: totalSteps, minRatio: options.lrMinRatio))
        } else {
            totalSteps = options.steps ?? 0
        }
        if let dir = options.resume {
            guard let ck = try Checkpoint.loadLatest(dir: dir, model: model) else {
                throw .invalidArgument("resume: no checkpoint in \(dir)")
            }
            notes += ck.warnings
            let state = source == nil ? nil : try TrainerState(json: ck.trainerState)
            switch (trainer.pluginAdapter, ck.pluginAdapter) {
            case (nil, nil): try trainer.load(ck.adapter)
            case (_?, let saved?): try trainer.load(plugin: saved)
            case (let mine?, nil):
                throw .invalidArgument("resume: \(ck.path) holds a LoRA adapter, but this session trains adapter type \"\(mine.type.name)\"")
            case (nil, let saved?):
                throw .invalidArgument("resume: \(ck.path) holds an adapter of type \"\(saved.type.name)\"; set adapter_type to \"\(saved.type.name)\" to continue it")
            }
            switch (projector, ck.projector) {
            case let (mine?, saved?):
                try mine.copyParameters(from: saved, source: ck.path + "/projector.gguf")
            case (_?, nil):
                throw .invalidArgument("resume: \(ck.path) has no projector.gguf, but this session trains a projector")
            case (nil, _?):
                throw .invalidArgument("resume: \(ck.path) holds a projector (projector.gguf); pass it to the session to continue")
            case (nil, nil):
                break
            }
            try optimizer.restore(ck.optimizer)
            step = ck.step
            if let state {
                try source?.iterator.restore(state.data)
                step = state.step
                losses = state.losses
            }
            notes.append("resumed from \(ck.path) at step \(step)")
        }
    }

    /// The current LoRA adapter (a snapshot of the trained values); a session training a plugin type
    /// throws (use `trainedAdapter()`).
    public func adapter() throws(LKError) -> LoRAAdapter {
        if let p = trainer.pluginAdapter {
            throw .invalidArgument("the session trains an adapter of plugin type \"\(p.type.name)\", not LoRA (use trainedAdapter())")
        }
        return try trainer.adapter()
    }

    /// The current adapter, LoRA or of a plugin type (a snapshot of the trained values).
    public func trainedAdapter() throws(LKError) -> TrainedAdapter {
        trainer.pluginAdapter == nil ? .lora(try trainer.adapter()) : .plugin(try trainer.trainedPluginAdapter())
    }

    /// Mean NLL over every predicted token of `data` (the validation set by default); nil without data.
    public func validationLoss(_ data: TrainDataset? = nil) throws(LKError) -> Double? {
        guard let d = data ?? valid else { return nil }
        var sum = 0.0, n = 0
        for b in try d.validationBatches(batchSize: options.batchSize) {
            let r = try trainer.pass(sequences(b), gradients: false)
            sum += r.sumNLL
            n += r.predicted
        }
        return n > 0 ? sum / Double(n) : nil
    }

    private func sequences(_ b: TrainBatch) -> [TrainSequence] {
        zip(b.rows, b.targets).map { TrainSequence(tokens: $0.0, isTarget: $0.1) }
    }

    /// Write a checkpoint of the current state into `options.outDir` (no-op without one).
    @discardableResult
    public func saveCheckpoint() throws(LKError) -> String? {
        guard let dir = options.outDir else { return nil }
        let state: JSONValue = source.map {
            TrainerState(step: step, data: $0.iterator.state, rng: options.seed, options: options.json,
                         losses: Array(losses.suffix(10_000))).json
        } ?? .object([("step", .number(Double(step))), ("manual", .bool(true)),
                      ("rng", .string(String(options.seed))), ("options", options.json)])
        switch try trainedAdapter() {
        case .lora(let a):
            return try Checkpoint.save(dir: dir, step: step, adapter: a, optimizer: optimizer,
                                       trainerState: state, keep: options.keep, projector: projector)
        case .plugin(let a):
            return try Checkpoint.save(dir: dir, step: step, plugin: a, optimizer: optimizer,
                                       trainerState: state, keep: options.keep, projector: projector)
        }
    }

    // MARK: Step by step (no training data)

    private func requireNoData(_ call: String) throws(LKError) {
        guard source == nil else {
            throw .invalidArgument("\(call): the session reads its training data; use trainStep, runStep or run")
        }
    }

    /// Set every gradient to zero (before the first `forwardBackward` of a step).
    public func zeroGradients() throws(LKError) {
        try requireNoData("zeroGradients")
        trainer.zeroGradients()
        projector?.zeroGradients()
    }

    /// Forward and backward of one sequence: adds d(lossScale · ΣNLL)/dθ to the gradients and returns the
    /// sequence's Σ NLL, its predicted-token count and, with `inputGradients`, d(lossScale · ΣNLL)/d(input
    /// rows) ([P + T, C]). On error the gradients may hold a partial sum (zero them).
    public func forwardBackward(_ sequence: TrainSequence, lossScale: Float,
                                inputGradients: Bool = false) throws(LKError) -> TrainPassResult {
        try forwardBackward([sequence], lossScale: lossScale, inputGradients: inputGradients)
    }

    /// Forward and backward of several sequences in one pass (each attends only to itself; every base weight
    /// is read once for all of their rows): the same gradients as one `forwardBackward` per sequence, summed.
    /// `inputGradients` are per sequence, in batch order.
    public func forwardBackward(_ batch: [TrainSequence], lossScale: Float,
                                inputGradients: Bool = false) throws(LKError) -> TrainPassResult {
        try requireNoData("forwardBackward")
        let r = try trainer.pass(batch, gradients: true, lossScale: lossScale, inputGradients: inputGradients,
                                 step: step, microBatch: microBatch)
        microBatch += 1
        return r
    }

    /// Clip (to `options.optimizer.maxGradNorm`, when set), AdamW with learning rate `lr`, count the step;
    /// returns the gradient norm before clipping. The gradients are not zeroed. Throws, without updating
    /// anything, when the gradient is not finite.
    @discardableResult
    public func optimizerStep(lr: Double) throws(LKError) -> Float {
        try requireNoData("optimizerStep")
        guard lr.isFinite, lr >= 0 else { throw .invalidArgument("lr \(lr) must be a finite number ≥ 0") }
        return try update(lr: lr)
    }

    /// Clip, AdamW, count the step (the end of both kinds of step).
    private func update(lr: Double) throws(LKError) -> Float {
        let norm: Float
        do {
            norm = try optimizer.clipGradients(pool: trainer.pool)
        } catch {
            throw .invalidArgument("training step \(step + 1): \(error.message); stopped before updating the adapter")
        }
        try optimizer.step(lr: lr, pool: trainer.pool)
        step += 1
        microBatch = 0
        return norm
    }

    // MARK: The data loop

    private func requireData(_ call: String) throws(LKError) -> Source {
        guard let source else {
            throw .invalidArgument("\(call): the session has no training data; drive it with zeroGradients, forwardBackward and optimizerStep")
        }
        return source
    }

    /// One optimizer step: forward/backward over `gradAccum` micro-batches, clip, AdamW. Throws (without
    /// updating the adapter) when the loss or the gradient is not finite.
    public func trainStep() throws(LKError) -> TrainProgress {
        let source = try requireData("trainStep")
        var iterator = source.iterator
        let t0 = monotonicSeconds()
        var micro: [TrainBatch] = []
        for _ in 0..<options.gradAccum { micro.append(iterator.next()) }
        self.source?.iterator = iterator
        let predicted = micro.reduce(0) { $0 + $1.predictedCount }
        let tokens = micro.reduce(0) { $0 + $1.tokenCount }
        trainer.zeroGradients()
        var sum = 0.0
        if predicted > 0 {
            let scale = 1 / Float(predicted)
            for (i, b) in micro.enumerated() {
                let r = try trainer.pass(sequences(b), gradients: true, lossScale: scale, step: step, microBatch: i)
                sum += r.sumNLL
            }
        }
        let loss = predicted > 0 ? sum / Double(predicted) : .nan
        guard loss.isFinite else {
            throw .invalidArgument("training step \(step + 1): the loss is \(loss) (\(predicted) predicted tokens); stopped before updating the adapter")
        }
        let lr = source.schedule.lr(base: options.optimizer.lr, step: step)
        let gradNorm = try update(lr: lr)
        losses.append(loss)
        let dt = max(monotonicSeconds() - t0, 1e-9)
        let epoch = Double(iterator.epoch) + Double(iterator.index) / Double(source.data.examples.count)
        return TrainProgress(step: step, totalSteps: totalSteps, loss: loss, lr: lr, gradNorm: Double(gradNorm),
                             tokensPerSecond: Double(tokens) / dt, tokens: tokens, predicted: predicted, epoch: epoch,
                             elapsed: 0, validLoss: nil)
    }

    /// One step of `run`: `trainStep`, then what is due after it — the validation (every `validEvery`
    /// steps and at the last step, when there is validation data), the log line, and the periodic
    /// checkpoint (every `saveEvery` steps before the last). A loop of `runStep` until `totalSteps`,
    /// then `finish()`, is what `run` does without a callback (past `totalSteps` it throws). `elapsed`
    /// counts from the session's first `runStep`.
    public func runStep() throws(LKError) -> TrainProgress {
        _ = try requireData("runStep")
        guard step < totalSteps else { throw .invalidArgument("all \(totalSteps) steps are done (raise steps for more)") }
        let start = runStart ?? monotonicSeconds()
        runStart = start
        if log == nil, let p = options.logPath { log = try LogFile(path: p) }
        var pr = try trainStep()
        pr.elapsed = monotonicSeconds() - start
        let validNow = valid != nil && ((options.validEvery ?? 0) > 0 && step % options.validEvery! == 0
                                        || step == totalSteps)
        if validNow {
            pr.validLoss = try validationLoss()
        }
        var line: [(String, JSONValue)] = [
            ("step", .number(Double(pr.step))), ("loss", .number(pr.loss)), ("lr", .number(pr.lr)),
            ("grad_norm", .number(pr.gradNorm)), ("tokens_per_s", .number(pr.tokensPerSecond)),
            ("tokens", .number(Double(pr.tokens))), ("predicted", .number(Double(pr.predicted))),
            ("epoch", .number(pr.epoch)), ("elapsed_s", .number(pr.elapsed)),
        ]
        if let v = pr.validLoss { line.append(("valid_loss", .number(v))) }
        try log?.append(JSON.serialize(.object(line)))
        if let s = options.saveEvery, s > 0, step % s == 0, step < totalSteps { try saveCheckpoint() }
        return pr
    }

    /// What `run` does after its last step: with an output folder, a last checkpoint and the final
    /// adapter (`outDir/adapter` for PEFT, `outDir/adapter.gguf` for GGUF), whose path is returned.
    @discardableResult
    public func finish() throws(LKError) -> String? {
        guard let dir = options.outDir else { return nil }
        try saveCheckpoint()
        let path = options.format == .gguf ? dir + "/adapter.gguf" : dir + "/adapter"
        try trainedAdapter().save(path: path, format: options.format)
        return path
    }

    /// Train until `totalSteps` (or until `progress` returns false), with validation, checkpoints and the
    /// log as configured (`runStep`); then write the final adapter and a last checkpoint into `outDir`
    /// (`finish`). When a step fails (non-finite loss or gradient), the last checkpoint on disk stays as
    /// it was and the error names the step.
    public func run(progress: ((TrainProgress) -> Bool)? = nil) throws(LKError) -> TrainSummary {
        _ = try requireData("run")
        var stopped = false
        var lastValid: Double? = nil
        while step < totalSteps {
            let pr = try runStep()
            if let v = pr.validLoss { lastValid = v }
            if let cb = progress, !cb(pr) { stopped = true; break }
        }
        let adapterPath = try finish()
        return TrainSummary(steps: step, stoppedByCallback: stopped, finalLoss: losses.last, validLoss: lastValid,
                            adapterPath: adapterPath, losses: losses)
    }
}

/// A trained adapter: LoRA, or of a plugin type (IA³, DoRA, …).
public typealias TrainedAdapter = AnyAdapter

/// An append-only text log (one line per call, flushed).
final class LogFile {
    private let fp: UnsafeMutablePointer<FILE>
    let path: String
    init(path: String) throws(LKError) {
        guard let f = fopen(path, "a") else {
            throw .io("\(path): cannot open the log for appending: \(String(cString: strerror(errno)))")
        }
        fp = f
        self.path = path
    }
    func append(_ line: String) throws(LKError) {
        guard fputs(line + "\n", fp) >= 0, fflush(fp) == 0 else {
            throw .io("\(path): cannot write the log: \(String(cString: strerror(errno)))")
        }
    }
    deinit { fclose(fp) }
}
