import LoRAKit
import Synchronization
import Dispatch
#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// What a request's stream receives from the scheduler.
public enum ServeEvent: Sendable, Equatable {
    /// New text (complete UTF-8; a tail that may start a stop string is held back until it cannot).
    case text(String)
    /// The end: OpenAI's finish reason (`stop`: EOS or a stop string; `length`: max_tokens or the context
    /// is full) and the token counts.
    case finished(reason: String, promptTokens: Int, completionTokens: Int)
    /// The engine failed on this request; nothing more follows.
    case failed(String)
}

/// One generation request, from the HTTP handler to the scheduler. Its events arrive on `events`.
public final class ServeRequest: Sendable {
    public let prompt: [Int32]
    public let params: GenerateParams
    /// The served model name the request named (the base model's name or an adapter's).
    public let modelName: String
    /// The adapter it runs with (nil: the base model), at `scale`.
    public let adapter: AnyAdapter?
    public let scale: Float
    public let events: AsyncStream<ServeEvent>
    let continuation: AsyncStream<ServeEvent>.Continuation
    /// When it was queued (monotonic seconds).
    public let enqueuedAt: Double
    private let cancelled = Atomic<Bool>(false)

    public init(prompt: [Int32], params: GenerateParams, modelName: String, adapter: AnyAdapter?, scale: Float = 1) {
        self.prompt = prompt
        self.params = params
        self.modelName = modelName
        self.adapter = adapter
        self.scale = scale
        (events, continuation) = AsyncStream.makeStream(of: ServeEvent.self, bufferingPolicy: .unbounded)
        enqueuedAt = monotonicSeconds()
    }

    /// The client went away: the scheduler frees the request's sequence at its next step.
    public func cancel() { cancelled.store(true, ordering: .relaxed) }
    public var isCancelled: Bool { cancelled.load(ordering: .relaxed) }
}

/// Continuous batching: one thread owns the engine. Each iteration it admits queued requests into free
/// sequences, advances every running sequence by one token in the same `step`, samples each sequence's
/// next token with its own sampler, streams the text, and frees the sequences that ended (EOS, stop
/// string, max_tokens, full context, client gone).
///
/// Prompts are prefilled in chunks (vLLM's chunked prefill): a step evaluates one token of every decoding
/// sequence, then as many prompt tokens as fit in `maxStepTokens`, oldest request first. A long prompt thus
/// takes several steps instead of stalling every other stream for the whole prefill; a sequence samples
/// its first token in the step that evaluates the last token of its prompt.
public final class Scheduler: @unchecked Sendable {
    public let maxSequences: Int
    public let maxQueue: Int
    /// Tokens one step evaluates at most (decoding sequences always get their one token).
    public let maxStepTokens: Int
    /// Positions per sequence (prompt + generated).
    public let maxPositions: Int
    public let metrics: ServeMetrics
    private let engine: any SequenceBatchEngine  // touched only by the scheduler thread
    private let tokenizer: Tokenizer
    private let endIDs: Set<Int32>
    /// Called on the scheduler thread when a request is done (after its sequence was removed).
    private let onDone: @Sendable (ServeRequest) -> Void

    private struct Shared {
        var queue: [ServeRequest] = []
        var running = 0
        var stopping = false
    }
    private let shared = Locked(Shared())
    private let wake = DispatchSemaphore(value: 0)
    private let stopped = DispatchSemaphore(value: 0)

    public init(engine: any SequenceBatchEngine, tokenizer: Tokenizer, maxSequences: Int, maxQueue: Int, maxPositions: Int,
                maxStepTokens: Int = 512, metrics: ServeMetrics,
                onDone: @escaping @Sendable (ServeRequest) -> Void = { _ in }) {
        self.engine = engine
        self.tokenizer = tokenizer
        self.maxSequences = maxSequences
        self.maxQueue = maxQueue
        self.maxStepTokens = max(1, maxStepTokens)
        self.maxPositions = maxPositions
        self.metrics = metrics
        self.onDone = onDone
        var ends = Set<Int32>()
        if let e = tokenizer.eos { ends.insert(e) }
        if let e = tokenizer.eot { ends.insert(e) }
        endIDs = ends
    }

    /// Queue a request; false (and nothing queued) when the queue already holds `maxQueue` requests.
    public func submit(_ r: ServeRequest) -> Bool {
        let ok = shared.withLock { s -> Bool in
            if s.stopping || s.queue.count >= maxQueue { return false }
            s.queue.append(r)
            return true
        }
        if ok { wake.signal() }
        return ok
    }

    /// Requests waiting for a sequence.
    public var queueLength: Int { shared.withLock { $0.queue.count } }
    /// Requests holding a sequence.
    public var runningCount: Int { shared.withLock { $0.running } }

    /// Starts the scheduler's thread.
    public func start() {
        let box = Unmanaged.passRetained(self)
        var t = pthread_t()
        let rc = pthread_create(&t, nil, { raw in
            #if canImport(Darwin)
            let s = Unmanaged<Scheduler>.fromOpaque(raw).takeRetainedValue()
            #else
            let s = Unmanaged<Scheduler>.fromOpaque(raw!).takeRetainedValue()
            #endif
            s.loop()
            return nil
        }, box.toOpaque())
        if rc != 0 {
            box.release()
            fatalError("lorakit serve: cannot start the scheduler thread (pthread_create: \(rc))")
        }
        pthread_detach(t)
    }

    /// Ends every request (queued ones and running ones, with `.failed`) and the thread; returns when it has.
    public func stop() {
        shared.withLock { $0.stopping = true }
        wake.signal()
        stopped.wait()
    }

