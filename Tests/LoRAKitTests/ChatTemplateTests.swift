import Testing
#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif
@testable import LoRAKitCore
@testable import LoRAKitKernels
@testable import LoRAKitFormats
@testable import LoRAKitTokenizer
@testable import LoRAKitTemplates
@testable import LoRAKitModel
@testable import LoRAKitTraining

// MARK: - Fixture (Fixtures/chat/templates.json, written by scripts/gen_chat_fixtures.py with Python jinja2)

private func readTextFile(_ path: String) -> String? {
    guard let f = fopen(path, "rb") else { return nil }
    defer { fclose(f) }
    var bytes: [UInt8] = []
    var buf = [UInt8](repeating: 0, count: 1 << 16)
    while true {
        let n = fread(&buf, 1, buf.count, f)
        if n <= 0 { break }
        bytes += buf[0..<n]
    }
    return String(decoding: bytes, as: UTF8.self)
}

private enum ChatFixture {
    static let data: TemplateDictionary? = {
        let dir = String(#filePath.split(separator: "/", omittingEmptySubsequences: false).dropLast().joined(separator: "/"))
        for rel in ["Fixtures/chat/templates.json", "../../../Tests/LoRAKitTests/Fixtures/chat/templates.json"] {
            if let text = readTextFile(dir + "/" + rel), case .dict(let d)? = try? TemplateValue(json: text) { return d }
        }
        return nil
    }()

    static func list(_ key: String) -> [TemplateDictionary] {
        guard case .array(let a)? = data?[key] else { return [] }
        return a.compactMap { if case .dict(let d) = $0 { return d } else { return nil } }
    }

    static func string(_ d: TemplateDictionary, _ key: String) -> String? {
        if case .string(let s)? = d[key] { return s }
        return nil
    }

    static func dict(_ v: TemplateValue?) -> [String: TemplateValue] {
        guard case .dict(let d)? = v else { return [:] }
        var out: [String: TemplateValue] = [:]
        for (k, x) in d.entries { out[k] = x }
        return out
    }
}

/// Checks one fixture case: byte-exact output, or raise_exception → .invalidArgument(message), or another
/// Python exception → .format.
private func check(_ name: String, _ source: String, _ messages: [ChatMessage], _ agp: Bool,
                   _ extra: [String: TemplateValue], _ c: TemplateDictionary) {
    let template: ChatTemplate
    do {
        template = try ChatTemplate(source)
    } catch {
        Issue.record("\(name): parse failed: \(error)")
        return
    }
    let result: Result<String, LKError>
    do {
        result = .success(try template.render(messages: messages, addGenerationPrompt: agp, extra: extra))
    } catch {
        result = .failure(error)
    }
    if let expected = ChatFixture.string(c, "output") {
        switch result {
        case .success(let got): #expect(got == expected, "\(name)")
        case .failure(let e): Issue.record("\(name): threw \(e), expected output \(expected.debugDescription)")
        }
    } else if let message = ChatFixture.string(c, "raise") {
        switch result {
        case .success(let got): Issue.record("\(name): rendered \(got.debugDescription), expected raise_exception")
        case .failure(let e): #expect(e == .invalidArgument(message), "\(name)")
        }
    } else {
        switch result {
        case .success(let got): Issue.record("\(name): rendered \(got.debugDescription), expected an error (\(ChatFixture.string(c, "message") ?? ""))")
        case .failure(let e):
            guard case .format(let m) = e else { Issue.record("\(name): expected LKError.format, got \(e)"); return }
            #expect(m.hasPrefix("chat template: line "), "\(name): \(m)")
        }
    }
}

@Test func fixtureIsPresent() {
    #expect(ChatFixture.data != nil)
    #expect(ChatFixture.list("cases").count >= 200)
    #expect(ChatFixture.list("snippets").count >= 60)
}

@Test func realTemplatesMatchPythonJinja() {
    guard case .dict(let templates)? = ChatFixture.data?["templates"] else { Issue.record("no templates"); return }
    var families = Set<String>()
    for c in ChatFixture.list("cases") {
        guard let fam = ChatFixture.string(c, "template"), case .string(let source)? = templates[fam] else { continue }
        families.insert(fam)
        var messages: [ChatMessage] = []
        if case .array(let ms)? = c["messages"] {
            for m in ms {
                guard case .dict(let d) = m else { continue }
                messages.append(ChatMessage(role: ChatFixture.string(d, "role") ?? "", content: ChatFixture.string(d, "content") ?? ""))
            }
        }
        guard case .bool(let agp)? = c["add_generation_prompt"] else { continue }
        check(ChatFixture.string(c, "name") ?? fam, source, messages, agp, ChatFixture.dict(c["extra"]), c)
    }
    #expect(families == ["smollm2", "qwen2.5", "llama3", "llama2", "mistral", "mistral_v1", "zephyr", "gemma", "phi3"])
}

@Test func snippetsMatchPythonJinja() {
    let vars = ChatFixture.dict(ChatFixture.data?["snippet_vars"])
    for c in ChatFixture.list("snippets") {
        guard let source = ChatFixture.string(c, "source") else { continue }
        check(source, source, [], false, vars, c)
    }
}

// MARK: - API

@Test func smolLM2FromTheBrief() throws {
    let source = """
    {% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system
    You are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>
    ' }}{% endif %}{{'<|im_start|>' + message['role'] + '
    ' + message['content'] + '<|im_end|>' + '
    '}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant
    ' }}{% endif %}
    """
    let t = try ChatTemplate(source)
    let out = try t.render(messages: [ChatMessage(role: "user", content: "Hi!")], addGenerationPrompt: true)
    #expect(out == "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n"
        + "<|im_start|>user\nHi!<|im_end|>\n<|im_start|>assistant\n")
    let noGen = try t.render(messages: [ChatMessage(role: "system", content: "S")], addGenerationPrompt: false)
    #expect(noGen == "<|im_start|>system\nS<|im_end|>\n")
    #expect(t.source == source)
}

