import LoRAKitCore
import LoRAKitKernels
import LoRAKitFormats
import LoRAKitTokenizer
import LoRAKitTemplates
import LoRAKitModel

/// Training data: JSONL files → token ids with per-token target flags → batches.
///
/// ## Files
/// One JSON object per line (UTF-8; blank lines are skipped; a leading BOM and `\r\n` line ends are
/// accepted), in any of three shapes, mixed freely within a file:
/// - `{"text": "..."}` — plain text;
/// - `{"prompt": "...", "completion": "..."}` — both keys required;
/// - `{"messages": [{"role": "...", "content": "..."}, ...]}` — a conversation (any role names; at least one
///   message).
/// Other keys (ids, metadata) are ignored, but an object with keys of two shapes (say `text` and `messages`)
/// is refused as ambiguous. Problems (invalid JSON, wrong types, missing keys, empty `messages`, a template
/// that cannot be rendered, …) are reported together, up to `TrainRecord.maxReportedProblems`, as one
/// `LKError.format` whose lines read `file:line: problem` (1-based line numbers).
///
/// ## Tokenization (a PyTorch reference implementation follows exactly these rules)
/// Each example becomes `tokens` and `isTarget`, where `isTarget[i]` means token `i` is predicted from
/// tokens `0..<i` and contributes to the loss; token 0 is never a target.
/// - text: `encode(text, addBOS: tokenizer.addBOS, addEOS: false) + [eos]`; every token after the first is a
///   target.
/// - prompt/completion: `encode(prompt, addBOS: tokenizer.addBOS, addEOS: false) + encode(completion,
///   addBOS: false, addEOS: false) + [eos]`. Targets: the completion tokens and the eos (completion-only
///   loss); with `completionOnlyLoss = false` every token after the first.
/// - messages: the conversation rendered with the model's chat template (`addGenerationPrompt: false`,
///   template variables `bos_token` / `eos_token` set to the tokenizer's BOS/EOS spellings). For each
///   assistant message i, `prefix = render(messages[0..<i], addGenerationPrompt: true)` and
///   `full = render(messages[0...i], addGenerationPrompt: false)`; the text of `full` after `prefix` is that
///   turn's target span (its content and whatever the template writes after it, e.g. `<|im_end|>\n` in
///   ChatML). The rendered conversation is cut at the span boundaries into segments (non-target, target,
///   non-target, …) and each segment is tokenized on its own (`addBOS: false, addEOS: false`, special tokens
///   written in the text parsed as such) and the ids concatenated, so every token is wholly inside or
///   outside a span. No eos is appended (the template ends each turn) and no BOS unless the template writes
///   it. With `completionOnlyLoss = false` the tokens are the same and every token after the first is a
///   target. Errors (naming the line): no chat template, no assistant message's `prefix` being a prefix of
///   its `full`, or `full` not being a prefix of the whole conversation's render.
///
/// ## Length
/// Without packing, an example longer than `seq` tokens keeps its first `seq` tokens (`truncation =
/// .keepFirst`, the default; the count is reported) or is an error (`.error`). Examples without any target
/// left (e.g. a conversation without an assistant turn, or a completion cut off by truncation) are skipped
/// and counted in `TrainDataset.skippedNoTarget`, never silently.
///
/// With `packing`, the examples (each ending with its eos or end-of-turn marker) are concatenated in file
/// order, without truncation, and cut into rows of exactly `seq` tokens (the last row holds the remainder,
/// so it may be shorter), GPT-style: an example may continue into the next row, and attention is NOT reset
/// at example boundaries (a token may attend to the end of the previous example). Target flags are kept
/// as they were in each example, except that the first token of every row is never a target (nothing
/// precedes it in the row). Rows without a target are skipped and counted.
///
/// ## Batches and order
/// `TrainDataIterator` walks the examples epoch after epoch. The order of epoch `e` (0-based) is the file
/// order without shuffling; with shuffling it is a Fisher–Yates permutation drawn from
/// `SplitMix64(seed: seed ^ SplitMix64(seed: UInt64(e)).next())`:
/// `perm = [0, 1, …, n−1]; for i in n−1 down to 1 { j = next() % (i + 1); swap(perm[i], perm[j]) }`.
/// A batch takes the next `batchSize` examples of the epoch order; the last batch of an epoch may be smaller
/// (PyTorch DataLoader's `drop_last=False`); the next batch starts the next epoch.
#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

