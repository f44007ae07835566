import LoRAKitCore
import LoRAKitKernels

/// Many sequences over one shared, read-only `LlamaModel`, each with its own KV cache positions and its
/// own adapter set (any mix of one adapter, stacked adapters with scales, or none; LoRA and plugin
/// types), evaluated together: one `step` runs every listed sequence's new tokens through
/// `LlamaBlock.forward` as the rows of one batch, so each base weight is read once per step for all
/// sequences (a decode step of 8 sequences is one 8-row product per weight), while attention runs per
/// sequence over its own cache and the LoRA terms run per group of rows that share an adapter set (two small products per group: A·x,
/// then B·(Ax)). Plugin adapters run per group around the shared base product, as in a `LlamaContext`:
/// a group whose plugin rewrites a module's input (IA³ on the MLP input) gets its rows of that input
/// rewritten before the one base product of the module, output points and added terms (IA³ on k/v, DoRA)
/// run on the group's rows after it, and LoRA terms read the rewritten input.
///
/// Results: every row gets the arithmetic a single-sequence `LlamaContext` (with the same `kvType`) gives it
/// when that context evaluates the same number of rows at once; batches of fewer than `Linear.smallRowLimit` rows (decode
/// steps of up to 11 sequences) use the mat-vec kernels, whose rows are bitwise those of a one-token
/// decode, and larger steps the f32 GEMM, so logits stay within the documented activation-quantization
/// tolerance of a `LlamaContext` running each sequence alone (`LlamaContext.activations`).
///
/// Not thread-safe: one caller at a time. Sequence ids are never reused within a context.
///
/// Shape legend: T = rows of a step (tokens of all listed sequences), C = model width, Q = H·D,
/// KV = Hkv·D, F = MLP width, V = vocabulary, P = `maxPositions`.
public final class BatchContext: @unchecked Sendable {
    public let model: LlamaModel
    /// Most sequences alive at once.
    public let maxSequences: Int
    /// Positions each sequence holds (prompt + generated).
    public let maxPositions: Int
    /// Rows evaluated per internal pass (a step with more rows is split; results are the same).
    public let batchCapacity: Int
    public let pool: ThreadPool
    /// Element type of the KV caches (as `LlamaContext.kvType`): f32, or f16 (half the memory per position
    /// and half the bytes a decoded token reads; keys and values rounded to f16 as they are stored).
    public let kvType: KVCacheType
    /// How the linear layers quantize their input for quantized weights in small batches (as
    /// `LlamaContext.activations`; same default).
    public var activations: ActivationQuantization = LlamaContext.defaultActivations
    /// When set, every step adds its time per part (`DecodeProfile`: `tokens` counts the rows of all
    /// sequences, `evaluations` the steps). Not thread-safe, as the context.
    public var profile: DecodeProfile?
    @inline(__always) func tick() -> Double { profile == nil ? 0 : monotonicSeconds() }
    @inline(__always) func tock(_ part: DecodeProfile.Part, _ t0: Double) { profile?.add(part, t0) }

    /// One live sequence.
    struct Sequence {
        let slot: Int
        var position: Int
        var attachments: [(adapter: AnyAdapter, scale: Float)]
        /// LoRA entries per (layer, module), in attachment order.
        var stack: AdapterStack
        /// Plugin adapters' instances per (layer, module) and their buffers; nil when none is attached.
        /// Never changed once made (`setAdapters` makes a new one), so a fork may share it.
        var plugins: PluginAttachments?
    }

    private var sequences: [Int: Sequence] = [:]
    private var freeSlots: [Int]
    private var nextID = 0

