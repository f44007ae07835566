import Testing
import Foundation
@testable import LoRAKitCore
@testable import LoRAKitKernels
@testable import LoRAKitFormats
@testable import LoRAKitTokenizer
@testable import LoRAKitTemplates
@testable import LoRAKitModel
@testable import LoRAKitTraining

/// Training parity with PyTorch + PEFT (Fixtures/train, written by scripts/gen_train_fixture.py; see its
/// README): the loss and every adapter tensor's gradient at step 0, and the gradient with respect to the
/// input embeddings, against the same model, adapter and tokens.
@Suite struct TrainParityTests {
    static let dir = fixturePath("train/")

    static func reference() throws -> JSONValue { try JSON.parse(file: dir + "reference.json") }
    static func examples(_ file: String) throws -> [(ids: [Int32], targets: [Bool])] {
        let ex = try JSON.parse(file: dir + "examples.json")
        return try #require(ex[file]?["examples"]?.array).map { e in
            (e["ids"]!.array!.map { Int32($0.int!) }, e["targets"]!.array!.map { $0.int! != 0 })
        }
    }

    static func sequence(_ e: (ids: [Int32], targets: [Bool]), seq: Int) -> TrainSequence {
        TrainSequence(tokens: Array(e.ids.prefix(seq)), isTarget: Array(e.targets.prefix(seq)))
    }

    @Test func stepZeroLossAndGradientsMatchPEFT() throws {
        let model = try LlamaModel.load(path: Self.dir + "model")
        let adapter = try LoRAAdapter.load(path: Self.dir + "text_all/init", model: model)
        let ref = try Self.reference()["runs"]!["text_all"]!
        let step0 = ref["steps"]!.array![0]
        let ex = try Self.examples("text.jsonl")
        let batch = step0["examples"]!.array![0].array!.map { Self.sequence(ex[$0.int!], seq: 24) }
        for threads in [1, 2] {
            let tr = try LoRATrainer(model: model, adapter: adapter, threads: threads)
            tr.zeroGradients()
            let r = try tr.pass(batch, gradients: true)
            #expect(r.predicted == step0["n_target_tokens"]!.int!)
            let loss = try #require(step0["loss"]?.double)
            #expect(abs(r.meanNLL - loss) / loss < 1e-5, "step 0 loss \(r.meanNLL) vs PEFT \(loss)")
            let norms = try #require(ref["step0_grad_norms"]?.object)
            #expect(norms.count == tr.parameters.count)
            var total = 0.0
            for (name, v) in norms {
                let p = try #require(tr.parameters.first { $0.name == name }, "no trainable tensor \(name)")
                let g = p.gradArray.reduce(0.0) { $0 + Double($1) * Double($1) }
                total += g
                let want = v.double!
                #expect(abs(g.squareRoot() - want) / want < 1e-4, "\(name): |grad| \(g.squareRoot()) vs PEFT \(want)")
            }
            let gn = step0["grad_norm"]!.double!
            #expect(abs(total.squareRoot() - gn) / gn < 1e-4)
        }
    }

    @Test func inputEmbeddingGradientMatchesPyTorch() throws {
        let model = try LlamaModel.load(path: Self.dir + "model")
        let adapter = try LoRAAdapter.load(path: Self.dir + "text_all/init", model: model)
        let check = try #require(try Self.reference()["runs"]?["text_all"]?["embedding_grad_check"])
        let ids = check["ids"]!.array!.map { Int32($0.int!) }
        let targets = check["targets"]!.array!.map { $0.int! != 0 }
        let tr = try LoRATrainer(model: model, adapter: adapter, threads: 2)
        let r = try tr.pass([TrainSequence(tokens: ids, isTarget: targets)], gradients: false, inputGradients: true)
        let loss = check["loss"]!.double!
        #expect(abs(r.meanNLL - loss) / loss < 1e-5)
        let g = try #require(r.inputGradients?.first)
        let want = check["grad_inputs_embeds"]!.array!.flatMap { $0.array!.map { Float($0.double!) } }
        #expect(g.count == want.count)
        let maxAbs = Float(check["grad_inputs_embeds_max_abs"]!.double!)
        var worst: Float = 0
        for (a, b) in zip(g, want) { worst = max(worst, abs(a - b)) }
        #expect(worst / maxAbs < 1e-4, "input-embedding gradient max |Δ| \(worst) (max |g| \(maxAbs))")
    }

    /// The three fixture runs end to end through `TrainingSession` (data files → tokenization → batches →
    /// forward/backward → clipping → AdamW → schedule): every step's loss, learning rate and gradient
    /// norm, and the final adapter, against PyTorch + PEFT.
    @Test(arguments: ["text_all", "pc_qv_rslora", "chat_ov"])
    func trainingRunMatchesPEFT(_ run: String) throws {
        let model = try LlamaModel.load(path: Self.dir + "model")
        let ref = try #require(try Self.reference()["runs"]?[run])
        let s = ref["settings"]!
        var o = TrainingOptions()
        o.initAdapter = Self.dir + run + "/init"
        o.shuffle = false
        o.batchSize = s["batch"]!.int!
        o.gradAccum = s["grad_accum"]!.int!
        o.steps = s["steps"]!.int!
        o.data = TrainDataOptions(seq: s["seq"]!.int!)
        o.threads = 2
        let clip = s["max_grad_norm"]!.double!
        o.optimizer = OptimizerConfig(lr: s["lr"]!.double!, weightDecay: s["weight_decay"]!.double!,
                                      maxGradNorm: clip > 0 ? clip : nil)
        let sched = s["schedule"]!
        o.schedule = try LRScheduleKind(parsing: sched["type"]!.string!)
        o.warmupSteps = sched["warmup_steps"]?.int ?? 0
        let session = try TrainingSession(model: model, trainPath: Self.dir + s["data"]!.string!, options: o)
        let steps = ref["steps"]!.array!
        #expect(session.totalSteps == steps.count)
        for want in steps {
            let got = try session.trainStep()
            let i = want["step"]!.int!
            #expect(got.predicted == want["n_target_tokens"]!.int!, "\(run) step \(i): predicted tokens")
            let wl = want["loss"]!.double!, wlr = want["lr"]!.double!, wg = want["grad_norm"]!.double!
            #expect(abs(got.loss - wl) / wl < 1e-4, "\(run) step \(i): loss \(got.loss) vs PEFT \(wl)")
            #expect(abs(got.lr - wlr) <= 1e-12 * max(1, wlr), "\(run) step \(i): lr \(got.lr) vs \(wlr)")
            #expect(abs(got.gradNorm - wg) / wg < 1e-4, "\(run) step \(i): grad norm \(got.gradNorm) vs PEFT \(wg)")
        }
        // Final adapter vs PEFT's (both read as PEFT files in the same row order).
        let mine = try session.adapter()
        let theirs = try LoRAAdapter.load(path: Self.dir + run + "/final", model: model)
        #expect(Set(mine.keys) == Set(theirs.keys))
        var worst: Float = 0
        for k in theirs.keys {
            let a = try mine.modules(for: theirs.rowLayout)[k]!, b = theirs.module(k.layer, k.module)!
            for (x, y) in zip(a.a.toFloats() + a.b.toFloats(), b.a.toFloats() + b.b.toFloats()) { worst = max(worst, abs(x - y)) }
        }
        #expect(worst < 1e-4, "\(run): final adapter max |Δ| \(worst) vs PEFT")
    }
}