// MARK: - Records

/// One line of a training file.
public enum TrainRecord: Sendable, Equatable {
    case text(String)
    case promptCompletion(prompt: String, completion: String)
    case messages([ChatMessage])

    /// At most this many problems are listed in one error (the rest are counted).
    public static let maxReportedProblems = 10

    /// The record a JSON value describes, or a description of what is wrong with it.
    public static func from(_ v: JSONValue) -> Result<TrainRecord, TrainDataProblem> {
        guard v.object != nil else {
            return .failure(.init("expected a JSON object with \"text\", \"prompt\"/\"completion\" or \"messages\", found \(kindName(v))"))
        }
        let hasText = v["text"] != nil
        let hasPC = v["prompt"] != nil || v["completion"] != nil
        let hasMessages = v["messages"] != nil
        let shapes = [hasText ? "text" : nil, hasPC ? "prompt/completion" : nil, hasMessages ? "messages" : nil].compactMap { $0 }
        guard shapes.count <= 1 else {
            return .failure(.init("ambiguous record: it has keys of several shapes (\(shapes.joined(separator: ", ")))"))
        }
        if hasText {
            guard let s = v["text"]!.string else { return .failure(.init("\"text\" must be a string, found \(kindName(v["text"]!))")) }
            return .success(.text(s))
        }
        if hasPC {
            guard let p = v["prompt"] else { return .failure(.init("\"completion\" without \"prompt\"")) }
            guard let c = v["completion"] else { return .failure(.init("\"prompt\" without \"completion\"")) }
            guard let ps = p.string else { return .failure(.init("\"prompt\" must be a string, found \(kindName(p))")) }
            guard let cs = c.string else { return .failure(.init("\"completion\" must be a string, found \(kindName(c))")) }
            return .success(.promptCompletion(prompt: ps, completion: cs))
        }
        if hasMessages {
            guard let arr = v["messages"]!.array else {
                return .failure(.init("\"messages\" must be an array, found \(kindName(v["messages"]!))"))
            }
            guard !arr.isEmpty else { return .failure(.init("\"messages\" is empty")) }
            var msgs: [ChatMessage] = []
            for (i, m) in arr.enumerated() {
                guard m.object != nil else { return .failure(.init("messages[\(i)] must be an object, found \(kindName(m))")) }
                guard let r = m["role"] else { return .failure(.init("messages[\(i)] has no \"role\"")) }
                guard let role = r.string else { return .failure(.init("messages[\(i)].role must be a string, found \(kindName(r))")) }
                guard let c = m["content"] else { return .failure(.init("messages[\(i)] has no \"content\"")) }
                guard let content = c.string else {
                    return .failure(.init("messages[\(i)].content must be a string, found \(kindName(c))"))
                }
                msgs.append(ChatMessage(role: role, content: content))
            }
            return .success(.messages(msgs))
        }
        return .failure(.init("no \"text\", \"prompt\"/\"completion\" or \"messages\" key"))
    }

    static func kindName(_ v: JSONValue) -> String {
        switch v {
        case .null: return "null"
        case .bool: return "a boolean"
        case .number, .int: return "a number"
        case .string: return "a string"
        case .array: return "an array"
        case .object: return "an object"
        }
    }

