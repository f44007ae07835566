// C ABI for LoRA training (lorakit.h, "LoRA training"): a trainer handle over a TrainingSession.
import CLoRAKit
import LoRAKit

// MARK: - Structs

extension lk_train_params: SizedCStruct {
    static let cName = "lk_train_params"
    static let firstVersionSize = end(\lk_train_params.log_path)
    /// TrainingOptions()'s defaults in C terms (NULL strings, 0 for "unset", LK_LORA_INIT_PEFT).
    static var defaults: Self {
        let o = TrainingOptions(), a = o.optimizer
        var p = Self()
        (p.rank, p.alpha, p.dropout) = (Int32(o.lora.rank), o.lora.alpha, o.lora.dropout)
        (p.lr, p.weight_decay, p.max_grad_norm) = (a.lr, a.weightDecay, a.maxGradNorm ?? 0)
        (p.adam_beta1, p.adam_beta2, p.adam_epsilon) = (a.beta1, a.beta2, a.eps)
        p.schedule = Int32(schedules.first { $0.value == o.schedule }?.key ?? 0)
        (p.batch, p.epochs, p.grad_accum, p.keep) = (Int32(o.batchSize), o.epochs ?? 1, Int32(o.gradAccum), Int32(o.keep))
        (p.seq, p.completion_only_loss, p.packing) = (Int32(o.data.seq), o.data.completionOnlyLoss ? 1 : 0, o.data.packing ? 1 : 0)
        (p.shuffle, p.lr_min_ratio) = (o.shuffle ? 1 : 0, o.lrMinRatio)
        return p
    }
}

extension lk_train_progress: SizedCStruct {
    static let cName = "lk_train_progress"
    static let firstVersionSize = end(\lk_train_progress.valid_loss)

    init(_ p: TrainProgress) {
        self.init(struct_size: 0, step: Int64(p.step), total_steps: Int64(p.totalSteps), loss: p.loss, lr: p.lr,
                  grad_norm: p.gradNorm, tokens_per_s: p.tokensPerSecond, tokens: Int64(p.tokens),
                  predicted: Int64(p.predicted), epoch: p.epoch, elapsed_s: p.elapsed, valid_loss: p.validLoss ?? .nan)
    }
}

let schedules: KeyValuePairs<Int, LRScheduleKind> = [LK_SCHEDULE_CONSTANT: .constant, LK_SCHEDULE_LINEAR: .linear,
                                                     LK_SCHEDULE_COSINE: .cosine]

/// lk_train_params → TrainingOptions: fields mapped, C-only conventions (0 = unset, NULL strings, 0/1
/// flags, enum values) translated. The session validates the options and names the field.
func trainingOptions(_ params: UnsafePointer<lk_train_params>?) throws -> TrainingOptions {
    let p = try lk_train_params.read(params)
    var o = TrainingOptions()
    o.lora = try loraConfig(rank: p.rank, alpha: p.alpha, useRSLoRA: p.use_rslora, targets: p.targets, dropout: p.dropout)
    guard p.n_layers >= 0, p.n_layers <= 4096 else { throw invalid("params->n_layers \(p.n_layers) must be in 0...4096 (0 = all layers)") }
    if p.n_layers > 0 {
        guard let layers = p.layers else { throw invalid("params->layers is NULL but params->n_layers is \(p.n_layers)") }
        o.lora.layers = UnsafeBufferPointer(start: layers, count: Int(p.n_layers)).map(Int.init)
    }
    o.initialization = try loraInitialization(p.`init`, seed: p.seed)
    o.optimizer = OptimizerConfig(lr: p.lr, beta1: p.adam_beta1, beta2: p.adam_beta2, eps: p.adam_epsilon,
                                  weightDecay: p.weight_decay, maxGradNorm: p.max_grad_norm == 0 ? nil : p.max_grad_norm)
    o.schedule = try cEnum(p.schedule, "params->schedule", "LK_SCHEDULE_*", schedules)
    (o.warmupSteps, o.lrMinRatio) = (Int(p.warmup_steps), p.lr_min_ratio)
    o.steps = p.steps == 0 ? nil : Int(p.steps)
    o.epochs = p.steps == 0 ? p.epochs : nil  // read only when steps is 0
    (o.batchSize, o.gradAccum, o.seed) = (Int(p.batch), Int(p.grad_accum), p.seed)
    o.threads = p.threads == 0 ? nil : Int(p.threads)
    o.shuffle = try flag(p.shuffle, "params->shuffle")
    o.data = TrainDataOptions(seq: Int(p.seq), completionOnlyLoss: try flag(p.completion_only_loss, "params->completion_only_loss"),
                              truncation: try cEnum(p.truncate, "params->truncate", "LK_TRUNCATE_*",
                                                    [LK_TRUNCATE_CUT: .keepFirst, LK_TRUNCATE_ERROR: .error]),
                              packing: try flag(p.packing, "params->packing"))
    (o.saveEvery, o.keep, o.validEvery) = (Int(p.save_every), Int(p.keep), Int(p.valid_every))
    o.format = try cEnum(p.format, "params->format", "LK_ADAPTER_*", adapterFormats)
    o.outDir = try optionalPath(p.out_dir, "params->out_dir")
    o.resume = try optionalPath(p.resume_dir, "params->resume_dir")
    o.initAdapter = try optionalPath(p.init_adapter, "params->init_adapter")
    o.logPath = try optionalPath(p.log_path, "params->log_path")
    o.adapterType = try adapterTypeArg(p.adapter_type)
    o.adapterConfig = try adapterConfigArg(p.adapter_config)
    o.keptActivations = try cEnum(p.kept_activations, "params->kept_activations", "LK_DTYPE_F32 or LK_DTYPE_F16",
                                  [LK_DTYPE_F32: KeptActivations.f32, LK_DTYPE_F16: .f16])
    return o
}

