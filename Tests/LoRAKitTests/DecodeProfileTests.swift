import Testing
@testable import LoRAKitCore
@testable import LoRAKitModel

/// `LlamaContext.profile` (issue 16's per-token decode profile): the parts add up to at most the wall time,
/// every part that ran has time, tokens / evaluations / hand-outs are counted, and the logits do not change.
@Suite struct DecodeProfileTests {
    @Test func profileCountsPartsAndLeavesLogitsAlone() throws {
        let m = try LlamaModel(gguf: LoRATests.q8Path)
        let a = try LoRATests.randomAdapter(m, targets: [.q, .v], rank: 4, alpha: 8, seed: 21)
        let plain = try LlamaContext(model: m, maxPositions: 64, threads: 2)
        let ctx = try LlamaContext(model: m, maxPositions: 64, threads: 2)
        try plain.attach(a)
        try ctx.attach(a)
        let prompt: [Int32] = [5, 77, 300, 2, 511, 42, 9]
        let p = DecodeProfile()
        ctx.profile = p
        let h0 = ctx.pool.handOutCount
        var mine = try ctx.evaluate(.tokens(prompt))
        var ref = try plain.evaluate(.tokens(prompt))
        #expect(mine == ref)
        for _ in 0..<5 {
            let next = Sampler.argmax(ref)
            mine = try ctx.evaluate(.tokens([next]))
            ref = try plain.evaluate(.tokens([next]))
            #expect(mine == ref)
        }
        #expect(p.tokens == prompt.count + 5)
        #expect(p.evaluations == 6)
        #expect(p.handOuts == ctx.pool.handOutCount - h0)
        expectEveryPartButSampling(p)
        // Detached: nothing more is counted.
        ctx.profile = nil
        _ = try ctx.evaluate(.tokens([1]))
        #expect(p.tokens == prompt.count + 5)
        p.reset()
        #expect(p.tokens == 0 && p.wallSeconds == 0 && p.seconds.allSatisfy { $0 == 0 })
    }

    /// `BatchContext.profile`: the same for a batch's steps (rows of all sequences as tokens, steps as
    /// evaluations), logits unchanged, LoRA groups counted as adapters.
    @Test func batchProfileCountsPartsAndLeavesLogitsAlone() throws {
        let m = try LlamaModel(gguf: LoRATests.q8Path)
        let a = try LoRATests.randomAdapter(m, targets: [.q, .v], rank: 4, alpha: 8, seed: 21)
        let b = try LoRATests.randomAdapter(m, targets: [.q, .v], rank: 4, alpha: 8, seed: 22)
        var outs: [[[Float]]] = []
        var profile: DecodeProfile? = nil
        for profiled in [false, true] {
            let ctx = try BatchContext(model: m, maxSequences: 3, maxPositions: 64, threads: 2)
            let ids = try (0..<3).map { _ in try ctx.addSequence() }
            try ctx.setAdapters([(a, 1)], for: ids[0])
            try ctx.setAdapters([(b, 0.5)], for: ids[1])
            let p = DecodeProfile()
            if profiled { ctx.profile = p; profile = p }
            let h0 = ctx.pool.handOutCount
            var logits = try ctx.step([(ids[0], [5, 77, 300]), (ids[1], [2, 511]), (ids[2], [42, 9, 8, 7])])
            var all = logits
            for _ in 0..<4 {
                logits = try ctx.step(ids.enumerated().map { ($1, [Sampler.argmax(logits[$0])]) })
                all += logits
            }
            outs.append(all)
            if profiled { #expect(p.handOuts == ctx.pool.handOutCount - h0) }
        }
        #expect(outs[0] == outs[1])
        let p = try #require(profile)
        #expect(p.tokens == 9 + 4 * 3)
        #expect(p.evaluations == 5)
        expectEveryPartButSampling(p)
    }

    /// Every part of an evaluation has time, sampling none (not sampled inside), and the parts add up to
    /// at most the wall time.
    func expectEveryPartButSampling(_ p: DecodeProfile) {
        for part: DecodeProfile.Part in [.embedding, .baseProducts, .adapters, .attention, .norm, .rope, .residual,
                                         .activation, .head] {
            #expect(p.seconds[part.rawValue] > 0, "\(part.label)")
        }
        #expect(p.seconds[DecodeProfile.Part.sampling.rawValue] == 0)
        let parts = p.seconds.reduce(0, +)
        #expect(parts <= p.wallSeconds, "parts \(parts) s, wall \(p.wallSeconds) s")
    }
}
