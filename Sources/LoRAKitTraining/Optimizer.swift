import LoRAKitCore
import LoRAKitKernels
import LoRAKitFormats
import LoRAKitTokenizer
import LoRAKitTemplates
import LoRAKitModel

/// The optimizer side of training: AdamW with PyTorch's semantics, gradient clipping by global norm
/// (`torch.nn.utils.clip_grad_norm_`), the learning-rate schedules of transformers, and saving/restoring
/// the optimizer state as safetensors.
///
/// Parity: the update is written with PyTorch's own float32 operation order (its single-tensor CPU path,
/// the default for CPU tensors), so parameters match `torch.optim.AdamW` to ~1 ulp per step; the one
/// known difference is `sqrt`, which PyTorch's vectorized CPU kernels compute about 0.5 % of the time one
/// ulp below the correctly rounded value that we use. The committed fixture
/// (`Tests/LoRAKitTests/Fixtures/train_optim`, from `scripts/gen_optimizer_fixture.py`) pins it.
#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

// MARK: - Parameters

/// One trainable tensor: its values and its gradient, both contiguous f32 of the same shape. The tensors
/// are referenced, not copied: the optimizer updates `value` in place (e.g. a LoRA module's A or B) and
/// reads (and, when clipping, scales) `grad`.
public struct OptimizerParameter: @unchecked Sendable {
    /// Unique among the parameters of one optimizer; used as the key of its saved state.
    public let name: String
    public let value: Tensor
    public let grad: Tensor

    public init(name: String, value: Tensor, grad: Tensor) throws(LKError) {
        guard !name.isEmpty else { throw .invalidArgument("optimizer parameter: empty name") }
        guard value.dtype == .f32, grad.dtype == .f32 else {
            throw .unsupported("optimizer parameter \(name): values are \(value.dtype) and gradients \(grad.dtype); both must be f32")
        }
        guard value.isContiguous, grad.isContiguous else {
            throw .invalidArgument("optimizer parameter \(name): values and gradients must be contiguous tensors")
        }
        guard value.shape == grad.shape else {
            throw .shapeMismatch("optimizer parameter \(name): values have shape \(value.shape) but gradients \(grad.shape)")
        }
        self.name = name
        self.value = value
        self.grad = grad
    }

    /// A parameter owning new tensors: `values` with shape `shape`, and a zero gradient.
    public init(name: String, shape: [Int], values: [Float]) throws(LKError) {
        try self.init(name: name, value: try Tensor(values, shape: shape), grad: try Tensor(zeros: shape))
    }

    public var shape: [Int] { value.shape }
    public var count: Int { value.count }
}

// MARK: - Hyper-parameters

/// AdamW and clipping hyper-parameters. Defaults are `torch.optim.AdamW`'s (lr 1e-3, betas (0.9, 0.999),
/// eps 1e-8, weight decay 0.01) and the Hugging Face Trainer's `max_grad_norm` of 1.
public struct OptimizerConfig: Sendable, Equatable {
    /// Base (peak) learning rate; the schedule scales it per step.
    public var lr: Double = 1e-3
    public var beta1: Double = 0.9
    public var beta2: Double = 0.999
    public var eps: Double = 1e-8
    /// Decoupled weight decay (AdamW): `p ← p · (1 − lr · weightDecay)` before the Adam update.
    public var weightDecay: Double = 0.01
    /// Clip gradients to this global L2 norm before each update; nil or 0 = no clipping.
    public var maxGradNorm: Double? = 1.0

    public init(lr: Double = 1e-3, beta1: Double = 0.9, beta2: Double = 0.999, eps: Double = 1e-8,
                weightDecay: Double = 0.01, maxGradNorm: Double? = 1.0) {
        self.lr = lr
        self.beta1 = beta1
        self.beta2 = beta2
        self.eps = eps
        self.weightDecay = weightDecay
        self.maxGradNorm = maxGradNorm
    }

    /// The clipping norm in effect (nil when clipping is off).
    public var clipNorm: Double? {
        guard let n = maxGradNorm, n != 0 else { return nil }
        return n
    }

