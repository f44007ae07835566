// C ABI for models, the tokenizer, chat templates, contexts and generation (lorakit.h from "Models:" on).
import CLoRAKit
import LoRAKit
#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

// MARK: - Handle objects

/// What an lk_model handle refers to: the immutable model (its chat template is parsed and cached by the model).
final class ModelBox: @unchecked Sendable {
    let model: LlamaModel

    init(_ m: LlamaModel) { model = m }
}

/// What an lk_context handle refers to. Holds its ModelBox (and so the model) strongly: freeing the
/// model handle first is legal.
final class ContextBox: ExclusiveBox, @unchecked Sendable {
    let context: LlamaContext
    let modelBox: ModelBox

    init(_ c: LlamaContext, _ m: ModelBox) {
        context = c
        modelBox = m
    }
}

func modelArg(_ h: OpaquePointer?, _ name: String = "model") throws -> ModelBox {
    try Handles.shared.lookup(h, kind: .model, as: ModelBox.self, what: name)
}

/// Run `body` with exclusive use of the context behind `h`.
func withContext<R>(_ h: OpaquePointer?, _ body: (ContextBox) throws -> R) throws -> R {
    try exclusive(h, .context, "ctx", rule: "a context serves one thread at a time, and its generation callback must not use it", body)
}

// MARK: - Models

@_cdecl("lk_model_load")
public func lk_model_load(_ path: UnsafePointer<CChar>?, _ params: UnsafePointer<lk_model_params>?,
                          _ out: UnsafeMutablePointer<OpaquePointer?>?) -> Int32 {
    guarded("lk_model_load") {
        let o = try requirePointer(out, "out")
        let p = try pathArg(path)
        let mp = try lk_model_params.read(params)
        guard mp.reserved == 0 else { throw invalid("params->reserved is \(mp.reserved), must be 0") }
        return Handles.shared.give(ModelBox(try LlamaModel.load(path: p)), kind: .model, to: o)
    }
}

@_cdecl("lk_model_free")
public func lk_model_free(_ model: OpaquePointer?) -> Int32 {
    guarded("lk_model_free") { try Handles.shared.free(model, kind: .model, what: "model") }
}

@_cdecl("lk_model_get_info")
public func lk_model_get_info(_ model: OpaquePointer?, _ info: UnsafeMutablePointer<lk_model_info>?) -> Int32 {
    guarded("lk_model_get_info") {
        let m = try modelArg(model).model
        try lk_model_info.checkOut(try requirePointer(info, "info"), "info")
        let c = m.config, tok = m.tokenizer
        func i32(_ v: Int) -> Int32 { Int32(clamping: v) }
        lk_model_info(struct_size: 0, n_vocab: i32(c.vocabSize), n_ctx_train: i32(c.contextLength), n_embd: i32(c.dim),
                      n_ff: i32(c.hiddenDim), n_layer: i32(c.nLayers), n_head: i32(c.nHeads), n_head_kv: i32(c.nKVHeads),
                      head_dim: i32(c.headDim), n_rot: i32(c.ropeDims), rope_base: c.ropeBase, norm_eps: c.normEps,
                      tied_embeddings: c.tiedEmbeddings ? 1 : 0, bos_token: tok?.bos ?? -1, eos_token: tok?.eos ?? -1,
                      eot_token: tok?.eot ?? -1, has_tokenizer: tok == nil ? 0 : 1,
                      has_chat_template: m.chatTemplate == nil ? 0 : 1, weight_bytes: Int64(m.weightBytes)).write(to: info)
        return LK_OK
    }
}

@_cdecl("lk_model_architecture")
public func lk_model_architecture(_ model: OpaquePointer?, _ buf: UnsafeMutablePointer<CChar>?, _ capacity: Int64,
                                  _ needed: UnsafeMutablePointer<Int64>?) -> Int32 {
    guarded("lk_model_architecture") {
        try copyString(try modelArg(model).model.architecture, buf: buf, capacity: capacity, needed: needed)
    }
}

