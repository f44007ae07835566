import Testing
import Foundation
@testable import LoRAKitCore
@testable import LoRAKitKernels
@testable import LoRAKitFormats
@testable import LoRAKitTokenizer
@testable import LoRAKitTemplates
@testable import LoRAKitModel
@testable import LoRAKitTraining

/// Training runs end to end: determinism (threads, resume), the progress callback, checkpoints on
/// failure, bad input, and the real model learning a fact.
@Suite struct TrainingSessionTests {
    static let dir = fixturePath("train/")

    static func tempDir(_ name: String) -> String {
        let d = NSTemporaryDirectory() + "lorakit-\(name)-\(getpid())-\(UInt64.random(in: 0..<UInt64.max))"
        try? FileManager.default.removeItem(atPath: d)
        return d
    }

    /// Shuffled data, dropout, gradient accumulation, warm-up + cosine: everything that could make two
    /// runs differ.
    static func options(out: String? = nil, threads: Int = 2, steps: Int = 8) -> TrainingOptions {
        var o = TrainingOptions()
        o.lora = LoRAConfig(rank: 4, alpha: 8, targets: [.q, .v, .down], dropout: 0.1)
        o.optimizer = OptimizerConfig(lr: 5e-3, weightDecay: 0.01, maxGradNorm: 1.0)
        o.schedule = .cosine
        o.warmupSteps = 2
        o.steps = steps
        o.batchSize = 3
        o.gradAccum = 2
        o.seed = 42
        o.threads = threads
        o.shuffle = true
        o.data = TrainDataOptions(seq: 32)
        o.outDir = out
        return o
    }

    static let model = Result { try LlamaModel.load(path: dir + "model") }
    static var data: String { dir + "data/text.jsonl" }

    @Test func sameSeedSameLossesWhateverTheThreads() throws {
        let m = try Self.model.get()
        let a = try TrainingSession(model: m, trainPath: Self.data, options: Self.options(threads: 1)).run()
        let b = try TrainingSession(model: m, trainPath: Self.data, options: Self.options(threads: 2)).run()
        #expect(a.losses.count == 8)
        #expect(a.losses == b.losses)
        var o = Self.options()
        o.seed = 43
        let c = try TrainingSession(model: m, trainPath: Self.data, options: o).run()
        #expect(c.losses != a.losses)
    }

    @Test func resumeGivesTheLossesOfAnUninterruptedRun() throws {
        let m = try Self.model.get()
        let full = try TrainingSession(model: m, trainPath: Self.data, options: Self.options()).run()
        let out = Self.tempDir("resume")
        defer { try? FileManager.default.removeItem(atPath: out) }
        // Stop after 3 steps (the run still writes a checkpoint and the adapter), then resume.
        var seen: [Int] = []
        let first = try TrainingSession(model: m, trainPath: Self.data, options: Self.options(out: out)).run { p in
            seen.append(p.step)
            return p.step < 3
        }
        #expect(seen == [1, 2, 3])
        #expect(first.stoppedByCallback && first.steps == 3)
        #expect(FileManager.default.fileExists(atPath: out + "/checkpoint-3/trainer_state.json"))
        #expect(FileManager.default.fileExists(atPath: out + "/adapter/adapter_model.safetensors"))
        var o = Self.options(out: out)
        o.resume = out
        let session = try TrainingSession(model: m, trainPath: Self.data, options: o)
        #expect(session.step == 3)
        let rest = try session.run()
        #expect(rest.losses == full.losses, "resumed \(rest.losses) vs uninterrupted \(full.losses)")
        // The final adapter on disk equals the uninterrupted run's.
        let a = try LoRAAdapter.load(path: out + "/adapter", model: m)
        let sessionFull = try TrainingSession(model: m, trainPath: Self.data, options: Self.options())
        _ = try sessionFull.run()
        let b = try sessionFull.adapter()
        for k in b.keys {
            #expect(a.module(k.layer, k.module)!.a.toFloats() == b.module(k.layer, k.module)!.a.toFloats())
            #expect(a.module(k.layer, k.module)!.b.toFloats() == b.module(k.layer, k.module)!.b.toFloats())
        }
    }

