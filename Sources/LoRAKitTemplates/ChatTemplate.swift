// Hugging Face chat templates (Jinja2) rendered in Swift.
//
// A model ships its prompt format as a Jinja2 template in GGUF metadata (`tokenizer.chat_template`) or in
// tokenizer_config.json (`chat_template`). `ChatTemplate` parses such a template once and renders it the way
// transformers' `tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=...)` does:
// an ImmutableSandboxedEnvironment with trim_blocks=True, lstrip_blocks=True and the loopcontrols extension,
// HF's `tojson` (no HTML escaping, ensure_ascii=False), and the globals `raise_exception` and `namespace`.
//
// A template comes with a model file: it is untrusted code. Parsing bounds its size and nesting; rendering runs
// under a budget (TemplateLimits) that counts every step, loop iteration, recursion level and byte of every
// intermediate string or list, so no template can trap, hang or exhaust memory: it fails with LKError.limit.
//
// The engine, as template engines are split: TemplateLexer → TemplateParser → TemplateAST, run by
// TemplateInterpreter over TemplateValues (with TemplateOperators, TemplateMethods, TemplateFilters),
// charging TemplateBudget.

import LoRAKitCore

/// One chat turn: a role (`system`, `user`, `assistant`, `tool`, …) and its text.
public struct ChatMessage: Sendable, Equatable {
    public var role: String
    public var content: String

    public init(role: String, content: String) {
        self.role = role
        self.content = content
    }
}

/// A string-keyed dictionary that keeps insertion order, as Python dicts do (templates iterate over
/// `tool.items()` and `tojson` prints keys in that order). Equality ignores order, as in Python.
public struct TemplateDictionary: Sendable, Equatable, ExpressibleByDictionaryLiteral {
    /// The keys in insertion order.
    public private(set) var keys: [String] = []
    private var storage: [String: TemplateValue] = [:]

    public init() {}

    public init(dictionaryLiteral elements: (String, TemplateValue)...) {
        for (k, v) in elements { self[k] = v }
    }

    /// Builds a dictionary from pairs; a repeated key keeps its first position and its last value.
    public init(_ pairs: [(String, TemplateValue)]) {
        for (k, v) in pairs { self[k] = v }
    }

    public var count: Int { keys.count }
    public var isEmpty: Bool { keys.isEmpty }

    /// The value for `key`; setting `nil` removes the key.
    public subscript(key: String) -> TemplateValue? {
        get { storage[key] }
        set {
            if let v = newValue {
                if storage.updateValue(v, forKey: key) == nil { keys.append(key) }
            } else if storage.removeValue(forKey: key) != nil {
                keys.removeAll { $0 == key }
            }
        }
    }

    /// Key/value pairs in insertion order.
    public var entries: [(key: String, value: TemplateValue)] { keys.map { ($0, storage[$0]!) } }

    public static func == (a: TemplateDictionary, b: TemplateDictionary) -> Bool {
        a.storage == b.storage
    }
}

/// A value passed to a chat template (`bos_token`, `tools`, `date_string`, or whole `messages` with tool calls).
public enum TemplateValue: Sendable, Equatable {
    case none
    case bool(Bool)
    case int(Int)
    case double(Double)
    case string(String)
    case array([TemplateValue])
    case dict(TemplateDictionary)
}

extension TemplateValue: ExpressibleByStringLiteral, ExpressibleByIntegerLiteral, ExpressibleByFloatLiteral,
    ExpressibleByBooleanLiteral, ExpressibleByArrayLiteral, ExpressibleByDictionaryLiteral, ExpressibleByNilLiteral
{
    public init(stringLiteral value: String) { self = .string(value) }
    public init(integerLiteral value: Int) { self = .int(value) }
    public init(floatLiteral value: Double) { self = .double(value) }
    public init(booleanLiteral value: Bool) { self = .bool(value) }
    public init(arrayLiteral elements: TemplateValue...) { self = .array(elements) }
    public init(dictionaryLiteral elements: (String, TemplateValue)...) { self = .dict(TemplateDictionary(elements)) }
    public init(nilLiteral: ()) { self = .none }
}

