import LoRAKitCore
import LoRAKitKernels

/// The one LoRA value type: the term ΔW = s·B·A of one linear layer (layer, module). Inference attaches,
/// stacks and hot-swaps it (`LinearAdapter`), the file formats read and write it (`LoRATensors`), merge
/// and combine fold it, and training wraps it (`TrainableLoRAModule`: gradients, optimizer state).
///
/// Shape legend: T = rows (tokens), IN = input features, OUT = output features of the base layer,
/// r = rank. For a frozen W [OUT, IN]: A [r, IN], B [OUT, r] (f32, contiguous), s = alpha/r (alpha/√r
/// with rsLoRA). Forward: y[T, OUT] += scale · s · (x·Aᵀ)·Bᵀ, where `scale` is the per-attachment
/// multiplier.
///
/// Written only here: the scale rule (`scaling(rank:alpha:rsLoRA:)`), the checks of rank, alpha and the
/// A/B shapes (`init`, `check(against:for:)`), the q/k row order (`withRowLayout`), the forward and the
/// merge into a weight.
///
/// The values do not change after creation, so one module serves any number of contexts and threads at
/// once. The one exception is the private copy a trainer holds: it writes A and B between passes and
/// calls `prepare()` before the next forward.
public final class LoRAModule: LinearAdapter, @unchecked Sendable {
    public let layer: Int
    public let module: LinearModule
    /// A: [r, IN] f32, contiguous.
    public let a: Tensor
    /// B: [OUT, r] f32, contiguous; for q/k, rows in the order of the adapter or file holding the module.
    public let b: Tensor
    public let rank: Int
    public let alpha: Float
    /// s = alpha/√r instead of alpha/r.
    public let rsLoRA: Bool
    /// s, applied on top of the per-attachment scale.
    public let scaling: Float
    /// Bᵀ in panels for the direct path, derived from B by `prepare()`: the panel of outputs o0 ..< o0 + w
    /// (o0 a multiple of `panelWidth`, w = min(panelWidth, OUT − o0)) starts at o0·r and holds
    /// Bᵀ[j, o0 + i] = B[o0 + i, j] at j·w + i, so one panel update reads one contiguous block. [OUT·r]
    private let bPanels: UnsafeMutablePointer<Float>

    public var inFeatures: Int { a.shape[1] }
    public var outFeatures: Int { b.shape[0] }

    // MARK: The rules

    /// Ranks LoRAKit accepts.
    public static let rankRange = 1...4096

    /// s = alpha/r, or alpha/√r with rsLoRA (PEFT `use_rslora`): the one place the rule is written.
    /// Generic so that the runtime (Float) and the GGUF fold (Double) apply it at their own precision.
    public static func scaling<T: BinaryFloatingPoint>(rank: Int, alpha: T, rsLoRA: Bool) -> T {
        rsLoRA ? alpha / T(rank).squareRoot() : alpha / T(rank)
    }

    /// Throws unless `r` is in `rankRange`; the message starts with `what` (e.g. "LoRA config: rank").
    static func checkRank(_ r: Int, _ what: String) throws(LKError) {
        guard rankRange.contains(r) else {
            throw .invalidArgument("\(what) \(r) must be in \(rankRange.lowerBound)...\(rankRange.upperBound)")
        }
    }

    /// Throws unless `alpha` is finite and > 0; the message starts with `what`.
    static func checkAlpha(_ alpha: Float, _ what: String) throws(LKError) {
        guard alpha.isFinite, alpha > 0 else { throw .invalidArgument("\(what) \(alpha) must be finite and > 0") }
    }

    /// `layer 3 q (self_attn.q_proj)`, for messages.
    public var what: String { "layer \(layer) \(module) (\(module.hfName))" }
    /// Hugging Face module name, `model.layers.N.self_attn.q_proj` (what PEFT patterns match).
    public var hfFullName: String { LoRAConfig.hfModuleName(layer: layer, module: module) }
    /// GGUF base tensor name, `blk.N.attn_q.weight`.
    public var ggufBaseName: String { module.ggufWeightName(layer: layer) }

    // MARK: Creation

