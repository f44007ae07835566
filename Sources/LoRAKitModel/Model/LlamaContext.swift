import LoRAKitCore
import LoRAKitKernels
import LoRAKitFormats
import LoRAKitTokenizer
import LoRAKitTemplates

/// An inference context over a shared, read-only `LlamaModel`: KV cache, thread pool, activation
/// buffers and the adapters attached to it. One context is used by one thread at a time; many contexts
/// may share one model concurrently.
///
/// Shape legend: T = tokens in the batch being evaluated, P = positions already in the cache,
/// C = model width, H = query heads, Hkv = key/value heads, D = head dim, KV = Hkv·D, F = MLP width,
/// V = vocabulary.
#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

public final class LlamaContext: @unchecked Sendable {
    public let model: LlamaModel
    public let pool: ThreadPool
    /// Maximum positions (prompt + generated) this context holds.
    public let maxPositions: Int
    /// Tokens evaluated per internal step (longer inputs are split).
    public let batchCapacity: Int
    /// Positions currently in the KV cache.
    public private(set) var position = 0
    /// How the KV cache stores keys and values (f32 by default; f16 halves its memory and what a decoded
    /// token reads from it).
    public let kvType: KVCacheType
    /// How the linear layers quantize their input when they meet quantized weights in decode (one token)
    /// and small batches (below `Linear.smallRowLimit` rows; larger batches compute in f32). `.int16`
    /// keeps SmolLM2-135M's decode logits within 0.015 of f32 math (greedy output identical to
    /// transformers); `.int8`, llama.cpp's scheme, is faster but moves them by ~0.6 (up to 1.4), enough to
    /// change greedy continuations at top-2 margins below ~1. The output head always uses `.int16`.
    /// The initial value is `.int16`, or `.int8` if the environment variable LORAKIT_ACTIVATIONS is `int8`.
    public var activations: ActivationQuantization = LlamaContext.defaultActivations

    static let defaultActivations: ActivationQuantization = {
        guard let v = getenv("LORAKIT_ACTIVATIONS") else { return .int16 }
        return String(cString: v) == "int8" ? .int8 : .int16
    }()
    /// Adapters applied to every linear layer of this context.
    public var adapters: AdapterStack {
        didSet {
            // The workspace is kept (`project` grows it when the new stack needs more), so attaching or
            // swapping adapters does not make the next forward allocate and fault in fresh pages.
            adapterWorkspaceFloats = adapters.workspaceFloats(rows: batchCapacity)
        }
    }
    /// LoRA adapters attached with `attach`, in attachment order (their entries live in `adapters`).
    private var loraAttachments: [LoRAAttachment] = []
    /// Plugin adapters attached with `attach(plugin:)` (Plugins/PluginContext.swift).
    let plugins: PluginAttachments
    private var adapterWorkspaceFloats = 0

    // KV cache: per layer [Hkv, maxPositions, D] for keys and values (`kvType`, pages touched only when
    // used): each key-value head's rows contiguous (`Ops.KVLayout.heads`), so decode streams them.
    private let kCache: [Storage]
    private let vCache: [Storage]
    // The new rows' keys and values in f32 ([T, KV] each; stored into the cache after RoPE) and, with an
    // f16 cache, the f32 copy of a layer's cached keys and values that a long prefill's attention reads
    // ([2, maxPositions, KV]).
    private let kNew: Storage
    private let vNew: Storage
    private let kvScratch: Storage?
    // Activations for up to `batchCapacity` rows.
    private let x: Storage        // [T, C] residual stream
    private let xn: Storage       // [T, C] normed
    private let q: Storage        // [T, H·D]
    private let att: Storage      // [T, H·D]
    private let hGate: Storage    // [T, F]
    private let hUp: Storage      // [T, F]
    private let tmpOut: Storage   // [T, max(C, KV)]
    private var adapterWorkspace: Storage?
    private var positions: [Int32]
    /// cos/sin of every rotary angle for positions 0..<maxPositions (the values `Ops.ropeForward` computes
    /// per row), so that a decode step does not recompute them per layer.
    private let ropeTable: RoPETable
    /// When set, every evaluation adds its time per part (see `DecodeProfile`).
    public var profile: DecodeProfile?

