// C ABI for LoRA training (lorakit.h, "LoRA training"): a trainer handle over a TrainingSession.
//
// Thin shims: validate every pointer, handle, enum value and params field (messages name the C field),
// build TrainingOptions, then call the session inside `guarded`. Struct mirrors follow the rules of
// CABIStructs.swift.
import LoRAKit
import Synchronization
#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

// MARK: - Struct mirrors

/// typedef struct lk_train_params { ... } lk_train_params;  (same fields, same order as lorakit.h)
struct CTrainParams: SizedCStruct {
    var struct_size: UInt32 = UInt32(MemoryLayout<CTrainParams>.stride)
    var rank: Int32 = 8
    var alpha: Float = 16
    var use_rslora: Int32 = 0
    var targets: UnsafePointer<CChar>? = nil
    var layers: UnsafePointer<Int32>? = nil
    var n_layers: Int32 = 0
    var dropout: Float = 0
    var initialization: Int32 = 0   // C field `init`
    var lr: Double = 2e-4
    var weight_decay: Double = 0.01
    var max_grad_norm: Double = 1
    var schedule: Int32 = 0
    var warmup_steps: Int32 = 0
    var steps: Int32 = 0
    var batch: Int32 = 4
    var epochs: Double = 1
    var seq: Int32 = 512
    var grad_accum: Int32 = 1
    var seed: UInt64 = 0
    var threads: Int32 = 0
    var shuffle: Int32 = 1
    var completion_only_loss: Int32 = 1
    var packing: Int32 = 0
    var save_every: Int32 = 0
    var keep: Int32 = 2
    var valid_every: Int32 = 0
    var format: Int32 = 0
    var out_dir: UnsafePointer<CChar>? = nil
    var resume_dir: UnsafePointer<CChar>? = nil
    var init_adapter: UnsafePointer<CChar>? = nil
    var log_path: UnsafePointer<CChar>? = nil
    // Added after the first version (older callers' struct_size ends before them: defaults apply).
    var adam_beta1: Double = 0.9
    var adam_beta2: Double = 0.999
    var adam_epsilon: Double = 1e-8
    var truncate: Int32 = 0

    static let cName = "lk_train_params"
    static var firstVersionSize: Int {
        MemoryLayout<CTrainParams>.offset(of: \.log_path)! + MemoryLayout<UnsafePointer<CChar>?>.size
    }
}

/// typedef struct lk_train_progress { ... } lk_train_progress;
struct CTrainProgress: SizedCStruct {
    var struct_size: UInt32 = UInt32(MemoryLayout<CTrainProgress>.stride)
    var step: Int64 = 0
    var total_steps: Int64 = 0
    var loss: Double = .nan
    var lr: Double = .nan
    var grad_norm: Double = .nan
    var tokens_per_s: Double = 0
    var tokens: Int64 = 0
    var predicted: Int64 = 0
    var epoch: Double = 0
    var elapsed_s: Double = 0
    var valid_loss: Double = .nan

    static let cName = "lk_train_progress"
    static var firstVersionSize: Int { MemoryLayout<CTrainProgress>.offset(of: \.valid_loss)! + 8 }

    init() {}

    init(_ p: TrainProgress) {
        step = Int64(p.step)
        total_steps = Int64(p.totalSteps)
        loss = p.loss
        lr = p.lr
        grad_norm = p.gradNorm
        tokens_per_s = p.tokensPerSecond
        tokens = Int64(p.tokens)
        predicted = Int64(p.predicted)
        epoch = p.epoch
        elapsed_s = p.elapsed
        valid_loss = p.validLoss ?? .nan
    }
}

/// typedef int32_t (*lk_train_callback)(const lk_train_progress *progress, void *user_data);
public typealias CTrainCallback = @convention(c) (UnsafeRawPointer?, UnsafeMutableRawPointer?) -> Int32

