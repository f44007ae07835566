// The parser for the Jinja2 subset used by chat templates: tokens (TemplateLexer.swift) to the syntax tree
// (TemplateAST.swift). The statement set is jinja's with the loopcontrols extension and transformers'
// `{% generation %}`; the expression grammar and precedence follow jinja2/parser.py.
//
// Nesting is bounded (`maxDepth`) counting both recursion and left-deep chains (`a + b + c …`, `x|f|g …`,
// `a.b.c …`), so the tree's height is bounded too: evaluating and freeing it cannot exhaust the stack.

import LoRAKitCore

struct JinjaParser {
    var toks: [JToken]
    var i = 0
    var depth = 0
    var loopDepth = 0
    /// The parsing thread's stack (parsing recursion stops before it runs out).
    let stack = StackGuard()
    static let maxDepth = 100

    static func parse(_ source: String) throws(LKError) -> [JStmt] {
        var lexer = JinjaLexer(source)
        var p = JinjaParser(toks: try lexer.tokenize())
        let (body, _) = try p.parseBody(until: [], opener: nil)
        return body
    }

    var cur: JToken { toks[i] }
    var nextTok: JToken { toks[min(i + 1, toks.count - 1)] }

    mutating func advance() -> JToken {
        let t = toks[i]
        if i < toks.count - 1 { i += 1 }
        return t
    }

    func fail(_ msg: String, _ loc: JLoc) -> LKError { .format("chat template: \(loc.text): \(msg)") }

    func describe(_ t: JToken) -> String {
        switch t.kind {
        case .varEnd: return "end of print statement"
        case .blockEnd: return "end of statement block"
        case .eof: return "end of template"
        case .varBegin: return "begin of print statement"
        case .blockBegin: return "begin of statement block"
        case .text: return "template data"
        case .string: return "string"
        case .int: return "integer"
        case .float: return "float"
        case .name, .op: return t.text
        }
    }

    func isOp(_ s: String) -> Bool { cur.kind == .op && cur.text == s }
    func isName(_ s: String) -> Bool { cur.kind == .name && cur.text == s }

    mutating func expectOp(_ s: String) throws(LKError) {
        guard isOp(s) else { throw fail("expected '\(s)', got '\(describe(cur))'", cur.loc) }
        _ = advance()
    }

    mutating func expectName() throws(LKError) -> String {
        guard cur.kind == .name else { throw fail("expected a name, got '\(describe(cur))'", cur.loc) }
        return advance().text
    }

    mutating func expectBlockEnd() throws(LKError) {
        guard cur.kind == .blockEnd else {
            throw fail("expected end of statement block, got '\(describe(cur))'", cur.loc)
        }
        _ = advance()
    }

    mutating func enter(_ loc: JLoc) throws(LKError) {
        depth += 1
        if depth > JinjaParser.maxDepth { throw fail("template is nested too deeply (limit \(JinjaParser.maxDepth))", loc) }
        if stack.exhausted { throw fail("template is nested too deeply for this thread's stack", loc) }
    }

    // MARK: statements

    /// Parses statements until `{% <one of until>`; returns the body and the end tag (its name consumed).
    mutating func parseBody(until: Set<String>, opener: (String, JLoc)?) throws(LKError) -> ([JStmt], String) {
        try enter(cur.loc)
        defer { depth -= 1 }
        var body: [JStmt] = []
        while true {
            let t = advance()
            switch t.kind {
            case .text:
                body.append(JStmt(kind: .text(t.text), loc: t.loc))
            case .varBegin:
                let e = try parseTuple(condExpr: true)
                guard cur.kind == .varEnd else {
                    throw fail("expected end of print statement, got '\(describe(cur))'", cur.loc)
                }
                _ = advance()
                body.append(JStmt(kind: .output(e), loc: t.loc))
            case .blockBegin:
                guard cur.kind == .name else { throw fail("tag name expected", cur.loc) }
                let nameTok = advance()
                if until.contains(nameTok.text) { return (body, nameTok.text) }
                body.append(try parseStatement(nameTok, opener: opener))
            case .eof:
                if let (tag, loc) = opener {
                    let wanted = until.sorted().map { "'\($0)'" }.joined(separator: " or ")
                    throw fail("unexpected end of template: the '\(tag)' block opened at \(loc.text) is not closed (expected \(wanted))", t.loc)
                }
                return (body, "")
            default:
                throw fail("unexpected '\(describe(t))'", t.loc)
            }
        }
    }