    /// Parse the bytes of a JSONL file. Blank lines are skipped; `path` names the file in errors.
    /// - Returns: the records with their 1-based line numbers.
    /// - Throws: `.format` listing up to `maxReportedProblems` bad lines as `path:line: problem`.
    public static func parseJSONL(_ bytes: [UInt8], path: String) throws(LKError) -> [(line: Int, record: TrainRecord)] {
        var out: [(line: Int, record: TrainRecord)] = []
        var problems = TrainDataProblems(path: path)
        var start = 0
        if bytes.count >= 3 && bytes[0] == 0xEF && bytes[1] == 0xBB && bytes[2] == 0xBF { start = 3 }
        var lineNo = 0
        while start < bytes.count {
            lineNo += 1
            var end = start
            while end < bytes.count && bytes[end] != 0x0A { end += 1 }
            let next = end + 1
            var e = end
            if e > start && bytes[e - 1] == 0x0D { e -= 1 }
            var blank = true
            for k in start..<e where !(bytes[k] == 0x20 || bytes[k] == 0x09 || bytes[k] == 0x0D) { blank = false; break }
            if !blank {
                let v: JSONValue?
                do {
                    v = try asLKError {
                        try bytes.withUnsafeBytes { b in try JSON.parse(UnsafeRawBufferPointer(rebasing: b[start..<e]), path: "\u{1}") }
                    }
                } catch {
                    problems.add(lineNo, TrainDataProblem(jsonError: error.message))
                    v = nil
                }
                if let v {
                    switch from(v) {
                    case .success(let r): out.append((lineNo, r))
                    case .failure(let p): problems.add(lineNo, p)
                    }
                }
            }
            start = next
        }
        try problems.throwIfAny()
        return out
    }
}

/// What is wrong with one line (without its location).
public struct TrainDataProblem: Error, Sendable, Equatable {
    public let message: String
    public init(_ message: String) { self.message = message }

    /// Turns a JSON parser message `"\u{1}:1:COL: msg"` into `"invalid JSON at column COL: msg"`.
    init(jsonError m: String) {
        let parts = m.split(separator: ":", maxSplits: 3, omittingEmptySubsequences: false)
        if parts.count == 4, parts[0] == "\u{1}", let col = Int(parts[2]) {
            message = "invalid JSON at column \(col):\(parts[3])"
        } else {
            message = "invalid JSON: \(m)"
        }
    }
}

/// Collects problems by line and raises one error listing them.
struct TrainDataProblems {
    let path: String
    var listed: [String] = []
    var count = 0

    mutating func add(_ line: Int, _ p: TrainDataProblem) {
        count += 1
        if listed.count < TrainRecord.maxReportedProblems { listed.append("\(path):\(line): \(p.message)") }
    }

    func throwIfAny() throws(LKError) {
        guard count > 0 else { return }
        var msg = count == 1 ? listed[0] : "\(path): \(count) bad lines:\n  " + listed.joined(separator: "\n  ")
        if count > listed.count { msg += "\n  … and \(count - listed.count) more" }
        throw .format(msg)
    }
}

// MARK: - Options

/// What to do with an example longer than `seq` tokens (without packing).
public enum TrainTruncation: String, Sendable, CaseIterable {
    /// Keep the first `seq` tokens (the default).
    case keepFirst = "keep_first"
    /// Refuse the file, naming the line.
    case error
}

public struct TrainDataOptions: Sendable, Equatable {
    /// Maximum tokens per row (the training sequence length).
    public var seq: Int = 512
    /// Loss only on completions / assistant turns (true), or on every token (false).
    public var completionOnlyLoss: Bool = true
    public var truncation: TrainTruncation = .keepFirst
    /// Concatenate examples into rows of exactly `seq` tokens (see the file's documentation).
    public var packing: Bool = false

    public init(seq: Int = 512, completionOnlyLoss: Bool = true, truncation: TrainTruncation = .keepFirst,
                packing: Bool = false) {
        self.seq = seq
        self.completionOnlyLoss = completionOnlyLoss
        self.truncation = truncation
        self.packing = packing
    }

