// C ABI for models, the tokenizer, chat templates, contexts and generation (lorakit.h from "Models:" on).
//
// Thin shims: validate every pointer, handle, size and enum value, convert, call the core inside
// `guarded`. Struct mirrors and the struct_size rules are in CABIStructs.swift.
import LoRAKit
import Synchronization
#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

// MARK: - Handle objects

/// What an lk_model handle refers to: the immutable model plus a lazily parsed chat template.
final class ModelBox: @unchecked Sendable {
    let model: LlamaModel
    private let template = Mutex<ChatTemplate?>(nil)

    init(_ m: LlamaModel) { model = m }

    /// The parsed chat template (parsed once, then shared; ChatTemplate.render is thread-safe).
    func chatTemplate() throws -> ChatTemplate {
        guard let src = model.chatTemplate else {
            throw CError(status: LKStatus.unsupported, message: "\(model.source): the model has no chat template (tokenizer.chat_template)")
        }
        if let t = template.withLock({ $0 }) { return t }
        let t = try ChatTemplate(src)
        template.withLock { $0 = t }
        return t
    }
}

/// What an lk_context handle refers to. Holds its ModelBox (and so the model) strongly: freeing the
/// model handle first is legal. `busy` turns concurrent or re-entrant use of one context (which the
/// header forbids) into an error instead of a data race.
final class ContextBox: @unchecked Sendable {
    let context: LlamaContext
    let modelBox: ModelBox
    let busy = Atomic<Bool>(false)

    init(_ c: LlamaContext, _ m: ModelBox) {
        context = c
        modelBox = m
    }
}

func modelArg(_ h: OpaquePointer?, _ name: String = "model") throws -> ModelBox {
    try Handles.shared.lookup(h, kind: .model, as: ModelBox.self, what: name)
}

/// Run `body` with exclusive use of the context behind `h`.
func withContext<R>(_ h: OpaquePointer?, _ name: String = "ctx", _ body: (ContextBox) throws -> R) throws -> R {
    let box = try Handles.shared.lookup(h, kind: .context, as: ContextBox.self, what: name)
    guard box.busy.compareExchange(expected: false, desired: true, ordering: .acquiring).exchanged else {
        throw CError(status: LKStatus.invalidArgument, message: "\(name) is in use by another call (a context serves one thread at a time, and its generation callback must not use it)")
    }
    defer { box.busy.store(false, ordering: .releasing) }
    return try body(box)
}

func invalid(_ message: String) -> CError { CError(status: LKStatus.invalidArgument, message: message) }

// MARK: - Models

/// Switch point: when `LlamaModel.load(path:)` (GGUF files and Hugging Face folders) lands, this becomes
/// `try LlamaModel.load(path: path)`.
func loadModel(_ path: String) throws -> LlamaModel {
    try LlamaModel.load(path: path)
}

@_cdecl("lk_model_params_init")
public func lk_model_params_init(_ p: UnsafeMutableRawPointer?) {
    guard let p else { return }
    p.assumingMemoryBound(to: CModelParams.self).pointee = CModelParams()
}

@_cdecl("lk_model_load")
public func lk_model_load(_ path: UnsafePointer<CChar>?, _ params: UnsafeRawPointer?,
                          _ out: UnsafeMutablePointer<OpaquePointer?>?) -> Int32 {
    guarded("lk_model_load") {
        let o = try requirePointer(out, "out")
        let p = try cStringArg(path, "path")
        guard !p.isEmpty else { throw invalid("path is empty") }
        let mp = try CModelParams.read(params, defaults: CModelParams(), "params")
        guard mp.reserved == 0 else { throw invalid("params->reserved is \(mp.reserved), must be 0") }
        let model = try loadModel(p)
        o.pointee = Handles.shared.register(ModelBox(model), kind: .model)
        return LKStatus.ok
    }
}

@_cdecl("lk_model_free")
public func lk_model_free(_ model: OpaquePointer?) -> Int32 {
    guarded("lk_model_free") {
        guard let model else { return LKStatus.ok }
        try Handles.shared.remove(model, kind: .model, what: "model")
        return LKStatus.ok
    }
}