extension TemplateValue {
    /// Converts parsed JSON: objects keep their key order (a repeated key keeps its first position and its
    /// last value, as Python's `json.loads`), `.int` numbers stay integers and others become `.double`.
    public init(_ json: JSONValue) {
        switch json {
        case .null: self = .none
        case .bool(let b): self = .bool(b)
        case .int(let i): self = .int(i)
        case .number(let d): self = .double(d)
        case .string(let s): self = .string(s)
        case .array(let a): self = .array(a.map(TemplateValue.init))
        case .object(let o): self = .dict(TemplateDictionary(o.map { ($0.0, TemplateValue($0.1)) }))
        }
    }

    /// Parses JSON text (RFC 8259, as `JSON.parse`) into a value; see `init(_: JSONValue)`.
    /// Throws `LKError.format` naming the line and column of the first error.
    public init(json text: String) throws(LKError) {
        self.init(try JSON.parse(text))
    }
}

/// Bounds on what a chat template may do: parsing (`maxTemplateBytes`) and each render (the rest). A
/// template comes with a model file, so it is code from a stranger. Exceeding a resource bound (template
/// size, output, allocated bytes, steps, time) is `LKError.limit`; exceeding a structural bound (loop
/// iterations, recursion or value nesting) is `LKError.format`, a template error as Python's RecursionError
/// is (and as these were before the budget existed). Either names the operation and the field, and leaves
/// nothing behind. The defaults are far above what real chat templates use (the nine families LoRAKit tests
/// use well under 2% of each on a 1,000-turn, 1 MB conversation: see ChatTemplateHostileTests) and low
/// enough that one render of a hostile template costs at most about a gigabyte and ten seconds.
public struct TemplateLimits: Sendable, Equatable {
    /// Bytes of template source `ChatTemplate.init` accepts (real templates: 0.3–20 KB).
    public var maxTemplateBytes = 1 << 20
    /// Bytes of rendered text: the prompt, and each macro's or `{% set %}` block's text.
    public var maxOutputBytes = 64 << 20
    /// Bytes allocated for strings and lists over a whole render, the output and every intermediate value
    /// included (freed ones too: the count only grows). Lists count `MemoryLayout` bytes per element.
    public var maxAllocatedBytes = 1 << 30
    /// For-loop iterations (and loop-filter tests), summed over all loops of a render.
    public var maxLoopIterations = 1_000_000
    /// Units of work: one per statement, expression, loop iteration, element a builtin visits (compares,
    /// copies, sorts) and per 16 characters it scans.
    public var maxSteps = 100_000_000
    /// Nesting of statements, expressions and macro calls while rendering (the stack's depth); at most
    /// `depthCap`.
    public var maxRecursionDepth = 200
    /// Nesting of lists and dicts, given (`extra`) or built; at most `depthCap`.
    public var maxValueDepth = 100
    /// Wall-clock time of a render, in seconds (a monotonic clock, read every 4096 steps).
    public var maxSeconds = 10.0

    /// The highest `maxRecursionDepth` and `maxValueDepth` accepted. Each level is a few native stack frames
    /// (the interpreter, `tojson`, `repr` and comparisons recurse), so the depth limits are what keeps a
    /// template from overflowing the calling thread's stack; at this cap a render needs under 1 MiB of stack
    /// (ChatTemplateHostileTests runs the deepest templates at the cap on a 1 MiB thread), so any thread of a
    /// C or Python host (8 MiB main thread, 8 MiB default pthreads on Linux, 512 KiB on macOS above the cap's
    /// need of real templates) is safe.
    public static let depthCap = 1000

    public init() {}

    /// The defaults.
    public static let `default` = TemplateLimits()

    /// The integer limits by the names the C ABI (`LK_CHAT_LIMIT_*`), Python (`ChatLimit`) and the CLI
    /// (`--chat-limit NAME=VALUE`) give them, in `lk_chat_limit` order.
    nonisolated(unsafe) public static let named: [(name: String, field: WritableKeyPath<TemplateLimits, Int>)] = [
        ("output_bytes", \.maxOutputBytes), ("allocated_bytes", \.maxAllocatedBytes),
        ("loop_iterations", \.maxLoopIterations), ("steps", \.maxSteps), ("recursion_depth", \.maxRecursionDepth),
        ("value_depth", \.maxValueDepth), ("milliseconds", \.maxMilliseconds), ("template_bytes", \.maxTemplateBytes),
    ]

    /// `maxSeconds` in whole milliseconds (the C ABI's and Python's unit); setting it sets `maxSeconds`.
    public var maxMilliseconds: Int {
        get {
            let ms = (maxSeconds * 1000).rounded()
            return ms.isNaN || ms < 0 ? 0 : ms >= 9.2e18 ? Int.max : Int(ms)
        }
        set { maxSeconds = Double(newValue) / 1000 }
    }

