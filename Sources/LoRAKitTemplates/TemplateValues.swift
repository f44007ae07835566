// Runtime values of the template interpreter and their Python formatting (str/repr/json.dumps).
//
// A `JValue` is what an expression evaluates to: Python's None/bool/int/float/str/list/dict, jinja's
// Undefined, and the objects templates get from jinja (`namespace()`, `loop`, macros, bound methods).
// Lists and dicts carry their nesting depth, computed when they are built, so the interpreter bounds nesting
// in O(1) (TemplateLimits.maxValueDepth): the recursive operations on values (repr, ==, <, tojson) and
// freeing a value then stay within the stack.

import LoRAKitCore

// MARK: - Objects

/// What `namespace(...)` returns: a mutable attribute bag, shared by reference (as in jinja).
final class JNamespace {
    var attrs = JDict()
}

/// The `loop` variable of one for-loop iteration.
final class JLoop {
    let items: JList
    let index0: Int
    init(items: JList, index0: Int) {
        self.items = items
        self.index0 = index0
    }

    func attr(_ name: String) -> JValue? {
        let n = items.count, i = index0
        switch name {
        case "index": return .int(i + 1)
        case "index0": return .int(i)
        case "revindex": return .int(n - i)
        case "revindex0": return .int(n - i - 1)
        case "first": return .bool(i == 0)
        case "last": return .bool(i == n - 1)
        case "length": return .int(n)
        case "depth": return .int(1)
        case "depth0": return .int(0)
        case "previtem": return i > 0 ? items[i - 1] : nil
        case "nextitem": return i < n - 1 ? items[i + 1] : nil
        case "cycle": return .callable(.cycle(i))
        default: return nil
        }
    }
}

/// A macro with the scope it was defined in (its closure).
final class JMacro {
    let def: JMacroDef
    let scope: JScope
    init(def: JMacroDef, scope: JScope) {
        self.def = def
        self.scope = scope
    }
}

indirect enum JCallable {
    case builtin(String)
    case macro(JMacro)
    case method(JValue, String)
    case cycle(Int)
}

// MARK: - Containers

/// A list (or tuple) with its nesting depth: 1 + the deepest element's (scalars are 0).
struct JList: RandomAccessCollection {
    private(set) var items: [JValue]
    let depth: Int

    init(_ items: [JValue]) {
        var d = 0
        for x in items { d = Swift.max(d, x.depth) }
        self.items = items
        depth = d + 1
    }

    /// `a + b` without rescanning the elements.
    init(concatenating a: JList, _ b: JList) {
        items = a.items + b.items
        depth = Swift.max(a.depth, b.depth)
    }

    var startIndex: Int { 0 }
    var endIndex: Int { items.count }
    subscript(i: Int) -> JValue { items[i] }
}

/// A string-keyed dict that keeps insertion order (as Python's), with an upper bound of its nesting depth
/// (1 + the deepest value ever stored; removing a key does not lower it).
struct JDict {
    private(set) var keys: [String] = []
    private(set) var map: [String: JValue] = [:]
    private(set) var depth = 1

    subscript(key: String) -> JValue? {
        get { map[key] }
        set {
            if let v = newValue {
                if map.updateValue(v, forKey: key) == nil { keys.append(key) }
                depth = max(depth, v.depth + 1)
            } else if map.removeValue(forKey: key) != nil {
                keys.removeAll { $0 == key }
            }
        }
    }
    var count: Int { keys.count }
    /// Values in key order.
    var values: [JValue] { keys.map { map[$0]! } }
}

// MARK: - Values

enum JValue {
    /// Jinja's Undefined; the string is the error raised when the value is used in an operation.
    case undefined(String)
    case none
    case bool(Bool)
    case int(Int)
    case double(Double)
    case string(String)
    case array(JList)
    case dict(JDict)
    case namespace(JNamespace)
    case loop(JLoop)
    case callable(JCallable)

    static func list(_ items: [JValue]) -> JValue { .array(JList(items)) }