let LK_SCHEDULE_CONSTANT: Int32 = 0, LK_SCHEDULE_LINEAR: Int32 = 1, LK_SCHEDULE_COSINE: Int32 = 2
let LK_TRUNCATE_CUT: Int32 = 0, LK_TRUNCATE_ERROR: Int32 = 1

// `size` is C's size_t: unsigned, so SIZE_MAX is clamped like any size above ours (as an Int it was -1,
// "below the first version", and nothing was written).
@_cdecl("lk_train_params_init_sized")
public func lk_train_params_init_sized(_ p: UnsafeMutableRawPointer?, _ size: UInt) {
    guard let p, size >= UInt(CTrainParams.firstVersionSize) else { return }
    var v = CTrainParams()
    let n = Int(min(size, UInt(MemoryLayout<CTrainParams>.stride)))
    v.struct_size = UInt32(n)
    withUnsafeBytes(of: &v) { src in p.copyMemory(from: src.baseAddress!, byteCount: n) }
}

/// The first version's init (programs built before `lk_train_params_init_sized`; the header's
/// `lk_train_params_init` is now a macro for the sized one).
@_cdecl("lk_train_params_init")
public func lk_train_params_init(_ p: UnsafeMutableRawPointer?) {
    lk_train_params_init_sized(p, UInt(CTrainParams.firstVersionSize))
}

@_cdecl("lk_sizeof_train_params")
public func lk_sizeof_train_params() -> Int64 { Int64(MemoryLayout<CTrainParams>.stride) }

@_cdecl("lk_sizeof_train_progress")
public func lk_sizeof_train_progress() -> Int64 { Int64(MemoryLayout<CTrainProgress>.stride) }

// MARK: - Handle object

/// What an lk_trainer handle refers to: a TrainingSession (created with training data) or a
/// ManualTraining (train_path NULL: driven by lk_trainer_forward_backward / lk_trainer_optimizer_step).
/// Holds its ModelBox (and so the model) strongly: freeing the model handle first is legal. `busy` turns
/// concurrent or re-entrant use (which the header forbids) into an error instead of a data race.
final class TrainerBox: @unchecked Sendable {
    enum Core {
        case session(TrainingSession)
        case manual(ManualTraining)
    }
    let core: Core
    let modelBox: ModelBox
    let busy = Atomic<Bool>(false)

    init(_ core: Core, _ m: ModelBox) {
        self.core = core
        modelBox = m
    }

    var options: TrainingOptions {
        switch core { case .session(let s): s.options; case .manual(let t): t.options }
    }
    var hasValidation: Bool {
        switch core { case .session(let s): s.valid != nil; case .manual(let t): t.valid != nil }
    }
    var stepsDone: Int {
        switch core { case .session(let s): s.step; case .manual(let t): t.step }
    }
    /// The session's total; a manual trainer's params->steps (0 when not given).
    var totalSteps: Int {
        switch core { case .session(let s): s.totalSteps; case .manual(let t): t.options.steps ?? 0 }
    }
    func validationLoss() throws -> Double? {
        switch core { case .session(let s): try s.validationLoss(); case .manual(let t): try t.validationLoss() }
    }
    func saveCheckpoint() throws {
        switch core { case .session(let s): try s.saveCheckpoint(); case .manual(let t): try t.saveCheckpoint() }
    }
    func adapter() throws -> LoRAAdapter {
        switch core { case .session(let s): try s.adapter(); case .manual(let t): try t.adapter() }
    }

    /// The session, or an error for a trainer without training data.
    func requireSession(_ function: String) throws -> TrainingSession {
        guard case .session(let s) = core else {
            throw invalid("the trainer has no training data (train_path was NULL): drive it with lk_trainer_zero_grad, lk_trainer_forward_backward and lk_trainer_optimizer_step, not \(function)")
        }
        return s
    }

