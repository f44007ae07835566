/// A small strict JSON (RFC 8259) reader and writer, fast enough for multi-megabyte files such as a
/// Hugging Face `tokenizer.json` (one pass over the bytes; strings without escapes are copied whole).
///
/// Strictness: one value surrounded by optional whitespace (space, tab, LF, CR) and nothing else; no
/// comments, trailing commas, single quotes, NaN/Infinity, leading zeros or `+` signs; strings must be
/// valid UTF-8 without raw control characters; `\u` escapes must pair surrogates correctly. Nesting
/// deeper than `JSON.maxDepth` is refused. Errors are `LKError.format` naming `path:line:column`.
#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// A JSON value. Objects keep their keys in document order (duplicates are kept as written).
/// Numbers are read as Python's `json.loads` reads them: `.int` when written without a fraction or
/// exponent and within Int64 (`3`, `-0`), `.number` otherwise (`3.0`, `1e3`, `12345678901234567890`).
/// Equality compares numbers by value across the two cases, as Python does (`1 == 1.0`).
public enum JSONValue: Equatable, Sendable {
    case null
    case bool(Bool)
    case int(Int)
    case number(Double)
    case string(String)
    case array([JSONValue])
    case object([(String, JSONValue)])

    public static func == (a: JSONValue, b: JSONValue) -> Bool {
        switch (a, b) {
        case (.null, .null): return true
        case (.bool(let x), .bool(let y)): return x == y
        case (.number(let x), .number(let y)): return x == y
        case (.int(let x), .int(let y)): return x == y
        case (.int(let x), .number(let y)), (.number(let y), .int(let x)): return Int(exactly: y) == x  // exact, as Python compares
        case (.string(let x), .string(let y)): return x == y
        case (.array(let x), .array(let y)): return x == y
        case (.object(let x), .object(let y)):
            guard x.count == y.count else { return false }
            for (p, q) in zip(x, y) where p.0 != q.0 || p.1 != q.1 { return false }
            return true
        default: return false
        }
    }

    /// The member named `key` of an object (the last one if the key is repeated, as in JavaScript
    /// and Python); nil for a missing key or a non-object.
    public subscript(key: String) -> JSONValue? {
        guard case .object(let members) = self else { return nil }
        for (k, v) in members.reversed() where k == key { return v }
        return nil
    }

    public var isNull: Bool { if case .null = self { return true } else { return false } }
    public var string: String? { if case .string(let s) = self { return s } else { return nil } }
    /// The number as a `Double` (an `.int` converted, rounding beyond 2^53).
    public var double: Double? {
        switch self {
        case .number(let d): return d
        case .int(let i): return Double(i)
        default: return nil
        }
    }
    /// The number as an `Int`: an `.int`, or a `.number` that is integral and within ±2^53; nil otherwise.
    public var int: Int? {
        if case .int(let i) = self { return i }
        guard case .number(let d) = self, d.rounded(.towardZero) == d,
              d >= -9.007_199_254_740_992e15, d <= 9.007_199_254_740_992e15 else { return nil }
        return Int(d)
    }
    public var bool: Bool? { if case .bool(let b) = self { return b } else { return nil } }
    public var array: [JSONValue]? { if case .array(let a) = self { return a } else { return nil } }
    public var object: [(String, JSONValue)]? { if case .object(let o) = self { return o } else { return nil } }
}

public enum JSON {
    /// Deepest nesting of arrays and objects accepted.
    public static let maxDepth = 512

    /// Parse one JSON document. `path` only names the source in error messages.
    public static func parse(_ bytes: UnsafeRawBufferPointer, path: String? = nil) throws(LKError) -> JSONValue {
        guard let base = bytes.baseAddress, bytes.count > 0 else {
            throw .format("\(path ?? "<json>"):1:1: empty document (expected a JSON value)")
        }
        var p = JSONParser(p: base.assumingMemoryBound(to: UInt8.self), n: bytes.count, path: path)
        p.skipWS()
        let v = try p.value(depth: 0)
        p.skipWS()
        guard p.i == p.n else { throw p.error("unexpected \(p.describeCurrent()) after the JSON value") }
        return v
    }

