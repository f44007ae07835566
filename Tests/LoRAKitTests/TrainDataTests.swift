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

/// A ChatML template like SmolLM2's (without its default system prompt).
let chatMLTemplate = """
{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}
"""

/// Write `text` to a fresh temporary file and return its path.
func writeTempFile(_ name: String, _ text: String) throws -> String {
    let path = "/tmp/lorakit-traindata-\(getpid())-\(name)"
    try AtomicFile.write(path: path, bytes: Array(text.utf8))
    return path
}

@Suite struct TrainDataTests {
    /// The tiny byte-level BPE fixture: 36 tokens, BOS `<|endoftext|>` (0) added by its post-processor,
    /// `<|im_start|>` (1), `<|im_end|>` (2, used as EOS here).
    static let tok: Tokenizer = try! Tokenizer(tokenizerJSON: fixturePath("tokenizer/tiny_tokenizer.json"), eos: "<|im_end|>")

    func encoder(template: String? = chatMLTemplate) throws(LKError) -> TrainEncoder {
        var tpl: ChatTemplate? = nil
        if let template { tpl = try ChatTemplate(template) }
        return TrainEncoder(tokenizer: TrainDataTests.tok, chatTemplate: tpl)
    }

    func encode(_ s: String) -> [Int32] { TrainDataTests.tok.encode(s, addBOS: false, addEOS: false) }

    @Test func parsesTheThreeShapes() throws {
        let text = "\u{FEFF}{\"text\": \"hello\"}\r\n\n   \n{\"prompt\": \"a\", \"completion\": \"b\", \"id\": 7}\n" +
            "{\"messages\": [{\"role\": \"user\", \"content\": \"hi\"}, {\"role\": \"narrator\", \"content\": \"\"}]}"
        let recs = try TrainRecord.parseJSONL(Array(text.utf8), path: "d.jsonl")
        #expect(recs.map(\.line) == [1, 4, 5])
        #expect(recs[0].record == .text("hello"))
        #expect(recs[1].record == .promptCompletion(prompt: "a", completion: "b"))
        #expect(recs[2].record == .messages([ChatMessage(role: "user", content: "hi"), ChatMessage(role: "narrator", content: "")]))
    }

    @Test func malformedLinesAreListedWithLineNumbers() throws {
        let lines = [
            "{\"text\": \"ok\"}",                                    // 1
            "{\"text\": 3}",                                         // 2
            "not json",                                              // 3
            "",                                                      // 4 (blank)
            "{\"prompt\": \"p\"}",                                   // 5
            "{\"messages\": []}",                                    // 6
            "{\"messages\": [{\"role\": \"user\"}]}",                // 7
            "[1, 2]",                                                // 8
            "{\"text\": \"a\", \"messages\": []}",                   // 9
            "{\"other\": 1}",                                        // 10
            "{\"messages\": [{\"role\": 1, \"content\": \"x\"}]}",   // 11
            "{\"completion\": \"c\"}",                               // 12
            "{\"text\": \"unterminated}",                            // 13
        ]
        do {
            _ = try TrainRecord.parseJSONL(Array(lines.joined(separator: "\n").utf8), path: "bad.jsonl")
            Issue.record("accepted")
        } catch {
            let m = error.message
            #expect(m.hasPrefix("bad.jsonl: 11 bad lines:"), "\(m)")
            for needle in ["bad.jsonl:2: \"text\" must be a string, found a number",
                           "bad.jsonl:3: invalid JSON at column 1",
                           "bad.jsonl:5: \"prompt\" without \"completion\"",
                           "bad.jsonl:6: \"messages\" is empty",
                           "bad.jsonl:7: messages[0] has no \"content\"",
                           "bad.jsonl:8: expected a JSON object",
                           "bad.jsonl:9: ambiguous record",
                           "bad.jsonl:10: no \"text\"",
                           "bad.jsonl:11: messages[0].role must be a string",
                           "bad.jsonl:12: \"completion\" without \"prompt\"",
                           "… and 1 more"] {
                #expect(m.contains(needle), "missing \(needle) in\n\(m)")
            }
            #expect(!m.contains("bad.jsonl:13"), "only 10 problems are listed")
            if case .format = error {} else { Issue.record("expected .format, got \(error)") }
        }
        // One problem: a single line, no header.
        do {
            _ = try TrainRecord.parseJSONL(Array("{\"text\": \"a\"}\n{\"text\": null}\n".utf8), path: "one.jsonl")
            Issue.record("accepted")
        } catch {
            #expect(error.message == "one.jsonl:2: \"text\" must be a string, found null")
        }
    }