    /// - a: [r, IN], b: [OUT, r], any dtype (converted to contiguous f32; f32 contiguous tensors are kept,
    ///   not copied). Checks: 2-D, non-empty, ranks agree and are in `rankRange`, alpha finite and > 0.
    public init(layer: Int, module: LinearModule, a: Tensor, b: Tensor, alpha: Float,
                rsLoRA: Bool = false) throws(LKError) {
        let what = "LoRA layer \(layer) \(module) (\(module.hfName))"
        guard layer >= 0 else { throw .invalidArgument("\(what): negative layer") }
        guard a.rank == 2, b.rank == 2 else {
            throw .shapeMismatch("\(what): A \(a.shape) and B \(b.shape) must be 2-D")
        }
        let r = a.shape[0]
        guard b.shape[1] == r else {
            throw .shapeMismatch("\(what): rank mismatch: A (lora_A) is \(a.shape) (rank \(r)) but B (lora_B) is \(b.shape) (rank \(b.shape[1])), expected [out, \(r)]")
        }
        try LoRAModule.checkRank(r, "\(what): rank")
        guard a.shape[1] >= 1, b.shape[0] >= 1 else { throw .shapeMismatch("\(what): empty A \(a.shape) or B \(b.shape)") }
        try LoRAModule.checkAlpha(alpha, "\(what): alpha")
        self.layer = layer
        self.module = module
        self.a = (a.dtype == .f32 && a.isContiguous) ? a : try a.converted(to: .f32)
        self.b = (b.dtype == .f32 && b.isContiguous) ? b : try b.converted(to: .f32)
        self.rank = r
        self.alpha = alpha
        self.rsLoRA = rsLoRA
        self.scaling = LoRAModule.scaling(rank: r, alpha: alpha, rsLoRA: rsLoRA)
        bPanels = UnsafeMutableRawPointer.allocate(byteCount: b.shape[0] * r * 4, alignment: 64)
            .bindMemory(to: Float.self, capacity: b.shape[0] * r)
        prepare()
    }

    deinit { bPanels.deallocate() }

    /// The same module with other A/B values (same layer, module, alpha and rule).
    public func with(a: Tensor, b: Tensor) throws(LKError) -> LoRAModule {
        try LoRAModule(layer: layer, module: module, a: a, b: b, alpha: alpha, rsLoRA: rsLoRA)
    }

    /// A copy with its own A and B storage.
    public func copy() throws(LKError) -> LoRAModule {
        try with(a: try Tensor(a.toFloats(), shape: a.shape), b: try Tensor(b.toFloats(), shape: b.shape))
    }

    /// Rebuild what the forward derives from the values (the Bᵀ panels). Done at creation; a trainer
    /// calls it after writing A or B. Not to be called while a forward may run on the module.
    package func prepare() {
        let out = outFeatures, r = rank, bp = b.f32
        var o0 = 0
        while o0 < out {
            let w = min(LoRAModule.panelWidth, out - o0)
            for j in 0..<r { for i in 0..<w { bPanels[o0 * r + j * w + i] = bp[(o0 + i) * r + j] } }
            o0 += w
        }
    }

    // MARK: Checks

    /// Checks the module against a model's sizes: layer in range, A = [r, IN], B = [OUT, r]. Errors
    /// name layer, module and tensor (`for what`: the model, in messages).
    public func check(against c: LlamaConfig, for what: String? = nil) throws(LKError) {
        let model = what.map { " for \($0)" } ?? ""
        guard layer < c.nLayers else {
            throw .shapeMismatch("LoRA \(self.what) does not exist (the model has \(c.nLayers) layers)\(model)")
        }
        let (o, i) = module.shape(c)
        guard a.shape == [rank, i] else {
            throw .shapeMismatch("LoRA layer \(layer) \(module) A (\(module.hfName).lora_A) has shape \(a.shape), expected [\(rank), \(i)] ([rank, in_features])\(model)")
        }
        guard b.shape == [o, rank] else {
            throw .shapeMismatch("LoRA layer \(layer) \(module) B (\(module.hfName).lora_B) has shape \(b.shape), expected [\(o), \(rank)] ([out_features, rank])\(model)")
        }
    }