// MARK: - Handle object

/// What an lk_trainer handle refers to: one TrainingSession, with or without training data. Holds its
/// ModelBox (and so the model) strongly: freeing the model handle first is legal.
final class TrainerBox: ExclusiveBox, @unchecked Sendable {
    let session: TrainingSession
    let modelBox: ModelBox

    init(_ s: TrainingSession, _ m: ModelBox) {
        session = s
        modelBox = m
    }
}

/// Run `body` with exclusive use of the trainer behind `h`. `data`: the call needs a trainer with (true)
/// or without (false) training data; nil: either.
func withTrainer<R>(_ h: OpaquePointer?, _ function: String, data: Bool? = nil, _ body: (TrainerBox) throws -> R) throws -> R {
    try exclusive(h, .trainer, "trainer", rule: "a trainer serves one thread at a time, and lk_trainer_run's callback must not use it") {
        (box: TrainerBox) in
        switch (data, box.session.train != nil) {
        case (true, false):
            throw invalid("the trainer has no training data (train_path was NULL): drive it with lk_trainer_zero_grad, lk_trainer_forward_backward and lk_trainer_optimizer_step, not \(function)")
        case (false, true):
            throw invalid("\(function) is for trainers created without training data (train_path NULL); this trainer reads its data: use lk_trainer_step or lk_trainer_run")
        default:
            return try body(box)
        }
    }
}

// MARK: - Create, free

@_cdecl("lk_trainer_create")
public func lk_trainer_create(_ model: OpaquePointer?, _ trainPath: UnsafePointer<CChar>?, _ validPath: UnsafePointer<CChar>?,
                              _ params: UnsafePointer<lk_train_params>?, _ out: UnsafeMutablePointer<OpaquePointer?>?) -> Int32 {
    guarded("lk_trainer_create") {
        let o = try requirePointer(out, "out")
        let box = try modelArg(model)
        let p = try lk_train_params.read(params)
        let projector = try p.projector.map { h throws in
            let pb = try projectorArg(h, "params->projector")
            guard pb.modelBox.model === box.model else { throw invalid("params->projector was made for another model") }
            return pb.projector
        }
        let session = try TrainingSession(model: box.model, trainPath: try optionalPath(trainPath, "train_path"),
                                          validPath: try optionalPath(validPath, "valid_path"), options: try trainingOptions(params),
                                          projector: projector)
        return Handles.shared.give(TrainerBox(session, box), kind: .trainer, to: o)
    }
}