@_cdecl("lk_model_chat_template")
public func lk_model_chat_template(_ model: OpaquePointer?, _ buf: UnsafeMutablePointer<CChar>?, _ capacity: Int64,
                                   _ needed: UnsafeMutablePointer<Int64>?) -> Int32 {
    guarded("lk_model_chat_template") {
        let m = try modelArg(model).model
        _ = try requirePointer(needed, "needed")
        guard let src = m.chatTemplate else {
            throw CError(LK_ERR_UNSUPPORTED, "\(m.source): the model has no chat template (tokenizer.chat_template)")
        }
        return try copyString(src, buf: buf, capacity: capacity, needed: needed)
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
        return try copyString(v.text, buf: buf, capacity: capacity, needed: needed)
    }
}

// MARK: - Tokenizer

/// Validate and copy `n` token ids from C.
func tokenArray(_ p: UnsafePointer<Int32>?, _ n: Int64, _ name: String, allowEmpty: Bool) throws -> [Int32] {
    guard n >= 0 else { throw invalid("n_\(name) \(n) is negative") }
    guard n > 0 || allowEmpty else { throw invalid("n_\(name) is 0 (at least one token is needed)") }
    if n == 0 { return [] }
    guard let p else { throw invalid("\(name) is NULL but n_\(name) is \(n)") }
    guard n <= Int64(Int32.max) else { throw invalid("n_\(name) \(n) is too large") }
    return Array(UnsafeBufferPointer(start: p, count: Int(n)))
}

@_cdecl("lk_tokenize")
public func lk_tokenize(_ model: OpaquePointer?, _ text: UnsafePointer<CChar>?, _ textLen: Int64, _ addSpecial: Int32,
                        _ parseSpecial: Int32, _ tokens: UnsafeMutablePointer<Int32>?, _ capacity: Int64,
                        _ nTokens: UnsafeMutablePointer<Int64>?) -> Int32 {
    guarded("lk_tokenize") {
        let m = try modelArg(model).model
        let nt = try requirePointer(nTokens, "n_tokens")
        if try capacityArg(capacity) > 0 && tokens == nil { throw invalid("tokens is NULL but capacity is \(capacity)") }
        guard addSpecial >= -1 && addSpecial <= 1 else { throw invalid("add_special \(addSpecial) must be -1 (model default), 0 or 1") }
        let parse = try flag(parseSpecial, "parse_special")
        let s = try utf8Arg(text, textLen, "text")
        let tok = try m.requireTokenizer()
        // -1: BOS/EOS as the metadata says; 0: neither; 1: BOS always (when the model has one), EOS as
        // the metadata says (as llama.cpp's add_special and HF's add_special_tokens=True do for EOS).
        let ids = tok.encode(s, addBOS: addSpecial == 1 || (addSpecial == -1 && tok.addBOS),
                             addEOS: addSpecial != 0 && tok.addEOS, parseSpecial: parse)
        nt.pointee = Int64(ids.count)
        guard capacity >= Int64(ids.count) else {
            throw CError(LK_ERR_BUFFER_TOO_SMALL, "capacity \(capacity) is smaller than the \(ids.count) tokens")
        }
        if let tokens { tokens.update(from: ids, count: ids.count) }
        return LK_OK
    }
}

@_cdecl("lk_detokenize")
public func lk_detokenize(_ model: OpaquePointer?, _ tokens: UnsafePointer<Int32>?, _ nTokens: Int64, _ skipSpecial: Int32,
                          _ buf: UnsafeMutablePointer<CChar>?, _ capacity: Int64,
                          _ needed: UnsafeMutablePointer<Int64>?) -> Int32 {
    guarded("lk_detokenize") {
        let m = try modelArg(model).model
        _ = try requirePointer(needed, "needed")
        let skip = try flag(skipSpecial, "skip_special")
        let ids = try tokenArray(tokens, nTokens, "tokens", allowEmpty: true)
        let text = try m.requireTokenizer().decode(ids, skipSpecial: skip)
        return try copyString(text, buf: buf, capacity: capacity, needed: needed)
    }
}