    /// The manual trainer, or an error for a trainer with training data.
    func requireManual(_ function: String) throws -> ManualTraining {
        guard case .manual(let t) = core else {
            throw invalid("\(function) is for trainers created without training data (train_path NULL); this trainer reads its data: use lk_trainer_step or lk_trainer_run")
        }
        return t
    }
}

/// Run `body` with exclusive use of the trainer behind `h`.
func withTrainer<R>(_ h: OpaquePointer?, _ name: String = "trainer", _ body: (TrainerBox) throws -> R) throws -> R {
    let box = try Handles.shared.lookup(h, kind: .trainer, as: TrainerBox.self, what: name)
    guard box.busy.compareExchange(expected: false, desired: true, ordering: .acquiring).exchanged else {
        throw invalid("\(name) is in use by another call (a trainer serves one thread at a time, and lk_trainer_run's callback must not use it)")
    }
    defer { box.busy.store(false, ordering: .releasing) }
    return try body(box)
}

// MARK: - Params

/// An optional, non-empty C string field.
func optionalPath(_ p: UnsafePointer<CChar>?, _ name: String) throws -> String? {
    guard let p else { return nil }
    let s = try cStringArg(p, name)
    guard !s.isEmpty else { throw invalid("\(name) is empty (use NULL for none)") }
    return s
}

func flagArg(_ v: Int32, _ name: String) throws -> Bool {
    guard v == 0 || v == 1 else { throw invalid("\(name) \(v) must be 0 or 1") }
    return v == 1
}

