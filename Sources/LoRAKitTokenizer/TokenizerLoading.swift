import LoRAKitCore
import LoRAKitFormats

/// Building a `Tokenizer` from GGUF metadata or from a Hugging Face tokenizer.json.
extension Tokenizer {
    /// Load the tokenizer stored in a GGUF file's metadata (`tokenizer.ggml.*`).
    ///
    /// Requires `tokenizer.ggml.model == "gpt2"` (byte-level BPE), `tokens`, `merges` ("a b" strings)
    /// and a supported `tokenizer.ggml.pre`. Control tokens (type 3) are special; user-defined tokens
    /// (type 4) are always matched whole in the text.
    /// - Throws: `.unsupported` for other tokenizer models (SentencePiece "llama" included) and unknown
    ///   pre-tokenizers; `.format` for missing or inconsistent metadata.
    /// - Parameter preTokenizer: use this split instead of the one `tokenizer.ggml.pre` names.
    public convenience init(gguf: GGUFFile, preTokenizer override: PreTokenizer? = nil) throws(LKError) {
        let path = gguf.path
        let md = gguf.metadata
        guard let model = md["tokenizer.ggml.model"] else { throw .format("\(path): missing metadata tokenizer.ggml.model") }
        guard let modelName = model.string else { throw .format("\(path): tokenizer.ggml.model is not a string") }
        switch modelName {
        case "gpt2", "llama": break
        default:
            throw .unsupported("\(path): tokenizer.ggml.model = \"\(modelName)\" is not supported; supported: \"gpt2\" (byte-level BPE), \"llama\" (SentencePiece BPE)")
        }
        let isSPM = modelName == "llama"
        guard let tokArr = md["tokenizer.ggml.tokens"]?.array else {
            throw .format("\(path): missing metadata tokenizer.ggml.tokens (the vocabulary)")
        }
        guard !tokArr.isEmpty else { throw .format("\(path): tokenizer.ggml.tokens is empty") }
        var tokens: [String] = []
        tokens.reserveCapacity(tokArr.count)
        for (i, v) in tokArr.enumerated() {
            guard let s = v.string else { throw .format("\(path): tokenizer.ggml.tokens[\(i)] is not a string") }
            tokens.append(s)
        }
        let n = tokens.count
        var kinds = [TokenKind](repeating: .normal, count: n)
        if let tt = md["tokenizer.ggml.token_type"] {
            guard let arr = tt.array else { throw .format("\(path): tokenizer.ggml.token_type is not an array") }
            guard arr.count == n else {
                throw .format("\(path): tokenizer.ggml.token_type has \(arr.count) entries but tokenizer.ggml.tokens has \(n)")
            }
            for (i, v) in arr.enumerated() {
                guard let x = v.int, x >= 0, x <= 6 else {
                    throw .format("\(path): tokenizer.ggml.token_type[\(i)] = \(v) is not a token type (0...6)")
                }
                kinds[i] = TokenKind(rawValue: UInt8(x)) ?? .normal  // 0 (undefined) counts as normal
            }
        }
        var scores: [Float] = []
        if isSPM {
            guard let sc = md["tokenizer.ggml.scores"]?.array else {
                throw .format("\(path): missing metadata tokenizer.ggml.scores (required by a SentencePiece tokenizer)")
            }
            guard sc.count == n else { throw .format("\(path): tokenizer.ggml.scores has \(sc.count) entries but tokenizer.ggml.tokens has \(n)") }
            for (i, v) in sc.enumerated() {
                guard let x = v.double else { throw .format("\(path): tokenizer.ggml.scores[\(i)] is not a number") }
                scores.append(Float(x))
            }
        }
        guard let mArr = md["tokenizer.ggml.merges"]?.array ?? (isSPM ? [] : nil) else {
            throw .format("\(path): missing metadata tokenizer.ggml.merges (required by a gpt2 tokenizer)")
        }
        var merges: [(String, String)] = []
        merges.reserveCapacity(mArr.count)
        for (i, v) in mArr.enumerated() {
            guard let s = v.string else { throw .format("\(path): tokenizer.ggml.merges[\(i)] is not a string") }
            guard let sp = s.utf8.firstIndex(of: 0x20) else {
                throw .format("\(path): tokenizer.ggml.merges[\(i)] = \"\(s)\" is not two tokens separated by a space")
            }
            merges.append((String(s[..<sp]), String(s[s.index(after: sp)...])))
        }
        func optID(_ key: String) throws(LKError) -> Int32? {
            guard let v = md[key] else { return nil }
            guard let i = v.int else { throw .format("\(path): \(key) is not an integer (\(v))") }
            if i == -1 || i == Int(UInt32.max) { return nil }  // llama.cpp's "none"
            guard i >= 0, i < n else { throw .format("\(path): \(key) = \(i) is outside the vocabulary (\(n) tokens)") }
            return Int32(i)
        }
        let preName = md["tokenizer.ggml.pre"]?.string
        guard let pre = override ?? (isSPM ? .gpt2 : PreTokenizer.named(preName)) else {
            throw .unsupported("\(path): pre-tokenizer \"\(preName ?? "")\" (tokenizer.ggml.pre) is not supported; supported: default, gpt2, smollm, starcoder, refact, command-r, llama3, llama-bpe, qwen2, stablelm2, and their aliases")
        }
        var added: [(id: Int32, lstrip: Bool, rstrip: Bool)] = []
        var special = [Bool](repeating: false, count: n)
        var raw = [Bool](repeating: false, count: n)
        for i in 0..<n {
            switch kinds[i] {
            case .control: special[i] = true; raw[i] = true; added.append((Int32(i), false, false))
            case .userDefined: raw[i] = true; added.append((Int32(i), false, false))
            case .unknown, .unused: raw[i] = true
            case .byte where isSPM: break
            case .normal, .byte: break
            }
        }
        let spec = Spec(
            source: path, tokens: tokens, kinds: kinds, special: special, raw: raw, merges: merges, added: added,
            bos: try optID("tokenizer.ggml.bos_token_id"), eos: try optID("tokenizer.ggml.eos_token_id"),
            eot: try optID("tokenizer.ggml.eot_token_id"), unk: try optID("tokenizer.ggml.unknown_token_id"),
            pad: try optID("tokenizer.ggml.padding_token_id"),
            addBOS: md["tokenizer.ggml.add_bos_token"]?.bool ?? isSPM,
            addEOS: md["tokenizer.ggml.add_eos_token"]?.bool ?? false,
            pre: pre, ignoreMerges: pre == .llama3 && !isSPM, byteFallback: isSPM,
            model: isSPM ? .sentencePiece : .byteLevelBPE, scores: scores,
            addSpacePrefix: md["tokenizer.ggml.add_space_prefix"]?.bool ?? true)
        try self.init(spec: spec)
    }

