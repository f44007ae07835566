import Hummingbird
import LoRAKit

/// How `lorakit serve` runs.
public struct ServeOptions: Sendable {
    /// The base model's name in `/v1/models` and in requests' `"model"`.
    public var modelName: String
    public var modelPath: String
    public var maxSequences = 4
    public var maxQueue = 64
    /// Tokens one engine step evaluates at most: prompts are prefilled in chunks of what is left after one
    /// token for every decoding sequence (`Scheduler.maxStepTokens`).
    public var maxStepTokens = 512
    /// Required as `Authorization: Bearer KEY` on every route but /health when set.
    public var apiKey: String?
    public var host = "127.0.0.1"
    /// 0 = any free port (the chosen one is reported to `run`'s `onListening`).
    public var port = 8000
    /// Largest request body read.
    public var maxBodyBytes = 8 << 20

    public init(modelName: String, modelPath: String) {
        self.modelName = modelName
        self.modelPath = modelPath
    }
}

/// The OpenAI-compatible server: routes (Hummingbird) in front of a `Scheduler` that owns the engine.
public final class LoRAServer: Sendable {
    public let model: LlamaModel
    public let options: ServeOptions
    public let registry: AdapterRegistry
    public let scheduler: Scheduler
    public let metrics: ServeMetrics
    /// Positions per sequence.
    public let maxPositions: Int
    /// Human-readable name of the engine (`/health`, the start-up line).
    public let engineName: String
    private let tokenizer: Tokenizer
    private let created = Int(wallClockSeconds())

    /// `engine` must hold `options.maxSequences` sequences of `maxPositions` positions each.
    public init(model: LlamaModel, engine: any SequenceBatchEngine, engineName: String, maxPositions: Int,
                options: ServeOptions) throws(LKError) {
        guard options.maxSequences >= 1 else { throw .invalidOption(field: "max_sequences", problem: "\(options.maxSequences) must be ≥ 1") }
        guard options.maxStepTokens >= 1 else {
            throw .invalidOption(field: "max_batch_tokens", problem: "\(options.maxStepTokens) must be ≥ 1")
        }
        guard options.maxQueue >= 0 else { throw .invalidOption(field: "max_queue", problem: "\(options.maxQueue) must be ≥ 0") }
        guard options.port >= 0, options.port <= 65535 else { throw .invalidOption(field: "port", problem: "\(options.port) must be in 0...65535") }
        if let k = options.apiKey, k.isEmpty { throw .invalidOption(field: "api_key", problem: "is empty") }
        self.model = model
        self.tokenizer = try model.requireTokenizer()
        self.options = options
        self.maxPositions = maxPositions
        self.engineName = engineName
        let registry = AdapterRegistry(model: model, baseName: options.modelName)
        self.registry = registry
        let metrics = ServeMetrics()
        self.metrics = metrics
        self.scheduler = Scheduler(engine: engine, tokenizer: tokenizer, maxSequences: options.maxSequences,
                                   maxQueue: options.maxQueue, maxPositions: maxPositions, maxStepTokens: options.maxStepTokens, metrics: metrics,
                                   onDone: { r in if r.adapter != nil { registry.release(r.modelName) } })
    }

    /// Serves until SIGINT/SIGTERM. `onListening(host, port)` runs once the socket is bound.
    public func run(onListening: @escaping @Sendable (String, Int) -> Void) async throws {
        scheduler.start()
        let host = options.host, port = options.port
        let app = Application(router: buildRouter(),
                              configuration: .init(address: .hostname(host, port: port), serverName: "lorakit"),
                              onServerRunning: { ch in onListening(host, ch.localAddress?.port ?? port) })
        try await app.runService()
        scheduler.stop()
    }

    // MARK: - Routes

    func buildRouter() -> Router<BasicRequestContext> {
        let router = Router()
        if let key = options.apiKey { router.add(middleware: APIKeyMiddleware(key: key, metrics: metrics)) }
        router.get("/health") { [self] _, _ in
            json(.object([("status", .string("ok")), ("engine", .string(engineName))]))
        }
        router.get("/v1/models") { [self] _, _ in models() }
        router.get("/metrics") { [self] _, _ in
            let text = metrics.prometheus(queueLength: scheduler.queueLength, running: scheduler.runningCount,
                                          maxSequences: scheduler.maxSequences,
                                          models: [options.modelName] + registry.list().map(\.name))
            return Response(status: .ok, headers: [.contentType: "text/plain; version=0.0.4; charset=utf-8"],
                            body: ResponseBody(byteBuffer: ByteBuffer(string: text)))
        }
        router.post("/v1/completions") { [self] req, _ in await watchingClient(req, chat: false) }
        router.post("/v1/chat/completions") { [self] req, _ in await watchingClient(req, chat: true) }
        router.post("/v1/load_lora_adapter") { [self] req, _ in await loadAdapter(req) }
        router.post("/v1/unload_lora_adapter") { [self] req, _ in await unloadAdapter(req) }
        return router
    }

