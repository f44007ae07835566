// Jinja's filters (`x | trim`, `tools | tojson(indent=2)`) and tests (`x is defined`) as chat templates use
// them, with HF's `tojson` (json.dumps with ensure_ascii=False). Integer arguments (widths, precisions,
// counts) are checked before use and every result's size is charged to the budget before it is built.

import LoRAKitCore
#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

extension JinjaInterpreter {
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
            return j == -1 || i % j == 0  // Int.min % -1 would trap; everything is divisible by -1
        case "eq", "equalto", "==": return try pyEquals(v, try arg0(), loc)
        case "ne", "!=": return !(try pyEquals(v, try arg0(), loc))
        case "lt", "lessthan", "<": return try pyCompare(v, try arg0(), "<", loc) < 0
        case "le", "<=": return try pyCompare(v, try arg0(), "<=", loc) <= 0
        case "gt", "greaterthan", ">": return try pyCompare(v, try arg0(), ">", loc) > 0
        case "ge", ">=": return try pyCompare(v, try arg0(), ">=", loc) >= 0
        case "in": return try contains(try arg0(), v, loc)
        case "lower", "upper":
            guard case .string(let s) = v else { return false }
            try budget.scan(s.utf8.count, loc)
            try budget.alloc(satMul(s.utf8.count, 3), "the '\(name)' test", loc)
            return name == "lower" ? s.lowercased() == s : s.uppercased() == s
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

    // MARK: filter helpers