    public static func parse(_ bytes: [UInt8], path: String? = nil) throws(LKError) -> JSONValue {
        do {
            return try bytes.withUnsafeBytes { b in try parse(b, path: path) }
        } catch let e as LKError { throw e } catch { throw .internal("\(error)") }
    }

    public static func parse(_ text: String, path: String? = nil) throws(LKError) -> JSONValue {
        try parse(Array(text.utf8), path: path)
    }

    /// Read and parse the file at `path`.
    public static func parse(file path: String) throws(LKError) -> JSONValue {
        try parse(try readFile(path), path: path)
    }

    /// Serialize `v`. Non-finite numbers, which JSON cannot represent, are written as `null`.
    /// Integral numbers of magnitude below 2^53 are written without a fraction (`3`, not `3.0`).
    /// `pretty` indents by two spaces, one member or element per line.
    public static func serialize(_ v: JSONValue, pretty: Bool = false) -> String {
        var out: [UInt8] = []
        out.reserveCapacity(256)
        write(v, into: &out, pretty: pretty, indent: 0)
        return String(decoding: out, as: UTF8.self)
    }

    static func write(_ v: JSONValue, into out: inout [UInt8], pretty: Bool, indent: Int) {
        func newline(_ level: Int) {
            guard pretty else { return }
            out.append(0x0A)
            out.append(contentsOf: repeatElement(0x20, count: 2 * level))
        }
        switch v {
        case .null: out.append(contentsOf: "null".utf8)
        case .bool(let b): out.append(contentsOf: (b ? "true" : "false").utf8)
        case .int(let i): out.append(contentsOf: String(i).utf8)
        case .number(let d): out.append(contentsOf: formatNumber(d).utf8)
        case .string(let s): writeString(s, into: &out)
        case .array(let a):
            out.append(UInt8(ascii: "["))
            for (k, e) in a.enumerated() {
                if k > 0 { out.append(UInt8(ascii: ",")) }
                newline(indent + 1)
                write(e, into: &out, pretty: pretty, indent: indent + 1)
            }
            if !a.isEmpty { newline(indent) }
            out.append(UInt8(ascii: "]"))
        case .object(let o):
            out.append(UInt8(ascii: "{"))
            for (k, (key, e)) in o.enumerated() {
                if k > 0 { out.append(UInt8(ascii: ",")) }
                newline(indent + 1)
                writeString(key, into: &out)
                out.append(UInt8(ascii: ":"))
                if pretty { out.append(0x20) }
                write(e, into: &out, pretty: pretty, indent: indent + 1)
            }
            if !o.isEmpty { newline(indent) }
            out.append(UInt8(ascii: "}"))
        }
    }

    static func formatNumber(_ d: Double) -> String {
        guard d.isFinite else { return "null" }
        if d.rounded(.towardZero) == d, abs(d) < 9.007_199_254_740_992e15 {
            return d == 0 && d.sign == .minus ? "-0" : String(Int(d))
        }
        return "\(d)"  // shortest round-tripping form, e.g. 0.1, 1e-05, 1.5e+300: all valid JSON
    }

    package static func writeString(_ s: String, into out: inout [UInt8]) {
        let hex: [UInt8] = Array("0123456789abcdef".utf8)
        out.append(UInt8(ascii: "\""))
        for b in s.utf8 {
            switch b {
            case UInt8(ascii: "\""): out.append(contentsOf: [0x5C, 0x22])
            case UInt8(ascii: "\\"): out.append(contentsOf: [0x5C, 0x5C])
            case 0x0A: out.append(contentsOf: [0x5C, UInt8(ascii: "n")])
            case 0x0D: out.append(contentsOf: [0x5C, UInt8(ascii: "r")])
            case 0x09: out.append(contentsOf: [0x5C, UInt8(ascii: "t")])
            case 0x08: out.append(contentsOf: [0x5C, UInt8(ascii: "b")])
            case 0x0C: out.append(contentsOf: [0x5C, UInt8(ascii: "f")])
            case 0..<0x20:
                out.append(contentsOf: [0x5C, UInt8(ascii: "u"), 0x30, 0x30, hex[Int(b >> 4)], hex[Int(b & 15)]])
            default: out.append(b)
            }
        }
        out.append(UInt8(ascii: "\""))
    }
}