/// lk_train_params → TrainingOptions, every field checked with a message naming it.
func trainingOptions(_ params: UnsafeRawPointer?, model: LlamaModel) throws -> TrainingOptions {
    let p = try CTrainParams.read(params, defaults: CTrainParams(), "params")
    var o = TrainingOptions()
    // Adapter.
    guard p.rank >= 1, p.rank <= 4096 else { throw invalid("params->rank \(p.rank) must be in 1...4096") }
    guard p.alpha.isFinite, p.alpha > 0 else { throw invalid("params->alpha \(p.alpha) must be finite and > 0") }
    let rs = try flagArg(p.use_rslora, "params->use_rslora")
    let targetText = try p.targets.map { try cStringArg($0, "params->targets") } ?? "q,v"
    let targets: Set<LinearModule>
    do throws(LKError) { targets = try LoRAConfig.parseTargets(targetText) } catch {
        throw invalid("params->targets \"\(targetText)\": \(error.message)")
    }
    guard p.n_layers >= 0, p.n_layers <= 4096 else { throw invalid("params->n_layers \(p.n_layers) must be in 0...4096 (0 = all layers)") }
    var layers: [Int]? = nil
    if p.n_layers > 0 {
        guard let lp = p.layers else { throw invalid("params->layers is NULL but params->n_layers is \(p.n_layers)") }
        var ls: [Int] = []
        let nl = model.config.nLayers
        for i in 0..<Int(p.n_layers) {
            let l = lp[i]
            guard l >= 0, Int(l) < nl else {
                throw invalid("params->layers[\(i)] = \(l) is not a layer of the model (0...\(nl - 1))")
            }
            guard !ls.contains(Int(l)) else { throw invalid("params->layers[\(i)] = \(l) is listed twice") }
            ls.append(Int(l))
        }
        layers = ls
    }
    guard p.dropout.isFinite, p.dropout >= 0, p.dropout < 1 else { throw invalid("params->dropout \(p.dropout) must be in [0, 1)") }
    switch p.initialization {
    case LK_LORA_INIT_PEFT: o.initialization = .peft
    case LK_LORA_INIT_GAUSSIAN: o.initialization = .gaussian
    case LK_LORA_INIT_RANDOM: o.initialization = .random(seed: p.seed)
    default:
        throw invalid("params->init \(p.initialization) must be LK_LORA_INIT_PEFT (0), LK_LORA_INIT_GAUSSIAN (1) or LK_LORA_INIT_RANDOM (2)")
    }
    o.lora = LoRAConfig(rank: Int(p.rank), alpha: p.alpha, useRSLoRA: rs, targets: targets, layers: layers,
                        dropout: p.dropout)
    // Optimizer and schedule.
    guard p.lr.isFinite, p.lr > 0, p.lr <= 10 else { throw invalid("params->lr \(p.lr) must be a finite number in (0, 10]") }
    guard p.weight_decay.isFinite, p.weight_decay >= 0 else {
        throw invalid("params->weight_decay \(p.weight_decay) must be a finite number ≥ 0")
    }
    guard p.max_grad_norm.isFinite, p.max_grad_norm >= 0 else {
        throw invalid("params->max_grad_norm \(p.max_grad_norm) must be a finite number ≥ 0 (0 = no clipping)")
    }
    guard p.adam_beta1.isFinite, p.adam_beta1 >= 0, p.adam_beta1 < 1 else {
        throw invalid("params->adam_beta1 \(p.adam_beta1) must be in [0, 1)")
    }
    guard p.adam_beta2.isFinite, p.adam_beta2 >= 0, p.adam_beta2 < 1 else {
        throw invalid("params->adam_beta2 \(p.adam_beta2) must be in [0, 1)")
    }
    guard p.adam_epsilon.isFinite, p.adam_epsilon > 0 else {
        throw invalid("params->adam_epsilon \(p.adam_epsilon) must be a finite number > 0")
    }
    o.optimizer = OptimizerConfig(lr: p.lr, beta1: p.adam_beta1, beta2: p.adam_beta2, eps: p.adam_epsilon,
                                  weightDecay: p.weight_decay,
                                  maxGradNorm: p.max_grad_norm == 0 ? nil : p.max_grad_norm)
    switch p.schedule {
    case LK_SCHEDULE_CONSTANT: o.schedule = .constant
    case LK_SCHEDULE_LINEAR: o.schedule = .linear
    case LK_SCHEDULE_COSINE: o.schedule = .cosine
    default:
        throw invalid("params->schedule \(p.schedule) must be LK_SCHEDULE_CONSTANT (0), LK_SCHEDULE_LINEAR (1) or LK_SCHEDULE_COSINE (2)")
    }
    guard p.warmup_steps >= 0 else { throw invalid("params->warmup_steps \(p.warmup_steps) must be ≥ 0") }
    o.warmupSteps = Int(p.warmup_steps)
    // Length and batches.
    guard p.steps >= 0, p.steps <= 100_000_000 else { throw invalid("params->steps \(p.steps) must be in 0...100000000 (0 = from epochs)") }
    if p.steps > 0 {
        o.steps = Int(p.steps)
    } else {
        guard p.epochs.isFinite, p.epochs > 0, p.epochs <= 1_000_000 else {
            throw invalid("params->epochs \(p.epochs) must be a finite number in (0, 1e6] (used because params->steps is 0)")
        }
        o.epochs = p.epochs
    }
    guard p.batch >= 1, p.batch <= 65536 else { throw invalid("params->batch \(p.batch) must be in 1...65536") }
    o.batchSize = Int(p.batch)
    guard p.seq >= 2, p.seq <= 1 << 20 else { throw invalid("params->seq \(p.seq) must be in 2...\(1 << 20)") }
    guard p.grad_accum >= 1, p.grad_accum <= 65536 else { throw invalid("params->grad_accum \(p.grad_accum) must be in 1...65536") }
    o.gradAccum = Int(p.grad_accum)
    o.seed = p.seed
    guard p.threads >= 0, p.threads <= 512 else { throw invalid("params->threads \(p.threads) must be in 0...512 (0 = lk_cpu_count())") }
    o.threads = p.threads == 0 ? nil : Int(p.threads)
    o.shuffle = try flagArg(p.shuffle, "params->shuffle")
    let truncation: TrainTruncation
    switch p.truncate {
    case LK_TRUNCATE_CUT: truncation = .keepFirst
    case LK_TRUNCATE_ERROR: truncation = .error
    default: throw invalid("params->truncate \(p.truncate) must be LK_TRUNCATE_CUT (0) or LK_TRUNCATE_ERROR (1)")
    }
    o.data = TrainDataOptions(seq: Int(p.seq), completionOnlyLoss: try flagArg(p.completion_only_loss, "params->completion_only_loss"),
                              truncation: truncation, packing: try flagArg(p.packing, "params->packing"))
    // Output.
    guard p.save_every >= 0 else { throw invalid("params->save_every \(p.save_every) must be ≥ 0 (0 = only at the end)") }
    o.saveEvery = Int(p.save_every)
    guard p.keep >= 1 else { throw invalid("params->keep \(p.keep) must be ≥ 1") }
    o.keep = Int(p.keep)
    guard p.valid_every >= 0 else { throw invalid("params->valid_every \(p.valid_every) must be ≥ 0 (0 = at the last step)") }
    o.validEvery = Int(p.valid_every)
    switch p.format {
    case LK_ADAPTER_PEFT: o.format = .peft
    case LK_ADAPTER_GGUF: o.format = .gguf
    default: throw invalid("params->format \(p.format) must be LK_ADAPTER_PEFT (0) or LK_ADAPTER_GGUF (1)")
    }
    o.outDir = try optionalPath(p.out_dir, "params->out_dir")
    o.resume = try optionalPath(p.resume_dir, "params->resume_dir")
    o.initAdapter = try optionalPath(p.init_adapter, "params->init_adapter")
    o.logPath = try optionalPath(p.log_path, "params->log_path")
    try o.validate()
    return o
}