    // KV cache per slot: [nLayers, Hkv, P, D] for keys and values (`kvType`, pages touched only when used;
    // each key-value head's rows contiguous, `Ops.KVLayout.heads`).
    private let kCache: [Storage]
    private let vCache: [Storage]
    /// f16 caches: a prefill's keys and values converted to f32 (2·P·KV floats), made on first use.
    private var kvScratch: Storage?
    // Activations for up to `batchCapacity` rows.
    private let x: Storage        // [T, C] residual stream
    private let xn: Storage       // [T, C] normed
    private let q: Storage        // [T, Q]
    private let k: Storage        // [T, KV] new keys (copied into each sequence's cache)
    private let v: Storage        // [T, KV] new values
    private let att: Storage      // [T, Q]
    private let hGate: Storage    // [T, F]
    private let hUp: Storage      // [T, F]
    private let tmpOut: Storage   // [T, max(C, Q, KV)]
    private var adapterWorkspace: Storage?
    /// A module's input with plugin input points applied to some groups' rows ([T, max(C, F)]), made on
    /// first use.
    private var pluginInput: Storage?
    /// Logits of up to 8 rows ([8, V]), allocated on first use.
    private var logitsBuffer: Storage?
    private var positions: [Int32]
    /// cos/sin of every rotary angle for positions 0..<maxPositions (the values `Ops.ropeForward` computes
    /// per row), so a step does not recompute them per row and per layer.
    private let ropeTable: RoPETable

    /// Create a context for up to `maxSequences` sequences (1...4096) of `maxPositions` positions each
    /// (default min(model context, 4096)), their KV caches holding `kvType` elements. The caches are
    /// reserved, not touched: memory grows with the positions actually used.
    public init(model: LlamaModel, maxSequences: Int, maxPositions: Int? = nil, threads: Int? = nil,
                kvType: KVCacheType = .f32) throws(LKError) {
        let c = model.config
        guard maxSequences >= 1, maxSequences <= 4096 else {
            throw .invalidArgument("maxSequences \(maxSequences) must be in 1...4096")
        }
        let n = maxPositions ?? min(c.contextLength, 4096)
        guard n >= 1, n <= c.contextLength else {
            throw .invalidArgument("maxPositions \(n) must be in 1...\(c.contextLength) (the model's context length)")
        }
        if let t = threads, t < 1 || t > 512 { throw .invalidArgument("threads \(t) must be in 1...512") }
        let perSlot = try checkedProduct([c.nLayers, n, c.kvDim, kvType.bytes], what: "batch KV cache")
        _ = try checkedProduct([perSlot, 2, maxSequences], what: "batch KV cache")
        self.model = model
        self.maxSequences = maxSequences
        self.maxPositions = n
        self.kvType = kvType
        self.pool = ThreadPool(threads: threads ?? ThreadPool.hardwareConcurrency)
        self.batchCapacity = 512
        var ks: [Storage] = [], vs: [Storage] = []
        for _ in 0..<maxSequences {
            ks.append(try Storage(lazyZeroedBytes: perSlot))
            vs.append(try Storage(lazyZeroedBytes: perSlot))
        }
        kCache = ks
        vCache = vs
        freeSlots = Array((0..<maxSequences).reversed())
        let b = batchCapacity
        x = try Storage(lazyZeroedBytes: b * c.dim * 4)
        xn = try Storage(lazyZeroedBytes: b * c.dim * 4)
        q = try Storage(lazyZeroedBytes: b * c.qDim * 4)
        k = try Storage(lazyZeroedBytes: b * c.kvDim * 4)
        v = try Storage(lazyZeroedBytes: b * c.kvDim * 4)
        att = try Storage(lazyZeroedBytes: b * c.qDim * 4)
        hGate = try Storage(lazyZeroedBytes: b * c.hiddenDim * 4)
        hUp = try Storage(lazyZeroedBytes: b * c.hiddenDim * 4)
        tmpOut = try Storage(lazyZeroedBytes: b * max(c.dim, c.kvDim, c.qDim) * 4)
        positions = [Int32](repeating: 0, count: b)
        ropeTable = try RoPETable(nRot: c.ropeDims, base: c.ropeBase, positions: n)
    }

    // MARK: Sequences

    /// Ids of the live sequences, ascending.
    public var activeSequences: [Int] { sequences.keys.sorted() }

    /// A new empty sequence (position 0, no adapters); its id. `.limit` when `maxSequences` are alive.
    public func addSequence() throws(LKError) -> Int {
        guard let slot = freeSlots.popLast() else {
            throw .limit("addSequence: all \(maxSequences) sequences of the batch context are in use (remove one first)")
        }
        let id = nextID
        nextID += 1
        sequences[id] = Sequence(slot: slot, position: 0, attachments: [],
                                 stack: AdapterStack(nLayers: model.config.nLayers), plugins: nil)
        return id
    }

