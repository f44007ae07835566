import LoRAKitCore
import LoRAKitKernels
import LoRAKitFormats
import LoRAKitTokenizer
import LoRAKitTemplates
import LoRAKitModel

/// The trainable wrapper of a `LoRAModule`: the module's A and B as `TrainableTensor`s (values shared with
/// the module, gradients here; the optimizer keeps its state by their names), the forward of the module
/// itself, and the backward.
///
/// Shape legend: N = rows (tokens of the whole batch), IN = input features, OUT = output features,
/// r = rank. For a frozen W [OUT, IN]: y = x·Wᵀ + t·Bᵀ with t = c · x̃·Aᵀ [N, r], c = s (the module's
/// scaling), x̃ = dropout(x). Backward, with u = dy·B [N, r]:
///   dB += dyᵀ·t,   dA += c · uᵀ·x̃,   dx += c · (u·A) ⊙ mask/(1 − p).
#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// One named trainable tensor: values and gradient, both contiguous f32 of `count` elements.
/// The optimizer updates `values` from `grad`; the trainer accumulates into `grad`.
public final class TrainableTensor: @unchecked Sendable {
    /// PEFT-style name (`base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight`).
    public let name: String
    public let shape: [Int]
    public let count: Int
    private let valueStorage: Storage
    private let gradStorage: Storage
    public var values: UnsafeMutablePointer<Float> { valueStorage.base.assumingMemoryBound(to: Float.self) }
    public var grad: UnsafeMutablePointer<Float> { gradStorage.base.assumingMemoryBound(to: Float.self) }

    /// Values copied from `initial` into storage owned here.
    public convenience init(name: String, shape: [Int], initial: UnsafePointer<Float>) throws(LKError) {
        let t = try Tensor(zeros: shape, dtype: .f32)
        t.f32.update(from: initial, count: t.count)
        try self.init(name: name, sharing: t)
    }

    /// Values shared with `tensor` (contiguous f32 at offset 0 of its storage): writes to `values` change it.
    init(name: String, sharing tensor: Tensor) throws(LKError) {
        guard tensor.dtype == .f32, tensor.isContiguous, tensor.offset == 0 else {
            throw .internal("trainable tensor \(name): values must be a contiguous f32 tensor at offset 0")
        }
        self.name = name
        shape = tensor.shape
        count = tensor.count
        valueStorage = tensor.storage
        gradStorage = try Storage(lazyZeroedBytes: max(count, 1) * 4)
    }

    public func zeroGrad() { grad.update(repeating: 0, count: count) }

    /// The values and the gradient as f32 tensors sharing this storage (writes go through), for the
    /// optimizer.
    public func tensors() throws(LKError) -> (value: Tensor, grad: Tensor) {
        (try Tensor(storage: valueStorage, offset: 0, shape: shape, dtype: .f32),
         try Tensor(storage: gradStorage, offset: 0, shape: shape, dtype: .f32))
    }

    /// A copy of the values.
    public var array: [Float] { Array(UnsafeBufferPointer(start: values, count: count)) }
    /// A copy of the gradient.
    public var gradArray: [Float] { Array(UnsafeBufferPointer(start: grad, count: count)) }
}

/// The LoRA term of one (layer, module) during training: a private copy of a `LoRAModule` whose A and B
/// the optimizer writes. B's rows are in the model's row order (GGUF-interleaved for q/k of GGUF models),
/// like the module it was made from.
public final class TrainableLoRAModule: LinearAdapter, @unchecked Sendable {
    /// The module being trained (its A and B are `a.values` and `b.values`).
    let lora: LoRAModule
    /// A [r, IN].
    public let a: TrainableTensor
    /// B [OUT, r].
    public let b: TrainableTensor

    public var layer: Int { lora.layer }
    public var module: LinearModule { lora.module }
    public var rank: Int { lora.rank }
    public var inFeatures: Int { lora.inFeatures }
    public var outFeatures: Int { lora.outFeatures }
    public var alpha: Float { lora.alpha }
    /// s (alpha/r or alpha/√r).
    public var scaling: Float { lora.scaling }

    init(from m: LoRAModule, namePrefix: String) throws(LKError) {
        lora = try m.copy()
        a = try TrainableTensor(name: namePrefix + ".lora_A.weight", sharing: lora.a)
        b = try TrainableTensor(name: namePrefix + ".lora_B.weight", sharing: lora.b)
    }

    /// An immutable `LoRAModule` with the current values.
    func snapshot() throws(LKError) -> LoRAModule { try lora.copy() }