@_cdecl("lk_token_bytes")
public func lk_token_bytes(_ model: OpaquePointer?, _ token: Int32, _ buf: UnsafeMutablePointer<CChar>?, _ capacity: Int64,
                           _ needed: UnsafeMutablePointer<Int64>?) -> Int32 {
    guarded("lk_token_bytes") {
        let m = try modelArg(model).model
        _ = try requirePointer(needed, "needed")
        let tok = try m.requireTokenizer()
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
            let mp = messages.assumingMemoryBound(to: lk_chat_message.self)
            for i in 0..<Int(nMessages) {
                let role = try cStringArg(mp[i].role, "messages[\(i)].role")
                let content = try cStringArg(mp[i].content, "messages[\(i)].content")
                msgs.append(ChatMessage(role: role, content: content))
            }
        }
        let text = try box.model.applyChatTemplate(messages: msgs, addGenerationPrompt: addGenerationPrompt == 1)
        return try copyString(text, buf: buf, capacity: capacity, needed: needed)
    }
}

// MARK: - Contexts

@_cdecl("lk_context_new")
public func lk_context_new(_ model: OpaquePointer?, _ params: UnsafePointer<lk_context_params>?,
                           _ out: UnsafeMutablePointer<OpaquePointer?>?) -> Int32 {
    guarded("lk_context_new") {
        let o = try requirePointer(out, "out")
        let box = try modelArg(model)
        let cp = try lk_context_params.read(params)
        // 0 means the default in C; LlamaContext's own messages name its Swift parameters, so the ranges
        // are stated here with the C names.
        let f = try contextFields(nCtx: cp.n_ctx, nThreads: cp.n_threads, kvType: cp.kv_type, model: box.model,
                                  prefix: "params->")
        guard cp.n_batch >= 0, cp.n_batch <= 65536 else { throw invalid("params->n_batch \(cp.n_batch) must be in 0...65536 (0 = 512)") }
        let ctx = try LlamaContext(model: box.model, maxPositions: f.positions, batch: cp.n_batch == 0 ? 512 : Int(cp.n_batch),
                                   threads: f.threads, kvType: f.kv)
        return Handles.shared.give(ContextBox(ctx, box), kind: .context, to: o)
    }
}

/// The fields lk_context_params and lk_batch_params (and lk_batch_new's arguments) share, checked and
/// turned into the core's values (0 = its default: nil); errors name them as the caller wrote them
/// (`prefix` "params->" or "").
func contextFields(nCtx: Int32, nThreads: Int32, kvType: Int32, model: LlamaModel,
                   prefix: String) throws -> (positions: Int?, threads: Int?, kv: KVCacheType) {
    let ctxTrain = model.config.contextLength
    guard nCtx >= 0, Int(nCtx) <= ctxTrain else {
        throw invalid("\(prefix)n_ctx \(nCtx) must be in 0...\(ctxTrain) (0 = min(model context, 4096); the model's context length is \(ctxTrain))")
    }
    guard nThreads >= 0, nThreads <= 512 else {
        throw invalid("\(prefix)n_threads \(nThreads) must be in 0...512 (0 = lk_cpu_count())")
    }
    let kv = try cEnum(kvType, "\(prefix)kv_type", "LK_DTYPE_F32 or LK_DTYPE_F16",
                       [LK_DTYPE_F32: KVCacheType.f32, LK_DTYPE_F16: .f16])
    return (nCtx == 0 ? nil : Int(nCtx), nThreads == 0 ? nil : Int(nThreads), kv)
}

@_cdecl("lk_context_free")
public func lk_context_free(_ ctx: OpaquePointer?) -> Int32 {
    guarded("lk_context_free") { try Handles.shared.free(ctx, kind: .context, what: "ctx") }
}