    /// Checks every field; the error (`LKError.invalidOption`) names the field as the C struct, Python and
    /// transformers do (`lr`, `adam_beta1`, `adam_beta2`, `adam_epsilon`, `weight_decay`, `max_grad_norm`)
    /// and the accepted range: lr finite in (0, 10]; betas in [0, 1); eps finite > 0; weight decay finite
    /// ≥ 0; max grad norm nil, 0 (off) or finite > 0.
    public func validate() throws(LKError) {
        guard lr.isFinite, lr > 0, lr <= 10 else {
            throw .invalidOption(field: "lr", problem: "\(lr): the learning rate must be a finite number in (0, 10]")
        }
        guard beta1.isFinite, beta1 >= 0, beta1 < 1 else { throw .invalidOption(field: "adam_beta1", problem: "\(beta1) must be in [0, 1)") }
        guard beta2.isFinite, beta2 >= 0, beta2 < 1 else { throw .invalidOption(field: "adam_beta2", problem: "\(beta2) must be in [0, 1)") }
        guard eps.isFinite, eps > 0 else { throw .invalidOption(field: "adam_epsilon", problem: "\(eps) must be a finite number > 0") }
        guard weightDecay.isFinite, weightDecay >= 0 else {
            throw .invalidOption(field: "weight_decay", problem: "\(weightDecay): the weight decay must be a finite number ≥ 0")
        }
        if let n = maxGradNorm {
            guard n.isFinite, n >= 0 else {
                throw .invalidOption(field: "max_grad_norm", problem: "\(n): the max grad norm must be a finite number ≥ 0 (0 = no clipping)")
            }
        }
    }

    /// `{"lr", "beta1", "beta2", "eps", "weight_decay", "max_grad_norm"}` (max_grad_norm null = off).
    public var json: JSONValue {
        .object([("lr", .number(lr)), ("beta1", .number(beta1)), ("beta2", .number(beta2)), ("eps", .number(eps)),
                 ("weight_decay", .number(weightDecay)), ("max_grad_norm", clipNorm.map { .number($0) } ?? .null)])
    }

    /// Reads the object written by `json`; missing keys keep their defaults. Validated.
    public init(json: JSONValue) throws(LKError) {
        guard json.object != nil else { throw .format("optimizer config: expected a JSON object") }
        func num(_ k: String, _ d: Double) throws(LKError) -> Double {
            guard let v = json[k] else { return d }
            guard let x = v.double else { throw .format("optimizer config: \"\(k)\" must be a number") }
            return x
        }
        self.init()
        lr = try num("lr", lr)
        beta1 = try num("beta1", beta1)
        beta2 = try num("beta2", beta2)
        eps = try num("eps", eps)
        weightDecay = try num("weight_decay", weightDecay)
        if let v = json["max_grad_norm"] {
            if v.isNull { maxGradNorm = nil } else {
                guard let x = v.double else { throw .format("optimizer config: \"max_grad_norm\" must be a number or null") }
                maxGradNorm = x
            }
        }
        try validate()
    }
}

// MARK: - Learning-rate schedules

/// The schedule shapes of transformers' `get_constant_schedule_with_warmup`,
/// `get_linear_schedule_with_warmup` and `get_cosine_schedule_with_warmup` (num_cycles 0.5; with a
/// minimum, `get_cosine_with_min_lr_schedule_with_warmup`).
public enum LRScheduleKind: String, Sendable, CaseIterable {
    case constant, linear, cosine

    /// Parses "constant", "linear" or "cosine" (case-insensitive).
    public init(parsing name: String) throws(LKError) {
        guard let k = LRScheduleKind(rawValue: name.lowercased()) else {
            throw .invalidOption(field: "schedule", problem: "\"\(name)\" is not a learning-rate schedule (known: constant, linear, cosine)")
        }
        self = k
    }
}

