// Lexer and parser for the Jinja2 subset used by chat templates (see ChatTemplate.swift).
// The lexer follows jinja2/lexer.py with trim_blocks=True, lstrip_blocks=True, keep_trailing_newline=False;
// the expression grammar and precedence follow jinja2/parser.py.

import LoRAKitCore

// MARK: - AST

/// A source position: 1-based line and column (in Unicode scalars).
struct JLoc: Sendable {
    var line: Int32
    var col: Int32
    var text: String { "line \(line), column \(col)" }
}

struct JExpr: Sendable {
    var kind: JExprKind
    var loc: JLoc
}

struct JKeyValue: Sendable {
    var key: JExpr
    var value: JExpr
}

struct JKwarg: Sendable {
    var name: String
    var value: JExpr
}

enum JBinOp: String, Sendable {
    case add = "+", sub = "-", mul = "*", div = "/", floorDiv = "//", mod = "%", pow = "**"
}

enum JCmpOp: String, Sendable {
    case eq = "==", ne = "!=", lt = "<", le = "<=", gt = ">", ge = ">=", isIn = "in", notIn = "not in"
}

struct JFilterCall: Sendable {
    var name: String
    var args: [JExpr]
    var kwargs: [JKwarg]
    var loc: JLoc
}

indirect enum JExprKind: Sendable {
    case const(TemplateValue)
    case name(String)
    case list([JExpr])
    case tuple([JExpr])
    case dict([JKeyValue])
    case attr(JExpr, String)
    case item(JExpr, JExpr)
    case slice(JExpr, JExpr?, JExpr?, JExpr?)
    case call(JExpr, [JExpr], [JKwarg])
    case filter(JExpr, JFilterCall)
    case test(JExpr, String, [JExpr], negated: Bool)
    case neg(JExpr)
    case pos(JExpr)
    case not(JExpr)
    case and(JExpr, JExpr)
    case or(JExpr, JExpr)
    case binary(JBinOp, JExpr, JExpr)
    case concat([JExpr])
    case compare(JExpr, [(JCmpOp, JExpr)])
    case cond(test: JExpr, then: JExpr, otherwise: JExpr?)
}

enum JTarget: Sendable {
    case name(String)
    case names([String])
    case attr(String, String)
}

struct JBranch: Sendable {
    var cond: JExpr
    var body: [JStmt]
}

struct JForLoop: Sendable {
    var target: JTarget
    var iter: JExpr
    var filter: JExpr?
    var body: [JStmt]
    var elseBody: [JStmt]
}

struct JMacroDef: Sendable {
    var name: String
    var params: [(String, JExpr?)]
    var body: [JStmt]
}

struct JStmt: Sendable {
    var kind: JStmtKind
    var loc: JLoc
}

indirect enum JStmtKind: Sendable {
    case text(String)
    case output(JExpr)
    case ifChain([JBranch], [JStmt])
    case forLoop(JForLoop)
    case set(JTarget, JExpr)
    case setBlock(JTarget, [JFilterCall], [JStmt])
    case macro(JMacroDef)
    case filterBlock([JFilterCall], [JStmt])
    case block([JStmt])
    case breakLoop
    case continueLoop
}

// MARK: - Tokens

enum JTokKind: Equatable {
    case text, varBegin, varEnd, blockBegin, blockEnd, name, string, int, float, op, eof
}

struct JToken {
    var kind: JTokKind
    var text: String = ""
    var int: Int = 0
    var float: Double = 0
    var loc: JLoc
}

/// Python's `str.isspace` (also what `\s` matches in a `str` regex).
@inline(__always)
func jIsSpace(_ c: Unicode.Scalar) -> Bool {
    switch c.value {
    case 0x09...0x0D, 0x1C...0x20, 0x85, 0xA0, 0x1680, 0x2000...0x200A, 0x2028, 0x2029, 0x202F, 0x205F, 0x3000:
        return true
    default:
        return false
    }
}