    /// Create a context. `maxPositions` defaults to min(model context, 4096); `batch` to 512.
    public init(model: LlamaModel, maxPositions: Int? = nil, batch: Int = 512, threads: Int? = nil,
                kvType: KVCacheType = .f32) throws(LKError) {
        let c = model.config
        let n = maxPositions ?? min(c.contextLength, 4096)
        guard n >= 1, n <= c.contextLength else {
            throw .invalidArgument("context size \(n) must be in 1...\(c.contextLength) (the model's context length)")
        }
        guard batch >= 1, batch <= 65536 else { throw .invalidArgument("batch \(batch) must be in 1...65536") }
        if let t = threads, t < 1 || t > 512 { throw .invalidArgument("threads \(t) must be in 1...512") }
        self.model = model
        self.pool = ThreadPool(threads: threads ?? ThreadPool.hardwareConcurrency)
        self.maxPositions = n
        self.batchCapacity = min(batch, n)
        self.kvType = kvType
        self.adapters = AdapterStack(nLayers: c.nLayers)
        self.plugins = PluginAttachments(nLayers: c.nLayers)
        var ks: [Storage] = [], vs: [Storage] = []
        for _ in 0..<c.nLayers {
            ks.append(try Storage(lazyZeroedBytes: n * c.kvDim * kvType.bytes))
            vs.append(try Storage(lazyZeroedBytes: n * c.kvDim * kvType.bytes))
        }
        kCache = ks
        vCache = vs
        let b = batchCapacity
        kNew = try Storage(lazyZeroedBytes: b * c.kvDim * 4)
        vNew = try Storage(lazyZeroedBytes: b * c.kvDim * 4)
        kvScratch = kvType == .f32 ? nil : try Storage(lazyZeroedBytes: 2 * n * c.kvDim * 4)
        x = try Storage(lazyZeroedBytes: b * c.dim * 4)
        xn = try Storage(lazyZeroedBytes: b * c.dim * 4)
        q = try Storage(lazyZeroedBytes: b * c.qDim * 4)
        att = try Storage(lazyZeroedBytes: b * c.qDim * 4)
        hGate = try Storage(lazyZeroedBytes: b * c.hiddenDim * 4)
        hUp = try Storage(lazyZeroedBytes: b * c.hiddenDim * 4)
        tmpOut = try Storage(lazyZeroedBytes: b * max(c.dim, c.kvDim, c.qDim) * 4)
        positions = [Int32](repeating: 0, count: b)
        ropeTable = try RoPETable(nRot: c.ropeDims, base: c.ropeBase, positions: n)
    }

    @inline(__always) func tick() -> Double { profile == nil ? 0 : monotonicSeconds() }
    @inline(__always) func tock(_ part: DecodeProfile.Part, _ t0: Double) { profile?.add(part, t0) }

    /// Forget all cached positions (start a new sequence). Attached adapters stay.
    public func reset() { position = 0 }

    /// Drop cached positions from `newPosition` on (e.g. to re-evaluate after an edit).
    public func truncate(to newPosition: Int) throws(LKError) {
        guard newPosition >= 0, newPosition <= position else {
            throw .invalidArgument("truncate: position \(newPosition) outside 0...\(position)")
        }
        position = newPosition
    }

    /// What to return from `evaluate`.
    public enum LogitsRequest: Sendable { case none, last, all }

    /// The input of a batch: token ids, or caller-given embedding vectors ([T, C] f32, e.g. projected
    /// image features) that take the place of the token embedding lookup.
    public enum Input {
        case tokens([Int32])
        case embeddings(UnsafePointer<Float>, count: Int)