// MARK: - Create, free

@_cdecl("lk_trainer_create")
public func lk_trainer_create(_ model: OpaquePointer?, _ trainPath: UnsafePointer<CChar>?, _ validPath: UnsafePointer<CChar>?,
                              _ params: UnsafeRawPointer?, _ out: UnsafeMutablePointer<OpaquePointer?>?) -> Int32 {
    guarded("lk_trainer_create") {
        let o = try requirePointer(out, "out")
        let box = try modelArg(model)
        let train = try optionalPath(trainPath, "train_path")
        let valid = try optionalPath(validPath, "valid_path")
        let options = try trainingOptions(params, model: box.model)
        let tb: TrainerBox
        if let train {
            tb = TrainerBox(.session(try TrainingSession(model: box.model, trainPath: train, validPath: valid, options: options)), box)
        } else {
            tb = TrainerBox(.manual(try ManualTraining(model: box.model, validPath: valid, options: options)), box)
        }
        o.pointee = Handles.shared.register(tb, kind: .trainer)
        return LKStatus.ok
    }
}

@_cdecl("lk_trainer_free")
public func lk_trainer_free(_ trainer: OpaquePointer?) -> Int32 {
    guarded("lk_trainer_free") {
        guard let trainer else { return LKStatus.ok }
        // A call running on this trainer (e.g. lk_trainer_run whose callback frees it) keeps its own
        // reference; the trainer is released when that call returns.
        try Handles.shared.remove(trainer, kind: .trainer, what: "trainer")
        return LKStatus.ok
    }
}

// MARK: - Training

@_cdecl("lk_trainer_step")
public func lk_trainer_step(_ trainer: OpaquePointer?, _ progress: UnsafeMutableRawPointer?) -> Int32 {
    guarded("lk_trainer_step") {
        try withTrainer(trainer) { box in
            let s = try box.requireSession("lk_trainer_step")
            if let progress { try CTrainProgress.checkOut(progress, "progress") }
            guard s.step < s.totalSteps else {
                throw invalid("all \(s.totalSteps) steps are done (raise params->steps for more)")
            }
            let pr = try s.runStep()
            if let progress { CTrainProgress(pr).write(to: progress) }
        }
        return LKStatus.ok
    }
}

