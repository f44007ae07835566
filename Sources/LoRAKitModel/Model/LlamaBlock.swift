import LoRAKitCore
import LoRAKitKernels

/// One LLaMA decoder block, written once: inference (`LlamaContext`: KV cache, decode mat-vec, prefill)
/// and training (`LoRATrainer`: every activation kept for the backward) both run `LlamaBlock.forward`,
/// each with a runner that says where the activations go and how a linear layer and attention are
/// computed.
///
/// Shape legend: T = rows, C = model width, H = query heads, Hkv = key/value heads, D = head dim,
/// Q = H·D, KV = Hkv·D, F = MLP width.
///
///     xn1  = rmsnorm(x) ⊙ attnNorm                                   [T, C]
///     q, k, v = xn1·Wqᵀ, xn1·Wkᵀ, xn1·Wvᵀ (+ adapters)                 [T, Q], [T, KV], [T, KV]
///     q, k = rope(q), rope(k)
///     att  = attention(q, k, v)  (causal)                             [T, Q]
///     xMid = x + att·Woᵀ (+ adapters)                                 [T, C]
///     xn2  = rmsnorm(xMid) ⊙ ffnNorm                                  [T, C]
///     gate, up = xn2·Wgateᵀ, xn2·Wupᵀ (+ adapters)                    [T, F], [T, F]
///     h    = silu(gate) ⊙ up                                          [T, F]
///     xOut = xMid + h·Wdownᵀ (+ adapters)                             [T, C]
package enum LlamaBlock {
    /// Where one layer's activations go (all f32, T rows). Inference points several at the same
    /// buffer (xMid = xOut = x, xn2 = xn1, h = gate, down = o) and k, v at the KV cache; training keeps
    /// each one per layer.
    package struct Buffers {
        package var x: UnsafeMutablePointer<Float>          // [T, C] block input
        package var xn1: UnsafeMutablePointer<Float>        // [T, C]
        package var rstd1: UnsafeMutablePointer<Float>?     // [T] 1/rms of x, when kept
        package var q: UnsafeMutablePointer<Float>          // [T, Q]
        package var k: UnsafeMutablePointer<Float>          // [T, KV]
        package var v: UnsafeMutablePointer<Float>          // [T, KV]
        package var att: UnsafeMutablePointer<Float>        // [T, Q]
        package var o: UnsafeMutablePointer<Float>          // [T, C] att·Woᵀ
        package var xMid: UnsafeMutablePointer<Float>       // [T, C]
        package var xn2: UnsafeMutablePointer<Float>        // [T, C]
        package var rstd2: UnsafeMutablePointer<Float>?     // [T] 1/rms of xMid, when kept
        package var gate: UnsafeMutablePointer<Float>       // [T, F]
        package var up: UnsafeMutablePointer<Float>         // [T, F]
        package var h: UnsafeMutablePointer<Float>          // [T, F]
        package var down: UnsafeMutablePointer<Float>       // [T, C] h·Wdownᵀ
        package var xOut: UnsafeMutablePointer<Float>       // [T, C] block output

        package init(x: UnsafeMutablePointer<Float>, xn1: UnsafeMutablePointer<Float>, rstd1: UnsafeMutablePointer<Float>?,
                     q: UnsafeMutablePointer<Float>, k: UnsafeMutablePointer<Float>, v: UnsafeMutablePointer<Float>,
                     att: UnsafeMutablePointer<Float>, o: UnsafeMutablePointer<Float>, xMid: UnsafeMutablePointer<Float>,
                     xn2: UnsafeMutablePointer<Float>, rstd2: UnsafeMutablePointer<Float>?,
                     gate: UnsafeMutablePointer<Float>, up: UnsafeMutablePointer<Float>, h: UnsafeMutablePointer<Float>,
                     down: UnsafeMutablePointer<Float>, xOut: UnsafeMutablePointer<Float>) {
            self.x = x; self.xn1 = xn1; self.rstd1 = rstd1; self.q = q; self.k = k; self.v = v; self.att = att
            self.o = o; self.xMid = xMid; self.xn2 = xn2; self.rstd2 = rstd2; self.gate = gate; self.up = up
            self.h = h; self.down = down; self.xOut = xOut
        }
    }

    /// The steps the block times itself; linear layers and attention are timed by the runner.
    package enum Step {
        case norm, rope, residual, activation

        /// The decode profile's part for this step.
        package var part: DecodeProfile.Part {
            switch self {
            case .norm: return .norm
            case .rope: return .rope
            case .residual: return .residual
            case .activation: return .activation
            }
        }
    }

    /// Run layer `layer` on `rows` rows.
    package static func forward<R: LlamaBlockRunner>(_ r: R, layer l: Int, rows t: Int, model: LlamaModel)
        throws(LKError) {
        let c = model.config, L = model.layers[l], pool = r.pool
        let b = r.buffers(layer: l)
        // Attention.
        var t0 = r.tick()
        try Ops.rmsNormForward(x: b.x, weight: L.attnNorm.f32, out: b.xn1, rstd: b.rstd1, rows: t, dim: c.dim,
                               eps: c.normEps, pool: pool)
        r.tock(.norm, t0)
        try r.project(l, [.q, .k, .v], x: b.xn1, rows: t, ys: [b.q, b.k, b.v])
        t0 = r.tick()
        try Ops.ropeForward(x: b.q, out: b.q, rows: t, heads: c.nHeads, headDim: c.headDim, nRot: c.ropeDims,
                            base: c.ropeBase, positions: r.positions, layout: c.ropeLayout, table: r.ropeTable,
                            pool: pool)
        try Ops.ropeForward(x: b.k, out: b.k, rows: t, heads: c.nKVHeads, headDim: c.headDim, nRot: c.ropeDims,
                            base: c.ropeBase, positions: r.positions, layout: c.ropeLayout, table: r.ropeTable,
                            pool: pool)
        r.tock(.rope, t0)
        try r.attention(l, b, rows: t)
        try r.project(l, [.o], x: b.att, rows: t, ys: [b.o])
        t0 = r.tick()
        try Ops.add(b.x, b.o, out: b.xMid, count: t * c.dim, pool: pool)
        r.tock(.residual, t0)
        // MLP.
        t0 = r.tick()
        try Ops.rmsNormForward(x: b.xMid, weight: L.ffnNorm.f32, out: b.xn2, rstd: b.rstd2, rows: t, dim: c.dim,
                               eps: c.normEps, pool: pool)
        r.tock(.norm, t0)
        try r.project(l, [.gate, .up], x: b.xn2, rows: t, ys: [b.gate, b.up])
        t0 = r.tick()
        try Ops.swigluForward(gate: b.gate, up: b.up, out: b.h, count: t * c.hiddenDim, pool: pool)
        r.tock(.activation, t0)
        try r.project(l, [.down], x: b.h, rows: t, ys: [b.down])
        t0 = r.tick()
        try Ops.add(b.xMid, b.down, out: b.xOut, count: t * c.dim, pool: pool)
        r.tock(.residual, t0)
    }
}