    /// Checks that every bound is positive (`maxSeconds` finite) and the depths at most `depthCap`, naming
    /// the field.
    public func validate() throws(LKError) {
        for (name, v) in [("maxTemplateBytes", maxTemplateBytes), ("maxOutputBytes", maxOutputBytes),
                          ("maxAllocatedBytes", maxAllocatedBytes), ("maxLoopIterations", maxLoopIterations),
                          ("maxSteps", maxSteps), ("maxRecursionDepth", maxRecursionDepth), ("maxValueDepth", maxValueDepth)]
        where v <= 0 {
            throw .invalidArgument("TemplateLimits.\(name) is \(v); it must be positive")
        }
        for (name, v) in [("maxRecursionDepth", maxRecursionDepth), ("maxValueDepth", maxValueDepth)] where v > Self.depthCap {
            throw .invalidArgument("TemplateLimits.\(name) is \(v); it must be in 1...\(Self.depthCap) (deeper nesting could overflow the thread's stack)")
        }
        guard maxSeconds.isFinite, maxSeconds > 0 else {
            throw .invalidArgument("TemplateLimits.maxSeconds is \(maxSeconds); it must be positive and finite")
        }
    }
}

/// A parsed chat template. Parsing happens once in `init`; `render` can be called from any thread.
public final class ChatTemplate: Sendable {
    /// The template source as given.
    public let source: String
    let program: [JStmt]

    /// Parses `source` (a Jinja2 chat template). Syntax errors, unknown filters and unknown tests throw
    /// `LKError.format` with the line and column of the problem; a source over `limits.maxTemplateBytes`
    /// throws `LKError.limit`.
    public init(_ source: String, limits: TemplateLimits = .default) throws(LKError) {
        try limits.validate()
        guard source.utf8.count <= limits.maxTemplateBytes else {
            throw .limit("chat template: the template is \(source.utf8.count) bytes, more than \(limits.maxTemplateBytes) (TemplateLimits.maxTemplateBytes)")
        }
        self.source = source
        self.program = try JinjaParser.parse(source)
    }

    /// Renders the prompt for `messages`, as `apply_chat_template(messages, tokenize=False,
    /// add_generation_prompt:)` does. The template sees `messages` (a list of `{role, content}` dicts),
    /// `add_generation_prompt`, `tools` and `documents` (both `none`), and every entry of `extra`, which is
    /// where `bos_token`, `eos_token`, `tools`, `date_string` etc. go; an entry of `extra` replaces a variable
    /// of the same name, so `extra["messages"]` can pass messages with more fields (tool calls, content parts).
    ///
    /// - Throws: `LKError.invalidArgument` with the template's message when it calls `raise_exception(msg)`;
    ///   `LKError.format` (with line and column) for errors while rendering, such as an attribute of an
    ///   undefined value, a type error in an operator or an integer out of the 64-bit range;
    ///   `LKError.limit` (with line and column) when the render exceeds one of `limits`.
    public func render(messages: [ChatMessage], addGenerationPrompt: Bool,
                       extra: [String: TemplateValue] = [:], limits: TemplateLimits = .default) throws(LKError) -> String {
        try measure(messages: messages, addGenerationPrompt: addGenerationPrompt, extra: extra, limits: limits).text
    }

    /// `render`, and what it used of the budget.
    func measure(messages: [ChatMessage], addGenerationPrompt: Bool, extra: [String: TemplateValue] = [:],
                 limits: TemplateLimits = .default) throws(LKError) -> (text: String, usage: TemplateUsage) {
        try limits.validate()
        var vars: [String: TemplateValue] = [
            "messages": .array(messages.map { .dict(["role": .string($0.role), "content": .string($0.content)]) }),
            "add_generation_prompt": .bool(addGenerationPrompt),
            "tools": .none,
            "documents": .none,
        ]
        for (k, v) in extra { vars[k] = v }
        let start = monotonicNanoseconds()
        let interpreter = try JinjaInterpreter(globals: vars, limits: limits)
        let text = try interpreter.run(program)
        let b = interpreter.budget
        let usage = TemplateUsage(bytes: b.bytes, steps: b.steps, iterations: b.iterations, depth: b.peakDepth,
                                  outputBytes: text.utf8.count, seconds: Double(monotonicNanoseconds() - start) / 1e9)
        return (text, usage)
    }
}