/// A learning-rate schedule: `lr(s) = base · λ(s)` for the 0-based optimizer step `s`, i.e. the lr used by
/// the (s+1)-th update (as transformers' `LambdaLR` after `s` calls of `scheduler.step()`). With W warm-up
/// steps, T total steps and minimum ratio m (cosine only), in Double exactly as transformers computes it:
/// - s < W: λ = s / max(1, W) (so λ(0) = 0 when W > 0: the first update does nothing but count);
/// - constant: λ = 1;
/// - linear: λ = max(0, (T − s) / max(1, T − W));
/// - cosine: progress = (s − W) / max(1, T − W), c = 0.5 · (1 + cos(π · 0.5 · 2 · progress)),
///   λ = max(0, c · (1 − m) + m): from 1 down to m at s = T (transformers' `cosine_with_min_lr` with
///   `min_lr_rate` m; m = 0 is plain `cosine`). Past T the cosine rises again, as in transformers.
public struct LRSchedule: Sendable, Equatable {
    public let kind: LRScheduleKind
    public let warmupSteps: Int
    public let totalSteps: Int
    /// The cosine schedule's floor as a fraction of the base learning rate (`lr_min_ratio`), in [0, 1].
    public let minRatio: Double

    /// - Throws: `.invalidOption` for negative warm-up steps, a `minRatio` outside [0, 1] or set with a
    ///   schedule other than cosine; `.invalidArgument` for negative total steps, or 0 with a decaying
    ///   schedule.
    public init(kind: LRScheduleKind, warmupSteps: Int = 0, totalSteps: Int, minRatio: Double = 0) throws(LKError) {
        guard warmupSteps >= 0 else { throw .invalidOption(field: "warmup_steps", problem: "\(warmupSteps) must be ≥ 0") }
        guard minRatio.isFinite, minRatio >= 0, minRatio <= 1 else {
            throw .invalidOption(field: "lr_min_ratio", problem: "\(minRatio) must be in [0, 1]")
        }
        guard minRatio == 0 || kind == .cosine else {
            throw .invalidOption(field: "lr_min_ratio", problem: "\(minRatio) is for the cosine schedule, not \(kind.rawValue)")
        }
        guard totalSteps >= 0 else { throw .invalidArgument("total steps \(totalSteps) must be ≥ 0") }
        guard kind == .constant || totalSteps >= 1 else {
            throw .invalidArgument("the \(kind.rawValue) schedule needs the total number of steps (got \(totalSteps))")
        }
        self.kind = kind
        self.warmupSteps = warmupSteps
        self.totalSteps = totalSteps
        self.minRatio = minRatio
    }

    /// λ(s), the factor applied to the base learning rate at 0-based step `s`.
    public func factor(step s: Int) -> Double {
        if s < warmupSteps { return Double(s) / Double(max(1, warmupSteps)) }
        switch kind {
        case .constant:
            return 1
        case .linear:
            return max(0, Double(totalSteps - s) / Double(max(1, totalSteps - warmupSteps)))
        case .cosine:
            let progress = Double(s - warmupSteps) / Double(max(1, totalSteps - warmupSteps))
            let c = 0.5 * (1.0 + cos(Double.pi * 0.5 * 2.0 * progress))
            return max(0, c * (1 - minRatio) + minRatio)
        }
    }

    /// `base · λ(s)`.
    public func lr(base: Double, step s: Int) -> Double { base * factor(step: s) }
}

// MARK: - Work split

/// Element ranges of the parameters cut into fixed-size chunks, so that parallel loops and reductions do
/// not depend on the thread count.
struct ParameterChunks {
    /// (parameter index, element range)
    let chunks: [(param: Int, range: Range<Int>)]
    static let chunkElements = 1 << 15

    init(_ params: [OptimizerParameter]) {
        var c: [(Int, Range<Int>)] = []
        for (i, p) in params.enumerated() {
            var s = 0
            let n = p.count
            while s < n {
                let e = min(n, s + ParameterChunks.chunkElements)
                c.append((i, s..<e))
                s = e
            }
        }
        chunks = c
    }