    /// Remove a sequence (its cache slot becomes free).
    public func removeSequence(_ id: Int) throws(LKError) {
        let s = try sequence(id, "removeSequence")
        sequences[id] = nil
        freeSlots.append(s.slot)
    }

    /// A new sequence with a copy of `id`'s cached positions and its adapter set (scales included); its id.
    public func fork(_ id: Int) throws(LKError) -> Int {
        let s = try sequence(id, "fork")
        guard let slot = freeSlots.popLast() else {
            throw .limit("fork: all \(maxSequences) sequences of the batch context are in use (remove one first)")
        }
        let c = model.config
        if s.position > 0 {
            let eb = kvType.bytes, bytes = s.position * c.headDim * eb
            for l in 0..<c.nLayers {
                for g in 0..<c.nKVHeads {
                    let off = g * maxPositions * c.headDim * eb
                    (cacheK(slot, l) + off).copyMemory(from: cacheK(s.slot, l) + off, byteCount: bytes)
                    (cacheV(slot, l) + off).copyMemory(from: cacheV(s.slot, l) + off, byteCount: bytes)
                }
            }
        }
        let nid = nextID
        nextID += 1
        sequences[nid] = Sequence(slot: slot, position: s.position, attachments: s.attachments, stack: s.stack,
                                  plugins: s.plugins)
        return nid
    }

    /// Drop `id`'s cached positions from `position` on (0 ≤ position ≤ its current position).
    public func truncate(_ id: Int, to position: Int) throws(LKError) {
        let s = try sequence(id, "truncate")
        guard position >= 0, position <= s.position else {
            throw .invalidArgument("truncate: position \(position) of sequence \(id) outside 0...\(s.position)")
        }
        sequences[id]!.position = position
    }

    /// Positions cached for `id`.
    public func position(of id: Int) throws(LKError) -> Int { try sequence(id, "position").position }

    // MARK: Adapters

    /// Set `id`'s adapters (LoRA and plugin types, each with its multiplier; [] = none). LoRA adapters
    /// add their terms in this order; plugin adapters sit at their points of each module in this order
    /// (see `PluginAttachments.project`), as when attached to a `LlamaContext` in the same order. Checks
    /// every adapter against the model and every scale (finite), and refuses the same adapter twice; on
    /// error nothing changes. Other sequences are not touched. Adapters are shared, not copied.
    public func setAdapters(_ adapters: [(adapter: AnyAdapter, scale: Float)], for id: Int) throws(LKError) {
        _ = try sequence(id, "setAdapters")
        var stack = AdapterStack(nLayers: model.config.nLayers)
        var plugins: PluginAttachments? = nil
        for (i, e) in adapters.enumerated() {
            guard e.scale.isFinite else {
                throw .invalidArgument("setAdapters: adapter \(i) (\(e.adapter.name)): scale \(e.scale) is not finite")
            }
            guard !adapters[..<i].contains(where: { $0.adapter.same(as: e.adapter) }) else {
                throw .invalidArgument("setAdapters: adapter \(i) (\(e.adapter.name)) is listed twice (one entry per adapter; scales add up in one)")
            }
            try e.adapter.check(against: model)
            switch e.adapter {
            case .lora(let a):
                let mods = try a.modules(for: model.config.ropeLayout)
                for key in a.keys {
                    stack.append(key.layer, key.module, AdapterStack.Entry(adapter: mods[key]!, scale: e.scale))
                }
            case .plugin(let p):
                if plugins == nil { plugins = PluginAttachments(nLayers: model.config.nLayers) }
                try plugins!.attach(p, scale: e.scale)
            }
        }
        sequences[id]!.attachments = adapters
        sequences[id]!.stack = stack
        sequences[id]!.plugins = plugins
    }

    /// `setAdapters` for LoRA adapters only.
    @_disfavoredOverload
    public func setAdapters(_ adapters: [(adapter: LoRAAdapter, scale: Float)], for id: Int) throws(LKError) {
        try setAdapters(adapters.map { (adapter: AnyAdapter.lora($0.adapter), scale: $0.scale) }, for: id)
    }