@_cdecl("lk_model_get_info")
public func lk_model_get_info(_ model: OpaquePointer?, _ info: UnsafeMutableRawPointer?) -> Int32 {
    guarded("lk_model_get_info") {
        let m = try modelArg(model).model
        guard let p = info else { throw invalid("info is NULL") }
        try CModelInfo.checkOut(p, "info")
        let c = m.config
        let tok = m.tokenizer
        var i = CModelInfo()
        i.n_vocab = Int32(clamping: c.vocabSize)
        i.n_ctx_train = Int32(clamping: c.contextLength)
        i.n_embd = Int32(clamping: c.dim)
        i.n_ff = Int32(clamping: c.hiddenDim)
        i.n_layer = Int32(clamping: c.nLayers)
        i.n_head = Int32(clamping: c.nHeads)
        i.n_head_kv = Int32(clamping: c.nKVHeads)
        i.head_dim = Int32(clamping: c.headDim)
        i.n_rot = Int32(clamping: c.ropeDims)
        i.rope_base = c.ropeBase
        i.norm_eps = c.normEps
        i.tied_embeddings = c.tiedEmbeddings ? 1 : 0
        i.bos_token = tok?.bos ?? -1
        i.eos_token = tok?.eos ?? -1
        i.eot_token = tok?.eot ?? -1
        i.has_tokenizer = tok == nil ? 0 : 1
        i.has_chat_template = m.chatTemplate == nil ? 0 : 1
        i.weight_bytes = Int64(m.weightBytes)
        i.write(to: p)
        return LKStatus.ok
    }
}

@_cdecl("lk_model_architecture")
public func lk_model_architecture(_ model: OpaquePointer?, _ buf: UnsafeMutablePointer<CChar>?, _ capacity: Int64,
                                  _ needed: UnsafeMutablePointer<Int64>?) -> Int32 {
    guarded("lk_model_architecture") {
        let m = try modelArg(model).model
        return try copyString(m.architecture, buf: buf, capacity: capacity, needed: needed)
    }
}

@_cdecl("lk_model_chat_template")
public func lk_model_chat_template(_ model: OpaquePointer?, _ buf: UnsafeMutablePointer<CChar>?, _ capacity: Int64,
                                   _ needed: UnsafeMutablePointer<Int64>?) -> Int32 {
    guarded("lk_model_chat_template") {
        let m = try modelArg(model).model
        _ = try requirePointer(needed, "needed")
        guard let src = m.chatTemplate else {
            throw CError(status: LKStatus.unsupported, message: "\(m.source): the model has no chat template (tokenizer.chat_template)")
        }
        return try copyString(src, buf: buf, capacity: capacity, needed: needed)
    }
}

/// A float as its shortest round-tripping decimal, as a JSON number ("0.1", not 0.10000000149…).
func jsonNumber(_ f: Float) -> JSONValue {
    guard f.isFinite else { return .null }
    return .number(Double("\(f)") ?? Double(f))
}

func jsonValue(_ v: GGUFValue) -> JSONValue {
    switch v {
    case .float32(let f): return jsonNumber(f)
    case .float64(let d): return d.isFinite ? .number(d) : .null
    case .bool(let b): return .bool(b)
    case .string(let s): return .string(s)
    case .array(_, let a): return .array(a.map(jsonValue))
    case .uint64(let u): return .number(Double(u))
    default: return .number(Double(v.int ?? 0))
    }
}

/// A metadata value as text: numbers plainly, strings raw, booleans true/false, arrays as JSON.
func metaText(_ v: GGUFValue) -> String {
    switch v {
    case .string(let s): return s
    case .bool(let b): return b ? "true" : "false"
    case .float32(let f): return "\(f)"
    case .float64(let d): return "\(d)"
    case .uint64(let u): return "\(u)"
    case .int64(let i): return "\(i)"
    case .array: return JSON.serialize(jsonValue(v))
    default: return "\(v.int ?? 0)"
    }
}

@_cdecl("lk_model_meta")
public func lk_model_meta(_ model: OpaquePointer?, _ key: UnsafePointer<CChar>?, _ buf: UnsafeMutablePointer<CChar>?,
                          _ capacity: Int64, _ needed: UnsafeMutablePointer<Int64>?) -> Int32 {
    guarded("lk_model_meta") {
        let m = try modelArg(model).model
        let k = try cStringArg(key, "key")
        _ = try requirePointer(needed, "needed")
        guard let v = m.metadata[k] else {
            throw invalid("key \"\(k)\" is not in the metadata of \(m.source)\(m.metadata.isEmpty ? " (the model has no GGUF metadata)" : "")")
        }
        return try copyString(metaText(v), buf: buf, capacity: capacity, needed: needed)
    }
}