        var count: Int {
            switch self {
            case .tokens(let t): return t.count
            case .embeddings(_, let n): return n
            }
        }
    }

    /// Evaluate `input` at the next positions, appending to the KV cache, and return logits:
    /// `.last` → [V], `.all` → [T, V] row-major, `.none` → [].
    /// On error (bad token id, context overflow, non-finite embedding), the cache is left as it was.
    public func evaluate(_ input: Input, logits request: LogitsRequest = .last) throws(LKError) -> [Float] {
        let c = model.config
        let total = input.count
        guard total > 0 else { throw .invalidArgument("evaluate: empty input") }
        guard total <= maxPositions - position else {
            throw .invalidArgument("evaluate: \(total) tokens at position \(position) overflow the context of \(maxPositions) positions")
        }
        if case .tokens(let ids) = input {
            for (i, t) in ids.enumerated() where t < 0 || Int(t) >= c.vocabSize {
                throw .invalidArgument("evaluate: token id \(t) at index \(i) is outside the vocabulary of \(c.vocabSize)")
            }
        }
        if case .embeddings(let p, let n) = input {
            for i in 0..<(n * c.dim) where !p[i].isFinite {
                throw .invalidArgument("evaluate: embedding value at row \(i / c.dim), column \(i % c.dim) is not finite (\(p[i]))")
            }
        }
        let w0 = tick(), h0 = pool.handOutCount
        var out: [Float] = []
        if request == .all { out.reserveCapacity(total * c.vocabSize) }
        let start = position
        var done = 0
        do throws(LKError) {
            while done < total {
                let t = min(batchCapacity, total - done)
                var t0 = tick()
                switch input {
                case .tokens(let ids):
                    try ids.withUnsafeBufferPointer { (b: UnsafeBufferPointer<Int32>) throws(LKError) in
                        try Ops.embeddingForward(table: UnsafeRawPointer(model.tokenEmbedding.rawPointer),
                                                 dtype: model.tokenEmbedding.dtype, vocab: c.vocabSize, dim: c.dim,
                                                 ids: b.baseAddress! + done, rows: t, out: f(x), pool: pool)
                    }
                case .embeddings(let p, _):
                    f(x).update(from: p + done * c.dim, count: t * c.dim)
                }
                tock(.embedding, t0)
                try forwardLayers(rows: t)
                position += t
                done += t
                let isLast = done == total
                t0 = tick()
                switch request {
                case .none: break
                case .last where isLast:
                    out = [Float](repeating: 0, count: c.vocabSize)
                    try finalNorm(rows: t)
                    try out.withUnsafeMutableBufferPointer { (o: inout UnsafeMutableBufferPointer<Float>) throws(LKError) in
                        try Linear.forward(x: UnsafePointer(f(xn) + (t - 1) * c.dim), rows: 1, weight: model.output,
                                           y: o.baseAddress!, pool: pool, activations: .int16)
                    }
                case .last: break
                case .all:
                    try finalNorm(rows: t)
                    let base = out.count
                    out.append(contentsOf: repeatElement(0, count: t * c.vocabSize))
                    try out.withUnsafeMutableBufferPointer { (o: inout UnsafeMutableBufferPointer<Float>) throws(LKError) in
                        try Linear.forward(x: UnsafePointer(f(xn)), rows: t, weight: model.output,
                                           y: o.baseAddress! + base, pool: pool, activations: .int16)
                    }
                }
                tock(.head, t0)
            }
        } catch {
            position = start
            throw error
        }
        if let p = profile {
            p.wallSeconds += monotonicSeconds() - w0
            p.tokens += total
            p.evaluations += 1
            p.handOuts += pool.handOutCount - h0
        }
        return out
    }

    /// The normed final hidden states of the last evaluated batch chunk ([T, C], valid until the next
    /// call), for callers that compute the output head themselves in chunks (scoring, training).
    public func lastHidden(rows: Int) throws(LKError) -> UnsafePointer<Float> {
        try finalNorm(rows: rows)
        return UnsafePointer(f(xn))
    }