    /// The first non-finite value of A or B, as an error naming the tensor and index.
    public func checkFinite() throws(LKError) {
        for (name, t) in [("A", a), ("B", b)] {
            if let (row, col, v) = t.firstNonFinite() {
                throw .invalidArgument("LoRA layer \(layer) \(module): \(name)[\(row), \(col)] is \(v) (not finite)")
            }
        }
    }

    // MARK: Q/K row order

    /// This module with B's rows in `layout` order, from `from` order (heads of `headDim` rows). Only q and
    /// k depend on the order (RoPE pairs, see `LoRARowOrder`); other modules, and an unchanged order,
    /// return `self`.
    public func withRowLayout(_ layout: RoPELayout, from: RoPELayout, headDim: Int) throws(LKError) -> LoRAModule {
        guard layout != from, module == .q || module == .k else { return self }
        return try with(a: a, b: try LoRARowOrder.permuted(b, from: from, to: layout, headDim: headDim))
    }

    // MARK: Merge

    /// w[OUT, IN] += scale · s · B·A (f32, row-major): this module folded into its base weight.
    public func merge(into w: UnsafeMutablePointer<Float>, scale: Float, pool: ThreadPool) throws(LKError) {
        try GEMM.multiply(m: outFeatures, n: inFeatures, k: rank, alpha: scale * scaling,
                          a: GEMMLeft(UnsafePointer(b.f32), rowStride: rank),
                          b: .f32(UnsafePointer(a.f32), ld: inFeatures), beta: 1, c: w, ldc: inFeatures, pool: pool)
    }

    // MARK: Forward

    /// t[T, r] in the workspace, then y += t·Bᵀ.
    public func workspaceFloats(rows: Int) -> Int { rows * rank }

    /// The GEMM is used for rows ≥ `gemmRows` when the rank is above `directMaxRank`; otherwise the direct
    /// SIMD loops below (decode, and prefill/training batches at small ranks, where the GEMM's packing for
    /// an r-wide operand costs more than the product: prefill with 4 stacked r = 8 adapters ran at 0.86–0.93×
    /// the base through the GEMM, 0.97–0.99× through the direct loops; at r = 256 the GEMM wins).
    static let gemmRows = 12
    static let directMaxRank = 32
    /// Output columns per Bᵀ panel (4 SIMD8 accumulators per row of the panel update).
    static let panelWidth = 32
    /// Below this much work per call (rows · r · (IN + OUT) multiply-adds), the direct path runs on the
    /// calling thread: waking the pool costs more than it saves. Decode at r = 8 on a 576-wide q is 9216;
    /// letting the pool take it made 4 stacked r = 8 q,v adapters cost 23% of the decode speed instead of 4%.
    static let poolWork = 1 << 18

    /// Whether `forward` over `rows` rows takes the GEMM (else the direct loops, which read the panels).
    package func usesGEMM(rows: Int) -> Bool { rows >= LoRAModule.gemmRows && rank > LoRAModule.directMaxRank }