    /// `id`'s adapters and their scales, in order.
    public func adapters(of id: Int) throws(LKError) -> [(adapter: AnyAdapter, scale: Float)] {
        try sequence(id, "adapters").attachments
    }

    // MARK: Step

    /// One step: every listed sequence appends its tokens at its next positions (prefill several, or
    /// decode one). Each base weight is read once for all rows of the step (per internal pass of up to
    /// `batchCapacity` rows). Returns the logits of each listed sequence's last token ([V] floats each),
    /// in input order. Errors (unknown or repeated id, empty token list, token id outside the vocabulary,
    /// overflow of `maxPositions`) are raised before anything is computed; on any error every sequence
    /// keeps its position.
    public func step(_ inputs: [(sequence: Int, tokens: [Int32])]) throws(LKError) -> [[Float]] {
        let c = model.config
        guard !inputs.isEmpty else { throw .invalidArgument("step: no sequences given") }
        var seen = Set<Int>()
        for (i, input) in inputs.enumerated() {
            let s = try sequence(input.sequence, "step: input \(i)")
            guard seen.insert(input.sequence).inserted else {
                throw .invalidArgument("step: sequence \(input.sequence) is listed twice (inputs \(inputs.firstIndex { $0.sequence == input.sequence }!) and \(i))")
            }
            guard !input.tokens.isEmpty else {
                throw .invalidArgument("step: input \(i) (sequence \(input.sequence)) has no tokens")
            }
            guard input.tokens.count <= maxPositions - s.position else {
                throw .invalidArgument("step: input \(i): \(input.tokens.count) tokens at position \(s.position) overflow sequence \(input.sequence)'s \(maxPositions) positions")
            }
            for (j, t) in input.tokens.enumerated() where t < 0 || Int(t) >= c.vocabSize {
                throw .invalidArgument("step: input \(i) (sequence \(input.sequence)): token id \(t) at index \(j) is outside the vocabulary of \(c.vocabSize)")
            }
        }
        // Sequences with the same adapter set side by side, so that their rows form one LoRA group.
        var groupOf: [Int] = []
        for (i, input) in inputs.enumerated() {
            let a = sequences[input.sequence]!.attachments
            let g = inputs[..<i].firstIndex { BatchContext.sameAdapters(sequences[$0.sequence]!.attachments, a) } ?? i
            groupOf.append(g)
        }
        let order = inputs.indices.sorted { (groupOf[$0], $0) < (groupOf[$1], $1) }
        let saved = inputs.map { sequences[$0.sequence]!.position }
        let w0 = tick(), h0 = pool.handOutCount
        var out = [[Float]](repeating: [], count: inputs.count)
        // Passes of up to `batchCapacity` rows; a long input may span several.
        var cursor = 0          // index into `order`
        var offset = 0          // tokens of inputs[order[cursor]] already done
        do throws(LKError) {
            while cursor < order.count {
                var segs: [Segment] = []
                var rows = 0
                while cursor < order.count && rows < batchCapacity {
                    let i = order[cursor]
                    let toks = inputs[i].tokens
                    let n = min(toks.count - offset, batchCapacity - rows)
                    let s = sequences[inputs[i].sequence]!
                    segs.append(Segment(input: i, id: inputs[i].sequence, slot: s.slot, row: rows, rows: n,
                                        start: s.position, tokenOffset: offset, last: offset + n == toks.count))
                    rows += n
                    offset += n
                    if offset == toks.count { cursor += 1; offset = 0 }
                }
                try pass(segs, rows: rows, inputs: inputs, out: &out)
            }
        } catch {
            for (i, input) in inputs.enumerated() { sequences[input.sequence]?.position = saved[i] }
            throw error
        }
        if let p = profile {
            p.wallSeconds += monotonicSeconds() - w0
            p.tokens += inputs.reduce(0) { $0 + $1.tokens.count }
            p.evaluations += 1
            p.handOuts += pool.handOutCount - h0
        }
        return out
    }

    /// One listed sequence's rows within a pass.
    struct Segment {
        let input: Int, id: Int, slot: Int
        /// First row in the pass and row count.
        let row: Int, rows: Int
        /// Cache position of the first row.
        let start: Int
        /// Index of the first row's token in the input.
        let tokenOffset: Int
        /// Whether the input's last token is in this segment.
        let last: Bool
    }