    func json(_ v: JSONValue, status: Int = 200) -> Response {
        Response(status: HTTPResponse.Status(code: status), headers: [.contentType: "application/json"],
                 body: ResponseBody(byteBuffer: ByteBuffer(string: JSON.serialize(v))))
    }

    func fail(_ e: ServeError, reason: String = "bad_request") -> Response {
        metrics.rejected(reason)
        var r = json(e.json, status: e.status)
        if e.status == 429 { r.headers[.retryAfter] = "1" }
        return r
    }

    func readJSON(_ request: Request) async throws(ServeError) -> JSONValue {
        try await readJSON(request.body)
    }

    func readJSON(_ body: RequestBody) async throws(ServeError) -> JSONValue {
        let buffer: ByteBuffer
        do {
            buffer = try await body.collect(upTo: options.maxBodyBytes)
        } catch {
            throw ServeError(status: 413, message: "the request body is larger than \(options.maxBodyBytes) bytes",
                             type: "invalid_request_error")
        }
        do throws(LKError) {
            return try JSON.parse(Array(buffer.readableBytesView))
        } catch {
            throw .badRequest("the request body is not valid JSON: \(error.message)")
        }
    }

    func models() -> Response {
        func entry(_ id: String, root: String, parent: String?, created: Int) -> JSONValue {
            .object([("id", .string(id)), ("object", .string("model")), ("created", .number(Double(created))),
                     ("owned_by", .string("lorakit")), ("root", .string(root)),
                     ("parent", parent.map { .string($0) } ?? .null), ("max_model_len", .number(Double(maxPositions)))])
        }
        var data = [entry(options.modelName, root: options.modelPath, parent: nil, created: created)]
        for a in registry.list() { data.append(entry(a.name, root: a.path, parent: options.modelName, created: a.created)) }
        return json(.object([("object", .string("list")), ("data", .array(data))]))
    }

    /// A completion request, its connection watched while the handler runs: the client closing it (the
    /// inbound side ends) before a non-streaming answer cancels the request, which frees its sequence at
    /// the scheduler's next step (a stream notices at its next failed write). The connection is not reused
    /// after the response (watching it reads past the request), so a keep-alive client opens a new one
    /// for its next completion. `consumeWithInboundCloseHandler` needs the request's body as the
    /// connection delivered it (it traps on a body a middleware replaced or collected: none of ours does).
    func watchingClient(_ request: Request, chat: Bool) async -> Response {
        let watch = ClientWatch()
        do {
            return try await request.body.consumeWithInboundCloseHandler({ body in
                await completion(body, chat: chat, watch: watch)
            }, onInboundClosed: { watch.closed() })
        } catch {
            watch.closed()
            return fail(ServeError(status: 500, message: "the request could not be read: \(error)", type: "server_error"))
        }
    }