    mutating func parseStatement(_ tag: JToken, opener: (String, JLoc)?) throws(LKError) -> JStmt {
        let loc = tag.loc
        switch tag.text {
        case "if":
            var branches: [JBranch] = []
            var elseBody: [JStmt] = []
            var cond = try parseTuple(condExpr: false)
            try expectBlockEnd()
            while true {
                let (body, end) = try parseBody(until: ["elif", "else", "endif"], opener: ("if", loc))
                branches.append(JBranch(cond: cond, body: body))
                if end == "elif" {
                    cond = try parseTuple(condExpr: false)
                    try expectBlockEnd()
                    continue
                }
                if end == "else" {
                    try expectBlockEnd()
                    (elseBody, _) = try parseBody(until: ["endif"], opener: ("if", loc))
                }
                try expectBlockEnd()
                break
            }
            return JStmt(kind: .ifChain(branches, elseBody), loc: loc)
        case "for":
            let target = try parseAssignTarget(namespace: false)
            guard isName("in") else { throw fail("expected 'in', got '\(describe(cur))'", cur.loc) }
            _ = advance()
            let iter = try parseTuple(condExpr: false, extraEnd: ["recursive"])
            if isName("recursive") { throw fail("recursive for loops are not supported", cur.loc) }
            var filter: JExpr? = nil
            if isName("if") {
                _ = advance()
                filter = try parseExpression()
            }
            try expectBlockEnd()
            loopDepth += 1
            let (body, end) = try parseBody(until: ["endfor", "else"], opener: ("for", loc))
            loopDepth -= 1
            var elseBody: [JStmt] = []
            if end == "else" {
                try expectBlockEnd()
                (elseBody, _) = try parseBody(until: ["endfor"], opener: ("for", loc))
            }
            try expectBlockEnd()
            return JStmt(kind: .forLoop(JForLoop(target: target, iter: iter, filter: filter, body: body, elseBody: elseBody)), loc: loc)
        case "set":
            let target = try parseAssignTarget(namespace: true)
            if isOp("=") {
                _ = advance()
                let e = try parseTuple(condExpr: true)
                try expectBlockEnd()
                return JStmt(kind: .set(target, e), loc: loc)
            }
            var filters: [JFilterCall] = []
            while isOp("|") {
                _ = advance()
                filters.append(try parseFilterCall())
            }
            try expectBlockEnd()
            let (body, _) = try parseBody(until: ["endset"], opener: ("set", loc))
            try expectBlockEnd()
            return JStmt(kind: .setBlock(target, filters, body), loc: loc)
        case "macro":
            let name = try expectName()
            try expectOp("(")
            var params: [(String, JExpr?)] = []
            while !isOp(")") {
                if !params.isEmpty { try expectOp(",") }
                if isOp(")") { break }
                let p = try expectName()
                var def: JExpr? = nil
                if isOp("=") {
                    _ = advance()
                    def = try parseExpression()
                } else if params.contains(where: { $0.1 != nil }) {
                    throw fail("non-default argument follows default argument", cur.loc)
                }
                params.append((p, def))
            }
            _ = advance()
            try expectBlockEnd()
            let savedLoop = loopDepth
            loopDepth = 0
            let (body, _) = try parseBody(until: ["endmacro"], opener: ("macro", loc))
            loopDepth = savedLoop
            if cur.kind == .name { _ = advance() }
            try expectBlockEnd()
            return JStmt(kind: .macro(JMacroDef(name: name, params: params, body: body)), loc: loc)
        case "filter":
            var filters = [try parseFilterCall()]
            while isOp("|") {
                _ = advance()
                filters.append(try parseFilterCall())
            }
            try expectBlockEnd()
            let (body, _) = try parseBody(until: ["endfilter"], opener: ("filter", loc))
            try expectBlockEnd()
            return JStmt(kind: .filterBlock(filters, body), loc: loc)
        case "generation":
            try expectBlockEnd()
            let (body, _) = try parseBody(until: ["endgeneration"], opener: ("generation", loc))
            try expectBlockEnd()
            return JStmt(kind: .block(body), loc: loc)
        case "break", "continue":
            guard loopDepth > 0 else { throw fail("'\(tag.text)' outside of a for loop", loc) }
            try expectBlockEnd()
            return JStmt(kind: tag.text == "break" ? .breakLoop : .continueLoop, loc: loc)
        default:
            var msg = "unknown tag '\(tag.text)'"
            if let (open, oloc) = opener { msg += " inside the '\(open)' block opened at \(oloc.text)" }
            throw fail(msg, loc)
        }
    }

