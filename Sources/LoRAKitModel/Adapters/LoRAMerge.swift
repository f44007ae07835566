import LoRAKitCore
import LoRAKitKernels
import LoRAKitFormats
import LoRAKitTokenizer
import LoRAKitTemplates

/// Merging LoRA adapters into model weights (in memory or to a GGUF file) and combining adapters into one.
///
/// Shape legend: OUT, IN = the base weight's rows and columns; r_i = rank of adapter i; R = Σ r_i;
/// k = target rank of a truncated combination.

// MARK: - Merge

/// W' = W + Σ_i scale_i · s_i · B_i·A_i for every (layer, module) any adapter touches, in f32, with B in
/// the model's row order. Keys are sorted; values are [OUT·IN] row-major.
func mergedWeights(model: LlamaModel, adapters: [(LoRAAdapter, Float)], pool: ThreadPool)
    throws(LKError) -> [(LoRAAdapter.Key, [Float])] {
    guard !adapters.isEmpty else { throw .invalidArgument("merge: no adapters") }
    for (i, (a, s)) in adapters.enumerated() {
        guard s.isFinite else { throw .invalidArgument("merge: scale \(s) of adapter \(a.name) is not finite") }
        for j in 0..<i where adapters[j].0 === a {
            throw .invalidArgument("merge: adapter \(a.name) is listed twice (add the scales instead)")
        }
        try a.check(against: model)
    }
    let (perAdapter, keys) = try modulesByAdapter(adapters, layout: model.config.ropeLayout)
    var out: [(LoRAAdapter.Key, [Float])] = []
    for k in keys {
        let w = model.layers[k.layer].weight(k.module)
        let nIn = w.shape[1]
        var values = w.toFloats()  // [OUT, IN]
        try values.withUnsafeMutableBufferPointer { (buf: inout UnsafeMutableBufferPointer<Float>) throws(LKError) in
            for (i, (_, scale)) in adapters.enumerated() {
                guard let m = perAdapter[i][k], scale != 0 else { continue }
                // W += (scale·s) · B·A
                try m.merge(into: buf.baseAddress!, scale: scale, pool: pool)
            }
        }
        for (i, v) in values.enumerated() where !v.isFinite {
            throw .invalidArgument("merge: layer \(k.layer) \(k.module) merged weight [\(i / nIn), \(i % nIn)] is \(v) (overflow)")
        }
        out.append((k, values))
    }
    return out
}

/// Each adapter's modules with B rows in `layout` order, and the sorted union of their keys.
func modulesByAdapter(_ adapters: [(LoRAAdapter, Float)], layout: RoPELayout)
    throws(LKError) -> ([[LoRAAdapter.Key: LoRAModule]], [LoRAAdapter.Key]) {
    var per: [[LoRAAdapter.Key: LoRAModule]] = []
    var keys = Set<LoRAAdapter.Key>()
    for (a, _) in adapters {
        let m = try a.modules(for: layout)
        per.append(m)
        keys.formUnion(m.keys)
    }
    return (per, keys.sorted())
}

/// A new model whose touched weights are W + Σ scale_i·s_i·B_i·A_i (f32, or re-quantized to `outType`);
/// every other tensor is shared with `model`, which is not modified (using `model` again = unmerge).
public func merged(model: LlamaModel, adapters: [(LoRAAdapter, Float)], outType: DType? = nil,
                   pool: ThreadPool = .shared) throws(LKError) -> LlamaModel {
    let ws = try mergedWeights(model: model, adapters: adapters, pool: pool)
    var lin = model.layers.map(\.linear)
    for (k, v) in ws {
        let shape = model.layers[k.layer].weight(k.module).shape
        var t = try Tensor(v, shape: shape)
        if let dt = outType, dt != .f32 {
            do throws(LKError) { t = try t.converted(to: dt) } catch {
                throw .shapeMismatch("merge: layer \(k.layer) \(k.module): \(error.message)")
            }
        }
        lin[k.layer][k.module.rawValue] = t
    }
    var layers: [LlamaModel.Layer] = []
    for (i, l) in model.layers.enumerated() {
        layers.append(LlamaModel.Layer(attnNorm: l.attnNorm, ffnNorm: l.ffnNorm, linear: lin[i]))
    }
    let names = adapters.map(\.0.name).joined(separator: "+")
    return LlamaModel(config: model.config, tokenEmbedding: model.tokenEmbedding, layers: layers,
                      outputNorm: model.outputNorm, output: model.output, source: "\(model.source) + \(names)",
                      metadata: model.metadata, architecture: model.architecture, chatTemplate: model.chatTemplate,
                      gguf: model.gguf, tokenizer: model.tokenizer, tokenizerError: model.tokenizerError)
}