    /// Run `body(chunkIndex)` for every chunk, spread over the pool when there is enough work.
    func forEach(pool: ThreadPool?, totalElements: Int, _ body: (Int) -> Void) {
        let n = chunks.count
        guard n > 0 else { return }
        guard let pool, n > 1, totalElements >= 1 << 16 else {
            for k in 0..<n { body(k) }
            return
        }
        pool.run(maxTasks: n) { idx, cnt in
            for k in partition(n, index: idx, count: cnt) { body(k) }
        }
    }
}

// MARK: - Gradient clipping

public enum GradientClipping {
    /// The L2 norm of each parameter's gradient (as float32 values), and the total norm
    /// ‖(‖g₁‖, ‖g₂‖, …)‖₂ as `clip_grad_norm_` defines it. Sums of squares are accumulated in Double in a
    /// fixed order (independent of the thread count); PyTorch accumulates in float32, so the two agree to
    /// about one float32 ulp.
    public static func norms(_ params: [OptimizerParameter], pool: ThreadPool? = nil) -> (perTensor: [Float], total: Float) {
        let split = ParameterChunks(params)
        var partial = [Double](repeating: 0, count: split.chunks.count)
        let total = params.reduce(0) { $0 + $1.count }
        partial.withUnsafeMutableBufferPointer { out in
            split.forEach(pool: pool, totalElements: total) { k in
                let (pi, r) = split.chunks[k]
                let g = params[pi].grad.f32
                var s0 = 0.0, s1 = 0.0, s2 = 0.0, s3 = 0.0
                var i = r.lowerBound
                while i + 4 <= r.upperBound {
                    let a = Double(g[i]), b = Double(g[i + 1]), c = Double(g[i + 2]), d = Double(g[i + 3])
                    s0 += a * a; s1 += b * b; s2 += c * c; s3 += d * d
                    i += 4
                }
                while i < r.upperBound { let a = Double(g[i]); s0 += a * a; i += 1 }
                out[k] = (s0 + s1) + (s2 + s3)
            }
        }
        var sums = [Double](repeating: 0, count: params.count)
        for (k, c) in split.chunks.enumerated() { sums[c.param] += partial[k] }
        let per = sums.map { Float($0.squareRoot()) }
        var t = 0.0
        for n in per { t += Double(n) * Double(n) }
        return (per, Float(t.squareRoot()))
    }

    /// `torch.nn.utils.clip_grad_norm_(params, maxNorm)`: computes the total norm, then multiplies every
    /// gradient by `coef = min(1, maxNorm / (total + 1e-6))` (in float32, as PyTorch:
    /// `(1 / (total + 1e-6)) · maxNorm`, clamped to ≤ 1; gradients are multiplied even when coef is 1).
    /// - Returns: the total norm before clipping.
    /// - Throws: `.invalidArgument` when the total norm is NaN or infinite (naming the first parameter whose
    ///   gradient norm is not finite); gradients are left untouched, and training should stop.
    @discardableResult
    public static func clip(_ params: [OptimizerParameter], maxNorm: Double, pool: ThreadPool? = nil) throws(LKError) -> Float {
        guard maxNorm.isFinite, maxNorm > 0 else { throw .invalidArgument("max grad norm \(maxNorm) must be a finite number > 0") }
        let (per, total) = norms(params, pool: pool)
        try checkFinite(total, per, params)
        let denom = total + Float(1e-6)
        let coef = min((1 / denom) * Float(maxNorm), 1)
        let split = ParameterChunks(params)
        split.forEach(pool: pool, totalElements: params.reduce(0) { $0 + $1.count }) { k in
            let (pi, r) = split.chunks[k]
            let g = params[pi].grad.f32
            for i in r { g[i] *= coef }
        }
        return total
    }

    static func checkFinite(_ total: Float, _ per: [Float], _ params: [OptimizerParameter]) throws(LKError) {
        guard !total.isFinite else { return }
        let what = total.isNaN ? "NaN" : "infinite"
        if let i = per.firstIndex(where: { !$0.isFinite }) {
            throw .invalidArgument("gradient norm is \(what): the gradient of \(params[i].name) has norm \(per[i]) (NaN or Inf values); training stopped")
        }
        throw .invalidArgument("gradient norm is \(what) (the gradients are too large to measure); training stopped")
    }
}

