// Hugging Face chat templates (Jinja2) rendered in Swift.
//
// A model ships its prompt format as a Jinja2 template in GGUF metadata (`tokenizer.chat_template`) or in
// tokenizer_config.json (`chat_template`). `ChatTemplate` parses such a template once and renders it the way
// transformers' `tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=...)` does:
// an ImmutableSandboxedEnvironment with trim_blocks=True, lstrip_blocks=True and the loopcontrols extension,
// HF's `tojson` (no HTML escaping, ensure_ascii=False), and the globals `raise_exception` and `namespace`.
// The lexer, parser and interpreter are in ChatTemplateParser.swift and ChatTemplateRuntime.swift.

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
    /// Parses JSON text (RFC 8259) into a value: objects keep their key order, numbers without a fraction or
    /// exponent become `.int` (as Python's `json.loads` does), others `.double`. Nesting is limited to 512 levels.
    /// Throws `LKError.format` with the byte offset of the first error.
    public init(json text: String) throws(LKError) {
        var parser = JSONReader(Array(text.utf8))
        self = try parser.parseDocument()
    }
}

/// A parsed chat template. Parsing happens once in `init`; `render` can be called from any thread.
public final class ChatTemplate: Sendable {
    /// The template source as given.
    public let source: String
    let program: [JStmt]

    /// Parses `source` (a Jinja2 chat template). Syntax errors, unknown filters and unknown tests throw
    /// `LKError.format` with the line and column of the problem.
    public init(_ source: String) throws(LKError) {
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
    ///   undefined value, a type error in an operator, or a loop/size limit being exceeded.
    public func render(messages: [ChatMessage], addGenerationPrompt: Bool,
                       extra: [String: TemplateValue] = [:]) throws(LKError) -> String {
        var vars: [String: TemplateValue] = [
            "messages": .array(messages.map { .dict(["role": .string($0.role), "content": .string($0.content)]) }),
            "add_generation_prompt": .bool(addGenerationPrompt),
            "tools": .none,
            "documents": .none,
        ]
        for (k, v) in extra { vars[k] = v }
        var interpreter = JinjaInterpreter(globals: vars)
        return try interpreter.run(program)
    }
}

// MARK: - JSON reader (for TemplateValue(json:))

struct JSONReader {
    let b: [UInt8]
    var i = 0
    var depth = 0

    init(_ bytes: [UInt8]) { b = bytes }

    func fail(_ m: String) -> LKError { .format("JSON: \(m) at byte \(i)") }

    mutating func ws() {
        while i < b.count, b[i] == 0x20 || b[i] == 0x0A || b[i] == 0x0D || b[i] == 0x09 { i += 1 }
    }

    mutating func parseDocument() throws(LKError) -> TemplateValue {
        ws()
        let v = try value()
        ws()
        guard i == b.count else { throw fail("trailing characters") }
        return v
    }

    mutating func literal(_ word: String, _ v: TemplateValue) throws(LKError) -> TemplateValue {
        let w = Array(word.utf8)
        guard i + w.count <= b.count, Array(b[i..<(i + w.count)]) == w else { throw fail("invalid literal") }
        i += w.count
        return v
    }

    mutating func value() throws(LKError) -> TemplateValue {
        guard i < b.count else { throw fail("unexpected end") }
        switch b[i] {
        case UInt8(ascii: "{"):
            depth += 1
            guard depth <= 512 else { throw fail("nesting too deep") }
            defer { depth -= 1 }
            i += 1
            var d = TemplateDictionary()
            ws()
            if i < b.count, b[i] == UInt8(ascii: "}") { i += 1; return .dict(d) }
            while true {
                ws()
                guard i < b.count, b[i] == UInt8(ascii: "\"") else { throw fail("expected a string key") }
                let k = try string()
                ws()
                guard i < b.count, b[i] == UInt8(ascii: ":") else { throw fail("expected ':'") }
                i += 1
                ws()
                d[k] = try value()
                ws()
                guard i < b.count else { throw fail("unexpected end") }
                if b[i] == UInt8(ascii: ",") { i += 1; continue }
                if b[i] == UInt8(ascii: "}") { i += 1; return .dict(d) }
                throw fail("expected ',' or '}'")
            }
        case UInt8(ascii: "["):
            depth += 1
            guard depth <= 512 else { throw fail("nesting too deep") }
            defer { depth -= 1 }
            i += 1
            var a: [TemplateValue] = []
            ws()
            if i < b.count, b[i] == UInt8(ascii: "]") { i += 1; return .array(a) }
            while true {
                ws()
                a.append(try value())
                ws()
                guard i < b.count else { throw fail("unexpected end") }
                if b[i] == UInt8(ascii: ",") { i += 1; continue }
                if b[i] == UInt8(ascii: "]") { i += 1; return .array(a) }
                throw fail("expected ',' or ']'")
            }
        case UInt8(ascii: "\""):
            return .string(try string())
        case UInt8(ascii: "t"): return try literal("true", .bool(true))
        case UInt8(ascii: "f"): return try literal("false", .bool(false))
        case UInt8(ascii: "n"): return try literal("null", .none)
        default:
            return try number()
        }
    }

