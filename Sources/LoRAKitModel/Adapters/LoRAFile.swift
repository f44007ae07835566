import LoRAKitCore
import LoRAKitKernels
import LoRAKitFormats
import LoRAKitTokenizer
import LoRAKitTemplates

/// LoRA adapter files: Hugging Face PEFT folders (`adapter_config.json` + `adapter_model.safetensors`)
/// and llama.cpp GGUF LoRA files, read into and written from one neutral type, `LoRATensors`, that the
/// LoRA runtime consumes.
///
/// Math (both formats): a targeted linear layer `y = W x` becomes `y = W x + s · B (A x)` with
/// A: [r, IN], B: [OUT, r] and s = alpha / r (PEFT default and llama.cpp), or alpha / √r (PEFT
/// `use_rslora`). The runtime multiplies s by the user's adapter scale.
///
/// Q/K row order: Hugging Face/PEFT store the rows of `q_proj`/`k_proj` (and so B's rows) with RoPE
/// pairs in two halves per head (`.neox`); llama.cpp's converters permute them so pairs are adjacent
/// (`.interleaved`): within each head of size D, interleaved row 2j = half row j, row 2j+1 = half row
/// j + D/2. `convert_lora_to_gguf.py` reuses the base model's `permute` on a `LoraTorchTensor`, which
/// applies the row reshape/swap to `lora_B` only (A's rows are the rank, its columns the unpermuted
/// input), so GGUF LoRA files hold interleaved B rows for q/k. `LoRATensors.rowLayout` records which
/// order B is in; `withRowLayout(_:config:)` converts.
#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// The tensors and hyper-parameters of one LoRA adapter, format-neutral.
public struct LoRATensors: Sendable {
    /// One adapted linear layer.
    public struct Entry: Sendable {
        public var layer: Int
        public var module: LinearModule
        /// [r, IN], f32, contiguous.
        public var a: Tensor
        /// [OUT, r], f32, contiguous; rows in `LoRATensors.rowLayout` order for q/k.
        public var b: Tensor
        public var alpha: Float
        public var rank: Int { a.shape[0] }

        public init(layer: Int, module: LinearModule, a: Tensor, b: Tensor, alpha: Float) {
            self.layer = layer
            self.module = module
            self.a = a
            self.b = b
            self.alpha = alpha
        }

        /// Hugging Face module name, `model.layers.N.self_attn.q_proj` (what PEFT patterns match).
        public var hfFullName: String { "model.layers.\(layer).\(module.hfName)" }
        /// GGUF base tensor name, `blk.N.attn_q.weight`.
        public var ggufBaseName: String { "blk.\(layer).\(module.ggufName).weight" }
        /// `layer N module q (self_attn.q_proj)`, for messages.
        public var what: String { "layer \(layer) module \(module) (\(module.hfName))" }
    }

    /// Sorted by (layer, module); at most one entry per (layer, module).
    public var entries: [Entry]
    /// scaling = alpha/√r if true, else alpha/r.
    public var useRSLoRA: Bool
    /// Order of B's rows for q/k: `.neox` (HF/PEFT) or `.interleaved` (GGUF).
    public var rowLayout: RoPELayout
    /// `base_model_name_or_path`, informative.
    public var baseModel: String?
    /// Target modules as stored (a PEFT regex string is stored as its single element).
    public var targetModules: [String]
    public var dropout: Float