// MARK: - AdamW

/// `torch.optim.AdamW` (amsgrad false, maximize false) over a list of parameters. Per update t (1-based),
/// per element, in float32 with the scalars computed in Double and rounded once, as PyTorch does:
///
///     p ← p · Float(1 − lr·wd)                       (skipped when wd = 0)
///     m ← fma(w, g − m, m),  w = Float(1 − β1)       (lerp; when w ≥ 0.5: fma(w − 1, g − m, g))
///     v ← fma(Float(1 − β2)·g, g, v · Float(β2))
///     bc1 = 1 − β1^t,  bc2 = 1 − β2^t,  stepSize = lr / bc1   (Double)
///     d ← √v / Float(bc2^0.5) + Float(eps)
///     p ← p + (Float(−stepSize) · m) / d
///
/// The optimizer owns the moments m and v (zero at the start, like PyTorch's lazily created state).
public final class AdamW: @unchecked Sendable {
    public let parameters: [OptimizerParameter]
    /// Hyper-parameters (the lr here is the base lr; `step(lr:)` takes the scheduled one).
    public let config: OptimizerConfig
    /// Updates done so far (PyTorch's `state["step"]`).
    public private(set) var stepCount: Int = 0
    /// First and second moments, one tensor per parameter, same shapes.
    public let expAvg: [Tensor]
    public let expAvgSq: [Tensor]
    let split: ParameterChunks
    let totalElements: Int

    /// - Throws: `.invalidArgument` for invalid hyper-parameters (see `OptimizerConfig.validate`), duplicate
    ///   or empty parameter names, or no parameters.
    public init(parameters: [OptimizerParameter], config: OptimizerConfig = OptimizerConfig()) throws(LKError) {
        try config.validate()
        guard !parameters.isEmpty else { throw .invalidArgument("AdamW: no parameters to optimize") }
        var seen = Set<String>()
        for p in parameters {
            guard seen.insert(p.name).inserted else { throw .invalidArgument("AdamW: two parameters are named \(p.name)") }
        }
        self.parameters = parameters
        self.config = config
        var m: [Tensor] = [], v: [Tensor] = []
        for p in parameters {
            m.append(try Tensor(zeros: p.shape))
            v.append(try Tensor(zeros: p.shape))
        }
        expAvg = m
        expAvgSq = v
        split = ParameterChunks(parameters)
        totalElements = parameters.reduce(0) { $0 + $1.count }
    }

    /// Number of scalar parameters.
    public var elementCount: Int { totalElements }

    /// Set every gradient to zero.
    public func zeroGrad() {
        for p in parameters where p.count > 0 { p.grad.f32.update(repeating: 0, count: p.count) }
    }

    /// Clip the gradients to `config.maxGradNorm` (when set) and return the total norm before clipping;
    /// without clipping, just the total norm. Throws when the norm is not finite (see `GradientClipping`).
    @discardableResult
    public func clipGradients(pool: ThreadPool? = nil) throws(LKError) -> Float {
        if let n = config.clipNorm { return try GradientClipping.clip(parameters, maxNorm: n, pool: pool) }
        let (per, total) = GradientClipping.norms(parameters, pool: pool)
        try GradientClipping.checkFinite(total, per, parameters)
        return total
    }