    /// Embedding → blocks → (for segments holding an input's last token) final norm and head.
    private func pass(_ segs: [Segment], rows t: Int, inputs: [(sequence: Int, tokens: [Int32])],
                      out: inout [[Float]]) throws(LKError) {
        let c = model.config
        var ids = [Int32](repeating: 0, count: t)
        for s in segs {
            for r in 0..<s.rows {
                ids[s.row + r] = inputs[s.input].tokens[s.tokenOffset + r]
                positions[s.row + r] = Int32(s.start + r)
            }
        }
        var t0 = tick()
        try ids.withUnsafeBufferPointer { (b: UnsafeBufferPointer<Int32>) throws(LKError) in
            try Ops.embeddingForward(table: UnsafeRawPointer(model.tokenEmbedding.rawPointer),
                                     dtype: model.tokenEmbedding.dtype, vocab: c.vocabSize, dim: c.dim,
                                     ids: b.baseAddress!, rows: t, out: f(x), pool: pool)
        }
        tock(.embedding, t0)
        let groups = adapterGroups(segs)
        try positions.withUnsafeBufferPointer { (pos: UnsafeBufferPointer<Int32>) throws(LKError) in
            let runner = Runner(ctx: self, positions: pos.baseAddress!, segs: segs, groups: groups)
            for l in 0..<c.nLayers { try LlamaBlock.forward(runner, layer: l, rows: t, model: model) }
        }
        for s in segs { sequences[s.id]!.position = s.start + s.rows }
        // Logits of the last rows: gathered, normed, then the head (int16, as LlamaContext) in groups of
        // at most 8 rows, the mat-vec kernel's row block, so each row is bitwise a one-row head product.
        let lasts = segs.filter(\.last)
        if lasts.isEmpty { return }
        t0 = tick()
        defer { tock(.head, t0) }
        let xg = f(xn), xs = f(tmpOut), xr = f(x)
        for (j, s) in lasts.enumerated() {
            (xg + j * c.dim).update(from: xr + (s.row + s.rows - 1) * c.dim, count: c.dim)
        }
        try Ops.rmsNormForward(x: xg, weight: model.outputNorm.f32, out: xs, rstd: nil, rows: lasts.count,
                               dim: c.dim, eps: c.normEps, pool: pool)
        if logitsBuffer == nil { logitsBuffer = try Storage(lazyZeroedBytes: 8 * c.vocabSize * 4) }
        let logits = f(logitsBuffer!)
        var j0 = 0
        while j0 < lasts.count {
            let n = min(8, lasts.count - j0)
            try Linear.forward(x: UnsafePointer(xs + j0 * c.dim), rows: n, weight: model.output, y: logits,
                               pool: pool, activations: .int16)
            for r in 0..<n {
                out[lasts[j0 + r].input] = Array(UnsafeBufferPointer(start: logits + r * c.vocabSize, count: c.vocabSize))
            }
            j0 += n
        }
    }

    /// Runs of consecutive segments with the same (adapter, scale) list; the layer/module entries are
    /// looked up per projection (an adapter may leave modules out).
    private func adapterGroups(_ segs: [Segment]) -> [Range<Int>] {
        var runs: [Range<Int>] = []
        var i = 0
        while i < segs.count {
            var j = i + 1
            let a = sequences[segs[i].id]!.attachments
            while j < segs.count && BatchContext.sameAdapters(sequences[segs[j].id]!.attachments, a) { j += 1 }
            if !a.isEmpty { runs.append(i..<j) }
            i = j
        }
        return runs
    }

    static func sameAdapters(_ a: [(adapter: AnyAdapter, scale: Float)],
                             _ b: [(adapter: AnyAdapter, scale: Float)]) -> Bool {
        a.count == b.count && zip(a, b).allSatisfy { $0.adapter.same(as: $1.adapter) && $0.scale == $1.scale }
    }

    /// First row and row count of a run of segments.
    fileprivate func span(_ run: Range<Int>, _ segs: [Segment]) -> (row: Int, rows: Int) {
        let r0 = segs[run.lowerBound].row
        return (r0, segs[run.upperBound - 1].row + segs[run.upperBound - 1].rows - r0)
    }

