import ArgumentParser
import LoRAKit
#if canImport(Glibc)
import Glibc
#endif

/// `lorakit chat`: an interactive conversation with a model (and adapters), answers streamed as they are
/// generated. The whole conversation is rendered with the model's chat template at every turn; the tokens
/// it shares with what the context already holds are not evaluated again (the KV cache is kept and cut at
/// the first difference). When the conversation no longer fits the context, its oldest turns are dropped.
struct ChatCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "chat",
        abstract: "Chat with a model (and adapters) in the terminal, answers streamed.",
        discussion: """
        Commands at the prompt: /reset (forget the conversation), /adapter PATH [SCALE] (swap the \
        attached adapters for this one, PEFT folder or GGUF LoRA), /adapter none (detach), /scale SCALE, \
        /help, /quit (or end of input). The conversation is kept within --ctx tokens: the oldest turns are \
        dropped when a new one does not fit.
        """)
    @Option(help: "GGUF file or Hugging Face folder.") var model: String
    @Option(help: "LoRA adapter PATH[:SCALE] (repeatable: adapters stack).") var adapter: [String] = []
    @Option(help: "System message.") var system: String?
    @Option(help: "Context size in tokens (default: min(model context, 2048)).") var ctx: Int?
    @Option(help: "Maximum tokens per answer.") var maxTokens: Int = 256
    @OptionGroup var sampling: SamplingOptions
    @OptionGroup var threadOpt: ThreadOption
    @OptionGroup var kv: KVTypeOption
    @OptionGroup var chatLimits: ChatLimitOptions

    func run() throws {
        try runReporting {
            let m = try loadModel(model)
            try chatLimits.apply(to: m)
            var session = try ChatSession(model: m, contextSize: ctx ?? min(m.config.contextLength, 2048),
                                          threads: threadOpt.threads, kvType: kv.kvType, system: system)
            try attach(try loadAdapters(adapter, model: m), to: session.context)
            var params = GenerateParams()
            params.maxTokens = maxTokens
            params.sampler = sampling.params
            let described = adapter.isEmpty ? "no adapter" : "adapter " + adapter.joined(separator: ", ")
            say("lorakit chat: \(m.source) (\(described)); /help for commands, /quit or Ctrl-D to leave.")
            while true {
                writeStdout("> ")
                guard let line = readLine(strippingNewline: true) else { say(""); break }
                let text = line.trimmingWhitespace()
                if text.isEmpty { continue }
                if text.hasPrefix("/") {
                    if try !command(text, session: &session) { break }
                    continue
                }
                do throws(LKError) {
                    let trimmed = try session.reply(to: text, params: params) { piece in writeStdout(piece) }
                    say("")
                    if trimmed > 0 { say("(\(trimmed) earliest turn(s) dropped to fit the context)") }
                } catch {
                    say("")
                    writeStderr("lorakit: error: \(error.message)\n")
                }
            }
        }
    }

    /// Run a /command; false ends the chat.
    func command(_ text: String, session: inout ChatSession) throws(LKError) -> Bool {
        let parts = text.split(separator: " ", omittingEmptySubsequences: true).map(String.init)
        switch parts[0] {
        case "/quit", "/exit", "/q":
            return false
        case "/reset":
            session.reset()
            say("(conversation cleared)")
        case "/adapter":
            guard parts.count >= 2 else { say("usage: /adapter PATH [SCALE] | /adapter none"); return true }
            if parts[1] == "none" || parts[1] == "off" {
                session.context.detachAll()
                session.cacheChanged()
                say("(no adapter)")
                return true
            }
            var scale: Float = 1
            var pathParts = Array(parts.dropFirst())
            if pathParts.count >= 2, let s = Float(pathParts.last!), s.isFinite {
                scale = s
                pathParts.removeLast()
            }
            let path = pathParts.joined(separator: " ")
            do throws(LKError) {
                let a = try LoRAAdapter.load(path: path, model: session.context.model)
                session.context.detachAll()
                try session.context.attach(a, scale: scale)
                session.cacheChanged()
                say("(adapter \(path), scale \(SVG.num(Double(scale))))")
            } catch {
                writeStderr("lorakit: error: \(error.message)\n")
            }
        case "/scale":
            guard parts.count == 2, let s = Float(parts[1]), s.isFinite else { say("usage: /scale SCALE"); return true }
            let attached = session.context.attachedAdapters
            guard !attached.isEmpty else { say("(no adapter attached)"); return true }
            for (a, _) in attached { try session.context.setScale(s, for: a) }
            session.cacheChanged()
            say("(scale \(SVG.num(Double(s))))")
        case "/help", "/?":
            say("/reset  /adapter PATH [SCALE]  /adapter none  /scale SCALE  /quit")
        default:
            say("unknown command \(parts[0]); /help lists them")
        }
        return true
    }
}

