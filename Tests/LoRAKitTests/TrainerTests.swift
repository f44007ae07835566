import Testing
import Foundation
@testable import LoRAKitCore
@testable import LoRAKitKernels
@testable import LoRAKitFormats
@testable import LoRAKitTokenizer
@testable import LoRAKitTemplates
@testable import LoRAKitModel
@testable import LoRAKitTraining

/// Tests of the training forward/backward: finite-difference gradient checks on the tiny models (f32 and
/// q8_0 bases, every target module, input embeddings, dropout), thread-count invariance, early stop of
/// the backward below the lowest adapter layer, agreement of the training forward with the inference
/// context, and bad input.
@Suite struct TrainerTests {
    static let f32Path = fixturePath("model/tiny-llama-f32.gguf")
    static let q8Path = fixturePath("model/tiny-llama-q8_0.gguf")

    /// Two sequences of different lengths with a few non-target tokens.
    static func batch(seed: UInt64 = 7) -> [TrainSequence] {
        var rng = SplitMix64(seed: seed)
        var out: [TrainSequence] = []
        for len in [13, 20] {
            var ids: [Int32] = [], flags: [Bool] = []
            for j in 0..<len {
                ids.append(Int32(rng.next() % 512))
                flags.append(j > 0 && rng.next() % 5 != 0)
            }
            out.append(TrainSequence(tokens: ids, isTarget: flags))
        }
        return out
    }

    static func meanLoss(_ t: LoRATrainer, _ b: [TrainSequence]) throws -> Double {
        let r = try t.pass(b, gradients: false)
        return r.sumNLL / Double(r.predicted)
    }

    /// Directional finite difference of the mean loss along a random direction of one tensor, against the
    /// analytic gradient: returns (analytic g·d, central difference).
    static func directional(_ t: LoRATrainer, _ b: [TrainSequence], _ p: TrainableTensor, eps: Float,
                            seed: UInt64) throws -> (Double, Double) {
        t.zeroGradients()
        _ = try t.pass(b, gradients: true)
        var rng = SplitMix64(seed: seed)
        var d = [Float](repeating: 0, count: p.count)
        for i in d.indices { d[i] = rng.nextFloat() * 2 - 1 }
        var analytic = 0.0
        for i in d.indices { analytic += Double(p.grad[i]) * Double(d[i]) }
        let saved = p.array
        for i in d.indices { p.values[i] = saved[i] + eps * d[i] }
        let lp = try meanLoss(t, b)
        for i in d.indices { p.values[i] = saved[i] - eps * d[i] }
        let lm = try meanLoss(t, b)
        for i in d.indices { p.values[i] = saved[i] }
        return (analytic, (lp - lm) / (2 * Double(eps)))
    }

    static func allModulesAdapter(_ model: LlamaModel, layers: [Int]? = nil, rsLoRA: Bool = false) throws -> LoRAAdapter {
        try LoRAAdapter.create(for: model, config: LoRAConfig(rank: 4, alpha: 8, useRSLoRA: rsLoRA,
                                                              targets: Set(LinearModule.allCases), layers: layers),
                               initialization: .random(seed: 3))
    }

    @Test(arguments: ["f32", "q8_0"])
    func finiteDifferenceEveryModule(_ which: String) throws {
        let model = try LlamaModel(gguf: which == "f32" ? Self.f32Path : Self.q8Path)
        let tr = try LoRATrainer(model: model, adapter: try Self.allModulesAdapter(model, rsLoRA: which == "q8_0"),
                                 threads: 2)
        let b = Self.batch()
        var checked = 0
        for (i, p) in tr.parameters.enumerated() {
            let (g, fd) = try Self.directional(tr, b, p, eps: 1e-2, seed: UInt64(100 + i))
            // f32 loss noise (~1e-6) / 2ε plus ε² curvature terms: 1e-3 absolute + 1% relative.
            #expect(abs(g - fd) <= 1e-3 + 0.01 * abs(g), "\(which) \(p.name): analytic \(g) vs finite difference \(fd)")
            if abs(g) > 1e-3 { checked += 1 }
        }
        // The check must have teeth: most directional derivatives are clearly non-zero.
        #expect(checked >= tr.parameters.count * 3 / 4, "only \(checked) of \(tr.parameters.count) derivatives are non-trivial")
    }