    /// The plugin attachments of a run's sequences (nil: none).
    fileprivate func plugins(_ run: Range<Int>, _ segs: [Segment]) -> PluginAttachments? {
        sequences[segs[run.lowerBound].id]!.plugins
    }

    /// Groups of at most this many rows take part in one hand-out of all of a projection's adapter
    /// products to the thread pool (see `applyAdapters`); larger groups let each product use the pool.
    static let taskParallelRows = 16

    /// ys[i] += each row's adapter terms for (layer, ms[i]), all modules reading x: one task per (module,
    /// run of segments with the same adapter set), applying that run's entries in order over its rows at
    /// once (for LoRA: A·x, then B·(Ax)). When every run is small (decode steps) and there are at least as
    /// many tasks as participants, the tasks are dealt round-robin to the thread pool in one hand-out —
    /// each task on one participant, whose own pool calls then run inline — so that eight sequences with
    /// eight adapters cost two thread hand-outs per projection, not one serial product per sequence.
    /// Otherwise tasks run one after another and each product may use the pool. Each row's result is the
    /// same either way (every product runs the same operations whichever thread runs it).
    fileprivate func applyAdapters(_ layer: Int, _ ms: [LinearModule], x: UnsafePointer<Float>,
                                   ys: [UnsafeMutablePointer<Float>], segs: [Segment], runs: [Range<Int>]) throws(LKError) {
        if runs.isEmpty { return }
        struct Task {
            let list: [AdapterStack.Entry]
            let x: UnsafePointer<Float>
            let y: UnsafeMutablePointer<Float>
            let rows: Int
            /// Offset of the task's workspace in floats.
            let workspace: Int
        }
        var tasks: [Task] = []
        var floats = 0
        for (m, y) in zip(ms, ys) {
            let (nOut, nIn) = m.shape(model.config)
            for run in runs {
                let list = sequences[segs[run.lowerBound].id]!.stack.at(layer, m)
                if list.isEmpty { continue }
                let (r0, n) = span(run, segs)
                tasks.append(Task(list: list, x: x + r0 * nIn, y: y + r0 * nOut, rows: n, workspace: floats))
                let need = list.reduce(1) { max($0, $1.adapter.workspaceFloats(rows: n)) }
                floats += (need + 15) & ~15     // 64-byte apart: no two participants share a cache line
            }
        }
        if tasks.isEmpty { return }
        if adapterWorkspace == nil || adapterWorkspace!.byteCount < floats * 4 {
            adapterWorkspace = try Storage(lazyZeroedBytes: floats * 4)
        }
        let ws = f(adapterWorkspace!)
        let together = tasks.count >= pool.activeCount && pool.activeCount > 1
            && tasks.allSatisfy { $0.rows <= BatchContext.taskParallelRows }
        if !together {
            for t in tasks {
                for e in t.list {
                    try e.adapter.forward(x: t.x, rows: t.rows, y: t.y, scale: e.scale, workspace: ws + t.workspace,
                                          pool: pool)
                }
            }
            return
        }
        // First error by task index (each slot written by the one participant running that task).
        var errors = [LKError?](repeating: nil, count: tasks.count)
        let pool = self.pool
        tasks.withUnsafeBufferPointer { tb in
            errors.withUnsafeMutableBufferPointer { eb in
                pool.run(maxTasks: tb.count) { idx, cnt in
                    var i = idx
                    while i < tb.count {
                        let t = tb[i]
                        do throws(LKError) {
                            for e in t.list {
                                try e.adapter.forward(x: t.x, rows: t.rows, y: t.y, scale: e.scale,
                                                      workspace: ws + t.workspace, pool: pool)
                            }
                        } catch {
                            eb[i] = error
                        }
                        i += cnt
                    }
                }
            }
        }
        if let e = errors.lazy.compactMap({ $0 }).first { throw e }
    }

    // MARK: Helpers

    /// `pluginInput`, made on first use.
    fileprivate func pluginInputBuffer() throws(LKError) -> UnsafeMutablePointer<Float> {
        if pluginInput == nil {
            let c = model.config
            pluginInput = try Storage(lazyZeroedBytes: batchCapacity * max(c.dim, c.hiddenDim) * 4)
        }
        return f(pluginInput!)
    }

