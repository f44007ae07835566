// The str, dict and list methods chat templates call (`s.strip()`, `d.items()`, `'{}'.format(x)`, …), with
// Python's semantics (code points, not grapheme clusters), and the string algorithms behind them. Searching is
// linear (Knuth–Morris–Pratt), and every result's size is charged to the budget before it is built.

import LoRAKitCore

/// A substring search over code points in O(haystack + needle).
struct JSearcher {
    let needle: [Unicode.Scalar]
    private let border: [Int]

    init(_ needle: [Unicode.Scalar]) {
        self.needle = needle
        var b = [Int](repeating: 0, count: needle.count)
        var k = 0
        var i = 1
        while i < needle.count {
            while k > 0 && needle[i] != needle[k] { k = b[k - 1] }
            if needle[i] == needle[k] { k += 1 }
            b[i] = k
            i += 1
        }
        border = b
    }

    /// The first index ≥ `from` where the needle starts (an empty needle is found at `from`).
    func first(in hay: [Unicode.Scalar], from: Int, _ budget: JBudget, _ loc: JLoc) throws(LKError) -> Int? {
        if needle.isEmpty { return from <= hay.count ? from : nil }
        var k = 0
        var i = max(0, from)
        while i < hay.count {
            while k > 0 && hay[i] != needle[k] { k = border[k - 1] }
            if hay[i] == needle[k] { k += 1 }
            if k == needle.count {
                try budget.scan(i - from, loc)
                return i - needle.count + 1
            }
            i += 1
        }
        try budget.scan(i - from, loc)
        return nil
    }

    /// The last index where the needle starts (occurrences may overlap, as for `rfind`).
    func last(in hay: [Unicode.Scalar], _ budget: JBudget, _ loc: JLoc) throws(LKError) -> Int? {
        if needle.isEmpty { return hay.count }
        try budget.scan(hay.count, loc)
        var found: Int? = nil
        var k = 0
        for i in 0..<hay.count {
            while k > 0 && hay[i] != needle[k] { k = border[k - 1] }
            if hay[i] == needle[k] { k += 1 }
            if k == needle.count {
                found = i - needle.count + 1
                k = border[k - 1]
            }
        }
        return found
    }
}

extension JinjaInterpreter {
    // MARK: methods