func jString(_ scalars: ArraySlice<Unicode.Scalar>) -> String {
    var s = ""
    s.unicodeScalars.append(contentsOf: scalars)
    return s
}

// MARK: - Lexer

struct JinjaLexer {
    var s: [Unicode.Scalar]
    var lineStarts: [Int] = [0]
    var tokens: [JToken] = []

    init(_ source: String) {
        // Normalize \r\n and \r to \n, and drop one trailing newline (keep_trailing_newline=False).
        var out: [Unicode.Scalar] = []
        out.reserveCapacity(source.unicodeScalars.count)
        var prevCR = false
        for c in source.unicodeScalars {
            if c == "\r" {
                out.append("\n")
                prevCR = true
                continue
            }
            if c == "\n" && prevCR { prevCR = false; continue }
            prevCR = false
            out.append(c)
        }
        if out.last == "\n" { out.removeLast() }
        s = out
        for (i, c) in s.enumerated() where c == "\n" { lineStarts.append(i + 1) }
    }

    func loc(_ pos: Int) -> JLoc {
        var lo = 0, hi = lineStarts.count - 1
        while lo < hi {
            let mid = (lo + hi + 1) / 2
            if lineStarts[mid] <= pos { lo = mid } else { hi = mid - 1 }
        }
        return JLoc(line: Int32(lo + 1), col: Int32(pos - lineStarts[lo] + 1))
    }

    func fail(_ msg: String, _ pos: Int) -> LKError {
        .format("chat template: \(loc(pos).text): \(msg)")
    }

    func at(_ p: Int, _ lit: String) -> Bool {
        var q = p
        for c in lit.unicodeScalars {
            guard q < s.count, s[q] == c else { return false }
            q += 1
        }
        return true
    }

    func skipSpace(_ p: Int) -> Int {
        var q = p
        while q < s.count, jIsSpace(s[q]) { q += 1 }
        return q
    }

    /// Applies `-` stripping or lstrip_blocks to the text before a tag (jinja's OptionalLStrip).
    func stripText(_ start: Int, _ end: Int, sign: Unicode.Scalar?, lstrip: Bool, lineStarting: Bool) -> Int {
        if sign == "-" {
            var e = end
            while e > start, jIsSpace(s[e - 1]) { e -= 1 }
            return e
        }
        if sign != "+" && lstrip {
            var lPos = start
            var q = end
            while q > start {
                if s[q - 1] == "\n" { lPos = q; break }
                q -= 1
            }
            if lPos > start || lineStarting {
                if lPos < end, (lPos..<end).allSatisfy({ jIsSpace(s[$0]) }) { return lPos }
            }
        }
        return end
    }

    mutating func emitText(_ start: Int, _ end: Int) {
        if end > start { tokens.append(JToken(kind: .text, text: jString(s[start..<end]), loc: loc(start))) }
    }