    /// Validates the entries (f32 2-D tensors, A/B ranks agree, no duplicates) and sorts them.
    public init(entries: [Entry], useRSLoRA: Bool = false, rowLayout: RoPELayout = .neox,
                baseModel: String? = nil, targetModules: [String] = [], dropout: Float = 0) throws(LKError) {
        var seen = Set<Int>()
        for e in entries {
            guard e.layer >= 0 else { throw .invalidArgument("LoRA: \(e.what): negative layer") }
            guard seen.insert(e.layer * LinearModule.allCases.count + e.module.rawValue).inserted else {
                throw .invalidArgument("LoRA: \(e.what) appears twice")
            }
            guard e.a.dtype == .f32, e.b.dtype == .f32, e.a.isContiguous, e.b.isContiguous else {
                throw .invalidArgument("LoRA: \(e.what): A and B must be contiguous f32 tensors (got \(e.a.dtype), \(e.b.dtype))")
            }
            guard e.a.rank == 2, e.b.rank == 2 else {
                throw .shapeMismatch("LoRA: \(e.what): A \(e.a.shape) and B \(e.b.shape) must be 2-D")
            }
            guard e.a.shape[0] >= 1, e.a.shape[0] == e.b.shape[1] else {
                throw .shapeMismatch("LoRA: \(e.what): rank mismatch: lora_A \(e.a.shape) has rank \(e.a.shape[0]), lora_B \(e.b.shape) has rank \(e.b.shape[1])")
            }
            guard e.alpha.isFinite else { throw .invalidArgument("LoRA: \(e.what): alpha \(e.alpha) is not finite") }
        }
        self.entries = entries.sorted { ($0.layer, $0.module.rawValue) < ($1.layer, $1.module.rawValue) }
        self.useRSLoRA = useRSLoRA
        self.rowLayout = rowLayout
        self.baseModel = baseModel
        self.targetModules = targetModules
        self.dropout = dropout
    }

    /// s = alpha/√r (rsLoRA) or alpha/r.
    public func scaling(_ e: Entry) -> Float {
        Float(LoRATensors.scaling(alpha: Double(e.alpha), rank: e.rank, rs: useRSLoRA))
    }

    static func scaling(alpha: Double, rank: Int, rs: Bool) -> Double {
        rs ? alpha / Double(rank).squareRoot() : alpha / Double(rank)
    }

    /// The entry for (layer, module), if the adapter targets it.
    public func entry(layer: Int, module: LinearModule) -> Entry? {
        entries.first { $0.layer == layer && $0.module == module }
    }

    /// Checks every entry against a model: layer in range, A = [r, IN], B = [OUT, r].
    public func check(_ config: LlamaConfig) throws(LKError) {
        for e in entries {
            guard e.a.rank == 2, e.b.rank == 2, e.a.shape[0] == e.b.shape[1] else {
                throw .shapeMismatch("LoRA: \(e.what): lora_A \(e.a.shape) and lora_B \(e.b.shape) are not [r, in] and [out, r]")
            }
            guard e.layer >= 0, e.layer < config.nLayers else {
                throw .shapeMismatch("LoRA: \(e.what): layer \(e.layer) does not exist (the model has \(config.nLayers) layers)")
            }
            let (o, i) = e.module.shape(config)
            guard e.a.shape == [e.rank, i] else {
                throw .shapeMismatch("LoRA: \(e.what): tensor lora_A has shape \(e.a.shape), expected [\(e.rank), \(i)] ([rank, in_features])")
            }
            guard e.b.shape == [o, e.rank] else {
                throw .shapeMismatch("LoRA: \(e.what): tensor lora_B has shape \(e.b.shape), expected [\(o), \(e.rank)] ([out_features, rank])")
            }
        }
    }

    /// A copy whose q/k B rows are in `layout` order (heads of `config.headDim`; q has `nHeads`
    /// heads, k `nKVHeads`). Other modules are unchanged.
    public func withRowLayout(_ layout: RoPELayout, config: LlamaConfig) throws(LKError) -> LoRATensors {
        if layout == rowLayout { return self }
        try check(config)
        var out = self
        for (k, e) in entries.enumerated() where e.module == .q || e.module == .k {
            out.entries[k].b = try LoRATensors.permuteRows(e.b, headDim: config.headDim, toInterleaved: layout == .interleaved)
        }
        out.rowLayout = layout
        return out
    }