    func applyFilter(_ f: JFilterCall, _ v: JValue, _ scope: JScope) throws(LKError) -> JValue {
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
        case .string(let s):
            try budget.scan(s.utf8.count, loc)
            parts = s.split(separator: ".", omittingEmptySubsequences: false).map { p in
                p.utf8.allSatisfy({ $0 >= 0x30 && $0 <= 0x39 }) ? Int(p).map { JValue.int($0) } ?? .string(String(p)) : .string(String(p))
            }
        default: parts = [path]
        }
        for p in parts { cur = try getitem(cur, p, loc) }
        return cur
    }

    /// A stable merge sort whose comparisons are charged (each `less` may throw).
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
        if !caseSensitive, case .string(let s) = x {
            try budget.alloc(satMul(s.utf8.count, 3), "a lower-cased sort key", loc)
            return .string(s.lowercased())
        }
        return x
    }

    /// `count` spaces (an indentation), its size checked first.
    func spaces(_ count: Int, _ what: String, _ loc: JLoc) throws(LKError) -> String {
        guard count > 0 else { return "" }
        try budget.alloc(count, "\(what): an indentation of \(count) spaces", loc)
        return repeated(" ", count)
    }

    // MARK: filters

    func filter(_ name: String, _ v: JValue, _ a: JArgs, _ loc: JLoc) throws(LKError) -> JValue {
        switch name {
        case "safe":
            return v
        case "string":
            return .string(try str(v, loc))
        case "trim":
            let chars = try stringArg(a[0, "chars"], "trim chars", loc)
            let s = try str(v, loc)
            return try stringResult(s, "the 'trim' filter", loc) { pyStrip(s, chars.map { Set($0.unicodeScalars) }, left: true, right: true) }
        case "upper", "lower", "capitalize", "title":
            let s = try str(v, loc)
            return try stringResult(s, "the '\(name)' filter", loc, bound: { satMul($0, 3) }) {
                switch name {
                case "upper": return s.uppercased()
                case "lower": return s.lowercased()
                case "capitalize": return pyCapitalize(s)
                default: return jinjaTitle(s)
                }
            }
        case "e", "escape":
            let s = try str(v, loc)
            return try stringResult(s, "the '\(name)' filter", loc, bound: { satMul($0, 5) }) {
                var out = ""
                for c in s.unicodeScalars {
                    switch c {
                    case "&": out += "&amp;"
                    case "<": out += "&lt;"
                    case ">": out += "&gt;"
                    case "\"": out += "&#34;"
                    case "'": out += "&#39;"
                    default: out.unicodeScalars.append(c)
                    }
                }
                return out
            }
        case "replace":
            guard let old = a[0, "old"], let new = a[1, "new"] else { throw fail("replace filter needs 2 arguments", loc) }
            return .string(try pyReplace(try str(v, loc), try str(old, loc), try str(new, loc),
                                         try intArg(a[2, "count"], -1, "count", loc), "the 'replace' filter", loc))
        case "length", "count":
            switch v {
            case .string(let s):
                try budget.scan(s.utf8.count, loc)
                return .int(scalarCount(s))
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
            var items = try iterate(v, loc).items
            if let attr = a[1, "attribute"], !attr.isNone {
                items = try items.map { (x) throws(LKError) in try attrPath(x, attr, loc) }
            }
            var parts: [String] = []
            parts.reserveCapacity(items.count)
            for x in items { parts.append(try str(x, loc)) }
            return .string(try joined(parts, try str(a[0, "d"] ?? .string(""), loc), "the 'join' filter", loc))
        case "tojson":
            var o = JSONOptions()
            o.asciiOnly = truthy(a[0, "ensure_ascii"] ?? .bool(false))
            if let ind = a[1, "indent"] {
                switch ind {
                case .none: break
                case .string(let s): o.indent = s
                default:
                    guard let n = num(ind), case .i(let k) = n else { throw fail("tojson: indent must be an int or a string", loc) }
                    o.indent = try spaces(k, "tojson(indent=\(k))", loc)
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
                try budget.scan(s.utf8.count, loc)
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
                try budget.scan(s.utf8.count, loc)
                if let d = Double(pyStrip(s, nil, left: true, right: true)) { return .double(d) }
                return def
            default: return def
            }
        case "abs":
            switch v {
            case .int(let i):
                guard i != Int.min else { throw fail("integer overflow in the 'abs' filter: abs(\(i)) is out of the 64-bit range", loc) }
                return .int(abs(i))
            case .double(let d): return .double(d.magnitude)
            case .bool(let b): return .int(b ? 1 : 0)
            default: throw fail("bad operand type for abs(): '\(pyTypeName(v))'", loc)
            }
        case "round":
            let precision = try intArg(a[0, "precision"], 0, "precision", loc)
            let method = try str(a[1, "method"] ?? .string("common"), loc)
            guard method == "common" || method == "ceil" || method == "floor" else {
                throw fail("method must be common, ceil or floor", loc)
            }
            guard let n = num(v) else { throw fail("the 'round' filter needs a number, not \(pyTypeName(v))", loc) }
            return try round(n, precision, method, loc)
        case "list":
            return .array(try iterate(v, loc))
        case "items":
            switch v {
            case .dict(let d):
                try budget.allocList(d.count * 3, "the 'items' filter", loc)
                return .list(d.keys.map { .list([.string($0), d.map[$0] ?? .none]) })
            case .undefined: return .list([])
            default: throw fail("items filter: can only get item pairs from a mapping, not \(pyTypeName(v))", loc)
            }
        case "reverse":
            switch v {
            case .string(let s):
                return try stringResult(s, "the 'reverse' filter", loc) { jString(ArraySlice(s.unicodeScalars.reversed())) }
            default:
                let items = try iterate(v, loc)
                try budget.allocList(items.count, "the 'reverse' filter", loc)
                return .list(items.reversed())
            }
        case "sort", "dictsort":
            let caseSensitive = truthy(a[name == "sort" ? 1 : 0, "case_sensitive"] ?? .bool(false))
            if name == "dictsort" {
                guard case .dict(let d) = v else { throw fail("dictsort: expected a mapping", loc) }
                let byValue = try str(a[1, "by"] ?? .string("key"), loc) == "value"
                let rev = truthy(a[2, "reverse"] ?? .bool(false))
                try budget.allocList(d.count * 3, "the 'dictsort' filter", loc)
                let pairs: [JValue] = d.keys.map { .list([.string($0), d.map[$0] ?? .none]) }
                let sorted = try stableSort(pairs) { (x, y) throws(LKError) in
                    let kx = try sortKey(x, .int(byValue ? 1 : 0), caseSensitive, loc)
                    let ky = try sortKey(y, .int(byValue ? 1 : 0), caseSensitive, loc)
                    return try pyCompare(kx, ky, "<", loc) < 0
                }
                return .list(rev ? sorted.reversed() : sorted)
            }
            let rev = truthy(a[0, "reverse"] ?? .bool(false))
            let attribute = a[2, "attribute"]
            let items = try iterate(v, loc)
            try budget.allocList(items.count, "the 'sort' filter", loc)
            let sorted = try stableSort(items.items) { (x, y) throws(LKError) in
                let kx = try sortKey(x, attribute, caseSensitive, loc), ky = try sortKey(y, attribute, caseSensitive, loc)
                return rev ? try pyCompare(ky, kx, "<", loc) < 0 : try pyCompare(kx, ky, "<", loc) < 0
            }
            return .list(sorted)
        case "unique":
            let caseSensitive = truthy(a[0, "case_sensitive"] ?? .bool(false))
            let attribute = a[1, "attribute"]
            var seen: [JValue] = []
            var out: [JValue] = []
            for x in try iterate(v, loc) {
                let k = try sortKey(x, attribute, caseSensitive, loc)
                var dup = false
                for s in seen where try pyEquals(s, k, loc) { dup = true; break }
                if !dup {
                    seen.append(k)
                    out.append(x)
                }
            }
            try budget.allocList(out.count, "the 'unique' filter", loc)
            return .list(out)
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
            try budget.allocList(items.count, "the 'map' filter", loc)
            if let attr = a.kw("attribute") {
                let def = a.kw("default")
                var out: [JValue] = []
                for x in items {
                    let r = try attrPath(x, attr, loc)
                    out.append(r.isUndefined && def != nil ? def! : r)
                }
                return .list(out)
            }
            guard let fname = a.args.first, case .string(let fn) = fname else { throw fail("map filter needs a filter name or attribute=", loc) }
            guard JinjaInterpreter.filterNames.contains(fn) else { throw fail("no filter named '\(fn)'", loc) }
            let rest = JArgs(Array(a.args.dropFirst()), a.kwargs)
            var out: [JValue] = []
            for x in items { out.append(try filter(fn, x, rest, loc)) }
            return .list(out)
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
                try budget.step(1, loc)
                let val = byAttr ? try attrPath(x, attr!, loc) : x
                let ok = testName == nil ? truthy(val) : try applyTest(testName!, val, rest, loc)
                if ok == keep { out.append(x) }
            }
            try budget.allocList(out.count, "the '\(name)' filter", loc)
            return .list(out)
        case "indent":
            let w = a[0, "width"] ?? .int(4)
            let ind: String
            if case .string(let s) = w { ind = s } else { ind = try spaces(try intArg(w, 4, "width", loc), "the 'indent' filter", loc) }
            let first = truthy(a[1, "first"] ?? .bool(false))
            let blank = truthy(a[2, "blank"] ?? .bool(false))
            let text = try str(v, loc) + "\n"
            var lines = pySplitLines(try scalars(text, loc))
            // Every line and the first may get the indentation: charge that bound before building.
            try budget.alloc(satAdd(text.utf8.count, satMul(lines.count + 1, ind.utf8.count)), "the 'indent' filter", loc)
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

    // MARK: round

    /// Jinja's `round(value, precision, method)`: Python's `round()` for "common" (an int stays an int;
    /// floats are rounded correctly, half to even, on their exact value), `math.ceil/floor(value * 10**p) / 10**p`
    /// otherwise. Any precision is accepted, as in Python; none can loop or overflow.
    func round(_ n: Num, _ precision: Int, _ method: String, _ loc: JLoc) throws(LKError) -> JValue {
        if method == "common" {
            switch n {
            case .i(let i):
                guard precision < 0 else { return .int(i) }
                let k = precision == Int.min ? Int.max : -precision
                guard k <= 38 else { return .int(0) }
                var p: Int128 = 1
                for _ in 0..<k { p *= 10 }
                let x = Int128(i)
                var q = x / p
                let r = x - q * p  // same sign as x
                let twice = 2 * (r < 0 ? -r : r)
                if twice > p || (twice == p && q % 2 != 0) { q += x < 0 ? -1 : 1 }
                let result = q * p
                guard let v = Int(exactly: result) else {
                    throw fail("integer overflow in the 'round' filter: round(\(i), \(precision)) is out of the 64-bit range", loc)
                }
                return .int(v)
            case .d(let d):
                if !d.isFinite || precision > 323 { return .double(d) }
                if precision < -308 { return .double(0.0 * d) }
                return .double(try roundDecimal(d, precision, loc))
            }
        }
        let x = n.double
        guard x.isFinite else {
            throw fail("the 'round' filter: cannot convert float \(pyFloatRepr(x)) to integer", loc)
        }
        let up = method == "ceil"
        if precision >= 0 {
            if case .i(let i) = n { return .double(Double(i)) }  // ceil/floor of an integer are the integer
            guard precision <= 308, let scale = Double("1e\(precision)") else {
                throw fail("the 'round' filter: 10 ** \(precision) is too large to convert to float", loc)
            }
            let m = x * scale
            guard m.isFinite else { throw fail("the 'round' filter: cannot convert float infinity to integer", loc) }
            return .double((up ? m.rounded(.up) : m.rounded(.down)) / scale)
        }
        let k = precision == Int.min ? Int.max : -precision
        guard k <= 323 else { throw fail("float division by zero", loc) }  // 10 ** -k is 0.0 in Python
        let scale = pow(10.0, -Double(k))
        let m = x * scale
        return .double((up ? m.rounded(.up) : m.rounded(.down)) / scale)
    }

    /// `d` rounded to `places` decimal places (negative: to tens, hundreds, …), correctly, half to even.
    func roundDecimal(_ d: Double, _ places: Int, _ loc: JLoc) throws(LKError) -> Double {
        if places >= 0 {
            let s = try cFormat("%.*f", d, places, loc)  // correctly rounded, as Python's dtoa
            return Double(s) ?? d
        }
        // Round the exact integer digits of |d| at position k from the right.
        let k = -places
        let whole = d.magnitude.rounded(.towardZero)
        let fractionIsZero = whole == d.magnitude
        var digits = Array(try cFormat("%.*f", whole, 0, loc).utf8)
        if digits.count < k { digits = [UInt8](repeating: 0x30, count: k - digits.count) + digits }
        let upper = Array(digits[..<(digits.count - k)])
        let lower = digits[(digits.count - k)...]
        let half: [UInt8] = [0x35] + [UInt8](repeating: 0x30, count: k - 1)
        var roundUp: Bool
        if lower.elementsEqual(half) {
            roundUp = !fractionIsZero || (upper.last.map { ($0 - 0x30) % 2 == 1 } ?? false)
        } else {
            roundUp = lower.lexicographicallyPrecedes(half) == false
        }
        var u = upper
        if roundUp {
            var i = u.count - 1
            while i >= 0 && u[i] == 0x39 { u[i] = 0x30; i -= 1 }
            if i >= 0 { u[i] += 1 } else { u.insert(0x31, at: 0) }
        }
        let text = (d < 0 ? "-" : "") + (u.isEmpty ? "0" : String(decoding: u, as: UTF8.self)) + "e\(k)"
        return Double(text) ?? d
    }

    // MARK: tojson

    func toJSON(_ v: JValue, _ o: JSONOptions, _ level: Int, _ out: inout String, _ loc: JLoc) throws(LKError) {
        guard level < budget.limits.maxValueDepth else {
            throw budget.structureError(loc, "value nested too deeply: tojson of a value more than \(budget.limits.maxValueDepth) levels deep (TemplateLimits.maxValueDepth)")
        }
        try budget.checkStack(loc, "tojson of a value nested")
        try budget.step(1, loc)
        func put(_ s: String) throws(LKError) {
            try budget.alloc(s.utf8.count, "tojson", loc)
            out += s
        }
        func newline(_ l: Int) throws(LKError) {
            guard let ind = o.indent else { return }
            try budget.alloc(satAdd(1, satMul(ind.utf8.count, l)), "tojson's indentation", loc)
            out += "\n"
            for _ in 0..<l { out += ind }
        }
        switch v {
        case .none: try put("null")
        case .bool(let b): try put(b ? "true" : "false")
        case .int(let i): try put(String(i))
        case .double(let d):
            if d.isNaN { try put("NaN") } else if d.isInfinite { try put(d < 0 ? "-Infinity" : "Infinity") } else { try put(pyFloatRepr(d)) }
        case .string(let s):
            try budget.reserve(satAdd(satMul(s.utf8.count, 6), 2), "tojson of a string", loc)
            try put(jsonString(s, asciiOnly: o.asciiOnly))
        case .array(let a):
            if a.isEmpty { try put("[]"); return }
            try put("[")
            try newline(level + 1)
            for (i, x) in a.enumerated() {
                if i > 0 { try put(o.itemSep); try newline(level + 1) }
                try toJSON(x, o, level + 1, &out, loc)
            }
            try newline(level)
            try put("]")
        case .dict(let d):
            if d.count == 0 { try put("{}"); return }
            try put("{")
            try newline(level + 1)
            var keys = d.keys
            if o.sortKeys {
                let sorted = try stableSort(keys.map { .string($0) }) { (x, y) throws(LKError) in try pyCompare(x, y, "<", loc) < 0 }
                keys = []
                for k in sorted { keys.append(try str(k, loc)) }
            }
            for (i, k) in keys.enumerated() {
                if i > 0 { try put(o.itemSep); try newline(level + 1) }
                try budget.reserve(satAdd(satMul(k.utf8.count, 6), 2), "tojson of a key", loc)
                try put(jsonString(k, asciiOnly: o.asciiOnly) + o.keySep)
                try toJSON(d.map[k] ?? .none, o, level + 1, &out, loc)
            }
            try newline(level)
            try put("}")
        case .undefined, .namespace, .loop, .callable:
            throw fail("Object of type \(pyTypeName(v)) is not JSON serializable", loc)
        }
    }
}
