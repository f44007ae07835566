import Synchronization
import LoRAKitCore
import LoRAKitKernels
import LoRAKitFormats
import LoRAKitTokenizer
import LoRAKitTemplates

/// LoRA adapters: configuration, per-module adapter (the `LinearAdapter` hook), a whole-model adapter,
/// and the Q/K row-order conversion between Hugging Face/PEFT and GGUF models.
///
/// Shape legend: T = rows (tokens), IN = input features, OUT = output features of the base layer,
/// r = adapter rank. For a frozen W [OUT, IN]: ΔW = s·B·A with A [r, IN], B [OUT, r],
/// s = alpha/r (alpha/√r with rsLoRA). Unmerged forward: y = W x + Σ_i scale_i · s_i · B_i (A_i x).
#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

// MARK: - Configuration

/// Hyper-parameters of a LoRA adapter (the fields of PEFT's `LoraConfig` LoRAKit uses).
public struct LoRAConfig: Sendable, Equatable {
    /// Default rank r (1...4096).
    public var rank: Int
    /// Default alpha (finite, > 0).
    public var alpha: Float
    /// rsLoRA: s = alpha/√r instead of alpha/r.
    public var useRSLoRA: Bool
    /// Modules that get an adapter.
    public var targets: Set<LinearModule>
    /// Layers that get an adapter (nil = all).
    public var layers: [Int]?
    /// Per-module rank overrides, PEFT `rank_pattern` semantics (see `patternKey`).
    public var rankPattern: [String: Int]
    /// Per-module alpha overrides, PEFT `alpha_pattern` semantics (see `patternKey`).
    public var alphaPattern: [String: Float]
    /// Dropout on the adapter input during training (not used at inference).
    public var dropout: Float

    public init(rank: Int = 8, alpha: Float = 16, useRSLoRA: Bool = false,
                targets: Set<LinearModule> = [.q, .v], layers: [Int]? = nil,
                rankPattern: [String: Int] = [:], alphaPattern: [String: Float] = [:], dropout: Float = 0) {
        self.rank = rank; self.alpha = alpha; self.useRSLoRA = useRSLoRA; self.targets = targets
        self.layers = layers; self.rankPattern = rankPattern; self.alphaPattern = alphaPattern
        self.dropout = dropout
    }

    /// Parse a target list: comma-separated module names in any form `LinearModule(name:)` accepts
    /// (`q,k,v,o,gate,up,down`, `q_proj`, `attn_q`), or `all-linear` / `all` for every module.
    public static func parseTargets(_ s: String) throws(LKError) -> Set<LinearModule> {
        let t = s.loraTrimmed.lowercased()
        if t == "all-linear" || t == "all" || t == "all_linear" { return Set(LinearModule.allCases) }
        var out = Set<LinearModule>()
        for part in t.split(separator: ",") {
            let name = String(part).loraTrimmed
            if name.isEmpty { continue }
            guard let m = LinearModule(name: name) else {
                throw .invalidArgument("LoRA targets: unknown module \"\(name)\" (known: q, k, v, o, gate, up, down, or all-linear)")
            }
            out.insert(m)
        }
        guard !out.isEmpty else { throw .invalidArgument("LoRA targets: empty list \"\(s)\"") }
        return out
    }

    /// Full Hugging Face module name: `model.layers.N.self_attn.q_proj`.
    public static func hfModuleName(layer: Int, module: LinearModule) -> String {
        "model.layers.\(layer).\(module.hfName)"
    }

    /// The pattern key that applies to a module, with PEFT's semantics (peft `get_pattern_key`):
    /// a key equal to the full name wins; otherwise a key matches when the full name matches the regular
    /// expression `(.*\.)?(KEY)$` from its start — so plain keys are dot-boundary suffixes (`q_proj`,
    /// `self_attn.q_proj`, `layers.3.self_attn.q_proj`, `model.layers.3.mlp.down_proj`) and keys may be
    /// regular expressions (`layers\.[0-3]\.self_attn\.(q|v)_proj`). Where PEFT takes the first matching
    /// key in dict order, LoRAKit (dictionaries are unordered) takes the longest matching key, then the
    /// lexicographically smallest: deterministic, and the most specific key wins. A key that is not a
    /// valid regular expression is matched as a literal dot-boundary suffix.
    public static func patternKey(_ keys: some Collection<String>, layer: Int, module: LinearModule) -> String? {
        let name = hfModuleName(layer: layer, module: module)
        if keys.contains(name) { return name }
        var best: String? = nil
        for key in keys where matches(key: key, name: name) {
            if let b = best, b.count > key.count || (b.count == key.count && b < key) { continue }
            best = key
        }
        return best
    }