    /// Rows of `t` ([heads·D, cols]) permuted within each head between half order and pair order.
    static func permuteRows(_ t: Tensor, headDim d: Int, toInterleaved: Bool) throws(LKError) -> Tensor {
        let rows = t.shape[0], cols = t.shape[1]
        guard d % 2 == 0, rows % d == 0 else {
            throw .shapeMismatch("LoRA: cannot permute \(rows) rows in heads of \(d)")
        }
        let out = try Tensor(zeros: t.shape)
        let src = t.f32, dst = out.f32
        for h in 0..<(rows / d) {
            for j in 0..<(d / 2) {
                let half0 = h * d + j, half1 = h * d + j + d / 2
                let pair0 = h * d + 2 * j, pair1 = h * d + 2 * j + 1
                let (from0, to0, from1, to1) = toInterleaved ? (half0, pair0, half1, pair1) : (pair0, half0, pair1, half1)
                (dst + to0 * cols).update(from: src + from0 * cols, count: cols)
                (dst + to1 * cols).update(from: src + from1 * cols, count: cols)
            }
        }
        return out
    }

    /// A contiguous f32 copy of `t` (any dtype `toFloats` reads), refusing NaN/Inf.
    static func f32Copy(_ t: Tensor, what: String) throws(LKError) -> Tensor {
        let v = t.toFloats()
        if let bad = v.firstIndex(where: { !$0.isFinite }) {
            let row = t.cols == 0 ? 0 : bad / t.cols, col = t.cols == 0 ? 0 : bad % t.cols
            throw .format("\(what): value \(v[bad]) at [\(row), \(col)] is not finite (NaN/Inf)")
        }
        return try Tensor(v, shape: t.shape)
    }
}

// MARK: - PEFT

extension LoRATensors {
    static let peftPrefix = "base_model.model."