/// The recursive-descent parser over raw bytes.
struct JSONParser {
    let p: UnsafePointer<UInt8>
    let n: Int
    let path: String?
    var i = 0

    init(p: UnsafePointer<UInt8>, n: Int, path: String?) {
        self.p = p
        self.n = n
        self.path = path
    }

    /// An error at byte offset `at` (default: the current position), with 1-based line and column
    /// (the column counts Unicode scalars).
    func error(_ msg: String, at: Int? = nil) -> LKError {
        let pos = min(at ?? i, n)
        var line = 1, col = 1
        var k = 0
        while k < pos {
            let b = p[k]
            if b == 0x0A { line += 1; col = 1 } else if b & 0xC0 != 0x80 { col += 1 }
            k += 1
        }
        return .format("\(path ?? "<json>"):\(line):\(col): \(msg)")
    }

    func describeCurrent() -> String {
        guard i < n else { return "end of input" }
        let b = p[i]
        if b >= 0x20 && b < 0x7F { return "'\(Character(Unicode.Scalar(b)))'" }
        return "byte 0x" + String(b, radix: 16)
    }

    @inline(__always) mutating func skipWS() {
        while i < n {
            let b = p[i]
            if b == 0x20 || b == 0x0A || b == 0x0D || b == 0x09 { i += 1 } else { break }
        }
    }

    mutating func value(depth: Int) throws(LKError) -> JSONValue {
        guard i < n else { throw error("unexpected end of input, expected a value") }
        switch p[i] {
        case UInt8(ascii: "{"):
            guard depth < JSON.maxDepth else { throw error("nesting deeper than \(JSON.maxDepth) levels") }
            i += 1
            var members: [(String, JSONValue)] = []
            skipWS()
            if i < n && p[i] == UInt8(ascii: "}") { i += 1; return .object(members) }
            while true {
                skipWS()
                guard i < n, p[i] == UInt8(ascii: "\"") else {
                    throw error("expected a string key in object, found \(describeCurrent())")
                }
                let key = try string()
                skipWS()
                guard i < n, p[i] == UInt8(ascii: ":") else {
                    throw error("expected ':' after object key \"\(key)\", found \(describeCurrent())")
                }
                i += 1
                skipWS()
                members.append((key, try value(depth: depth + 1)))
                skipWS()
                guard i < n else { throw error("unexpected end of input in object, expected ',' or '}'") }
                if p[i] == UInt8(ascii: ",") { i += 1; continue }
                if p[i] == UInt8(ascii: "}") { i += 1; return .object(members) }
                throw error("expected ',' or '}' in object, found \(describeCurrent())")
            }
        case UInt8(ascii: "["):
            guard depth < JSON.maxDepth else { throw error("nesting deeper than \(JSON.maxDepth) levels") }
            i += 1
            var elements: [JSONValue] = []
            skipWS()
            if i < n && p[i] == UInt8(ascii: "]") { i += 1; return .array(elements) }
            while true {
                skipWS()
                elements.append(try value(depth: depth + 1))
                skipWS()
                guard i < n else { throw error("unexpected end of input in array, expected ',' or ']'") }
                if p[i] == UInt8(ascii: ",") { i += 1; continue }
                if p[i] == UInt8(ascii: "]") { i += 1; return .array(elements) }
                throw error("expected ',' or ']' in array, found \(describeCurrent())")
            }
        case UInt8(ascii: "\""):
            return .string(try string())
        case UInt8(ascii: "t"): try literal("true"); return .bool(true)
        case UInt8(ascii: "f"): try literal("false"); return .bool(false)
        case UInt8(ascii: "n"): try literal("null"); return .null
        case UInt8(ascii: "-"), UInt8(ascii: "0")...UInt8(ascii: "9"):
            return try number()
        default:
            throw error("unexpected \(describeCurrent()), expected a value")
        }
    }

