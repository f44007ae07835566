// The lexer for the Jinja2 subset used by chat templates. It follows jinja2/lexer.py with trim_blocks=True,
// lstrip_blocks=True, keep_trailing_newline=False: text, `{{ … }}`, `{% … %}` (with `-`/`+` whitespace control),
// `{# … #}` and `{% raw %}`; inside tags names, Python string/int/float literals and operators.

import LoRAKitCore

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

/// A String from scalars, encoded into UTF-8 bytes first (appending to `unicodeScalars` allocates per scalar:
/// 100 ns each, a tenth of a second for one `trim` of a 1 MB message).
func jString(_ scalars: ArraySlice<Unicode.Scalar>) -> String {
    var out: [UInt8] = []
    out.reserveCapacity(scalars.count)
    for c in scalars { UTF8.encode(c) { out.append($0) } }
    return String(decoding: out, as: UTF8.self)
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
        return JLoc(line: Int32(clamping: lo + 1), col: Int32(clamping: pos - lineStarts[lo] + 1))
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