    /// Nesting depth: 0 for scalars, the cached depth of lists and dicts, 1 for objects (a namespace's
    /// attributes are reached through it by reference; repr bounds its own recursion).
    var depth: Int {
        switch self {
        case .array(let l): return l.depth
        case .dict(let d): return d.depth
        case .namespace, .loop: return 1
        default: return 0
        }
    }

    /// Converts a caller's value; nesting deeper than `maxDepth` is refused (`name` says whose value).
    static func from(_ v: TemplateValue, maxDepth: Int, name: String) throws(LKError) -> JValue {
        func conv(_ v: TemplateValue, _ level: Int) throws(LKError) -> JValue {
            switch v {
            case .none: return .none
            case .bool(let b): return .bool(b)
            case .int(let i): return .int(i)
            case .double(let d): return .double(d)
            case .string(let s): return .string(s)
            case .array(let a):
                guard level < maxDepth else { throw tooDeep() }
                var out: [JValue] = []
                out.reserveCapacity(a.count)
                for x in a { out.append(try conv(x, level + 1)) }
                return .list(out)
            case .dict(let d):
                guard level < maxDepth else { throw tooDeep() }
                var r = JDict()
                for (k, x) in d.entries { r[k] = try conv(x, level + 1) }
                return .dict(r)
            }
        }
        func tooDeep() -> LKError {
.format("chat template: the value of '\(name)' is nested too deeply: more than \(maxDepth) levels (TemplateLimits.maxValueDepth)")
        }
        return try conv(v, 0)
    }

    var isUndefined: Bool {
        if case .undefined = self { return true }
        return false
    }

    var isNone: Bool {
        if case .none = self { return true }
        return false
    }
}

/// Variables of one scope: the globals, a for-loop iteration, a macro call.
final class JScope {
    var vars: [String: JValue]
    let parent: JScope?
    init(parent: JScope?) {
        self.parent = parent
        vars = Dictionary(minimumCapacity: 4)  // a loop's target and `loop`, a macro's parameters: no regrowth
    }

    func lookup(_ name: String) -> JValue? {
        var s: JScope? = self
        while let sc = s {
            if let v = sc.vars[name] { return v }
            s = sc.parent
        }
        return nil
    }
}

enum JFlow { case normal, breakLoop, continueLoop }

/// Positional-or-keyword argument access for filters and methods.
struct JArgs {
    var args: [JValue]
    var kwargs: [(String, JValue)]
    init(_ args: [JValue], _ kwargs: [(String, JValue)]) {
        self.args = args
        self.kwargs = kwargs
    }
    subscript(i: Int, name: String) -> JValue? {
        if i < args.count { return args[i] }
        return kw(name)
    }
    func kw(_ name: String) -> JValue? { kwargs.first { $0.0 == name }?.1 }
}

// MARK: - Formatting helpers (Python str()/repr()/json.dumps)

/// Python's `repr(float)`: shortest round-trip digits, exponent form when exp < -4 or exp >= 16.
func pyFloatRepr(_ d: Double) -> String {
    if d.isNaN { return "nan" }
    if d.isInfinite { return d < 0 ? "-inf" : "inf" }
    if d == 0 { return d.sign == .minus ? "-0.0" : "0.0" }
    var s = "\(d.magnitude)"
    var exp = 0
    if let e = s.firstIndex(where: { $0 == "e" || $0 == "E" }) {
        exp = Int(s[s.index(after: e)...]) ?? 0
        s = String(s[..<e])
    }
    let parts = s.split(separator: ".", omittingEmptySubsequences: false)
    let intPart = String(parts[0])
    let fracPart = parts.count > 1 ? String(parts[1]) : ""
    var digits = Array(intPart + fracPart)
    var point = intPart.count + exp
    while digits.first == "0" { digits.removeFirst(); point -= 1 }
    while digits.last == "0" { digits.removeLast() }
    if digits.isEmpty { return "0.0" }
    let sciExp = point - 1
    var out = d < 0 ? "-" : ""
    if sciExp < -4 || sciExp >= 16 {
        out.append(digits[0])
        if digits.count > 1 { out += "." + String(digits[1...]) }
        let a = abs(sciExp)
        out += (sciExp < 0 ? "e-" : "e+") + (a < 10 ? "0" : "") + String(a)
    } else if point <= 0 {
        out += "0." + String(repeating: "0", count: -point) + String(digits)
    } else if point >= digits.count {
        out += String(digits) + String(repeating: "0", count: point - digits.count) + ".0"
    } else {
        out += String(digits[..<point]) + "." + String(digits[point...])
    }
    return out
}