    func callMethod(_ obj: JValue, _ name: String, _ a: JArgs, _ loc: JLoc) throws(LKError) -> JValue {
        switch obj {
        case .dict(let d):
            switch name {
            case "items":
                try budget.allocList(d.count * 3, "dict.items()", loc)
                return .list(d.keys.map { .list([.string($0), d.map[$0] ?? .none]) })
            case "keys":
                try budget.allocList(d.count, "dict.keys()", loc)
                return .list(d.keys.map { .string($0) })
            case "values":
                try budget.allocList(d.count, "dict.values()", loc)
                return .list(d.values)
            case "get":
                guard let k = a[0, "key"] else { throw fail("get expected at least 1 argument, got 0", loc) }
                if case .string(let ks) = k, let v = d.map[ks] { return v }
                return a[1, "default"] ?? .none
            default: break
            }
        case .array(let arr):
            guard let x = a[0, "value"] else { throw fail("\(name)() takes exactly one argument (0 given)", loc) }
            if name == "count" {
                var n = 0
                for y in arr where try pyEquals(y, x, loc) { n += 1 }
                return .int(n)
            }
            for (i, y) in arr.enumerated() where try pyEquals(y, x, loc) { return .int(i) }
            throw fail("\(try repr(x, loc)) is not in list", loc)
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

    /// A string result built by `body` from `s`: the work is charged first, and `bound(n)` (an upper bound of
    /// the result's bytes for an n-byte input) is checked against the budget before anything is built.
    func stringResult(_ s: String, _ what: String, _ loc: JLoc, bound: (Int) -> Int = { $0 },
                      _ body: () throws(LKError) -> String) throws(LKError) -> JValue {
        try budget.scan(s.utf8.count, loc)
        try budget.reserve(bound(s.utf8.count), what, loc)
        let r = try body()
        try budget.alloc(r.utf8.count, what, loc)
        return .string(r)
    }

    /// A list of strings: elements and bytes charged.
    func stringList(_ parts: [String], _ what: String, _ loc: JLoc) throws(LKError) -> JValue {
        try budget.allocList(parts.count, what, loc)
        return .list(parts.map { .string($0) })
    }

    func stringMethod(_ s: String, _ name: String, _ a: JArgs, _ loc: JLoc) throws(LKError) -> JValue {
        switch name {
        case "strip", "lstrip", "rstrip":
            let chars = try stringArg(a[0, "chars"], "strip arg", loc)
            return try stringResult(s, "str.\(name)()", loc) {
                pyStrip(s, chars.map { Set($0.unicodeScalars) }, left: name != "rstrip", right: name != "lstrip")
            }
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
            let sc = try scalars(s, loc)
            let start = try intArg(a[1, "start"], 0, "start", loc)
            let sub = sc[max(0, min(start < 0 ? start + sc.count : start, sc.count))...]
            for x in prefixes {
                let xs = try scalars(x, loc)
                if name == "startswith" ? sub.starts(with: xs) : (xs.count <= sub.count && sub.suffix(xs.count).elementsEqual(xs)) {
                    return .bool(true)
                }
            }
            return .bool(false)
        case "split", "rsplit":
            let sep = try stringArg(a[0, "sep"], "sep", loc)
            let maxsplit = try intArg(a[1, "maxsplit"], -1, "maxsplit", loc)
            if let sp = sep, sp.isEmpty { throw fail("empty separator", loc) }
            let sc = try scalars(s, loc)
            try budget.reserve(satMul(satAdd(sc.count, 1), JBudget.elementBytes), "str.\(name)()", loc)
            let sepScalars = try sep.map { (x) throws(LKError) in try scalars(x, loc) }
            let parts = name == "split" ? try pySplit(sc, sepScalars, maxsplit, loc) : try pyRSplit(sc, sepScalars, maxsplit, loc)
            try budget.alloc(s.utf8.count, "str.\(name)()", loc)
            return try stringList(parts, "str.\(name)()", loc)
        case "splitlines":
            let sc = try scalars(s, loc)
            try budget.reserve(satMul(satAdd(sc.count, 1), JBudget.elementBytes), "str.splitlines()", loc)
            try budget.alloc(s.utf8.count, "str.splitlines()", loc)
            return try stringList(pySplitLines(sc), "str.splitlines()", loc)
        case "upper":
            return try stringResult(s, "str.upper()", loc, bound: { satMul($0, 3) }) { s.uppercased() }
        case "lower":
            return try stringResult(s, "str.lower()", loc, bound: { satMul($0, 3) }) { s.lowercased() }
        case "title":
            return try stringResult(s, "str.title()", loc, bound: { satMul($0, 3) }) { pyTitle(s) }
        case "capitalize":
            return try stringResult(s, "str.capitalize()", loc, bound: { satMul($0, 3) }) { pyCapitalize(s) }
        case "replace":
            guard let old = try stringArg(a[0, "old"], "replace arg 1", loc),
                  let new = try stringArg(a[1, "new"], "replace arg 2", loc) else {
                throw fail("replace() takes at least 2 arguments", loc)
            }
            return .string(try pyReplace(s, old, new, try intArg(a[2, "count"], -1, "count", loc), "str.replace()", loc))
        case "find", "rfind", "count":
            guard let sub = try stringArg(a[0, "sub"], "\(name) arg", loc) else { throw fail("\(name)() takes at least 1 argument", loc) }
            let sc = try scalars(s, loc)
            let searcher = JSearcher(try scalars(sub, loc))
            if name == "count" {
                if searcher.needle.isEmpty { return .int(sc.count + 1) }
                var n = 0, i = 0
                while let j = try searcher.first(in: sc, from: i, budget, loc) { n += 1; i = j + searcher.needle.count }
                return .int(n)
            }
            if name == "find" { return .int(try searcher.first(in: sc, from: 0, budget, loc) ?? -1) }
            return .int(try searcher.last(in: sc, budget, loc) ?? -1)
        case "join":
            guard let it = a[0, "iterable"] else { throw fail("join() takes exactly one argument", loc) }
            var parts: [String] = []
            for x in try iterate(it, loc) {
                guard case .string(let y) = x else {
                    throw fail("sequence item \(parts.count): expected str instance, \(pyTypeName(x)) found", loc)
                }
                parts.append(y)
            }
            return .string(try joined(parts, s, "str.join()", loc))
        case "isdigit", "isalpha", "isalnum", "isspace", "islower", "isupper":
            try budget.scan(s.utf8.count, loc)
            let sc = s.unicodeScalars
            switch name {
            case "isdigit": return .bool(!sc.isEmpty && sc.allSatisfy { $0.properties.numericType == .decimal || $0.properties.numericType == .digit })
            case "isalpha": return .bool(!sc.isEmpty && sc.allSatisfy { $0.properties.isAlphabetic })
            case "isalnum": return .bool(!sc.isEmpty && sc.allSatisfy { $0.properties.isAlphabetic || $0.properties.numericType != nil })
            case "isspace": return .bool(!sc.isEmpty && sc.allSatisfy(jIsSpace))
            case "islower":
                return .bool(sc.contains { $0.properties.isCased } && !sc.contains { $0.properties.isUppercase || $0.properties.generalCategory == .titlecaseLetter })
            default:
                return .bool(sc.contains { $0.properties.isCased } && !sc.contains { $0.properties.isLowercase || $0.properties.generalCategory == .titlecaseLetter })
            }
        case "format":
            return .string(try braceFormat(s, a, loc))
        default: break
        }
        throw fail("'str' object has no method '\(name)'", loc)
    }

    /// `parts` joined by `sep`, its size charged first.
    func joined(_ parts: [String], _ sep: String, _ what: String, _ loc: JLoc) throws(LKError) -> String {
        var size = satMul(sep.utf8.count, max(0, parts.count - 1))
        for p in parts { size = satAdd(size, p.utf8.count) }
        try budget.alloc(size, what, loc)
        return parts.joined(separator: sep)
    }

    /// `'{} {name}'.format(...)` for plain `{}`, `{0}` and `{name}` fields.
    func braceFormat(_ s: String, _ a: JArgs, _ loc: JLoc) throws(LKError) -> String {
        var out = ""
        func put(_ x: String) throws(LKError) {
            try budget.alloc(x.utf8.count, "str.format()", loc)
            out += x
        }
        var auto = 0
        var it = try scalars(s, loc)[...]
        var literal = ""
        while let c = it.popFirst() {
            if c == "{" {
                if it.first == "{" { it.removeFirst(); literal += "{"; continue }
                var field = ""
                while let d = it.popFirst(), d != "}" { field.unicodeScalars.append(d) }
                let v: JValue?
                if field.isEmpty {
                    v = auto < a.args.count ? a.args[auto] : nil
                    auto += 1
                } else if let i = Int(field) {
                    v = i >= 0 && i < a.args.count ? a.args[i] : nil
                } else {
                    v = a.kwargs.first { $0.0 == field }?.1
                }
                guard let val = v else { throw fail("format: missing argument for field '{\(field)}'", loc) }
                try put(literal)
                literal = ""
                try put(try str(val, loc))
            } else if c == "}" {
                if it.first == "}" { it.removeFirst() }
                literal += "}"
            } else {
                literal.unicodeScalars.append(c)
            }
        }
        try put(literal)
        return out
    }

    // MARK: splitting and replacing

    func pySplit(_ sc: [Unicode.Scalar], _ sep: [Unicode.Scalar]?, _ maxsplit: Int, _ loc: JLoc) throws(LKError) -> [String] {
        var parts: [String] = []
        if let sep = sep {
            let searcher = JSearcher(sep)
            var start = 0
            var splits = 0
            while maxsplit < 0 || splits < maxsplit, let j = try searcher.first(in: sc, from: start, budget, loc) {
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

    func pyRSplit(_ sc: [Unicode.Scalar], _ sep: [Unicode.Scalar]?, _ maxsplit: Int, _ loc: JLoc) throws(LKError) -> [String] {
        if maxsplit < 0 { return try pySplit(sc, sep, -1, loc) }
        let rev = Array(sc.reversed())
        let revSep = sep.map { Array($0.reversed()) }
        return try pySplit(rev, revSep, maxsplit, loc).reversed().map { String(String.UnicodeScalarView($0.unicodeScalars.reversed())) }
    }

    /// Python's `str.replace(old, new, count)`: the result's size is computed (in saturating arithmetic)
    /// and charged before it is built.
    func pyReplace(_ s: String, _ old: String, _ new: String, _ count: Int, _ what: String, _ loc: JLoc) throws(LKError) -> String {
        let sc = try scalars(s, loc)
        let searcher = JSearcher(try scalars(old, loc))
        let o = searcher.needle
        var hits: [Int] = []
        if o.isEmpty {
            let n = count < 0 ? sc.count + 1 : min(count, sc.count + 1)
            try budget.alloc(satAdd(s.utf8.count, satMul(n, new.utf8.count)),
                             "\(what): inserting a \(new.utf8.count)-byte string \(n) times into a \(s.utf8.count)-byte string", loc)
            // Built as UTF-8 bytes: appending to a String's `unicodeScalars` (or a UnicodeScalarView) copies the
            // whole string each time, quadratic (fuzz finding slow-unit-d4a989b6).
            let newBytes = Array(new.utf8)
            var out: [UInt8] = []
            out.reserveCapacity(s.utf8.count + n * newBytes.count)
            var k = 0
            for c in sc {
                if k < n { out += newBytes; k += 1 }
                appendUTF8(c, to: &out)
            }
            if k < n { out += newBytes }
            return String(decoding: out, as: UTF8.self)
        }
        var i = 0
        while count < 0 || hits.count < count, let j = try searcher.first(in: sc, from: i, budget, loc) {
            hits.append(j)
            i = j + o.count
        }
        if hits.isEmpty { return s }
        let removed = satMul(hits.count, old.utf8.count), added = satMul(hits.count, new.utf8.count)
        try budget.alloc(satAdd(max(0, s.utf8.count - removed), added),
                         "\(what): replacing \(hits.count) occurrences with a \(new.utf8.count)-byte string", loc)
        let newBytes = Array(new.utf8)
        var out: [UInt8] = []
        out.reserveCapacity(max(0, s.utf8.count - removed) + added)
        var pos = 0
        for j in hits {
            for c in sc[pos..<j] { appendUTF8(c, to: &out) }
            out += newBytes
            pos = j + o.count
        }
        for c in sc[pos...] { appendUTF8(c, to: &out) }
        return String(decoding: out, as: UTF8.self)
    }
}

// MARK: - Python string helpers (pure, linear; callers charge them)

/// Appends the UTF-8 encoding of `c`.
@inline(__always)
func appendUTF8(_ c: Unicode.Scalar, to out: inout [UInt8]) {
    UTF8.encode(c) { out.append($0) }
}

func pyStrip(_ s: String, _ chars: Set<Unicode.Scalar>?, left: Bool, right: Bool) -> String {
    let sc = Array(s.unicodeScalars)
    func strip(_ c: Unicode.Scalar) -> Bool { chars.map { $0.contains(c) } ?? jIsSpace(c) }
    var a = 0, b = sc.count
    if left { while a < b, strip(sc[a]) { a += 1 } }
    if right { while b > a, strip(sc[b - 1]) { b -= 1 } }
    return jString(sc[a..<b])
}

/// Python's `str.splitlines()`.
func pySplitLines(_ sc: [Unicode.Scalar]) -> [String] {
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
    return parts
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