// MARK: - Tokenizer

func tokenizerOf(_ m: LlamaModel) throws -> Tokenizer { try m.requireTokenizer() }

@_cdecl("lk_tokenize")
public func lk_tokenize(_ model: OpaquePointer?, _ text: UnsafePointer<CChar>?, _ textLen: Int64, _ addSpecial: Int32,
                        _ parseSpecial: Int32, _ tokens: UnsafeMutablePointer<Int32>?, _ capacity: Int64,
                        _ nTokens: UnsafeMutablePointer<Int64>?) -> Int32 {
    guarded("lk_tokenize") {
        let m = try modelArg(model).model
        let nt = try requirePointer(nTokens, "n_tokens")
        guard capacity >= 0 else { throw invalid("capacity \(capacity) is negative") }
        if capacity > 0 && tokens == nil { throw invalid("tokens is NULL but capacity is \(capacity)") }
        guard addSpecial >= -1 && addSpecial <= 1 else { throw invalid("add_special \(addSpecial) must be -1 (model default), 0 or 1") }
        guard parseSpecial == 0 || parseSpecial == 1 else { throw invalid("parse_special \(parseSpecial) must be 0 or 1") }
        let s = try utf8Arg(text, textLen, "text")
        let tok = try tokenizerOf(m)
        // -1: BOS/EOS as the metadata says; 0: neither; 1: BOS always (when the model has one), EOS as
        // the metadata says (as llama.cpp's add_special and HF's add_special_tokens=True do for EOS).
        let ids = tok.encode(s, addBOS: addSpecial == 1 || (addSpecial == -1 && tok.addBOS),
                             addEOS: addSpecial != 0 && tok.addEOS, parseSpecial: parseSpecial == 1)
        nt.pointee = Int64(ids.count)
        guard capacity >= Int64(ids.count) else {
            throw CError(status: LKStatus.bufferTooSmall, message: "capacity \(capacity) is smaller than the \(ids.count) tokens")
        }
        if !ids.isEmpty { ids.withUnsafeBufferPointer { tokens!.update(from: $0.baseAddress!, count: ids.count) } }
        return LKStatus.ok
    }
}

/// Validate and copy `n` token ids from C.
func tokenArray(_ p: UnsafePointer<Int32>?, _ n: Int64, _ name: String, allowEmpty: Bool) throws -> [Int32] {
    guard n >= 0 else { throw invalid("n_\(name) \(n) is negative") }
    if n == 0 {
        guard allowEmpty else { throw invalid("n_\(name) is 0 (at least one token is needed)") }
        return []
    }
    guard let p else { throw invalid("\(name) is NULL but n_\(name) is \(n)") }
    guard n <= Int64(Int32.max) else { throw invalid("n_\(name) \(n) is too large") }
    return Array(UnsafeBufferPointer(start: p, count: Int(n)))
}

@_cdecl("lk_detokenize")
public func lk_detokenize(_ model: OpaquePointer?, _ tokens: UnsafePointer<Int32>?, _ nTokens: Int64, _ skipSpecial: Int32,
                          _ buf: UnsafeMutablePointer<CChar>?, _ capacity: Int64,
                          _ needed: UnsafeMutablePointer<Int64>?) -> Int32 {
    guarded("lk_detokenize") {
        let m = try modelArg(model).model
        _ = try requirePointer(needed, "needed")
        guard skipSpecial == 0 || skipSpecial == 1 else { throw invalid("skip_special \(skipSpecial) must be 0 or 1") }
        let ids = try tokenArray(tokens, nTokens, "tokens", allowEmpty: true)
        let tok = try tokenizerOf(m)
        let text = try tok.decode(ids, skipSpecial: skipSpecial == 1)
        return try copyString(text, buf: buf, capacity: capacity, needed: needed)
    }
}

@_cdecl("lk_token_bytes")
public func lk_token_bytes(_ model: OpaquePointer?, _ token: Int32, _ buf: UnsafeMutablePointer<CChar>?, _ capacity: Int64,
                           _ needed: UnsafeMutablePointer<Int64>?) -> Int32 {
    guarded("lk_token_bytes") {
        let m = try modelArg(model).model
        _ = try requirePointer(needed, "needed")
        let tok = try tokenizerOf(m)
        guard token >= 0, Int(token) < tok.vocabSize else {
            throw invalid("token \(token) is outside the tokenizer's vocabulary of \(tok.vocabSize)")
        }
        return try copyBytes(tok.tokenBytes(token), buf: buf, capacity: capacity, needed: needed, terminate: false)
    }
}

