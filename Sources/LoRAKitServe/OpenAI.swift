import LoRAKit

/// An HTTP error in OpenAI's shape: `{"error": {"message", "type", "param", "code"}}`.
public struct ServeError: Error, Sendable {
    public var status: Int
    public var message: String
    public var type: String
    public var param: String?
    public var code: String?

    public init(status: Int, message: String, type: String, param: String? = nil, code: String? = nil) {
        self.status = status
        self.message = message
        self.type = type
        self.param = param
        self.code = code
    }

    public static func badRequest(_ message: String, param: String? = nil, code: String? = nil) -> ServeError {
        ServeError(status: 400, message: message, type: "invalid_request_error", param: param, code: code)
    }

    public var json: JSONValue {
        .object([("error", .object([
            ("message", .string(message)),
            ("type", .string(type)),
            ("param", param.map { .string($0) } ?? .null),
            ("code", code.map { .string($0) } ?? .null),
        ]))])
    }
}

/// A parsed `/v1/completions` or `/v1/chat/completions` request.
public struct CompletionRequest: Sendable {
    public var chat: Bool
    /// The `model` field: the base model's served name or an adapter's.
    public var model: String
    public var prompt: [Int32]
    public var params: GenerateParams
    public var stream: Bool
    /// `stream_options.include_usage`: a last chunk with the token counts.
    public var includeUsage: Bool
}

/// Reading OpenAI request bodies. Every error is a 400 naming the field (`param`) as the client sent it.
public enum OpenAIRequest {
    static func field(_ o: [(String, JSONValue)], _ name: String) -> JSONValue? {
        guard let v = o.last(where: { $0.0 == name })?.1, !v.isNull else { return nil }
        return v
    }

    static func integer(_ v: JSONValue, _ name: String) throws(ServeError) -> Int {
        guard let d = v.double, d.isFinite, d == d.rounded(), abs(d) < 9.0e15 else {
            throw .badRequest("\(name) must be an integer, got \(JSON.serialize(v))", param: name)
        }
        return Int(d)
    }

    static func number(_ v: JSONValue, _ name: String) throws(ServeError) -> Double {
        guard let d = v.double, d.isFinite else {
            throw .badRequest("\(name) must be a number, got \(JSON.serialize(v))", param: name)
        }
        return d
    }

    static func bool(_ v: JSONValue, _ name: String) throws(ServeError) -> Bool {
        guard let b = v.bool else { throw .badRequest("\(name) must be true or false, got \(JSON.serialize(v))", param: name) }
        return b
    }

    static func string(_ v: JSONValue, _ name: String) throws(ServeError) -> String {
        guard let s = v.string else { throw .badRequest("\(name) must be a string, got \(JSON.serialize(v))", param: name) }
        return s
    }

