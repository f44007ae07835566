// Interpreter for parsed chat templates (see ChatTemplate.swift): Python/Jinja2 value semantics (truthiness,
// `str()`/`repr()` formatting, int/float arithmetic, comparisons), Jinja's default Undefined, scoping
// (a for-loop iteration and a macro call get their own scope; `if` does not), filters, tests and the str/dict/list
// methods that chat templates call.

import LoRAKitCore

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

// MARK: - Runtime values

final class JNamespace {
    var attrs = JDict()
}

/// The `loop` variable of one for-loop iteration.
final class JLoop {
    let items: [JValue]
    let index0: Int
    init(items: [JValue], index0: Int) {
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

struct JDict {
    var keys: [String] = []
    var map: [String: JValue] = [:]

    subscript(key: String) -> JValue? {
        get { map[key] }
        set {
            if let v = newValue {
                if map.updateValue(v, forKey: key) == nil { keys.append(key) }
            } else if map.removeValue(forKey: key) != nil {
                keys.removeAll { $0 == key }
            }
        }
    }
    var count: Int { keys.count }
}

indirect enum JValue {
    /// Jinja's Undefined; the string is the error raised when the value is used in an operation.
    case undefined(String)
    case none
    case bool(Bool)
    case int(Int)
    case double(Double)
    case string(String)
    case array([JValue])
    case dict(JDict)
    case namespace(JNamespace)
    case loop(JLoop)
    case callable(JCallable)

    init(_ v: TemplateValue) {
        switch v {
        case .none: self = .none
        case .bool(let b): self = .bool(b)
        case .int(let i): self = .int(i)
        case .double(let d): self = .double(d)
        case .string(let s): self = .string(s)
        case .array(let a): self = .array(a.map(JValue.init))
        case .dict(let d):
            var r = JDict()
            for (k, v) in d.entries { r[k] = JValue(v) }
            self = .dict(r)
        }
    }

    var isUndefined: Bool {
        if case .undefined = self { return true }
        return false
    }
}

final class JScope {
    var vars: [String: JValue] = [:]
    let parent: JScope?
    init(parent: JScope?) { self.parent = parent }

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

func pyStr(_ v: JValue) -> String {
    switch v {
    case .undefined: return ""
    case .string(let s): return s
    default: return pyRepr(v)
    }
}

func pyRepr(_ v: JValue) -> String {
    switch v {
    case .undefined: return "Undefined"
    case .none: return "None"
    case .bool(let b): return b ? "True" : "False"
    case .int(let i): return String(i)
    case .double(let d): return pyFloatRepr(d)
    case .string(let s): return pyStringRepr(s)
    case .array(let a): return "[" + a.map(pyRepr).joined(separator: ", ") + "]"
    case .dict(let d): return "{" + d.keys.map { pyStringRepr($0) + ": " + pyRepr(d.map[$0]!) }.joined(separator: ", ") + "}"
    case .namespace(let n): return "<Namespace " + pyRepr(.dict(n.attrs)) + ">"
    case .loop(let l): return "<LoopContext \(l.index0 + 1)/\(l.items.count)>"
    case .callable: return "<function>"
    }
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

// MARK: - Interpreter

struct JinjaInterpreter {
    static let filterNames: Set<String> = [
        "abs", "attr", "capitalize", "count", "d", "default", "dictsort", "e", "escape", "first", "float", "indent",
        "int", "items", "join", "last", "length", "list", "lower", "map", "max", "min", "reject", "rejectattr",
        "replace", "reverse", "round", "safe", "select", "selectattr", "sort", "string", "sum", "title", "tojson",
        "trim", "unique", "upper",
    ]
    static let testNames: Set<String> = [
        "defined", "undefined", "none", "boolean", "false", "true", "integer", "float", "number", "string", "mapping",
        "iterable", "sequence", "callable", "even", "odd", "divisibleby", "eq", "equalto", "==", "ne", "!=", "lt",
        "lessthan", "<", "le", "<=", "gt", "greaterthan", ">", "ge", ">=", "in", "lower", "upper", "sameas", "escaped",
    ]
    static let maxDepth = 200
    static let maxIterations = 1_000_000
    static let maxOutput = 64 << 20
    static let maxRange = 100_000

    let globals: JScope
    var depth = 0
    var iterations = 0

    init(globals vars: [String: TemplateValue]) {
        let builtins = JScope(parent: nil)
        for name in ["raise_exception", "namespace", "range", "dict"] { builtins.vars[name] = .callable(.builtin(name)) }
        globals = JScope(parent: builtins)
        for (k, v) in vars { globals.vars[k] = JValue(v) }
    }

    func fail(_ msg: String, _ loc: JLoc) -> LKError { .format("chat template: \(loc.text): \(msg)") }

    mutating func run(_ program: [JStmt]) throws(LKError) -> String {
        var out = ""
        _ = try exec(program, globals, &out)
        return out
    }

    // MARK: statements

    mutating func exec(_ stmts: [JStmt], _ scope: JScope, _ out: inout String) throws(LKError) -> JFlow {
        depth += 1
        defer { depth -= 1 }
        if depth > JinjaInterpreter.maxDepth, let s = stmts.first {
            throw fail("template recursion too deep (limit \(JinjaInterpreter.maxDepth))", s.loc)
        }
        for st in stmts {
            switch st.kind {
            case .text(let t):
                out += t
            case .output(let e):
                out += pyStr(try eval(e, scope))
                if out.utf8.count > JinjaInterpreter.maxOutput {
                    throw fail("rendered prompt exceeds \(JinjaInterpreter.maxOutput) bytes", st.loc)
                }
            case .ifChain(let branches, let elseBody):
                var taken = false
                for b in branches where truthy(try eval(b.cond, scope)) {
                    taken = true
                    let f = try exec(b.body, scope, &out)
                    if f != .normal { return f }
                    break
                }
                if !taken {
                    let f = try exec(elseBody, scope, &out)
                    if f != .normal { return f }
                }
            case .forLoop(let loop):
                let f = try execFor(loop, st.loc, scope, &out)
                if f != .normal { return f }
            case .set(let target, let e):
                try assign(target, try eval(e, scope), scope, st.loc)
            case .setBlock(let target, let filters, let body):
                var buf = ""
                _ = try exec(body, scope, &buf)
                var v = JValue.string(buf)
                for f in filters { v = try applyFilter(f, v, scope) }
                try assign(target, v, scope, st.loc)
            case .macro(let def):
                scope.vars[def.name] = .callable(.macro(JMacro(def: def, scope: scope)))
            case .filterBlock(let filters, let body):
                var buf = ""
                let flow = try exec(body, scope, &buf)
                var v = JValue.string(buf)
                for f in filters { v = try applyFilter(f, v, scope) }
                out += pyStr(v)
                if flow != .normal { return flow }
            case .block(let body):
                let f = try exec(body, scope, &out)
                if f != .normal { return f }
            case .breakLoop:
                return .breakLoop
            case .continueLoop:
                return .continueLoop
            }
        }
        return .normal
    }

    func bind(_ target: JTarget, _ v: JValue, _ scope: JScope, _ loc: JLoc) throws(LKError) {
        switch target {
        case .name(let n):
            scope.vars[n] = v
        case .names(let names):
            let items = try iterate(v, loc)
            guard items.count == names.count else {
                throw fail(items.count > names.count ? "too many values to unpack (expected \(names.count))"
                                                     : "not enough values to unpack (expected \(names.count), got \(items.count))", loc)
            }
            for (n, x) in zip(names, items) { scope.vars[n] = x }
        case .attr:
            throw fail("cannot bind an attribute here", loc)
        }
    }

    func assign(_ target: JTarget, _ v: JValue, _ scope: JScope, _ loc: JLoc) throws(LKError) {
        if case .attr(let obj, let attr) = target {
            guard case .namespace(let ns)? = scope.lookup(obj) else {
                throw fail("can't assign attribute '\(attr)' on non-namespace object '\(obj)'", loc)
            }
            ns.attrs[attr] = v
            return
        }
        try bind(target, v, scope, loc)
    }

    mutating func execFor(_ loop: JForLoop, _ loc: JLoc, _ scope: JScope, _ out: inout String) throws(LKError) -> JFlow {
        var items = try iterate(try eval(loop.iter, scope), loop.iter.loc)
        if let cond = loop.filter {
            var kept: [JValue] = []
            for x in items {
                let s = JScope(parent: scope)
                try bind(loop.target, x, s, loc)
                if truthy(try eval(cond, s)) { kept.append(x) }
            }
            items = kept
        }
        if items.isEmpty {
            return try exec(loop.elseBody, scope, &out)
        }
        for (i, x) in items.enumerated() {
            iterations += 1
            if iterations > JinjaInterpreter.maxIterations {
                throw fail("too many loop iterations (limit \(JinjaInterpreter.maxIterations))", loc)
            }
            let s = JScope(parent: scope)
            try bind(loop.target, x, s, loc)
            s.vars["loop"] = .loop(JLoop(items: items, index0: i))
            let f = try exec(loop.body, s, &out)
            if f == .breakLoop { break }
        }
        return .normal
    }

    // MARK: expressions

    func undefinedError(_ v: JValue, _ loc: JLoc) -> LKError? {
        if case .undefined(let m) = v { return fail(m, loc) }
        return nil
    }

    mutating func eval(_ e: JExpr, _ scope: JScope) throws(LKError) -> JValue {
        depth += 1
        defer { depth -= 1 }
        if depth > JinjaInterpreter.maxDepth {
            throw fail("expression nested too deeply (limit \(JinjaInterpreter.maxDepth))", e.loc)
        }
        switch e.kind {
        case .const(let v):
            return JValue(v)
        case .name(let n):
            return scope.lookup(n) ?? .undefined("'\(n)' is undefined")
        case .list(let items), .tuple(let items):
            var a: [JValue] = []
            a.reserveCapacity(items.count)
            for x in items { a.append(try eval(x, scope)) }
            return .array(a)
        case .dict(let pairs):
            var d = JDict()
            for p in pairs {
                let k = try eval(p.key, scope)
                if let err = undefinedError(k, p.key.loc) { throw err }
                d[pyStr(k)] = try eval(p.value, scope)
            }
            return .dict(d)
        case .attr(let obj, let name):
            return try getattr(try eval(obj, scope), name, e.loc)
        case .item(let obj, let key):
            return try getitem(try eval(obj, scope), try eval(key, scope), e.loc)
        case .slice(let obj, let a, let b, let c):
            let o = try eval(obj, scope)
            let start = a == nil ? JValue.none : try eval(a!, scope)
            let stop = b == nil ? JValue.none : try eval(b!, scope)
            let step = c == nil ? JValue.none : try eval(c!, scope)
            return try slice(o, start, stop, step, e.loc)
        case .call(let fn, let argExprs, let kwExprs):
            let f = try eval(fn, scope)
            var args: [JValue] = []
            for a in argExprs { args.append(try eval(a, scope)) }
            var kwargs: [(String, JValue)] = []
            for k in kwExprs { kwargs.append((k.name, try eval(k.value, scope))) }
            return try call(f, args, kwargs, e.loc)
        case .filter(let base, let f):
            return try applyFilter(f, try eval(base, scope), scope)
        case .test(let base, let name, let argExprs, let negated):
            let v = try eval(base, scope)
            var args: [JValue] = []
            for a in argExprs { args.append(try eval(a, scope)) }
            let r = try applyTest(name, v, args, e.loc)
            return .bool(negated ? !r : r)
        case .neg(let x):
            let v = try eval(x, scope)
            switch v {
            case .int(let i):
                guard i != Int.min else { throw fail("integer overflow", e.loc) }
                return .int(-i)
            case .bool(let b): return .int(b ? -1 : 0)
            case .double(let d): return .double(-d)
            default:
                if let err = undefinedError(v, e.loc) { throw err }
                throw fail("bad operand type for unary -: '\(pyTypeName(v))'", e.loc)
            }
        case .pos(let x):
            let v = try eval(x, scope)
            switch v {
            case .int, .double: return v
            case .bool(let b): return .int(b ? 1 : 0)
            default:
                if let err = undefinedError(v, e.loc) { throw err }
                throw fail("bad operand type for unary +: '\(pyTypeName(v))'", e.loc)
            }
        case .not(let x):
            return .bool(!truthy(try eval(x, scope)))
        case .and(let a, let b):
            let l = try eval(a, scope)
            return truthy(l) ? try eval(b, scope) : l
        case .or(let a, let b):
            let l = try eval(a, scope)
            return truthy(l) ? l : try eval(b, scope)
        case .binary(let op, let a, let b):
            return try binary(op, try eval(a, scope), try eval(b, scope), e.loc)
        case .concat(let parts):
            var s = ""
            for p in parts { s += pyStr(try eval(p, scope)) }
            return .string(s)
        case .compare(let first, let ops):
            var l = try eval(first, scope)
            for (op, rhsExpr) in ops {
                let r = try eval(rhsExpr, scope)
                if !(try compare(op, l, r, rhsExpr.loc)) { return .bool(false) }
                l = r
            }
            return .bool(true)
        case .cond(let test, let then, let otherwise):
            if truthy(try eval(test, scope)) { return try eval(then, scope) }
            if let o = otherwise { return try eval(o, scope) }
            return .undefined("the inline if-expression on \(e.loc.text) evaluated to false and no else section was defined.")
        }
    }

    // MARK: truthiness, equality, ordering

    func truthy(_ v: JValue) -> Bool {
        switch v {
        case .undefined, .none: return false
        case .bool(let b): return b
        case .int(let i): return i != 0
        case .double(let d): return d != 0
        case .string(let s): return !s.isEmpty
        case .array(let a): return !a.isEmpty
        case .dict(let d): return d.count > 0
        case .namespace, .loop, .callable: return true
        }
    }

    enum Num {
        case i(Int)
        case d(Double)
        var double: Double {
            switch self {
            case .i(let i): return Double(i)
            case .d(let d): return d
            }
        }
    }

    func num(_ v: JValue) -> Num? {
        switch v {
        case .bool(let b): return .i(b ? 1 : 0)
        case .int(let i): return .i(i)
        case .double(let d): return .d(d)
        default: return nil
        }
    }

    func pyEquals(_ a: JValue, _ b: JValue) -> Bool {
        if let x = num(a), let y = num(b) {
            if case .i(let p) = x, case .i(let q) = y { return p == q }
            return x.double == y.double
        }
        switch (a, b) {
        case (.undefined, .undefined), (.none, .none): return true
        case (.string(let x), .string(let y)): return Array(x.unicodeScalars) == Array(y.unicodeScalars)
        case (.array(let x), .array(let y)):
            return x.count == y.count && zip(x, y).allSatisfy { pyEquals($0, $1) }
        case (.dict(let x), .dict(let y)):
            guard x.count == y.count else { return false }
            for k in x.keys {
                guard let yv = y.map[k], pyEquals(x.map[k]!, yv) else { return false }
            }
            return true
        case (.namespace(let x), .namespace(let y)): return x === y
        default: return false
        }
    }

    /// Python ordering; throws a TypeError-like error for unorderable types.
    func pyCompare(_ a: JValue, _ b: JValue, _ op: String, _ loc: JLoc) throws(LKError) -> Int {
        if let x = num(a), let y = num(b) {
            if case .i(let p) = x, case .i(let q) = y { return p < q ? -1 : (p > q ? 1 : 0) }
            let p = x.double, q = y.double
            return p < q ? -1 : (p > q ? 1 : 0)
        }
        switch (a, b) {
        case (.string(let x), .string(let y)):
            let xs = Array(x.unicodeScalars), ys = Array(y.unicodeScalars)
            for (c, d) in zip(xs, ys) where c != d { return c.value < d.value ? -1 : 1 }
            return xs.count < ys.count ? -1 : (xs.count > ys.count ? 1 : 0)
        case (.array(let x), .array(let y)):
            for (c, d) in zip(x, y) where !pyEquals(c, d) { return try pyCompare(c, d, op, loc) }
            return x.count < y.count ? -1 : (x.count > y.count ? 1 : 0)
        default:
            if let err = undefinedError(a, loc) ?? undefinedError(b, loc) { throw err }
            throw fail("'\(op)' not supported between instances of '\(pyTypeName(a))' and '\(pyTypeName(b))'", loc)
        }
    }

    func contains(_ container: JValue, _ item: JValue, _ loc: JLoc) throws(LKError) -> Bool {
        switch container {
        case .string(let s):
            guard case .string(let sub) = item else {
                if let err = undefinedError(item, loc) { throw err }
                throw fail("'in <string>' requires string as left operand, not \(pyTypeName(item))", loc)
            }
            return sub.isEmpty || findScalars(Array(s.unicodeScalars), Array(sub.unicodeScalars), from: 0) != nil
        case .array(let a): return a.contains { pyEquals($0, item) }
        case .dict(let d):
            if case .string(let k) = item { return d.map[k] != nil }
            return false
        case .undefined: return false
        default:
            throw fail("argument of type '\(pyTypeName(container))' is not iterable", loc)
        }
    }

    func compare(_ op: JCmpOp, _ a: JValue, _ b: JValue, _ loc: JLoc) throws(LKError) -> Bool {
        switch op {
        case .eq: return pyEquals(a, b)
        case .ne: return !pyEquals(a, b)
        case .lt: return try pyCompare(a, b, "<", loc) < 0
        case .le: return try pyCompare(a, b, "<=", loc) <= 0
        case .gt: return try pyCompare(a, b, ">", loc) > 0
        case .ge: return try pyCompare(a, b, ">=", loc) >= 0
        case .isIn: return try contains(b, a, loc)
        case .notIn: return !(try contains(b, a, loc))
        }
    }

    // MARK: arithmetic

    func binary(_ op: JBinOp, _ a: JValue, _ b: JValue, _ loc: JLoc) throws(LKError) -> JValue {
        if let err = undefinedError(a, loc) ?? undefinedError(b, loc) { throw err }
        func typeError() -> LKError {
            fail("unsupported operand type(s) for \(op.rawValue): '\(pyTypeName(a))' and '\(pyTypeName(b))'", loc)
        }
        func overflow() -> LKError { fail("integer overflow in '\(op.rawValue)'", loc) }
        if let x = num(a), let y = num(b) {
            if case .i(let p) = x, case .i(let q) = y {
                switch op {
                case .add:
                    let (r, o) = p.addingReportingOverflow(q)
                    if o { throw overflow() }
                    return .int(r)
                case .sub:
                    let (r, o) = p.subtractingReportingOverflow(q)
                    if o { throw overflow() }
                    return .int(r)
                case .mul:
                    let (r, o) = p.multipliedReportingOverflow(by: q)
                    if o { throw overflow() }
                    return .int(r)
                case .div:
                    guard q != 0 else { throw fail("division by zero", loc) }
                    return .double(Double(p) / Double(q))
                case .floorDiv, .mod:
                    guard q != 0 else { throw fail("integer division or modulo by zero", loc) }
                    guard !(p == Int.min && q == -1) else { throw overflow() }
                    var d = p / q
                    if p % q != 0 && ((p < 0) != (q < 0)) { d -= 1 }
                    return op == .floorDiv ? .int(d) : .int(p - d * q)
                case .pow:
                    if q < 0 { return .double(pow(Double(p), Double(q))) }
                    var r = 1, base = p, e = q
                    while e > 0 {
                        if e & 1 == 1 {
                            let (m, o) = r.multipliedReportingOverflow(by: base)
                            if o { throw overflow() }
                            r = m
                        }
                        e >>= 1
                        if e > 0 {
                            let (m, o) = base.multipliedReportingOverflow(by: base)
                            if o { throw overflow() }
                            base = m
                        }
                    }
                    return .int(r)
                }
            }
            let p = x.double, q = y.double
            switch op {
            case .add: return .double(p + q)
            case .sub: return .double(p - q)
            case .mul: return .double(p * q)
            case .div:
                guard q != 0 else { throw fail("float division by zero", loc) }
                return .double(p / q)
            case .floorDiv, .mod:
                guard q != 0 else { throw fail("float modulo", loc) }
                var m = p.truncatingRemainder(dividingBy: q)
                if m != 0 && ((m < 0) != (q < 0)) { m += q }
                return op == .mod ? .double(m) : .double(((p - m) / q).rounded())
            case .pow:
                return .double(pow(p, q))
            }
        }
        switch (op, a, b) {
        case (.add, .string(let x), .string(let y)): return .string(x + y)
        case (.add, .array(let x), .array(let y)): return .array(x + y)
        case (.mul, .string, _), (.mul, .array, _), (.mul, _, .string), (.mul, _, .array):
            let (seq, countV): (JValue, JValue) = { if case .int = b { return (a, b) }; if case .bool = b { return (a, b) }; return (b, a) }()
            guard let cn = num(countV), case .i(let n) = cn else { throw typeError() }
            let times = max(0, n)
            switch seq {
            case .string(let s):
                guard s.utf8.count * times <= JinjaInterpreter.maxOutput else { throw fail("repeated string too long", loc) }
                return .string(String(repeating: s, count: times))
            case .array(let arr):
                guard arr.count * times <= JinjaInterpreter.maxRange * 10 else { throw fail("repeated list too long", loc) }
                var r: [JValue] = []
                for _ in 0..<times { r += arr }
                return .array(r)
            default: throw typeError()
            }
        case (.mod, .string(let fmt), _):
            return .string(try percentFormat(fmt, b, loc))
        case (.add, .string, _):
            throw fail("can only concatenate str (not \"\(pyTypeName(b))\") to str", loc)
        case (.add, .array, _):
            throw fail("can only concatenate list (not \"\(pyTypeName(b))\") to list", loc)
        default:
            throw typeError()
        }
    }

    /// `'%s and %d' % args` (the common subset: %s %r %d %i %f %%).
    func percentFormat(_ fmt: String, _ arg: JValue, _ loc: JLoc) throws(LKError) -> String {
        var args: [JValue]
        if case .array(let a) = arg { args = a } else { args = [arg] }
        var out = ""
        var it = Array(fmt.unicodeScalars)[...]
        while let c = it.popFirst() {
            guard c == "%" else { out.unicodeScalars.append(c); continue }
            guard let spec = it.popFirst() else { throw fail("incomplete format", loc) }
            if spec == "%" { out += "%"; continue }
            guard !args.isEmpty else { throw fail("not enough arguments for format string", loc) }
            let v = args.removeFirst()
            switch spec {
            case "s": out += pyStr(v)
            case "r": out += pyRepr(v)
            case "d", "i":
                guard let n = num(v) else { throw fail("%\(spec) format: a real number is required, not \(pyTypeName(v))", loc) }
                switch n {
                case .i(let i): out += String(i)
                case .d(let d):
                    guard d.isFinite else { throw fail("cannot convert float to integer", loc) }
                    out += String(Int(d))
                }
            case "f":
                guard let n = num(v) else { throw fail("%f format: a real number is required, not \(pyTypeName(v))", loc) }
                out += formatFixed(n.double, 6)
            default:
                throw fail("unsupported format character '\(spec)'", loc)
            }
        }
        if !args.isEmpty { throw fail("not all arguments converted during string formatting", loc) }
        return out
    }

    func formatFixed(_ d: Double, _ places: Int) -> String {
        guard d.isFinite else { return pyFloatRepr(d) }
        var scale = 1.0
        for _ in 0..<places { scale *= 10 }
        let neg = d < 0
        let r = (d.magnitude * scale).rounded(.toNearestOrEven)
        guard r < 9.0e18 else { return pyFloatRepr(d) }
        let n = Int(r)
        var digits = String(n)
        if digits.count <= places { digits = String(repeating: "0", count: places - digits.count + 1) + digits }
        let cut = digits.index(digits.endIndex, offsetBy: -places)
        return (neg && n != 0 ? "-" : "") + digits[..<cut] + (places > 0 ? "." + digits[cut...] : "")
    }

    // MARK: attribute and item access

    static let stringMethods: Set<String> = [
        "strip", "lstrip", "rstrip", "startswith", "endswith", "split", "rsplit", "upper", "lower", "title",
        "capitalize", "replace", "find", "rfind", "count", "join", "splitlines", "isdigit", "isalpha", "isspace",
        "isalnum", "islower", "isupper", "format",
    ]
    static let dictMethods: Set<String> = ["items", "keys", "values", "get"]
    static let listMethods: Set<String> = ["index", "count"]

    func getattr(_ obj: JValue, _ name: String, _ loc: JLoc) throws(LKError) -> JValue {
        switch obj {
        case .undefined(let m):
            throw fail(m, loc)
        case .dict(let d):
            if JinjaInterpreter.dictMethods.contains(name) { return .callable(.method(obj, name)) }
            return d.map[name] ?? .undefined("'dict object' has no attribute '\(name)'")
        case .namespace(let ns):
            return ns.attrs[name] ?? .undefined("'Namespace object' has no attribute '\(name)'")
        case .loop(let l):
            return l.attr(name) ?? .undefined("'LoopContext object' has no attribute '\(name)'")
        case .string:
            if JinjaInterpreter.stringMethods.contains(name) { return .callable(.method(obj, name)) }
        case .array:
            if JinjaInterpreter.listMethods.contains(name) { return .callable(.method(obj, name)) }
        default:
            break
        }
        return .undefined("'\(jObjectRepr(obj))' has no attribute '\(name)'")
    }

    func pyIndex(_ key: JValue, _ count: Int) -> Int? {
        guard let n = num(key), case .i(var i) = n else { return nil }
        if i < 0 { i += count }
        return (i >= 0 && i < count) ? i : nil
    }

    func getitem(_ obj: JValue, _ key: JValue, _ loc: JLoc) throws(LKError) -> JValue {
        if let err = undefinedError(obj, loc) { throw err }
        switch obj {
        case .dict(let d):
            if case .string(let k) = key {
                if let v = d.map[k] { return v }
                if JinjaInterpreter.dictMethods.contains(k) { return .callable(.method(obj, k)) }
            }
            return .undefined("'dict object' has no attribute \(pyRepr(key))")
        case .array(let a):
            if let i = pyIndex(key, a.count) { return a[i] }
            if case .string(let k) = key { return try getattr(obj, k, loc) }
            return .undefined("'list object' has no attribute \(pyRepr(key))")
        case .string(let s):
            let sc = Array(s.unicodeScalars)
            if let i = pyIndex(key, sc.count) { return .string(jString(sc[i...i])) }
            if case .string(let k) = key { return try getattr(obj, k, loc) }
            return .undefined("'str object' has no attribute \(pyRepr(key))")
        case .namespace, .loop:
            if case .string(let k) = key { return try getattr(obj, k, loc) }
            return .undefined("'Namespace object' has no attribute \(pyRepr(key))")
        default:
            return .undefined("'\(jObjectRepr(obj))' has no attribute \(pyRepr(key))")
        }
    }

    func sliceIndices(_ count: Int, _ start: JValue, _ stop: JValue, _ step: JValue, _ loc: JLoc) throws(LKError) -> [Int] {
        func intOrNil(_ v: JValue) throws(LKError) -> Int? {
            if case .none = v { return nil }
            guard let n = num(v), case .i(let i) = n else {
                throw fail("slice indices must be integers or None", loc)
            }
            return i
        }
        let st = try intOrNil(step) ?? 1
        guard st != 0 else { throw fail("slice step cannot be zero", loc) }
        let lower = st > 0 ? 0 : -1
        let upper = st > 0 ? count : count - 1
        func norm(_ v: Int?, _ def: Int) -> Int {
            guard var x = v else { return def }
            if x < 0 {
                x += count
                return x < lower ? lower : x
            }
            return x > upper ? upper : x
        }
        let a = norm(try intOrNil(start), st > 0 ? lower : upper)
        let b = norm(try intOrNil(stop), st > 0 ? upper : lower)
        var r: [Int] = []
        var i = a
        while st > 0 ? i < b : i > b {
            r.append(i)
            i += st
        }
        return r
    }

    func slice(_ obj: JValue, _ start: JValue, _ stop: JValue, _ step: JValue, _ loc: JLoc) throws(LKError) -> JValue {
        if let err = undefinedError(obj, loc) { throw err }
        switch obj {
        case .array(let a):
            return .array(try sliceIndices(a.count, start, stop, step, loc).map { a[$0] })
        case .string(let s):
            let sc = Array(s.unicodeScalars)
            var out = ""
            for i in try sliceIndices(sc.count, start, stop, step, loc) { out.unicodeScalars.append(sc[i]) }
            return .string(out)
        default:
            throw fail("'\(pyTypeName(obj))' object is not subscriptable", loc)
        }
    }

    func iterate(_ v: JValue, _ loc: JLoc) throws(LKError) -> [JValue] {
        switch v {
        case .array(let a): return a
        case .dict(let d): return d.keys.map { .string($0) }
        case .string(let s): return s.unicodeScalars.map { .string(String(Character($0))) }
        case .undefined: return []
        default: throw fail("'\(pyTypeName(v))' object is not iterable", loc)
        }
    }

    // MARK: calls

    mutating func call(_ f: JValue, _ args: [JValue], _ kwargs: [(String, JValue)], _ loc: JLoc) throws(LKError) -> JValue {
        guard case .callable(let c) = f else {
            if let err = undefinedError(f, loc) { throw err }
            throw fail("'\(pyTypeName(f))' object is not callable", loc)
        }
        switch c {
        case .cycle(let i):
            guard !args.isEmpty else { throw fail("no items for cycling given", loc) }
            return args[i % args.count]
        case .method(let obj, let name):
            return try callMethod(obj, name, JArgs(args, kwargs), loc)
        case .macro(let m):
            return try callMacro(m, args, kwargs, loc)
        case .builtin(let name):
            let a = JArgs(args, kwargs)
            switch name {
            case "raise_exception":
                throw LKError.invalidArgument(pyStr(a[0, "message"] ?? .none))
            case "namespace":
                let ns = JNamespace()
                if let first = args.first {
                    guard case .dict(let d) = first else { throw fail("namespace() argument must be a mapping", loc) }
                    ns.attrs = d
                }
                for (k, v) in kwargs { ns.attrs[k] = v }
                return .namespace(ns)
            case "dict":
                var d = JDict()
                if let first = args.first {
                    guard case .dict(let src) = first else { throw fail("dict() argument must be a mapping", loc) }
                    d = src
                }
                for (k, v) in kwargs { d[k] = v }
                return .dict(d)
            case "range":
                var ints: [Int] = []
                for x in args {
                    guard let n = num(x), case .i(let i) = n else {
                        throw fail("'\(pyTypeName(x))' object cannot be interpreted as an integer", loc)
                    }
                    ints.append(i)
                }
                let (start, stop, step): (Int, Int, Int)
                switch ints.count {
                case 1: (start, stop, step) = (0, ints[0], 1)
                case 2: (start, stop, step) = (ints[0], ints[1], 1)
                case 3: (start, stop, step) = (ints[0], ints[1], ints[2])
                default: throw fail("range expected 1 to 3 integer arguments, got \(ints.count)", loc)
                }
                guard step != 0 else { throw fail("range() arg 3 must not be zero", loc) }
                let span = Double(stop) - Double(start)
                let n = max(0, Int(((span / Double(step)).rounded(.up))))
                guard n <= JinjaInterpreter.maxRange else {
                    throw fail("Range too big. The sandbox blocks ranges larger than MAX_RANGE (\(JinjaInterpreter.maxRange)).", loc)
                }
                return .array((0..<n).map { .int(start + $0 * step) })
            default:
                throw fail("unknown function '\(name)'", loc)
            }
        }
    }

    mutating func callMacro(_ m: JMacro, _ args: [JValue], _ kwargs: [(String, JValue)], _ loc: JLoc) throws(LKError) -> JValue {
        let params = m.def.params
        guard args.count <= params.count else {
            throw fail("macro '\(m.def.name)' takes not more than \(params.count) argument(s)", loc)
        }
        let s = JScope(parent: m.scope)
        var given = Set<String>()
        for (i, v) in args.enumerated() {
            s.vars[params[i].0] = v
            given.insert(params[i].0)
        }
        for (k, v) in kwargs {
            guard params.contains(where: { $0.0 == k }) else {
                throw fail("macro '\(m.def.name)' has no argument named '\(k)'", loc)
            }
            s.vars[k] = v
            given.insert(k)
        }
        for (p, def) in params where !given.contains(p) {
            if let d = def {
                s.vars[p] = try eval(d, s)
            } else {
                s.vars[p] = .undefined("parameter '\(p)' was not provided")
            }
        }
        var out = ""
        _ = try exec(m.def.body, s, &out)
        return .string(out)
    }

    // MARK: methods

    mutating func callMethod(_ obj: JValue, _ name: String, _ a: JArgs, _ loc: JLoc) throws(LKError) -> JValue {
        switch obj {
        case .dict(let d):
            switch name {
            case "items": return .array(d.keys.map { .array([.string($0), d.map[$0]!]) })
            case "keys": return .array(d.keys.map { .string($0) })
            case "values": return .array(d.keys.map { d.map[$0]! })
            case "get":
                guard let k = a[0, "key"] else { throw fail("get expected at least 1 argument, got 0", loc) }
                if case .string(let ks) = k, let v = d.map[ks] { return v }
                return a[1, "default"] ?? .none
            default: break
            }
        case .array(let arr):
            guard let x = a[0, "value"] else { throw fail("\(name)() takes exactly one argument (0 given)", loc) }
            if name == "count" { return .int(arr.filter { pyEquals($0, x) }.count) }
            if let i = arr.firstIndex(where: { pyEquals($0, x) }) { return .int(i) }
            throw fail("\(pyRepr(x)) is not in list", loc)
        case .string(let s):
            return try stringMethod(s, name, a, loc)
        default: break
        }
        throw fail("'\(pyTypeName(obj))' object has no method '\(name)'", loc)
    }

    func stringArg(_ v: JValue?, _ what: String, _ loc: JLoc) throws(LKError) -> String? {
        guard let v = v else { return nil }
        switch v {
        case .none: return nil
        case .string(let s): return s
        default: throw fail("\(what) must be str or None, not \(pyTypeName(v))", loc)
        }
    }

    func intArg(_ v: JValue?, _ def: Int, _ what: String, _ loc: JLoc) throws(LKError) -> Int {
        guard let v = v else { return def }
        if case .none = v { return def }
        guard let n = num(v), case .i(let i) = n else { throw fail("\(what) must be an integer, not \(pyTypeName(v))", loc) }
        return i
    }

    mutating func stringMethod(_ s: String, _ name: String, _ a: JArgs, _ loc: JLoc) throws(LKError) -> JValue {
        let sc = Array(s.unicodeScalars)
        switch name {
        case "strip", "lstrip", "rstrip":
            let chars = try stringArg(a[0, "chars"], "strip arg", loc)
            return .string(pyStrip(s, chars.map { Set($0.unicodeScalars) }, left: name != "rstrip", right: name != "lstrip"))
        case "startswith", "endswith":
            guard let p = a[0, "prefix"] else { throw fail("\(name)() takes at least 1 argument (0 given)", loc) }
            var prefixes: [String] = []
            switch p {
            case .string(let x): prefixes = [x]
            case .array(let xs):
                for x in xs {
                    guard case .string(let y) = x else { throw fail("tuple for \(name) must only contain str", loc) }
                    prefixes.append(y)
                }
            default: throw fail("\(name) first arg must be str or a tuple of str, not \(pyTypeName(p))", loc)
            }
            let start = try intArg(a[1, "start"], 0, "start", loc)
            let sub = Array(sc[max(0, min(start < 0 ? start + sc.count : start, sc.count))...])
            for x in prefixes {
                let xs = Array(x.unicodeScalars)
                if name == "startswith" ? sub.starts(with: xs) : (xs.count <= sub.count && Array(sub.suffix(xs.count)) == xs) {
                    return .bool(true)
                }
            }
            return .bool(false)
        case "split", "rsplit":
            let sep = try stringArg(a[0, "sep"], "sep", loc)
            let maxsplit = try intArg(a[1, "maxsplit"], -1, "maxsplit", loc)
            if let sp = sep, sp.isEmpty { throw fail("empty separator", loc) }
            let parts = name == "split" ? pySplit(sc, sep.map { Array($0.unicodeScalars) }, maxsplit)
                                        : pyRSplit(sc, sep.map { Array($0.unicodeScalars) }, maxsplit)
            return .array(parts.map { .string($0) })
        case "splitlines":
            var parts: [String] = []
            var curLine = ""
            var i = 0
            while i < sc.count {
                let c = sc[i]
                switch c.value {
                case 0x0A, 0x0B, 0x0C, 0x0D, 0x1C, 0x1D, 0x1E, 0x85, 0x2028, 0x2029:
                    parts.append(curLine)
                    curLine = ""
                    if c == "\r", i + 1 < sc.count, sc[i + 1] == "\n" { i += 1 }
                default:
                    curLine.unicodeScalars.append(c)
                }
                i += 1
            }
            if !curLine.isEmpty { parts.append(curLine) }
            return .array(parts.map { .string($0) })
        case "upper": return .string(s.uppercased())
        case "lower": return .string(s.lowercased())
        case "title": return .string(pyTitle(s))
        case "capitalize": return .string(pyCapitalize(s))
        case "replace":
            guard let old = try stringArg(a[0, "old"], "replace arg 1", loc),
                  let new = try stringArg(a[1, "new"], "replace arg 2", loc) else {
                throw fail("replace() takes at least 2 arguments", loc)
            }
            return .string(pyReplace(s, old, new, try intArg(a[2, "count"], -1, "count", loc)))
        case "find", "rfind", "count":
            guard let sub = try stringArg(a[0, "sub"], "\(name) arg", loc) else { throw fail("\(name)() takes at least 1 argument", loc) }
            let subs = Array(sub.unicodeScalars)
            if name == "count" {
                if subs.isEmpty { return .int(sc.count + 1) }
                var n = 0, i = 0
                while let j = findScalars(sc, subs, from: i) { n += 1; i = j + subs.count }
                return .int(n)
            }
            if name == "find" { return .int(findScalars(sc, subs, from: 0) ?? -1) }
            var last = -1
            var i = 0
            while let j = findScalars(sc, subs, from: i) {
                last = j
                i = j + 1
                if subs.isEmpty && j >= sc.count { break }
            }
            return .int(last)
        case "join":
            guard let it = a[0, "iterable"] else { throw fail("join() takes exactly one argument", loc) }
            var parts: [String] = []
            for x in try iterate(it, loc) {
                guard case .string(let y) = x else {
                    throw fail("sequence item \(parts.count): expected str instance, \(pyTypeName(x)) found", loc)
                }
                parts.append(y)
            }
            return .string(parts.joined(separator: s))
        case "isdigit": return .bool(!sc.isEmpty && sc.allSatisfy { $0.properties.numericType == .decimal || $0.properties.numericType == .digit })
        case "isalpha": return .bool(!sc.isEmpty && sc.allSatisfy { $0.properties.isAlphabetic })
        case "isalnum": return .bool(!sc.isEmpty && sc.allSatisfy { $0.properties.isAlphabetic || $0.properties.numericType != nil })
        case "isspace": return .bool(!sc.isEmpty && sc.allSatisfy(jIsSpace))
        case "islower":
            return .bool(sc.contains { $0.properties.isCased } && !sc.contains { $0.properties.isUppercase || $0.properties.generalCategory == .titlecaseLetter })
        case "isupper":
            return .bool(sc.contains { $0.properties.isCased } && !sc.contains { $0.properties.isLowercase || $0.properties.generalCategory == .titlecaseLetter })
        case "format":
            return .string(try braceFormat(s, a, loc))
        default: break
        }
        throw fail("'str' object has no method '\(name)'", loc)
    }

    /// `'{} {name}'.format(...)` for plain `{}`, `{0}` and `{name}` fields.
    func braceFormat(_ s: String, _ a: JArgs, _ loc: JLoc) throws(LKError) -> String {
        var out = ""
        var auto = 0
        var it = Array(s.unicodeScalars)[...]
        while let c = it.popFirst() {
            if c == "{" {
                if it.first == "{" { it.removeFirst(); out += "{"; continue }
                var field = ""
                while let d = it.popFirst(), d != "}" { field.unicodeScalars.append(d) }
                let v: JValue?
                if field.isEmpty { v = auto < a.args.count ? a.args[auto] : nil; auto += 1 }
                else if let i = Int(field) { v = i < a.args.count ? a.args[i] : nil }
                else { v = a.kwargs.first { $0.0 == field }?.1 }
                guard let val = v else { throw fail("format: missing argument for field '{\(field)}'", loc) }
                out += pyStr(val)
            } else if c == "}" {
                if it.first == "}" { it.removeFirst() }
                out += "}"
            } else {
                out.unicodeScalars.append(c)
            }
        }
        return out
    }

    // MARK: tests

    func applyTest(_ name: String, _ v: JValue, _ args: [JValue], _ loc: JLoc) throws(LKError) -> Bool {
        func arg0() throws(LKError) -> JValue {
            guard let x = args.first else { throw fail("test '\(name)' needs an argument", loc) }
            return x
        }
        switch name {
        case "defined": return !v.isUndefined
        case "undefined": return v.isUndefined
        case "none": if case .none = v { return true }; return false
        case "boolean": if case .bool = v { return true }; return false
        case "true": if case .bool(true) = v { return true }; return false
        case "false": if case .bool(false) = v { return true }; return false
        case "integer": if case .int = v { return true }; return false
        case "float": if case .double = v { return true }; return false
        case "number": return num(v) != nil
        case "string": if case .string = v { return true }; return false
        case "mapping": if case .dict = v { return true }; return false
        case "iterable":
            switch v {
            case .array, .dict, .string, .undefined: return true
            default: return false
            }
        case "sequence":
            switch v {
            case .array, .dict, .string: return true
            default: return false
            }
        case "callable": if case .callable = v { return true }; return false
        case "even", "odd":
            guard let n = num(v), case .i(let i) = n else {
                if let err = undefinedError(v, loc) { throw err }
                throw fail("test '\(name)' needs an integer", loc)
            }
            return (i % 2 == 0) == (name == "even")
        case "divisibleby":
            guard let n = num(v), case .i(let i) = n, let d = num(try arg0()), case .i(let j) = d else {
                throw fail("test 'divisibleby' needs integers", loc)
            }
            guard j != 0 else { throw fail("integer division or modulo by zero", loc) }
            return i % j == 0
        case "eq", "equalto", "==": return pyEquals(v, try arg0())
        case "ne", "!=": return !pyEquals(v, try arg0())
        case "lt", "lessthan", "<": return try pyCompare(v, try arg0(), "<", loc) < 0
        case "le", "<=": return try pyCompare(v, try arg0(), "<=", loc) <= 0
        case "gt", "greaterthan", ">": return try pyCompare(v, try arg0(), ">", loc) > 0
        case "ge", ">=": return try pyCompare(v, try arg0(), ">=", loc) >= 0
        case "in": return try contains(try arg0(), v, loc)
        case "lower": if case .string(let s) = v { return s.lowercased() == s }; return false
        case "upper": if case .string(let s) = v { return s.uppercased() == s }; return false
        case "sameas":
            let o = try arg0()
            switch (v, o) {
            case (.none, .none): return true
            case (.bool(let x), .bool(let y)): return x == y
            case (.namespace(let x), .namespace(let y)): return x === y
            default: return false
            }
        case "escaped": return false
        default: throw fail("no test named '\(name)'", loc)
        }
    }

    // MARK: filters

    mutating func applyFilter(_ f: JFilterCall, _ v: JValue, _ scope: JScope) throws(LKError) -> JValue {
        var args: [JValue] = []
        for x in f.args { args.append(try eval(x, scope)) }
        var kwargs: [(String, JValue)] = []
        for k in f.kwargs { kwargs.append((k.name, try eval(k.value, scope))) }
        return try filter(f.name, v, JArgs(args, kwargs), f.loc)
    }

    /// Attribute lookup by a dotted path with getitem semantics, as jinja's `make_attrgetter` does.
    func attrPath(_ v: JValue, _ path: JValue, _ loc: JLoc) throws(LKError) -> JValue {
        var cur = v
        let parts: [JValue]
        switch path {
        case .string(let s): parts = s.split(separator: ".", omittingEmptySubsequences: false).map { p in Int(p).map { .int($0) } ?? .string(String(p)) }
        default: parts = [path]
        }
        for p in parts { cur = try getitem(cur, p, loc) }
        return cur
    }

    func stableSort(_ a: [JValue], _ less: (JValue, JValue) throws(LKError) -> Bool) throws(LKError) -> [JValue] {
        if a.count <= 1 { return a }
        let mid = a.count / 2
        let l = try stableSort(Array(a[..<mid]), less), r = try stableSort(Array(a[mid...]), less)
        var out: [JValue] = []
        out.reserveCapacity(a.count)
        var i = 0, j = 0
        while i < l.count, j < r.count {
            if try less(r[j], l[i]) { out.append(r[j]); j += 1 } else { out.append(l[i]); i += 1 }
        }
        out += l[i...]
        out += r[j...]
        return out
    }

    func sortKey(_ v: JValue, _ attribute: JValue?, _ caseSensitive: Bool, _ loc: JLoc) throws(LKError) -> JValue {
        var x = v
        if let a = attribute, !(a.isNone) { x = try attrPath(v, a, loc) }
        if !caseSensitive, case .string(let s) = x { return .string(s.lowercased()) }
        return x
    }

    mutating func filter(_ name: String, _ v: JValue, _ a: JArgs, _ loc: JLoc) throws(LKError) -> JValue {
        switch name {
        case "safe":
            return v
        case "string":
            return .string(pyStr(v))
        case "trim":
            let chars = try stringArg(a[0, "chars"], "trim chars", loc)
            return .string(pyStrip(pyStr(v), chars.map { Set($0.unicodeScalars) }, left: true, right: true))
        case "upper": return .string(pyStr(v).uppercased())
        case "lower": return .string(pyStr(v).lowercased())
        case "capitalize": return .string(pyCapitalize(pyStr(v)))
        case "title": return .string(jinjaTitle(pyStr(v)))
        case "e", "escape":
            var out = ""
            for c in pyStr(v).unicodeScalars {
                switch c {
                case "&": out += "&amp;"
                case "<": out += "&lt;"
                case ">": out += "&gt;"
                case "\"": out += "&#34;"
                case "'": out += "&#39;"
                default: out.unicodeScalars.append(c)
                }
            }
            return .string(out)
        case "replace":
            guard let old = a[0, "old"], let new = a[1, "new"] else { throw fail("replace filter needs 2 arguments", loc) }
            return .string(pyReplace(pyStr(v), pyStr(old), pyStr(new), try intArg(a[2, "count"], -1, "count", loc)))
        case "length", "count":
            switch v {
            case .string(let s): return .int(s.unicodeScalars.count)
            case .array(let x): return .int(x.count)
            case .dict(let d): return .int(d.count)
            case .undefined: return .int(0)
            default: throw fail("object of type '\(pyTypeName(v))' has no len()", loc)
            }
        case "d", "default":
            let def = a[0, "default_value"] ?? .string("")
            let boolean = truthy(a[1, "boolean"] ?? .bool(false))
            if v.isUndefined || (boolean && !truthy(v)) { return def }
            return v
        case "first":
            return try iterate(v, loc).first ?? .undefined("No first item, sequence was empty.")
        case "last":
            if case .undefined(let m) = v { throw fail(m, loc) }
            return try iterate(v, loc).last ?? .undefined("No last item, sequence was empty.")
        case "join":
            var items = try iterate(v, loc)
            if let attr = a[1, "attribute"], !attr.isNone { items = try items.map { (x) throws(LKError) in try attrPath(x, attr, loc) } }
            return .string(items.map(pyStr).joined(separator: pyStr(a[0, "d"] ?? .string(""))))
        case "tojson":
            var o = JSONOptions()
            o.asciiOnly = truthy(a[0, "ensure_ascii"] ?? .bool(false))
            if let ind = a[1, "indent"] {
                switch ind {
                case .none: break
                case .string(let s): o.indent = s
                default:
                    guard let n = num(ind), case .i(let k) = n else { throw fail("tojson: indent must be an int or a string", loc) }
                    o.indent = String(repeating: " ", count: max(0, k))
                }
            }
            if o.indent != nil { o.itemSep = "," }
            if let sep = a[2, "separators"], !sep.isNone {
                guard case .array(let p) = sep, p.count == 2, case .string(let i) = p[0], case .string(let k) = p[1] else {
                    throw fail("tojson: separators must be a pair of strings", loc)
                }
                o.itemSep = i
                o.keySep = k
            }
            o.sortKeys = truthy(a[3, "sort_keys"] ?? .bool(false))
            var out = ""
            try toJSON(v, o, 0, &out, loc)
            return .string(out)
        case "int":
            let def = a[0, "default"] ?? .int(0)
            let base = try intArg(a[1, "base"], 10, "base", loc)
            switch v {
            case .int: return v
            case .bool(let b): return .int(b ? 1 : 0)
            case .double(let d):
                guard d.isFinite, d.magnitude < 9.2e18 else { return def }
                return .int(Int(d))
            case .string(let s):
                var t = pyStrip(s, nil, left: true, right: true).filter { $0 != "_" }
                var neg = false
                if t.hasPrefix("-") || t.hasPrefix("+") { neg = t.hasPrefix("-"); t.removeFirst() }
                var radix = base
                for (p, b) in [("0x", 16), ("0o", 8), ("0b", 2)] where t.lowercased().hasPrefix(p) && (base == b || base == 0) {
                    t.removeFirst(2)
                    radix = b
                }
                if radix == 0 { radix = 10 }
                if (2...36).contains(radix), !t.hasPrefix("-"), !t.hasPrefix("+"), let i = Int(t, radix: radix) { return .int(neg ? -i : i) }
                t = (neg ? "-" : "") + t
                if base == 10, let d = Double(t), d.isFinite, d.magnitude < 9.2e18 { return .int(Int(d)) }
                return def
            default: return def
            }
        case "float":
            let def = a[0, "default"] ?? .double(0)
            switch v {
            case .double: return v
            case .int(let i): return .double(Double(i))
            case .bool(let b): return .double(b ? 1 : 0)
            case .string(let s):
                if let d = Double(pyStrip(s, nil, left: true, right: true)) { return .double(d) }
                return def
            default: return def
            }
        case "abs":
            switch v {
            case .int(let i):
                guard i != Int.min else { throw fail("integer overflow", loc) }
                return .int(abs(i))
            case .double(let d): return .double(d.magnitude)
            case .bool(let b): return .int(b ? 1 : 0)
            default: throw fail("bad operand type for abs(): '\(pyTypeName(v))'", loc)
            }
        case "round":
            let precision = try intArg(a[0, "precision"], 0, "precision", loc)
            let method = pyStr(a[1, "method"] ?? .string("common"))
            guard let n = num(v) else { throw fail("round filter needs a number", loc) }
            var scale = 1.0
            for _ in 0..<max(0, precision) { scale *= 10 }
            let x = n.double * scale
            let r: Double
            switch method {
            case "ceil": r = x.rounded(.up)
            case "floor": r = x.rounded(.down)
            case "common": r = x.rounded(.toNearestOrEven)
            default: throw fail("method must be 'common', 'ceil' or 'floor'", loc)
            }
            return .double(r / scale)
        case "list":
            return .array(try iterate(v, loc))
        case "items":
            switch v {
            case .dict(let d): return .array(d.keys.map { .array([.string($0), d.map[$0]!]) })
            case .undefined: return .array([])
            default: throw fail("items filter: can only get item pairs from a mapping, not \(pyTypeName(v))", loc)
            }
        case "reverse":
            switch v {
            case .string(let s): return .string(jString(ArraySlice(s.unicodeScalars.reversed())))
            default: return .array(try iterate(v, loc).reversed())
            }
        case "sort", "dictsort":
            let caseSensitive = truthy(a[name == "sort" ? 1 : 0, "case_sensitive"] ?? .bool(false))
            if name == "dictsort" {
                guard case .dict(let d) = v else { throw fail("dictsort: expected a mapping", loc) }
                let byValue = pyStr(a[1, "by"] ?? .string("key")) == "value"
                let rev = truthy(a[2, "reverse"] ?? .bool(false))
                let pairs: [JValue] = d.keys.map { .array([.string($0), d.map[$0]!]) }
                let sorted = try stableSort(pairs) { (x, y) throws(LKError) in
                    let kx = try sortKey(x, .int(byValue ? 1 : 0), caseSensitive, loc)
                    let ky = try sortKey(y, .int(byValue ? 1 : 0), caseSensitive, loc)
                    return try pyCompare(kx, ky, "<", loc) < 0
                }
                return .array(rev ? sorted.reversed() : sorted)
            }
            let rev = truthy(a[0, "reverse"] ?? .bool(false))
            let attribute = a[2, "attribute"]
            let items = try iterate(v, loc)
            let sorted = try stableSort(items) { (x, y) throws(LKError) in
                let kx = try sortKey(x, attribute, caseSensitive, loc), ky = try sortKey(y, attribute, caseSensitive, loc)
                return rev ? try pyCompare(ky, kx, "<", loc) < 0 : try pyCompare(kx, ky, "<", loc) < 0
            }
            return .array(sorted)
        case "unique":
            let caseSensitive = truthy(a[0, "case_sensitive"] ?? .bool(false))
            let attribute = a[1, "attribute"]
            var seen: [JValue] = []
            var out: [JValue] = []
            for x in try iterate(v, loc) {
                let k = try sortKey(x, attribute, caseSensitive, loc)
                if !seen.contains(where: { pyEquals($0, k) }) {
                    seen.append(k)
                    out.append(x)
                }
            }
            return .array(out)
        case "min", "max":
            let caseSensitive = truthy(a[0, "case_sensitive"] ?? .bool(false))
            let attribute = a[1, "attribute"]
            var best: JValue? = nil
            var bestKey: JValue = .none
            for x in try iterate(v, loc) {
                let k = try sortKey(x, attribute, caseSensitive, loc)
                if best == nil { best = x; bestKey = k; continue }
                let c = try pyCompare(k, bestKey, "<", loc)
                if (name == "min" && c < 0) || (name == "max" && c > 0) { best = x; bestKey = k }
            }
            return best ?? .undefined("No aggregated item, sequence was empty.")
        case "sum":
            let attribute = a[0, "attribute"]
            var total = a[1, "start"] ?? .int(0)
            for x in try iterate(v, loc) {
                let y = (attribute == nil || attribute!.isNone) ? x : try attrPath(x, attribute!, loc)
                total = try binary(.add, total, y, loc)
            }
            return total
        case "attr":
            guard let n = a[0, "name"], case .string(let s) = n else { throw fail("attr filter needs a name", loc) }
            return try getattr(v, s, loc)
        case "map":
            let items = try iterate(v, loc)
            if let attr = a.kw("attribute") {
                let def = a.kw("default")
                var out: [JValue] = []
                for x in items {
                    let r = try attrPath(x, attr, loc)
                    out.append(r.isUndefined && def != nil ? def! : r)
                }
                return .array(out)
            }
            guard let fname = a.args.first, case .string(let fn) = fname else { throw fail("map filter needs a filter name or attribute=", loc) }
            guard JinjaInterpreter.filterNames.contains(fn) else { throw fail("no filter named '\(fn)'", loc) }
            let rest = JArgs(Array(a.args.dropFirst()), a.kwargs)
            var out: [JValue] = []
            for x in items { out.append(try filter(fn, x, rest, loc)) }
            return .array(out)
        case "select", "reject", "selectattr", "rejectattr":
            let byAttr = name.hasSuffix("attr")
            let keep = name.hasPrefix("select")
            var rest = a.args
            var attr: JValue? = nil
            if byAttr {
                guard !rest.isEmpty else { throw fail("\(name) needs an attribute name", loc) }
                attr = rest.removeFirst()
            }
            var testName: String? = nil
            if !rest.isEmpty {
                guard case .string(let t) = rest.removeFirst() else { throw fail("\(name): the test name must be a string", loc) }
                guard JinjaInterpreter.testNames.contains(t) else { throw fail("no test named '\(t)'", loc) }
                testName = t
            }
            var out: [JValue] = []
            for x in try iterate(v, loc) {
                let val = byAttr ? try attrPath(x, attr!, loc) : x
                let ok = testName == nil ? truthy(val) : try applyTest(testName!, val, rest, loc)
                if ok == keep { out.append(x) }
            }
            return .array(out)
        case "indent":
            let w = a[0, "width"] ?? .int(4)
            let ind: String
            if case .string(let s) = w { ind = s } else { ind = String(repeating: " ", count: max(0, try intArg(w, 4, "width", loc))) }
            let first = truthy(a[1, "first"] ?? .bool(false))
            let blank = truthy(a[2, "blank"] ?? .bool(false))
            let text = pyStr(v) + "\n"
            guard case .array(let linesV) = try stringMethod(text, "splitlines", JArgs([], []), loc) else { return v }
            var lines = linesV.map(pyStr)
            var rv: String
            if blank {
                rv = lines.joined(separator: "\n" + ind)
            } else {
                rv = lines.isEmpty ? "" : lines.removeFirst()
                if !lines.isEmpty { rv += "\n" + lines.map { $0.isEmpty ? $0 : ind + $0 }.joined(separator: "\n") }
            }
            return .string(first ? ind + rv : rv)
        default:
            throw fail("no filter named '\(name)'", loc)
        }
    }

    func toJSON(_ v: JValue, _ o: JSONOptions, _ level: Int, _ out: inout String, _ loc: JLoc) throws(LKError) {
        guard level < JinjaInterpreter.maxDepth else { throw fail("tojson: value nested too deeply", loc) }
        func newline(_ l: Int) -> String {
            guard let ind = o.indent else { return "" }
            return "\n" + String(repeating: ind, count: l)
        }
        switch v {
        case .none: out += "null"
        case .bool(let b): out += b ? "true" : "false"
        case .int(let i): out += String(i)
        case .double(let d):
            if d.isNaN { out += "NaN" } else if d.isInfinite { out += d < 0 ? "-Infinity" : "Infinity" } else { out += pyFloatRepr(d) }
        case .string(let s): out += jsonString(s, asciiOnly: o.asciiOnly)
        case .array(let a):
            if a.isEmpty { out += "[]"; return }
            out += "[" + newline(level + 1)
            for (i, x) in a.enumerated() {
                if i > 0 { out += o.itemSep + newline(level + 1) }
                try toJSON(x, o, level + 1, &out, loc)
            }
            out += newline(level) + "]"
        case .dict(let d):
            if d.count == 0 { out += "{}"; return }
            out += "{" + newline(level + 1)
            var keys = d.keys
            if o.sortKeys {
                let sorted = try stableSort(keys.map { .string($0) }) { (x, y) throws(LKError) in try pyCompare(x, y, "<", loc) < 0 }
                keys = sorted.map(pyStr)
            }
            for (i, k) in keys.enumerated() {
                if i > 0 { out += o.itemSep + newline(level + 1) }
                out += jsonString(k, asciiOnly: o.asciiOnly) + o.keySep
                try toJSON(d.map[k]!, o, level + 1, &out, loc)
            }
            out += newline(level) + "}"
        case .undefined, .namespace, .loop, .callable:
            throw fail("Object of type \(pyTypeName(v)) is not JSON serializable", loc)
        }
    }
}

extension JValue {
    var isNone: Bool {
        if case .none = self { return true }
        return false
    }
}

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

// MARK: - Python string helpers

func findScalars(_ hay: [Unicode.Scalar], _ needle: [Unicode.Scalar], from: Int) -> Int? {
    if needle.isEmpty { return from <= hay.count ? from : nil }
    guard hay.count >= needle.count else { return nil }
    var i = from
    while i + needle.count <= hay.count {
        if hay[i] == needle[0] {
            var ok = true
            for k in 1..<needle.count where hay[i + k] != needle[k] { ok = false; break }
            if ok { return i }
        }
        i += 1
    }
    return nil
}

func pyStrip(_ s: String, _ chars: Set<Unicode.Scalar>?, left: Bool, right: Bool) -> String {
    let sc = Array(s.unicodeScalars)
    func strip(_ c: Unicode.Scalar) -> Bool { chars.map { $0.contains(c) } ?? jIsSpace(c) }
    var a = 0, b = sc.count
    if left { while a < b, strip(sc[a]) { a += 1 } }
    if right { while b > a, strip(sc[b - 1]) { b -= 1 } }
    return jString(sc[a..<b])
}

func pySplit(_ sc: [Unicode.Scalar], _ sep: [Unicode.Scalar]?, _ maxsplit: Int) -> [String] {
    var parts: [String] = []
    if let sep = sep {
        var start = 0
        var splits = 0
        while maxsplit < 0 || splits < maxsplit, let j = findScalars(sc, sep, from: start) {
            parts.append(jString(sc[start..<j]))
            start = j + sep.count
            splits += 1
        }
        parts.append(jString(sc[start...]))
        return parts
    }
    var i = 0
    var splits = 0
    while i < sc.count {
        while i < sc.count, jIsSpace(sc[i]) { i += 1 }
        if i >= sc.count { break }
        if maxsplit >= 0 && splits >= maxsplit {
            parts.append(jString(sc[i...]))
            break
        }
        let st = i
        while i < sc.count, !jIsSpace(sc[i]) { i += 1 }
        parts.append(jString(sc[st..<i]))
        splits += 1
    }
    return parts
}

func pyRSplit(_ sc: [Unicode.Scalar], _ sep: [Unicode.Scalar]?, _ maxsplit: Int) -> [String] {
    if maxsplit < 0 { return pySplit(sc, sep, -1) }
    let rev = Array(sc.reversed())
    let revSep = sep.map { Array($0.reversed()) }
    return pySplit(rev, revSep, maxsplit).reversed().map { String(String.UnicodeScalarView($0.unicodeScalars.reversed())) }
}

func pyReplace(_ s: String, _ old: String, _ new: String, _ count: Int) -> String {
    let sc = Array(s.unicodeScalars), o = Array(old.unicodeScalars)
    var out = ""
    var n = 0
    if o.isEmpty {
        for c in sc {
            if count < 0 || n < count { out += new; n += 1 }
            out.unicodeScalars.append(c)
        }
        if count < 0 || n < count { out += new }
        return out
    }
    var i = 0
    while i < sc.count {
        if count >= 0 && n >= count { break }
        guard let j = findScalars(sc, o, from: i) else { break }
        out.unicodeScalars.append(contentsOf: sc[i..<j])
        out += new
        i = j + o.count
        n += 1
    }
    out.unicodeScalars.append(contentsOf: sc[i...])
    return out
}

func upperFirst(_ c: Unicode.Scalar) -> String {
    let t = c.properties.titlecaseMapping
    return t.isEmpty ? String(Character(c)) : t
}

/// Python's `str.capitalize()`: first character title-cased, the rest lower-cased.
func pyCapitalize(_ s: String) -> String {
    var sc = s.unicodeScalars.makeIterator()
    guard let first = sc.next() else { return "" }
    var rest = ""
    while let c = sc.next() { rest.unicodeScalars.append(c) }
    return upperFirst(first) + rest.lowercased()
}

/// Python's `str.title()`.
func pyTitle(_ s: String) -> String {
    var out = ""
    var prevCased = false
    for c in s.unicodeScalars {
        let p = c.properties
        if p.isCased {
            out += prevCased ? p.lowercaseMapping : upperFirst(c)
            prevCased = true
        } else {
            out.unicodeScalars.append(c)
            prevCased = false
        }
    }
    return out
}

/// Jinja's `title` filter: words split at runs of whitespace, '-', '(', '{', '[', '<'; each word's first
/// character upper-cased and the rest lower-cased.
func jinjaTitle(_ s: String) -> String {
    func isDelim(_ c: Unicode.Scalar) -> Bool { jIsSpace(c) || c == "-" || c == "(" || c == "{" || c == "[" || c == "<" }
    var out = ""
    var word = ""
    func flush() {
        guard let f = word.unicodeScalars.first else { return }
        var rest = ""
        rest.unicodeScalars.append(contentsOf: word.unicodeScalars.dropFirst())
        out += String(Character(f)).uppercased() + rest.lowercased()
        word = ""
    }
    for c in s.unicodeScalars {
        if isDelim(c) {
            flush()
            out.unicodeScalars.append(c)
        } else {
            word.unicodeScalars.append(c)
        }
    }
    flush()
    return out
}