@_cdecl("lk_chat_apply")
public func lk_chat_apply(_ model: OpaquePointer?, _ messages: UnsafeRawPointer?, _ nMessages: Int64,
                          _ addGenerationPrompt: Int32, _ buf: UnsafeMutablePointer<CChar>?, _ capacity: Int64,
                          _ needed: UnsafeMutablePointer<Int64>?) -> Int32 {
    guarded("lk_chat_apply") {
        let box = try modelArg(model)
        _ = try requirePointer(needed, "needed")
        guard nMessages >= 0 else { throw invalid("n_messages \(nMessages) is negative") }
        guard nMessages <= 1 << 24 else { throw invalid("n_messages \(nMessages) is too large") }
        guard addGenerationPrompt == 0 || addGenerationPrompt == 1 else {
            throw invalid("add_generation_prompt \(addGenerationPrompt) must be 0 or 1")
        }
        if nMessages > 0 && messages == nil { throw invalid("messages is NULL but n_messages is \(nMessages)") }
        var msgs: [ChatMessage] = []
        if let messages {
            let mp = messages.assumingMemoryBound(to: CChatMessage.self)
            for i in 0..<Int(nMessages) {
                let role = try cStringArg(mp[i].role, "messages[\(i)].role")
                let content = try cStringArg(mp[i].content, "messages[\(i)].content")
                msgs.append(ChatMessage(role: role, content: content))
            }
        }
        let tpl = try box.chatTemplate()
        var extra: [String: TemplateValue] = [:]
        if let tok = box.model.tokenizer {
            if let b = tok.bos, let s = tok.token(b) { extra["bos_token"] = .string(s) }
            if let e = tok.eos, let s = tok.token(e) { extra["eos_token"] = .string(s) }
        }
        let text = try tpl.render(messages: msgs, addGenerationPrompt: addGenerationPrompt == 1, extra: extra)
        return try copyString(text, buf: buf, capacity: capacity, needed: needed)
    }
}

// MARK: - Contexts

@_cdecl("lk_context_params_init")
public func lk_context_params_init(_ p: UnsafeMutableRawPointer?) {
    guard let p else { return }
    p.assumingMemoryBound(to: CContextParams.self).pointee = CContextParams()
}

@_cdecl("lk_context_new")
public func lk_context_new(_ model: OpaquePointer?, _ params: UnsafeRawPointer?,
                           _ out: UnsafeMutablePointer<OpaquePointer?>?) -> Int32 {
    guarded("lk_context_new") {
        let o = try requirePointer(out, "out")
        let box = try modelArg(model)
        let cp = try CContextParams.read(params, defaults: CContextParams(), "params")
        let ctxTrain = box.model.config.contextLength
        guard cp.n_ctx >= 0, Int(cp.n_ctx) <= ctxTrain else {
            throw invalid("params->n_ctx \(cp.n_ctx) must be in 0...\(ctxTrain) (0 = min(model context, 4096); the model's context length is \(ctxTrain))")
        }
        guard cp.n_batch >= 0, cp.n_batch <= 65536 else { throw invalid("params->n_batch \(cp.n_batch) must be in 0...65536 (0 = 512)") }
        guard cp.n_threads >= 0, cp.n_threads <= 512 else {
            throw invalid("params->n_threads \(cp.n_threads) must be in 0...512 (0 = lk_cpu_count())")
        }
        let ctx = try LlamaContext(model: box.model, maxPositions: cp.n_ctx == 0 ? nil : Int(cp.n_ctx),
                                   batch: cp.n_batch == 0 ? 512 : Int(cp.n_batch),
                                   threads: cp.n_threads == 0 ? nil : Int(cp.n_threads))
        o.pointee = Handles.shared.register(ContextBox(ctx, box), kind: .context)
        return LKStatus.ok
    }
}

@_cdecl("lk_context_free")
public func lk_context_free(_ ctx: OpaquePointer?) -> Int32 {
    guarded("lk_context_free") {
        guard let ctx else { return LKStatus.ok }
        // A call running on this context (e.g. lk_generate whose callback frees it) keeps its own
        // reference; the context is released when that call returns.
        try Handles.shared.remove(ctx, kind: .context, what: "ctx")
        return LKStatus.ok
    }
}