/// Element type of merged weights written by `writeMergedGGUF`.
public enum MergedWeightType: Sendable, Equatable {
    case f32, f16, q8_0
    /// The base weight's own type (re-quantized after merging).
    case same
}

/// Write the base GGUF with the merged weights: all metadata (tokenizer included) and all other tensors
/// copied as they are, in the same order; merged weights in `outType`. Atomic (temporary file + rename).
/// The model must have been loaded from GGUF (its rows are in GGUF order).
public func writeMergedGGUF(model: LlamaModel, adapters: [(LoRAAdapter, Float)], outType: MergedWeightType = .same,
                            path: String, pool: ThreadPool = .shared) throws(LKError) {
    guard let f = model.gguf else {
        throw .unsupported("writeMergedGGUF: \(model.source) was not loaded from a GGUF file")
    }
    let ws = try mergedWeights(model: model, adapters: adapters, pool: pool)
    var byName: [String: (what: String, values: [Float])] = [:]
    for (k, v) in ws { byName[k.module.ggufWeightName(layer: k.layer)] = ("layer \(k.layer) \(k.module)", v) }
    try writeGGUF(copying: f, replacing: byName, outType: outType, path: path)
}

/// `f`'s metadata and tensors, in order, with the tensors named in `replacing` swapped for the given f32
/// values (in `outType`; `what` names the weight in errors). A non-finite value is refused (a merge
/// overflowed). The file every merge to GGUF writes (LoRA only, or with plugin adapters). Atomic.
func writeGGUF(copying f: GGUFFile, replacing byName: [String: (what: String, values: [Float])],
               outType: MergedWeightType, path: String) throws(LKError) {
    var w = GGUFWriter()
    w.alignment = f.alignment
    for key in f.metadataKeys { if let v = f.metadata[key] { w.set(key, v) } }
    for info in f.tensors {
        let base = try f.tensor(info.name)
        guard let (what, v) = byName[info.name] else { try w.add(info.name, base); continue }
        for (i, x) in v.enumerated() where !x.isFinite {
            throw .invalidArgument("merge: \(what) merged weight element \(i) is \(x) (overflow)")
        }
        let dt: DType
        switch outType {
        case .f32: dt = .f32
        case .f16: dt = .f16
        case .q8_0: dt = .q8_0
        case .same: dt = base.dtype
        }
        var t = try Tensor(v, shape: base.shape)
        if dt != .f32 {
            do throws(LKError) { t = try t.converted(to: dt) } catch {
                throw .shapeMismatch("writeMergedGGUF: \(what): \(error.message)")
            }
        }
        try w.add(info.name, t)
    }
    try w.write(to: path)
}

// MARK: - Combine

