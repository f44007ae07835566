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