    @Test func nonFiniteLossStopsAndKeepsTheLastCheckpoint() throws {
        let m = try Self.model.get()
        let out = Self.tempDir("nan")
        defer { try? FileManager.default.removeItem(atPath: out) }
        var o = Self.options(out: out)
        o.saveEvery = 2
        let s = try TrainingSession(model: m, trainPath: Self.data, options: o)
        for _ in 0..<2 { _ = try s.trainStep() }
        try s.saveCheckpoint()
        let saved = try Data(contentsOf: URL(fileURLWithPath: out + "/checkpoint-2/adapter_model.safetensors"))
        let before = s.trainer.parameters.map(\.array)
        // Corrupt one value: the next step's loss is not finite.
        s.trainer.parameters[0].values[0] = .infinity
        #expect {
            _ = try s.trainStep()
        } throws: { e in
            (e as? LKError)?.message.contains("training step 3") == true
        }
        #expect(s.step == 2)
        // Nothing else was updated, and the checkpoint on disk is intact and loads.
        for (i, p) in s.trainer.parameters.enumerated() where i > 0 { #expect(p.array == before[i]) }
        #expect(try Data(contentsOf: URL(fileURLWithPath: out + "/checkpoint-2/adapter_model.safetensors")) == saved)
        let ck = try #require(try Checkpoint.loadLatest(dir: out, model: m))
        #expect(ck.step == 2)
    }