    private func sequence(_ id: Int, _ what: String) throws(LKError) -> Sequence {
        guard let s = sequences[id] else {
            throw .invalidArgument("\(what): no sequence \(id) in the batch context (live: \(activeSequences.map(String.init).joined(separator: ", ")))")
        }
        return s
    }

    @inline(__always) fileprivate func f(_ s: Storage) -> UnsafeMutablePointer<Float> {
        s.base.assumingMemoryBound(to: Float.self)
    }

    fileprivate func cacheK(_ slot: Int, _ layer: Int) -> UnsafeMutableRawPointer {
        kCache[slot].base + layer * maxPositions * model.config.kvDim * kvType.bytes
    }

    fileprivate func cacheV(_ slot: Int, _ layer: Int) -> UnsafeMutableRawPointer {
        vCache[slot].base + layer * maxPositions * model.config.kvDim * kvType.bytes
    }

    /// Scratch for an f16 cache's prefills (nil for f32 or when no sequence prefills
    /// `Ops.attentionBlockedMinRows` rows or more).
    fileprivate func prefillScratch(_ segs: [Segment]) throws(LKError) -> UnsafeMutablePointer<Float>? {
        guard kvType == .f16, segs.contains(where: { $0.rows >= Ops.attentionBlockedMinRows }) else { return nil }
        if kvScratch == nil { kvScratch = try Storage(lazyZeroedBytes: 2 * maxPositions * model.config.kvDim * 4) }
        return f(kvScratch!)
    }

    /// The batch's side of `LlamaBlock`: all rows through each base product at once, adapters per
    /// group of rows, k/v copied into each sequence's cache, attention per sequence.
    private struct Runner: LlamaBlockRunner {
        unowned let ctx: BatchContext
        let positions: UnsafePointer<Int32>
        let segs: [Segment]
        let groups: [Range<Int>]
        var pool: ThreadPool { ctx.pool }
        var ropeTable: RoPETable? { ctx.ropeTable }

        func buffers(layer l: Int) -> LlamaBlock.Buffers {
            let x = ctx.f(ctx.x), xn = ctx.f(ctx.xn), gate = ctx.f(ctx.hGate), tmp = ctx.f(ctx.tmpOut)
            return LlamaBlock.Buffers(x: x, xn1: xn, rstd1: nil, q: ctx.f(ctx.q), k: ctx.f(ctx.k), v: ctx.f(ctx.v),
                                      att: ctx.f(ctx.att), o: tmp, xMid: x, xn2: xn, rstd2: nil, gate: gate,
                                      up: ctx.f(ctx.hUp), h: gate, down: tmp, xOut: x)
        }

        func project(_ l: Int, _ ms: [LinearModule], x: UnsafePointer<Float>, rows: Int,
                     ys: [UnsafeMutablePointer<Float>]) throws(LKError) {
            let L = ctx.model.layers[l]
            // Runs with plugin instances on one of these modules (none: the shared base products, then LoRA).
            let withPlugins = groups.filter { run in
                guard let p = ctx.plugins(run, segs) else { return false }
                return ms.contains { !p.at(l, $0).isEmpty }
            }
            if withPlugins.isEmpty {
                var t0 = ctx.tick()
                try Linear.forwardShared(x: x, rows: rows, weights: ms.map { L.weight($0) }, ys: ys, pool: ctx.pool,
                                         activations: ctx.activations)
                ctx.tock(.baseProducts, t0)
                t0 = ctx.tick()
                try ctx.applyAdapters(l, ms, x: x, ys: ys, segs: segs, runs: groups)
                ctx.tock(.adapters, t0)
                return
            }
            // With plugin instances: base products and adapter terms interleave; all of it counts as adapters.
            let t0 = ctx.tick()
            defer { ctx.tock(.adapters, t0) }
            let c = ctx.model.config
            let inputPoint = withPlugins.contains { run in
                ms.contains { PluginAttachments.hasInputPoint(ctx.plugins(run, segs)!.at(l, $0)) }
            }
            if !inputPoint {
                // Output points and added terms on each run's rows after the shared base products.
                try Linear.forwardShared(x: x, rows: rows, weights: ms.map { L.weight($0) }, ys: ys, pool: ctx.pool,
                                         activations: ctx.activations)
                for (m, y) in zip(ms, ys) { try afterBase(l, m, runs: withPlugins, x: x, y: y) }
                try ctx.applyAdapters(l, ms, x: x, ys: ys, segs: segs, runs: groups)
                return
            }
            // A run rewrites a module's input: each module alone, over x with those runs' rows rewritten.
            for (m, y) in zip(ms, ys) {
                let (nOut, nIn) = m.shape(c)
                var xm = x
                let rewriting = withPlugins.filter { PluginAttachments.hasInputPoint(ctx.plugins($0, segs)!.at(l, m)) }
                if !rewriting.isEmpty {
                    let xb = try ctx.pluginInputBuffer()
                    xb.update(from: x, count: rows * nIn)
                    for run in rewriting {
                        let p = ctx.plugins(run, segs)!
                        let (r0, n) = ctx.span(run, segs)
                        try p.applyInput(p.at(l, m), x: x + r0 * nIn, rows: n, inFeatures: nIn, outFeatures: nOut,
                                         into: xb + r0 * nIn, pool: ctx.pool)
                    }
                    xm = UnsafePointer(xb)
                }
                try Linear.forward(x: xm, rows: rows, weight: L.weight(m), y: y, pool: ctx.pool,
                                   activations: ctx.activations)
                try afterBase(l, m, runs: withPlugins, x: xm, y: y)
                try ctx.applyAdapters(l, [m], x: xm, ys: [y], segs: segs, runs: groups)
            }
        }