@_cdecl("lk_context_reset")
public func lk_context_reset(_ ctx: OpaquePointer?) -> Int32 {
    guarded("lk_context_reset") {
        try withContext(ctx) { $0.context.reset() }
        return LK_OK
    }
}

@_cdecl("lk_context_position")
public func lk_context_position(_ ctx: OpaquePointer?, _ position: UnsafeMutablePointer<Int32>?) -> Int32 {
    guarded("lk_context_position") {
        let p = try requirePointer(position, "position")
        p.pointee = Int32(clamping: try withContext(ctx) { $0.context.position })
        return LK_OK
    }
}

/// Evaluate `rows` inputs at `pointer` (`input()` reads them, after every check) on the context behind
/// `h`, writing the logits `mode` asks for into `logits`. Everything is checked before the cache changes:
/// the mode, the buffer and whether the rows fit.
func evaluate(_ h: OpaquePointer?, _ pointer: UnsafeRawPointer?, rows: Int64, _ what: String, _ pointerName: String,
              mode: Int32, _ logits: UnsafeMutablePointer<Float>?, _ capacity: Int64,
              _ input: () throws -> LlamaContext.Input) throws -> Int {
    try withContext(h) { box in
        let c = box.context
        guard rows >= 1 else { throw invalid("n_\(what) \(rows) must be ≥ 1") }
        _ = try requirePointer(pointer, pointerName)
        let request = try cEnum(mode, "logits_mode", "LK_LOGITS_*", [LK_LOGITS_NONE: LlamaContext.LogitsRequest.none,
                                                                     LK_LOGITS_LAST: .last, LK_LOGITS_ALL: .all])
        let vocab = c.model.config.vocabSize
        let (all, overflow) = Int(clamping: rows).multipliedReportingOverflow(by: vocab)
        guard !overflow else { throw invalid("n_\(what) \(rows) × n_vocab \(vocab) overflows") }
        let count = request == .none ? 0 : request == .last ? vocab : all
        if count > 0 {
            guard try capacityArg(capacity) >= Int64(count) else {
                throw CError(LK_ERR_BUFFER_TOO_SMALL, "capacity \(capacity) is smaller than the \(count) logits of logits_mode \(mode) (\(request == .all ? "\(rows) × " : "")n_vocab \(vocab))")
            }
            guard logits != nil else { throw invalid("logits is NULL but logits_mode \(mode) writes \(count) floats") }
        }
        let free = c.maxPositions - c.position
        guard rows <= Int64(free) else {
            throw invalid("\(rows) \(what) at position \(c.position) overflow the context of \(c.maxPositions) positions (\(free) free)")
        }
        let out = try c.evaluate(try input(), logits: request)
        guard out.count == count else { throw CError(LK_ERR_INTERNAL, "evaluate returned \(out.count) logits, expected \(count)") }
        if let logits { logits.update(from: out, count: count) }
        return LK_OK
    }
}

@_cdecl("lk_context_eval")
public func lk_context_eval(_ ctx: OpaquePointer?, _ tokens: UnsafePointer<Int32>?, _ nTokens: Int64, _ logitsMode: Int32,
                            _ logits: UnsafeMutablePointer<Float>?, _ capacity: Int64) -> Int32 {
    guarded("lk_context_eval") {
        try evaluate(ctx, tokens, rows: nTokens, "tokens", "tokens", mode: logitsMode, logits, capacity) {
            .tokens(try tokenArray(tokens, nTokens, "tokens", allowEmpty: false))
        }
    }
}

