import Testing
import Foundation
@testable import LoRAKitCore
@testable import LoRAKitKernels
@testable import LoRAKitModel
@testable import LoRAKitTraining

/// `LoRATrainer.keptActivations = .f16`: the activations the backward reads rounded to f16 between a
/// layer's forward and its backward, against the f32 default on the tiny models.
@Suite struct TrainKeptActivationsTests {
    /// One pass with gradients: (sum NLL, every parameter's gradient, the input rows' gradients).
    static func run(_ tr: LoRATrainer, _ b: [TrainSequence]) throws -> (Double, [[Float]], [[Float]]) {
        tr.zeroGradients()
        let r = try tr.pass(b, gradients: true, inputGradients: true)
        return (r.sumNLL, tr.parameters.map(\.gradArray), r.inputGradients ?? [])
    }

    /// Largest |a − r| over max |r| of two gradient lists.
    static func worst(_ a: [[Float]], _ r: [[Float]]) -> Double {
        var w = 0.0
        for (x, y) in zip(a, r) {
            let scale = Double(y.map { abs($0) }.max()!)
            let d = Double(zip(x, y).map { abs($0 - $1) }.max()!)
            w = max(w, scale > 0 ? d / scale : d)
        }
        return w
    }

    /// The loss is the f32 one bit for bit (the forward still computes in f32); the gradients of every
    /// LoRA parameter and of the input rows differ from the f32 ones by f16 rounding only (and do differ:
    /// the activations really are rounded); the same for 1 and 2 threads; back to `.f32` on the same
    /// trainer gives the f32 gradients bit for bit. Every module adapted, f32 and q8_0 tiny models.
    @Test(arguments: ["f32", "q8_0"])
    func f16KeepingMatchesF32WithinRounding(_ which: String) throws {
        let model = try LlamaModel(gguf: which == "f32" ? TrainerTests.f32Path : TrainerTests.q8Path)
        let adapter = try TrainerTests.allModulesAdapter(model)
        let b = TrainerTests.batch(seed: 23)
        let ref = try Self.run(try LoRATrainer(model: model, adapter: adapter, threads: 2), b)
        #expect(ref.1.allSatisfy { $0.contains { $0 != 0 } }, "every parameter should get a gradient")

        let tr = try LoRATrainer(model: model, adapter: adapter, threads: 2)
        tr.keptActivations = .f16
        let half = try Self.run(tr, b)
        #expect(half.0 == ref.0, "the loss should not depend on how activations are kept: \(half.0) vs \(ref.0)")
        let wp = Self.worst(half.1, ref.1), wx = Self.worst(half.2, ref.2)
        #expect(wp > 0, "f16 keeping left every parameter gradient bitwise unchanged: the activations were not rounded")
        #expect(wp <= 1e-2, "parameter gradients: largest relative difference \(wp)")
        #expect(wx <= 1e-2, "input gradients: largest relative difference \(wx)")

        let one = try LoRATrainer(model: model, adapter: adapter, threads: 1)
        one.keptActivations = .f16
        let h1 = try Self.run(one, b)
        #expect(h1.0 == half.0 && h1.1 == half.1 && h1.2 == half.2, "f16 keeping differs between 1 and 2 threads")

        // A shorter batch on buffers sized for the longer one (only its rows are rounded and widened) gives
        // what a trainer sized for it gives.
        let short = Array(b.prefix(1))
        let fresh = try LoRATrainer(model: model, adapter: adapter, threads: 2)
        fresh.keptActivations = .f16
        let want = try Self.run(fresh, short), got = try Self.run(tr, short)
        #expect(got.0 == want.0 && got.1 == want.1 && got.2 == want.2, "a shorter batch on larger f16 buffers differs")

        tr.keptActivations = .f32
        let back = try Self.run(tr, b)
        #expect(back.0 == ref.0 && back.1 == ref.1 && back.2 == ref.2, "back to f32: gradients differ from a fresh f32 trainer")
    }

    /// f16 keeping over several optimizer steps trains as f32 keeping does: losses within 0.5 % of the
    /// f32 run's at every step, and falling.
    @Test func f16KeepingTrainsLikeF32() throws {
        let model = try LlamaModel(gguf: TrainerTests.f32Path)
        let adapter32 = try TrainerTests.allModulesAdapter(model)
        let adapter16 = try TrainerTests.allModulesAdapter(model)
        let b = TrainerTests.batch(seed: 5)
        func losses(_ adapter: LoRAAdapter, _ kept: KeptActivations) throws -> [Double] {
            let tr = try LoRATrainer(model: model, adapter: adapter, threads: 2)
            tr.keptActivations = kept
            var params: [OptimizerParameter] = []
            for p in tr.parameters {
                let (v, g) = try p.tensors()
                params.append(try OptimizerParameter(name: p.name, value: v, grad: g))
            }
            let opt = try AdamW(parameters: params, config: OptimizerConfig(lr: 1e-2, maxGradNorm: nil))
            var out: [Double] = []
            for s in 0..<6 {
                tr.zeroGradients()
                out.append(try tr.pass(b, gradients: true, step: s).meanNLL)
                try opt.step(lr: 1e-2)
            }
            return out
        }
        let l32 = try losses(adapter32, .f32), l16 = try losses(adapter16, .f16)
        #expect(l16[0] == l32[0])
        #expect(l32.last! < l32.first! - 0.5, "the f32 run should learn: \(l32)")
        // AdamW at this large rate amplifies the rounding step by step (its update is the gradient's sign
        // where the second moment is small); the curves stay within 0.5 % of each other, against a fall of
        // more than 0.5 over the six steps.
        for (s, (a, r)) in zip(l16, l32).enumerated() {
            #expect(abs(a - r) <= 5e-3 * max(1, abs(r)), "step \(s): loss \(a) (f16 keeping) vs \(r) (f32)")
        }
    }

    /// The estimate of the activation memory: f16 keeping saves half of the seven kept buffers of every
    /// layer and adds one f32 working set; on SmolLM2's shape at 512 rows, 374 → 232 MiB.
    @Test func activationBytesCountsTheF16Copies() throws {
        let model = try LlamaModel(gguf: TrainerTests.f32Path)
        let c = model.config
        let n = 40
        let f32 = LoRATrainer.activationBytes(config: c, rows: n, maxRank: 8, adapterModules: 3)
        let f16 = LoRATrainer.activationBytes(config: c, rows: n, maxRank: 8, adapterModules: 3, kept: .f16)
        let kept = n * (2 * c.qDim + 2 * c.kvDim + c.dim + 2 * c.hiddenDim)
        #expect(f32 - f16 == c.nLayers * kept * 2 - kept * 4)
        var smol = c
        smol.dim = 576; smol.nHeads = 9; smol.nKVHeads = 3; smol.headDim = 64; smol.ropeDims = 64
        smol.hiddenDim = 1536; smol.nLayers = 30
        smol.vocabSize = 49152
        let a = LoRATrainer.activationBytes(config: smol, rows: 512, maxRank: 8, adapterModules: 60)
        let h = LoRATrainer.activationBytes(config: smol, rows: 512, maxRank: 8, adapterModules: 60, kept: .f16)
        #expect(a / 1_048_576 == 374 && h / 1_048_576 == 232, "\(a / 1_048_576) → \(h / 1_048_576) MiB")
    }
}