    /// Load a Hugging Face `tokenizer.json` with a byte-level BPE model.
    ///
    /// Reads `model` (type BPE: `vocab`, `merges` as "a b" strings or [a, b] pairs, `unk_token`,
    /// `ignore_merges`, `byte_fallback`), `added_tokens` (with `special`, `lstrip`, `rstrip`),
    /// `pre_tokenizer` (ByteLevel; Sequence[Digits(individual_digits), ByteLevel]; Split with the
    /// llama3 or qwen2 pattern + ByteLevel) and `post_processor` (TemplateProcessing: a leading special
    /// token is BOS, a trailing one EOS). `eos` names the EOS token when the post-processor does not
    /// (tokenizer_config.json's `eos_token`); otherwise the first of `<|endoftext|>`, `<|end_of_text|>`,
    /// `</s>` present is used.
    public convenience init(tokenizerJSON path: String, eos eosName: String? = nil) throws(LKError) {
        let root = try JSON.parse(file: path)
        guard let model = root["model"], case .object = model else { throw .format("\(path): missing \"model\" object") }
        let type = model["type"]?.string ?? "BPE"
        guard type == "BPE" else { throw .unsupported("\(path): model type \(type) is not supported (supported: BPE)") }
        for key in ["continuing_subword_prefix", "end_of_word_suffix"] {
            if let v = model[key], !v.isNull, v.string != "" {
                throw .unsupported("\(path): model.\(key) is not supported")
            }
        }
        if let nz = root["normalizer"], !nz.isNull {
            throw .unsupported("\(path): normalizer \(nz["type"]?.string ?? "?") is not supported (only null)")
        }
        guard let vocab = model["vocab"]?.object else { throw .format("\(path): missing model.vocab object") }
        var maxID = -1
        var entries: [(String, Int)] = []
        entries.reserveCapacity(vocab.count)
        for (tok, v) in vocab {
            guard let id = v.int, id >= 0, id < 1 << 24 else { throw .format("\(path): model.vocab[\"\(tok)\"] = \(v) is not a valid id") }
            entries.append((tok, id))
            maxID = max(maxID, id)
        }
        struct Added { var id: Int; var content: String; var special: Bool; var lstrip: Bool; var rstrip: Bool }
        var addedList: [Added] = []
        for (k, a) in (root["added_tokens"]?.array ?? []).enumerated() {
            guard let id = a["id"]?.int, id >= 0, id < 1 << 24, let content = a["content"]?.string, !content.isEmpty else {
                throw .format("\(path): added_tokens[\(k)] needs an \"id\" and a non-empty \"content\"")
            }
            addedList.append(Added(id: id, content: content, special: a["special"]?.bool ?? false,
                                   lstrip: a["lstrip"]?.bool ?? false, rstrip: a["rstrip"]?.bool ?? false))
            maxID = max(maxID, id)
        }
        let n = maxID + 1
        guard n > 0 else { throw .format("\(path): the vocabulary is empty") }
        var tokens = [String](repeating: "", count: n)
        var kinds = [TokenKind](repeating: .unused, count: n)
        var seen = [Bool](repeating: false, count: n)
        for (tok, id) in entries {
            guard !seen[id] else { throw .format("\(path): id \(id) is used by two vocabulary entries") }
            seen[id] = true
            tokens[id] = tok
            kinds[id] = .normal
        }
        var special = [Bool](repeating: false, count: n)
        var raw = [Bool](repeating: false, count: n)
        var added: [(id: Int32, lstrip: Bool, rstrip: Bool)] = []
        for a in addedList {
            if seen[a.id] && tokens[a.id] != a.content {
                throw .format("\(path): added token \"\(a.content)\" has id \(a.id), which model.vocab gives to \"\(tokens[a.id])\"")
            }
            tokens[a.id] = a.content
            kinds[a.id] = a.special ? .control : .userDefined
            special[a.id] = a.special
            raw[a.id] = true
            added.append((Int32(a.id), a.lstrip, a.rstrip))
        }
        var merges: [(String, String)] = []
        if let ms = model["merges"]?.array {
            merges.reserveCapacity(ms.count)
            for (i, m) in ms.enumerated() {
                if let s = m.string, let sp = s.utf8.firstIndex(of: 0x20) {
                    merges.append((String(s[..<sp]), String(s[s.index(after: sp)...])))
                } else if let pair = m.array, pair.count == 2, let a = pair[0].string, let b = pair[1].string {
                    merges.append((a, b))
                } else {
                    throw .format("\(path): model.merges[\(i)] is neither \"a b\" nor [\"a\", \"b\"]")
                }
            }
        }
        let pre = try Tokenizer.preTokenizer(root["pre_tokenizer"] ?? .null, path: path)
        var ids: [String: Int32] = [:]
        for (i, t) in tokens.enumerated() where ids[t] == nil && !t.isEmpty { ids[t] = Int32(i) }
        var bos: Int32? = nil, eos: Int32? = nil
        var addBOS = false, addEOS = false
        try Tokenizer.readPostProcessor(root["post_processor"] ?? .null, ids: ids, path: path,
                                        bos: &bos, eos: &eos, addBOS: &addBOS, addEOS: &addEOS)
        if let name = eosName {
            guard let e = ids[name] else { throw .invalidArgument("\(path): EOS token \"\(name)\" is not in the vocabulary") }
            eos = e
        } else if eos == nil {
            eos = ["<|endoftext|>", "<|end_of_text|>", "</s>"].lazy.compactMap { ids[$0] }.first
        }
        var unk: Int32? = nil
        if let u = model["unk_token"]?.string {
            guard let id = ids[u] else { throw .format("\(path): model.unk_token \"\(u)\" is not in the vocabulary") }
            unk = id
        }
        let spec = Spec(
            source: path, tokens: tokens, kinds: kinds, special: special, raw: raw, merges: merges, added: added,
            bos: bos, eos: eos, eot: nil, unk: unk, pad: nil, addBOS: addBOS, addEOS: addEOS, pre: pre,
            ignoreMerges: model["ignore_merges"]?.bool ?? false, byteFallback: model["byte_fallback"]?.bool ?? false)
        try self.init(spec: spec)
    }