    @Test func textAndPromptCompletionRules() throws {
        let enc = try encoder()
        let tok = TrainDataTests.tok
        #expect(tok.addBOS && tok.bos == 0 && tok.eos == 2)
        let t = try enc.encode(.text("the cat"))
        #expect(t.tokens == [0] + encode("the cat") + [2])
        #expect(t.isTarget == [false] + [Bool](repeating: true, count: t.tokens.count - 1))

        let pc = try enc.encode(.promptCompletion(prompt: "Q: hi", completion: " A: ho"))
        let p = [0] + encode("Q: hi"), c = encode(" A: ho")
        #expect(pc.tokens == p + c + [2])
        #expect(pc.isTarget == [Bool](repeating: false, count: p.count) + [Bool](repeating: true, count: c.count + 1))
        let all = try enc.encode(.promptCompletion(prompt: "Q: hi", completion: " A: ho"), completionOnlyLoss: false)
        #expect(all.tokens == pc.tokens)
        #expect(all.isTarget == [false] + [Bool](repeating: true, count: pc.tokens.count - 1))
        // Without BOS the first prompt token is still not a target; an empty prompt makes the first
        // completion token token 0, which is never a target.
        let noBOS = TrainEncoder(tokenizer: tok, chatTemplate: nil, addBOS: false)
        let e = try noBOS.encode(.promptCompletion(prompt: "", completion: "ab"))
        #expect(e.tokens == encode("ab") + [2])
        #expect(e.isTarget == [false] + [Bool](repeating: true, count: e.tokens.count - 1))
    }

    @Test func messagesTargetTheAssistantTurns() throws {
        let enc = try encoder()
        let msgs = [ChatMessage(role: "system", content: "be brief"), ChatMessage(role: "user", content: "hi"),
                    ChatMessage(role: "assistant", content: "hello there"), ChatMessage(role: "user", content: "and?"),
                    ChatMessage(role: "assistant", content: "that's it")]
        let ex = try enc.encode(.messages(msgs))
        // Segments written out by hand.
        let segs: [(String, Bool)] = [
            ("<|im_start|>system\nbe brief<|im_end|>\n<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n", false),
            ("hello there<|im_end|>\n", true),
            ("<|im_start|>user\nand?<|im_end|>\n<|im_start|>assistant\n", false),
            ("that's it<|im_end|>\n", true),
        ]
        var tokens: [Int32] = [], targets: [Bool] = []
        for (s, t) in segs { let ids = encode(s); tokens += ids; targets += [Bool](repeating: t, count: ids.count) }
        targets[0] = false
        #expect(ex.tokens == tokens)
        #expect(ex.isTarget == targets)
        #expect(!ex.tokens.contains(0), "no BOS unless the template writes it")
        #expect(zip(ex.tokens, ex.isTarget).filter { $0.1 }.map { $0.0 } == encode("hello there<|im_end|>\n") + encode("that's it<|im_end|>\n"))
        let all = try enc.encode(.messages(msgs), completionOnlyLoss: false)
        #expect(all.tokens == ex.tokens)
        #expect(all.isTarget == [false] + [Bool](repeating: true, count: ex.tokens.count - 1))
        // No assistant turn: no targets with completion-only loss.
        #expect(try enc.encode(.messages([ChatMessage(role: "user", content: "x")])).targetCount == 0)
    }