    func completion(_ requestBody: RequestBody, chat: Bool, watch: ClientWatch) async -> Response {
        let parsed: CompletionRequest
        do throws(ServeError) {
            let body = try await readJSON(requestBody)
            let tok = tokenizer, m = model
            parsed = try OpenAIRequest.parse(
                body, chat: chat, maxPositions: maxPositions, vocabSize: model.config.vocabSize,
                tokenize: { text, chat in tok.encode(text, addSpecial: chat ? false : nil) },
                render: { (msgs) throws(LKError) in try renderChat(m, msgs) })
        } catch {
            return fail(error)
        }
        var adapter: AnyAdapter? = nil
        if parsed.model != options.modelName {
            guard let a = registry.acquire(parsed.model) else {
                return fail(.badRequest("The model `\(parsed.model)` does not exist (GET /v1/models lists the base model and the adapters)",
                                        param: "model", code: "model_not_found"))
            }
            adapter = a
        }
        let req = ServeRequest(prompt: parsed.prompt, params: parsed.params, modelName: parsed.model, adapter: adapter)
        guard scheduler.submit(req) else {
            if adapter != nil { registry.release(parsed.model) }
            return fail(ServeError(status: 429, message: "the server's queue is full (\(scheduler.maxQueue) requests waiting); retry later",
                                   type: "rate_limit_error", code: "queue_full"), reason: "queue_full")
        }
        let id = (chat ? "chatcmpl-" : "cmpl-") + randomID()
        let created = Int(wallClockSeconds())
        if parsed.stream {
            return stream(req, parsed, id: id, created: created)
        }
        // Watched only here: a stream's response body runs after this handler has returned (and the
        // watch has ended); its failed writes cancel it.
        watch.watch(req)
        let (text, finish) = await withTaskCancellationHandler {
            var text = ""
            var finish: ServeEvent? = nil
            for await ev in req.events {
                switch ev {
                case .text(let s): text += s
                default: finish = ev
                }
            }
            return (text, finish)
        } onCancel: {
            req.cancel()
        }
        guard case .finished(let reason, let pt, let ct)? = finish else {
            var message = "the request was cancelled"
            if case .failed(let m)? = finish { message = m }
            return json(ServeError(status: 500, message: message, type: "server_error").json, status: 500)
        }
        let choice: JSONValue = chat
            ? .object([("index", .number(0)), ("message", .object([("role", .string("assistant")), ("content", .string(text))])),
                       ("logprobs", .null), ("finish_reason", .string(reason))])
            : .object([("index", .number(0)), ("text", .string(text)), ("logprobs", .null), ("finish_reason", .string(reason))])
        return json(.object([
            ("id", .string(id)), ("object", .string(chat ? "chat.completion" : "text_completion")),
            ("created", .number(Double(created))), ("model", .string(parsed.model)), ("choices", .array([choice])),
            ("usage", usage(pt, ct)),
        ]))
    }

    func usage(_ prompt: Int, _ completion: Int) -> JSONValue {
        .object([("prompt_tokens", .number(Double(prompt))), ("completion_tokens", .number(Double(completion))),
                 ("total_tokens", .number(Double(prompt + completion)))])
    }

    /// Server-sent events in OpenAI's chunk format, ending with `data: [DONE]`. A failed write (the client
    /// went away) cancels the request, which frees its sequence at the scheduler's next step.
    func stream(_ req: ServeRequest, _ parsed: CompletionRequest, id: String, created: Int) -> Response {
        let chat = parsed.chat, model = parsed.model, includeUsage = parsed.includeUsage
        @Sendable func chunk(_ delta: JSONValue?, text: String?, finish: String?) -> ByteBuffer {
            let choice: JSONValue = chat
                ? .object([("index", .number(0)), ("delta", delta ?? .object([])), ("logprobs", .null),
                           ("finish_reason", finish.map { .string($0) } ?? .null)])
                : .object([("index", .number(0)), ("text", .string(text ?? "")), ("logprobs", .null),
                           ("finish_reason", finish.map { .string($0) } ?? .null)])
            var o: [(String, JSONValue)] = [
                ("id", .string(id)), ("object", .string(chat ? "chat.completion.chunk" : "text_completion")),
                ("created", .number(Double(created))), ("model", .string(model)), ("choices", .array([choice])),
            ]
            if includeUsage { o.append(("usage", .null)) }
            return ByteBuffer(string: "data: " + JSON.serialize(.object(o)) + "\n\n")
        }
        let usageChunk: @Sendable (Int, Int) -> ByteBuffer = { [self] pt, ct in
            ByteBuffer(string: "data: " + JSON.serialize(.object([
                ("id", .string(id)), ("object", .string(chat ? "chat.completion.chunk" : "text_completion")),
                ("created", .number(Double(created))), ("model", .string(model)), ("choices", .array([])),
                ("usage", usage(pt, ct)),
            ])) + "\n\n")
        }
        let body = ResponseBody { writer in
            var ended = false
            do {
                try await withTaskCancellationHandler {
                    if chat {
                        try await writer.write(chunk(.object([("role", .string("assistant")), ("content", .string(""))]),
                                                     text: nil, finish: nil))
                    }
                    for await ev in req.events {
                        switch ev {
                        case .text(let s):
                            try await writer.write(chunk(.object([("content", .string(s))]), text: s, finish: nil))
                        case .finished(let reason, let pt, let ct):
                            ended = true
                            try await writer.write(chunk(nil, text: nil, finish: reason))
                            if includeUsage { try await writer.write(usageChunk(pt, ct)) }
                        case .failed(let m):
                            ended = true
                            try await writer.write(ByteBuffer(string: "data: " + JSON.serialize(
                                ServeError(status: 500, message: m, type: "server_error").json) + "\n\n"))
                        }
                    }
                    if !ended { req.cancel() }
                    try await writer.write(ByteBuffer(string: "data: [DONE]\n\n"))
                    try await writer.finish(nil)
                } onCancel: {
                    req.cancel()
                }
            } catch {
                req.cancel()
                throw error
            }
        }
        return Response(status: .ok, headers: [.contentType: "text/event-stream", .cacheControl: "no-cache"], body: body)
    }