@_cdecl("lk_context_eval_embeddings")
public func lk_context_eval_embeddings(_ ctx: OpaquePointer?, _ embeddings: UnsafePointer<Float>?, _ nRows: Int64,
                                       _ logitsMode: Int32, _ logits: UnsafeMutablePointer<Float>?, _ capacity: Int64) -> Int32 {
    guarded("lk_context_eval_embeddings") {
        try evaluate(ctx, embeddings, rows: nRows, "rows", "embeddings", mode: logitsMode, logits, capacity) {
            .embeddings(try requirePointer(embeddings, "embeddings"), count: Int(nRows))
        }
    }
}

// MARK: - Generation

/// lk_sampler_params (NULL: defaults) → SamplerParams; `generate` validates it.
func samplerParams(_ p: UnsafePointer<lk_sampler_params>?) throws -> SamplerParams {
    let s = try lk_sampler_params.read(p, "params->sampler")
    var r = SamplerParams()
    (r.temperature, r.topK, r.topP, r.minP) = (s.temperature, Int(s.top_k), s.top_p, s.min_p)
    (r.repetitionPenalty, r.penaltyLastN, r.seed) = (s.repeat_penalty, Int(s.repeat_last_n), s.seed)
    return r
}

@_cdecl("lk_generate")
public func lk_generate(_ ctx: OpaquePointer?, _ prompt: UnsafePointer<Int32>?, _ nPrompt: Int64,
                        _ params: UnsafePointer<lk_generate_params>?,
                        _ textOut: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?,
                        _ tokensOut: UnsafeMutablePointer<Int32>?, _ tokensCapacity: Int64,
                        _ result: UnsafeMutablePointer<lk_generate_result>?) -> Int32 {
    guarded("lk_generate") {
        try withContext(ctx) { box in
            let c = box.context
            // Everything is checked before the first evaluation (the core checks params first).
            let gp = try lk_generate_params.read(params)
            guard gp.n_stop >= 0, gp.n_stop <= 1024 else { throw invalid("params->n_stop \(gp.n_stop) must be in 0...1024") }
            if gp.n_stop > 0 && gp.stop == nil { throw invalid("params->stop is NULL but params->n_stop is \(gp.n_stop)") }
            var p = GenerateParams()
            p.maxTokens = Int(gp.max_tokens)
            p.sampler = try samplerParams(gp.sampler)
            p.stop = try (0..<Int(gp.n_stop)).map { try cStringArg(gp.stop![$0], "params->stop[\($0)]") }
            p.stopAtEOS = gp.stop_at_eos != 0
            if try capacityArg(tokensCapacity, "tokens_capacity") > 0 && tokensOut == nil {
                throw invalid("tokens_out is NULL but tokens_capacity is \(tokensCapacity)")
            }
            try lk_generate_result.checkOut(result, "result")
            guard nPrompt >= 1 else { throw invalid("n_prompt \(nPrompt) must be ≥ 1") }
            _ = try requirePointer(prompt, "prompt")
            guard nPrompt <= Int64(c.maxPositions - c.position) else {
                throw invalid("\(nPrompt) prompt tokens at position \(c.position) overflow the context of \(c.maxPositions) positions (\(c.maxPositions - c.position) free)")
            }
            let ids = try tokenArray(prompt, nPrompt, "prompt", allowEmpty: false)
            var onText: ((String, Int32) -> Bool)? = nil
            if let cb = gp.callback {
                var stopped = false
                onText = { piece, token in
                    // Once the callback asked to stop it is not called again (the core still flushes
                    // held-back text into the result).
                    if stopped || piece.isEmpty { return !stopped }
                    var s = piece
                    stopped = s.withUTF8 { b in b.withMemoryRebound(to: CChar.self) { cb($0.baseAddress, Int64($0.count), token, gp.user_data) } } != 0
                    return !stopped
                }
            }
            let r = try generate(context: c, prompt: ids, params: p, onText: onText)
            // Outputs (only now: nothing is written on error).
            if let textOut { textOut.pointee = try mallocString(r.text) }
            if let tokensOut { tokensOut.update(from: r.tokens, count: min(Int(tokensCapacity), r.tokens.count)) }
            let stop: KeyValuePairs<StopReason, Int> = [.eos: LK_STOP_EOS, .stopString: LK_STOP_STRING, .maxTokens: LK_STOP_LENGTH,
                                                        .callback: LK_STOP_CALLBACK, .contextFull: LK_STOP_CONTEXT]
            lk_generate_result(struct_size: 0, n_prompt_tokens: Int32(clamping: r.promptTokens),
                               n_tokens: Int32(clamping: r.tokens.count),
                               stop_reason: Int32(stop.first { $0.key == r.stopReason }?.value ?? -1),
                               prefill_seconds: r.prefillSeconds, decode_seconds: r.decodeSeconds).write(to: result)
            return r.stopReason == .callback ? LK_STOPPED : LK_OK
        }
    }
}