    static let llama3Pattern = #"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"#
    static let qwen2Pattern = #"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"#
    static let gpt2Pattern = #"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"#

    /// Recognize the supported pre-tokenizer configurations.
    static func preTokenizer(_ v: JSONValue, path: String) throws(LKError) -> PreTokenizer {
        func byteLevel(_ b: JSONValue, regex: Bool) -> Bool {
            b["type"]?.string == "ByteLevel" && (b["add_prefix_space"]?.bool ?? false) == false
                && (b["use_regex"]?.bool ?? true) == regex
        }
        func describe() -> String { JSON.serialize(v) }
        if byteLevel(v, regex: true) { return .gpt2 }
        if v["type"]?.string == "Sequence", let list = v["pretokenizers"]?.array {
            if list.count == 2, list[0]["type"]?.string == "Digits", list[0]["individual_digits"]?.bool == true,
               byteLevel(list[1], regex: true) {
                return .digitsThenGPT2
            }
            if list.count == 2, list[0]["type"]?.string == "Split", byteLevel(list[1], regex: false),
               let pattern = list[0]["pattern"]?["Regex"]?.string,
               (list[0]["behavior"]?.string ?? "Isolated") == "Isolated", list[0]["invert"]?.bool != true {
                switch pattern {
                case llama3Pattern: return .llama3
                case qwen2Pattern: return .qwen2
                case gpt2Pattern: return .gpt2
                default: break
                }
            }
            if list.count == 1 { return try preTokenizer(list[0], path: path) }
        }
        throw .unsupported("\(path): pre_tokenizer \(describe().prefix(300)) is not supported (supported: ByteLevel, Digits+ByteLevel, Split with the llama3/qwen2/gpt2 pattern + ByteLevel)")
    }