    /// One AdamW update of every parameter from its gradient, with learning rate `lr` (the scheduled one;
    /// 0 is allowed, e.g. the first warm-up step: the moments and the step count still advance, as in
    /// PyTorch). Elements are split over `pool` when there are enough; the result does not depend on it.
    /// The update is memory-bound (five float streams): for SmolLM2-135M all-linear r=8 (2.44 M
    /// parameters) it takes ≈ 8–12 ms on one thread, and a pool of 2 measured no reliable gain on a busy
    /// 2-core machine, so passing no pool is the sensible default.
    public func step(lr: Double, pool: ThreadPool? = nil) throws(LKError) {
        guard lr.isFinite, lr >= 0 else { throw .invalidArgument("AdamW step: learning rate \(lr) must be finite and ≥ 0") }
        stepCount += 1
        let t = Double(stepCount)
        let c = config
        // With wd = 0 PyTorch skips the multiplication; multiplying by Float(1 − lr·0) = 1 is exact, so the
        // loop always multiplies.
        let decay = Float(1 - lr * c.weightDecay)
        let w1 = Float(1 - c.beta1)
        // PyTorch's vectorized lerp: fma(coeff, g − m, base) with (coeff, base) = (w, m) when |w| < 0.5,
        // else (w − 1, g).
        let smallWeight = abs(w1) < 0.5
        let coeff = smallWeight ? w1 : w1 - 1
        let b2 = Float(c.beta2)
        let c2 = Float(1 - c.beta2)
        let bc1 = 1 - pow(c.beta1, t)
        let bc2 = 1 - pow(c.beta2, t)
        let negStep = Float(-(lr / bc1))
        let bc2Sqrt = Float(pow(bc2, 0.5))
        let eps = Float(c.eps)
        let params = parameters, ms = expAvg, vs = expAvgSq, split = self.split
        split.forEach(pool: pool, totalElements: totalElements) { k in
            let (pi, r) = split.chunks[k]
            let p = params[pi].value.f32, g = params[pi].grad.f32
            let m = ms[pi].f32, v = vs[pi].f32
            @inline(__always) func update(_ i: Int, _ mv: Float, _ gv: Float) {
                let vv = (v[i] * b2).addingProduct(c2 * gv, gv)
                let d = vv.squareRoot() / bc2Sqrt + eps
                m[i] = mv
                v[i] = vv
                p[i] = p[i] * decay + (negStep * mv) / d
            }
            if smallWeight {
                for i in r { let gv = g[i], mo = m[i]; update(i, mo.addingProduct(coeff, gv - mo), gv) }
            } else {
                for i in r { let gv = g[i], mo = m[i]; update(i, gv.addingProduct(coeff, gv - mo), gv) }
            }
        }
    }
}

// MARK: - State files

/// A saved AdamW state: step count, moments by parameter name, and the hyper-parameters it was saved with.
///
/// File layout (safetensors, F32): `<name>.exp_avg` and `<name>.exp_avg_sq` for every parameter (shape of
/// the parameter); `__metadata__`: `format` = `lorakit-adamw`, `step`, `config` (the `OptimizerConfig`
/// JSON), `params` (a JSON array of the parameter names in optimizer order), plus any extra entries given
/// to `AdamW.saveState`.
public struct AdamWState: @unchecked Sendable {
    public let step: Int
    /// Hyper-parameters at save time (informational: restoring does not change the optimizer's config).
    public let config: OptimizerConfig
    public let names: [String]
    public let expAvg: [String: Tensor]
    public let expAvgSq: [String: Tensor]
    /// All `__metadata__` strings of the file.
    public let metadata: [String: String]
    public let path: String

