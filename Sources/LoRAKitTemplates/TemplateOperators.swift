// Python's operators on template values: truthiness, ==, ordering, `in`, arithmetic (64-bit integers with
// overflow reported, never wrapped or trapped), string and list `+` and `*`, and `%` string formatting.

import LoRAKitCore
#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

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

extension JinjaInterpreter {
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

    func num(_ v: JValue) -> Num? {
        switch v {
        case .bool(let b): return .i(b ? 1 : 0)
        case .int(let i): return .i(i)
        case .double(let d): return .d(d)
        default: return nil
        }
    }

    /// Python's `==` (ints and floats compare exactly; strings by code point).
    func pyEquals(_ a: JValue, _ b: JValue, _ loc: JLoc) throws(LKError) -> Bool {
        try budget.step(1, loc)
        if let x = num(a), let y = num(b) {
            switch (x, y) {
            case (.i(let p), .i(let q)): return p == q
            case (.i(let p), .d(let q)), (.d(let q), .i(let p)): return Int(exactly: q) == p  // exact, as Python
            case (.d(let p), .d(let q)): return p == q
            }
        }
        switch (a, b) {
        case (.undefined, .undefined), (.none, .none): return true
        case (.string(let x), .string(let y)):
            try budget.scan(min(x.utf8.count, y.utf8.count), loc)
            return x.unicodeScalars.elementsEqual(y.unicodeScalars)
        case (.array(let x), .array(let y)):
            guard x.count == y.count else { return false }
            for (p, q) in zip(x, y) where !(try pyEquals(p, q, loc)) { return false }
            return true
        case (.dict(let x), .dict(let y)):
            guard x.count == y.count else { return false }
            for k in x.keys {
                guard let xv = x.map[k], let yv = y.map[k], try pyEquals(xv, yv, loc) else { return false }
            }
            return true
        case (.namespace(let x), .namespace(let y)): return x === y
        default: return false
        }
    }

    /// Python ordering (-1, 0, 1); a TypeError-like error for unorderable types.
    func pyCompare(_ a: JValue, _ b: JValue, _ op: String, _ loc: JLoc) throws(LKError) -> Int {
        try budget.step(1, loc)
        if let x = num(a), let y = num(b) {
            if case .i(let p) = x, case .i(let q) = y { return p < q ? -1 : (p > q ? 1 : 0) }
            let p = x.double, q = y.double
            return p < q ? -1 : (p > q ? 1 : 0)
        }
        switch (a, b) {
        case (.string(let x), .string(let y)):
            try budget.scan(min(x.utf8.count, y.utf8.count), loc)
            var i = x.unicodeScalars.makeIterator(), j = y.unicodeScalars.makeIterator()
            while true {
                switch (i.next(), j.next()) {
                case (nil, nil): return 0
                case (nil, _): return -1
                case (_, nil): return 1
                case (let c?, let d?): if c != d { return c.value < d.value ? -1 : 1 }
                }
            }
        case (.array(let x), .array(let y)):
            for (c, d) in zip(x, y) where !(try pyEquals(c, d, loc)) { return try pyCompare(c, d, op, loc) }
            return x.count < y.count ? -1 : (x.count > y.count ? 1 : 0)
        default:
            if let err = undefinedError(a, loc) ?? undefinedError(b, loc) { throw err }
            throw fail("'\(op)' not supported between instances of '\(pyTypeName(a))' and '\(pyTypeName(b))'", loc)
        }
    }