    @Test func badInputIsReported() throws {
        let m = try Self.model.get()
        let tmp = Self.tempDir("bad")
        try FileManager.default.createDirectory(atPath: tmp, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: tmp) }
        func fails(_ o: TrainingOptions, data: String = Self.data, _ needle: String) {
            #expect {
                _ = try TrainingSession(model: m, trainPath: data, options: o)
            } throws: { e in
                let msg = (e as? LKError)?.message ?? ""
                return msg.contains(needle)
            }
        }
        var o = Self.options()
        o.optimizer.lr = .nan
        fails(o, "lr")
        o = Self.options(); o.optimizer.lr = -1
        fails(o, "lr")
        o = Self.options(); o.lora.rank = 0
        fails(o, "rank")
        o = Self.options(); o.batchSize = 0
        fails(o, "batch")
        o = Self.options(); o.lora.dropout = 1
        fails(o, "dropout")
        fails(Self.options(), data: tmp + "/missing.jsonl", "missing.jsonl")
        FileManager.default.createFile(atPath: tmp + "/empty.jsonl", contents: Data())
        fails(Self.options(), data: tmp + "/empty.jsonl", "empty.jsonl")
        // Malformed lines are reported with their line numbers (bad.jsonl: lines 2, 4, 5, 7, 8, 9).
        for line in [2, 4, 5, 7, 8, 9] { fails(Self.options(), data: Self.dir + "data/bad.jsonl", "bad.jsonl:\(line):") }
        o = Self.options(); o.resume = tmp
        fails(o, "no checkpoint")
        // seq above the model's context (256) is capped, and said so.
        o = Self.options(); o.data = TrainDataOptions(seq: 1000)
        let capped = try TrainingSession(model: m, trainPath: Self.data, options: o)
        #expect(capped.options.data.seq == 256)
        #expect(capped.notes.contains { $0.contains("capped at the model's context of 256") })
        o = Self.options(); o.data = TrainDataOptions(seq: 16, truncation: .error)
        fails(o, "16")
        // A model without a tokenizer cannot read text data.
        let noTok = try LlamaModel.load(path: fixturePath("model/tiny-llama-hf"))
        #expect(throws: LKError.self) { try TrainingSession(model: noTok, trainPath: Self.data, options: Self.options()) }
    }

    /// Every option error names the field as C and Python do (the C ABI shows `params->field`, the CLI its
    /// flag), and the options are checked before any file is read.
    @Test func optionErrorsNameTheField() throws {
        let m = try Self.model.get()
        func field(_ edit: (inout TrainingOptions) -> Void) -> String? {
            var o = Self.options()
            edit(&o)
            do {
                try o.validate(for: m)
                return nil
            } catch {
                guard case .invalidOption(let f, _) = error else { return "not an option error: \(error)" }
                return f
            }
        }
        #expect(field { _ in } == nil)
        let cases: [(String, (inout TrainingOptions) -> Void)] = [
            ("rank", { $0.lora.rank = 0 }), ("rank", { $0.lora.rank = 4097 }), ("alpha", { $0.lora.alpha = .nan }),
            ("targets", { $0.lora.targets = [] }), ("layers[1]", { $0.lora.layers = [0, 2] }),
            ("layers[1]", { $0.lora.layers = [1, 1] }), ("layers[0]", { $0.lora.layers = [-1] }),
            ("dropout", { $0.lora.dropout = 1 }), ("lr", { $0.optimizer.lr = 0 }), ("lr", { $0.optimizer.lr = .infinity }),
            ("adam_beta1", { $0.optimizer.beta1 = 1 }), ("adam_beta2", { $0.optimizer.beta2 = -0.1 }),
            ("adam_epsilon", { $0.optimizer.eps = 0 }), ("weight_decay", { $0.optimizer.weightDecay = -1 }),
            ("max_grad_norm", { $0.optimizer.maxGradNorm = .nan }), ("warmup_steps", { $0.warmupSteps = -1 }),
            ("steps", { $0.steps = 0 }), ("epochs", { $0.steps = nil; $0.epochs = 0 }), ("batch", { $0.batchSize = 0 }),
            ("grad_accum", { $0.gradAccum = 65537 }), ("threads", { $0.threads = 0 }), ("seq", { $0.data.seq = 1 }),
            ("save_every", { $0.saveEvery = -1 }), ("keep", { $0.keep = 0 }), ("valid_every", { $0.validEvery = -1 }),
            ("out_dir", { $0.outDir = "" }), ("resume_dir", { $0.resume = "" }), ("log_path", { $0.logPath = "" }),
            ("init_adapter", { $0.initAdapter = "" }), ("lr_min_ratio", { $0.lrMinRatio = 2 }),
            ("lr_min_ratio", { $0.schedule = .linear; $0.lrMinRatio = 0.1 }),
        ]
        for (want, edit) in cases { #expect(field(edit) == want) }
        // With an initial adapter, the new adapter's settings are not used (but dropout is).
        #expect(field { $0.initAdapter = "x"; $0.lora.rank = 0 } == nil)
        #expect(field { $0.initAdapter = "x"; $0.lora.dropout = -1 } == "dropout")
        // The message is "field problem"; the session checks the options before reading any file.
        var o = Self.options()
        o.lora.rank = 0
        #expect(throws: LKError.invalidOption(field: "rank", problem: "0 must be in 1...4096")) {
            try TrainingSession(model: m, trainPath: "/nonexistent/train.jsonl", options: o)
        }
        #expect(LKError.invalidOption(field: "rank", problem: "0 must be in 1...4096").message == "rank 0 must be in 1...4096")
        #expect(LKError.invalidOption(field: "top_k", problem: "-1 must be ≥ 0").namingField { "--" + $0 }.message == "--top_k -1 must be ≥ 0")
    }

    /// The session's learning rates with lrMinRatio: the warm-up, then the cosine from the peak down to
    /// lr · lrMinRatio (options(): cosine, 2 warm-up steps, lr 5e-3), written in the log and the options.
    @Test func cosineWithMinimumRatio() throws {
        let m = try Self.model.get()
        var o = Self.options(steps: 6)
        o.lrMinRatio = 0.2
        let s = try TrainingSession(model: m, trainPath: Self.data, options: o)
        var lrs: [Double] = []
        _ = try s.run { lrs.append($0.lr); return true }
        let want = (0..<6).map { k -> Double in
            k < 2 ? 5e-3 * Double(k) / 2 : 5e-3 * (0.5 * (1 + cos(Double.pi * Double(k - 2) / 4)) * 0.8 + 0.2)
        }
        #expect(lrs.count == 6 && zip(lrs, want).allSatisfy { abs($0 - $1) <= 1e-18 }, "\(lrs) vs \(want)")
        #expect(s.options.json["lr_min_ratio"]?.double == 0.2 && Self.options().json["lr_min_ratio"] == nil)
    }

    /// A session without training data, driven step by step (zeroGradients, forwardBackward per sequence,
    /// optimizerStep with the schedule's learning rate), makes the data loop's updates on the same rows:
    /// the same losses, gradient norms and adapter. Its checkpoints resume it at its step; each kind of
    /// session refuses the other's calls.
    @Test func stepByStepMatchesTheDataLoop() throws {
        let m = try Self.model.get()
        let out = Self.tempDir("manual")
        defer { try? FileManager.default.removeItem(atPath: out) }
        var o = Self.options(out: out, steps: 4)
        o.lora.dropout = 0  // masks are keyed per pass: one pass per micro-batch vs one per sequence
        let loop = try TrainingSession(model: m, trainPath: Self.data, options: o)
        let manual = try TrainingSession(model: m, trainPath: nil, options: o)
        #expect(manual.train == nil && manual.schedule == nil && manual.totalSteps == 4 && loop.train != nil)
        let schedule = try #require(loop.schedule)
        let data = try TrainDataset.load(path: Self.data, model: m, options: o.data)
        var batches = try TrainDataIterator(examples: data.examples, batchSize: o.batchSize, shuffle: o.shuffle, seed: o.seed)
        for s in 0..<4 {
            let want = try loop.trainStep()
            let micro = (0..<o.gradAccum).map { _ in batches.next() }
            let n = micro.reduce(0) { $0 + $1.predictedCount }
            try manual.zeroGradients()
            var sum = 0.0
            for b in micro {
                for (tokens, targets) in zip(b.rows, b.targets) {
                    sum += try manual.forwardBackward(TrainSequence(tokens: tokens, isTarget: targets), lossScale: 1 / Float(n)).sumNLL
                }
            }
            let lr = schedule.lr(base: o.optimizer.lr, step: s)
            #expect(lr == want.lr)
            let norm = Double(try manual.optimizerStep(lr: lr))
            let loss = sum / Double(n)
            #expect(abs(loss - want.loss) <= 1e-6 * want.loss, "step \(s + 1): loss \(loss) vs \(want.loss)")
            #expect(abs(norm - want.gradNorm) <= 1e-4 * want.gradNorm, "step \(s + 1): grad norm \(norm) vs \(want.gradNorm)")
        }
        #expect(manual.step == 4 && manual.losses.isEmpty)
        let a = try loop.adapter(), b = try manual.adapter()
        #expect(a.keys == b.keys)
        var worst: Float = 0
        for k in a.keys {
            for (x, y) in [(a.modules[k]!.a, b.modules[k]!.a), (a.modules[k]!.b, b.modules[k]!.b)] {
                for (u, v) in zip(x.toFloats(), y.toFloats()) { worst = max(worst, abs(u - v)) }
            }
        }
        #expect(worst <= 1e-5, "adapter max |Δ| \(worst)")
        // Each kind refuses the other's calls.
        let seq = TrainSequence(tokens: [1, 2, 3], isTarget: [true, true, true])
        #expect(throws: LKError.self) { try loop.forwardBackward(seq, lossScale: 1) }
        #expect(throws: LKError.self) { try loop.optimizerStep(lr: 1e-3) }
        #expect(throws: LKError.self) { try manual.trainStep() }
        #expect(throws: LKError.self) { try manual.run() }
        #expect(throws: LKError.invalidArgument("lr nan must be a finite number ≥ 0")) { try manual.optimizerStep(lr: .nan) }
        // Checkpoints: a step-by-step session resumes from its own and from a data session's.
        try #require(try manual.saveCheckpoint() != nil)
        o.resume = out
        let resumed = try TrainingSession(model: m, trainPath: nil, options: o)
        #expect(resumed.step == 4)
        let b2 = try resumed.adapter()
        #expect(b2.keys.allSatisfy { b2.modules[$0]!.b.toFloats() == b.modules[$0]!.b.toFloats() })
        try loop.saveCheckpoint()  // checkpoint-4 again, now the data session's
        #expect(try TrainingSession(model: m, trainPath: nil, options: o).step == 4)
        // The data loop refuses to go past its total.
        #expect(throws: LKError.invalidArgument("all 4 steps are done (raise steps for more)")) { try loop.runStep() }
    }

    /// The real model learns a fact from eight chat examples: the validation loss (two held-out
    /// paraphrases) drops, and the greedy answer names the cat, which it did not before.
    @Test(.enabled(if: ProcessInfo.processInfo.environment["LORAKIT_MODEL"].map { !$0.isEmpty } ?? false,
                   "LORAKIT_MODEL not set: real-model training test SKIPPED"))
    func realModelLearnsAFact() throws {
        let m = try LlamaModel.load(path: ProcessInfo.processInfo.environment["LORAKIT_MODEL"]!)
        let data = fixturePath("train_real/")
        var o = TrainingOptions()
        o.lora = LoRAConfig(rank: 8, alpha: 16, targets: [.q, .v])
        o.optimizer = OptimizerConfig(lr: 2e-3, weightDecay: 0.01, maxGradNorm: 1.0)
        o.steps = 12
        o.batchSize = 4
        o.data = TrainDataOptions(seq: 96)
        o.seed = 1
        o.threads = 2
        let s = try TrainingSession(model: m, trainPath: data + "train.jsonl", validPath: data + "valid.jsonl", options: o)
        let before = try #require(try s.validationLoss())
        let question = [ChatMessage(role: "user", content: "What is the name of the lighthouse keeper's cat?")]
        func answer(_ adapter: LoRAAdapter?) throws -> String {
            let ctx = try LlamaContext(model: m, maxPositions: 256, threads: 2)
            if let a = adapter { try ctx.attach(a) }
            let tok = try m.requireTokenizer()
            let text = try ChatTemplate(m.chatTemplate!).render(messages: question, addGenerationPrompt: true)
            let prompt = tok.encode(text, addSpecial: false)
            var p = GenerateParams()
            p.maxTokens = 24
            p.sampler.temperature = 0
            return try generate(context: ctx, prompt: prompt, params: p).text
        }
        let base = try answer(nil)
        #expect(!base.contains("Marmalade"))
        let summary = try s.run()
        let after = try #require(summary.validLoss)
        #expect(after < before * 0.3, "validation loss \(before) → \(after)")
        #expect(summary.losses.last! < summary.losses.first! * 0.3)
        let tuned = try answer(try s.adapter())
        #expect(tuned.contains("Marmalade"), "after training the model answers: \(tuned)")
    }
}