    public func validate() throws(LKError) {
        guard seq >= 2, seq <= 1 << 20 else {
            throw .invalidOption(field: "seq", problem: "\(seq) must be in 2...\(1 << 20) (a row needs a token and a target)")
        }
    }

    /// `{"seq", "completion_only_loss", "truncation", "packing"}`.
    public var json: JSONValue {
        .object([("seq", .number(Double(seq))), ("completion_only_loss", .bool(completionOnlyLoss)),
                 ("truncation", .string(truncation.rawValue)), ("packing", .bool(packing))])
    }

    /// Reads the object written by `json`; missing keys keep their defaults. Validated.
    public init(json: JSONValue) throws(LKError) {
        self.init()
        guard json.object != nil else { throw .format("data options: expected a JSON object") }
        if let v = json["seq"] { guard let s = v.int else { throw .format("data options: \"seq\" must be an integer") }; seq = s }
        if let v = json["completion_only_loss"] {
            guard let b = v.bool else { throw .format("data options: \"completion_only_loss\" must be a boolean") }
            completionOnlyLoss = b
        }
        if let v = json["truncation"] {
            guard let s = v.string, let t = TrainTruncation(rawValue: s) else {
                throw .format("data options: \"truncation\" must be \"keep_first\" or \"error\"")
            }
            truncation = t
        }
        if let v = json["packing"] { guard let b = v.bool else { throw .format("data options: \"packing\" must be a boolean") }; packing = b }
        try validate()
    }
}

// MARK: - Examples

/// One training row: token ids and per-token target flags (`isTarget[i]`: token i is predicted from tokens
/// `0..<i` and counts in the loss; `isTarget[0]` is always false).
public struct TrainExample: Sendable, Equatable {
    public var tokens: [Int32]
    public var isTarget: [Bool]
    /// 1-based line of the record in its file (for a packed row: the line of its first token's example).
    public var line: Int

    public init(tokens: [Int32], isTarget: [Bool], line: Int) {
        precondition(tokens.count == isTarget.count, "one target flag per token")
        self.tokens = tokens
        self.isTarget = isTarget
        self.line = line
    }

    public var targetCount: Int { isTarget.reduce(0) { $0 + ($1 ? 1 : 0) } }
}

/// Turns records into token ids and target flags (the rules are in this file's header).
public struct TrainEncoder: Sendable {
    public let tokenizer: Tokenizer
    /// Add BOS to text and prompts (the tokenizer's setting unless overridden).
    public let addBOS: Bool
    /// What renders conversations for `messages` records.
    enum Chat: Sendable {
        case none
        case formatter(ChatFormatter)
        case model(LlamaModel)
    }
    let chat: Chat

    /// A tokenizer and a chat template (with `bos_token`/`eos_token` from the tokenizer).
    public init(tokenizer: Tokenizer, chatTemplate: ChatTemplate?, addBOS: Bool? = nil) {
        self.tokenizer = tokenizer
        self.addBOS = addBOS ?? tokenizer.addBOS
        chat = chatTemplate.map { .formatter(ChatFormatter(template: $0, tokenizer: tokenizer, source: "the chat template")) } ?? .none
    }

    /// The model's tokenizer and chat template (`LlamaModel.applyChatTemplate`: parsed when the first
    /// `messages` record needs it, so a model whose template is missing or broken still trains on other records;
    /// its errors name the model).
    public init(model: LlamaModel) throws(LKError) {
        tokenizer = try model.requireTokenizer()
        addBOS = tokenizer.addBOS
        chat = model.chatTemplate == nil ? .none : .model(model)
    }

    func eos() throws(TrainDataProblem) -> Int32 {
        guard let e = tokenizer.eos else {
            throw TrainDataProblem("the tokenizer has no end-of-sequence token to end text and completion examples with")
        }
        return e
    }