    mutating func parseAssignTarget(namespace: Bool) throws(LKError) -> JTarget {
        let paren = isOp("(")
        if paren { _ = advance() }
        let first = try expectName()
        if namespace, !paren, isOp(".") {
            _ = advance()
            return .attr(first, try expectName())
        }
        var names = [first]
        var tuple = false
        while isOp(",") {
            tuple = true
            _ = advance()
            if cur.kind != .name { break }
            names.append(try expectName())
        }
        if paren { try expectOp(")") }
        return (tuple || paren) ? .names(names) : .name(first)
    }

    // MARK: expressions

    func isTupleEnd(_ extra: Set<String>) -> Bool {
        switch cur.kind {
        case .varEnd, .blockEnd, .eof: return true
        case .op: return cur.text == ")"
        case .name: return extra.contains(cur.text)
        default: return false
        }
    }

    mutating func parseTuple(condExpr: Bool, extraEnd: Set<String> = [], explicitParens: Bool = false) throws(LKError) -> JExpr {
        let loc = cur.loc
        var args: [JExpr] = []
        var isTuple = false
        while true {
            if !args.isEmpty { try expectOp(",") }
            if isTupleEnd(extraEnd) { break }
            args.append(condExpr ? try parseExpression() : try parseOr())
            if isOp(",") { isTuple = true } else { break }
        }
        if !isTuple {
            if let a = args.first { return a }
            if !explicitParens { throw fail("expected an expression, got '\(describe(cur))'", cur.loc) }
        }
        return JExpr(kind: .tuple(args), loc: loc)
    }

    mutating func parseExpression() throws(LKError) -> JExpr {
        let base = depth
        defer { depth = base }
        try enter(cur.loc)
        var e = try parseOr()
        while isName("if") {
            try enter(cur.loc)
            _ = advance()
            let test = try parseOr()
            var otherwise: JExpr? = nil
            if isName("else") {
                _ = advance()
                otherwise = try parseExpression()
            }
            e = JExpr(kind: .cond(test: test, then: e, otherwise: otherwise), loc: e.loc)
        }
        return e
    }

    mutating func parseOr() throws(LKError) -> JExpr {
        let base = depth
        defer { depth = base }
        var l = try parseAnd()
        while isName("or") {
            try enter(cur.loc)
            _ = advance()
            let r = try parseAnd()
            l = JExpr(kind: .or(l, r), loc: l.loc)
        }
        return l
    }

    mutating func parseAnd() throws(LKError) -> JExpr {
        let base = depth
        defer { depth = base }
        var l = try parseNot()
        while isName("and") {
            try enter(cur.loc)
            _ = advance()
            let r = try parseNot()
            l = JExpr(kind: .and(l, r), loc: l.loc)
        }
        return l
    }

    mutating func parseNot() throws(LKError) -> JExpr {
        if isName("not") {
            let loc = advance().loc
            try enter(loc)
            defer { depth -= 1 }
            return JExpr(kind: .not(try parseNot()), loc: loc)
        }
        return try parseCompare()
    }

    mutating func parseCompare() throws(LKError) -> JExpr {
        let e = try parseMath1()
        var ops: [(JCmpOp, JExpr)] = []
        while true {
            if cur.kind == .op, let op = JCmpOp(rawValue: cur.text), op != .isIn, op != .notIn {
                _ = advance()
                ops.append((op, try parseMath1()))
            } else if isName("in") {
                _ = advance()
                ops.append((.isIn, try parseMath1()))
            } else if isName("not"), nextTok.kind == .name, nextTok.text == "in" {
                _ = advance()
                _ = advance()
                ops.append((.notIn, try parseMath1()))
            } else {
                break
            }
        }
        return ops.isEmpty ? e : JExpr(kind: .compare(e, ops), loc: e.loc)
    }

    mutating func parseMath1() throws(LKError) -> JExpr {
        let base = depth
        defer { depth = base }
        var l = try parseConcat()
        while cur.kind == .op, cur.text == "+" || cur.text == "-" {
            try enter(cur.loc)
            let op = JBinOp(rawValue: advance().text)!
            let r = try parseConcat()
            l = JExpr(kind: .binary(op, l, r), loc: l.loc)
        }
        return l
    }

    mutating func parseConcat() throws(LKError) -> JExpr {
        var args = [try parseMath2()]
        while isOp("~") {
            _ = advance()
            args.append(try parseMath2())
        }
        return args.count == 1 ? args[0] : JExpr(kind: .concat(args), loc: args[0].loc)
    }