/// One adapter equal to Σ_i w_i · (adapter i): for each module the ranks are concatenated
/// (A = [A_1; A_2; …] [R, IN], B = [w_1·s_1·B_1, w_2·s_2·B_2, …] [OUT, R], alpha = R so s = 1): exact.
/// With `rank` = k, each module's ΔW = B·A is replaced by its best rank-min(k, R) approximation
/// (truncated SVD computed in the rank space: QR of B and Aᵀ, Jacobi SVD of the R×R core; no OUT×IN
/// matrix is formed), split as B' = U_k·√Σ_k, A' = √Σ_k·V_kᵀ, and `retainedEnergy` is
/// Σ kept σ² / Σ all σ² over all modules (1 when everything is kept; nil without `rank`).
/// All adapters must be made for the same model sizes; rows follow the first adapter's `rowLayout`.
public func combine(_ adapters: [(LoRAAdapter, Float)], rank: Int? = nil, name: String = "combined")
    throws(LKError) -> (LoRAAdapter, retainedEnergy: Double?) {
    guard let first = adapters.first?.0 else { throw .invalidArgument("combine: no adapters") }
    if let k = rank { try LoRAModule.checkRank(k, "combine: rank") }
    let mc = first.modelConfig
    for (a, w) in adapters {
        guard w.isFinite else { throw .invalidArgument("combine: weight \(w) of adapter \(a.name) is not finite") }
        if let (what, mine, theirs) = a.sizeDifference(from: mc) {
            throw .shapeMismatch("combine: adapter \(a.name) was made for a model with \(what) \(mine), \(first.name) for \(theirs)")
        }
    }
    let (per, keys) = try modulesByAdapter(adapters, layout: first.rowLayout)
    var mods: [LoRAModule] = []
    var kept = 0.0, total = 0.0
    for key in keys {
        var parts: [(LoRAModule, Float)] = []
        for (i, (_, w)) in adapters.enumerated() { if let m = per[i][key] { parts.append((m, w)) } }
        let r = parts.reduce(0) { $0 + $1.0.rank }
        guard r <= 65536 else { throw .invalidArgument("combine: layer \(key.layer) \(key.module): total rank \(r) too large") }
        let nIn = parts[0].0.inFeatures, nOut = parts[0].0.outFeatures
        var av = [Float](repeating: 0, count: r * nIn)
        var bv = [Float](repeating: 0, count: nOut * r)
        var off = 0
        for (m, w) in parts {
            let ap = m.a.f32, bp = m.b.f32, c = w * m.scaling
            for j in 0..<m.rank {
                for i in 0..<nIn { av[(off + j) * nIn + i] = ap[j * nIn + i] }
                for o in 0..<nOut { bv[o * r + off + j] = c * bp[o * m.rank + j] }
            }
            off += m.rank
        }
        var outRank = r
        if let k = rank {
            let (a2, b2, e) = truncatedSVD(a: av, b: bv, rank: r, nIn: nIn, nOut: nOut, keep: min(k, r))
            av = a2; bv = b2; kept += e.kept; total += e.total
            outRank = min(k, r)
        }
        guard LoRAModule.rankRange.contains(outRank) else {
            throw .invalidArgument("combine: layer \(key.layer) \(key.module): total rank \(outRank) exceeds \(LoRAModule.rankRange.upperBound) (pass rank:)")
        }
        // alpha = rank: s = 1.
        mods.append(try LoRAModule(layer: key.layer, module: key.module, a: try Tensor(av, shape: [outRank, nIn]),
                                   b: try Tensor(bv, shape: [nOut, outRank]), alpha: Float(outRank)))
    }
    let cfg = LoRAConfig(describing: mods, nLayers: mc.nLayers, dropout: first.config.dropout)
    let out = try LoRAAdapter(name: name, config: cfg, modelConfig: mc, rowLayout: first.rowLayout, modules: mods)
    return (out, rank == nil ? nil : (total > 0 ? kept / total : 1))
}

/// Best rank-`keep` factorization of ΔW = B·A (B [OUT, R], A [R, IN], f32 row-major), in Double:
/// B = Q_B·R_B, Aᵀ = Q_A·R_A (Gram–Schmidt twice), K = R_B·R_Aᵀ = U·Σ·Vᵀ (one-sided Jacobi), so
/// ΔW = (Q_B U) Σ (Q_A V)ᵀ. Returns (A' [keep, IN], B' [OUT, keep], energies).
func truncatedSVD(a: [Float], b: [Float], rank r: Int, nIn: Int, nOut: Int, keep: Int)
    -> ([Float], [Float], (kept: Double, total: Double)) {
    // Columns of B and of Aᵀ, as column-major Double matrices.
    var bc = [Double](repeating: 0, count: nOut * r)
    for o in 0..<nOut { for j in 0..<r { bc[j * nOut + o] = Double(b[o * r + j]) } }
    var ac = [Double](repeating: 0, count: nIn * r)
    for j in 0..<r { for i in 0..<nIn { ac[j * nIn + i] = Double(a[j * nIn + i]) } }
    let rb = gramSchmidt(&bc, n: nOut, cols: r)   // bc becomes Q_B; rb [r, r] row-major
    let ra = gramSchmidt(&ac, n: nIn, cols: r)    // ac becomes Q_A
    // K = R_B · R_Aᵀ, stored column-major for the column rotations.
    var kc = [Double](repeating: 0, count: r * r)
    for i in 0..<r { for j in 0..<r {
        var s = 0.0
        for t in 0..<r { s += rb[i * r + t] * ra[j * r + t] }
        kc[j * r + i] = s
    } }
    var v = [Double](repeating: 0, count: r * r)
    for i in 0..<r { v[i * r + i] = 1 }
    jacobiSVD(&kc, &v, n: r)
    var sig = [Double](repeating: 0, count: r)
    for j in 0..<r { var s = 0.0; for i in 0..<r { s += kc[j * r + i] * kc[j * r + i] }; sig[j] = s.squareRoot() }
    let order = (0..<r).sorted { sig[$0] > sig[$1] || (sig[$0] == sig[$1] && $0 < $1) }
    var total = 0.0, kept = 0.0
    for (n, j) in order.enumerated() { total += sig[j] * sig[j]; if n < keep { kept += sig[j] * sig[j] } }
    var a2 = [Float](repeating: 0, count: keep * nIn)
    var b2 = [Float](repeating: 0, count: nOut * keep)
    for (n, j) in order.prefix(keep).enumerated() {
        let s = sig[j]
        if s == 0 { continue }
        let root = s.squareRoot()
        // u = K[:, j]/σ; B' column = Q_B u · √σ = Q_B K[:, j] / √σ.
        for o in 0..<nOut {
            var acc = 0.0
            for t in 0..<r { acc += bc[t * nOut + o] * kc[j * r + t] }
            b2[o * keep + n] = Float(acc / root)
        }
        // A' row = √σ · (Q_A v)ᵀ.
        for i in 0..<nIn {
            var acc = 0.0
            for t in 0..<r { acc += ac[t * nIn + i] * v[j * r + t] }
            a2[n * nIn + i] = Float(acc * root)
        }
    }
    return (a2, b2, (kept, total))
}