    /// The untruncated example for one record.
    public func encode(_ record: TrainRecord, completionOnlyLoss: Bool = true, line: Int = 0) throws(TrainDataProblem) -> TrainExample {
        switch record {
        case .text(let text):
            var ids = tokenizer.encode(text, addBOS: addBOS, addEOS: false)
            ids.append(try eos())
            var t = [Bool](repeating: true, count: ids.count)
            t[0] = false
            return TrainExample(tokens: ids, isTarget: t, line: line)
        case .promptCompletion(let prompt, let completion):
            var ids = tokenizer.encode(prompt, addBOS: addBOS, addEOS: false)
            let promptCount = ids.count
            ids += tokenizer.encode(completion, addBOS: false, addEOS: false)
            ids.append(try eos())
            var t = [Bool](repeating: true, count: ids.count)
            if completionOnlyLoss { for i in 0..<promptCount { t[i] = false } }
            t[0] = false
            return TrainExample(tokens: ids, isTarget: t, line: line)
        case .messages(let msgs):
            let segs = try segments(msgs)
            var ids: [Int32] = [], t: [Bool] = []
            for (text, target) in segs where !text.isEmpty {
                let s = tokenizer.encode(text, addBOS: false, addEOS: false)
                ids += s
                t += [Bool](repeating: target || !completionOnlyLoss, count: s.count)
            }
            guard !ids.isEmpty else { throw TrainDataProblem("the chat template rendered the conversation as empty text") }
            t[0] = false
            return TrainExample(tokens: ids, isTarget: t, line: line)
        }
    }

    func render(_ msgs: ArraySlice<ChatMessage>, _ agp: Bool) throws(TrainDataProblem) -> [UInt8] {
        if case .none = chat {
            throw TrainDataProblem("a \"messages\" record needs a chat template, and the model has none")
        }
        do throws(LKError) {
            switch chat {
            case .none: return []
            case .formatter(let f): return Array(try f.apply(messages: Array(msgs), addGenerationPrompt: agp).utf8)
            case .model(let m): return Array(try m.applyChatTemplate(messages: Array(msgs), addGenerationPrompt: agp).utf8)
            }
        } catch {
            throw TrainDataProblem("the chat template failed to render the conversation: \(error.message)")
        }
    }

    /// The rendered conversation cut into (text, is assistant span) segments.
    public func segments(_ msgs: [ChatMessage]) throws(TrainDataProblem) -> [(text: String, target: Bool)] {
        let whole = try render(msgs[...], false)
        var out: [(String, Bool)] = []
        var pos = 0
        func text(_ a: Int, _ b: Int) -> String { String(decoding: whole[a..<b], as: UTF8.self) }
        for (i, m) in msgs.enumerated() where m.role == "assistant" {
            let prefix = try render(msgs[..<i], true)
            let full = try render(msgs[...i], false)
            guard full.count >= prefix.count, full[..<prefix.count].elementsEqual(prefix) else {
                throw TrainDataProblem("the chat template's rendering up to the generation prompt before messages[\(i)] is not a prefix of its rendering through messages[\(i)], so the assistant turn cannot be located")
            }
            guard whole.count >= full.count, whole[..<full.count].elementsEqual(full) else {
                throw TrainDataProblem("the chat template's rendering through messages[\(i)] is not a prefix of the whole conversation's rendering, so the assistant turn cannot be located")
            }
            guard prefix.count >= pos else {
                throw TrainDataProblem("the chat template renders the assistant turn messages[\(i)] overlapping the previous one")
            }
            out.append((text(pos, prefix.count), false))
            out.append((text(prefix.count, full.count), true))
            pos = full.count
        }
        out.append((text(pos, whole.count), false))
        return out
    }
}

// MARK: - Dataset

/// A tokenized training file.
public struct TrainDataset: Sendable {
    public let path: String
    public let options: TrainDataOptions
    /// Rows ready for training (packed rows when `options.packing`).
    public let examples: [TrainExample]
    /// Records read (non-blank lines).
    public let recordCount: Int
    /// Examples cut to `seq` tokens (keep-first truncation).
    public let truncatedCount: Int
    /// Examples (or packed rows) dropped because no target token was left.
    public let skippedNoTarget: Int

