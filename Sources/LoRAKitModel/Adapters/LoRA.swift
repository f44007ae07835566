import LoRAKitCore
import LoRAKitKernels
import LoRAKitFormats
import LoRAKitTokenizer
import LoRAKitTemplates

/// LoRA adapters: the configuration (targets, ranks and alphas with their patterns) and a whole-model
/// adapter, the set of `LoRAModule`s made for one model.
///
/// Shape legend: r = adapter rank. For a frozen W [OUT, IN]: ΔW = s·B·A with A [r, IN], B [OUT, r],
/// s = alpha/r (alpha/√r with rsLoRA). Unmerged forward: y = W x + Σ_i scale_i · s_i · B_i (A_i x).

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

    /// Scaling of (layer, module) after the patterns (`LoRAModule.scaling`'s rule).
    public func scaling(layer: Int, module: LinearModule) -> Float {
        LoRAModule.scaling(rank: rank(layer: layer, module: module), alpha: alpha(layer: layer, module: module),
                           rsLoRA: useRSLoRA)
    }

    /// Checks ranges (`LoRAModule`'s rules for ranks and alphas); errors name the field.
    public func validate() throws(LKError) {
        try LoRAModule.checkRank(rank, "LoRA config: rank")
        try LoRAModule.checkAlpha(alpha, "LoRA config: alpha")
        guard !targets.isEmpty else { throw .invalidArgument("LoRA config: no target modules") }
        guard dropout.isFinite, dropout >= 0, dropout < 1 else {
            throw .invalidArgument("LoRA config: dropout \(dropout) must be in [0, 1)")
        }
        if let ls = layers {
            guard !ls.isEmpty else { throw .invalidArgument("LoRA config: empty layer list (use nil for all layers)") }
            for l in ls where l < 0 || l > 1 << 20 { throw .invalidArgument("LoRA config: layer \(l) out of range") }
        }
        for (k, r) in rankPattern.sorted(by: { $0.key < $1.key }) {
            try LoRAModule.checkRank(r, "LoRA config: rank_pattern[\"\(k)\"] =")
        }
        for (k, a) in alphaPattern.sorted(by: { $0.key < $1.key }) {
            try LoRAModule.checkAlpha(a, "LoRA config: alpha_pattern[\"\(k)\"] =")
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

extension LoRAConfig {
    /// The config that describes an adapter's `modules`: the most common rank and alpha (ties: the
    /// smallest) as `rank`/`alpha`, every other module's as a full-name `rankPattern`/`alphaPattern`
    /// entry (`model.layers.N.self_attn.q_proj`), the targeted modules and layers (`layers` nil when all
    /// `nLayers` layers are, or when `nLayers` is nil), and the modules' rsLoRA rule.
    public init(describing modules: [LoRAModule], nLayers: Int?, dropout: Float = 0) {
        let rank = mostCommon(modules.map(\.rank)) ?? 8
        self.init(rank: rank, alpha: mostCommon(modules.map(\.alpha)) ?? Float(rank),
                  useRSLoRA: modules.first?.rsLoRA ?? false, targets: Set(modules.map(\.module)), dropout: dropout)
        let layerSet = Set(modules.map(\.layer))
        if let n = nLayers, layerSet.count != n { layers = layerSet.sorted() }
        for m in modules {
            if m.rank != self.rank { rankPattern[m.hfFullName] = m.rank }
            if m.alpha != alpha { alphaPattern[m.hfFullName] = m.alpha }
        }
    }
}

/// The most frequent value (ties: the smallest).
func mostCommon<T: Hashable & Comparable>(_ xs: [T]) -> T? {
    var count: [T: Int] = [:]
    for x in xs { count[x, default: 0] += 1 }
    return count.max { ($0.value, $1.key) < ($1.value, $0.key) }?.key
}

extension String {
    var loraTrimmed: String {
        var s = Substring(self)
        while let f = s.first, f.isWhitespace { s.removeFirst() }
        while let l = s.last, l.isWhitespace { s.removeLast() }
        return String(s)
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
    /// The modules sorted, with their row order, as the file formats hold them (checked once, in `init`).
    let tensors: LoRATensors
    public let modules: [Key: LoRAModule]
    /// Order of B's rows for q/k: `.neox` = Hugging Face/PEFT, `.interleaved` = GGUF.
    public var rowLayout: RoPELayout { tensors.rowLayout }

    private let layoutCache = Locked<[RoPELayout: [Key: LoRAModule]]>([:])
    private let valuesChecked = Locked<Bool>(false)

    /// For loaders: an adapter of `modules` (their A/B rows for q/k in `rowLayout` order).
    /// Checks the config, duplicate modules, that the modules follow the config's rsLoRA rule, and every
    /// shape against `modelConfig` (not values: see `check(against:)`).
    public init(name: String, config: LoRAConfig, modelConfig: LlamaConfig, rowLayout: RoPELayout,
                modules: [LoRAModule]) throws(LKError) {
        try config.validate()
        guard !modules.isEmpty else { throw .invalidArgument("LoRA adapter \(name): no modules") }
        do throws(LKError) {
            tensors = try LoRATensors(entries: modules, rowLayout: rowLayout, dropout: config.dropout)
            try tensors.check(modelConfig, for: "the model it was made for")
        } catch { throw error.prefixed("adapter \(name): ") }
        guard tensors.useRSLoRA == config.useRSLoRA else {
            throw .invalidArgument("LoRA adapter \(name): the modules use \(tensors.useRSLoRA ? "rsLoRA" : "plain") scaling but the config has useRSLoRA = \(config.useRSLoRA)")
        }
        self.name = name
        self.config = config
        self.modelConfig = modelConfig
        var dict: [Key: LoRAModule] = [:]
        for m in tensors.entries { dict[Key(m.layer, m.module)] = m }
        self.modules = dict
    }

    public func module(_ layer: Int, _ m: LinearModule) -> LoRAModule? { modules[Key(layer, m)] }

    /// Sorted keys.
    public var keys: [Key] { tensors.entries.map { Key($0.layer, $0.module) } }

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

    /// Checks this adapter fits `model`: architecture sizes (layers, width, heads, head dim, MLP width),
    /// every module's A/B shapes, and that all values are finite. Errors name layer, module and tensor.
    public func check(against model: LlamaModel) throws(LKError) {
        let c = model.config
        if let (what, mine, theirs) = sizeDifference(from: c) {
            throw .shapeMismatch("LoRA adapter \(name) was made for a model with \(what) \(mine), this model (\(model.source)) has \(theirs)")
        }
        do throws(LKError) { try tensors.check(c, for: model.source) } catch { throw error.prefixed("adapter \(name): ") }
        // Module tensors are immutable once built, so their values are scanned for NaN/Inf once.
        if !valuesChecked.withLock({ $0 }) {
            for m in tensors.entries { try m.checkFinite() }
            valuesChecked.withLock { $0 = true }
        }
    }

    /// The first architecture size (layers, width, MLP width, heads, KV heads, head dimension) in which
    /// the model this adapter was made for differs from `c`: (name, this adapter's, c's).
    func sizeDifference(from c: LlamaConfig) -> (String, Int, Int)? {
        let mc = modelConfig
        let sizes = [("layers", mc.nLayers, c.nLayers), ("width", mc.dim, c.dim), ("MLP width", mc.hiddenDim, c.hiddenDim),
                     ("heads", mc.nHeads, c.nHeads), ("KV heads", mc.nKVHeads, c.nKVHeads),
                     ("head dimension", mc.headDim, c.headDim)]
        return sizes.first { $0.1 != $0.2 }
    }

    /// The modules with q/k B rows in `layout` order (built once per layout, then cached).
    public func modules(for layout: RoPELayout) throws(LKError) -> [Key: LoRAModule] {
        if layout == rowLayout { return modules }
        if let m = layoutCache.withLock({ $0[layout] }) { return m }
        var out: [Key: LoRAModule] = [:]
        for (k, m) in modules {
            out[k] = try m.withRowLayout(layout, from: rowLayout, headDim: modelConfig.headDim)
        }
        return layoutCache.withLock { cache in
            if let existing = cache[layout] { return existing }
            cache[layout] = out
            return out
        }
    }
}