    /// Read and validate a state file.
    public init(path: String) throws(LKError) {
        let f = try SafetensorsFile(path: path)
        func bad(_ m: String) -> LKError { .format("\(path): optimizer state: \(m)") }
        guard f.metadata["format"] == "lorakit-adamw" else {
            throw bad("__metadata__ format is \(f.metadata["format"].map { "\"\($0)\"" } ?? "missing"), expected \"lorakit-adamw\"")
        }
        guard let s = f.metadata["step"], let st = Int(s), st >= 0 else { throw bad("missing or invalid step") }
        guard let cs = f.metadata["config"] else { throw bad("missing config") }
        let cfg: OptimizerConfig
        do { cfg = try OptimizerConfig(json: try JSON.parse(cs, path: "\(path) (config)")) } catch { throw bad("\(error)") }
        guard let ns = f.metadata["params"], let arr = (try? JSON.parse(ns))?.array else { throw bad("missing params list") }
        var names: [String] = []
        for v in arr {
            guard let n = v.string else { throw bad("params list holds a non-string") }
            names.append(n)
        }
        guard Set(names).count == names.count else { throw bad("params list names a parameter twice") }
        var m: [String: Tensor] = [:], v: [String: Tensor] = [:]
        var expected = Set<String>()
        for n in names {
            for (suffix, isM) in [(".exp_avg", true), (".exp_avg_sq", false)] {
                let key = n + suffix
                expected.insert(key)
                guard let info = f.info(key) else { throw bad("missing tensor \(key)") }
                guard info.fileDType == .F32 else { throw bad("tensor \(key) is \(info.fileDType.rawValue), expected F32") }
                let t = try f.tensor(key)
                let p = t.f32
                for i in 0..<t.count where !p[i].isFinite {
                    throw bad("tensor \(key) holds a non-finite value at element \(i)")
                }
                if !isM {
                    for i in 0..<t.count where p[i] < 0 { throw bad("tensor \(key) holds a negative value at element \(i)") }
                }
                if isM { m[n] = t } else { v[n] = t }
            }
        }
        for n in f.tensorNames where !expected.contains(n) {
            throw bad("unexpected tensor \(n) (not in the params list)")
        }
        step = st
        config = cfg
        self.names = names
        expAvg = m
        expAvgSq = v
        metadata = f.metadata
        self.path = path
    }
}

extension AdamW {
    /// Write step, moments and hyper-parameters to a safetensors file (atomically; see `AdamWState` for the
    /// layout). `extraMetadata` entries are added to `__metadata__` (they may not replace the standard keys).
    public func saveState(to path: String, extraMetadata: [String: String] = [:]) throws(LKError) {
        var w = SafetensorsWriter()
        w.metadata = [
            "format": "lorakit-adamw",
            "step": String(stepCount),
            "config": JSON.serialize(config.json),
            "params": JSON.serialize(.array(parameters.map { .string($0.name) })),
        ]
        for (k, v) in extraMetadata {
            guard w.metadata[k] == nil else { throw .invalidArgument("optimizer state: metadata key \(k) is reserved") }
            w.metadata[k] = v
        }
        for (i, p) in parameters.enumerated() {
            try w.add(p.name + ".exp_avg", expAvg[i])
            try w.add(p.name + ".exp_avg_sq", expAvgSq[i])
        }
        try w.write(to: path)
    }

    /// Continue from a saved state: copies its moments and step count. The state must hold exactly this
    /// optimizer's parameter names with the same shapes (errors name the first difference). The
    /// hyper-parameters stay this optimizer's own.
    public func restore(_ state: AdamWState) throws(LKError) {
        let mine = parameters.map(\.name)
        let missing = mine.filter { state.expAvg[$0] == nil }
        let extra = state.names.filter { n in !mine.contains(n) }
        guard missing.isEmpty, extra.isEmpty else {
            var parts: [String] = []
            if !missing.isEmpty { parts.append("missing \(missing.prefix(5).joined(separator: ", "))\(missing.count > 5 ? ", … (\(missing.count))" : "")") }
            if !extra.isEmpty { parts.append("unknown \(extra.prefix(5).joined(separator: ", "))\(extra.count > 5 ? ", … (\(extra.count))" : "")") }
            throw .shapeMismatch("\(state.path): optimizer state does not match the parameters being trained: \(parts.joined(separator: "; "))")
        }
        for p in parameters {
            let m = state.expAvg[p.name]!, v = state.expAvgSq[p.name]!
            guard m.shape == p.shape, v.shape == p.shape else {
                throw .shapeMismatch("\(state.path): optimizer state of \(p.name) has shape \(m.shape), the parameter has \(p.shape)")
            }
        }
        for (i, p) in parameters.enumerated() where p.count > 0 {
            expAvg[i].f32.update(from: state.expAvg[p.name]!.f32, count: p.count)
            expAvgSq[i].f32.update(from: state.expAvgSq[p.name]!.f32, count: p.count)
        }
        stepCount = state.step
    }
}