    public var tokenCount: Int { examples.reduce(0) { $0 + $1.tokens.count } }
    public var targetCount: Int { examples.reduce(0) { $0 + $1.targetCount } }

    /// One line for logs: "N examples (T tokens, P targets) from R records of path; K truncated to S tokens;
    /// M skipped: no target token".
    public var summary: String {
        var s = "\(examples.count) \(options.packing ? "packed rows" : "examples") (\(tokenCount) tokens, \(targetCount) targets) from \(recordCount) records of \(path)"
        if truncatedCount > 0 { s += "; \(truncatedCount) truncated to \(options.seq) tokens" }
        if skippedNoTarget > 0 { s += "; \(skippedNoTarget) skipped: no target token\(options.packing ? "" : " (after truncation)")" }
        return s
    }

    /// Read, parse and tokenize a JSONL file for `model` (its tokenizer and chat template).
    public static func load(path: String, model: LlamaModel, options: TrainDataOptions = TrainDataOptions()) throws(LKError) -> TrainDataset {
        try load(path: path, encoder: try TrainEncoder(model: model), options: options)
    }

    /// Read, parse and tokenize a JSONL file with a tokenizer and an optional chat template (needed only by
    /// `messages` records).
    public static func load(path: String, tokenizer: Tokenizer, chatTemplate: ChatTemplate?,
                            options: TrainDataOptions = TrainDataOptions()) throws(LKError) -> TrainDataset {
        try load(path: path, encoder: TrainEncoder(tokenizer: tokenizer, chatTemplate: chatTemplate), options: options)
    }

    /// Read, parse and tokenize a JSONL file with `encoder`.
    /// - Throws: `.io` when the file cannot be read; `.format` listing bad lines; `.invalidArgument` for
    ///   invalid options or a file without a usable example.
    public static func load(path: String, encoder: TrainEncoder, options: TrainDataOptions = TrainDataOptions()) throws(LKError) -> TrainDataset {
        try options.validate()
        let records = try TrainRecord.parseJSONL(try readFile(path), path: path)
        return try build(records: records, encoder: encoder, options: options, path: path)
    }

    /// Tokenize parsed records (the part of `load` after reading; `path` only names the source).
    public static func build(records: [(line: Int, record: TrainRecord)], encoder: TrainEncoder,
                             options: TrainDataOptions, path: String) throws(LKError) -> TrainDataset {
        try options.validate()
        var problems = TrainDataProblems(path: path)
        var encoded: [TrainExample] = []
        encoded.reserveCapacity(records.count)
        for (line, r) in records {
            do {
                encoded.append(try encoder.encode(r, completionOnlyLoss: options.completionOnlyLoss, line: line))
            } catch {
                problems.add(line, error)
            }
        }
        try problems.throwIfAny()
        var rows: [TrainExample] = []
        var truncated = 0, skipped = 0
        let seq = options.seq
        if options.packing {
            var tok: [Int32] = [], tgt: [Bool] = []
            var rowLine = encoded.first?.line ?? 0
            func flush(_ line: Int) {
                if !tgt.isEmpty { tgt[0] = false }
                let ex = TrainExample(tokens: tok, isTarget: tgt, line: rowLine)
                if ex.targetCount > 0 { rows.append(ex) } else { skipped += 1 }
                tok.removeAll(keepingCapacity: true)
                tgt.removeAll(keepingCapacity: true)
                rowLine = line
            }
            for e in encoded {
                var i = 0
                if tok.isEmpty { rowLine = e.line }
                while i < e.tokens.count {
                    let take = min(seq - tok.count, e.tokens.count - i)
                    tok += e.tokens[i..<(i + take)]
                    tgt += e.isTarget[i..<(i + take)]
                    i += take
                    if tok.count == seq { flush(e.line) }
                }
            }
            if !tok.isEmpty { flush(0) }
        } else {
            for var e in encoded {
                if e.tokens.count > seq {
                    if options.truncation == .error {
                        problems.add(e.line, TrainDataProblem("example has \(e.tokens.count) tokens, more than seq = \(seq) (truncation is set to error)"))
                        continue
                    }
                    e.tokens.removeLast(e.tokens.count - seq)
                    e.isTarget.removeLast(e.isTarget.count - seq)
                    truncated += 1
                }
                if e.targetCount > 0 { rows.append(e) } else { skipped += 1 }
            }
            try problems.throwIfAny()
        }
        guard !rows.isEmpty else {
            throw .invalidArgument("\(path): no usable training example (\(records.count) records, \(skipped) without any target token)")
        }
        return TrainDataset(path: path, options: options, examples: rows, recordCount: records.count,
                            truncatedCount: truncated, skippedNoTarget: skipped)
    }