    @Test func messagesErrors() throws {
        // A template that marks the last message renders turns differently once more follow: the prefix rule fails.
        let odd = "{% for m in messages %}{% if loop.last %}[LAST]{% endif %}{{ m.role }}: {{ m.content }}\n{% endfor %}{% if add_generation_prompt %}assistant: {% endif %}"
        let text = "{\"text\": \"fine\"}\n{\"messages\": [{\"role\": \"user\", \"content\": \"u\"}, {\"role\": \"assistant\", \"content\": \"a\"}]}\n"
        let path = try writeTempFile("odd.jsonl", text)
        defer { unlink(path) }
        do {
            _ = try TrainDataset.load(path: path, encoder: try encoder(template: odd))
            Issue.record("accepted")
        } catch {
            #expect(error.message.hasPrefix("\(path):2: the chat template's rendering up to the generation prompt before messages[1] is not a prefix"), "\(error)")
        }
        do {
            _ = try TrainDataset.load(path: path, encoder: try encoder(template: nil))
            Issue.record("accepted")
        } catch {
            #expect(error.message == "\(path):2: a \"messages\" record needs a chat template, and the model has none", "\(error)")
        }
        // A template error is reported with the line.
        let raising = "{{ raise_exception('roles must alternate') }}"
        do {
            _ = try TrainDataset.load(path: path, encoder: try encoder(template: raising))
            Issue.record("accepted")
        } catch {
            #expect(error.message.contains("\(path):2: the chat template failed to render") && error.message.contains("roles must alternate"), "\(error)")
        }
    }

    @Test func truncationAndSkipping() throws {
        let enc = try encoder()
        let long = String(repeating: "ab ", count: 40)
        let lines = [
            "{\"text\": \"\(long)\"}",                                            // long: truncated
            "{\"prompt\": \"\(long)\", \"completion\": \"zz\"}",                  // completion cut off: skipped
            "{\"prompt\": \"q\", \"completion\": \"a\"}",                         // short
            "{\"messages\": [{\"role\": \"user\", \"content\": \"no answer\"}]}", // no assistant: skipped
        ]
        let path = try writeTempFile("trunc.jsonl", lines.joined(separator: "\n") + "\n")
        defer { unlink(path) }
        let d = try TrainDataset.load(path: path, encoder: enc, options: TrainDataOptions(seq: 16))
        #expect(d.recordCount == 4)
        #expect(d.examples.map(\.line) == [1, 3])
        #expect(d.truncatedCount == 2)
        #expect(d.skippedNoTarget == 2)
        let full = try enc.encode(.text(long))
        #expect(d.examples[0].tokens == Array(full.tokens.prefix(16)))
        #expect(d.examples[0].isTarget == Array(full.isTarget.prefix(16)))
        #expect(d.summary.contains("2 truncated to 16 tokens") && d.summary.contains("2 skipped: no target token"), "\(d.summary)")
        // Truncation as an error names the lines.
        do {
            _ = try TrainDataset.load(path: path, encoder: enc, options: TrainDataOptions(seq: 16, truncation: .error))
            Issue.record("accepted")
        } catch {
            #expect(error.message.contains("\(path):1: example has \(full.tokens.count) tokens, more than seq = 16"), "\(error)")
            #expect(error.message.contains("\(path):2: example has"), "\(error)")
        }
        #expect(throws: LKError.self) { try TrainDataset.load(path: path, encoder: enc, options: TrainDataOptions(seq: 1)) }
        #expect(throws: LKError.self) { try TrainDataset.load(path: "/nonexistent/x.jsonl", encoder: enc) }
        // Nothing usable at all.
        let none = try writeTempFile("none.jsonl", "{\"messages\": [{\"role\": \"user\", \"content\": \"x\"}]}\n")
        defer { unlink(none) }
        #expect(throws: LKError.self) { try TrainDataset.load(path: none, encoder: enc) }
    }