    /// Read a PEFT LoRA folder: `adapter_config.json` and `adapter_model.safetensors` (F32/F16/BF16).
    ///
    /// Per module: the rank is the tensors' (must agree with `rank_pattern`/`r`), alpha comes from
    /// `alpha_pattern` or `lora_alpha`. Pattern keys are matched as PEFT does (`get_pattern_key`): the
    /// first key, in the file's order, for which the regex `(.*\.)?(KEY)` matches the whole module
    /// name `model.layers.N.self_attn.q_proj`. Options that change the math and are not implemented
    /// (DoRA, fan_in_fan_out, biases, layer replication, aLoRA, …) are refused with `.unsupported`.
    /// B rows are in HF order (`rowLayout = .neox`).
    public init(peftDirectory dir: String) throws(LKError) {
        let cfgPath = dir + "/adapter_config.json"
        let cfg = try JSON.parse(file: cfgPath)
        guard cfg.object != nil else { throw .format("\(cfgPath): not a JSON object") }
        func present(_ k: String) -> JSONValue? {
            guard let v = cfg[k], !v.isNull else { return nil }
            return v
        }
        func truthy(_ k: String) -> Bool {
            guard let v = present(k) else { return false }
            switch v {
            case .bool(let b): return b
            case .array(let a): return !a.isEmpty
            case .object(let o): return !o.isEmpty
            case .string(let s): return !s.isEmpty
            case .number(let d): return d != 0
            case .null: return false
            }
        }
        func unsupported(_ msg: String) -> LKError { .unsupported("\(cfgPath): \(msg)") }

        guard let pt = present("peft_type")?.string else { throw .format("\(cfgPath): missing \"peft_type\" (not a PEFT adapter config?)") }
        guard pt == "LORA" else { throw unsupported("peft_type \"\(pt)\" is not supported (only LORA)") }
        if truthy("use_dora") { throw unsupported("use_dora is true: DoRA adapters are not supported (only plain LoRA)") }
        if truthy("fan_in_fan_out") { throw unsupported("fan_in_fan_out is true (Conv1D/GPT-2-style weights); LLaMA adapters use nn.Linear order") }
        if let b = present("bias") {
            guard b.string == "none" else { throw unsupported("bias \(JSON.serialize(b)) is not supported (only \"none\": trained biases are not loaded)") }
        }
        if truthy("lora_bias") { throw unsupported("lora_bias is true: a bias on lora_B is not supported") }
        if truthy("layers_pattern") { throw unsupported("layers_pattern is set: custom layer patterns are not supported") }
        if truthy("layer_replication") { throw unsupported("layer_replication is set: replicated layers are not supported") }
        if truthy("alora_invocation_tokens") { throw unsupported("alora_invocation_tokens is set: activated LoRA (aLoRA) is not supported") }
        if truthy("use_qalora") { throw unsupported("use_qalora is true: QA-LoRA is not supported") }
        if truthy("use_bdlora") { throw unsupported("use_bdlora is set: BD-LoRA is not supported") }
        if truthy("target_parameters") { throw unsupported("target_parameters is set: LoRA on raw parameters is not supported") }
        if truthy("trainable_token_indices") { throw unsupported("trainable_token_indices is set: trained token embeddings are not supported") }
        if let initName = present("init_lora_weights")?.string {
            let l = initName.lowercased()
            if l.hasPrefix("pissa") || l == "olora" || l == "corda" || l == "loftq" {
                throw unsupported("init_lora_weights \"\(initName)\" modifies the base weights, so this adapter only fits that modified base; convert it to a plain LoRA with PEFT (save_pretrained with path_initial_model_for_weight_conversion) first")
            }
        }

        guard let r = present("r")?.int, r >= 1 else { throw .format("\(cfgPath): \"r\" must be a positive integer") }
        guard let alphaD = present("lora_alpha")?.double, alphaD.isFinite else {
            throw .format("\(cfgPath): \"lora_alpha\" must be a number")
        }
        var rs = false
        if let v = present("use_rslora") {
            guard let b = v.bool else { throw .format("\(cfgPath): \"use_rslora\" is not a boolean") }
            rs = b
        }
        func pattern(_ k: String) throws(LKError) -> [(String, Double)] {
            guard let v = present(k) else { return [] }
            guard let o = v.object else { throw .format("\(cfgPath): \"\(k)\" is not an object") }
            var out: [(String, Double)] = []
            for (key, x) in o {
                guard let d = x.double, d.isFinite else { throw .format("\(cfgPath): \(k)[\"\(key)\"] is not a number") }
                out.append((key, d))
            }
            return out
        }
        let rankPattern = try pattern("rank_pattern")
        let alphaPattern = try pattern("alpha_pattern")
        for (k, v) in rankPattern where v < 1 || v.rounded() != v {
            throw .format("\(cfgPath): rank_pattern[\"\(k)\"] = \(v) is not a positive integer")
        }
        var targets: [String] = []
        if let t = present("target_modules") {
            if let s = t.string { targets = [s] } else if let a = t.array {
                for x in a {
                    guard let s = x.string else { throw .format("\(cfgPath): target_modules holds a non-string") }
                    targets.append(s)
                }
            } else { throw .format("\(cfgPath): target_modules is neither a list nor a string") }
        }
        var dropout: Float = 0
        if let d = present("lora_dropout") {
            guard let x = d.double, x.isFinite else { throw .format("\(cfgPath): lora_dropout is not a number") }
            dropout = Float(x)
        }
        let base = present("base_model_name_or_path")?.string
        let modulesToSave = truthy("modules_to_save")

        // Weights.
        let stPath = dir + "/adapter_model.safetensors"
        if access(stPath, F_OK) != 0 {
            if access(dir + "/adapter_model.bin", F_OK) == 0 {
                throw .unsupported("\(dir): only adapter_model.bin (a pickle) is present; LoRAKit reads adapter_model.safetensors (re-save with safe_serialization=True)")
            }
            throw .io("\(stPath): missing (a PEFT folder holds adapter_config.json and adapter_model.safetensors)")
        }
        let file = try SafetensorsFile(path: stPath)
        var parts: [Int: (a: String?, b: String?)] = [:]
        let nMod = LinearModule.allCases.count
        for name in file.tensorNames {
            guard let (layer, module, isA) = LoRATensors.parsePEFTKey(name) else {
                if modulesToSave {
                    throw unsupported("modules_to_save is set and \(stPath) holds tensor \(name): fully trained extra modules are not supported (only lora_A/lora_B of q,k,v,o,gate,up,down)")
                }
                throw .format("\(stPath): unknown tensor \(name) (expected base_model.model.model.layers.N.<self_attn.{q,k,v,o}_proj|mlp.{gate,up,down}_proj>.lora_{A,B}.weight)")
            }
            let key = layer * nMod + module.rawValue
            var p = parts[key] ?? (nil, nil)
            if isA { p.a = name } else { p.b = name }
            parts[key] = p
        }
        // Compiled patterns (first matching key wins, as in PEFT).
        func compile(_ list: [(String, Double)], _ field: String) throws(LKError) -> [(Regex<AnyRegexOutput>, Double)] {
            var out: [(Regex<AnyRegexOutput>, Double)] = []
            for (k, v) in list {
                do { out.append((try Regex("(.*\\.)?(\(k))"), v)) } catch {
                    throw .format("\(cfgPath): \(field) key \"\(k)\" is not a valid regular expression: \(error)")
                }
            }
            return out
        }
        let rankRx = try compile(rankPattern, "rank_pattern"), alphaRx = try compile(alphaPattern, "alpha_pattern")
        func lookup(_ rx: [(Regex<AnyRegexOutput>, Double)], _ name: String, _ d: Double) -> Double {
            for (re, v) in rx where (try? re.wholeMatch(in: name)) != nil { return v }
            return d
        }

        var entries: [Entry] = []
        for key in parts.keys.sorted() {
            let layer = key / nMod, module = LinearModule.allCases[key % nMod]
            let p = parts[key]!
            let what = "\(stPath): layer \(layer) module \(module) (\(module.hfName))"
            guard let an = p.a else { throw .format("\(what): lora_B is present but lora_A is missing") }
            guard let bn = p.b else { throw .format("\(what): lora_A is present but lora_B is missing") }
            let a = try LoRATensors.f32Copy(try file.tensor(an), what: "\(stPath): \(an)")
            let b = try LoRATensors.f32Copy(try file.tensor(bn), what: "\(stPath): \(bn)")
            guard a.rank == 2, b.rank == 2 else { throw .format("\(what): lora_A \(a.shape) and lora_B \(b.shape) must be 2-D") }
            guard a.shape[0] == b.shape[1], a.shape[0] >= 1 else {
                throw .format("\(what): rank mismatch: lora_A has shape \(a.shape) (rank \(a.shape[0])), lora_B has shape \(b.shape) (rank \(b.shape[1]))")
            }
            let full = "model.layers.\(layer).\(module.hfName)"
            let wantRank = Int(lookup(rankRx, full, Double(r)))
            guard wantRank == a.shape[0] else {
                throw .format("\(what): tensors have rank \(a.shape[0]) but the config gives rank \(wantRank) (r / rank_pattern)")
            }
            let alpha = lookup(alphaRx, full, alphaD)
            entries.append(Entry(layer: layer, module: module, a: a, b: b, alpha: Float(alpha)))
        }
        guard !entries.isEmpty else { throw .format("\(stPath): no LoRA tensors") }
        try self.init(entries: entries, useRSLoRA: rs, rowLayout: .neox, baseModel: base,
                      targetModules: targets, dropout: dropout)
    }