    /// Python's `item in container`.
    func contains(_ container: JValue, _ item: JValue, _ loc: JLoc) throws(LKError) -> Bool {
        switch container {
        case .string(let s):
            guard case .string(let sub) = item else {
                if let err = undefinedError(item, loc) { throw err }
                throw fail("'in <string>' requires string as left operand, not \(pyTypeName(item))", loc)
            }
            if sub.isEmpty { return true }
            return try JSearcher(try scalars(sub, loc)).first(in: try scalars(s, loc), from: 0, budget, loc) != nil
        case .array(let a):
            for x in a where try pyEquals(x, item, loc) { return true }
            return false
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
        case .eq: return try pyEquals(a, b, loc)
        case .ne: return !(try pyEquals(a, b, loc))
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
        if let x = num(a), let y = num(b) {
            if case .i(let p) = x, case .i(let q) = y, op != .div, !(op == .pow && q < 0) {
                return .int(try intBinary(op, p, q, loc))
            }
            let p = x.double, q = y.double
            switch op {
            case .add: return .double(p + q)
            case .sub: return .double(p - q)
            case .mul: return .double(p * q)
            case .div:
                guard q != 0 else {
                    if case .i = x, case .i = y { throw fail("division by zero", loc) }
                    throw fail("float division by zero", loc)
                }
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
        case (.add, .string(let x), .string(let y)):
            try budget.alloc(satAdd(x.utf8.count, y.utf8.count), "'+' of two strings", loc)
            return .string(x + y)
        case (.add, .array(let x), .array(let y)):
            try budget.allocList(satAdd(x.count, y.count), "'+' of two lists", loc)
            return .array(JList(concatenating: x, y))
        case (.mul, .string, _), (.mul, .array, _), (.mul, _, .string), (.mul, _, .array):
            let (seq, countV): (JValue, JValue) = { if case .int = b { return (a, b) }; if case .bool = b { return (a, b) }; return (b, a) }()
            guard let cn = num(countV), case .i(let n) = cn else { throw typeError() }
            let times = max(0, n)
            switch seq {
            case .string(let s):
                if s.isEmpty || times == 0 { return .string("") }
                try budget.alloc(satMul(s.utf8.count, times), "'*': a \(s.utf8.count)-byte string repeated \(n) times", loc)
                return .string(repeated(s, times))
            case .array(let arr):
                if arr.isEmpty || times == 0 { return .list([]) }
                try budget.allocList(satMul(arr.count, times), "'*': a \(arr.count)-item list repeated \(n) times", loc)
                if arr.count == 1 { return .array(JList([JValue](repeating: arr[0], count: times))) }
                var r: [JValue] = []
                r.reserveCapacity(arr.count * times)  // ≤ maxAllocatedBytes / element size: charged above
                for _ in 0..<times { r.append(contentsOf: arr.items) }  // times ≤ that / 2
                return .array(JList(r))
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

    /// Integer arithmetic as Python's, but within 64 bits: a result outside them is an error naming the
    /// operator and the operands.
    func intBinary(_ op: JBinOp, _ p: Int, _ q: Int, _ loc: JLoc) throws(LKError) -> Int {
        func overflow() -> LKError {
            fail("integer overflow: \(p) \(op.rawValue) \(q) is out of the 64-bit range", loc)
        }
        switch op {
        case .add:
            let (r, o) = p.addingReportingOverflow(q)
            if o { throw overflow() }
            return r
        case .sub:
            let (r, o) = p.subtractingReportingOverflow(q)
            if o { throw overflow() }
            return r
        case .mul:
            let (r, o) = p.multipliedReportingOverflow(by: q)
            if o { throw overflow() }
            return r
        case .div:
            throw fail("integer '/' is true division (a float)", loc)  // the caller does it
        case .floorDiv, .mod:
            guard q != 0 else { throw fail("integer division or modulo by zero", loc) }
            guard !(p == Int.min && q == -1) else { throw overflow() }
            var d = p / q, m = p % q
            if m != 0 && ((m < 0) != (q < 0)) {
                d -= 1
                m += q
            }
            return op == .floorDiv ? d : m
        case .pow:
            guard q >= 0 else { throw fail("negative integer exponent", loc) }  // the caller does it in floats
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
            return r
        }
    }

    // MARK: % formatting

    /// `fmt % args`, Python's printf-style formatting: `%[(key)][flags][width][.precision]type` with the
    /// flags `-+ 0#`, `*` widths, and the types d i u x X o e E f F g G c s r a %.
    func percentFormat(_ fmt: String, _ arg: JValue, _ loc: JLoc) throws(LKError) -> String {
        var args: [JValue]
        var mapping: JDict? = nil
        switch arg {
        case .array(let a): args = a.items
        case .dict(let d): args = [arg]; mapping = d
        default: args = [arg]
        }
        var usedMapping = false
        var out = ""
        func put(_ s: String) throws(LKError) {
            try budget.alloc(s.utf8.count, "'%' formatting", loc)
            out += s
        }
        func nextArg() throws(LKError) -> JValue {
            guard !args.isEmpty else { throw fail("not enough arguments for format string", loc) }
            return args.removeFirst()
        }
        let sc = try scalars(fmt, loc)
        var i = 0
        var literal = ""
        while i < sc.count {
            let c = sc[i]
            i += 1
            guard c == "%" else { literal.unicodeScalars.append(c); continue }
            try put(literal)
            literal = ""
            guard i < sc.count else { throw fail("incomplete format", loc) }
            var value: JValue? = nil
            if sc[i] == "(" {
                guard let m = mapping else { throw fail("format requires a mapping", loc) }
                var key = ""
                var level = 1
                i += 1
                while i < sc.count {
                    if sc[i] == "(" { level += 1 } else if sc[i] == ")" { level -= 1; if level == 0 { break } }
                    key.unicodeScalars.append(sc[i])
                    i += 1
                }
                guard i < sc.count else { throw fail("incomplete format key", loc) }
                i += 1
                guard let v = m.map[key] else { throw fail("format: no key \(try repr(.string(key), loc)) in the mapping", loc) }
                value = v
                usedMapping = true
            }
            var flags = Set<Unicode.Scalar>()
            while i < sc.count, "-+ 0#".unicodeScalars.contains(sc[i]) { flags.insert(sc[i]); i += 1 }
            func number(_ what: String) throws(LKError) -> Int? {
                if i < sc.count, sc[i] == "*" {
                    i += 1
                    let v = try nextArg()
                    guard let n = num(v), case .i(let k) = n else { throw fail("* wants int", loc) }
                    return k
                }
                var n: Int? = nil
                while i < sc.count, let d = Int(exactly: sc[i].value), d >= 0x30, d <= 0x39 {
                    let (m, o1) = (n ?? 0).multipliedReportingOverflow(by: 10)
                    let (s, o2) = m.addingReportingOverflow(d - 0x30)
                    guard !o1, !o2 else { throw fail("'%' format: \(what) too big", loc) }
                    n = s
                    i += 1
                }
                return n
            }
            var width = try number("width") ?? 0
            if width < 0 { flags.insert("-"); width = width == Int.min ? Int.max : -width }
            var precision: Int? = nil
            if i < sc.count, sc[i] == "." {
                i += 1
                precision = max(0, try number("precision") ?? 0)
            }
            while i < sc.count, "hlL".unicodeScalars.contains(sc[i]) { i += 1 }
            guard i < sc.count else { throw fail("incomplete format", loc) }
            let type = sc[i]
            i += 1
            if type == "%" { try put("%"); continue }
            let v: JValue
            if let given = value { v = given } else { v = try nextArg() }
            try put(try formatOne(v, type, flags, width, precision, loc))
        }
        try put(literal)
        if !args.isEmpty && !(usedMapping || mapping != nil) {
            throw fail("not all arguments converted during string formatting", loc)
        }
        return out
    }

    /// One `%` conversion.
    private func formatOne(_ v: JValue, _ type: Unicode.Scalar, _ flags: Set<Unicode.Scalar>, _ width: Int,
                           _ precision: Int?, _ loc: JLoc) throws(LKError) -> String {
        func pad(_ body: String, numeric: Bool, signPrefixLength: Int = 0) throws(LKError) -> String {
            let n = body.unicodeScalars.count
            guard width > n else { return body }
            let fill = width - n
            try budget.alloc(fill, "'%' formatting with width \(width)", loc)
            if flags.contains("-") { return body + repeated(" ", fill) }
            if numeric && flags.contains("0") {
                let cut = body.unicodeScalars.index(body.unicodeScalars.startIndex, offsetBy: signPrefixLength)
                return String(body.unicodeScalars[..<cut]) + repeated("0", fill) + String(body.unicodeScalars[cut...])
            }
            return repeated(" ", fill) + body
        }
        switch type {
        case "s", "r", "a":
            var s = type == "s" ? try str(v, loc) : try repr(v, loc)
            if let p = precision, p < s.unicodeScalars.count {
                s = String(s.unicodeScalars.prefix(p))
            }
            return try pad(s, numeric: false)
        case "d", "i", "u", "x", "X", "o":
            guard let n = num(v) else {
                throw fail("%\(type) format: \(type == "d" || type == "i" || type == "u" ? "a real number" : "an integer") is required, not \(pyTypeName(v))", loc)
            }
            var digits: String
            var negative: Bool
            switch n {
            case .i(let k):
                negative = k < 0
                let radix = type == "o" ? 8 : (type == "x" || type == "X") ? 16 : 10
                digits = String(k.magnitude, radix: radix, uppercase: type == "X")
            case .d(let d):
                guard type == "d" || type == "i" || type == "u" else {
                    throw fail("%\(type) format: an integer is required, not float", loc)
                }
                guard d.isFinite else { throw fail("%\(type) format: cannot convert float \(pyFloatRepr(d)) to integer", loc) }
                negative = d < 0 && d.rounded(.towardZero) != 0
                digits = try cFormat("%.*f", d.magnitude.rounded(.towardZero), 0, loc)  // exact, as Python's int(d)
            }
            if let p = precision, p > digits.count {
                try budget.alloc(p - digits.count, "'%' formatting with precision \(p)", loc)
                digits = repeated("0", p - digits.count) + digits
            }
            var prefix = negative ? "-" : flags.contains("+") ? "+" : flags.contains(" ") ? " " : ""
            if flags.contains("#") {
                if type == "x" { prefix += "0x" } else if type == "X" { prefix += "0X" } else if type == "o" { prefix += "0o" }
            }
            return try pad(prefix + digits, numeric: true, signPrefixLength: prefix.unicodeScalars.count)
        case "e", "E", "f", "F", "g", "G":
            guard let n = num(v) else { throw fail("must be real number, not \(pyTypeName(v))", loc) }
            let p = precision ?? 6
            var spec = "%"
            for f in ["-", "+", " ", "0", "#"] as [Unicode.Scalar] where flags.contains(f) { spec.unicodeScalars.append(f) }
            spec += ".*"
            spec.unicodeScalars.append(type)
            let body = try cFormat(spec, n.double, p, loc)
            let sign = body.hasPrefix("-") || body.hasPrefix("+") || body.hasPrefix(" ") ? 1 : 0
            return try pad(body, numeric: n.double.isFinite, signPrefixLength: sign)
        case "c":
            switch v {
            case .string(let s) where s.unicodeScalars.count == 1: return try pad(s, numeric: false)
            default:
                guard let n = num(v), case .i(let k) = n else { throw fail("%c requires an int or a unicode character", loc) }
                guard k >= 0, k <= 0x10FFFF, let u = UInt32(exactly: k), let scalar = Unicode.Scalar(u) else {
                    throw fail("%c arg not in range(0x110000): \(k)", loc)
                }
                return try pad(String(Character(scalar)), numeric: false)
            }
        default:
            throw fail("unsupported format character '\(type.escaped(asASCII: false))' (0x\(String(type.value, radix: 16)))", loc)
        }
    }

    /// C's snprintf of one double with a precision (for `%e %f %g`, whose output Python's matches).
    func cFormat(_ spec: String, _ d: Double, _ precision: Int, _ loc: JLoc) throws(LKError) -> String {
        guard precision <= 1 << 20 else { throw fail("'%' format: precision \(precision) too big", loc) }
        // At most 309 digits before the point, the precision after it, sign, point, exponent.
        let capacity = 330 + precision
        try budget.reserve(capacity, "'%' formatting with precision \(precision)", loc)
        var buf = [CChar](repeating: 0, count: capacity + 1)
        let n: Int32 = withVaList([Int32(precision), d]) { va in
            spec.withCString { vsnprintf(&buf, buf.count, $0, va) }
        }
        guard n >= 0, Int(n) < buf.count else { throw fail("'%' format: cannot format \(pyFloatRepr(d))", loc) }
        let s = String(decoding: buf[..<Int(n)].map { UInt8(bitPattern: $0) }, as: UTF8.self)
        try budget.alloc(s.utf8.count, "'%' formatting", loc)
        return s
    }
}
