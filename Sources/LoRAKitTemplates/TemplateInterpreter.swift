// The interpreter: runs a parsed template (TemplateAST.swift) over values (TemplateValues.swift) with jinja's
// semantics: Python truthiness and operators, jinja's default Undefined, scoping (a for-loop iteration and a
// macro call get their own scope; `if` does not), macros, and the globals `range`, `namespace`, `dict`,
// `raise_exception`. Operators are in TemplateOperators.swift, methods in TemplateMethods.swift, filters and
// tests in TemplateFilters.swift.
//
// Every step, loop iteration, recursion level and byte of string or list goes through the render's JBudget
// first (TemplateBudget.swift): no template can trap, exhaust the stack or memory, or run unbounded.

import LoRAKitCore

final class JinjaInterpreter {
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
    /// jinja's sandbox MAX_RANGE: `range()` with more items is an error (a jinja rule, not a budget).
    static let maxRange = 100_000

    let globals: JScope
    let budget: JBudget
    var depth = 0
    /// Objects that can take part in reference cycles (a namespace holding itself, a scope holding a macro
    /// that holds the scope): emptied when the render ends, so nothing leaks and nothing is freed recursively.
    private var namespaces: [JNamespace] = []
    private var capturedScopes: [JScope] = []
    private var captured = Set<ObjectIdentifier>()

    init(globals vars: [String: TemplateValue], limits: TemplateLimits) throws(LKError) {
        budget = JBudget(limits)
        let builtins = JScope(parent: nil)
        for name in ["raise_exception", "namespace", "range", "dict"] { builtins.vars[name] = .callable(.builtin(name)) }
        globals = JScope(parent: builtins)
        for (k, v) in vars { globals.vars[k] = try JValue.from(v, maxDepth: limits.maxValueDepth, name: k) }
    }

    func fail(_ msg: String, _ loc: JLoc) -> LKError { .format("chat template: \(loc.text): \(msg)") }

    func run(_ program: [JStmt]) throws(LKError) -> String {
        defer { breakCycles() }
        var out = ""
        _ = try exec(program, globals, &out)
        return out
    }

    private func breakCycles() {
        for ns in namespaces { ns.attrs = JDict() }
        for s in capturedScopes { s.vars = [:] }
        globals.vars = [:]
        namespaces = []
        capturedScopes = []
    }

    // MARK: output

    /// Appends rendered text to an output buffer (the prompt, a macro's or a set block's text).
    func emit(_ s: String, to out: inout String, _ loc: JLoc) throws(LKError) {
        let n = s.utf8.count
        try budget.alloc(n, "rendered text", loc)
        guard out.utf8.count + n <= budget.limits.maxOutputBytes else {
            throw budget.limitError(loc, "the rendered text exceeds \(budget.limits.maxOutputBytes) bytes (TemplateLimits.maxOutputBytes)")
        }
        out += s
    }

    /// Enters one level of recursion (statements, expressions, macro calls).
    @inline(__always)
    func enter(_ loc: JLoc) throws(LKError) {
        depth += 1
        if depth > budget.peakDepth { budget.peakDepth = depth }
        if depth > budget.limits.maxRecursionDepth {
            throw budget.structureError(loc, "template recursion too deep: statements, expressions and macro calls nested more than \(budget.limits.maxRecursionDepth) levels (TemplateLimits.maxRecursionDepth)")
        }
        try budget.checkStack(loc, "template recursion")
    }

    // MARK: statements