    @inline(__always) private func f(_ s: Storage) -> UnsafeMutablePointer<Float> {
        s.base.assumingMemoryBound(to: Float.self)
    }

    private func finalNorm(rows t: Int) throws(LKError) {
        let c = model.config
        try Ops.rmsNormForward(x: f(x), weight: model.outputNorm.f32, out: f(xn), rstd: nil, rows: t,
                               dim: c.dim, eps: c.normEps, pool: pool)
    }

    /// y = x · Wᵀ plus every attached adapter's term for (layer, module).
    private func project(_ layer: Int, _ m: LinearModule, x: UnsafePointer<Float>, rows: Int,
                         y: UnsafeMutablePointer<Float>) throws(LKError) {
        let w = model.layers[layer].weight(m)
        if !plugins.isEmpty {
            let list = plugins.at(layer, m)
            if !list.isEmpty {
                let (o, i) = m.shape(model.config)
                let t0 = tick()
                var inBase = 0.0
                try plugins.project(list, x: x, rows: rows, inFeatures: i, outFeatures: o, y: y, pool: pool,
                                    base: { (xin, yout) throws(LKError) in
                                        let b0 = tick()
                                        try Linear.forward(x: xin, rows: rows, weight: w, y: yout, pool: pool,
                                                           activations: activations)
                                        if profile != nil { inBase += monotonicSeconds() - b0 }
                                    },
                                    rest: { (xin, yout) throws(LKError) in
                                        try applyAdapters(layer, m, x: xin, rows: rows, y: yout)
                                    })
                if let p = profile {
                    p.add(.baseProducts, seconds: inBase)
                    p.add(.adapters, seconds: monotonicSeconds() - t0 - inBase)
                }
                return
            }
        }
        let t0 = tick()
        try Linear.forward(x: x, rows: rows, weight: w, y: y, pool: pool, activations: activations)
        tock(.baseProducts, t0)
        try applyAdapters(layer, m, x: x, rows: rows, y: y)
    }

    /// `project` for several modules that read the same x (q/k/v, gate/up): the base products in one
    /// call (for one token: one hand-out to the thread pool, x quantized once), then each module's
    /// adapters in the order of `ms`. Same results as one `project` per module.
    private func projectShared(_ layer: Int, _ ms: [LinearModule], x: UnsafePointer<Float>, rows: Int,
                               ys: [UnsafeMutablePointer<Float>]) throws(LKError) {
        // Plugin instances at the input point change what a module's base product reads: each module alone.
        // Output points and added terms (IA³ on k/v, DoRA) run after the shared base products.
        if !plugins.isEmpty && ms.contains(where: { PluginAttachments.hasInputPoint(plugins.at(layer, $0)) }) {
            for (m, y) in zip(ms, ys) { try project(layer, m, x: x, rows: rows, y: y) }
            return
        }
        let L = model.layers[layer]
        var t0 = tick()
        try Linear.forwardShared(x: x, rows: rows, weights: ms.map { L.weight($0) }, ys: ys, pool: pool,
                                 activations: activations)
        tock(.baseProducts, t0)
        for (m, y) in zip(ms, ys) {
            if !plugins.isEmpty {
                let list = plugins.at(layer, m)
                if !list.isEmpty {
                    let (o, i) = m.shape(model.config)
                    t0 = tick()
                    try plugins.applyAfterBase(list, x: x, rows: rows, inFeatures: i, outFeatures: o, y: y, pool: pool)
                    tock(.adapters, t0)
                }
            }
            try applyAdapters(layer, m, x: x, rows: rows, y: y)
        }
    }