    mutating func number() throws(LKError) -> TemplateValue {
        let start = i
        var isFloat = false
        if i < b.count, b[i] == UInt8(ascii: "-") { i += 1 }
        let digitsStart = i
        while i < b.count, b[i] >= 0x30, b[i] <= 0x39 { i += 1 }
        guard i > digitsStart else { throw fail("invalid value") }
        if i < b.count, b[i] == UInt8(ascii: ".") {
            isFloat = true
            i += 1
            let f = i
            while i < b.count, b[i] >= 0x30, b[i] <= 0x39 { i += 1 }
            guard i > f else { throw fail("invalid number") }
        }
        if i < b.count, b[i] == UInt8(ascii: "e") || b[i] == UInt8(ascii: "E") {
            isFloat = true
            i += 1
            if i < b.count, b[i] == UInt8(ascii: "+") || b[i] == UInt8(ascii: "-") { i += 1 }
            let e = i
            while i < b.count, b[i] >= 0x30, b[i] <= 0x39 { i += 1 }
            guard i > e else { throw fail("invalid number") }
        }
        let text = String(decoding: b[start..<i], as: UTF8.self)
        if !isFloat, let n = Int(text) { return .int(n) }
        guard let d = Double(text) else { throw fail("invalid number") }
        return .double(d)
    }

    mutating func hex4() throws(LKError) -> UInt32 {
        guard i + 4 <= b.count else { throw fail("bad \\u escape") }
        var v: UInt32 = 0
        for _ in 0..<4 {
            let c = b[i]
            let d: UInt32
            switch c {
            case 0x30...0x39: d = UInt32(c - 0x30)
            case 0x41...0x46: d = UInt32(c - 0x41 + 10)
            case 0x61...0x66: d = UInt32(c - 0x61 + 10)
            default: throw fail("bad \\u escape")
            }
            v = v * 16 + d
            i += 1
        }
        return v
    }

    mutating func string() throws(LKError) -> String {
        i += 1  // opening quote
        var bytes: [UInt8] = []
        while true {
            guard i < b.count else { throw fail("unterminated string") }
            let c = b[i]
            if c == UInt8(ascii: "\"") { i += 1; break }
            if c < 0x20 { throw fail("control character in string") }
            if c != UInt8(ascii: "\\") { bytes.append(c); i += 1; continue }
            i += 1
            guard i < b.count else { throw fail("unterminated string") }
            let e = b[i]
            i += 1
            switch e {
            case UInt8(ascii: "\""): bytes.append(0x22)
            case UInt8(ascii: "\\"): bytes.append(0x5C)
            case UInt8(ascii: "/"): bytes.append(0x2F)
            case UInt8(ascii: "b"): bytes.append(0x08)
            case UInt8(ascii: "f"): bytes.append(0x0C)
            case UInt8(ascii: "n"): bytes.append(0x0A)
            case UInt8(ascii: "r"): bytes.append(0x0D)
            case UInt8(ascii: "t"): bytes.append(0x09)
            case UInt8(ascii: "u"):
                var code = try hex4()
                if code >= 0xD800, code < 0xDC00, i + 1 < b.count, b[i] == UInt8(ascii: "\\"), b[i + 1] == UInt8(ascii: "u") {
                    let save = i
                    i += 2
                    let low = try hex4()
                    if low >= 0xDC00, low < 0xE000 {
                        code = 0x10000 + ((code - 0xD800) << 10) + (low - 0xDC00)
                    } else {
                        i = save
                    }
                }
                let scalar = Unicode.Scalar(code) ?? "\u{FFFD}"
                bytes.append(contentsOf: Array(String(Character(scalar)).utf8))
            default: throw fail("bad escape")
            }
        }
        return String(decoding: bytes, as: UTF8.self)
    }
}
