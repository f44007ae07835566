import Testing
@testable import LoRAKitCore
@testable import LoRAKitKernels
@testable import LoRAKitFormats
@testable import LoRAKitTokenizer
@testable import LoRAKitTemplates
@testable import LoRAKitModel
@testable import LoRAKitTraining
#if canImport(Glibc)
import Glibc
#endif

@Suite struct JSONTests {
    func expectError(_ text: String, _ contains: String, sourceLocation: SourceLocation = #_sourceLocation) {
        do {
            let v = try JSON.parse(text, path: "t.json")
            Issue.record("accepted \(text.debugDescription) as \(v)", sourceLocation: sourceLocation)
        } catch {
            #expect(error.message.contains(contains), "\(text.debugDescription): \(error.message)", sourceLocation: sourceLocation)
        }
    }

    @Test func parsesValues() throws {
        let v = try JSON.parse(#" { "a" : [1, -2.5, 3e2, 0, -0.0, 1E-2, true, false, null], "b": {"c": "d"}, "a2": "" } "#)
        #expect(v["a"] == .array([.number(1), .number(-2.5), .number(300), .number(0), .number(-0.0), .number(0.01),
                                   .bool(true), .bool(false), .null]))
        #expect(v["b"]?["c"]?.string == "d")
        #expect(v["a2"]?.string == "")
        #expect(v["missing"] == nil)
        #expect(v.object?.map(\.0) == ["a", "b", "a2"])  // key order kept
        #expect(v["a"]?.array?[0].int == 1)
        #expect(v["a"]?.array?[1].int == nil)
        #expect(v["a"]?.array?[1].double == -2.5)
        #expect(v["a"]?.array?[6].bool == true)
        #expect(try JSON.parse("12345678901234567890").double == 12345678901234567890)
        #expect(try JSON.parse("-9007199254740993").double == -9007199254740993)
        #expect(try JSON.parse("[]") == .array([]))
        #expect(try JSON.parse("{}") == .object([]))
        #expect(try JSON.parse("\"x\"") == .string("x"))
        // Duplicate keys: kept in order, subscript returns the last one.
        let d = try JSON.parse(#"{"k":1,"k":2}"#)
        #expect(d.object?.count == 2 && d["k"]?.int == 2)
    }

    /// Numbers as Python's json.loads reads them: integers without fraction or exponent stay integers.
    @Test func integersAreIntegers() throws {
        #expect(try JSON.parse("[3, -0, 9223372036854775807, -9223372036854775808]") ==
                .array([.int(3), .int(0), .int(Int.max), .int(Int.min)]))
        if case .int = try JSON.parse("3") {} else { Issue.record("3 is not .int") }
        if case .number(let d) = try JSON.parse("3.0") { #expect(d == 3) } else { Issue.record("3.0 is not .number") }
        if case .number(let d) = try JSON.parse("1e3") { #expect(d == 1000) } else { Issue.record("1e3 is not .number") }
        if case .number(let d) = try JSON.parse("9223372036854775808") { #expect(d == 9223372036854775808) } else { Issue.record("2^63 is not .number") }
        // Equality across the cases is by value, exactly (as Python's 1 == 1.0).
        #expect(JSONValue.int(3) == .number(3) && JSONValue.number(3) == .int(3))
        #expect(JSONValue.int(9007199254740993) != .number(9007199254740992))
        #expect(JSONValue.int(1) != .number(1.5) && JSONValue.int(1) != .string("1"))
        #expect(JSONValue.int(7).int == 7 && JSONValue.int(7).double == 7.0 && JSONValue.number(7).int == 7)
        #expect(JSON.serialize(.array([.int(-12), .int(Int.max), .number(2.5)])) == "[-12,9223372036854775807,2.5]")
    }

    @Test func stringEscapes() throws {
        let v = try JSON.parse(#""a\"b\\c\/d\b\f\n\r\t\u0041\u00e9\u4e2d\ud83d\ude00""#)
        #expect(v.string == "a\"b\\c/d\u{8}\u{c}\n\r\tAé中😀")
        #expect(try JSON.parse("\"héllo 中文 😀\"").string == "héllo 中文 😀")
        #expect(try JSON.parse(#""\u0000""#).string == "\u{0}")
    }

    @Test func rejectsInvalid() {
        expectError("", "empty document")
        expectError("   ", "expected a value")
        expectError("[1,]", "expected a value")
        expectError("{\"a\":1,}", "expected a string key")
        expectError("[1 2]", "expected ',' or ']'")
        expectError("{\"a\" 1}", "expected ':'")
        expectError("{\"a\":1 \"b\":2}", "expected ',' or '}'")
        expectError("01", "leading zero")
        expectError("-", "expected a digit")
        expectError("1.", "expected a digit after '.'")
        expectError("1e", "exponent")
        expectError("+1", "unexpected '+'")
        expectError("NaN", "unexpected 'N'")
        expectError("[1] x", "after the JSON value")
        expectError("{} {}", "after the JSON value")
        expectError("tru", "expected 'true'")
        expectError("nul", "expected 'null'")
        expectError("\"abc", "unterminated string")
        expectError("\"a\nb\"", "raw control character")
        expectError(#""\x""#, "invalid escape")
        expectError(#""\u12""#, "\\u")
        expectError(#""\ud83d""#, "unpaired high surrogate")
        expectError(#""\ud83dx""#, "unpaired high surrogate")
        expectError(#""\ud83d\u0041""#, "not a low surrogate")
        expectError(#""\ude00""#, "unpaired low surrogate")
        expectError("'a'", "unexpected ''")
        expectError("[1] // c", "after the JSON value")
    }

    @Test func invalidUTF8IsRejected() {
        for bad: [UInt8] in [[0x22, 0xFF, 0x22], [0x22, 0xC3, 0x22], [0x22, 0x61, 0xED, 0xA0, 0x80, 0x22]] {
            #expect(throws: LKError.self) { try JSON.parse(bad) }
        }
    }

    @Test func errorPositionHasLineAndColumn() {
        do {
            _ = try JSON.parse("{\n  \"a\": 1,\n  \"b\": tru\n}", path: "f.json")
            Issue.record("accepted")
        } catch {
            #expect(error.message.hasPrefix("f.json:3:8:"), "\(error.message)")
        }
    }

    @Test func depthLimit() throws {
        let ok = String(repeating: "[", count: JSON.maxDepth) + String(repeating: "]", count: JSON.maxDepth)
        _ = try JSON.parse(ok)
        let deep = String(repeating: "[", count: JSON.maxDepth + 1) + String(repeating: "]", count: JSON.maxDepth + 1)
        expectError(deep, "nesting deeper than 512")
        // Very deep input fails cleanly instead of overflowing the stack.
        expectError(String(repeating: "[", count: 100_000), "nesting deeper")
    }

    @Test func serializeRoundTrip() throws {
        let v: JSONValue = .object([
            ("name", .string("q\"\\\n\t\u{1}é😀")), ("n", .number(3)), ("x", .number(0.1)), ("big", .number(1e300)),
            ("neg", .number(-7)), ("arr", .array([.null, .bool(true), .array([]), .object([])])),
        ])
        let compact = JSON.serialize(v, pretty: false)
        #expect(compact == #"{"name":"q\"\\\n\t\u0001é😀","n":3,"x":0.1,"big":1e+300,"neg":-7,"arr":[null,true,[],{}]}"#)
        #expect(try JSON.parse(compact) == v)
        let pretty = JSON.serialize(v, pretty: true)
        #expect(pretty.contains("\n  \"n\": 3,"))
        #expect(try JSON.parse(pretty) == v)
        #expect(JSON.serialize(.number(.nan)) == "null")
    }

    @Test func readFileErrorsNameThePath() throws {
        do {
            _ = try readFile("/nonexistent/dir/x.json")
            Issue.record("no error")
        } catch {
            #expect(error.message.contains("/nonexistent/dir/x.json"))
        }
        let path = temporaryPath("j.json")
        defer { unlink(path) }
        writeBytes(path, Array(#"{"k": [1, 2, 3]}"#.utf8))
        #expect(try JSON.parse(file: path)["k"]?.array?.count == 3)
    }

    /// A 5 MB document of the shape of a tokenizer.json parses quickly.
    @Test func largeDocumentIsFast() throws {
        var s = "{\"model\":{\"vocab\":{"
        for i in 0..<100_000 { s += (i > 0 ? "," : "") + "\"tok\\u00e9n\(i)\":\(i)" }
        s += "},\"merges\":["
        for i in 0..<100_000 { s += (i > 0 ? "," : "") + "\"a\(i) b\(i)\"" }
        s += "]}}"
        let bytes = Array(s.utf8)
        let clock = ContinuousClock()
        var v = JSONValue.null
        let t = try clock.measure { v = try JSON.parse(bytes) }
        #expect(v["model"]?["vocab"]?.object?.count == 100_000)
        #expect(v["model"]?["vocab"]?.object?[5].0 == "tokén5")
        print("JSON: parsed \(bytes.count) bytes in \(t)")
        #expect(t < .seconds(2))
    }
}