    /// Every example once, in file order, in batches of `batchSize` (the last may be smaller): for
    /// validation.
    public func validationBatches(batchSize: Int) throws(LKError) -> [TrainBatch] {
        guard batchSize >= 1 else { throw .invalidArgument("batch size \(batchSize) must be ≥ 1") }
        var out: [TrainBatch] = []
        var i = 0
        while i < examples.count {
            let idx = Array(i..<min(i + batchSize, examples.count))
            out.append(TrainBatch(examples: examples, indices: idx, epoch: 0))
            i += batchSize
        }
        return out
    }
}

// MARK: - Batches

/// A batch of rows of variable length (≤ seq, no padding) with their target flags.
public struct TrainBatch: Sendable, Equatable {
    public var rows: [[Int32]]
    public var targets: [[Bool]]
    /// Number of target flags set (the loss is averaged over these).
    public var predictedCount: Int
    /// Positions of the rows in the dataset's `examples`.
    public var exampleIndices: [Int]
    /// The epoch this batch belongs to (0-based).
    public var epoch: Int

    public init(examples: [TrainExample], indices: [Int], epoch: Int) {
        rows = indices.map { examples[$0].tokens }
        targets = indices.map { examples[$0].isTarget }
        predictedCount = indices.reduce(0) { $0 + examples[$1].targetCount }
        exampleIndices = indices
        self.epoch = epoch
    }

    public var tokenCount: Int { rows.reduce(0) { $0 + $1.count } }
}

/// Where a `TrainDataIterator` is: the epoch of the next batch and the position of its first example in that
/// epoch's order. Round-trips through JSON (`json` / `init(json:)`) for checkpoints, with the dataset size,
/// shuffle flag and seed, which restoring checks.
public struct TrainDataIteratorState: Sendable, Equatable {
    public var epoch: Int
    public var index: Int
    public var exampleCount: Int
    public var shuffle: Bool
    public var seed: UInt64

    /// `{"epoch", "index", "examples", "shuffle", "seed"}`; the seed is a decimal string (a UInt64 does not
    /// fit a JSON number exactly).
    public var json: JSONValue {
        .object([("epoch", .number(Double(epoch))), ("index", .number(Double(index))),
                 ("examples", .number(Double(exampleCount))), ("shuffle", .bool(shuffle)), ("seed", .string(String(seed)))])
    }

    public init(epoch: Int, index: Int, exampleCount: Int, shuffle: Bool, seed: UInt64) {
        self.epoch = epoch
        self.index = index
        self.exampleCount = exampleCount
        self.shuffle = shuffle
        self.seed = seed
    }

    public init(json: JSONValue) throws(LKError) {
        guard let e = json["epoch"]?.int, e >= 0, let i = json["index"]?.int, i >= 0,
              let n = json["examples"]?.int, n >= 1, i < n, let sh = json["shuffle"]?.bool,
              let ss = json["seed"]?.string, let s = UInt64(ss) else {
            throw .format("data iterator state: expected {\"epoch\": int ≥ 0, \"index\": 0 ≤ int < examples, \"examples\": int ≥ 1, \"shuffle\": bool, \"seed\": decimal string}, found \(JSON.serialize(json))")
        }
        self.init(epoch: e, index: i, exampleCount: n, shuffle: sh, seed: s)
    }
}