    /// y[T, OUT] += c · (x·Aᵀ)·Bᵀ with c = scale · s, leaving t = c · x·Aᵀ [T, r] in `workspace` (training
    /// keeps it for the backward); with scale 0 it does nothing. Every value is computed by the same
    /// sequence of operations whichever thread runs it, so results do not depend on the thread count.
    public func forward(x: UnsafePointer<Float>, rows: Int, y: UnsafeMutablePointer<Float>, scale: Float,
                        workspace: UnsafeMutablePointer<Float>, pool: ThreadPool) throws(LKError) {
        if scale == 0 || rows == 0 { return }
        let r = rank, nIn = inFeatures, nOut = outFeatures
        let c = scale * scaling
        let ap = UnsafePointer(a.f32)
        let t = workspace
        if usesGEMM(rows: rows) {
            // t[T, r] = c · x[T, IN] · Aᵀ;  y[T, OUT] += t · Bᵀ.
            try GEMM.multiply(m: rows, n: r, k: nIn, alpha: c, a: GEMMLeft(x, rowStride: nIn),
                              b: .f32Transposed(ap, ld: nIn), c: t, ldc: r, pool: pool)
            try GEMM.multiply(m: rows, n: nOut, k: r, a: GEMMLeft(UnsafePointer(t), rowStride: r),
                              b: .f32Transposed(UnsafePointer(b.f32), ld: r), beta: 1, c: y, ldc: nOut, pool: pool)
            return
        }
        // Direct: t[T, r] = c · x · Aᵀ for all rows, then y += t · Bᵀ panel by panel.
        let panels = UnsafePointer(bPanels)
        if rows * r * (nIn + nOut) < LoRAModule.poolWork || pool.activeCount == 1 {
            LoRAModule.down(a: ap, x: x, rows: 0..<rows, nIn: nIn, rank: r, c: c, js: 0..<r, t: t)
            LoRAModule.up(panels: panels, t: UnsafePointer(t), rows: rows, rank: r, nOut: nOut, os: 0..<nOut, y: y)
            return
        }
        // Large enough for the pool: A·x split by token rows (or by groups of four A rows when there are
        // few token rows), Bᵀ by panels.
        let byRows = rows >= 4 * pool.activeCount
        pool.run(maxTasks: byRows ? rows : (r + 3) / 4) { idx, cnt in
            if byRows {
                LoRAModule.down(a: ap, x: x, rows: partition(rows, index: idx, count: cnt), nIn: nIn, rank: r, c: c,
                                js: 0..<r, t: t)
            } else {
                LoRAModule.down(a: ap, x: x, rows: 0..<rows, nIn: nIn, rank: r, c: c,
                                js: partition(r, index: idx, count: cnt, align: 4), t: t)
            }
        }
        pool.run(maxTasks: (nOut + LoRAModule.panelWidth - 1) / LoRAModule.panelWidth) { idx, cnt in
            LoRAModule.up(panels: panels, t: UnsafePointer(t), rows: rows, rank: r, nOut: nOut,
                          os: partition(nOut, index: idx, count: cnt, align: LoRAModule.panelWidth), y: y)
        }
    }

    /// t[row, j] = c · (A[j, :] · x[row, :]) for j in `js`, row in `rows`; A rows four at a time (one pass
    /// over x for four rows, eight independent accumulators), each dot exactly as `loraDot`.
    /// - a: [r, IN]; x: [T, IN]; t: [T, r].
    @inline(__always)
    static func down(a: UnsafePointer<Float>, x: UnsafePointer<Float>, rows: Range<Int>, nIn: Int, rank r: Int,
                     c: Float, js: Range<Int>, t: UnsafeMutablePointer<Float>) {
        var j = js.lowerBound
        while j + 4 <= js.upperBound {
            for row in rows {
                let d = loraDot4(a + j * nIn, nIn, x + row * nIn, nIn)
                for q in 0..<4 { t[row * r + j + q] = c * d[q] }
            }
            j += 4
        }
        while j < js.upperBound {
            for row in rows { t[row * r + j] = c * loraDot(a + j * nIn, x + row * nIn, nIn) }
            j += 1
        }
    }