        /// The output points and added terms of each run's plugin instances on (l, m), over the run's rows
        /// of y = x·Wᵀ (x: the module input, after any input points).
        func afterBase(_ l: Int, _ m: LinearModule, runs: [Range<Int>], x: UnsafePointer<Float>,
                       y: UnsafeMutablePointer<Float>) throws(LKError) {
            let (nOut, nIn) = m.shape(ctx.model.config)
            for run in runs {
                let p = ctx.plugins(run, segs)!, list = p.at(l, m)
                if list.isEmpty { continue }
                let (r0, n) = ctx.span(run, segs)
                try p.applyAfterBase(list, x: x + r0 * nIn, rows: n, inFeatures: nIn, outFeatures: nOut,
                                     y: y + r0 * nOut, pool: ctx.pool)
            }
        }

        /// k/v rows into each sequence's cache, then attention for all sequences (decode rows of every
        /// sequence in one hand-out to the thread pool; each output as `Ops.attentionForward` gives it).
        func attention(_ l: Int, _ b: LlamaBlock.Buffers, rows t: Int) throws(LKError) {
            let c = ctx.model.config
            let t0 = ctx.tick()
            defer { ctx.tock(.attention, t0) }
            var seqs: [Ops.AttentionSequence] = []
            seqs.reserveCapacity(segs.count)
            let layout = Ops.KVLayout.heads(capacity: ctx.maxPositions, headDim: c.headDim)
            for s in segs {
                let kc = ctx.cacheK(s.slot, l), vc = ctx.cacheV(s.slot, l)
                Ops.storeKV(b.k + s.row * c.kvDim, rows: s.rows, kvHeads: c.nKVHeads, headDim: c.headDim, into: kc,
                            type: ctx.kvType, layout: layout, position: s.start)
                Ops.storeKV(b.v + s.row * c.kvDim, rows: s.rows, kvHeads: c.nKVHeads, headDim: c.headDim, into: vc,
                            type: ctx.kvType, layout: layout, position: s.start)
                seqs.append(Ops.AttentionSequence(q: b.q + s.row * c.qDim, k: kc, v: vc, layout: layout,
                                                  out: b.att + s.row * c.qDim, rows: s.rows, startPos: s.start))
            }
            try Ops.attentionForwardMany(seqs, type: ctx.kvType, heads: c.nHeads, kvHeads: c.nKVHeads, headDim: c.headDim,
                                         scratch: ctx.prefillScratch(segs), pool: ctx.pool)
        }

        @inline(__always) func tick() -> Double { ctx.tick() }
        @inline(__always) func tock(_ step: LlamaBlock.Step, _ t0: Double) { ctx.tock(step.part, t0) }
    }
}