    mutating func literal(_ word: StaticString) throws(LKError) {
        let len = word.utf8CodeUnitCount
        let w = word.utf8Start
        guard n - i >= len, (0..<len).allSatisfy({ p[i + $0] == w[$0] }) else {
            throw error("invalid literal, expected '\(word)'")
        }
        i += len
    }

    @inline(__always) func isDigit(_ k: Int) -> Bool { k < n && p[k] >= 0x30 && p[k] <= 0x39 }

    /// A number: `.int` without fraction or exponent when it fits in Int64, else `.number`.
    mutating func number() throws(LKError) -> JSONValue {
        let start = i
        var negative = false
        if p[i] == UInt8(ascii: "-") { negative = true; i += 1 }
        guard isDigit(i) else { throw error("invalid number: expected a digit after '-'") }
        var mantissa: UInt64 = 0
        var digits = 0
        if p[i] == UInt8(ascii: "0") {
            i += 1
            if isDigit(i) { throw error("invalid number: leading zero", at: start) }
        } else {
            while isDigit(i) {
                if digits < 18 { mantissa = mantissa &* 10 &+ UInt64(p[i] - 0x30) }
                digits += 1
                i += 1
            }
        }
        var integral = true
        if i < n && p[i] == UInt8(ascii: ".") {
            integral = false
            i += 1
            guard isDigit(i) else { throw error("invalid number: expected a digit after '.'") }
            while isDigit(i) { i += 1 }
        }
        if i < n && (p[i] == UInt8(ascii: "e") || p[i] == UInt8(ascii: "E")) {
            integral = false
            i += 1
            if i < n && (p[i] == UInt8(ascii: "+") || p[i] == UInt8(ascii: "-")) { i += 1 }
            guard isDigit(i) else { throw error("invalid number: expected a digit in the exponent") }
            while isDigit(i) { i += 1 }
        }
        if integral && digits <= 18 {
            let v = Int(mantissa)  // < 10^18: fits
            return .int(negative ? -v : v)
        }
        let text = String(decoding: UnsafeBufferPointer(start: p + start, count: i - start), as: UTF8.self)
        if integral, let v = Int(text) { return .int(v) }
        guard let d = Double(text) else { throw error("invalid number \(text)", at: start) }
        return .number(d)  // huge exponents give ±inf, as in most parsers
    }

    @inline(__always) func hexValue(_ b: UInt8) -> UInt32? {
        switch b {
        case 0x30...0x39: return UInt32(b - 0x30)
        case 0x41...0x46: return UInt32(b - 0x41 + 10)
        case 0x61...0x66: return UInt32(b - 0x61 + 10)
        default: return nil
        }
    }

    mutating func hex4() throws(LKError) -> UInt32 {
        guard n - i >= 4 else { throw error("truncated \\u escape") }
        var v: UInt32 = 0
        for k in 0..<4 {
            guard let h = hexValue(p[i + k]) else { throw error("invalid hex digit in \\u escape", at: i + k) }
            v = v << 4 | h
        }
        i += 4
        return v
    }