    /// y[row, o] += Σ_j t[row, j] · Bᵀ[j, o] (j ascending, one fused multiply-add each) for o in `os`,
    /// every row. `os` starts at a multiple of `panelWidth` and ends at one or at OUT.
    /// - panels: `bPanels`; t: [T, r]; y: [T, OUT].
    @inline(__always)
    static func up(panels: UnsafePointer<Float>, t: UnsafePointer<Float>, rows: Int, rank r: Int, nOut: Int,
                   os: Range<Int>, y: UnsafeMutablePointer<Float>) {
        var o0 = os.lowerBound
        while o0 < os.upperBound {
            let w = min(panelWidth, nOut - o0)
            let p = panels + o0 * r
            for row in 0..<rows {
                let yr = y + row * nOut + o0, tr = t + row * r
                if w == 32 {
                    var y0 = UnsafeRawPointer(yr).loadUnaligned(as: SIMD8<Float>.self)
                    var y1 = UnsafeRawPointer(yr + 8).loadUnaligned(as: SIMD8<Float>.self)
                    var y2 = UnsafeRawPointer(yr + 16).loadUnaligned(as: SIMD8<Float>.self)
                    var y3 = UnsafeRawPointer(yr + 24).loadUnaligned(as: SIMD8<Float>.self)
                    for j in 0..<r {
                        let cv = SIMD8<Float>(repeating: tr[j]), pj = UnsafeRawPointer(p + j * 32)
                        y0.addProduct(cv, pj.load(as: SIMD8<Float>.self))
                        y1.addProduct(cv, pj.load(fromByteOffset: 32, as: SIMD8<Float>.self))
                        y2.addProduct(cv, pj.load(fromByteOffset: 64, as: SIMD8<Float>.self))
                        y3.addProduct(cv, pj.load(fromByteOffset: 96, as: SIMD8<Float>.self))
                    }
                    UnsafeMutableRawPointer(yr).storeBytes(of: y0, as: SIMD8<Float>.self)
                    UnsafeMutableRawPointer(yr + 8).storeBytes(of: y1, as: SIMD8<Float>.self)
                    UnsafeMutableRawPointer(yr + 16).storeBytes(of: y2, as: SIMD8<Float>.self)
                    UnsafeMutableRawPointer(yr + 24).storeBytes(of: y3, as: SIMD8<Float>.self)
                } else {
                    var i = 0
                    while i + 8 <= w {
                        var acc = UnsafeRawPointer(yr + i).loadUnaligned(as: SIMD8<Float>.self)
                        for j in 0..<r {
                            acc.addProduct(SIMD8<Float>(repeating: tr[j]),
                                           UnsafeRawPointer(p + j * w + i).loadUnaligned(as: SIMD8<Float>.self))
                        }
                        UnsafeMutableRawPointer(yr + i).storeBytes(of: acc, as: SIMD8<Float>.self)
                        i += 8
                    }
                    while i < w {
                        var acc = yr[i]
                        for j in 0..<r { acc = acc.addingProduct(tr[j], p[j * w + i]) }
                        yr[i] = acc
                        i += 1
                    }
                }
            }
            o0 += w
        }
    }
}

@inline(__always)
func loraDot(_ a: UnsafePointer<Float>, _ b: UnsafePointer<Float>, _ n: Int) -> Float {
    var s0 = SIMD8<Float>(), s1 = SIMD8<Float>()
    var i = 0
    while i + 16 <= n {
        s0.addProduct(UnsafeRawPointer(a + i).loadUnaligned(as: SIMD8<Float>.self),
                      UnsafeRawPointer(b + i).loadUnaligned(as: SIMD8<Float>.self))
        s1.addProduct(UnsafeRawPointer(a + i + 8).loadUnaligned(as: SIMD8<Float>.self),
                      UnsafeRawPointer(b + i + 8).loadUnaligned(as: SIMD8<Float>.self))
        i += 16
    }
    var t: Float = 0
    while i < n { t += a[i] * b[i]; i += 1 }
    return (s0 + s1).sum() + t
}