    static func readPostProcessor(_ v: JSONValue, ids: [String: Int32], path: String, bos: inout Int32?, eos: inout Int32?,
                                  addBOS: inout Bool, addEOS: inout Bool) throws(LKError) {
        switch v["type"]?.string {
        case nil, "ByteLevel": return
        case "Sequence":
            for p in v["processors"]?.array ?? [] {
                try readPostProcessor(p, ids: ids, path: path, bos: &bos, eos: &eos, addBOS: &addBOS, addEOS: &addEOS)
            }
        case "TemplateProcessing":
            guard let single = v["single"]?.array else { return }
            func specialID(_ item: JSONValue) throws(LKError) -> Int32? {
                guard let name = item["SpecialToken"]?["id"]?.string else { return nil }
                if let spIDs = v["special_tokens"]?[name]?["ids"]?.array, spIDs.count == 1, let i = spIDs[0].int {
                    return Int32(i)
                }
                guard let i = ids[name] else { throw .format("\(path): post_processor uses unknown token \"\(name)\"") }
                return i
            }
            guard let seq = single.firstIndex(where: { $0["Sequence"] != nil }) else { return }
            if seq > 0, let b = try specialID(single[0]) { bos = b; addBOS = true }
            if seq < single.count - 1, let e = try specialID(single[single.count - 1]) { eos = e; addEOS = true }
        default:
            throw .unsupported("\(path): post_processor \(v["type"]?.string ?? "?") is not supported")
        }
    }
}