/// Endless batches over the examples, epoch after epoch (order and batching in this file's header).
public struct TrainDataIterator: Sendable {
    public let examples: [TrainExample]
    public let batchSize: Int
    public let shuffle: Bool
    public let seed: UInt64
    public private(set) var epoch: Int = 0
    /// Position of the next batch's first example in the current epoch's order.
    public private(set) var index: Int = 0
    /// The current epoch's order (indices into `examples`).
    public private(set) var order: [Int]

    public init(examples: [TrainExample], batchSize: Int, shuffle: Bool, seed: UInt64) throws(LKError) {
        guard !examples.isEmpty else { throw .invalidArgument("data iterator: no examples") }
        guard batchSize >= 1 else { throw .invalidArgument("batch size \(batchSize) must be ≥ 1") }
        self.examples = examples
        self.batchSize = batchSize
        self.shuffle = shuffle
        self.seed = seed
        order = TrainDataIterator.epochOrder(count: examples.count, shuffle: shuffle, seed: seed, epoch: 0)
    }

    /// Batches in one epoch: ⌈examples / batchSize⌉.
    public var batchesPerEpoch: Int { (examples.count + batchSize - 1) / batchSize }

    /// The order of epoch `epoch`: `0..<count`, or the Fisher–Yates permutation described in the file header.
    public static func epochOrder(count: Int, shuffle: Bool, seed: UInt64, epoch: Int) -> [Int] {
        var perm = Array(0..<count)
        guard shuffle, count > 1 else { return perm }
        var mix = SplitMix64(seed: UInt64(truncatingIfNeeded: epoch))
        var rng = SplitMix64(seed: seed ^ mix.next())
        var i = count - 1
        while i >= 1 {
            let j = Int(rng.next() % UInt64(i + 1))
            perm.swapAt(i, j)
            i -= 1
        }
        return perm
    }

    /// The next batch; the epoch rolls over after its last (possibly smaller) batch.
    public mutating func next() -> TrainBatch {
        let end = min(index + batchSize, examples.count)
        let batch = TrainBatch(examples: examples, indices: Array(order[index..<end]), epoch: epoch)
        index = end
        if index == examples.count {
            epoch += 1
            index = 0
            order = TrainDataIterator.epochOrder(count: examples.count, shuffle: shuffle, seed: seed, epoch: epoch)
        }
        return batch
    }

    public var state: TrainDataIteratorState {
        TrainDataIteratorState(epoch: epoch, index: index, exampleCount: examples.count, shuffle: shuffle, seed: seed)
    }

    /// Continue from a saved state: the next batch is the one that followed it. The state must come from an
    /// iterator over the same number of examples with the same shuffle flag and seed (the batch size may
    /// differ: the position is counted in examples).
    public mutating func restore(_ s: TrainDataIteratorState) throws(LKError) {
        guard s.exampleCount == examples.count else {
            throw .invalidArgument("data iterator state is for \(s.exampleCount) examples, the data now has \(examples.count) (did the training file or the data options change?)")
        }
        guard s.shuffle == shuffle else { throw .invalidArgument("data iterator state has shuffle \(s.shuffle), the iterator \(shuffle)") }
        guard s.seed == seed else { throw .invalidArgument("data iterator state has seed \(s.seed), the iterator \(seed)") }
        guard s.epoch >= 0, s.index >= 0, s.index < examples.count else {
            throw .invalidArgument("data iterator state: position \(s.index) is outside 0..<\(examples.count)")
        }
        epoch = s.epoch
        index = s.index
        order = TrainDataIterator.epochOrder(count: examples.count, shuffle: shuffle, seed: seed, epoch: epoch)
    }
}