    @Test func finiteDifferenceWithDropout() throws {
        let model = try LlamaModel(gguf: Self.f32Path)
        let tr = try LoRATrainer(model: model, adapter: try Self.allModulesAdapter(model), threads: 2, dropout: 0.25,
                                 dropoutSeed: 11)
        let b = Self.batch(seed: 9)
        for (i, p) in tr.parameters.enumerated() where i % 3 == 0 {
            let (g, fd) = try Self.directional(tr, b, p, eps: 1e-2, seed: UInt64(300 + i))
            #expect(abs(g - fd) <= 1e-3 + 0.01 * abs(g), "dropout \(p.name): analytic \(g) vs finite difference \(fd)")
        }
        // Dropout changes the loss (the masks are applied) and is deterministic for a seed.
        let l1 = try Self.meanLoss(tr, b), l2 = try Self.meanLoss(tr, b)
        #expect(l1 == l2)
        tr.dropout = 0
        #expect(abs(try Self.meanLoss(tr, b) - l1) > 1e-4)
    }

    @Test func inputEmbeddingGradient() throws {
        let model = try LlamaModel(gguf: Self.f32Path)
        let c = model.config
        let tr = try LoRATrainer(model: model, adapter: try Self.allModulesAdapter(model, layers: [1]), threads: 2)
        var rng = SplitMix64(seed: 5)
        let p = 4
        var prefix = [Float](repeating: 0, count: p * c.dim)
        for i in prefix.indices { prefix[i] = (rng.nextFloat() * 2 - 1) * 0.5 }
        let ids: [Int32] = [3, 99, 250, 17, 400, 8, 77, 301, 12, 45]
        var seq = TrainSequence(tokens: ids, isTarget: [Bool](repeating: true, count: ids.count), prefixEmbeddings: prefix)
        #expect(seq.predictedCount == ids.count)
        let r = try tr.pass([seq], gradients: false, inputGradients: true)
        #expect(r.predicted == ids.count)
        let g = try #require(r.inputGradients?.first)
        #expect(g.count == (p + ids.count) * c.dim)
        var d = [Float](repeating: 0, count: prefix.count)
        for i in d.indices { d[i] = rng.nextFloat() * 2 - 1 }
        var analytic = 0.0
        for i in d.indices { analytic += Double(g[i]) * Double(d[i]) }
        let eps: Float = 1e-2
        func loss(_ sign: Float) throws -> Double {
            var s = seq
            for i in d.indices { s.prefixEmbeddings[i] = prefix[i] + sign * eps * d[i] }
            return try Self.meanLoss(tr, [s])
        }
        let fd = (try loss(1) - loss(-1)) / (2 * Double(eps))
        #expect(abs(analytic) > 1e-2)
        #expect(abs(analytic - fd) <= 1e-3 + 0.01 * abs(analytic), "input gradient \(analytic) vs \(fd)")
        // Token rows get a gradient too (it is dLoss/d(embedding row)); the last row predicts nothing, but
        // it is attended by no one either: its gradient is exactly zero.
        let last = g[((p + ids.count - 1) * c.dim)...]
        #expect(last.allSatisfy { $0 == 0 })
        seq.prefixEmbeddings[0] = .nan
        #expect(throws: LKError.self) { try tr.pass([seq], gradients: true) }
    }

    @Test func gradientsIndependentOfThreadsAndEarlyStop() throws {
        let model = try LlamaModel(gguf: Self.q8Path)
        let adapter = try Self.allModulesAdapter(model, layers: [1])
        let b = Self.batch(seed: 21)
        func grads(_ threads: Int, input: Bool) throws -> ([[Float]], Double) {
            let tr = try LoRATrainer(model: model, adapter: adapter, threads: threads)
            tr.zeroGradients()
            let r = try tr.pass(b, gradients: true, inputGradients: input)
            return (tr.parameters.map(\.gradArray), r.sumNLL)
        }
        let (g1, l1) = try grads(1, input: false)
        let (g2, l2) = try grads(2, input: false)
        let (g3, _) = try grads(2, input: true)
        #expect(l1 == l2)
        #expect(g1 == g2, "gradients differ between 1 and 2 threads")
        #expect(g2 == g3, "stopping the backward at the lowest adapter layer changed the gradients")
        #expect(g1.allSatisfy { $0.contains { $0 != 0 } })
    }