/// A conversation and the context that holds its tokens.
struct ChatSession {
    let context: LlamaContext
    let template: ChatTemplate
    let tokenizer: Tokenizer
    let system: String?
    var extra: [String: TemplateValue] = [:]
    /// User and assistant turns, oldest first (the system message is kept apart and never dropped).
    var turns: [ChatMessage] = []
    /// The tokens the context's cache holds, position by position.
    var cached: [Int32] = []

    init(model: LlamaModel, contextSize: Int, threads: Int, kvType: KVCacheType = .f32, system: String?) throws(LKError) {
        guard let src = model.chatTemplate else { throw .unsupported("\(model.source): the model has no chat template") }
        template = try ChatTemplate(src)
        tokenizer = try model.requireTokenizer()
        context = try LlamaContext(model: model, maxPositions: contextSize, threads: threads, kvType: kvType)
        self.system = system
        if let b = tokenizer.bos, let s = tokenizer.token(b) { extra["bos_token"] = .string(s) }
        if let e = tokenizer.eos, let s = tokenizer.token(e) { extra["eos_token"] = .string(s) }
    }

    mutating func reset() {
        turns = []
        cacheChanged()
    }

    /// The cached keys and values no longer match what the model would compute (adapters changed).
    mutating func cacheChanged() {
        context.reset()
        cached = []
    }

    func render(_ turns: [ChatMessage]) throws(LKError) -> [Int32] {
        var msgs: [ChatMessage] = []
        if let s = system { msgs.append(ChatMessage(role: "system", content: s)) }
        msgs += turns
        let text = try template.render(messages: msgs, addGenerationPrompt: true, extra: extra)
        return tokenizer.encode(text, addSpecial: false)
    }

    /// Answer `message`, streaming the text to `onText`; returns how many of the oldest turns were dropped
    /// to make room.
    mutating func reply(to message: String, params: GenerateParams, onText: @escaping (String) -> Void) throws(LKError) -> Int {
        var history = turns + [ChatMessage(role: "user", content: message)]
        var prompt = try render(history)
        var dropped = 0
        let room = context.maxPositions - min(params.maxTokens, context.maxPositions / 2)
        while prompt.count > room && history.count > 1 {
            // Drop the oldest exchange (a user turn and the answer after it).
            history.removeFirst(min(2, history.count - 1))
            dropped += 1
            prompt = try render(history)
        }
        guard prompt.count < context.maxPositions else {
            throw .invalidArgument("the message is \(prompt.count) tokens with the template; the context holds \(context.maxPositions) (--ctx)")
        }
        // Keep the cached prefix this prompt shares; evaluate only the rest.
        var common = 0
        while common < min(cached.count, prompt.count - 1), cached[common] == prompt[common] { common += 1 }
        try context.truncate(to: common)
        cached.removeSubrange(common...)
        let r = try generate(context: context, prompt: Array(prompt[common...]), params: params) { piece, _ in
            onText(piece)
            return true
        }
        // The context now holds the prompt and the answer's tokens but the last (sampled, not evaluated).
        let all = prompt + r.tokens
        cached = Array(all[..<min(all.count, context.position)])
        history.append(ChatMessage(role: "assistant", content: r.text.trimmingWhitespace()))
        turns = history
        return dropped
    }
}

/// A line on standard output, unbuffered like the streamed answers (so the two never interleave).
func say(_ s: String) { writeStdout(s + "\n") }

extension String {
    func trimmingWhitespace() -> String {
        var s = Substring(self)
        while let f = s.first, f.isWhitespace { s.removeFirst() }
        while let l = s.last, l.isWhitespace { s.removeLast() }
        return String(s)
    }
}