@_cdecl("lk_context_reset")
public func lk_context_reset(_ ctx: OpaquePointer?) -> Int32 {
    guarded("lk_context_reset") {
        try withContext(ctx) { $0.context.reset() }
        return LKStatus.ok
    }
}

@_cdecl("lk_context_position")
public func lk_context_position(_ ctx: OpaquePointer?, _ position: UnsafeMutablePointer<Int32>?) -> Int32 {
    guarded("lk_context_position") {
        let p = try requirePointer(position, "position")
        let pos = try withContext(ctx) { $0.context.position }
        p.pointee = Int32(clamping: pos)
        return LKStatus.ok
    }
}

let LK_LOGITS_NONE: Int32 = 0, LK_LOGITS_LAST: Int32 = 1, LK_LOGITS_ALL: Int32 = 2

/// Validate logits_mode/logits/capacity for `rows` inputs before evaluating (so a small buffer leaves
/// the cache untouched). Returns the request and the float count that will be written.
func logitsArgs(_ mode: Int32, _ logits: UnsafeMutablePointer<Float>?, _ capacity: Int64, rows: Int,
                vocab: Int) throws -> (LlamaContext.LogitsRequest, Int) {
    let req: LlamaContext.LogitsRequest
    let count: Int
    switch mode {
    case LK_LOGITS_NONE: req = .none; count = 0
    case LK_LOGITS_LAST: req = .last; count = vocab
    case LK_LOGITS_ALL:
        req = .all
        let (c, o) = rows.multipliedReportingOverflow(by: vocab)
        guard !o else { throw invalid("n_tokens \(rows) × n_vocab \(vocab) overflows") }
        count = c
    default: throw invalid("logits_mode \(mode) must be LK_LOGITS_NONE (0), LK_LOGITS_LAST (1) or LK_LOGITS_ALL (2)")
    }
    guard capacity >= 0 else { throw invalid("capacity \(capacity) is negative") }
    if count > 0 {
        guard capacity >= Int64(count) else {
            throw CError(status: LKStatus.bufferTooSmall, message: "capacity \(capacity) is smaller than the \(count) logits of logits_mode \(mode) (\(mode == LK_LOGITS_ALL ? "\(rows) × " : "")n_vocab \(vocab))")
        }
        guard logits != nil else { throw invalid("logits is NULL but logits_mode \(mode) writes \(count) floats") }
    }
    return (req, count)
}

/// Fail early (before copying input) when `rows` cannot fit in the context.
func checkFits(_ ctx: LlamaContext, _ rows: Int64, _ what: String) throws {
    let free = ctx.maxPositions - ctx.position
    guard rows <= Int64(free) else {
        throw invalid("\(rows) \(what) at position \(ctx.position) overflow the context of \(ctx.maxPositions) positions (\(free) free)")
    }
}

@_cdecl("lk_context_eval")
public func lk_context_eval(_ ctx: OpaquePointer?, _ tokens: UnsafePointer<Int32>?, _ nTokens: Int64, _ logitsMode: Int32,
                            _ logits: UnsafeMutablePointer<Float>?, _ capacity: Int64) -> Int32 {
    guarded("lk_context_eval") {
        try withContext(ctx) { box in
            let c = box.context
            guard nTokens >= 1 else { throw invalid("n_tokens \(nTokens) must be ≥ 1") }
            _ = try requirePointer(tokens, "tokens")
            let (req, count) = try logitsArgs(logitsMode, logits, capacity, rows: Int(clamping: nTokens),
                                              vocab: c.model.config.vocabSize)
            try checkFits(c, nTokens, "tokens")
            let ids = try tokenArray(tokens, nTokens, "tokens", allowEmpty: false)
            let out = try c.evaluate(.tokens(ids), logits: req)
            guard out.count == count else { throw CError(status: LKStatus.internal, message: "evaluate returned \(out.count) logits, expected \(count)") }
            if count > 0 { out.withUnsafeBufferPointer { logits!.update(from: $0.baseAddress!, count: count) } }
        }
        return LKStatus.ok
    }
}