func hexDigits(_ v: UInt32, _ width: Int) -> String {
    let h = String(v, radix: 16)
    return String(repeating: "0", count: max(0, width - h.count)) + h
}

/// Python's `repr(str)`.
func pyStringRepr(_ s: String) -> String {
    let quote: Unicode.Scalar = (s.unicodeScalars.contains("'") && !s.unicodeScalars.contains("\"")) ? "\"" : "'"
    var out = String(Character(quote))
    for c in s.unicodeScalars {
        switch c {
        case "\\": out += "\\\\"
        case "\n": out += "\\n"
        case "\r": out += "\\r"
        case "\t": out += "\\t"
        default:
            if c == quote {
                out += "\\" + String(Character(c))
            } else if pyIsPrintable(c) {
                out.unicodeScalars.append(c)
            } else if c.value < 0x100 {
                out += "\\x" + hexDigits(c.value, 2)
            } else if c.value < 0x10000 {
                out += "\\u" + hexDigits(c.value, 4)
            } else {
                out += "\\U" + hexDigits(c.value, 8)
            }
        }
    }
    out.unicodeScalars.append(quote)
    return out
}

func pyIsPrintable(_ c: Unicode.Scalar) -> Bool {
    if c == " " { return true }
    switch c.properties.generalCategory {
    case .control, .format, .surrogate, .privateUse, .unassigned, .lineSeparator, .paragraphSeparator, .spaceSeparator:
        return false
    default:
        return true
    }
}

func pyTypeName(_ v: JValue) -> String {
    switch v {
    case .undefined: return "Undefined"
    case .none: return "NoneType"
    case .bool: return "bool"
    case .int: return "int"
    case .double: return "float"
    case .string: return "str"
    case .array: return "list"
    case .dict: return "dict"
    case .namespace: return "Namespace"
    case .loop: return "LoopContext"
    case .callable: return "function"
    }
}

/// Jinja's `object_type_repr`, used in "has no attribute" messages.
func jObjectRepr(_ v: JValue) -> String {
    if case .none = v { return "None" }
    return "\(pyTypeName(v)) object"
}

func jsonString(_ s: String, asciiOnly: Bool) -> String {
    var out = "\""
    for c in s.unicodeScalars {
        switch c {
        case "\"": out += "\\\""
        case "\\": out += "\\\\"
        case "\n": out += "\\n"
        case "\r": out += "\\r"
        case "\t": out += "\\t"
        case "\u{08}": out += "\\b"
        case "\u{0C}": out += "\\f"
        default:
            if c.value < 0x20 {
                out += "\\u" + hexDigits(c.value, 4)
            } else if asciiOnly && c.value > 0x7E {
                if c.value >= 0x10000 {
                    let v = c.value - 0x10000
                    out += "\\u" + hexDigits(0xD800 + (v >> 10), 4) + "\\u" + hexDigits(0xDC00 + (v & 0x3FF), 4)
                } else {
                    out += "\\u" + hexDigits(c.value, 4)
                }
            } else {
                out.unicodeScalars.append(c)
            }
        }
    }
    return out + "\""
}

struct JSONOptions {
    var indent: String? = nil
    var itemSep = ", "
    var keySep = ": "
    var sortKeys = false
    var asciiOnly = false
}