    /// `base_model.model.model.layers.N.<hfName>.lora_{A,B}.weight` → (N, module, isA).
    static func parsePEFTKey(_ name: String) -> (Int, LinearModule, Bool)? {
        guard name.hasPrefix(peftPrefix + "model.layers.") else { return nil }
        var rest = name.dropFirst((peftPrefix + "model.layers.").count)
        let isA: Bool
        if rest.hasSuffix(".lora_A.weight") { isA = true } else if rest.hasSuffix(".lora_B.weight") { isA = false } else { return nil }
        rest = rest.dropLast(".lora_A.weight".count)
        guard let dot = rest.firstIndex(of: "."), let layer = Int(rest[..<dot]), layer >= 0,
              String(layer) == rest[..<dot] else { return nil }
        let path = String(rest[rest.index(after: dot)...])
        guard let m = LinearModule.allCases.first(where: { $0.hfName == path }) else { return nil }
        return (layer, m, isA)
    }

    /// The most frequent value (ties: the smallest).
    static func mostCommon<T: Hashable & Comparable>(_ xs: [T]) -> T? {
        var count: [T: Int] = [:]
        for x in xs { count[x, default: 0] += 1 }
        return count.max { ($0.value, $1.key) < ($1.value, $0.key) }?.key
    }

    /// The `adapter_config.json` a PEFT folder written by `writePEFT` holds.
    public func peftConfigJSON() -> JSONValue {
        let r = LoRATensors.mostCommon(entries.map(\.rank)) ?? 8
        let alpha = LoRATensors.mostCommon(entries.map(\.alpha)) ?? Float(r)
        var rankPattern: [(String, JSONValue)] = [], alphaPattern: [(String, JSONValue)] = []
        for e in entries {
            if e.rank != r { rankPattern.append((e.hfFullName, .number(Double(e.rank)))) }
            if e.alpha != alpha { alphaPattern.append((e.hfFullName, .number(Double(e.alpha)))) }
        }
        // Leaf names when every adapted layer targets the same modules, else full names (PEFT would
        // otherwise add zero-B LoRA layers where the file has none: same math, but not the same adapter).
        let layers = Set(entries.map(\.layer))
        let mods = Set(entries.map(\.module))
        let uniform = layers.count * mods.count == entries.count
        let targets: [String] = uniform
            ? mods.sorted { $0.rawValue < $1.rawValue }.map { String($0.hfName.split(separator: ".").last!) }
            : entries.map(\.hfFullName)
        let members: [(String, JSONValue)] = [
            ("alpha_pattern", .object(alphaPattern)),
            ("base_model_name_or_path", baseModel.map { .string($0) } ?? .null),
            ("bias", .string("none")),
            ("fan_in_fan_out", .bool(false)),
            ("inference_mode", .bool(true)),
            ("init_lora_weights", .bool(true)),
            ("layer_replication", .null),
            ("layers_pattern", .null),
            ("layers_to_transform", .null),
            ("lora_alpha", .number(Double(alpha))),
            ("lora_dropout", .number(Double(dropout))),
            ("modules_to_save", .null),
            ("peft_type", .string("LORA")),
            ("r", .number(Double(r))),
            ("rank_pattern", .object(rankPattern)),
            ("target_modules", .array(targets.map { .string($0) })),
            ("task_type", .string("CAUSAL_LM")),
            ("use_dora", .bool(false)),
            ("use_rslora", .bool(useRSLoRA)),
        ]
        return .object(members)
    }