/// What inference and training supply to `LlamaBlock.forward`.
package protocol LlamaBlockRunner {
    var pool: ThreadPool { get }
    /// Position of every row ([T]).
    var positions: UnsafePointer<Int32> { get }
    /// Precomputed rotary angles for those positions, or nil to compute them per row.
    var ropeTable: RoPETable? { get }
    /// Where layer `layer`'s activations go.
    func buffers(layer: Int) -> LlamaBlock.Buffers
    /// ys[i] = x · W_ms[i]ᵀ plus the adapters of (layer, ms[i]), for modules that read the same x.
    /// - x: [T, IN]; ys[i]: [T, OUT of ms[i]].
    func project(_ layer: Int, _ ms: [LinearModule], x: UnsafePointer<Float>, rows: Int,
                 ys: [UnsafeMutablePointer<Float>]) throws(LKError)
    /// b.att = causal attention of b.q over the keys and values the rows see (b.k, b.v and, at inference,
    /// the cached positions before them).
    func attention(_ layer: Int, _ b: LlamaBlock.Buffers, rows: Int) throws(LKError)
    /// Start timing a step (0 when nothing is timed).
    func tick() -> Double
    /// End timing a step started at `t0`.
    func tock(_ step: LlamaBlock.Step, _ t0: Double)
}