    func exec(_ stmts: [JStmt], _ scope: JScope, _ out: inout String) throws(LKError) -> JFlow {
        guard let first = stmts.first else { return .normal }
        try enter(first.loc)
        defer { depth -= 1 }
        for st in stmts {
            try budget.step(1, st.loc)
            switch st.kind {
            case .text(let t):
                try emit(t, to: &out, st.loc)
            case .output(let e):
                try emit(try str(try eval(e, scope), e.loc), to: &out, st.loc)
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
                if captured.insert(ObjectIdentifier(scope)).inserted { capturedScopes.append(scope) }
                scope.vars[def.name] = .callable(.macro(JMacro(def: def, scope: scope)))
            case .filterBlock(let filters, let body):
                var buf = ""
                let flow = try exec(body, scope, &buf)
                var v = JValue.string(buf)
                for f in filters { v = try applyFilter(f, v, scope) }
                try emit(try str(v, st.loc), to: &out, st.loc)
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

    func execFor(_ loop: JForLoop, _ loc: JLoc, _ scope: JScope, _ out: inout String) throws(LKError) -> JFlow {
        var items = try iterate(try eval(loop.iter, scope), loop.iter.loc)
        if let cond = loop.filter {
            var kept: [JValue] = []
            for x in items {
                try budget.iteration(loc)
                let s = JScope(parent: scope)
                try bind(loop.target, x, s, loc)
                if truthy(try eval(cond, s)) { kept.append(x) }
            }
            try budget.allocList(kept.count, "the loop's filtered items", loc)
            items = JList(kept)
        }
        if items.isEmpty {
            return try exec(loop.elseBody, scope, &out)
        }
        for (i, x) in items.enumerated() {
            try budget.iteration(loc)
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

    func eval(_ e: JExpr, _ scope: JScope) throws(LKError) -> JValue {
        try enter(e.loc)
        defer { depth -= 1 }
        try budget.step(1, e.loc)
        let v = try evalNode(e, scope)
        if v.depth > budget.limits.maxValueDepth {
            throw budget.structureError(e.loc, "value nested too deeply: a list or dict more than \(budget.limits.maxValueDepth) levels deep (TemplateLimits.maxValueDepth)")
        }
        return v
    }

    private func evalNode(_ e: JExpr, _ scope: JScope) throws(LKError) -> JValue {
        switch e.kind {
        case .const(let v):
            return try JValue.from(v, maxDepth: budget.limits.maxValueDepth, name: "a constant")
        case .name(let n):
            return scope.lookup(n) ?? .undefined("'\(n)' is undefined")
        case .list(let items), .tuple(let items):
            var a: [JValue] = []
            a.reserveCapacity(items.count)
            for x in items { a.append(try eval(x, scope)) }
            try budget.allocList(a.count, "a list", e.loc)
            return .list(a)
        case .dict(let pairs):
            var d = JDict()
            for p in pairs {
                let k = try eval(p.key, scope)
                if let err = undefinedError(k, p.key.loc) { throw err }
                d[try str(k, p.key.loc)] = try eval(p.value, scope)
            }
            try budget.allocList(d.count * 2, "a dict", e.loc)
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
                guard i != Int.min else { throw fail("integer overflow in unary -: -(\(i)) is out of the 64-bit range", e.loc) }
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
            var strs: [String] = []
            var size = 0
            for p in parts {
                let s = try str(try eval(p, scope), p.loc)
                size = satAdd(size, s.utf8.count)
                strs.append(s)
            }
            try budget.alloc(size, "'~' joining \(parts.count) strings", e.loc)
            return .string(strs.joined())
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

    // MARK: str() and repr()

    /// Python's `str(v)` (Undefined prints as "").
    func str(_ v: JValue, _ loc: JLoc) throws(LKError) -> String {
        switch v {
        case .undefined: return ""
        case .string(let s): return s
        default: return try repr(v, loc)
        }
    }

    /// Python's `repr(v)`.
    func repr(_ v: JValue, _ loc: JLoc) throws(LKError) -> String {
        var out = ""
        try repr(v, into: &out, level: 0, loc)
        return out
    }

    private func repr(_ v: JValue, into out: inout String, level: Int, _ loc: JLoc) throws(LKError) {
        // Namespaces are reached by reference and may contain themselves: bound the recursion here.
        guard level <= budget.limits.maxValueDepth else {
            throw budget.structureError(loc, "value nested too deeply: repr() of a value more than \(budget.limits.maxValueDepth) levels deep (TemplateLimits.maxValueDepth)")
        }
        try budget.checkStack(loc, "repr() of a value nested")
        try budget.step(1, loc)
        func put(_ s: String) throws(LKError) {
            try budget.alloc(s.utf8.count, "repr() of a \(pyTypeName(v))", loc)
            out += s
        }
        switch v {
        case .undefined: try put("Undefined")
        case .none: try put("None")
        case .bool(let b): try put(b ? "True" : "False")
        case .int(let i): try put(String(i))
        case .double(let d): try put(pyFloatRepr(d))
        case .string(let s):
            try budget.reserve(satAdd(satMul(s.utf8.count, 4), 2), "repr() of a string", loc)
            try put(pyStringRepr(s))
        case .array(let a):
            try put("[")
            for (i, x) in a.enumerated() {
                if i > 0 { try put(", ") }
                try repr(x, into: &out, level: level + 1, loc)
            }
            try put("]")
        case .dict(let d):
            try put("{")
            for (i, k) in d.keys.enumerated() {
                if i > 0 { try put(", ") }
                try repr(.string(k), into: &out, level: level + 1, loc)
                try put(": ")
                try repr(d.map[k] ?? .none, into: &out, level: level + 1, loc)
            }
            try put("}")
        case .namespace(let n):
            try put("<Namespace ")
            try repr(.dict(n.attrs), into: &out, level: level + 1, loc)
            try put(">")
        case .loop(let l): try put("<LoopContext \(l.index0 + 1)/\(l.items.count)>")
        case .callable: try put("<function>")
        }
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

    /// A Python index (negative from the end) into `count` items, or nil when out of range or not an int.
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
            return .undefined("'dict object' has no attribute \(try repr(key, loc))")
        case .array(let a):
            if let i = pyIndex(key, a.count) { return a[i] }
            if case .string(let k) = key { return try getattr(obj, k, loc) }
            return .undefined("'list object' has no attribute \(try repr(key, loc))")
        case .string(let s):
            if num(key) != nil {
                try budget.scan(s.utf8.count, loc)
                let sc = s.unicodeScalars
                if let i = pyIndex(key, sc.count) {
                    var one = ""
                    one.unicodeScalars.append(sc[sc.index(sc.startIndex, offsetBy: i)])
                    return .string(one)
                }
            }
            if case .string(let k) = key { return try getattr(obj, k, loc) }
            return .undefined("'str object' has no attribute \(try repr(key, loc))")
        case .namespace, .loop:
            if case .string(let k) = key { return try getattr(obj, k, loc) }
            return .undefined("'Namespace object' has no attribute \(try repr(key, loc))")
        default:
            return .undefined("'\(jObjectRepr(obj))' has no attribute \(try repr(key, loc))")
        }
    }

    /// The indices `[start:stop:step]` selects from `count` items, as Python's `slice.indices` computes them.
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
            let (next, overflow) = i.addingReportingOverflow(st)
            if overflow { break }
            i = next
        }
        try budget.step(r.count, loc)
        return r
    }

    func slice(_ obj: JValue, _ start: JValue, _ stop: JValue, _ step: JValue, _ loc: JLoc) throws(LKError) -> JValue {
        if let err = undefinedError(obj, loc) { throw err }
        switch obj {
        case .array(let a):
            let idx = try sliceIndices(a.count, start, stop, step, loc)
            try budget.allocList(idx.count, "a slice", loc)
            return .list(idx.map { a[$0] })
        case .string(let s):
            let sc = try scalars(s, loc)
            let idx = try sliceIndices(sc.count, start, stop, step, loc)
            try budget.alloc(satMul(idx.count, 4), "a slice of a string", loc)
            var out = ""
            for i in idx { out.unicodeScalars.append(sc[i]) }
            return .string(out)
        default:
            throw fail("'\(pyTypeName(obj))' object is not subscriptable", loc)
        }
    }

    /// The items a for-loop or a filter iterates over: a list's elements, a dict's keys, a string's characters.
    func iterate(_ v: JValue, _ loc: JLoc) throws(LKError) -> JList {
        switch v {
        case .array(let a): return a
        case .dict(let d):
            try budget.allocList(d.count, "the keys of a dict", loc)
            return JList(d.keys.map { .string($0) })
        case .string(let s):
            let n = s.unicodeScalars.count
            try budget.allocList(n, "the characters of a string", loc)
            return JList(s.unicodeScalars.map { .string(String(Character($0))) })
        case .undefined: return JList([])
        default: throw fail("'\(pyTypeName(v))' object is not iterable", loc)
        }
    }

    /// A string's scalars as an array (charged: 4 bytes each).
    func scalars(_ s: String, _ loc: JLoc) throws(LKError) -> [Unicode.Scalar] {
        try budget.alloc(satMul(s.utf8.count, 4), "a copy of a string's characters", loc)
        return Array(s.unicodeScalars)
    }

    // MARK: calls

    func call(_ f: JValue, _ args: [JValue], _ kwargs: [(String, JValue)], _ loc: JLoc) throws(LKError) -> JValue {
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
                throw LKError.invalidArgument(try str(a[0, "message"] ?? .none, loc))
            case "namespace":
                let ns = JNamespace()
                if let first = args.first {
                    guard case .dict(let d) = first else { throw fail("namespace() argument must be a mapping", loc) }
                    ns.attrs = d
                }
                for (k, v) in kwargs { ns.attrs[k] = v }
                try budget.allocList(satAdd(ns.attrs.count * 2, 4), "a namespace", loc)
                namespaces.append(ns)
                return .namespace(ns)
            case "dict":
                var d = JDict()
                if let first = args.first {
                    guard case .dict(let src) = first else { throw fail("dict() argument must be a mapping", loc) }
                    d = src
                }
                for (k, v) in kwargs { d[k] = v }
                try budget.allocList(d.count * 2, "a dict", loc)
                return .dict(d)
            case "range":
                return try range(args, loc)
            default:
                throw fail("unknown function '\(name)'", loc)
            }
        }
    }

    /// `range(stop)`, `range(start, stop[, step])`, counted in 128 bits so no bound can overflow.
    func range(_ args: [JValue], _ loc: JLoc) throws(LKError) -> JValue {
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
        let a = Int128(start), b = Int128(stop), s = Int128(step)
        let n: Int128 = s > 0 ? (b > a ? (b - a + s - 1) / s : 0) : (a > b ? (a - b - s - 1) / -s : 0)
        guard n <= Int128(JinjaInterpreter.maxRange) else {
            let call = "range(" + ints.map(String.init).joined(separator: ", ") + ")"
            throw fail("Range too big. The sandbox blocks ranges larger than MAX_RANGE (\(JinjaInterpreter.maxRange)): \(call) has \(n) items.", loc)
        }
        let count = Int(n)
        try budget.allocList(count, "range()", loc)
        var out: [JValue] = []
        out.reserveCapacity(count)
        var v = a
        for _ in 0..<count {
            out.append(.int(Int(v)))  // start ≤ v < stop (or stop < v ≤ start): within Int
            v += s
        }
        return .list(out)
    }

    func callMacro(_ m: JMacro, _ args: [JValue], _ kwargs: [(String, JValue)], _ loc: JLoc) throws(LKError) -> JValue {
        let params = m.def.params
        guard args.count <= params.count else {
            throw fail("macro '\(m.def.name)' takes not more than \(params.count) argument(s)", loc)
        }
        try enter(loc)
        defer { depth -= 1 }
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
}