    /// Write a PEFT folder (`adapter_config.json`, `adapter_model.safetensors` with F32 tensors), B
    /// rows in HF order. `r`/`lora_alpha` are the most common rank/alpha; every other module gets a
    /// `rank_pattern`/`alpha_pattern` entry keyed by its full name (`model.layers.N.self_attn.q_proj`).
    ///
    /// Atomicity: both files are written completely into a temporary sibling folder first. A new
    /// folder is then renamed into place; an existing one is swapped (renamed aside, the new one
    /// renamed in, files of the old folder that were not rewritten moved into the new one, the old
    /// folder removed). A reader sees the old pair or the new pair, never a mix or a partial file; a
    /// crash during the swap can leave the old folder under a `.lorakit-old-*` name next to it.
    public func writePEFT(directory: String, config: LlamaConfig) throws(LKError) {
        let t = try withRowLayout(.neox, config: config)
        try t.check(config)
        var w = SafetensorsWriter()
        w.metadata = ["format": "pt"]
        for e in t.entries {
            try w.add("\(LoRATensors.peftPrefix)\(e.hfFullName).lora_A.weight", e.a)
            try w.add("\(LoRATensors.peftPrefix)\(e.hfFullName).lora_B.weight", e.b)
        }
        let json = Array((JSON.serialize(t.peftConfigJSON(), pretty: true) + "\n").utf8)
        try DirectoryReplace.write(directory: directory) { (tmp: String) throws(LKError) in
            try AtomicFile.write(path: tmp + "/adapter_config.json", bytes: json)
            try w.write(to: tmp + "/adapter_model.safetensors")
        }
    }
}

// MARK: - GGUF (llama.cpp)