/// `loraDot` of rows a, a + lda, a + 2·lda, a + 3·lda with b, in one pass over b (same result per row).
@inline(__always)
func loraDot4(_ a: UnsafePointer<Float>, _ lda: Int, _ b: UnsafePointer<Float>, _ n: Int) -> SIMD4<Float> {
    let a0 = UnsafeRawPointer(a), a1 = UnsafeRawPointer(a + lda), a2 = UnsafeRawPointer(a + 2 * lda),
        a3 = UnsafeRawPointer(a + 3 * lda)
    var s00 = SIMD8<Float>(), s01 = SIMD8<Float>(), s10 = SIMD8<Float>(), s11 = SIMD8<Float>()
    var s20 = SIMD8<Float>(), s21 = SIMD8<Float>(), s30 = SIMD8<Float>(), s31 = SIMD8<Float>()
    var i = 0
    while i + 16 <= n {
        let x0 = UnsafeRawPointer(b + i).loadUnaligned(as: SIMD8<Float>.self)
        let x1 = UnsafeRawPointer(b + i + 8).loadUnaligned(as: SIMD8<Float>.self)
        let o = i * 4
        s00.addProduct(a0.loadUnaligned(fromByteOffset: o, as: SIMD8<Float>.self), x0)
        s01.addProduct(a0.loadUnaligned(fromByteOffset: o + 32, as: SIMD8<Float>.self), x1)
        s10.addProduct(a1.loadUnaligned(fromByteOffset: o, as: SIMD8<Float>.self), x0)
        s11.addProduct(a1.loadUnaligned(fromByteOffset: o + 32, as: SIMD8<Float>.self), x1)
        s20.addProduct(a2.loadUnaligned(fromByteOffset: o, as: SIMD8<Float>.self), x0)
        s21.addProduct(a2.loadUnaligned(fromByteOffset: o + 32, as: SIMD8<Float>.self), x1)
        s30.addProduct(a3.loadUnaligned(fromByteOffset: o, as: SIMD8<Float>.self), x0)
        s31.addProduct(a3.loadUnaligned(fromByteOffset: o + 32, as: SIMD8<Float>.self), x1)
        i += 16
    }
    var t0: Float = 0, t1: Float = 0, t2: Float = 0, t3: Float = 0
    let p0 = a, p1 = a + lda, p2 = a + 2 * lda, p3 = a + 3 * lda
    while i < n {
        t0 += p0[i] * b[i]; t1 += p1[i] * b[i]; t2 += p2[i] * b[i]; t3 += p3[i] * b[i]
        i += 1
    }
    return SIMD4((s00 + s01).sum() + t0, (s10 + s11).sum() + t1, (s20 + s21).sum() + t2, (s30 + s31).sum() + t3)
}


// MARK: - Q/K row order

/// Hugging Face/PEFT store the rows of `q_proj`/`k_proj` (and so B's rows) with RoPE pairs in two halves
/// per head (`.neox`); llama.cpp's converters permute them so pairs are adjacent (`.interleaved`): within
/// each head of size D, interleaved row 2j = half row j, row 2j+1 = half row j + D/2. A's rows are the
/// rank and its columns the unpermuted input, so only B changes.
public enum LoRARowOrder {
    /// The HF (neox) row index that GGUF (interleaved) row `g` holds, for heads of `headDim` rows:
    /// within a head, GGUF row 2j is HF row j and GGUF row 2j+1 is HF row j + D/2.
    @inline(__always)
    public static func hfRow(ofGGUFRow g: Int, headDim d: Int) -> Int {
        let h = g / d, r = g % d
        return h * d + (r % 2 == 0 ? r / 2 : r / 2 + d / 2)
    }

    /// Rows of `m` (contiguous f32 [heads·D, …], e.g. LoRA's B [OUT, r] or any parameter indexed by the
    /// weight's rows) rearranged from layout `from` to layout `to`.
    static func permuted(_ m: Tensor, from: RoPELayout, to: RoPELayout, headDim d: Int) throws(LKError) -> Tensor {
        if from == to { return m }
        let rows = m.shape.first ?? 0, cols = rows == 0 ? 0 : m.count / rows
        guard d >= 2, d % 2 == 0, rows % d == 0 else {
            throw .shapeMismatch("LoRA: cannot permute \(rows) rows in heads of \(d)")
        }
        let out = try Tensor(zeros: m.shape, dtype: .f32)
        let src = m.f32, dst = out.f32
        for g in 0..<rows {
            let h = hfRow(ofGGUFRow: g, headDim: d)
            // interleaved[g] = neox[h]
            let (si, di) = from == .neox ? (h, g) : (g, h)
            (dst + di * cols).update(from: src + si * cols, count: cols)
        }
        return out
    }
}

extension Tensor {
    /// (row, column, value) of the first NaN/Inf of a contiguous f32 tensor viewed as [rows, cols].
    func firstNonFinite() -> (Int, Int, Float)? {
        let p = f32, n = count, c = Swift.max(cols, 1)
        for i in 0..<n where !p[i].isFinite { return (i / c, i % c, p[i]) }
        return nil
    }
}