@_cdecl("lk_trainer_run")
public func lk_trainer_run(_ trainer: OpaquePointer?, _ callback: CTrainCallback?, _ userData: UnsafeMutableRawPointer?,
                           _ last: UnsafeMutableRawPointer?) -> Int32 {
    guarded("lk_trainer_run") {
        try withTrainer(trainer) { box in
            let s = try box.requireSession("lk_trainer_run")
            if let last { try CTrainProgress.checkOut(last, "last") }
            var lastProgress: CTrainProgress? = nil
            let summary = try s.run { pr in
                var cp = CTrainProgress(pr)
                lastProgress = cp
                guard let callback else { return true }
                return withUnsafePointer(to: &cp) { callback(UnsafeRawPointer($0), userData) } == 0
            }
            if let last {
                var p = lastProgress ?? CTrainProgress()
                if lastProgress == nil {
                    p.step = Int64(s.step)
                    p.total_steps = Int64(s.totalSteps)
                }
                p.write(to: last)
            }
            return summary.stoppedByCallback ? LKStatus.stopped : LKStatus.ok
        }
    }
}

@_cdecl("lk_trainer_validation_loss")
public func lk_trainer_validation_loss(_ trainer: OpaquePointer?, _ loss: UnsafeMutablePointer<Double>?) -> Int32 {
    guarded("lk_trainer_validation_loss") {
        let out = try requirePointer(loss, "loss")
        let v = try withTrainer(trainer) { box in
            guard box.hasValidation else {
                throw invalid("the trainer has no validation data (valid_path was NULL)")
            }
            guard let v = try box.validationLoss() else {
                throw invalid("the validation data has no target tokens")
            }
            return v
        }
        out.pointee = v
        return LKStatus.ok
    }
}

@_cdecl("lk_trainer_save_checkpoint")
public func lk_trainer_save_checkpoint(_ trainer: OpaquePointer?) -> Int32 {
    guarded("lk_trainer_save_checkpoint") {
        try withTrainer(trainer) { box in
            guard box.options.outDir != nil else {
                throw invalid("the trainer has no output folder (params->out_dir was NULL)")
            }
            try box.saveCheckpoint()
        }
        return LKStatus.ok
    }
}

@_cdecl("lk_trainer_adapter")
public func lk_trainer_adapter(_ trainer: OpaquePointer?, _ out: UnsafeMutablePointer<OpaquePointer?>?) -> Int32 {
    guarded("lk_trainer_adapter") {
        let o = try requirePointer(out, "out")
        let (a, m) = try withTrainer(trainer) { box in (try box.adapter(), box.modelBox) }
        return returnAdapter(a, m, o)
    }
}

@_cdecl("lk_trainer_steps")
public func lk_trainer_steps(_ trainer: OpaquePointer?, _ stepsDone: UnsafeMutablePointer<Int64>?,
                             _ totalSteps: UnsafeMutablePointer<Int64>?) -> Int32 {
    guarded("lk_trainer_steps") {
        let (done, total) = try withTrainer(trainer) { box in (box.stepsDone, box.totalSteps) }
        stepsDone?.pointee = Int64(done)
        totalSteps?.pointee = Int64(total)
        return LKStatus.ok
    }
}

// MARK: - Low-level training

@_cdecl("lk_trainer_zero_grad")
public func lk_trainer_zero_grad(_ trainer: OpaquePointer?) -> Int32 {
    guarded("lk_trainer_zero_grad") {
        try withTrainer(trainer) { box in try box.requireManual("lk_trainer_zero_grad").zeroGradients() }
        return LKStatus.ok
    }
}