@Test func extraVariablesAndDefaults() throws {
    let t = try ChatTemplate("{{ bos_token }}|{{ tools is none }}|{{ documents is none }}|{{ add_generation_prompt }}|{{ messages | length }}|{{ custom.k[1] }}")
    let out = try t.render(messages: [ChatMessage(role: "user", content: "x")], addGenerationPrompt: true,
                           extra: ["bos_token": "<s>", "custom": ["k": [1, 2.5, nil]]])
    #expect(out == "<s>|True|True|True|1|2.5")
    // extra["messages"] replaces the messages (for tool calls and other fields).
    let m = try ChatTemplate("{{ messages[0].tool_calls[0].name }}")
    #expect(try m.render(messages: [], addGenerationPrompt: false,
                         extra: ["messages": [["role": "assistant", "tool_calls": [["name": "f"]]]]]) == "f")
}

@Test func raiseExceptionThrowsInvalidArgument() throws {
    let t = try ChatTemplate("a{% if messages | length == 0 %}{{ raise_exception('No messages: ' ~ 0) }}{% endif %}b")
    #expect(throws: LKError.invalidArgument("No messages: 0")) { try t.render(messages: [], addGenerationPrompt: false) }
    #expect(try t.render(messages: [ChatMessage(role: "user", content: "")], addGenerationPrompt: false) == "ab")
}

// MARK: - Expression evaluator

private func r(_ source: String, _ extra: [String: TemplateValue] = [:]) throws -> String {
    try ChatTemplate(source).render(messages: [], addGenerationPrompt: false, extra: extra)
}

@Test func expressionEvaluator() throws {
    #expect(try r("{{ 1 + 2 * 3 - 4 / 2 }}") == "5.0")
    #expect(try r("{{ -2 ** 2 }} {{ 2 ** 3 ** 2 }}") == "4 64")   // jinja: unary binds tighter; ** is left-assoc
    #expect(try r("{{ 'a' ~ 1 ~ 2.0 ~ none ~ true }}") == "a12.0NoneTrue")
    #expect(try r("{{ x | default('d') }} {{ x is defined }} {{ not x }} [{{ x }}]") == "d False True []")
    #expect(try r("{{ m['k'] }} {{ m.k }} {{ m.items() | list | length }}", ["m": ["k": "v"]]) == "v v 1")
    #expect(try r("{{ l[-1] }} {{ l[1:] }} {{ l | join(',') }}", ["l": [1, "b", 3.5]]) == "3.5 ['b', 3.5] 1,b,3.5")
    #expect(try r("{{ 'x' if a else 'y' }}", ["a": .bool(false)]) == "y")
    #expect(try r("{% set ns = namespace(n=0) %}{% for i in range(4) %}{% set ns.n = ns.n + i %}{% endfor %}{{ ns.n }}") == "6")
    #expect(try r("{{ '  Hi  '.strip() ~ '|' ~ 'a,b'.split(',') | length }}") == "Hi|2")
    #expect(try r("{{ [3, 1, 2] | sort | first }} {{ {'b': 1, 'a': 2} | tojson }}") == "1 {\"b\": 1, \"a\": 2}")
    #expect(try r("{% macro f(a, b=2) %}{{ a + b }}{% endmacro %}{{ f(1) }} {{ f(1, b=5) }}") == "3 6")
    #expect(pyFloatRepr(1e16) == "1e+16" && pyFloatRepr(1e15) == "1000000000000000.0" && pyFloatRepr(1.5e-7) == "1.5e-07")
    #expect(pyFloatRepr(0.1 + 0.2) == "0.30000000000000004" && pyFloatRepr(-2.5) == "-2.5" && pyFloatRepr(123.0) == "123.0")
}

