import LoRAKitCore
import LoRAKitKernels
import LoRAKitFormats
import LoRAKitTokenizer
import LoRAKitTemplates

/// LoRA adapter files: Hugging Face PEFT folders (`adapter_config.json` + `adapter_model.safetensors`)
/// and llama.cpp GGUF LoRA files, read into and written from `LoRATensors`: the file's `LoRAModule`s
/// and what the file says about them.
///
/// Math (both formats): a targeted linear layer `y = W x` becomes `y = W x + s · B (A x)` with
/// A: [r, IN], B: [OUT, r] and s = alpha / r (PEFT default and llama.cpp), or alpha / √r (PEFT
/// `use_rslora`) — `LoRAModule.scaling`. The runtime multiplies s by the user's adapter scale.
///
/// Q/K row order (`LoRARowOrder`): PEFT folders hold B's q/k rows in Hugging Face order (`.neox`);
/// `convert_lora_to_gguf.py` reuses the base model's `permute` on a `LoraTorchTensor`, which applies
/// the row reshape/swap to `lora_B` only, so GGUF LoRA files hold interleaved B rows for q/k.
/// `LoRATensors.rowLayout` records which order B is in; `withRowLayout(_:config:)` converts.
#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// The modules and hyper-parameters of one LoRA adapter, format-neutral.
public struct LoRATensors: Sendable {
    /// One adapted linear layer.
    public typealias Entry = LoRAModule

    /// Sorted by (layer, module); at most one entry per (layer, module); one rsLoRA rule.
    public private(set) var entries: [LoRAModule]
    /// Order of B's rows for q/k: `.neox` (HF/PEFT) or `.interleaved` (GGUF).
    public private(set) var rowLayout: RoPELayout
    /// `base_model_name_or_path`, informative.
    public var baseModel: String?
    /// Target modules as stored (a PEFT regex string is stored as its single element).
    public var targetModules: [String]
    public var dropout: Float

    /// Checks that no (layer, module) appears twice and that all entries follow one scale rule (rsLoRA
    /// or not: the files hold one), and sorts the entries.
    public init(entries: [LoRAModule], rowLayout: RoPELayout = .neox, baseModel: String? = nil,
                targetModules: [String] = [], dropout: Float = 0) throws(LKError) {
        var seen = Set<Int>()
        for e in entries {
            guard seen.insert(e.layer * LinearModule.allCases.count + e.module.rawValue).inserted else {
                throw .invalidArgument("LoRA: \(e.what) appears twice")
            }
            guard e.rsLoRA == entries[0].rsLoRA else {
                throw .invalidArgument("LoRA: \(e.what) uses \(e.rsLoRA ? "rsLoRA" : "plain") scaling, \(entries[0].what) does not")
            }
        }
        self.entries = entries.sorted { ($0.layer, $0.module.rawValue) < ($1.layer, $1.module.rawValue) }
        self.rowLayout = rowLayout
        self.baseModel = baseModel
        self.targetModules = targetModules
        self.dropout = dropout
    }

    /// scaling = alpha/√r if true, else alpha/r.
    public var useRSLoRA: Bool { entries.first?.rsLoRA ?? false }

    /// s of an entry (`LoRAModule.scaling`).
    public func scaling(_ e: Entry) -> Float { e.scaling }

    /// The entry for (layer, module), if the adapter targets it.
    public func entry(layer: Int, module: LinearModule) -> Entry? {
        entries.first { $0.layer == layer && $0.module == module }
    }

    /// Checks every entry against a model (`LoRAModule.check(against:for:)`): layer in range,
    /// A = [r, IN], B = [OUT, r].
    public func check(_ config: LlamaConfig, for what: String? = nil) throws(LKError) {
        for e in entries { try e.check(against: config, for: what) }
    }

    /// A copy whose q/k B rows are in `layout` order (heads of `config.headDim`; q has `nHeads`
    /// heads, k `nKVHeads`). Other modules are unchanged.
    public func withRowLayout(_ layout: RoPELayout, config: LlamaConfig) throws(LKError) -> LoRATensors {
        if layout == rowLayout { return self }
        try check(config)
        var out = self
        for (k, e) in entries.enumerated() {
            out.entries[k] = try e.withRowLayout(layout, from: rowLayout, headDim: config.headDim)
        }
        out.rowLayout = layout
        return out
    }