    /// Parses the body of a completion request. `tokenize` turns the prompt text (or the rendered chat) into
    /// ids; `render` applies the chat template; `maxPositions` bounds prompt + completion.
    public static func parse(_ body: JSONValue, chat: Bool, maxPositions: Int, vocabSize: Int,
                             tokenize: (String, _ chat: Bool) -> [Int32],
                             render: ([ChatMessage]) throws(LKError) -> String) throws(ServeError) -> CompletionRequest {
        guard let o = body.object else {
            throw .badRequest("the request body must be a JSON object, got \(JSON.serialize(body).prefix(40))")
        }
        guard let mv = field(o, "model") else { throw .badRequest("model is required", param: "model") }
        let model = try string(mv, "model")

        if let v = field(o, "n"), try integer(v, "n") != 1 {
            throw .badRequest("n must be 1 (one completion per request), got \(JSON.serialize(v))", param: "n")
        }
        if let v = field(o, "best_of"), try integer(v, "best_of") != 1 {
            throw .badRequest("best_of must be 1, got \(JSON.serialize(v))", param: "best_of")
        }
        if let v = field(o, "echo"), try bool(v, "echo") {
            throw .badRequest("echo is not supported", param: "echo")
        }
        if let v = field(o, "logprobs"), v != .bool(false) {
            throw .badRequest("logprobs is not supported", param: "logprobs")
        }
        if let v = field(o, "top_logprobs"), try integer(v, "top_logprobs") != 0 {
            throw .badRequest("top_logprobs is not supported", param: "top_logprobs")
        }
        if let v = field(o, "suffix"), try !string(v, "suffix").isEmpty {
            throw .badRequest("suffix is not supported", param: "suffix")
        }
        for name in ["frequency_penalty", "presence_penalty"] {
            if let v = field(o, name), try number(v, name) != 0 {
                throw .badRequest("\(name) is not supported (only 0); use repetition_penalty", param: name)
            }
        }
        if let v = field(o, "logit_bias"), !(v.object?.isEmpty ?? false) {
            throw .badRequest("logit_bias is not supported", param: "logit_bias")
        }
        if let v = field(o, "tools"), !(v.array?.isEmpty ?? false) {
            throw .badRequest("tools are not supported", param: "tools")
        }

        // The prompt.
        var prompt: [Int32] = []
        let promptField = chat ? "messages" : "prompt"
        if chat {
            guard let mv = field(o, "messages") else { throw .badRequest("messages is required", param: "messages") }
            guard let arr = mv.array, !arr.isEmpty else {
                throw .badRequest("messages must be a non-empty array of {role, content}", param: "messages")
            }
            var msgs: [ChatMessage] = []
            for (i, m) in arr.enumerated() {
                let name = "messages[\(i)]"
                guard let mo = m.object else { throw .badRequest("\(name) must be an object {role, content}", param: name) }
                guard let rv = field(mo, "role") else { throw .badRequest("\(name).role is required", param: name + ".role") }
                let role = try string(rv, name + ".role")
                var content = ""
                switch field(mo, "content") {
                case nil: break
                case .string(let s)?: content = s
                case .array(let parts)?:
                    for (j, p) in parts.enumerated() {
                        let pn = "\(name).content[\(j)]"
                        guard let po = p.object, field(po, "type") == .string("text"), let t = field(po, "text")?.string else {
                            throw .badRequest("\(pn) must be {\"type\": \"text\", \"text\": …} (only text parts are supported)", param: pn)
                        }
                        content += t
                    }
                case let v?:
                    throw .badRequest("\(name).content must be a string or an array of text parts, got \(JSON.serialize(v).prefix(40))",
                                      param: name + ".content")
                }
                msgs.append(ChatMessage(role: role, content: content))
            }
            let text: String
            do throws(LKError) {
                text = try render(msgs)
            } catch {
                throw .badRequest("the chat template failed on these messages: \(error.message)", param: "messages")
            }
            prompt = tokenize(text, true)
        } else {
            guard let pv = field(o, "prompt") else { throw .badRequest("prompt is required", param: "prompt") }
            switch pv {
            case .string(let s):
                prompt = tokenize(s, false)
            case .array(let a):
                if a.count == 1, let s = a[0].string {
                    prompt = tokenize(s, false)
                } else if a.count == 1, let inner = a[0].array {
                    prompt = try ids(inner, "prompt[0]", vocabSize)
                } else if a.allSatisfy({ $0.double != nil }) {
                    prompt = try ids(a, "prompt", vocabSize)
                } else {
                    throw .badRequest("prompt must be a string, one string in an array, or an array of token ids (one prompt per request)",
                                      param: "prompt")
                }
            default:
                throw .badRequest("prompt must be a string or an array of token ids, got \(JSON.serialize(pv).prefix(40))", param: "prompt")
            }
        }
        guard !prompt.isEmpty else { throw .badRequest("\(promptField) is empty (no tokens)", param: promptField) }
        guard prompt.count <= maxPositions else {
            throw .badRequest("This model's maximum context length is \(maxPositions) tokens; the \(promptField) has \(prompt.count) tokens",
                              param: promptField, code: "context_length_exceeded")
        }

        // Generation parameters (OpenAI's defaults: temperature 1, top_p 1; completions: max_tokens 16).
        var p = GenerateParams()
        p.sampler = SamplerParams()
        p.sampler.temperature = 1
        p.sampler.topP = 1
        p.sampler.topK = 0
        p.sampler.minP = 0
        p.sampler.seed = UInt64.random(in: 0...UInt64.max)
        let room = maxPositions - prompt.count + 1  // the last position's logits still give one token
        var maxTokens = chat ? room : 16
        for name in chat ? ["max_tokens", "max_completion_tokens"] : ["max_tokens"] {
            if let v = field(o, name) {
                let n = try integer(v, name)
                guard n >= 0 else { throw .badRequest("\(name) must be ≥ 0, got \(n)", param: name) }
                maxTokens = n
            }
        }
        p.maxTokens = min(maxTokens, room)
        if let v = field(o, "temperature") {
            let t = try number(v, "temperature")
            guard t >= 0, t <= 100 else { throw .badRequest("temperature must be in [0, 100] (0 = greedy), got \(t)", param: "temperature") }
            p.sampler.temperature = Float(t)
        }
        if let v = field(o, "top_p") {
            let t = try number(v, "top_p")
            guard t > 0, t <= 1 else { throw .badRequest("top_p must be in (0, 1], got \(t)", param: "top_p") }
            p.sampler.topP = Float(t)
        }
        if let v = field(o, "top_k") {  // vLLM's extension; -1 or 0 = off
            let k = try integer(v, "top_k")
            guard k >= -1 else { throw .badRequest("top_k must be ≥ -1 (-1 or 0 = off), got \(k)", param: "top_k") }
            p.sampler.topK = max(k, 0)
        }
        if let v = field(o, "min_p") {
            let t = try number(v, "min_p")
            guard t >= 0, t <= 1 else { throw .badRequest("min_p must be in [0, 1], got \(t)", param: "min_p") }
            p.sampler.minP = Float(t)
        }
        if let v = field(o, "repetition_penalty") {
            let t = try number(v, "repetition_penalty")
            guard t > 0, t <= 100 else { throw .badRequest("repetition_penalty must be in (0, 100], got \(t)", param: "repetition_penalty") }
            p.sampler.repetitionPenalty = Float(t)
        }
        if let v = field(o, "seed") {
            let s = try integer(v, "seed")
            p.sampler.seed = UInt64(bitPattern: Int64(s))
        }
        if let v = field(o, "stop") {
            switch v {
            case .string(let s): p.stop = [s]
            case .array(let a):
                guard a.count <= 16 else { throw .badRequest("stop has \(a.count) strings; at most 16", param: "stop") }
                for (i, e) in a.enumerated() { p.stop.append(try string(e, "stop[\(i)]")) }
            default:
                throw .badRequest("stop must be a string or an array of strings, got \(JSON.serialize(v).prefix(40))", param: "stop")
            }
            p.stop.removeAll { $0.isEmpty }
        }
        if let v = field(o, "ignore_eos") { p.stopAtEOS = try !bool(v, "ignore_eos") }  // vLLM's extension
        do throws(LKError) {
            try p.validate()
        } catch {
            throw .badRequest(error.message, param: nil)
        }
        let stream = try field(o, "stream").map { v throws(ServeError) in try bool(v, "stream") } ?? false
        var includeUsage = false
        if let so = field(o, "stream_options") {
            guard let soo = so.object else { throw .badRequest("stream_options must be an object", param: "stream_options") }
            if let v = field(soo, "include_usage") { includeUsage = try bool(v, "stream_options.include_usage") }
        }
        return CompletionRequest(chat: chat, model: model, prompt: prompt, params: p, stream: stream, includeUsage: includeUsage)
    }

    static func ids(_ a: [JSONValue], _ name: String, _ vocab: Int) throws(ServeError) -> [Int32] {
        var out: [Int32] = []
        for (i, v) in a.enumerated() {
            let t = try integer(v, "\(name)[\(i)]")
            guard t >= 0, t < vocab else {
                throw .badRequest("\(name)[\(i)]: token id \(t) is outside the vocabulary of \(vocab)", param: name)
            }
            out.append(Int32(t))
        }
        return out
    }
}