    /// y += every attached adapter's term for (layer, module).
    private func applyAdapters(_ layer: Int, _ m: LinearModule, x: UnsafePointer<Float>, rows: Int,
                               y: UnsafeMutablePointer<Float>) throws(LKError) {
        let list = adapters.at(layer, m)
        if list.isEmpty { return }
        let t0 = tick()
        defer { tock(.adapters, t0) }
        let need = adapterWorkspaceFloats
        if adapterWorkspace == nil || adapterWorkspace!.byteCount < need * 4 {
            adapterWorkspace = try Storage(lazyZeroedBytes: max(need, 1) * 4)
        }
        let ws = f(adapterWorkspace!)
        for e in list {
            try e.adapter.forward(x: x, rows: rows, y: y, scale: e.scale, workspace: ws, pool: pool)
        }
    }

    /// Run all blocks on the `rows` embeddings in `x`, at positions `position ..< position + rows`:
    /// `LlamaBlock.forward` per layer, with the residual stream in place in `x`, k and v written to the
    /// cache, and attention over the cached positions.
    private func forwardLayers(rows t: Int) throws(LKError) {
        let p0 = position
        for i in 0..<t { positions[i] = Int32(p0 + i) }
        try positions.withUnsafeBufferPointer { (pos: UnsafeBufferPointer<Int32>) throws(LKError) in
            let runner = Runner(ctx: self, positions: pos.baseAddress!, start: p0)
            for l in 0..<model.config.nLayers { try LlamaBlock.forward(runner, layer: l, rows: t, model: model) }
        }
    }

    /// Inference's side of `LlamaBlock`: shared scratch buffers, the KV cache, decode-aware projections.
    private struct Runner: LlamaBlockRunner {
        unowned let ctx: LlamaContext
        let positions: UnsafePointer<Int32>
        /// Cache position of the first row.
        let start: Int
        var pool: ThreadPool { ctx.pool }
        var ropeTable: RoPETable? { ctx.ropeTable }

        func buffers(layer l: Int) -> LlamaBlock.Buffers {
            let x = ctx.f(ctx.x), xn = ctx.f(ctx.xn), gate = ctx.f(ctx.hGate), tmp = ctx.f(ctx.tmpOut)
            // k and v into kNew/vNew, stored into the cache by `attention`.
            let k = ctx.f(ctx.kNew), v = ctx.f(ctx.vNew)
            return LlamaBlock.Buffers(x: x, xn1: xn, rstd1: nil, q: ctx.f(ctx.q), k: k, v: v, att: ctx.f(ctx.att), o: tmp,
                                      xMid: x, xn2: xn, rstd2: nil, gate: gate, up: ctx.f(ctx.hUp), h: gate,
                                      down: tmp, xOut: x)
        }

        func project(_ l: Int, _ ms: [LinearModule], x: UnsafePointer<Float>, rows: Int,
                     ys: [UnsafeMutablePointer<Float>]) throws(LKError) {
            if ms.count == 1 {
                try ctx.project(l, ms[0], x: x, rows: rows, y: ys[0])
            } else {
                try ctx.projectShared(l, ms, x: x, rows: rows, ys: ys)
            }
        }

        func attention(_ l: Int, _ b: LlamaBlock.Buffers, rows t: Int) throws(LKError) {
            let c = ctx.model.config
            let t0 = ctx.tick()
            let kc = ctx.kCache[l].base, vc = ctx.vCache[l].base
            let layout = Ops.KVLayout.heads(capacity: ctx.maxPositions, headDim: c.headDim)
            Ops.storeKV(b.k, rows: t, kvHeads: c.nKVHeads, headDim: c.headDim, into: kc, type: ctx.kvType, layout: layout,
                        position: start)
            Ops.storeKV(b.v, rows: t, kvHeads: c.nKVHeads, headDim: c.headDim, into: vc, type: ctx.kvType, layout: layout,
                        position: start)
            try Ops.attentionForward(q: b.q, k: UnsafeRawPointer(kc), v: UnsafeRawPointer(vc), type: ctx.kvType,
                                     layout: layout, out: b.att, rows: t, keys: start + t, heads: c.nHeads,
                                     kvHeads: c.nKVHeads, headDim: c.headDim, startPos: start,
                                     scratch: ctx.kvScratch.map { ctx.f($0) }, pool: ctx.pool)
            ctx.tock(.attention, t0)
        }

