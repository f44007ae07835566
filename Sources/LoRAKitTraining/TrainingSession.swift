import LoRAKitCore
import LoRAKitKernels
import LoRAKitFormats
import LoRAKitTokenizer
import LoRAKitTemplates
import LoRAKitModel

/// A whole training run: data, adapter, trainer, AdamW, schedule, clipping, gradient accumulation,
/// validation, checkpoints, logging and progress — what `lorakit train` and `lk_train` run.
///
/// One optimizer step takes `gradAccum` micro-batches of `batchSize` examples from the data iterator.
/// Its loss is Σ NLL of every predicted token of the step / the number of those tokens (as transformers
/// computes it with labels and `num_items_in_batch`), and the gradient is that loss's gradient. Then:
/// clip by global norm, AdamW update with the scheduled learning rate (transformers' schedules: step 0 of
/// a warm-up has lr 0), log, callback, checkpoint. Deterministic: the data order, the dropout masks
/// (keyed by seed, step and micro-batch) and every kernel are independent of the thread count, so the
/// same seed gives the same losses, and a resumed run gives the losses of an uninterrupted one.
#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// Everything a training run is configured with.
public struct TrainingOptions: Sendable {
    /// The adapter to create when `initAdapter` is nil (rank, alpha, targets, layers, rsLoRA, patterns,
    /// dropout). With `initAdapter`, only its `dropout` is used.
    public var lora = LoRAConfig(rank: 8, alpha: 16, targets: [.q, .v])
    /// Start from this adapter (PEFT folder or GGUF LoRA) instead of a new one.
    public var initAdapter: String? = nil
    /// Initialization of a new adapter (PEFT's by default).
    public var initialization: LoRAInitialization = .peft
    /// AdamW and clipping (`maxGradNorm` nil or 0: no clipping).
    public var optimizer = OptimizerConfig(lr: 2e-4, weightDecay: 0.01, maxGradNorm: 1.0)
    public var schedule: LRScheduleKind = .constant
    public var warmupSteps = 0
    /// Optimizer steps; nil → from `epochs`.
    public var steps: Int? = nil
    /// Passes over the training data (used when `steps` is nil; default 1).
    public var epochs: Double? = nil
    /// Examples per micro-batch.
    public var batchSize = 4
    /// Micro-batches per optimizer step.
    public var gradAccum = 1
    /// Seeds the data order (when shuffling), the adapter initialization and the dropout masks.
    public var seed: UInt64 = 0
    public var threads: Int? = nil
    public var shuffle = true
    /// Tokenization, truncation (`seq`), packing, completion-only loss.
    public var data = TrainDataOptions(seq: 512)
    /// Where checkpoints and the final adapter go (nil: nothing is written).
    public var outDir: String? = nil
    /// Format of the final adapter in `outDir` (checkpoints are always PEFT + optimizer state).
    public var format: AdapterFormat = .peft
    /// Save a checkpoint every this many steps (nil or 0: only at the end).
    public var saveEvery: Int? = nil
    /// Checkpoints kept.
    public var keep = 2
    /// Validate every this many steps (nil or 0: only at the end, when there is validation data).
    public var validEvery: Int? = nil
    /// Continue from the latest checkpoint in this folder.
    public var resume: String? = nil
    /// Append one JSON line per step (and per validation) to this file.
    public var logPath: String? = nil

    public init() {}

