import LoRAKitCore
import LoRAKitKernels
import LoRAKitFormats
import LoRAKitTokenizer
import LoRAKitTemplates
import LoRAKitModel

/// Training driven by the caller, one sequence at a time: the caller makes the sequences (token ids with
/// target flags, optionally after caller-given embedding rows such as projected image features),
/// accumulates gradients with `forwardBackward`, and applies them with `optimizerStep` — what
/// `lk_trainer_forward_backward` / `lk_trainer_optimizer_step` run, where `TrainingSession` reads its own
/// data. The adapter, AdamW, clipping, dropout, validation, checkpoints and resume are `TrainingSession`'s:
///
///     t.zeroGradients()
///     for s in stepSequences { try t.forwardBackward(s, lossScale: 1 / Float(N)) }   // N = Σ predicted
///     let norm = try t.optimizerStep(lr: lr)
///
/// gives the update `TrainingSession.trainStep` makes for the same rows (the loss is Σ sumNLL / N).
/// Checkpoints have the `TrainingSession` layout; their `trainer_state.json` has no data position
/// (`"manual": true`), so only a `ManualTraining` resumes from them (and it resumes from a session's too).
public final class ManualTraining: @unchecked Sendable {
    public let model: LlamaModel
    /// The options in effect; the data, batch, schedule and length options are not used (the caller
    /// makes the sequences and gives each step's learning rate), except `batchSize` for validation.
    public let options: TrainingOptions
    public let valid: TrainDataset?
    public let trainer: LoRATrainer
    public let optimizer: AdamW
    /// Optimizer steps done (including those restored from a checkpoint).
    public private(set) var step = 0
    /// Messages worth showing the user (data summary, checkpoint fallbacks).
    public private(set) var notes: [String] = []
    /// `forwardBackward` calls since the last optimizer step (keys the dropout masks).
    private var micro = 0

    /// Create (or load, with `options.initAdapter`) the adapter and, with `options.resume`, restore the
    /// latest checkpoint there. Nothing is written.
    public init(model: LlamaModel, validPath: String? = nil, options requested: TrainingOptions) throws(LKError) {
        try requested.validate()
        let (options, capNote) = requested.fitted(to: model)
        if let n = capNote { notes.append(n) }
        self.model = model
        self.options = options
        valid = try validPath.map { (p: String) throws(LKError) -> TrainDataset in
            try TrainDataset.load(path: p, model: model, options: options.data)
        }
        if let v = valid { notes.append("valid: \(v.summary)") }
        (trainer, optimizer) = try TrainingOptions.makeTrainer(model: model, options: options)
        if let dir = options.resume {
            guard let ck = try Checkpoint.loadLatest(dir: dir, model: model) else {
                throw .invalidArgument("resume: no checkpoint in \(dir)")
            }
            notes += ck.warnings
            try trainer.load(ck.adapter)
            try optimizer.restore(ck.optimizer)
            step = ck.step
            notes.append("resumed from \(ck.path) at step \(step)")
        }
    }

    /// Set every gradient to zero (before the first `forwardBackward` of a step).
    public func zeroGradients() {
        trainer.zeroGradients()
    }

    /// Forward and backward of one sequence: adds d(lossScale · ΣNLL)/dθ to the gradients and returns the
    /// sequence's Σ NLL, its predicted-token count and, with `inputGradients`, d(lossScale · ΣNLL)/d(input
    /// rows) ([P + T, C]). On error the gradients may hold a partial sum (zero them).
    public func forwardBackward(_ sequence: TrainSequence, lossScale: Float,
                                inputGradients: Bool = false) throws(LKError) -> TrainPassResult {
        guard lossScale.isFinite else { throw .invalidArgument("train: loss scale \(lossScale) is not finite") }
        let r = try trainer.pass([sequence], gradients: true, lossScale: lossScale, inputGradients: inputGradients,
                                 step: step, microBatch: micro)
        micro += 1
        return r
    }

    /// Clip (to `options.optimizer.maxGradNorm`, when set), AdamW with learning rate `lr`, count the step;
    /// returns the gradient norm before clipping. The gradients are not zeroed. Throws, without updating
    /// anything, when the gradient is not finite.
    @discardableResult
    public func optimizerStep(lr: Double) throws(LKError) -> Float {
        guard lr.isFinite, lr >= 0 else { throw .invalidArgument("optimizer step: learning rate \(lr) must be finite and ≥ 0") }
        let norm: Float
        do {
            norm = try optimizer.clipGradients(pool: trainer.pool)
        } catch {
            throw .invalidArgument("training step \(step + 1): \(error.message); stopped before updating the adapter")
        }
        try optimizer.step(lr: lr, pool: trainer.pool)
        step += 1
        micro = 0
        return norm
    }

    /// Mean NLL over every predicted token of `data` (the validation set by default); nil without data.
    public func validationLoss(_ data: TrainDataset? = nil) throws(LKError) -> Double? {
        guard let d = data ?? valid else { return nil }
        var sum = 0.0, n = 0
        for b in try d.validationBatches(batchSize: options.batchSize) {
            let seqs = zip(b.rows, b.targets).map { TrainSequence(tokens: $0.0, isTarget: $0.1) }
            let r = try trainer.pass(seqs, gradients: false)
            sum += r.sumNLL
            n += r.predicted
        }
        return n > 0 ? sum / Double(n) : nil
    }

    /// The current adapter (a snapshot of the trained values).
    public func adapter() throws(LKError) -> LoRAAdapter { try trainer.adapter() }

    /// Write a checkpoint of the current state into `options.outDir` (no-op without one).
    @discardableResult
    public func saveCheckpoint() throws(LKError) -> String? {
        guard let dir = options.outDir else { return nil }
        let state: JSONValue = .object([("step", .number(Double(step))), ("manual", .bool(true)),
                                        ("rng", .string(String(options.seed))), ("options", options.json)])
        return try Checkpoint.save(dir: dir, step: step, adapter: try trainer.adapter(), optimizer: optimizer,
                                   trainerState: state, keep: options.keep)
    }
}
