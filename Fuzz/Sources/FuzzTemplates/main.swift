// Fuzz target templates: the chat-template engine (parser + interpreter), issue 17.
// Input: a template's source; it is parsed and, when it parses, rendered over a conversation with tool calls
// and tools, under small limits (so each input runs in milliseconds) and, for one input in 32 (by size), under
// the default limits with smaller budgets (`deepLimits`). Any error is fine; a crash, a sanitizer report, a
// leak or a hang (libFuzzer's -timeout) is a finding.
//
// Budgets: every bound here is small enough that work within it ends well inside libFuzzer's -timeout (20 s
// in Fuzz/run.sh) under AddressSanitizer on a loaded machine, so a timeout means work the limits failed to
// bound. The default allocation budget (1 GiB) is not: `{{ 'x' * 922374406-6854775807 }}` builds a 922 MB
// string within it, which takes longer than the timeout under ASan (legitimately expensive, not a bug; the
// regression timeout-c9787575). So the "default" case keeps the default depths, loop and
// step counts, and uses a 16 MiB allocation and output budget and a 2 s clock.
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

/// The defaults (depths 200 / 100, 1,000,000 loop iterations, 100,000,000 steps) with budgets for a fuzz run.
let deepLimits: TemplateLimits = {
    var l = TemplateLimits.default
    l.maxAllocatedBytes = 16 << 20
    l.maxOutputBytes = 16 << 20
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
    let limits = size % 32 == 0 ? deepLimits : fuzzLimits
    _ = try? template.render(messages: messages, addGenerationPrompt: size % 2 == 0, extra: extra, limits: limits)
    return 0
}

exit(lorakit_fuzz_run(CommandLine.argc, CommandLine.unsafeArgv, { fuzzTemplate($0, $1) }))