    /// Range checks; errors name the option.
    public func validate() throws(LKError) {
        if initAdapter == nil { try lora.validate() }
        guard lora.dropout.isFinite, lora.dropout >= 0, lora.dropout < 1 else {
            throw .invalidArgument("training: dropout \(lora.dropout) must be in [0, 1)")
        }
        try optimizer.validate()
        guard optimizer.lr > 0 else { throw .invalidArgument("training: learning rate \(optimizer.lr) must be > 0") }
        guard batchSize >= 1, batchSize <= 65536 else { throw .invalidArgument("training: batch \(batchSize) must be in 1...65536") }
        guard gradAccum >= 1, gradAccum <= 65536 else { throw .invalidArgument("training: grad-accum \(gradAccum) must be in 1...65536") }
        if let s = steps { guard s >= 1, s <= 100_000_000 else { throw .invalidArgument("training: steps \(s) must be ≥ 1") } }
        if let e = epochs { guard e.isFinite, e > 0, e <= 1_000_000 else { throw .invalidArgument("training: epochs \(e) must be > 0") } }
        guard warmupSteps >= 0 else { throw .invalidArgument("training: warm-up steps \(warmupSteps) must be ≥ 0") }
        guard keep >= 1 else { throw .invalidArgument("training: keep \(keep) must be ≥ 1") }
        if let t = threads, t < 1 || t > 512 { throw .invalidArgument("training: threads \(t) must be in 1...512") }
        if let s = saveEvery, s < 0 { throw .invalidArgument("training: save-every \(s) must be ≥ 0") }
        if let v = validEvery, v < 0 { throw .invalidArgument("training: valid-every \(v) must be ≥ 0") }
        try data.validate()
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
    static func makeTrainer(model: LlamaModel, options: TrainingOptions) throws(LKError) -> (LoRATrainer, AdamW) {
        let adapter: LoRAAdapter
        if let path = options.initAdapter {
            adapter = try LoRAAdapter.load(path: path, model: model)
        } else {
            adapter = try LoRAAdapter.create(for: model, config: options.lora, initialization: options.initialization,
                                             seed: options.seed, name: "lora")
        }
        let trainer = try LoRATrainer(model: model, adapter: adapter, threads: options.threads,
                                      dropout: options.lora.dropout, dropoutSeed: options.seed)
        var params: [OptimizerParameter] = []
        for p in trainer.parameters {
            let (v, g) = try p.tensors()
            params.append(try OptimizerParameter(name: p.name, value: v, grad: g))
        }
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

public final class TrainingSession: @unchecked Sendable {
    public let model: LlamaModel
    public let options: TrainingOptions
    public let train: TrainDataset
    public let valid: TrainDataset?
    public let trainer: LoRATrainer
    public let optimizer: AdamW
    public let schedule: LRSchedule
    public let totalSteps: Int
    /// Optimizer steps done.
    public private(set) var step = 0
    public private(set) var losses: [Double] = []
    /// Messages worth showing the user (data summary, checkpoint fallbacks).
    public private(set) var notes: [String] = []
    private var iterator: TrainDataIterator
    /// The JSONL log (opened by the first `runStep`) and when that step started.
    private var log: LogFile? = nil
    private var runStart: Double? = nil

    /// Load the data, create (or load) the adapter, and — with `options.resume` — restore the latest
    /// checkpoint there. Nothing is written yet.
    public init(model: LlamaModel, trainPath: String, validPath: String? = nil, options requested: TrainingOptions) throws(LKError) {
        try requested.validate()
        let (options, capNote) = requested.fitted(to: model)
        if let n = capNote { notes.append(n) }
        self.model = model
        self.options = options
        train = try TrainDataset.load(path: trainPath, model: model, options: options.data)
        guard !train.examples.isEmpty else {
            throw .invalidArgument("\(trainPath): no training examples (\(train.summary))")
        }
        valid = try validPath.map { (p: String) throws(LKError) -> TrainDataset in
            try TrainDataset.load(path: p, model: model, options: options.data)
        }
        notes.append("train: \(train.summary)")
        if let v = valid { notes.append("valid: \(v.summary)") }
        (trainer, optimizer) = try TrainingOptions.makeTrainer(model: model, options: options)
        iterator = try TrainDataIterator(examples: train.examples, batchSize: options.batchSize,
                                         shuffle: options.shuffle, seed: options.seed)
        if let s = options.steps {
            totalSteps = s
        } else {
            let micro = Double(iterator.batchesPerEpoch) * (options.epochs ?? 1)
            totalSteps = max(1, Int((micro / Double(options.gradAccum)).rounded(.up)))
        }
        schedule = try LRSchedule(kind: options.schedule, warmupSteps: options.warmupSteps, totalSteps: totalSteps)
        if let dir = options.resume {
            guard let ck = try Checkpoint.loadLatest(dir: dir, model: model) else {
                throw .invalidArgument("resume: no checkpoint in \(dir)")
            }
            notes += ck.warnings
            let state = try TrainerState(json: ck.trainerState)
            try trainer.load(ck.adapter)
            try optimizer.restore(ck.optimizer)
            try iterator.restore(state.data)
            step = state.step
            losses = state.losses
            notes.append("resumed from \(ck.path) at step \(step)")
        }
    }

    /// The current adapter (a snapshot of the trained values).
    public func adapter() throws(LKError) -> LoRAAdapter { try trainer.adapter() }

    /// Mean NLL over every predicted token of `data` (the validation set by default).
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

    private func trainerState() -> TrainerState {
        TrainerState(step: step, data: iterator.state, rng: options.seed, options: options.json,
                     losses: Array(losses.suffix(10_000)))
    }

    /// Write a checkpoint of the current state into `options.outDir` (no-op without one).
    @discardableResult
    public func saveCheckpoint() throws(LKError) -> String? {
        guard let dir = options.outDir else { return nil }
        return try Checkpoint.save(dir: dir, step: step, adapter: try trainer.adapter(), optimizer: optimizer,
                                   trainerState: trainerState().json, keep: options.keep)
    }

    /// One optimizer step: forward/backward over `gradAccum` micro-batches, clip, AdamW. Throws (without
    /// updating the adapter) when the loss or the gradient is not finite.
    public func trainStep() throws(LKError) -> TrainProgress {
        let t0 = monotonicSeconds()
        var micro: [TrainBatch] = []
        for _ in 0..<options.gradAccum { micro.append(iterator.next()) }
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
        let gradNorm: Float
        do {
            gradNorm = try optimizer.clipGradients(pool: trainer.pool)
        } catch {
            throw .invalidArgument("training step \(step + 1): \(error.message); stopped before updating the adapter")
        }
        let lr = schedule.lr(base: options.optimizer.lr, step: step)
        try optimizer.step(lr: lr, pool: trainer.pool)
        step += 1
        losses.append(loss)
        let dt = max(monotonicSeconds() - t0, 1e-9)
        let epoch = Double(iterator.epoch) + Double(iterator.index) / Double(train.examples.count)
        return TrainProgress(step: step, totalSteps: totalSteps, loss: loss, lr: lr, gradNorm: Double(gradNorm),
                             tokensPerSecond: Double(tokens) / dt, tokens: tokens, predicted: predicted, epoch: epoch,
                             elapsed: 0, validLoss: nil)
    }

    /// One step of `run`: `trainStep`, then what is due after it — the validation (every `validEvery`
    /// steps and at the last step, when there is validation data), the log line, and the periodic
    /// checkpoint (every `saveEvery` steps before the last). A loop of `runStep` until `totalSteps`,
    /// then `finish()`, is what `run` does without a callback. `elapsed` counts from the session's first
    /// `runStep`.
    public func runStep() throws(LKError) -> TrainProgress {
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
        let a = try trainer.adapter()
        let path = options.format == .gguf ? dir + "/adapter.gguf" : dir + "/adapter"
        try a.save(path: path, format: options.format)
        return path
    }

    /// Train until `totalSteps` (or until `progress` returns false), with validation, checkpoints and the
    /// log as configured (`runStep`); then write the final adapter and a last checkpoint into `outDir`
    /// (`finish`). When a step fails (non-finite loss or gradient), the last checkpoint on disk stays as
    /// it was and the error names the step.
    public func run(progress: ((TrainProgress) -> Bool)? = nil) throws(LKError) -> TrainSummary {
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