/// In-place QR of a column-major [n, cols] matrix by modified Gram–Schmidt with one re-orthogonalization
/// pass; returns R [cols, cols] row-major. Columns dependent on earlier ones become zero (R row zero).
func gramSchmidt(_ m: inout [Double], n: Int, cols: Int) -> [Double] {
    var rr = [Double](repeating: 0, count: cols * cols)
    for j in 0..<cols {
        var n0 = 0.0
        for i in 0..<n { n0 += m[j * n + i] * m[j * n + i] }
        n0 = n0.squareRoot()
        for _ in 0..<2 {
            for q in 0..<j {
                var d = 0.0
                for i in 0..<n { d += m[q * n + i] * m[j * n + i] }
                rr[q * cols + j] += d
                for i in 0..<n { m[j * n + i] -= d * m[q * n + i] }
            }
        }
        var nn = 0.0
        for i in 0..<n { nn += m[j * n + i] * m[j * n + i] }
        nn = nn.squareRoot()
        if nn <= 1e-12 * n0 || nn == 0 {
            for i in 0..<n { m[j * n + i] = 0 }
            rr[j * cols + j] = 0
        } else {
            for i in 0..<n { m[j * n + i] /= nn }
            rr[j * cols + j] = nn
        }
    }
    return rr
}

/// One-sided (Hestenes) Jacobi: rotates the columns of `u` (column-major n×n) until they are mutually
/// orthogonal, applying the same rotations to `v`. Then u = U·Σ (column norms = σ) and K = u·Vᵀ.
/// Fixed sweep order: deterministic.
func jacobiSVD(_ u: inout [Double], _ v: inout [Double], n: Int) {
    for _ in 0..<60 {
        var rotated = false
        for p in 0..<n {
            for q in (p + 1)..<max(p + 1, n) {
                var al = 0.0, be = 0.0, ga = 0.0
                for i in 0..<n {
                    let x = u[p * n + i], y = u[q * n + i]
                    al += x * x; be += y * y; ga += x * y
                }
                if ga == 0 || abs(ga) <= 1e-15 * (al * be).squareRoot() { continue }
                rotated = true
                let zeta = (be - al) / (2 * ga)
                let t = (zeta >= 0 ? 1.0 : -1.0) / (abs(zeta) + (1 + zeta * zeta).squareRoot())
                let c = 1 / (1 + t * t).squareRoot(), s = c * t
                for i in 0..<n {
                    let x = u[p * n + i], y = u[q * n + i]
                    u[p * n + i] = c * x - s * y
                    u[q * n + i] = s * x + c * y
                    let vx = v[p * n + i], vy = v[q * n + i]
                    v[p * n + i] = c * vx - s * vy
                    v[q * n + i] = s * vx + c * vy
                }
            }
        }
        if !rotated { break }
    }
}