    static func matches(key: String, name: String) -> Bool {
        if name == key || name.hasSuffix("." + key) { return true }
        guard let re = try? Regex("(.*\\.)?(" + key + ")") else { return false }
        return (try? re.wholeMatch(in: name)) != nil ? true : false
    }

    /// Whether (layer, module) gets an adapter.
    public func targets(layer: Int, module: LinearModule) -> Bool {
        targets.contains(module) && (layers?.contains(layer) ?? true)
    }

    /// Rank of (layer, module) after `rankPattern`.
    public func rank(layer: Int, module: LinearModule) -> Int {
        if let k = LoRAConfig.patternKey(rankPattern.keys, layer: layer, module: module) { return rankPattern[k]! }
        return rank
    }

    /// Alpha of (layer, module) after `alphaPattern`.
    public func alpha(layer: Int, module: LinearModule) -> Float {
        if let k = LoRAConfig.patternKey(alphaPattern.keys, layer: layer, module: module) { return alphaPattern[k]! }
        return alpha
    }

    /// s = alpha/r, or alpha/√r with rsLoRA.
    public static func scaling(rank: Int, alpha: Float, rsLoRA: Bool) -> Float {
        rsLoRA ? alpha / Float(rank).squareRoot() : alpha / Float(rank)
    }

    /// Scaling of (layer, module) after the patterns.
    public func scaling(layer: Int, module: LinearModule) -> Float {
        LoRAConfig.scaling(rank: rank(layer: layer, module: module), alpha: alpha(layer: layer, module: module),
                           rsLoRA: useRSLoRA)
    }

    /// Checks ranges; errors name the field.
    public func validate() throws(LKError) {
        func rankOK(_ r: Int) -> Bool { r >= 1 && r <= 4096 }
        func alphaOK(_ a: Float) -> Bool { a.isFinite && a > 0 }
        guard rankOK(rank) else { throw .invalidArgument("LoRA config: rank \(rank) must be in 1...4096") }
        guard alphaOK(alpha) else { throw .invalidArgument("LoRA config: alpha \(alpha) must be finite and > 0") }
        guard !targets.isEmpty else { throw .invalidArgument("LoRA config: no target modules") }
        guard dropout.isFinite, dropout >= 0, dropout < 1 else {
            throw .invalidArgument("LoRA config: dropout \(dropout) must be in [0, 1)")
        }
        if let ls = layers {
            guard !ls.isEmpty else { throw .invalidArgument("LoRA config: empty layer list (use nil for all layers)") }
            for l in ls where l < 0 || l > 1 << 20 { throw .invalidArgument("LoRA config: layer \(l) out of range") }
        }
        for (k, r) in rankPattern.sorted(by: { $0.key < $1.key }) where !rankOK(r) {
            throw .invalidArgument("LoRA config: rank_pattern[\"\(k)\"] = \(r) must be in 1...4096")
        }
        for (k, a) in alphaPattern.sorted(by: { $0.key < $1.key }) where !alphaOK(a) {
            throw .invalidArgument("LoRA config: alpha_pattern[\"\(k)\"] = \(a) must be finite and > 0")
        }
    }

    /// `validate()` plus the layers against a model.
    func validate(for c: LlamaConfig) throws(LKError) {
        try validate()
        for l in layers ?? [] where l >= c.nLayers {
            throw .invalidArgument("LoRA config: layer \(l) does not exist (the model has \(c.nLayers) layers)")
        }
    }
}

extension String {
    var loraTrimmed: String {
        var s = Substring(self)
        while let f = s.first, f.isWhitespace { s.removeFirst() }
        while let l = s.last, l.isWhitespace { s.removeLast() }
        return String(s)
    }
}

// MARK: - One module

/// The LoRA term of one linear layer (layer, module): `y += scale · scaling · (x·Aᵀ)·Bᵀ`.
/// Immutable after creation; `forward` only reads it, so one module serves any number of contexts and
/// threads at once.
public final class LoRAModule: LinearAdapter, @unchecked Sendable {
    public let layer: Int
    public let module: LinearModule
    /// A: [r, IN] f32, contiguous.
    public let a: Tensor
    /// B: [OUT, r] f32, contiguous, rows in the owning adapter's `rowLayout` order (q/k).
    public let b: Tensor
    public let rank: Int
    public let alpha: Float
    /// s (alpha/r or alpha/√r), applied on top of the per-attachment scale.
    public let scaling: Float
    /// Bᵀ in panels for the direct path (a copy made at init, so B must not be changed in place
    /// afterwards): the panel of outputs o0 ..< o0 + w
    /// (o0 a multiple of `panelWidth`, w = min(panelWidth, OUT − o0)) starts at o0·r and holds
    /// Bᵀ[j, o0 + i] = B[o0 + i, j] at j·w + i, so one panel update reads one contiguous block. [OUT·r]
    private let bPanels: UnsafeMutablePointer<Float>

