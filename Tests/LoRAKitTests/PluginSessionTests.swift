import Testing
import Foundation
@testable import LoRAKitCore
@testable import LoRAKitKernels
@testable import LoRAKitFormats
@testable import LoRAKitModel
@testable import LoRAKitTraining

/// Plugin adapters (IA³, DoRA) in the one trainer: `TrainingSession` with `adapterType` trains them with
/// the data loop, schedules, accumulation, checkpoints and exact resume, and saves PEFT folders that load
/// back to the same logits. And the mixed merge: LoRA with an input-side IA³ on the same module.
@Suite(.serialized) struct PluginSessionTests {
    static let model = Result { try LlamaModel.load(path: fixturePath("train/model")) }
    static var data: String { fixturePath("train/data/text.jsonl") }

    static func options(_ type: String, out: String? = nil, steps: Int = 6) -> TrainingOptions {
        var o = TrainingSessionTests.options(out: out, steps: steps)
        o.adapterType = type
        o.lora = LoRAConfig(rank: 4, alpha: 8, targets: type == "ia3" ? [.k, .v, .down] : [.q, .v], dropout: 0)
        o.optimizer = OptimizerConfig(lr: 2e-2, weightDecay: 0.01, maxGradNorm: 1.0)
        o.saveEvery = 2
        return o
    }

    static func values(_ a: PluginAdapter) -> [[Float]] {
        a.modules.flatMap { m in m.values.map { t in (0..<t.count).map { t.f32[$0] } } }
    }

    @Test(arguments: ["ia3", "dora"])
    func trainCheckpointResume(type: String) throws {
        #expect(TestPlugins.loaded)
        let m = try Self.model.get()
        // Uninterrupted.
        let fullSession = try TrainingSession(model: m, trainPath: Self.data, options: Self.options(type))
        let full = try fullSession.run()
        #expect(full.losses.count == 6)
        #expect(full.losses.last! < full.losses.first!, "\(type): losses \(full.losses)")
        guard case .plugin(let fullAdapter) = try fullSession.trainedAdapter() else {
            Issue.record("\(type): the session's adapter is not a plugin adapter"); return
        }
        #expect(fullAdapter.type.name == type)
        #expect(throws: LKError.self) { _ = try fullSession.adapter() }  // LoRA only

        // Stopped after 3 steps (checkpoint-2 and the final checkpoint-3 on disk), then resumed.
        let out = TrainingSessionTests.tempDir("plugin-\(type)")
        defer { try? FileManager.default.removeItem(atPath: out) }
        let first = try TrainingSession(model: m, trainPath: Self.data, options: Self.options(type, out: out)).run { $0.step < 3 }
        #expect(first.steps == 3)
        let cfg = try JSON.parse(file: out + "/checkpoint-3/adapter_config.json")
        #expect(cfg["peft_type"]?.string == (type == "ia3" ? "IA3" : "LORA"))
        let ck = try #require(try Checkpoint.loadLatest(dir: out, model: m))
        #expect(ck.step == 3 && ck.adapter == nil && ck.pluginAdapter?.type.name == type)
        var o = Self.options(type, out: out)
        o.resume = out
        let resumed = try TrainingSession(model: m, trainPath: Self.data, options: o)
        #expect(resumed.step == 3)
        let rest = try resumed.run()
        #expect(rest.losses == full.losses, "\(type): resumed \(rest.losses) vs uninterrupted \(full.losses)")
        print("plugin session \(type): losses \(full.losses.map { String(format: "%.6f", $0) }) (resumed: identical: \(rest.losses == full.losses))")

        // The final PEFT folder equals the uninterrupted adapter and scores the same.
        let saved = try PluginAdapter.load(peftDirectory: out + "/adapter", model: m)
        #expect(saved.type.name == type)
        var worst: Float = 0
        for (x, y) in zip(Self.values(saved), Self.values(fullAdapter)) {
            #expect(x.count == y.count)
            for (a, b) in zip(x, y) { worst = max(worst, abs(a - b)) }
        }
        #expect(worst <= 1e-6, "\(type): saved vs uninterrupted max |Δ| \(worst)")
        let ids: [Int32] = [1, 5, 9, 13, 2, 7, 4, 11]
        func logits(_ a: PluginAdapter) throws -> [Float] {
            let ctx = try LlamaContext(model: m, threads: 2)
            try ctx.attach(a, scale: 1)
            return try ctx.evaluate(.tokens(ids), logits: .all)
        }
        let la = try logits(saved), lb = try logits(fullAdapter)
        let d = zip(la, lb).map { abs($0 - $1) }.max()!
        #expect(d <= 1e-6, "\(type): logits of the saved adapter vs the trained one differ by \(d)")
        // The validation loss (the session's scorer) of the saved adapter equals the trainer's.
        let base = try LlamaContext(model: m, threads: 2)
        let lBase = try base.evaluate(.tokens(ids), logits: .all)
        #expect(zip(la, lBase).map { abs($0 - $1) }.max()! > 1e-4, "\(type): training changed nothing")
    }

