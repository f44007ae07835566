import Testing
@testable import LoRAKitCore
@testable import LoRAKitModel

/// Plugin adapters in a `BatchContext` (issue 13: "plugin types too"), mixed with LoRA adapters and with
/// none, against each sequence alone in a `LlamaContext` with the same adapters attached in the same
/// order. IA³ (`ia3_kvd`) rewrites the input of down_proj (an input point: the batch rewrites that group's
/// rows of the shared input before the one base product) and scales k/v outputs (output points); DoRA
/// (`dora_qv`) adds terms to q/v that read the base output.
@Suite(.serialized) struct BatchPluginTests {
    static func attach(_ c: LlamaContext, _ list: [(adapter: AnyAdapter, scale: Float)]) throws {
        for (a, s) in list { try c.attach(a, scale: s) }
    }

    @Test func pluginAdaptersInABatchMatchSingleContexts() throws {
        #expect(TestPlugins.loaded)
        let m = try LlamaModel.load(path: fixturePath("train/model"))
        let ia3 = try PluginAdapter.load(peftDirectory: fixturePath("plugins/tiny/ia3_kvd"), model: m)
        let dora = try PluginAdapter.load(peftDirectory: fixturePath("plugins/tiny/dora_qv"), model: m)
        let lora = try LoRATests.randomAdapter(m, targets: [.q, .v, .down], rank: 4, alpha: 8, seed: 9, name: "l")
        let sets: [[(adapter: AnyAdapter, scale: Float)]] = [
            [(.plugin(ia3), 1)], [(.plugin(dora), 1), (.lora(lora), 1)], [(.lora(lora), 0.5)], [],
            [(.plugin(ia3), 0.5), (.plugin(dora), 1.5)], [(.plugin(ia3), 1), (.lora(lora), -1)], [],
        ]
        let prompts: [[Int32]] = BatchContextTests.tinyPrompts + [[3, 1, 4, 1, 5, 9, 2, 6], BatchContextTests.tinyPrompts[0]]
        let b = try BatchContext(model: m, maxSequences: sets.count, maxPositions: 64, threads: 2)
        var ids: [Int] = []
        for s in sets {
            let id = try b.addSequence()
            try b.setAdapters(s, for: id)
            ids.append(id)
        }
        #expect(try b.adapters(of: ids[1]).map { $0.adapter.name } == [dora.name, lora.name])
        let refs = try sets.map { s throws -> LlamaContext in
            let c = try LlamaContext(model: m, maxPositions: 64, threads: 2)
            try BatchPluginTests.attach(c, s)
            return c
        }
        var inputs = ids.enumerated().map { (sequence: $1, tokens: prompts[$0]) }
        var worst: Float = 0
        var first: [[Float]] = []
        for step in 0..<6 {
            let out = try b.step(inputs)
            if step == 0 { first = out }
            var next: [(sequence: Int, tokens: [Int32])] = []
            for (i, inp) in inputs.enumerated() {
                let ref = try refs[i].evaluate(.tokens(inp.tokens))
                #expect(ref.count == out[i].count)
                for (x, y) in zip(ref, out[i]) { worst = max(worst, abs(x - y)) }
                #expect(Sampler.argmax(ref) == Sampler.argmax(out[i]), "sequence \(i), step \(step)")
                next.append((inp.sequence, [Sampler.argmax(out[i])]))
            }
            inputs = next
        }
        #expect(worst < 1e-3, "max |Δlogit| \(worst)")
        // The plugin adapters change the logits (sequence 0: IA³; sequence 6: the same prompt, no adapter).
        let effect = zip(first[0], first[6]).map { abs($0 - $1) }.max()!
        #expect(effect > 1e-2, "IA³ changed the logits by only \(effect)")
    }

    @Test func pluginSetsAreCheckedAndForksKeepThem() throws {
        #expect(TestPlugins.loaded)
        let m = try LlamaModel.load(path: fixturePath("train/model"))
        let ia3 = try PluginAdapter.load(peftDirectory: fixturePath("plugins/tiny/ia3_kvd"), model: m)
        let other = try LlamaModel.load(path: fixturePath("train/model"))
        let foreign = try PluginAdapter.load(peftDirectory: fixturePath("plugins/tiny/ia3_kvd"), model: other)
        let b = try BatchContext(model: m, maxSequences: 3, maxPositions: 32, threads: 2)
        let s = try b.addSequence()
        try b.setAdapters([(.plugin(ia3), 1)], for: s)
        #expect(throws: LKError.self) { try b.setAdapters([(.plugin(ia3), 1), (.plugin(ia3), 2)], for: s) }
        #expect(throws: LKError.self) { try b.setAdapters([(.plugin(ia3), .infinity)], for: s) }
        #expect(throws: LKError.self) { try b.setAdapters([(.plugin(foreign), 1)], for: s) }
        #expect(try b.adapters(of: s).count == 1)   // unchanged by the refused calls
        _ = try b.step([(s, [5, 6, 7])])
        let f = try b.fork(s)
        #expect(try b.adapters(of: f).map { ObjectIdentifier($0.adapter.object) } == [ObjectIdentifier(ia3)])
        let out = try b.step([(s, [8]), (f, [8])])
        #expect(out[0] == out[1])
        let ref = try LlamaContext(model: m, maxPositions: 32, threads: 2)
        try ref.attach(ia3)
        _ = try ref.evaluate(.tokens([5, 6, 7]))
        let r = try ref.evaluate(.tokens([8]))
        #expect(zip(r, out[1]).map { abs($0 - $1) }.max()! < 1e-4)
    }
}
