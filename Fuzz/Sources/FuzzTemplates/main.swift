// Fuzz target templates: the chat-template engine (parser + interpreter), issue 17.
// Input: a template's source; it is parsed and, when it parses, rendered over a conversation with tool calls and tools, under small limits (so each input runs in milliseconds) and,
// for one input in 32 (by size), under the default limits. Any error is fine; a crash, a sanitizer report, a leak or a
// hang (libFuzzer's -timeout) is a finding.
import LoRAKit
import FuzzDriver
#if canImport(Glibc)
import Glibc
#endif

let fuzzLimits: TemplateLimits = {
    var l = TemplateLimits()
    l.maxOutputBytes = 1 << 20
    l.maxAllocatedBytes = 32 << 20
    l.maxLoopIterations = 20_000
    l.maxSteps = 300_000
    l.maxSeconds = 2
    return l
}()

let messages = [
    ChatMessage(role: "system", content: "You are a pirate."),
    ChatMessage(role: "user", content: "Hi 👋 {{ not a template }}"),
    ChatMessage(role: "assistant", content: "Arr."),
    ChatMessage(role: "user", content: "Weather in Zürich?"),
]

let extra: [String: TemplateValue] = [
    "bos_token": "<s>", "eos_token": "</s>",
    "tools": [["type": "function", "function": ["name": "get_weather", "description": "Weather in a city",
                                                  "parameters": ["type": "object", "properties": ["city": ["type": "string"]],
                                                                 "required": ["city"]]]]],
    "n": 7, "f": 2.5, "items": [3, 1, 2], "d": ["b": 1, "a": [1, 2], "c": ["x": nil]],
]

func fuzzTemplate(_ data: UnsafePointer<UInt8>?, _ size: Int) -> Int32 {
    guard let data else { return 0 }
    let source = String(decoding: UnsafeBufferPointer(start: data, count: size), as: UTF8.self)
    guard let template = try? ChatTemplate(source, limits: fuzzLimits) else { return 0 }
    let limits = size % 32 == 0 ? TemplateLimits.default : fuzzLimits
    _ = try? template.render(messages: messages, addGenerationPrompt: size % 2 == 0, extra: extra, limits: limits)
    return 0
}

exit(lorakit_fuzz_run(CommandLine.argc, CommandLine.unsafeArgv, { fuzzTemplate($0, $1) }))