    public var inFeatures: Int { a.shape[1] }
    public var outFeatures: Int { b.shape[0] }

    /// - a: [r, IN], b: [OUT, r], any dtype (converted to contiguous f32).
    /// - scaling: nil → alpha/r (alpha/√r when `rsLoRA`).
    public init(layer: Int, module: LinearModule, a: Tensor, b: Tensor, alpha: Float, rsLoRA: Bool = false,
                scaling: Float? = nil) throws(LKError) {
        let what = "LoRA layer \(layer) \(module)"
        guard a.rank == 2, b.rank == 2 else {
            throw .shapeMismatch("\(what): A \(a.shape) and B \(b.shape) must be 2-D")
        }
        let r = a.shape[0]
        guard r >= 1, r <= 4096 else { throw .invalidArgument("\(what): rank \(r) must be in 1...4096") }
        guard b.shape[1] == r else {
            throw .shapeMismatch("\(what): A is \(a.shape) (rank \(r)) but B is \(b.shape), expected [out, \(r)]")
        }
        guard a.shape[1] >= 1, b.shape[0] >= 1 else { throw .shapeMismatch("\(what): empty A \(a.shape) or B \(b.shape)") }
        guard alpha.isFinite, alpha > 0 else { throw .invalidArgument("\(what): alpha \(alpha) must be finite and > 0") }
        let s = scaling ?? LoRAConfig.scaling(rank: r, alpha: alpha, rsLoRA: rsLoRA)
        guard s.isFinite else { throw .invalidArgument("\(what): scaling \(s) is not finite") }
        self.layer = layer
        self.module = module
        self.a = (a.dtype == .f32 && a.isContiguous) ? a : try a.converted(to: .f32)
        self.b = (b.dtype == .f32 && b.isContiguous) ? b : try b.converted(to: .f32)
        self.rank = r
        self.alpha = alpha
        self.scaling = s
        let out = b.shape[0]
        let panels = UnsafeMutableRawPointer.allocate(byteCount: out * r * 4, alignment: 64)
            .bindMemory(to: Float.self, capacity: out * r)
        let bp = self.b.f32
        var o0 = 0
        while o0 < out {
            let w = min(LoRAModule.panelWidth, out - o0)
            for j in 0..<r { for i in 0..<w { panels[o0 * r + j * w + i] = bp[(o0 + i) * r + j] } }
            o0 += w
        }
        bPanels = panels
    }

    deinit { bPanels.deallocate() }

    /// The first non-finite value of A or B, as an error naming the tensor and index.
    public func checkFinite() throws(LKError) {
        for (name, t) in [("A", a), ("B", b)] {
            let p = t.f32
            for i in 0..<t.count where !p[i].isFinite {
                throw .invalidArgument("LoRA layer \(layer) \(module): \(name)[\(i / t.cols), \(i % t.cols)] is \(p[i]) (not finite)")
            }
        }
    }

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