    @Test func packing() throws {
        let enc = try encoder()
        let records: [(line: Int, record: TrainRecord)] = [
            (1, .text("one two three")),
            (2, .promptCompletion(prompt: "question", completion: " answer")),
            (3, .messages([ChatMessage(role: "user", content: "hey"), ChatMessage(role: "assistant", content: "yo")])),
            (4, .messages([ChatMessage(role: "user", content: "only a question, long enough to fill a row")])),
            (5, .text("end")),
        ]
        let seq = 12
        let d = try TrainDataset.build(records: records, encoder: enc, options: TrainDataOptions(seq: seq, packing: true), path: "mem")
        let parts = try records.map { try enc.encode($0.record, line: $0.line) }
        let allTokens = parts.flatMap(\.tokens), allTargets = parts.flatMap(\.isTarget)
        // Slow reference: cut the concatenation into rows of seq, clear each row's first flag, drop rows
        // without targets.
        var expected: [([Int32], [Bool])] = []
        var skipped = 0
        var i = 0
        while i < allTokens.count {
            let e = min(i + seq, allTokens.count)
            var t = Array(allTargets[i..<e])
            t[0] = false
            if t.contains(true) { expected.append((Array(allTokens[i..<e]), t)) } else { skipped += 1 }
            i = e
        }
        #expect(skipped >= 1, "the test needs a row without targets (record 4)")
        #expect(d.skippedNoTarget == skipped)
        #expect(d.examples.count == expected.count)
        for (row, (tk, tg)) in zip(d.examples, expected) {
            #expect(row.tokens == tk)
            #expect(row.isTarget == tg)
        }
        #expect(d.examples.dropLast().allSatisfy { $0.tokens.count == seq })
        #expect(d.truncatedCount == 0)
        #expect(d.examples[0].line == 1)
    }

    @Test func iteratorOrderAndEpochs() throws {
        let ex = (0..<10).map { TrainExample(tokens: [1, Int32($0 + 3)], isTarget: [false, true], line: $0 + 1) }
        // File order, batches of 4: 4, 4, 2, then the next epoch.
        var it = try TrainDataIterator(examples: ex, batchSize: 4, shuffle: false, seed: 0)
        #expect(it.batchesPerEpoch == 3)
        let b = (0..<4).map { _ in it.next() }
        #expect(b.map(\.exampleIndices) == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9], [0, 1, 2, 3]])
        #expect(b.map(\.epoch) == [0, 0, 0, 1])
        #expect(b[2].rows == [[1, 11], [1, 12]] && b[2].targets == [[false, true], [false, true]] && b[2].predictedCount == 2)
        // Shuffled order: values computed independently (Python) from the documented derivation.
        #expect(TrainDataIterator.epochOrder(count: 10, shuffle: true, seed: 42, epoch: 0) == [9, 4, 2, 8, 1, 3, 0, 6, 5, 7])
        #expect(TrainDataIterator.epochOrder(count: 10, shuffle: true, seed: 42, epoch: 1) == [0, 9, 1, 6, 2, 8, 3, 4, 7, 5])
        #expect(TrainDataIterator.epochOrder(count: 10, shuffle: true, seed: 42, epoch: 2) == [5, 3, 8, 6, 4, 0, 7, 1, 2, 9])
        #expect(TrainDataIterator.epochOrder(count: 7, shuffle: true, seed: UInt64.max, epoch: 5) == [4, 2, 5, 1, 6, 3, 0])
        var sh = try TrainDataIterator(examples: ex, batchSize: 3, shuffle: true, seed: 42)
        let e0 = (0..<4).flatMap { _ in sh.next().exampleIndices }
        #expect(e0 == [9, 4, 2, 8, 1, 3, 0, 6, 5, 7])
        #expect(sh.next().exampleIndices == [0, 9, 1])
        #expect(throws: LKError.self) { try TrainDataIterator(examples: ex, batchSize: 0, shuffle: false, seed: 0) }
        #expect(throws: LKError.self) { try TrainDataIterator(examples: [], batchSize: 1, shuffle: false, seed: 0) }
    }