extension LoRATensors {
    /// Read a llama.cpp GGUF LoRA (`general.type = adapter`, `adapter.type = lora`,
    /// `adapter.lora.alpha`, tensors `blk.N.<stem>.weight.lora_a` ne [IN, r] and `.lora_b` ne [r, OUT];
    /// F32/F16/BF16/Q8_0/Q4_0/Q4_1 → f32). llama.cpp applies one alpha to every tensor with
    /// scale = alpha / rank (rank of that tensor), or scale 1 when alpha is 0 or absent: each entry's
    /// alpha is the file's alpha, or its rank when the file has none. `useRSLoRA` is false, B rows
    /// are `.interleaved`.
    public init(ggufFile path: String) throws(LKError) {
        let f = try GGUFFile(path: path)
        guard let type = f.metadata["general.type"]?.string else {
            throw .format("\(path): missing general.type (a LoRA GGUF has general.type = \"adapter\"; is this a model file?)")
        }
        guard type == "adapter" else { throw .format("\(path): general.type is \"\(type)\", expected \"adapter\"") }
        let at = try f.string("adapter.type")
        guard at == "lora" else { throw .unsupported("\(path): adapter.type \"\(at)\" is not supported (only lora)") }
        let arch = try f.string("general.architecture")
        guard LlamaModel.supportedArchitectures.contains(arch) else {
            throw .unsupported("\(path): general.architecture \"\(arch)\" is not supported (supported: \(LlamaModel.supportedArchitectures.sorted().joined(separator: ", ")))")
        }
        if f.metadata["adapter.alora.invocation_tokens"] != nil {
            throw .unsupported("\(path): adapter.alora.invocation_tokens is set: activated LoRA (aLoRA) is not supported")
        }
        var alpha: Double = 0
        if f.metadata["adapter.lora.alpha"] != nil {
            alpha = try f.double("adapter.lora.alpha")
            guard alpha.isFinite else { throw .format("\(path): adapter.lora.alpha \(alpha) is not finite") }
        }
        var parts: [Int: (a: String?, b: String?)] = [:]
        let nMod = LinearModule.allCases.count
        for t in f.tensors {
            guard let (layer, module, isA) = LoRATensors.parseGGUFName(t.name) else {
                throw .unsupported("\(path): tensor \(t.name) is not supported (only blk.N.{attn_q,attn_k,attn_v,attn_output,ffn_gate,ffn_up,ffn_down}.weight.lora_{a,b})")
            }
            let key = layer * nMod + module.rawValue
            var p = parts[key] ?? (nil, nil)
            if isA { p.a = t.name } else { p.b = t.name }
            parts[key] = p
        }
        var entries: [Entry] = []
        for key in parts.keys.sorted() {
            let layer = key / nMod, module = LinearModule.allCases[key % nMod]
            let p = parts[key]!
            let what = "\(path): layer \(layer) module \(module) (\(module.ggufName))"
            guard let an = p.a else { throw .format("\(what): lora_b is present but lora_a is missing") }
            guard let bn = p.b else { throw .format("\(what): lora_a is present but lora_b is missing") }
            let a = try LoRATensors.f32Copy(try f.tensor(an), what: "\(path): \(an)")
            let b = try LoRATensors.f32Copy(try f.tensor(bn), what: "\(path): \(bn)")
            guard a.rank == 2, b.rank == 2 else { throw .format("\(what): lora_a \(a.shape) and lora_b \(b.shape) must be 2-D") }
            guard a.shape[0] == b.shape[1], a.shape[0] >= 1 else {
                throw .format("\(what): rank mismatch: lora_a has ne [\(a.shape[1]), \(a.shape[0])] (rank \(a.shape[0])), lora_b has ne [\(b.shape[1]), \(b.shape[0])] (rank \(b.shape[1]))")
            }
            entries.append(Entry(layer: layer, module: module, a: a, b: b,
                                 alpha: alpha == 0 ? Float(a.shape[0]) : Float(alpha)))
        }
        guard !entries.isEmpty else { throw .format("\(path): no LoRA tensors") }
        try self.init(entries: entries, useRSLoRA: false, rowLayout: .interleaved,
                      baseModel: f.metadata["general.base_model.0.name"]?.string,
                      targetModules: LinearModule.allCases.filter { m in entries.contains { $0.module == m } }.map(\.ggufName),
                      dropout: 0)
    }