    mutating func tokenize() throws(LKError) -> [JToken] {
        var pos = 0
        var lineStarting = true
        while pos < s.count {
            // Find the next tag start.
            var p = pos
            var kind: Unicode.Scalar = " "
            while p + 1 < s.count {
                if s[p] == "{", s[p + 1] == "{" || s[p + 1] == "%" || s[p + 1] == "#" { kind = s[p + 1]; break }
                p += 1
            }
            if kind == " " {
                emitText(pos, s.count)
                break
            }
            var sign: Unicode.Scalar? = nil
            if p + 2 < s.count, s[p + 2] == "-" || s[p + 2] == "+" { sign = s[p + 2] }
            var bodyStart = p + 2 + (sign == nil ? 0 : 1)

            // {% raw %} … {% endraw %}
            if kind == "%" {
                var q = skipSpace(bodyStart)
                if at(q, "raw") {
                    q = skipSpace(q + 3)
                    var rawEnd: Int? = nil
                    if at(q, "-%}") { rawEnd = skipSpace(q + 3) } else if at(q, "%}") { rawEnd = q + 2 }
                    if let rawStart = rawEnd {
                        let textEnd = stripText(pos, p, sign: sign, lstrip: true, lineStarting: lineStarting)
                        emitText(pos, textEnd)
                        // Search for {%[-+]? endraw ...%}
                        var r = rawStart
                        var found = false
                        while r + 1 < s.count {
                            if s[r] == "{", s[r + 1] == "%" {
                                var esign: Unicode.Scalar? = nil
                                var t = r + 2
                                if t < s.count, s[t] == "-" || s[t] == "+" { esign = s[t]; t += 1 }
                                t = skipSpace(t)
                                if at(t, "endraw") {
                                    t = skipSpace(t + 6)
                                    var after: Int? = nil
                                    if at(t, "+%}") { after = t + 3 }
                                    else if at(t, "-%}") { after = skipSpace(t + 3) }
                                    else if at(t, "%}") { after = t + 2; if after! < s.count, s[after!] == "\n" { after! += 1 } }
                                    if let a = after {
                                        let bodyEnd = stripText(rawStart, r, sign: esign, lstrip: true, lineStarting: false)
                                        emitText(rawStart, bodyEnd)
                                        lineStarting = s[a - 1] == "\n"
                                        pos = a
                                        found = true
                                        break
                                    }
                                }
                            }
                            r += 1
                        }
                        guard found else { throw fail("missing end of raw directive", p) }
                        continue
                    }
                }
            }

            let textEnd = stripText(pos, p, sign: sign, lstrip: kind != "{", lineStarting: lineStarting)
            emitText(pos, textEnd)
            lineStarting = false

            if kind == "#" {
                var q = bodyStart
                var end: Int? = nil
                while q < s.count {
                    if s[q] == "+", at(q + 1, "#}") { end = q + 3; break }
                    if s[q] == "-", at(q + 1, "#}") { end = skipSpace(q + 3); break }
                    if at(q, "#}") {
                        end = q + 2
                        if end! < s.count, s[end!] == "\n" { end! += 1 }
                        break
                    }
                    q += 1
                }
                guard let e = end else { throw fail("missing end of comment tag", p) }
                lineStarting = s[e - 1] == "\n"
                pos = e
                continue
            }

            let isBlock = kind == "%"
            tokens.append(JToken(kind: isBlock ? .blockBegin : .varBegin, loc: loc(p)))
            var stack: [Unicode.Scalar] = []
            var q = bodyStart
            while true {
                if stack.isEmpty {
                    var end: Int? = nil
                    if isBlock {
                        if at(q, "+%}") { end = q + 3 }
                        else if at(q, "-%}") { end = skipSpace(q + 3) }
                        else if at(q, "%}") { end = q + 2; if end! < s.count, s[end!] == "\n" { end! += 1 } }
                    } else {
                        if at(q, "-}}") { end = skipSpace(q + 3) }
                        else if at(q, "}}") { end = q + 2 }
                    }
                    if let e = end {
                        tokens.append(JToken(kind: isBlock ? .blockEnd : .varEnd, loc: loc(q)))
                        lineStarting = s[e - 1] == "\n"
                        q = e
                        break
                    }
                }
                let ws = skipSpace(q)
                if ws > q { q = ws; continue }
                guard q < s.count else {
                    throw fail("unexpected end of template: the '\(isBlock ? "{%" : "{{")' tag at \(loc(p).text) is not closed", q)
                }
                bodyStart = q
                q = try lexToken(q, &stack)
            }
            pos = q
        }
        tokens.append(JToken(kind: .eof, loc: loc(s.count)))
        return tokens
    }

    func isDigit(_ c: Unicode.Scalar) -> Bool { c.value >= 0x30 && c.value <= 0x39 }
    func isNameStart(_ c: Unicode.Scalar) -> Bool {
        c == "_" || (c.value < 128 ? (c.properties.isAlphabetic) : c.properties.isXIDStart)
    }
    func isNameChar(_ c: Unicode.Scalar) -> Bool {
        c == "_" || (c.value < 128 ? (c.properties.isAlphabetic || isDigit(c)) : c.properties.isXIDContinue)
    }

    /// Digits with single underscores between them, starting at p; returns the end (== p if none).
    func scanDigits(_ p: Int, _ ok: (Unicode.Scalar) -> Bool) -> Int {
        var q = p
        guard q < s.count, ok(s[q]) else { return p }
        q += 1
        while q < s.count {
            if ok(s[q]) { q += 1; continue }
            if s[q] == "_", q + 1 < s.count, ok(s[q + 1]) { q += 2; continue }
            break
        }
        return q
    }

    mutating func lexToken(_ p: Int, _ stack: inout [Unicode.Scalar]) throws(LKError) -> Int {
        let c = s[p]
        let l = loc(p)
        if isDigit(c) {
            // Prefixed integers.
            if c == "0", p + 1 < s.count {
                let x = s[p + 1]
                let radix: Int? = (x == "x" || x == "X") ? 16 : (x == "o" || x == "O") ? 8 : (x == "b" || x == "B") ? 2 : nil
                if let r = radix {
                    var q = p + 2
                    var digits = ""
                    while q < s.count {
                        if s[q] == "_" { q += 1; continue }
                        guard let d = Int(String(Character(s[q])), radix: r) else { break }
                        _ = d
                        digits.unicodeScalars.append(s[q])
                        q += 1
                    }
                    guard !digits.isEmpty, let v = Int(digits, radix: r) else { throw fail("invalid integer literal", p) }
                    tokens.append(JToken(kind: .int, int: v, loc: l))
                    return q
                }
            }
            var q = scanDigits(p, isDigit)
            var isFloat = false
            let afterDot = p > 0 && s[p - 1] == "."
            if !afterDot {
                if q + 1 < s.count, s[q] == ".", isDigit(s[q + 1]) {
                    q = scanDigits(q + 1, isDigit)
                    isFloat = true
                }
                if q < s.count, s[q] == "e" || s[q] == "E" {
                    var e = q + 1
                    if e < s.count, s[e] == "+" || s[e] == "-" { e += 1 }
                    let d = scanDigits(e, isDigit)
                    if d > e { q = d; isFloat = true }
                }
            }
            let text = String(jString(s[p..<q]).filter { $0 != "_" })
            if isFloat {
                guard let v = Double(text) else { throw fail("invalid float literal", p) }
                tokens.append(JToken(kind: .float, float: v, loc: l))
            } else {
                guard let v = Int(text) else { throw fail("integer literal too large", p) }
                tokens.append(JToken(kind: .int, int: v, loc: l))
            }
            return q
        }
        if isNameStart(c) {
            var q = p + 1
            while q < s.count, isNameChar(s[q]) { q += 1 }
            tokens.append(JToken(kind: .name, text: jString(s[p..<q]), loc: l))
            return q
        }
        if c == "'" || c == "\"" {
            var q = p + 1
            while q < s.count, s[q] != c {
                if s[q] == "\\" { q += 1 }
                q += 1
            }
            guard q < s.count else { throw fail("unterminated string literal", p) }
            let value = try unescape(p + 1, q)
            tokens.append(JToken(kind: .string, text: value, loc: l))
            return q + 1
        }
        for op in ["//", "**", "==", "!=", ">=", "<="] where at(p, op) {
            tokens.append(JToken(kind: .op, text: op, loc: l))
            return p + 2
        }
        switch c {
        case "+", "-", "/", "*", "%", "~", ">", "<", "=", ".", ":", "|", ",", ";":
            break
        case "(": stack.append(")")
        case "[": stack.append("]")
        case "{": stack.append("}")
        case ")", "]", "}":
            guard let expected = stack.popLast() else { throw fail("unexpected '\(c)'", p) }
            guard expected == c else { throw fail("unexpected '\(c)', expected '\(expected)'", p) }
        default:
            throw fail("unexpected character '\(c.escaped(asASCII: false))'", p)
        }
        tokens.append(JToken(kind: .op, text: String(Character(c)), loc: l))
        return p + 1
    }

    /// Decodes a string literal body as Python's `unicode-escape` codec does (what jinja applies).
    func unescape(_ start: Int, _ end: Int) throws(LKError) -> String {
        var out = ""
        var i = start
        func hex(_ n: Int) throws(LKError) -> Unicode.Scalar {
            guard i + n <= end else { throw fail("truncated \\x/\\u escape in string literal", i) }
            var v: UInt32 = 0
            for k in 0..<n {
                guard let d = Int(String(Character(s[i + k])), radix: 16) else {
                    throw fail("invalid \\x/\\u escape in string literal", i)
                }
                v = v * 16 + UInt32(d)
            }
            i += n
            guard let sc = Unicode.Scalar(v) else { throw fail("invalid code point in string literal", i) }
            return sc
        }
        while i < end {
            let c = s[i]
            if c != "\\" || i + 1 >= end {
                out.unicodeScalars.append(c)
                i += 1
                continue
            }
            let e = s[i + 1]
            i += 2
            switch e {
            case "\n": break
            case "\\": out.unicodeScalars.append("\\")
            case "'": out.unicodeScalars.append("'")
            case "\"": out.unicodeScalars.append("\"")
            case "a": out.unicodeScalars.append("\u{07}")
            case "b": out.unicodeScalars.append("\u{08}")
            case "f": out.unicodeScalars.append("\u{0C}")
            case "n": out.unicodeScalars.append("\n")
            case "r": out.unicodeScalars.append("\r")
            case "t": out.unicodeScalars.append("\t")
            case "v": out.unicodeScalars.append("\u{0B}")
            case "x": out.unicodeScalars.append(try hex(2))
            case "u": out.unicodeScalars.append(try hex(4))
            case "U": out.unicodeScalars.append(try hex(8))
            case "0"..."7":
                var v = e.value - 0x30
                var n = 1
                while n < 3, i < end, s[i].value >= 0x30, s[i].value <= 0x37 {
                    v = v * 8 + (s[i].value - 0x30)
                    i += 1
                    n += 1
                }
                out.unicodeScalars.append(Unicode.Scalar(v)!)
            default:
                out.unicodeScalars.append("\\")
                out.unicodeScalars.append(e)
            }
        }
        return out
    }
}

// MARK: - Parser

struct JinjaParser {
    var toks: [JToken]
    var i = 0
    var depth = 0
    var loopDepth = 0
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
        try enter(cur.loc)
        defer { depth -= 1 }
        var e = try parseOr()
        while isName("if") {
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
        var l = try parseAnd()
        while isName("or") {
            _ = advance()
            let r = try parseAnd()
            l = JExpr(kind: .or(l, r), loc: l.loc)
        }
        return l
    }

    mutating func parseAnd() throws(LKError) -> JExpr {
        var l = try parseNot()
        while isName("and") {
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
        var l = try parseConcat()
        while cur.kind == .op, cur.text == "+" || cur.text == "-" {
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
        var l = try parsePow()
        while cur.kind == .op, ["*", "/", "//", "%"].contains(cur.text) {
            let op = JBinOp(rawValue: advance().text)!
            let r = try parsePow()
            l = JExpr(kind: .binary(op, l, r), loc: l.loc)
        }
        return l
    }

    mutating func parsePow() throws(LKError) -> JExpr {
        var l = try parseUnary()
        while isOp("**") {
            _ = advance()
            let r = try parseUnary()
            l = JExpr(kind: .binary(.pow, l, r), loc: l.loc)
        }
        return l
    }

    mutating func parseUnary(withFilter: Bool = true) throws(LKError) -> JExpr {
        try enter(cur.loc)
        defer { depth -= 1 }
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
        var node = node
        while true {
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
        var node = node
        while true {
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