    func loadAdapter(_ request: Request) async -> Response {
        do throws(ServeError) {
            let body = try await readJSON(request)
            guard let o = body.object else { throw .badRequest("the request body must be a JSON object") }
            guard let nv = OpenAIRequest.field(o, "lora_name") else { throw .badRequest("lora_name is required", param: "lora_name") }
            guard let pv = OpenAIRequest.field(o, "lora_path") else { throw .badRequest("lora_path is required", param: "lora_path") }
            let name = try OpenAIRequest.string(nv, "lora_name"), path = try OpenAIRequest.string(pv, "lora_path")
            try registry.load(name: name, path: path)
            return Response(status: .ok, headers: [.contentType: "text/plain; charset=utf-8"],
                            body: ResponseBody(byteBuffer: ByteBuffer(string: "Success: LoRA adapter '\(name)' added successfully.")))
        } catch {
            return fail(error)
        }
    }

    /// Removes an adapter once the requests using it (queued or running) have ended; new requests naming
    /// it get 400 from the start of the call.
    func unloadAdapter(_ request: Request) async -> Response {
        do throws(ServeError) {
            let body = try await readJSON(request)
            guard let o = body.object else { throw .badRequest("the request body must be a JSON object") }
            guard let nv = OpenAIRequest.field(o, "lora_name") else { throw .badRequest("lora_name is required", param: "lora_name") }
            let name = try OpenAIRequest.string(nv, "lora_name")
            guard registry.beginUnload(name) else {
                throw .badRequest("The lora adapter '\(name)' cannot be found", param: "lora_name", code: "model_not_found")
            }
            while registry.users(name) > 0 { try? await Task.sleep(for: .milliseconds(10)) }
            registry.remove(name)
            return Response(status: .ok, headers: [.contentType: "text/plain; charset=utf-8"],
                            body: ResponseBody(byteBuffer: ByteBuffer(string: "Success: LoRA adapter '\(name)' removed successfully.")))
        } catch {
            return fail(error)
        }
    }
}

/// The model's chat template applied to `messages`, with a generation prompt, as `lorakit generate --chat`
/// (`LlamaModel.applyChatTemplate`: parsed once, under the model's template limits).
func renderChat(_ m: LlamaModel, _ msgs: [ChatMessage]) throws(LKError) -> String {
    try m.applyChatTemplate(messages: msgs, addGenerationPrompt: true)
}

func randomID() -> String {
    var g = SystemRandomNumberGenerator()
    let hex = Array("0123456789abcdef")
    return String((0..<24).map { _ in hex[Int(g.next() % 16)] })
}

/// `Authorization: Bearer KEY` on every route but /health; 401 in OpenAI's error shape otherwise.
struct APIKeyMiddleware: RouterMiddleware {
    typealias Context = BasicRequestContext
    let key: [UInt8]
    let metrics: ServeMetrics

    init(key: String, metrics: ServeMetrics) {
        self.key = Array(("Bearer " + key).utf8)
        self.metrics = metrics
    }

    func handle(_ request: Request, context: Context,
                next: (Request, Context) async throws -> Response) async throws -> Response {
        if request.uri.path == "/health" { return try await next(request, context) }
        let given = Array((request.headers[.authorization] ?? "").utf8)
        var diff = given.count == key.count ? 0 : 1
        for i in 0..<min(given.count, key.count) { diff |= Int(given[i] ^ key[i]) }
        if diff == 0 { return try await next(request, context) }
        metrics.rejected("unauthorized")
        let e = ServeError(status: 401, message: given.isEmpty ? "missing API key (send Authorization: Bearer KEY)" : "incorrect API key",
                           type: "invalid_request_error", code: "invalid_api_key")
        return Response(status: .unauthorized, headers: [.contentType: "application/json"],
                        body: ResponseBody(byteBuffer: ByteBuffer(string: JSON.serialize(e.json))))
    }
}

/// The request a connection's completion is running, cancelled when the client closes the connection
/// (also when that happens before the request is known).
final class ClientWatch: Sendable {
    private let state = Locked<(request: ServeRequest?, closed: Bool)>((nil, false))

    func watch(_ req: ServeRequest) {
        let gone = state.withLock { s in
            s.request = req
            return s.closed
        }
        if gone { req.cancel() }
    }

    func closed() {
        let req = state.withLock { s in
            s.closed = true
            return s.request
        }
        req?.cancel()
    }
}