    /// A contiguous f32 copy of `t` (any dtype `toFloats` reads), refusing NaN/Inf.
    static func f32Copy(_ t: Tensor, what: String) throws(LKError) -> Tensor {
        let c = try Tensor(t.toFloats(), shape: t.shape)
        if let (row, col, v) = c.firstNonFinite() {
            throw .format("\(what): value \(v) at [\(row), \(col)] is not finite (NaN/Inf)")
        }
        return c
    }

    /// The A/B tensor names of each (layer, module) of a file, sorted by (layer, module). `parse` maps a
    /// tensor name to (layer, module, isA), or nil when the name is not a LoRA tensor (`unknown` gives
    /// the error); `label` names a module in messages (`attn_q`, `self_attn.q_proj`), `aName`/`bName`
    /// the two tensors (`lora_A`, `lora_a`).
    static func pairedNames(_ names: [String], file: String, aName: String, bName: String,
                            label: (LinearModule) -> String, parse: (String) -> (Int, LinearModule, Bool)?,
                            unknown: (String) -> LKError) throws(LKError) -> [(layer: Int, module: LinearModule, a: String, b: String)] {
        var parts: [Int: (a: String?, b: String?)] = [:]
        let nMod = LinearModule.allCases.count
        for name in names {
            guard let (layer, module, isA) = parse(name) else { throw unknown(name) }
            let key = layer * nMod + module.rawValue
            var p = parts[key] ?? (nil, nil)
            if isA { p.a = name } else { p.b = name }
            parts[key] = p
        }
        var out: [(layer: Int, module: LinearModule, a: String, b: String)] = []
        for key in parts.keys.sorted() {
            let layer = key / nMod, module = LinearModule.allCases[key % nMod]
            let p = parts[key]!
            let what = "\(file): layer \(layer) module \(module) (\(label(module)))"
            guard let an = p.a else { throw .format("\(what): \(bName) is present but \(aName) is missing") }
            guard let bn = p.b else { throw .format("\(what): \(aName) is present but \(bName) is missing") }
            out.append((layer, module, an, bn))
        }
        guard !out.isEmpty else { throw .format("\(file): no LoRA tensors") }
        return out
    }