    public func forward(x: UnsafePointer<Float>, rows: Int, y: UnsafeMutablePointer<Float>, scale: Float,
                        workspace: UnsafeMutablePointer<Float>, pool: ThreadPool) throws(LKError) {
        if scale == 0 || rows == 0 { return }
        let r = rank, nIn = inFeatures, nOut = outFeatures
        let c = scale * scaling
        let ap = UnsafePointer(a.f32)
        if rows >= LoRAModule.gemmRows && r > LoRAModule.directMaxRank {
            // t[T, r] = x[T, IN] · Aᵀ;  y[T, OUT] += c · t · Bᵀ.
            try GEMM.multiply(m: rows, n: r, k: nIn, a: GEMMLeft(x, rowStride: nIn),
                              b: .f32Transposed(ap, ld: nIn), c: workspace, ldc: r, pool: pool)
            try GEMM.multiply(m: rows, n: nOut, k: r, alpha: c, a: GEMMLeft(UnsafePointer(workspace), rowStride: r),
                              b: .f32Transposed(UnsafePointer(b.f32), ld: r), beta: 1, c: y, ldc: nOut, pool: pool)
            return
        }
        // Direct: t[T, r] = c · x · Aᵀ for all rows, then y += t · Bᵀ panel by panel. Every value is
        // computed by the same sequence of operations whichever task runs it, so results do not depend on
        // the thread count.
        let panels = UnsafePointer(bPanels)
        let t = workspace
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

public enum LoRARowOrder {
    /// The HF (neox) row index that GGUF (interleaved) row `g` holds, for heads of `headDim` rows:
    /// within a head, GGUF row 2j is HF row j and GGUF row 2j+1 is HF row j + D/2.
    @inline(__always)
    public static func hfRow(ofGGUFRow g: Int, headDim d: Int) -> Int {
        let h = g / d, r = g % d
        return h * d + (r % 2 == 0 ? r / 2 : r / 2 + d / 2)
    }

    /// Rows of `m` ([rows, cols] f32) rearranged from layout `from` to layout `to` (q/k only).
    static func permuted(_ m: Tensor, from: RoPELayout, to: RoPELayout, headDim d: Int) throws(LKError) -> Tensor {
        if from == to { return m }
        let rows = m.shape[0], cols = m.shape[1]
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

// MARK: - Whole-model adapter

/// How `LoRAAdapter.create` initializes A and B.
public enum LoRAInitialization: Sendable, Equatable {
    /// PEFT default: A ~ kaiming-uniform(a = √5) = U(−1/√IN, 1/√IN); B = 0 (ΔW = 0).
    case peft
    /// A ~ N(0, 1/r); B = 0 (PEFT `init_lora_weights="gaussian"`).
    case gaussian
    /// A ~ U(−1/√IN, 1/√IN), B ~ U(−0.1, 0.1): ΔW ≠ 0, for tests.
    case random(seed: UInt64)
}

/// A LoRA adapter for a whole model: modules keyed by (layer, module). Immutable after creation and
/// safe to share between contexts and threads (the per-layout copies are built once under a lock).
public final class LoRAAdapter: @unchecked Sendable {
    public struct Key: Hashable, Sendable, Comparable {
        public let layer: Int
        public let module: LinearModule
        public init(_ layer: Int, _ module: LinearModule) { self.layer = layer; self.module = module }
        public static func < (l: Key, r: Key) -> Bool {
            (l.layer, l.module.rawValue) < (r.layer, r.module.rawValue)
        }
    }

    public let name: String
    public let config: LoRAConfig
    /// The dimensions of the model this adapter was made for.
    public let modelConfig: LlamaConfig
    /// Order of B's rows for q/k: `.neox` = Hugging Face/PEFT, `.interleaved` = GGUF.
    public let rowLayout: RoPELayout
    public let modules: [Key: LoRAModule]

    private let layoutCache = Mutex<[RoPELayout: [Key: LoRAModule]]>([:])
    private let valuesChecked = Mutex<Bool>(false)

    /// For loaders: modules built from (layer, module, A, B, rank, alpha) tensors.
    /// Checks keys and shapes against `modelConfig` (not values: see `check(against:)`).
    public init(name: String, config: LoRAConfig, modelConfig: LlamaConfig, rowLayout: RoPELayout,
                modules: [LoRAModule]) throws(LKError) {
        try config.validate()
        var dict: [Key: LoRAModule] = [:]
        for m in modules {
            let k = Key(m.layer, m.module)
            guard dict[k] == nil else {
                throw .invalidArgument("LoRA adapter \(name): two modules for layer \(m.layer) \(m.module)")
            }
            dict[k] = m
        }
        guard !dict.isEmpty else { throw .invalidArgument("LoRA adapter \(name): no modules") }
        self.name = name
        self.config = config
        self.modelConfig = modelConfig
        self.rowLayout = rowLayout
        self.modules = dict
        try checkShapes(modelConfig, against: "the model it was made for")
    }

    public func module(_ layer: Int, _ m: LinearModule) -> LoRAModule? { modules[Key(layer, m)] }

    /// Sorted keys.
    public var keys: [Key] { modules.keys.sorted() }

    /// A new adapter for `model` with `config`'s targets, ranks and alphas.
    /// Rows are created in the model's own order (`rowLayout = model.config.ropeLayout`).
    public static func create(for model: LlamaModel, config: LoRAConfig, initialization: LoRAInitialization = .peft,
                              seed: UInt64 = 0, name: String = "lora") throws(LKError) -> LoRAAdapter {
        let c = model.config
        try config.validate(for: c)
        var rng: SplitMix64
        if case .random(let s) = initialization { rng = SplitMix64(seed: s) } else { rng = SplitMix64(seed: seed) }
        var mods: [LoRAModule] = []
        for l in 0..<c.nLayers {
            for m in LinearModule.allCases where config.targets(layer: l, module: m) {
                let (out, inF) = m.shape(c)
                let r = config.rank(layer: l, module: m)
                let al = config.alpha(layer: l, module: m)
                var av = [Float](repeating: 0, count: r * inF)
                var bv = [Float](repeating: 0, count: out * r)
                let bound = 1 / Float(inF).squareRoot()
                switch initialization {
                case .peft:
                    for i in av.indices { av[i] = (rng.nextFloat() * 2 - 1) * bound }
                case .gaussian:
                    let sd = 1 / Float(r).squareRoot()
                    for i in av.indices { av[i] = rng.nextGaussian() * sd }
                case .random:
                    for i in av.indices { av[i] = (rng.nextFloat() * 2 - 1) * bound }
                    for i in bv.indices { bv[i] = (rng.nextFloat() * 2 - 1) * 0.1 }
                }
                mods.append(try LoRAModule(layer: l, module: m, a: try Tensor(av, shape: [r, inF]),
                                           b: try Tensor(bv, shape: [out, r]), alpha: al, rsLoRA: config.useRSLoRA))
            }
        }
        return try LoRAAdapter(name: name, config: config, modelConfig: c, rowLayout: c.ropeLayout, modules: mods)
    }

    private func checkShapes(_ c: LlamaConfig, against what: String) throws(LKError) {
        for k in keys {
            let m = modules[k]!
            guard k.layer >= 0, k.layer < c.nLayers else {
                throw .shapeMismatch("LoRA adapter \(name): layer \(k.layer) \(k.module) does not exist in \(what) (\(c.nLayers) layers)")
            }
            let (out, inF) = k.module.shape(c)
            guard m.a.shape[1] == inF else {
                throw .shapeMismatch("LoRA adapter \(name): layer \(k.layer) \(k.module) A is \(m.a.shape), expected [\(m.rank), \(inF)] for \(what)")
            }
            guard m.b.shape[0] == out else {
                throw .shapeMismatch("LoRA adapter \(name): layer \(k.layer) \(k.module) B is \(m.b.shape), expected [\(out), \(m.rank)] for \(what)")
            }
        }
    }

    /// Checks this adapter fits `model`: architecture sizes (layers, width, heads, head dim, MLP width),
    /// every module's A/B shapes, and that all values are finite. Errors name layer, module and tensor.
    public func check(against model: LlamaModel) throws(LKError) {
        let c = model.config, mc = modelConfig
        func same(_ a: Int, _ b: Int, _ what: String) throws(LKError) {
            guard a == b else {
                throw .shapeMismatch("LoRA adapter \(name) was made for a model with \(what) \(b), this model (\(model.source)) has \(a)")
            }
        }
        try same(c.nLayers, mc.nLayers, "layers")
        try same(c.dim, mc.dim, "width")
        try same(c.hiddenDim, mc.hiddenDim, "MLP width")
        try same(c.nHeads, mc.nHeads, "heads")
        try same(c.nKVHeads, mc.nKVHeads, "KV heads")
        try same(c.headDim, mc.headDim, "head dimension")
        try checkShapes(c, against: model.source)
        // Module tensors are immutable once built, so their values are scanned for NaN/Inf once.
        if !valuesChecked.withLock({ $0 }) {
            for k in keys { try modules[k]!.checkFinite() }
            valuesChecked.withLock { $0 = true }
        }
    }

    /// The modules with q/k B rows in `layout` order (built once per layout, then cached).
    public func modules(for layout: RoPELayout) throws(LKError) -> [Key: LoRAModule] {
        if layout == rowLayout { return modules }
        if let m = layoutCache.withLock({ $0[layout] }) { return m }
        var out: [Key: LoRAModule] = [:]
        for (k, m) in modules {
            if k.module == .q || k.module == .k {
                let pb = try LoRARowOrder.permuted(m.b, from: rowLayout, to: layout, headDim: modelConfig.headDim)
                out[k] = try LoRAModule(layer: k.layer, module: k.module, a: m.a, b: pb, alpha: m.alpha,
                                        scaling: m.scaling)
            } else {
                out[k] = m
            }
        }
        return layoutCache.withLock { cache in
            if let existing = cache[layout] { return existing }
            cache[layout] = out
            return out
        }
    }
}