    mutating func parseMath2() throws(LKError) -> JExpr {
        let base = depth
        defer { depth = base }
        var l = try parsePow()
        while cur.kind == .op, ["*", "/", "//", "%"].contains(cur.text) {
            try enter(cur.loc)
            let op = JBinOp(rawValue: advance().text)!
            let r = try parsePow()
            l = JExpr(kind: .binary(op, l, r), loc: l.loc)
        }
        return l
    }

    mutating func parsePow() throws(LKError) -> JExpr {
        let base = depth
        defer { depth = base }
        var l = try parseUnary()
        while isOp("**") {
            try enter(cur.loc)
            _ = advance()
            let r = try parseUnary()
            l = JExpr(kind: .binary(.pow, l, r), loc: l.loc)
        }
        return l
    }

    mutating func parseUnary(withFilter: Bool = true) throws(LKError) -> JExpr {
        let base = depth
        defer { depth = base }
        try enter(cur.loc)
        var node: JExpr
        if isOp("-") {
            let loc = advance().loc
            node = JExpr(kind: .neg(try parseUnary(withFilter: false)), loc: loc)
        } else if isOp("+") {
            let loc = advance().loc
            node = JExpr(kind: .pos(try parseUnary(withFilter: false)), loc: loc)
        } else {
            node = try parsePrimary()
        }
        node = try parsePostfix(node)
        if withFilter { node = try parseFilterExpr(node) }
        return node
    }

    mutating func parsePrimary() throws(LKError) -> JExpr {
        let t = cur
        switch t.kind {
        case .name:
            _ = advance()
            switch t.text {
            case "true", "True": return JExpr(kind: .const(.bool(true)), loc: t.loc)
            case "false", "False": return JExpr(kind: .const(.bool(false)), loc: t.loc)
            case "none", "None": return JExpr(kind: .const(.none), loc: t.loc)
            default: return JExpr(kind: .name(t.text), loc: t.loc)
            }
        case .string:
            var text = advance().text
            while cur.kind == .string { text += advance().text }
            return JExpr(kind: .const(.string(text)), loc: t.loc)
        case .int:
            _ = advance()
            return JExpr(kind: .const(.int(t.int)), loc: t.loc)
        case .float:
            _ = advance()
            return JExpr(kind: .const(.double(t.float)), loc: t.loc)
        case .op where t.text == "(":
            _ = advance()
            let e = try parseTuple(condExpr: true, explicitParens: true)
            try expectOp(")")
            return e
        case .op where t.text == "[":
            _ = advance()
            var items: [JExpr] = []
            while !isOp("]") {
                if !items.isEmpty { try expectOp(",") }
                if isOp("]") { break }
                items.append(try parseExpression())
            }
            _ = advance()
            return JExpr(kind: .list(items), loc: t.loc)
        case .op where t.text == "{":
            _ = advance()
            var items: [JKeyValue] = []
            while !isOp("}") {
                if !items.isEmpty { try expectOp(",") }
                if isOp("}") { break }
                let k = try parseExpression()
                try expectOp(":")
                let v = try parseExpression()
                items.append(JKeyValue(key: k, value: v))
            }
            _ = advance()
            return JExpr(kind: .dict(items), loc: t.loc)
        default:
            throw fail("expected an expression, got '\(describe(t))'", t.loc)
        }
    }

    mutating func parsePostfix(_ node: JExpr) throws(LKError) -> JExpr {
        let base = depth
        defer { depth = base }
        var node = node
        while true {
            if isOp(".") || isOp("[") || isOp("(") { try enter(cur.loc) }
            if isOp(".") {
                _ = advance()
                let t = advance()
                if t.kind == .name {
                    node = JExpr(kind: .attr(node, t.text), loc: t.loc)
                } else if t.kind == .int {
                    node = JExpr(kind: .item(node, JExpr(kind: .const(.int(t.int)), loc: t.loc)), loc: t.loc)
                } else {
                    throw fail("expected a name or number after '.', got '\(describe(t))'", t.loc)
                }
            } else if isOp("[") {
                let loc = advance().loc
                var subs: [JExpr] = []
                while !isOp("]") {
                    if !subs.isEmpty { try expectOp(",") }
                    if isOp("]") { break }
                    subs.append(try parseSubscribed(on: node))
                }
                try expectOp("]")
                guard !subs.isEmpty else { throw fail("expected a subscript", loc) }
                if subs.count == 1 {
                    if case .slice = subs[0].kind { node = subs[0] } else {
                        node = JExpr(kind: .item(node, subs[0]), loc: loc)
                    }
                } else {
                    node = JExpr(kind: .item(node, JExpr(kind: .tuple(subs), loc: loc)), loc: loc)
                }
            } else if isOp("(") {
                node = try parseCall(node)
            } else {
                return node
            }
        }
    }