    /// `LoRAModule(...)` for a module read from `file`: its errors become format errors of the file.
    static func module(_ file: String, layer: Int, module: LinearModule, a: Tensor, b: Tensor, alpha: Float,
                       rsLoRA: Bool) throws(LKError) -> LoRAModule {
        do { return try LoRAModule(layer: layer, module: module, a: a, b: b, alpha: alpha, rsLoRA: rsLoRA) } catch {
            throw .format("\(file): \(error.message)")
        }
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
            case .int(let i): return i != 0
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
        let pairs = try LoRATensors.pairedNames(
            file.tensorNames, file: stPath, aName: "lora_A", bName: "lora_B", label: \.hfName,
            parse: LoRATensors.parsePEFTKey,
            unknown: { name in
                modulesToSave
                    ? unsupported("modules_to_save is set and \(stPath) holds tensor \(name): fully trained extra modules are not supported (only lora_A/lora_B of q,k,v,o,gate,up,down)")
                    : .format("\(stPath): unknown tensor \(name) (expected base_model.model.model.layers.N.<self_attn.{q,k,v,o}_proj|mlp.{gate,up,down}_proj>.lora_{A,B}.weight)")
            })
        // Patterns: every key must be a valid regular expression; the first key, in the file's order,
        // that matches a module (`LoRAConfig.matches`, PEFT's rule) gives its value.
        for (field, list) in [("rank_pattern", rankPattern), ("alpha_pattern", alphaPattern)] {
            for (k, _) in list {
                do { _ = try Regex("(.*\\.)?(\(k))") } catch {
                    throw .format("\(cfgPath): \(field) key \"\(k)\" is not a valid regular expression: \(error)")
                }
            }
        }
        func lookup(_ list: [(String, Double)], _ name: String, _ d: Double) -> Double {
            list.first { LoRAConfig.matches(key: $0.0, name: name) }?.1 ?? d
        }

        var entries: [Entry] = []
        for p in pairs {
            let a = try LoRATensors.f32Copy(try file.tensor(p.a), what: "\(stPath): \(p.a)")
            let b = try LoRATensors.f32Copy(try file.tensor(p.b), what: "\(stPath): \(p.b)")
            let full = LoRAConfig.hfModuleName(layer: p.layer, module: p.module)
            let m = try LoRATensors.module(stPath, layer: p.layer, module: p.module, a: a, b: b,
                                           alpha: Float(lookup(alphaPattern, full, alphaD)), rsLoRA: rs)
            let wantRank = Int(lookup(rankPattern, full, Double(r)))
            guard wantRank == m.rank else {
                throw .format("\(stPath): \(m.what): tensors have rank \(m.rank) but the config gives rank \(wantRank) (r / rank_pattern)")
            }
            entries.append(m)
        }
        try self.init(entries: entries, rowLayout: .neox, baseModel: base, targetModules: targets, dropout: dropout)
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

    /// The `adapter_config.json` a PEFT folder written by `writePEFT` holds: `r`, `lora_alpha` and the
    /// patterns of `LoRAConfig(describing:)`, patterns in module order.
    public func peftConfigJSON() -> JSONValue {
        let c = LoRAConfig(describing: entries, nLayers: nil, dropout: dropout)
        var rankPattern: [(String, JSONValue)] = [], alphaPattern: [(String, JSONValue)] = []
        for e in entries {
            if let r = c.rankPattern[e.hfFullName] { rankPattern.append((e.hfFullName, .number(Double(r)))) }
            if let a = c.alphaPattern[e.hfFullName] { alphaPattern.append((e.hfFullName, .number(Double(a)))) }
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
            ("lora_alpha", .number(Double(c.alpha))),
            ("lora_dropout", .number(Double(dropout))),
            ("modules_to_save", .null),
            ("peft_type", .string("LORA")),
            ("r", .number(Double(c.rank))),
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
        let pairs = try LoRATensors.pairedNames(
            f.tensors.map(\.name), file: path, aName: "lora_a", bName: "lora_b", label: \.ggufName,
            parse: LoRATensors.parseGGUFName,
            unknown: { .unsupported("\(path): tensor \($0) is not supported (only blk.N.{attn_q,attn_k,attn_v,attn_output,ffn_gate,ffn_up,ffn_down}.weight.lora_{a,b})") })
        var entries: [Entry] = []
        for p in pairs {
            let a = try LoRATensors.f32Copy(try f.tensor(p.a), what: "\(path): \(p.a)")
            let b = try LoRATensors.f32Copy(try f.tensor(p.b), what: "\(path): \(p.b)")
            entries.append(try LoRATensors.module("\(path): \(p.module.ggufWeightName(layer: p.layer))", layer: p.layer,
                                                  module: p.module, a: a, b: b,
                                                  alpha: alpha == 0 ? Float(a.shape.first ?? 1) : Float(alpha), rsLoRA: false))
        }
        try self.init(entries: entries, rowLayout: .interleaved,
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
    public var ggufAlpha: Float { mostCommon(entries.map(\.alpha)) ?? 1 }

    /// The entries as llama.cpp will apply them with one global alpha: B' = B · s_module · r / alpha_g,
    /// so that llama.cpp's scale alpha_g / r gives exactly s_module · B A. Entries whose own scaling
    /// already equals alpha_g / r (non-rsLoRA with alpha = alpha_g) keep B bit-for-bit.
    public func foldedForGGUF(alpha alphaG: Float) throws(LKError) -> [Entry] {
        try LoRAModule.checkAlpha(alphaG, "LoRA GGUF: global alpha")
        var out: [Entry] = []
        for e in entries {
            if !e.rsLoRA && e.alpha == alphaG { out.append(e); continue }
            // s_module · r / alpha_g, computed in Double.
            let factor = Float(LoRAModule.scaling(rank: e.rank, alpha: Double(e.alpha), rsLoRA: e.rsLoRA)
                               * Double(e.rank) / Double(alphaG))
            let b = try Tensor(zeros: e.b.shape)
            for i in 0..<e.b.count {
                b.f32[i] = e.b.f32[i] * factor
                // A file with ±inf would not load again (found by the peft fuzz target).
                guard b.f32[i].isFinite else {
                    throw .invalidArgument("LoRA GGUF: \(e.what): lora_B value \(e.b.f32[i]) times \(factor) (its scaling folded into B for the file's alpha \(alphaG)) overflows float32; this adapter cannot be written as a llama.cpp GGUF LoRA")
                }
            }
            out.append(try LoRAModule(layer: e.layer, module: e.module, a: e.a, b: b, alpha: alphaG))
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