@_cdecl("lk_trainer_free")
public func lk_trainer_free(_ trainer: OpaquePointer?) -> Int32 {
    guarded("lk_trainer_free") { try Handles.shared.free(trainer, kind: .trainer, what: "trainer") }
}

// MARK: - Training

@_cdecl("lk_trainer_step")
public func lk_trainer_step(_ trainer: OpaquePointer?, _ progress: UnsafeMutablePointer<lk_train_progress>?) -> Int32 {
    guarded("lk_trainer_step") {
        try withTrainer(trainer, "lk_trainer_step", data: true) { box in
            try lk_train_progress.checkOut(progress, "progress")
            lk_train_progress(try box.session.runStep()).write(to: progress)
            return LK_OK
        }
    }
}

@_cdecl("lk_trainer_run")
public func lk_trainer_run(_ trainer: OpaquePointer?, _ callback: lk_train_callback?, _ userData: UnsafeMutableRawPointer?,
                           _ last: UnsafeMutablePointer<lk_train_progress>?) -> Int32 {
    guarded("lk_trainer_run") {
        try withTrainer(trainer, "lk_trainer_run", data: true) { box in
            let s = box.session
            try lk_train_progress.checkOut(last, "last")
            // When no step runs: step and total_steps, NaN/0 elsewhere.
            var lastProgress = lk_train_progress(struct_size: 0, step: Int64(s.step), total_steps: Int64(s.totalSteps),
                                                 loss: .nan, lr: .nan, grad_norm: .nan, tokens_per_s: 0, tokens: 0,
                                                 predicted: 0, epoch: 0, elapsed_s: 0, valid_loss: .nan)
            let summary = try s.run { pr in
                lastProgress = lk_train_progress(pr)
                var cp = lastProgress
                cp.struct_size = UInt32(lk_train_progress.size)
                return callback.map { cb in withUnsafePointer(to: &cp) { cb($0, userData) } == 0 } ?? true
            }
            lastProgress.write(to: last)
            return summary.stoppedByCallback ? LK_STOPPED : LK_OK
        }
    }
}

@_cdecl("lk_trainer_validation_loss")
public func lk_trainer_validation_loss(_ trainer: OpaquePointer?, _ loss: UnsafeMutablePointer<Double>?) -> Int32 {
    guarded("lk_trainer_validation_loss") {
        let out = try requirePointer(loss, "loss")
        out.pointee = try withTrainer(trainer, "lk_trainer_validation_loss") { box in
            guard box.session.valid != nil else { throw invalid("the trainer has no validation data (valid_path was NULL)") }
            guard let v = try box.session.validationLoss() else { throw invalid("the validation data has no target tokens") }
            return v
        }
        return LK_OK
    }
}

@_cdecl("lk_trainer_save_checkpoint")
public func lk_trainer_save_checkpoint(_ trainer: OpaquePointer?) -> Int32 {
    guarded("lk_trainer_save_checkpoint") {
        try withTrainer(trainer, "lk_trainer_save_checkpoint") { box in
            guard try box.session.saveCheckpoint() != nil else {
                throw invalid("the trainer has no output folder (params->out_dir was NULL)")
            }
            return LK_OK
        }
    }
}

@_cdecl("lk_trainer_adapter")
public func lk_trainer_adapter(_ trainer: OpaquePointer?, _ out: UnsafeMutablePointer<OpaquePointer?>?) -> Int32 {
    guarded("lk_trainer_adapter") {
        let o = try requirePointer(out, "out")
        let (a, m) = try withTrainer(trainer, "lk_trainer_adapter") { box in (try box.session.trainedAdapter(), box.modelBox) }
        switch a {
        case .lora(let l): return giveAdapter(l, m, o)
        case .plugin(let p): return Handles.shared.give(AdapterBox(plugin: p, m), kind: .adapter, to: o)
        }
    }
}

@_cdecl("lk_trainer_steps")
public func lk_trainer_steps(_ trainer: OpaquePointer?, _ stepsDone: UnsafeMutablePointer<Int64>?,
                             _ totalSteps: UnsafeMutablePointer<Int64>?) -> Int32 {
    guarded("lk_trainer_steps") {
        let (done, total) = try withTrainer(trainer, "lk_trainer_steps") { box in (box.session.step, box.session.totalSteps) }
        stepsDone?.pointee = Int64(done)
        totalSteps?.pointee = Int64(total)
        return LK_OK
    }
}