    /// Plugin adapters train with the activations kept in f16 as with f32: the first loss bit for bit
    /// (the forward is f32 either way), every later one within 1 % (AdamW at 2e-2 amplifies the rounding),
    /// the curve falling.
    @Test(arguments: ["ia3", "dora"])
    func f16KeptActivationsTrainPluginsLikeF32(type: String) throws {
        #expect(TestPlugins.loaded)
        let m = try Self.model.get()
        var o = Self.options(type)
        let f32 = try TrainingSession(model: m, trainPath: Self.data, options: o).run().losses
        o.keptActivations = .f16
        #expect(o.json["kept_activations"]?.string == "f16")
        let f16 = try TrainingSession(model: m, trainPath: Self.data, options: o).run().losses
        #expect(f16.count == 6 && f16.first == f32.first, "\(type): first loss \(f16.first ?? .nan) vs \(f32.first ?? .nan)")
        #expect(f16.last! < f16.first!, "\(type): losses \(f16)")
        for (s, (a, r)) in zip(f16, f32).enumerated() {
            #expect(abs(a - r) <= 1e-2 * abs(r), "\(type) step \(s + 1): \(a) (f16 activations) vs \(r)")
        }
    }

    @Test func badPluginOptionsNameTheField() throws {
        #expect(TestPlugins.loaded)
        let m = try Self.model.get()
        func message(_ edit: (inout TrainingOptions) -> Void) -> String? {
            var o = Self.options("ia3")
            edit(&o)
            do { _ = try TrainingSession(model: m, trainPath: Self.data, options: o); return nil } catch { return error.message }
        }
        #expect(message { $0.adapterType = "loha" }?.contains("adapter_type \"loha\" is not an adapter type of any loaded plugin") == true)
        #expect(message { $0.lora.dropout = 0.1 }?.contains("dropout") == true)
        #expect(message { $0.format = .gguf }?.contains("format") == true)
        #expect(message { $0.adapterConfig = .array([]) }?.contains("adapter_config") == true)
        #expect(message { $0.adapterConfig = .object([("target_modules", .array([.string("nothing")]))]) }?.contains("matches no module") == true)
        #expect(message { $0.adapterType = nil; $0.adapterConfig = .object([]) }?.contains("adapter_config is set but adapter_type is not") == true)
        // A LoRA checkpoint does not resume an IA³ run.
        let out = TrainingSessionTests.tempDir("plugin-mixed")
        defer { try? FileManager.default.removeItem(atPath: out) }
        var lo = TrainingSessionTests.options(out: out, steps: 1)
        lo.lora.dropout = 0
        _ = try TrainingSession(model: m, trainPath: Self.data, options: lo).run()
        #expect(message { $0.resume = out }?.contains("holds a LoRA adapter, but this session trains adapter type \"ia3\"") == true)
    }

    /// LoRA on q, v, down and an IA³ (k, v, down; down input-side) attached together, merged into one model
    /// (v: output-side IA³ and LoRA; down: input-side IA³ and LoRA): equal to the unmerged stack.
    @Test func loraAndInputSideIA3MergeTogether() throws {
        #expect(TestPlugins.loaded)
        let m = try Self.model.get()
        let lora = try LoRAAdapter.create(for: m, config: LoRAConfig(rank: 4, alpha: 8, targets: [.q, .v, .down]),
                                          initialization: .random(seed: 11), seed: 11)
        let ia3 = try PluginAdapter.load(peftDirectory: fixturePath("plugins/tiny/ia3_kvd"), model: m)
        #expect(ia3.module(0, .down)?.point == .input)
        let ids: [Int32] = [1, 5, 9, 13, 2, 7, 4, 11]
        let ctx = try LlamaContext(model: m, threads: 2)
        try ctx.attach(lora, scale: 0.7)
        try ctx.attach(ia3, scale: 1)
        let stacked = try ctx.evaluate(.tokens(ids), logits: .all)
        let mergedModel = try mergedWithAdapters(model: m, lora: [(lora, 0.7)], plugins: [(ia3, 1)])
        let merged = try LlamaContext(model: mergedModel, threads: 2).evaluate(.tokens(ids), logits: .all)
        let d = zip(stacked, merged).map { abs($0 - $1) }.max()!
        // Neither part alone is the stack (the test sees both).
        let loraOnly = try LlamaContext(model: try LoRAKitModel.merged(model: m, adapters: [(lora, 0.7)]), threads: 2)
            .evaluate(.tokens(ids), logits: .all)
        let dl = zip(stacked, loraOnly).map { abs($0 - $1) }.max()!
        print("mixed merge LoRA + IA³: max |Δlogit| merged vs stacked \(d) (vs LoRA alone \(dl))")
        #expect(d < 1e-4, "merged vs stacked max |Δlogit| \(d)")
        #expect(dl > 1e-2)
    }
}