    /// A string starting at the opening quote.
    mutating func string() throws(LKError) -> String {
        let open = i
        i += 1
        let start = i
        // Fast path: no escapes.
        while i < n {
            let b = p[i]
            if b == UInt8(ascii: "\"") {
                let buf = UnsafeBufferPointer(start: p + start, count: i - start)
                guard let s = String(validating: buf, as: UTF8.self) else {
                    throw error("invalid UTF-8 in string", at: start + firstInvalidUTF8(buf))
                }
                i += 1
                return s
            }
            if b == UInt8(ascii: "\\") { break }
            if b < 0x20 { throw error("raw control character 0x\(String(b, radix: 16)) in string (must be escaped)") }
            i += 1
        }
        guard i < n else { throw error("unterminated string", at: open) }
        // Slow path: build the bytes with escapes decoded.
        var out = [UInt8](UnsafeBufferPointer(start: p + start, count: i - start))
        while i < n {
            let b = p[i]
            if b == UInt8(ascii: "\"") {
                i += 1
                guard let s = String(validating: out, as: UTF8.self) else {
                    throw error("invalid UTF-8 in string", at: start)
                }
                return s
            }
            if b < 0x20 { throw error("raw control character 0x\(String(b, radix: 16)) in string (must be escaped)") }
            if b != UInt8(ascii: "\\") { out.append(b); i += 1; continue }
            i += 1
            guard i < n else { break }
            let e = p[i]
            i += 1
            switch e {
            case UInt8(ascii: "\""): out.append(0x22)
            case UInt8(ascii: "\\"): out.append(0x5C)
            case UInt8(ascii: "/"): out.append(0x2F)
            case UInt8(ascii: "b"): out.append(0x08)
            case UInt8(ascii: "f"): out.append(0x0C)
            case UInt8(ascii: "n"): out.append(0x0A)
            case UInt8(ascii: "r"): out.append(0x0D)
            case UInt8(ascii: "t"): out.append(0x09)
            case UInt8(ascii: "u"):
                let escAt = i - 2
                var cp = try hex4()
                if cp >= 0xD800 && cp < 0xDC00 {
                    guard n - i >= 6, p[i] == UInt8(ascii: "\\"), p[i + 1] == UInt8(ascii: "u") else {
                        throw error("unpaired high surrogate \\u\(String(cp, radix: 16)) (expected a \\uDC00-\\uDFFF escape after it)", at: escAt)
                    }
                    i += 2
                    let lo = try hex4()
                    guard lo >= 0xDC00 && lo < 0xE000 else {
                        throw error("high surrogate \\u\(String(cp, radix: 16)) followed by \\u\(String(lo, radix: 16)), not a low surrogate", at: escAt)
                    }
                    cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00)
                } else if cp >= 0xDC00 && cp < 0xE000 {
                    throw error("unpaired low surrogate \\u\(String(cp, radix: 16))", at: escAt)
                }
                appendUTF8(cp, to: &out)
            default:
                throw error("invalid escape '\\\(Character(Unicode.Scalar(e)))' in string", at: i - 2)
            }
        }
        throw error("unterminated string", at: open)
    }

    func firstInvalidUTF8(_ buf: UnsafeBufferPointer<UInt8>) -> Int {
        var k = 0
        var it = buf.makeIterator()
        var dec = UTF8()
        while true {
            switch dec.decode(&it) {
            case .scalarValue(let s): k += UTF8.width(s)
            case .emptyInput, .error: return k
            }
        }
    }
}

@inline(__always)
func appendUTF8(_ cp: UInt32, to out: inout [UInt8]) {
    if cp < 0x80 {
        out.append(UInt8(cp))
    } else if cp < 0x800 {
        out.append(UInt8(0xC0 | (cp >> 6)))
        out.append(UInt8(0x80 | (cp & 0x3F)))
    } else if cp < 0x10000 {
        out.append(UInt8(0xE0 | (cp >> 12)))
        out.append(UInt8(0x80 | ((cp >> 6) & 0x3F)))
        out.append(UInt8(0x80 | (cp & 0x3F)))
    } else {
        out.append(UInt8(0xF0 | (cp >> 18)))
        out.append(UInt8(0x80 | ((cp >> 12) & 0x3F)))
        out.append(UInt8(0x80 | ((cp >> 6) & 0x3F)))
        out.append(UInt8(0x80 | (cp & 0x3F)))
    }
}