    /// One subscript: an index expression, or a slice node applied to `on`.
    mutating func parseSubscribed(on base: JExpr) throws(LKError) -> JExpr {
        let loc = cur.loc
        var args: [JExpr?] = []
        if isOp(":") {
            _ = advance()
            args = [nil]
        } else {
            let e = try parseExpression()
            if !isOp(":") { return e }
            _ = advance()
            args = [e]
        }
        if isOp(":") || isOp("]") || isOp(",") { args.append(nil) } else { args.append(try parseExpression()) }
        if isOp(":") {
            _ = advance()
            if isOp("]") || isOp(",") { args.append(nil) } else { args.append(try parseExpression()) }
        } else {
            args.append(nil)
        }
        return JExpr(kind: .slice(base, args[0], args[1], args[2]), loc: loc)
    }

    mutating func parseCallArgs() throws(LKError) -> ([JExpr], [JKwarg]) {
        try expectOp("(")
        var args: [JExpr] = []
        var kwargs: [JKwarg] = []
        var first = true
        while !isOp(")") {
            if !first { try expectOp(",") }
            first = false
            if isOp(")") { break }
            if isOp("*") || isOp("**") { throw fail("*args and **kwargs in calls are not supported", cur.loc) }
            if cur.kind == .name, nextTok.kind == .op, nextTok.text == "=" {
                let name = advance().text
                _ = advance()
                kwargs.append(JKwarg(name: name, value: try parseExpression()))
            } else {
                if !kwargs.isEmpty { throw fail("positional argument follows keyword argument", cur.loc) }
                args.append(try parseExpression())
            }
        }
        _ = advance()
        return (args, kwargs)
    }

    mutating func parseCall(_ node: JExpr) throws(LKError) -> JExpr {
        let loc = cur.loc
        let (args, kwargs) = try parseCallArgs()
        return JExpr(kind: .call(node, args, kwargs), loc: loc)
    }

    mutating func parseDottedName() throws(LKError) -> String {
        var name = try expectName()
        while isOp("."), nextTok.kind == .name {
            _ = advance()
            name += "." + advance().text
        }
        return name
    }

    mutating func parseFilterCall() throws(LKError) -> JFilterCall {
        let loc = cur.loc
        let name = try parseDottedName()
        guard JinjaInterpreter.filterNames.contains(name) else { throw fail("no filter named '\(name)'", loc) }
        var args: [JExpr] = []
        var kwargs: [JKwarg] = []
        if isOp("(") { (args, kwargs) = try parseCallArgs() }
        return JFilterCall(name: name, args: args, kwargs: kwargs, loc: loc)
    }

    mutating func parseFilterExpr(_ node: JExpr) throws(LKError) -> JExpr {
        let base = depth
        defer { depth = base }
        var node = node
        while true {
            if isOp("|") || isName("is") || isOp("(") { try enter(cur.loc) }
            if isOp("|") {
                _ = advance()
                let f = try parseFilterCall()
                node = JExpr(kind: .filter(node, f), loc: f.loc)
            } else if isName("is") {
                _ = advance()
                var negated = false
                if isName("not") {
                    _ = advance()
                    negated = true
                }
                let loc = cur.loc
                let name = try parseDottedName()
                guard JinjaInterpreter.testNames.contains(name) else { throw fail("no test named '\(name)'", loc) }
                var args: [JExpr] = []
                if isOp("(") {
                    let (a, kw) = try parseCallArgs()
                    guard kw.isEmpty else { throw fail("keyword arguments to tests are not supported", loc) }
                    args = a
                } else if [.name, .string, .int, .float].contains(cur.kind) || isOp("(") || isOp("[") || isOp("{") {
                    if !(isName("else") || isName("or") || isName("and")) {
                        if isName("is") { throw fail("you cannot chain multiple tests with is", cur.loc) }
                        args = [try parsePostfix(try parsePrimary())]
                    }
                }
                node = JExpr(kind: .test(node, name, args, negated: negated), loc: loc)
            } else if isOp("(") {
                node = try parseCall(node)
            } else {
                return node
            }
        }
    }
}