    @Test func iteratorStateRoundTrip() throws {
        let ex = (0..<7).map { TrainExample(tokens: [1, Int32($0)], isTarget: [false, true], line: $0 + 1) }
        for cut in [0, 1, 2, 3, 5, 8] {
            var a = try TrainDataIterator(examples: ex, batchSize: 3, shuffle: true, seed: 12_345_678_901_234_567_890)
            for _ in 0..<cut { _ = a.next() }
            let json = try JSON.parse(JSON.serialize(a.state.json))
            var b = try TrainDataIterator(examples: ex, batchSize: 3, shuffle: true, seed: 12_345_678_901_234_567_890)
            try b.restore(try TrainDataIteratorState(json: json))
            for _ in 0..<8 { #expect(a.next() == b.next(), "after \(cut) batches") }
        }
        var a = try TrainDataIterator(examples: ex, batchSize: 3, shuffle: true, seed: 1)
        _ = a.next()
        let st = a.state
        #expect(st.epoch == 0 && st.index == 3)
        var other = try TrainDataIterator(examples: Array(ex.prefix(6)), batchSize: 3, shuffle: true, seed: 1)
        #expect(throws: LKError.self) { try other.restore(st) }
        var otherSeed = try TrainDataIterator(examples: ex, batchSize: 3, shuffle: true, seed: 2)
        #expect(throws: LKError.self) { try otherSeed.restore(st) }
        #expect(throws: LKError.self) { try TrainDataIteratorState(json: try JSON.parse("{\"epoch\": 0, \"index\": 9, \"examples\": 7, \"shuffle\": true, \"seed\": \"1\"}")) }
        #expect(throws: LKError.self) { try TrainDataIteratorState(json: try JSON.parse("{\"epoch\": 0, \"index\": 0, \"examples\": 7, \"shuffle\": true, \"seed\": 1}")) }
        // A different batch size continues from the same example.
        var c = try TrainDataIterator(examples: ex, batchSize: 2, shuffle: true, seed: 1)
        try c.restore(st)
        #expect(c.next().exampleIndices == Array(a.order[3..<5]))
    }

    @Test func validationBatchesAndOptionsJSON() throws {
        let enc = try encoder()
        let recs: [(line: Int, record: TrainRecord)] = (1...5).map { ($0, .text("x\($0)")) }
        let d = try TrainDataset.build(records: recs, encoder: enc, options: TrainDataOptions(seq: 64), path: "mem")
        let vb = try d.validationBatches(batchSize: 2)
        #expect(vb.map(\.exampleIndices) == [[0, 1], [2, 3], [4]])
        #expect(vb.reduce(0) { $0 + $1.predictedCount } == d.targetCount)
        let o = TrainDataOptions(seq: 77, completionOnlyLoss: false, truncation: .error, packing: true)
        #expect(try TrainDataOptions(json: try JSON.parse(JSON.serialize(o.json))) == o)
        #expect(throws: LKError.self) { try TrainDataOptions(json: try JSON.parse("{\"truncation\": \"middle\"}")) }
    }

    /// The real SmolLM2 tokenizer and chat template (skipped without LORAKIT_MODEL).
    @Test func realModelChatTemplate() throws {
        guard let model = RealModel.shared else { return }
        let tok = try model.requireTokenizer()
        let lines = [
            "{\"messages\": [{\"role\": \"user\", \"content\": \"What is 2+2?\"}, {\"role\": \"assistant\", \"content\": \"4.\"}]}",
            "{\"prompt\": \"The capital of France is\", \"completion\": \" Paris.\"}",
            "{\"text\": \"Hello world\"}",
        ]
        let path = try writeTempFile("real.jsonl", lines.joined(separator: "\n"))
        defer { unlink(path) }
        let d = try TrainDataset.load(path: path, model: model)
        #expect(d.examples.count == 3)
        func targets(_ e: TrainExample) throws -> String { try tok.decode(zip(e.tokens, e.isTarget).filter { $0.1 }.map { $0.0 }) }
        let m = d.examples[0]
        #expect(try targets(m) == "4.<|im_end|>\n")
        // SmolLM2's template adds its default system prompt; the whole row is the template's rendering.
        #expect(try tok.decode(m.tokens).hasPrefix("<|im_start|>system\nYou are a helpful AI assistant named SmolLM"))
        #expect(try tok.decode(m.tokens).hasSuffix("<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n4.<|im_end|>\n"))
        #expect(try targets(d.examples[1]) == " Paris.<|im_end|>")
        #expect(d.examples[2].tokens == tok.encode("Hello world", addBOS: tok.addBOS, addEOS: false) + [tok.eos!])
    }
}