    /// The training forward (one GEMM per module over the whole batch, per-sequence attention) gives the
    /// same per-token NLL as the inference context evaluating each sequence alone.
    @Test func trainingForwardMatchesContext() throws {
        let model = try LlamaModel(gguf: Self.q8Path)
        let adapter = try Self.allModulesAdapter(model)
        let tr = try LoRATrainer(model: model, adapter: adapter, threads: 2)
        let b = Self.batch(seed: 33)
        let r = try tr.pass(b, gradients: false)
        var ref = 0.0
        var count = 0
        for s in b {
            let ctx = try LlamaContext(model: model, threads: 2)
            try ctx.attach(adapter)
            let logits = try ctx.evaluate(.tokens(s.tokens), logits: .all)
            let v = model.config.vocabSize
            for j in 1..<s.tokens.count where s.isTarget[j] {
                let row = logits[((j - 1) * v)..<(j * v)]
                let m = Double(row.max()!)
                let lse = m + log(row.reduce(0.0) { $0 + exp(Double($1) - m) })
                ref += lse - Double(row[row.startIndex + Int(s.tokens[j])])
                count += 1
            }
        }
        #expect(r.predicted == count)
        #expect(abs(r.sumNLL - ref) / ref < 2e-5, "training forward \(r.sumNLL) vs context \(ref)")
    }

    @Test func adapterRoundTripAndBadInput() throws {
        let model = try LlamaModel(gguf: Self.f32Path)
        let adapter = try Self.allModulesAdapter(model)
        let tr = try LoRATrainer(model: model, adapter: adapter, threads: 1)
        // Snapshot equals the start values; loading it back is the identity.
        let snap = try tr.adapter()
        for k in adapter.keys {
            #expect(snap.module(k.layer, k.module)!.a.toFloats() == adapter.module(k.layer, k.module)!.a.toFloats())
            #expect(snap.module(k.layer, k.module)!.b.toFloats() == adapter.module(k.layer, k.module)!.b.toFloats())
        }
        tr.parameters[0].values[0] += 1
        try tr.load(adapter)
        #expect(tr.parameters[0].values[0] == adapter.module(0, .q)!.a.f32[0])
        // Bad input: clear errors, nothing changed.
        let before = tr.parameters.map(\.array)
        #expect(throws: LKError.self) { try tr.pass([], gradients: true) }
        #expect(throws: LKError.self) { try tr.pass([TrainSequence(tokens: [1, 2], isTarget: [true])], gradients: true) }
        #expect(throws: LKError.self) { try tr.pass([TrainSequence(tokens: [1, 512], isTarget: [false, true])], gradients: true) }
        #expect(throws: LKError.self) { try tr.pass([TrainSequence(tokens: [1, -1], isTarget: [false, true])], gradients: true) }
        #expect(throws: LKError.self) {
            try tr.pass([TrainSequence(tokens: [1], isTarget: [false], prefixEmbeddings: [1, 2, 3])], gradients: true)
        }
        #expect(throws: LKError.self) { try LoRATrainer(model: model, adapter: adapter, dropout: 1) }
        #expect(tr.parameters.map(\.array) == before)
        // A batch with nothing to predict has zero loss and leaves the gradients at zero.
        tr.zeroGradients()
        let r = try tr.pass([TrainSequence(tokens: [1, 2, 3], isTarget: [true, false, false])], gradients: true)
        #expect(r.predicted == 0 && r.sumNLL == 0)
        #expect(tr.parameters.allSatisfy { $0.gradArray.allSatisfy { $0 == 0 } })
    }
}