@_cdecl("lk_context_eval_embeddings")
public func lk_context_eval_embeddings(_ ctx: OpaquePointer?, _ embeddings: UnsafePointer<Float>?, _ nRows: Int64,
                                       _ logitsMode: Int32, _ logits: UnsafeMutablePointer<Float>?, _ capacity: Int64) -> Int32 {
    guarded("lk_context_eval_embeddings") {
        try withContext(ctx) { box in
            let c = box.context
            guard nRows >= 1 else { throw invalid("n_rows \(nRows) must be ≥ 1") }
            let e = try requirePointer(embeddings, "embeddings")
            let (req, count) = try logitsArgs(logitsMode, logits, capacity, rows: Int(clamping: nRows),
                                              vocab: c.model.config.vocabSize)
            try checkFits(c, nRows, "rows")
            let out = try c.evaluate(.embeddings(e, count: Int(nRows)), logits: req)
            guard out.count == count else { throw CError(status: LKStatus.internal, message: "evaluate returned \(out.count) logits, expected \(count)") }
            if count > 0 { out.withUnsafeBufferPointer { logits!.update(from: $0.baseAddress!, count: count) } }
        }
        return LKStatus.ok
    }
}

// MARK: - Generation

@_cdecl("lk_sampler_params_init")
public func lk_sampler_params_init(_ p: UnsafeMutableRawPointer?) {
    guard let p else { return }
    p.assumingMemoryBound(to: CSamplerParams.self).pointee = CSamplerParams()
}

@_cdecl("lk_generate_params_init")
public func lk_generate_params_init(_ p: UnsafeMutableRawPointer?) {
    guard let p else { return }
    p.assumingMemoryBound(to: CGenerateParams.self).pointee = CGenerateParams()
}

/// lk_sampler_params → SamplerParams, with messages naming the C fields.
func samplerParams(_ p: UnsafeRawPointer?) throws -> SamplerParams {
    let s = try CSamplerParams.read(p, defaults: CSamplerParams(), "params->sampler")
    guard s.temperature.isFinite, s.temperature >= 0 else { throw invalid("sampler->temperature \(s.temperature) must be finite and ≥ 0") }
    guard s.top_k >= 0 else { throw invalid("sampler->top_k \(s.top_k) must be ≥ 0 (0 = off)") }
    guard s.top_p.isFinite, s.top_p > 0, s.top_p <= 1 else { throw invalid("sampler->top_p \(s.top_p) must be in (0, 1] (1 = off)") }
    guard s.min_p.isFinite, s.min_p >= 0, s.min_p <= 1 else { throw invalid("sampler->min_p \(s.min_p) must be in [0, 1] (0 = off)") }
    guard s.repeat_penalty.isFinite, s.repeat_penalty > 0 else {
        throw invalid("sampler->repeat_penalty \(s.repeat_penalty) must be finite and > 0 (1 = off)")
    }
    guard s.repeat_last_n >= 0 else { throw invalid("sampler->repeat_last_n \(s.repeat_last_n) must be ≥ 0 (0 = all)") }
    var r = SamplerParams()
    r.temperature = s.temperature
    r.topK = Int(s.top_k)
    r.topP = s.top_p
    r.minP = s.min_p
    r.repetitionPenalty = s.repeat_penalty
    r.penaltyLastN = Int(s.repeat_last_n)
    r.seed = s.seed
    return r
}

func stopReasonCode(_ r: StopReason) -> Int32 {
    switch r {
    case .eos: return 0
    case .stopString: return 1
    case .maxTokens: return 2
    case .callback: return 3
    case .contextFull: return 4
    }
}