@Test func templateValueJSON() throws {
    let v = try TemplateValue(json: #"{"b": [1, 2.0, "x\u00e9\ud83d\ude80\n", true, null], "a": {}}"#)
    guard case .dict(let d) = v else { Issue.record("not a dict"); return }
    #expect(d.keys == ["b", "a"])
    #expect(d["b"] == [1, 2.0, "xé🚀\n", true, nil])
    #expect(throws: LKError.self) { try TemplateValue(json: "[1, 2") }
    #expect(throws: LKError.self) { try TemplateValue(json: String(repeating: "[", count: 10_000)) }
}

// MARK: - Errors for malformed templates

private func formatError(_ source: String, render: Bool = false) -> String? {
    do {
        let t = try ChatTemplate(source)
        if render { _ = try t.render(messages: [], addGenerationPrompt: false) }
        return nil
    } catch {
        if case .format(let m) = error { return m }
        return "unexpected error kind: \(error)"
    }
}

@Test func malformedTemplatesReportLineAndColumn() {
    #expect(formatError("Hello {{ name") == "chat template: line 1, column 14: unexpected end of template: the '{{' tag at line 1, column 7 is not closed")
    #expect(formatError("a\n{% if x %}b") == "chat template: line 2, column 12: unexpected end of template: the 'if' block opened at line 2, column 4 is not closed (expected 'elif' or 'else' or 'endif')")
    #expect(formatError("x\n  {{ y | nofilter }}") == "chat template: line 2, column 10: no filter named 'nofilter'")
    #expect(formatError("{{ y is nottest }}") == "chat template: line 1, column 9: no test named 'nottest'")
    #expect(formatError("{% endfor %}") == "chat template: line 1, column 4: unknown tag 'endfor'")
    #expect(formatError("{% for x in y %}{% endif %}") == "chat template: line 1, column 20: unknown tag 'endif' inside the 'for' block opened at line 1, column 4")
    #expect(formatError("{# never closed") == "chat template: line 1, column 1: missing end of comment tag")
    #expect(formatError("{{ (1, 2] }}") == "chat template: line 1, column 9: unexpected ']', expected ')'")
    #expect(formatError("{{ 'abc }}") == "chat template: line 1, column 4: unterminated string literal")
    #expect(formatError("{{ 1 + }}") == "chat template: line 1, column 8: expected an expression, got 'end of print statement'")
    #expect(formatError("{% break %}") == "chat template: line 1, column 4: 'break' outside of a for loop")
    #expect(formatError("{{ x.y }}", render: true) == "chat template: line 1, column 6: 'x' is undefined")
    #expect(formatError("{{ 1 + 'a' }}", render: true) == "chat template: line 1, column 4: unsupported operand type(s) for +: 'int' and 'str'")
}

@Test func deepNestingIsAnErrorNotACrash() {
    let parens = String(repeating: "(", count: 5000) + "1" + String(repeating: ")", count: 5000)
    #expect(formatError("{{ \(parens) }}")?.contains("nested too deeply") == true)
    let blocks = String(repeating: "{% if true %}", count: 500) + String(repeating: "{% endif %}", count: 500)
    #expect(formatError(blocks)?.contains("nested too deeply") == true)
    let sum = "{{ " + Array(repeating: "1", count: 5000).joined(separator: " + ") + " }}"
    #expect(formatError(sum, render: true)?.contains("too deeply") == true)
    let nots = "{{ " + String(repeating: "not ", count: 5000) + "x }}"
    #expect(formatError(nots)?.contains("nested too deeply") == true)
    #expect(formatError("{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}", render: true)?.contains("too deep") == true)
    #expect(formatError("{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}", render: true)?.contains("too many loop iterations") == true)
}