    private struct Running {
        let req: ServeRequest
        let seq: Int
        var sampler: Sampler
        var stream: TextStream
        var history: [Int32]
        var pending: [Int32]
        var position = 0
        var generated = 0
    }

    private func end(_ r: ServeRequest, _ event: ServeEvent?, seq: Int?, reason: String) {
        if let seq { try? engine.removeSequence(seq) }
        if let event { r.continuation.yield(event) }
        r.continuation.finish()
        metrics.finished(model: r.modelName, reason: reason)
        onDone(r)
    }

    private func loop() {
        var running: [Running] = []
        while true {
            var admitted: [ServeRequest] = []
            let stopping = shared.withLock { s -> Bool in
                if s.stopping { return true }
                while running.count + admitted.count < maxSequences, !s.queue.isEmpty {
                    admitted.append(s.queue.removeFirst())
                }
                s.running = running.count + admitted.count
                return false
            }
            if stopping {
                let queued = shared.withLock { s -> [ServeRequest] in
                    defer { s.queue = []; s.running = 0 }
                    return s.queue
                }
                for r in running { end(r.req, .failed("the server is shutting down"), seq: r.seq, reason: "error") }
                for r in queued { end(r, .failed("the server is shutting down"), seq: nil, reason: "error") }
                stopped.signal()
                return
            }
            if running.isEmpty && admitted.isEmpty {
                wake.wait()
                continue
            }
            // Clients that went away.
            running.removeAll { r in
                guard r.req.isCancelled else { return false }
                end(r.req, nil, seq: r.seq, reason: "cancelled")
                return true
            }
            // New requests: a sequence each, with its adapter; the prompt is this step's input.
            for req in admitted {
                if req.isCancelled { end(req, nil, seq: nil, reason: "cancelled"); continue }
                if req.prompt.isEmpty { end(req, .failed("the prompt has no tokens"), seq: nil, reason: "error"); continue }
                if req.params.maxTokens == 0 {
                    end(req, .finished(reason: "length", promptTokens: req.prompt.count, completionTokens: 0), seq: nil, reason: "length")
                    continue
                }
                var seq: Int? = nil
                do throws(LKError) {
                    let sampler = try Sampler(req.params.sampler)
                    let s = try engine.addSequence()
                    seq = s
                    try engine.setAdapters(req.adapter.map { [(adapter: $0, scale: req.scale)] } ?? [], for: s)
                    running.append(Running(req: req, seq: s, sampler: sampler, stream: TextStream(stops: req.params.stop),
                                           history: req.prompt, pending: req.prompt))
                    metrics.admitted(model: req.modelName, promptTokens: req.prompt.count,
                                     queueSeconds: monotonicSeconds() - req.enqueuedAt)
                } catch {
                    end(req, .failed(error.message), seq: seq, reason: "error")
                }
            }
            shared.withLock { $0.running = running.count }
            if running.isEmpty { continue }

            // This step's input: one token of each decoding sequence, then prompt chunks within the budget
            // (`running` keeps admission order, so the oldest prompt goes first).
            var take = [Int](repeating: 0, count: running.count)
            var budget = maxStepTokens
            for (i, r) in running.enumerated() where r.generated > 0 {
                take[i] = 1
                budget -= 1
            }
            for (i, r) in running.enumerated() where r.generated == 0 && budget > 0 {
                take[i] = min(r.pending.count, budget)
                budget -= take[i]
            }
            let inStep = running.indices.filter { take[$0] > 0 }
            let t0 = monotonicSeconds()
            let logits: [[Float]]
            do throws(LKError) {
                logits = try engine.step(inStep.map { (sequence: running[$0].seq, tokens: Array(running[$0].pending.prefix(take[$0]))) })
            } catch {
                for r in running { end(r.req, .failed(error.message), seq: r.seq, reason: "error") }
                running = []
                continue
            }
            let t1 = monotonicSeconds()
            var rows = 0
            var next: [Running] = []
            var perModel: [String: Int] = [:]
            var stepLogits = [[Float]?](repeating: nil, count: running.count)
            for (k, i) in inStep.enumerated() { stepLogits[i] = logits[k] }
            for (i, var r) in running.enumerated() {
                rows += take[i]
                r.position += take[i]
                r.pending.removeFirst(take[i])
                // Not in this step, or its prompt is not all evaluated yet: nothing to sample.
                guard var l = stepLogits[i], r.pending.isEmpty else {
                    next.append(r)
                    continue
                }
                let tok = r.sampler.sample(logits: &l, history: r.history)
                r.history.append(tok)
                r.generated += 1
                perModel[r.req.modelName, default: 0] += 1
                if r.generated == 1 { metrics.firstToken(seconds: t1 - r.req.enqueuedAt) }
                var reason: String? = nil
                var flush = true
                if r.req.params.stopAtEOS && endIDs.contains(tok) {
                    reason = "stop"
                } else {
                    let (piece, stopped) = r.stream.push(tokenizer.tokenBytes(tok))
                    if !piece.isEmpty { r.req.continuation.yield(.text(piece)) }
                    if stopped {
                        reason = "stop"
                        flush = false
                    } else if r.generated >= r.req.params.maxTokens || r.position >= maxPositions {
                        reason = "length"
                    }
                }
                if let reason {
                    if flush {
                        let rest = r.stream.flush()
                        if !rest.isEmpty { r.req.continuation.yield(.text(rest)) }
                    }
                    end(r.req, .finished(reason: reason, promptTokens: r.req.prompt.count, completionTokens: r.generated),
                        seq: r.seq, reason: reason)
                } else {
                    r.pending = [tok]
                    next.append(r)
                }
            }
            running = next
            metrics.step(seconds: t1 - t0, rows: rows, sequences: inStep.count, tokens: perModel)
        }
    }
}