// MARK: - Low-level training

@_cdecl("lk_trainer_zero_grad")
public func lk_trainer_zero_grad(_ trainer: OpaquePointer?) -> Int32 {
    guarded("lk_trainer_zero_grad") {
        try withTrainer(trainer, "lk_trainer_zero_grad", data: false) { try $0.session.zeroGradients() }
        return LK_OK
    }
}

/// One sequence of lk_trainer_forward_backward(_batch) read from its C arguments, named as the header
/// names them (`at` says which sequence of a batch), before anything runs.
private func trainSequence(_ c: LlamaConfig, _ tokens: UnsafePointer<Int32>?, _ isTarget: UnsafePointer<UInt8>?,
                           _ nTokens: Int64, _ prefix: UnsafePointer<Float>?, _ nPrefix: Int64,
                           at: String = "") throws -> TrainSequence {
    let ctxLen = Int64(c.contextLength)
    guard nTokens >= 0 else { throw invalid("n_tokens\(at) \(nTokens) is negative") }
    guard nPrefix >= 0 else { throw invalid("n_prefix\(at) \(nPrefix) is negative") }
    guard nTokens <= ctxLen, nPrefix <= ctxLen, nTokens + nPrefix >= 1, nTokens + nPrefix <= ctxLen else {
        throw invalid("n_prefix\(at) \(nPrefix) + n_tokens\(at) \(nTokens) must be in 1...\(c.contextLength) (the model's context length)")
    }
    let ids = try tokenArray(tokens, nTokens, "tokens", allowEmpty: true)
    let flags = try (0..<ids.count).map { j in try isTarget.map { try flag(Int32($0[j]), "is_target\(at)[\(j)]") } ?? true }
    var pre: [Float] = []
    if nPrefix > 0 {
        pre = Array(UnsafeBufferPointer(start: try requirePointer(prefix, "prefix"), count: Int(nPrefix) * c.dim))
        if let i = pre.firstIndex(where: { !$0.isFinite }) {
            throw invalid("prefix\(at)[\(i / c.dim)][\(i % c.dim)] is not finite (\(pre[i]))")
        }
    }
    return TrainSequence(tokens: ids, isTarget: flags, prefixEmbeddings: pre)
}

/// Runs one forward/backward over `batch` and writes the outputs (input gradients concatenated in batch order).
private func forwardBackward(_ box: TrainerBox, _ batch: [TrainSequence], _ lossScale: Float,
                             _ sumNLL: UnsafeMutablePointer<Double>?, _ predicted: UnsafeMutablePointer<Int64>?,
                             _ inputGrad: UnsafeMutablePointer<Float>?) throws {
    let r = try box.session.forwardBackward(batch, lossScale: lossScale, inputGradients: inputGrad != nil)
    sumNLL?.pointee = r.sumNLL
    predicted?.pointee = Int64(r.predicted)
    if let inputGrad {
        let dim = box.session.model.config.dim
        guard let gs = r.inputGradients, gs.count == batch.count else {
            throw CError(LK_ERR_INTERNAL, "the pass returned no input gradients for its \(batch.count) sequences")
        }
        var at = 0
        for (g, seq) in zip(gs, batch) {
            let count = (seq.prefixEmbeddings.count / dim + seq.tokens.count) * dim
            guard g.count == count else { throw CError(LK_ERR_INTERNAL, "the pass returned \(g.count) input-gradient floats, not \(count)") }
            (inputGrad + at).update(from: g, count: count)
            at += count
        }
    }
}