@_cdecl("lk_string_free")
public func lk_string_free(_ s: UnsafeMutablePointer<CChar>?) {
    free(s)
}

// MARK: - Chat-template limits

@_cdecl("lk_model_chat_limit")
public func lk_model_chat_limit(_ model: OpaquePointer?, _ limit: Int32, _ newValue: Int64,
                                _ oldValue: UnsafeMutablePointer<Int64>?) -> Int32 {
    guarded("lk_model_chat_limit") {
        let box = try modelArg(model)
        guard let field = ChatLimitField(cValue: Int(limit)) else {
            throw invalid("limit \(limit) is not an lk_chat_limit (LK_CHAT_LIMIT_OUTPUT_BYTES...LK_CHAT_LIMIT_TEMPLATE_BYTES, 0...7)")
        }
        guard newValue > 0 || newValue == -1 else {
            throw invalid("new_value \(newValue) for \(field.cName) must be positive, or -1 to only read")
        }
        let old: Int
        do throws(LKError) {
            old = try box.model.exchangeChatTemplateLimit(field.keyPath, newValue == -1 ? nil : Int(newValue))
        } catch {
            throw invalid("new_value \(newValue) for \(field.cName): \(error.message)")
        }
        oldValue?.pointee = Int64(old)
        return LK_OK
    }
}

/// An lk_chat_limit: its header name and the `TemplateLimits` field it reads and writes.
struct ChatLimitField {
    let cName: String
    let keyPath: WritableKeyPath<TemplateLimits, Int>

    init?(cValue: Int) {
        switch cValue {
        case LK_CHAT_LIMIT_OUTPUT_BYTES: (cName, keyPath) = ("LK_CHAT_LIMIT_OUTPUT_BYTES", \.maxOutputBytes)
        case LK_CHAT_LIMIT_ALLOCATED_BYTES: (cName, keyPath) = ("LK_CHAT_LIMIT_ALLOCATED_BYTES", \.maxAllocatedBytes)
        case LK_CHAT_LIMIT_LOOP_ITERATIONS: (cName, keyPath) = ("LK_CHAT_LIMIT_LOOP_ITERATIONS", \.maxLoopIterations)
        case LK_CHAT_LIMIT_STEPS: (cName, keyPath) = ("LK_CHAT_LIMIT_STEPS", \.maxSteps)
        case LK_CHAT_LIMIT_RECURSION_DEPTH: (cName, keyPath) = ("LK_CHAT_LIMIT_RECURSION_DEPTH", \.maxRecursionDepth)
        case LK_CHAT_LIMIT_VALUE_DEPTH: (cName, keyPath) = ("LK_CHAT_LIMIT_VALUE_DEPTH", \.maxValueDepth)
        case LK_CHAT_LIMIT_MILLISECONDS: (cName, keyPath) = ("LK_CHAT_LIMIT_MILLISECONDS", \.maxMilliseconds)
        case LK_CHAT_LIMIT_TEMPLATE_BYTES: (cName, keyPath) = ("LK_CHAT_LIMIT_TEMPLATE_BYTES", \.maxTemplateBytes)
        default: return nil
        }
    }
}