    /// `blk.N.<stem>.weight.lora_{a,b}` → (N, module, isA).
    static func parseGGUFName(_ name: String) -> (Int, LinearModule, Bool)? {
        let p = name.split(separator: ".", omittingEmptySubsequences: false)
        guard p.count == 5, p[0] == "blk", let layer = Int(p[1]), layer >= 0, String(layer) == p[1], p[3] == "weight",
              p[4] == "lora_a" || p[4] == "lora_b",
              let m = LinearModule.allCases.first(where: { $0.ggufName == p[2] }) else { return nil }
        return (layer, m, p[4] == "lora_a")
    }

    /// The single alpha a GGUF file written by `writeGGUF` carries: the most common alpha.
    public var ggufAlpha: Float { LoRATensors.mostCommon(entries.map(\.alpha)) ?? 1 }

    /// The entries as llama.cpp will apply them with one global alpha: B' = B · s_module · r / alpha_g,
    /// so that llama.cpp's scale alpha_g / r gives exactly s_module · B A. Entries whose own scaling
    /// already equals alpha_g / r (non-rsLoRA with alpha = alpha_g) keep B bit-for-bit.
    public func foldedForGGUF(alpha alphaG: Float) throws(LKError) -> [Entry] {
        guard alphaG.isFinite, alphaG != 0 else { throw .invalidArgument("LoRA GGUF: global alpha \(alphaG) must be finite and non-zero") }
        var out = entries
        for (k, e) in entries.enumerated() {
            if !useRSLoRA && e.alpha == alphaG { out[k].alpha = alphaG; continue }
            let factor = Float(LoRATensors.scaling(alpha: Double(e.alpha), rank: e.rank, rs: useRSLoRA) * Double(e.rank) / Double(alphaG))
            let b = try Tensor(zeros: e.b.shape)
            for i in 0..<e.b.count { b.f32[i] = e.b.f32[i] * factor }
            out[k].b = b
            out[k].alpha = alphaG
        }
        return out
    }

    /// Write a llama.cpp GGUF LoRA (v3; keys `general.architecture`, `general.type = adapter`,
    /// `adapter.type = lora`, `adapter.lora.alpha` f32; tensors `blk.N.<stem>.weight.lora_a` [r, IN] /
    /// `.lora_b` [OUT, r], F32 or F16), B rows of q/k interleaved as llama.cpp's converter writes them.
    ///
    /// llama.cpp knows neither rsLoRA nor per-module alphas: it scales every tensor by alpha / rank
    /// with one alpha. The file's alpha is `ggufAlpha` (the most common alpha) and each module's exact
    /// scaling is folded into its B (`foldedForGGUF`), so llama.cpp (and `init(ggufFile:)`) compute the
    /// same ΔW = s·B·A per module. Atomic (temporary file, then rename).
    public func writeGGUF(path: String, config: LlamaConfig, architecture: String = "llama",
                          dtype: DType = .f32) throws(LKError) {
        guard dtype == .f32 || dtype == .f16 else { throw .unsupported("LoRA GGUF writer: dtype \(dtype) (supported: f32, f16)") }
        let t = try withRowLayout(.interleaved, config: config)
        try t.check(config)
        let alphaG = t.ggufAlpha
        let folded = try t.foldedForGGUF(alpha: alphaG)
        var w = GGUFWriter()
        w.set("general.architecture", .string(architecture))
        w.set("general.type", .string("adapter"))
        w.set("general.name", .string(baseModel.map { "LoRA for \($0)" } ?? "LoRA"))
        w.set("adapter.type", .string("lora"))
        w.set("adapter.lora.alpha", .float32(alphaG))
        w.set("general.file_type", .uint32(dtype == .f32 ? 0 : 1))
        w.set("general.quantization_version", .uint32(2))
        func store(_ x: Tensor) throws(LKError) -> Tensor {
            if dtype == .f32 { return x }
            let h = try Tensor(zeros: x.shape, dtype: .f16)
            let p = h.rawPointer.assumingMemoryBound(to: UInt16.self)
            for i in 0..<x.count { p[i] = floatToHalf(x.f32[i]) }
            return h
        }
        for e in folded {
            try w.add(e.ggufBaseName + ".lora_a", try store(e.a))
            try w.add(e.ggufBaseName + ".lora_b", try store(e.b))
        }
        try w.write(to: path)
    }
}