        @inline(__always) func tick() -> Double { ctx.tick() }
        @inline(__always) func tock(_ step: LlamaBlock.Step, _ t0: Double) { ctx.tock(step.part, t0) }
    }
}

// MARK: - LoRA attachments

struct LoRAAttachment {
    let adapter: LoRAAdapter
    var scale: Float
    /// The `LinearAdapter` objects this attachment put into the stack.
    let ids: Set<ObjectIdentifier>
}

extension LlamaContext {
    /// Attach `adapter` with per-attachment multiplier `scale`: every (layer, module) it has adds
    /// `scale · s · B(A x)` after the adapters already attached. Validates the adapter against the model
    /// (sizes, shapes, finite values) and `scale` (finite); on error nothing changes. Attaching the same
    /// adapter twice is an error (use `setScale`). The adapter is shared, not copied: one adapter may be
    /// attached to many contexts at once. If its `rowLayout` differs from the model's, q/k B rows are
    /// permuted once per adapter and layout (cached in the adapter).
    public func attach(_ adapter: LoRAAdapter, scale: Float = 1) throws(LKError) {
        guard scale.isFinite else { throw .invalidArgument("attach \(adapter.name): scale \(scale) is not finite") }
        guard !loraAttachments.contains(where: { $0.adapter === adapter }) else {
            throw .invalidArgument("attach \(adapter.name): this adapter is already attached to the context (use setScale)")
        }
        try adapter.check(against: model)
        let mods = try adapter.modules(for: model.config.ropeLayout)
        var stack = adapters
        var ids = Set<ObjectIdentifier>()
        for k in adapter.keys {
            let m = mods[k]!
            stack.append(k.layer, k.module, AdapterStack.Entry(adapter: m, scale: scale))
            ids.insert(ObjectIdentifier(m))
        }
        loraAttachments.append(LoRAAttachment(adapter: adapter, scale: scale, ids: ids))
        adapters = stack
    }

    /// Detach `adapter` (error if it is not attached). The other adapters keep their order and scales.
    public func detach(_ adapter: LoRAAdapter) throws(LKError) {
        guard let i = loraAttachments.firstIndex(where: { $0.adapter === adapter }) else {
            throw .invalidArgument("detach \(adapter.name): the adapter is not attached to this context")
        }
        let ids = loraAttachments[i].ids
        loraAttachments.remove(at: i)
        adapters.removeAll { ids.contains(ObjectIdentifier($0.adapter)) }
    }

    /// Change the multiplier of an attached adapter (finite; 0 disables it without detaching).
    public func setScale(_ scale: Float, for adapter: LoRAAdapter) throws(LKError) {
        guard scale.isFinite else { throw .invalidArgument("setScale \(adapter.name): scale \(scale) is not finite") }
        guard let i = loraAttachments.firstIndex(where: { $0.adapter === adapter }) else {
            throw .invalidArgument("setScale \(adapter.name): the adapter is not attached to this context")
        }
        let ids = loraAttachments[i].ids
        loraAttachments[i].scale = scale
        adapters.setScale(scale) { ids.contains(ObjectIdentifier($0.adapter)) }
    }

    /// The attached LoRA adapters and their scales, in attachment order.
    public var attachedAdapters: [(adapter: LoRAAdapter, scale: Float)] {
        loraAttachments.map { ($0.adapter, $0.scale) }
    }

    /// Detach every LoRA adapter (other entries of `adapters`, e.g. plugin adapters, stay).
    public func detachAll() {
        let ids = loraAttachments.reduce(into: Set<ObjectIdentifier>()) { $0.formUnion($1.ids) }
        loraAttachments.removeAll()
        adapters.removeAll { ids.contains(ObjectIdentifier($0.adapter)) }
    }
}