@_cdecl("lk_generate")
public func lk_generate(_ ctx: OpaquePointer?, _ prompt: UnsafePointer<Int32>?, _ nPrompt: Int64, _ params: UnsafeRawPointer?,
                        _ textOut: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?,
                        _ tokensOut: UnsafeMutablePointer<Int32>?, _ tokensCapacity: Int64,
                        _ result: UnsafeMutableRawPointer?) -> Int32 {
    guarded("lk_generate") {
        try withContext(ctx) { box in
            let c = box.context
            // Validate everything before evaluating anything.
            let gp = try CGenerateParams.read(params, defaults: CGenerateParams(), "params")
            guard gp.max_tokens >= 0 else { throw invalid("params->max_tokens \(gp.max_tokens) must be ≥ 0") }
            guard gp.n_stop >= 0 else { throw invalid("params->n_stop \(gp.n_stop) is negative") }
            guard gp.n_stop <= 1024 else { throw invalid("params->n_stop \(gp.n_stop) is too large (at most 1024)") }
            if gp.n_stop > 0 && gp.stop == nil { throw invalid("params->stop is NULL but params->n_stop is \(gp.n_stop)") }
            var stops: [String] = []
            for i in 0..<Int(gp.n_stop) { stops.append(try cStringArg(gp.stop![i], "params->stop[\(i)]")) }
            let sampler = try samplerParams(gp.sampler)
            guard tokensCapacity >= 0 else { throw invalid("tokens_capacity \(tokensCapacity) is negative") }
            if tokensCapacity > 0 && tokensOut == nil { throw invalid("tokens_out is NULL but tokens_capacity is \(tokensCapacity)") }
            if let result { try CGenerateResult.checkOut(result, "result") }
            guard nPrompt >= 1 else { throw invalid("n_prompt \(nPrompt) must be ≥ 1") }
            _ = try requirePointer(prompt, "prompt")
            try checkFits(c, nPrompt, "prompt tokens")
            let ids = try tokenArray(prompt, nPrompt, "prompt", allowEmpty: false)

            var p = GenerateParams()
            p.maxTokens = Int(gp.max_tokens)
            p.sampler = sampler
            p.stop = stops
            p.stopAtEOS = gp.stop_at_eos != 0
            var onText: ((String, Int32) -> Bool)? = nil
            if let cb = gp.callback {
                let user = gp.user_data
                var stopped = false
                onText = { piece, token in
                    // Once the callback asked to stop it is not called again (the core still flushes
                    // held-back text into the result).
                    if stopped || piece.isEmpty { return !stopped }
                    var s = piece
                    let r = s.withUTF8 { b in
                        b.withMemoryRebound(to: CChar.self) { cb($0.baseAddress, Int64($0.count), token, user) }
                    }
                    if r != 0 { stopped = true }
                    return r == 0
                }
            }
            let r = try generate(context: c, prompt: ids, params: p, onText: onText)
            // Outputs (only now: nothing is written on error).
            var text: UnsafeMutablePointer<CChar>? = nil
            if textOut != nil { text = try mallocString(r.text) }
            textOut?.pointee = text
            if let tokensOut {
                let n = min(Int(tokensCapacity), r.tokens.count)
                if n > 0 { r.tokens.withUnsafeBufferPointer { tokensOut.update(from: $0.baseAddress!, count: n) } }
            }
            if let result {
                var res = CGenerateResult()
                res.n_prompt_tokens = Int32(clamping: r.promptTokens)
                res.n_tokens = Int32(clamping: r.tokens.count)
                res.stop_reason = stopReasonCode(r.stopReason)
                res.prefill_seconds = r.prefillSeconds
                res.decode_seconds = r.decodeSeconds
                res.write(to: result)
            }
            return r.stopReason == .callback ? LKStatus.stopped : LKStatus.ok
        }
    }
}

@_cdecl("lk_string_free")
public func lk_string_free(_ s: UnsafeMutablePointer<CChar>?) {
    free(s)
}

// MARK: - Struct sizes

@_cdecl("lk_sizeof_model_params")
public func lk_sizeof_model_params() -> Int64 { Int64(MemoryLayout<CModelParams>.stride) }
@_cdecl("lk_sizeof_model_info")
public func lk_sizeof_model_info() -> Int64 { Int64(MemoryLayout<CModelInfo>.stride) }
@_cdecl("lk_sizeof_context_params")
public func lk_sizeof_context_params() -> Int64 { Int64(MemoryLayout<CContextParams>.stride) }
@_cdecl("lk_sizeof_sampler_params")
public func lk_sizeof_sampler_params() -> Int64 { Int64(MemoryLayout<CSamplerParams>.stride) }
@_cdecl("lk_sizeof_generate_params")
public func lk_sizeof_generate_params() -> Int64 { Int64(MemoryLayout<CGenerateParams>.stride) }
@_cdecl("lk_sizeof_generate_result")
public func lk_sizeof_generate_result() -> Int64 { Int64(MemoryLayout<CGenerateResult>.stride) }
@_cdecl("lk_sizeof_chat_message")
public func lk_sizeof_chat_message() -> Int64 { Int64(MemoryLayout<CChatMessage>.stride) }
