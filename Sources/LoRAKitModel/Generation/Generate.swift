import LoRAKitCore
import LoRAKitKernels
import LoRAKitFormats
import LoRAKitTokenizer
import LoRAKitTemplates

/// Text generation on a context: prefill the prompt, then sample token by token with streaming output,
/// stop strings, EOS and a token budget.
public struct GenerateParams: Sendable {
    public var maxTokens: Int = 128
    public var sampler = SamplerParams()
    /// Generation stops when the output contains one of these; the stop string is not returned.
    public var stop: [String] = []
    /// Stop at the model's end-of-generation tokens (EOS, EOT, and `<|im_end|>`-like control tokens).
    public var stopAtEOS = true
    public init() {}

    /// Checks every field; the error (`LKError.invalidOption`) names it: `max_tokens`, and the sampler's
    /// as `sampler.top_k`, ….
    public func validate() throws(LKError) {
        guard maxTokens >= 0 else { throw .invalidOption(field: "max_tokens", problem: "\(maxTokens) must be ≥ 0") }
        do { try sampler.validate() } catch { throw error.namingField { "sampler." + $0 } }
    }
}

public enum StopReason: String, Sendable {
    case eos, stopString = "stop", maxTokens = "length", callback, contextFull = "context"
}

public struct GenerationResult: Sendable {
    /// Generated text (without the prompt and without a matched stop string).
    public var text: String
    /// Generated token ids (including an EOS token that ended generation).
    public var tokens: [Int32]
    public var promptTokens: Int
    public var stopReason: StopReason
    public var prefillSeconds: Double
    public var decodeSeconds: Double
}

/// Streams text pieces as complete UTF-8 (through `UTF8StreamDecoder`) and holds back any tail that
/// could start a stop string. (`package`: the server's scheduler streams each sequence through one.)
package struct TextStream {
    var decoder = UTF8StreamDecoder()
    /// Complete text held back because it may be the start of a stop string.
    var held = ""
    var emitted = ""
    let stops: [String]

    package init(stops: [String]) { self.stops = stops }

    /// Add bytes; returns newly safe text, and whether a stop string matched (text then excludes it).
    package mutating func push(_ bytes: [UInt8]) -> (String, Bool) {
        let full = emitted + held + decoder.append(bytes)
        for s in stops where !s.isEmpty {
            if let r = full.firstRange(of: s) {
                let before = String(full[..<r.lowerBound])
                let new = String(before.dropFirst(emitted.count))
                emitted = before
                held = ""
                return (new, true)
            }
        }
        // Hold back a suffix that is a prefix of some stop string.
        var hold = 0
        for s in stops where !s.isEmpty {
            let maxL = min(s.count - 1, full.count)
            if maxL <= 0 { continue }
            for l in stride(from: maxL, through: 1, by: -1) where full.hasSuffix(String(s.prefix(l))) {
                hold = max(hold, l)
                break
            }
        }
        let safe = String(full.prefix(max(full.count - hold, emitted.count)))
        let new = String(safe.dropFirst(emitted.count))
        emitted = safe
        held = String(full.dropFirst(safe.count))
        return (new, false)
    }

    /// Everything still held back (at the end of generation).
    package mutating func flush() -> String {
        let s = held + decoder.flush()
        held = ""
        emitted += s
        return s
    }
}

/// Generate from prompt tokens. `onText` receives each new piece of text (complete UTF-8, stop strings
/// held back) and the token that produced it; returning false stops generation (`StopReason.callback`).
/// The context continues from its current position (the prompt is appended to what is cached).
public func generate(context ctx: LlamaContext, prompt: [Int32], params: GenerateParams,
                     onText: ((String, Int32) -> Bool)? = nil) throws(LKError) -> GenerationResult {
    try params.validate()
    guard !prompt.isEmpty else { throw .invalidArgument("generate: empty prompt") }
    let model = ctx.model
    let tok = model.tokenizer
    var sampler = try Sampler(params.sampler)
    var stream = TextStream(stops: params.stop)
    var endIDs = Set<Int32>()
    if params.stopAtEOS, let t = tok {
        if let e = t.eos { endIDs.insert(e) }
        if let e = t.eot { endIDs.insert(e) }
    }
    let t0 = monotonicSeconds()
    var logits = try ctx.evaluate(.tokens(prompt))
    let t1 = monotonicSeconds()
    var history = prompt
    var out: [Int32] = []
    var reason = StopReason.maxTokens
    var text = ""
    while out.count < params.maxTokens {
        let s0 = ctx.tick()
        let next = sampler.sample(logits: &logits, history: history)
        ctx.profile?.addOutside(.sampling, seconds: monotonicSeconds() - s0)
        out.append(next)
        history.append(next)
        if endIDs.contains(next) { reason = .eos; break }
        let bytes = tok?.tokenBytes(next) ?? []
        let (piece, stopped) = stream.push(bytes)
        text += piece
        if let cb = onText, !piece.isEmpty || stopped, !cb(piece, next) { reason = .callback; break }
        if stopped { reason = .stopString; break }
        if out.count == params.maxTokens { break }
        if ctx.position >= ctx.maxPositions { reason = .contextFull; break }
        logits = try ctx.evaluate(.tokens([next]))
    }
    if reason != .stopString {
        let rest = stream.flush()
        if !rest.isEmpty {
            text += rest
            _ = onText?(rest, out.last ?? -1)
        }
    }
    let t2 = monotonicSeconds()
    return GenerationResult(text: text, tokens: out, promptTokens: prompt.count, stopReason: reason,
                            prefillSeconds: t1 - t0, decodeSeconds: t2 - t1)
}

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// Seconds from a monotonic clock.
public func monotonicSeconds() -> Double {
    var ts = timespec()
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return Double(ts.tv_sec) + Double(ts.tv_nsec) * 1e-9
}