    /// Rebuild what a forward over `rows` rows derives from A and B (the Bᵀ panels, unless that forward
    /// takes the GEMM); run after they change (optimizer step, load), before the next forward.
    func prepare(rows: Int) { if !lora.usesGEMM(rows: rows) { lora.prepare() } }

    public func workspaceFloats(rows: Int) -> Int { lora.workspaceFloats(rows: rows) }

    /// `LoRAModule.forward`: y[N, OUT] += t·Bᵀ with t = scale · c · x̃·Aᵀ left in `workspace` ([N, r], kept
    /// for the backward, which assumes scale 1).
    /// - x: [N, IN] the layer input, already dropped out by the caller when dropout is on.
    public func forward(x: UnsafePointer<Float>, rows: Int, y: UnsafeMutablePointer<Float>, scale: Float,
                        workspace: UnsafeMutablePointer<Float>, pool: ThreadPool) throws(LKError) {
        try lora.forward(x: x, rows: rows, y: y, scale: scale, workspace: workspace, pool: pool)
    }

    /// Backward: accumulates dA and dB (when `parameters`), and (if `dx` is given) dx̃[N, IN] (+)= c · u·A.
    /// - x: [N, IN] the (dropped-out) input used in the forward; t: [N, r], the forward's workspace;
    ///   dy: [N, OUT]; u: workspace [N, r]; dx: [N, IN] or nil; dxBeta: 0 overwrites dx, 1 adds.
    func backward(x: UnsafePointer<Float>, t: UnsafePointer<Float>, dy: UnsafePointer<Float>, rows n: Int,
                  u: UnsafeMutablePointer<Float>, dx: UnsafeMutablePointer<Float>?, dxBeta: Float,
                  parameters: Bool = true, pool: ThreadPool) throws(LKError) {
        if !parameters && dx == nil { return }
        let r = rank, nIn = inFeatures, nOut = outFeatures, c = scaling
        // u = dy·B
        try GEMM.multiply(m: n, n: r, k: nOut, a: GEMMLeft(dy, rowStride: nOut),
                          b: .f32(UnsafePointer(b.values), ld: r), c: u, ldc: r, pool: pool)
        if parameters {
            // dB += dyᵀ·t (t carries c)
            try GEMM.multiply(m: nOut, n: r, k: n, a: .transposed(dy, ld: nOut), b: .f32(t, ld: r),
                              beta: 1, c: b.grad, ldc: r, pool: pool)
            // dA += c · uᵀ·x̃
            try GEMM.multiply(m: r, n: nIn, k: n, alpha: c, a: .transposed(UnsafePointer(u), ld: r),
                              b: .f32(x, ld: nIn), beta: 1, c: a.grad, ldc: nIn, pool: pool)
        }
        if let dx {
            try GEMM.multiply(m: n, n: nIn, k: r, alpha: c, a: GEMMLeft(UnsafePointer(u), rowStride: r),
                              b: .f32(UnsafePointer(a.values), ld: nIn), beta: dxBeta, c: dx, ldc: nIn, pool: pool)
        }
    }
}

// MARK: - Dropout

/// Inverted dropout with a counter-based mask: element i of a stream keyed by `key` is kept when
/// hash(key, i) ≥ p·2⁶⁴, and scaled by 1/(1 − p). The mask is a pure function of (key, i), so the forward
/// and the backward regenerate it without storing it, and it does not depend on the thread count.
enum LoRADropout {
    @inline(__always) static func mix(_ z0: UInt64) -> UInt64 {
        var z = z0 &+ 0x9E37_79B9_7F4A_7C15
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }

    /// The stream key of (seed, step, micro-batch, layer, module).
    static func key(seed: UInt64, step: Int, micro: Int, layer: Int, module: LinearModule) -> UInt64 {
        var k = mix(seed)
        k = mix(k ^ UInt64(truncatingIfNeeded: step))
        k = mix(k ^ UInt64(truncatingIfNeeded: micro))
        k = mix(k ^ UInt64(truncatingIfNeeded: layer * 16 + module.rawValue))
        return k
    }

    /// out[i] = x[i] · mask(i) / (1 − p) for i < count. out may alias x.
    static func apply(_ x: UnsafePointer<Float>, out: UnsafeMutablePointer<Float>, count: Int, p: Float,
                      key: UInt64, pool: ThreadPool) {
        let threshold = UInt64(Double(p) * 18446744073709551616.0)
        let keep = 1 / (1 - p)
        Ops.parallelFlat(count, pool) { range in
            for i in range {
                out[i] = mix(key ^ mix(UInt64(i))) >= threshold ? x[i] * keep : 0
            }
        }
    }
}