@_cdecl("lk_trainer_forward_backward")
public func lk_trainer_forward_backward(_ trainer: OpaquePointer?, _ tokens: UnsafePointer<Int32>?,
                                        _ isTarget: UnsafePointer<UInt8>?, _ nTokens: Int64,
                                        _ prefix: UnsafePointer<Float>?, _ nPrefix: Int64, _ lossScale: Float,
                                        _ sumNLL: UnsafeMutablePointer<Double>?, _ predicted: UnsafeMutablePointer<Int64>?,
                                        _ inputGrad: UnsafeMutablePointer<Float>?, _ inputGradCapacity: Int64) -> Int32 {
    guarded("lk_trainer_forward_backward") {
        try withTrainer(trainer) { box in
            let t = try box.requireManual("lk_trainer_forward_backward")
            let c = t.model.config
            guard nTokens >= 0 else { throw invalid("n_tokens \(nTokens) is negative") }
            guard nPrefix >= 0 else { throw invalid("n_prefix \(nPrefix) is negative") }
            let ctxLen = Int64(c.contextLength)
            guard nTokens <= ctxLen, nPrefix <= ctxLen, nTokens + nPrefix >= 1, nTokens + nPrefix <= ctxLen else {
                throw invalid("n_prefix \(nPrefix) + n_tokens \(nTokens) must be in 1...\(c.contextLength) (the model's context length)")
            }
            guard lossScale.isFinite else { throw invalid("loss_scale \(lossScale) is not finite") }
            let rows = Int(nTokens + nPrefix)
            let gradCount = rows * c.dim
            guard inputGradCapacity >= 0 else { throw invalid("input_grad_capacity \(inputGradCapacity) is negative") }
            if let _ = inputGrad {
                guard inputGradCapacity >= Int64(gradCount) else {
                    throw CError(status: LKStatus.bufferTooSmall, message: "input_grad_capacity \(inputGradCapacity) is smaller than the \(gradCount) floats of (n_prefix + n_tokens) × n_embd (\(rows) × \(c.dim))")
                }
            }
            let ids = try tokenArray(tokens, nTokens, "tokens", allowEmpty: true)
            var flags = [Bool](repeating: true, count: ids.count)
            if let isTarget {
                for j in 0..<ids.count {
                    let v = isTarget[j]
                    guard v <= 1 else { throw invalid("is_target[\(j)] is \(v), must be 0 or 1") }
                    flags[j] = v == 1
                }
            }
            var pre: [Float] = []
            if nPrefix > 0 {
                guard let prefix else { throw invalid("prefix is NULL but n_prefix is \(nPrefix)") }
                pre = Array(UnsafeBufferPointer(start: prefix, count: Int(nPrefix) * c.dim))
                for (i, v) in pre.enumerated() where !v.isFinite {
                    throw invalid("prefix[\(i / c.dim)][\(i % c.dim)] is not finite (\(v))")
                }
            }
            let r = try t.forwardBackward(TrainSequence(tokens: ids, isTarget: flags, prefixEmbeddings: pre),
                                          lossScale: lossScale, inputGradients: inputGrad != nil)
            sumNLL?.pointee = r.sumNLL
            predicted?.pointee = Int64(r.predicted)
            if let inputGrad {
                guard let g = r.inputGradients?.first, g.count == gradCount else {
                    throw CError(status: LKStatus.internal, message: "the pass returned no input gradient of \(gradCount) floats")
                }
                g.withUnsafeBufferPointer { inputGrad.update(from: $0.baseAddress!, count: gradCount) }
            }
        }
        return LKStatus.ok
    }
}

@_cdecl("lk_trainer_optimizer_step")
public func lk_trainer_optimizer_step(_ trainer: OpaquePointer?, _ lr: Double, _ gradNorm: UnsafeMutablePointer<Double>?) -> Int32 {
    guarded("lk_trainer_optimizer_step") {
        let norm = try withTrainer(trainer) { box in
            let t = try box.requireManual("lk_trainer_optimizer_step")
            guard lr.isFinite, lr >= 0 else { throw invalid("lr \(lr) must be a finite number ≥ 0") }
            return try t.optimizerStep(lr: lr)
        }
        gradNorm?.pointee = Double(norm)
        return LKStatus.ok
    }
}