@_cdecl("lk_trainer_forward_backward")
public func lk_trainer_forward_backward(_ trainer: OpaquePointer?, _ tokens: UnsafePointer<Int32>?,
                                        _ isTarget: UnsafePointer<UInt8>?, _ nTokens: Int64,
                                        _ prefix: UnsafePointer<Float>?, _ nPrefix: Int64, _ lossScale: Float,
                                        _ sumNLL: UnsafeMutablePointer<Double>?, _ predicted: UnsafeMutablePointer<Int64>?,
                                        _ inputGrad: UnsafeMutablePointer<Float>?, _ inputGradCapacity: Int64) -> Int32 {
    guarded("lk_trainer_forward_backward") {
        try withTrainer(trainer, "lk_trainer_forward_backward", data: false) { box in
            let c = box.session.model.config
            let seq = try trainSequence(c, tokens, isTarget, nTokens, prefix, nPrefix)
            guard lossScale.isFinite else { throw invalid("loss_scale \(lossScale) is not finite") }
            let rows = Int(nTokens + nPrefix), gradCount = rows * c.dim
            guard try capacityArg(inputGradCapacity, "input_grad_capacity") >= Int64(gradCount) || inputGrad == nil else {
                throw CError(LK_ERR_BUFFER_TOO_SMALL, "input_grad_capacity \(inputGradCapacity) is smaller than the \(gradCount) floats of (n_prefix + n_tokens) × n_embd (\(rows) × \(c.dim))")
            }
            try forwardBackward(box, [seq], lossScale, sumNLL, predicted, inputGrad)
            return LK_OK
        }
    }
}

@_cdecl("lk_trainer_forward_backward_batch")
public func lk_trainer_forward_backward_batch(_ trainer: OpaquePointer?, _ nSeqs: Int64, _ tokens: UnsafePointer<Int32>?,
                                              _ isTarget: UnsafePointer<UInt8>?, _ nTokens: UnsafePointer<Int64>?,
                                              _ prefix: UnsafePointer<Float>?, _ nPrefix: UnsafePointer<Int64>?,
                                              _ lossScale: Float, _ sumNLL: UnsafeMutablePointer<Double>?,
                                              _ predicted: UnsafeMutablePointer<Int64>?,
                                              _ inputGrad: UnsafeMutablePointer<Float>?, _ inputGradCapacity: Int64) -> Int32 {
    guarded("lk_trainer_forward_backward_batch") {
        try withTrainer(trainer, "lk_trainer_forward_backward_batch", data: false) { box in
            let c = box.session.model.config
            guard nSeqs >= 1, nSeqs <= 65536 else { throw invalid("n_seqs \(nSeqs) must be in 1...65536") }
            let counts = UnsafeBufferPointer(start: try requirePointer(nTokens, "n_tokens"), count: Int(nSeqs))
            let prefixCounts = nPrefix.map { UnsafeBufferPointer(start: $0, count: Int(nSeqs)) }
            var batch: [TrainSequence] = []
            var tokenAt = 0, prefixAt = 0, rows = 0
            for s in 0..<Int(nSeqs) {
                let nt = counts[s], np = prefixCounts?[s] ?? 0
                let seq = try trainSequence(c, tokens.map { $0 + tokenAt }, isTarget.map { $0 + tokenAt }, nt,
                                            prefix.map { $0 + prefixAt * c.dim }, np, at: "[\(s)]")
                tokenAt += Int(nt); prefixAt += Int(np); rows += Int(nt + np)
                batch.append(seq)
            }
            guard lossScale.isFinite else { throw invalid("loss_scale \(lossScale) is not finite") }
            let gradCount = rows * c.dim
            guard try capacityArg(inputGradCapacity, "input_grad_capacity") >= Int64(gradCount) || inputGrad == nil else {
                throw CError(LK_ERR_BUFFER_TOO_SMALL, "input_grad_capacity \(inputGradCapacity) is smaller than the \(gradCount) floats of the batch's \(rows) rows × n_embd \(c.dim)")
            }
            try forwardBackward(box, batch, lossScale, sumNLL, predicted, inputGrad)
            return LK_OK
        }
    }
}

@_cdecl("lk_trainer_optimizer_step")
public func lk_trainer_optimizer_step(_ trainer: OpaquePointer?, _ lr: Double, _ gradNorm: UnsafeMutablePointer<Double>?) -> Int32 {
    guarded("lk_trainer_optimizer_step") {
        let norm = try withTrainer(trainer, "lk_trainer_optimizer_step", data: false) { try $0.session.optimizerStep(lr: lr) }
        gradNorm?.pointee = Double(norm)
        return LK_OK
    }
}
