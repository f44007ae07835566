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

@Suite struct CheckpointTests {
    /// The tiny GGUF model (Q/K rows in llama.cpp's interleaved order, so saving to PEFT permutes B rows
    /// and loading must permute them back).
    static let model: LlamaModel = try! LlamaModel(gguf: fixturePath("model/tiny-llama-f32.gguf"))

    /// A fresh empty folder for one test.
    func freshDir(_ name: String) -> String {
        let d = "/tmp/lorakit-ckpt-\(getpid())-\(name)"
        Checkpoint.removeTree(d)
        mkdir(d, 0o755)
        return d
    }

    func adapter(seed: UInt64) throws -> LoRAAdapter {
        let cfg = LoRAConfig(rank: 4, alpha: 8, targets: [.q, .k, .v, .down], rankPattern: ["down_proj": 2])
        return try LoRAAdapter.create(for: CheckpointTests.model, config: cfg, initialization: .random(seed: seed))
    }

    /// One parameter per A and B tensor of the adapter (updated in place).
    func parameters(_ a: LoRAAdapter) throws -> [OptimizerParameter] {
        var ps: [OptimizerParameter] = []
        for k in a.keys {
            let m = a.modules[k]!
            ps.append(try OptimizerParameter(name: "layers.\(k.layer).\(k.module).lora_A", value: m.a, grad: try Tensor(zeros: m.a.shape)))
            ps.append(try OptimizerParameter(name: "layers.\(k.layer).\(k.module).lora_B", value: m.b, grad: try Tensor(zeros: m.b.shape)))
        }
        return ps
    }

    func train(_ opt: AdamW, steps: Int, seed: UInt64) throws {
        var r = SplitMix64(seed: seed)
        for _ in 0..<steps {
            for p in opt.parameters { for i in 0..<p.count { p.grad.f32[i] = r.nextGaussian() } }
            try opt.clipGradients()
            try opt.step(lr: 1e-2)
        }
    }

    func bytes(_ t: Tensor) -> [Float] { Array(UnsafeBufferPointer(start: t.f32, count: t.count)) }

    func state(step: Int) -> JSONValue {
        TrainerState(step: step, data: TrainDataIteratorState(epoch: 1, index: 3, exampleCount: 10, shuffle: true, seed: 99),
                     rng: UInt64.max - 5, options: .object([("lr", .number(1e-2))]), losses: [2.5, 2.25]).json
    }

    /// Save steps 1, 2, 3 (keep 2) of one short training run.
    func saveThree(_ dir: String) throws -> (LoRAAdapter, AdamW) {
        let a = try adapter(seed: 1)
        let opt = try AdamW(parameters: try parameters(a), config: OptimizerConfig(lr: 1e-2))
        for s in 1...3 {
            try train(opt, steps: 1, seed: UInt64(s))
            try Checkpoint.save(dir: dir, step: s, adapter: a, optimizer: opt, trainerState: state(step: s), keep: 2)
        }
        return (a, opt)
    }

    @Test func roundTrip() throws {
        let dir = freshDir("roundtrip")
        defer { Checkpoint.removeTree(dir) }
        let (a, opt) = try saveThree(dir + "/out/")
        let out = dir + "/out"
        #expect(Checkpoint.list(dir: out).map(\.step) == [2, 3], "keep = 2 deletes checkpoint-1")
        #expect(String(decoding: try readFile(out + "/latest"), as: UTF8.self) == "checkpoint-3\n")
        #expect(Set(DirectoryReplace.listDirectory(out + "/checkpoint-3")) ==
                ["adapter_config.json", "adapter_model.safetensors", "optimizer.safetensors", "trainer_state.json"])
        #expect(!DirectoryReplace.listDirectory(out).contains { $0.hasPrefix(".") }, "no temporary files left")

        let ck = try #require(try Checkpoint.loadLatest(dir: out, model: CheckpointTests.model))
        #expect(ck.warnings.isEmpty, "\(ck.warnings)")
        #expect(ck.step == 3 && ck.path == out + "/checkpoint-3")
        #expect(try TrainerState(json: ck.trainerState) == TrainerState(json: state(step: 3)))
        #expect(try TrainerState(json: ck.trainerState).rng == UInt64.max - 5)
        // The adapter comes back in the trainer's row order, bit for bit.
        #expect(a.rowLayout == .interleaved)
        #expect(ck.adapter.rowLayout == a.rowLayout)
        #expect(ck.adapter.keys == a.keys)
        for k in a.keys {
            let x = a.modules[k]!, y = ck.adapter.modules[k]!
            #expect(bytes(x.a) == bytes(y.a) && bytes(x.b) == bytes(y.b), "\(k.layer) \(k.module)")
            #expect(x.rank == y.rank && x.alpha == y.alpha && x.scaling == y.scaling)
        }
        // The optimizer resumes exactly: continuing the original and the restored run gives the same values.
        let b: LoRAAdapter = ck.adapter
        let opt2 = try AdamW(parameters: try parameters(b), config: OptimizerConfig(lr: 1e-2))
        try opt2.restore(ck.optimizer)
        #expect(opt2.stepCount == 3 && ck.optimizer.step == 3)
        try train(opt, steps: 2, seed: 77)
        try train(opt2, steps: 2, seed: 77)
        for (p, q) in zip(opt.parameters, opt2.parameters) {
            #expect(bytes(p.value) == bytes(q.value), "\(p.name) after resuming")
        }
        // Saving the same step again replaces it.
        try Checkpoint.save(dir: out, step: 3, adapter: a, optimizer: opt, trainerState: state(step: 3))
        let again = try #require(try Checkpoint.loadLatest(dir: out, model: CheckpointTests.model))
        #expect(again.optimizer.step == 5)
        #expect(Checkpoint.list(dir: out).map(\.step) == [2, 3])
    }

    @Test func crashLeftovers() throws {
        let dir = freshDir("crash")
        defer { Checkpoint.removeTree(dir) }
        _ = try saveThree(dir)
        let m = CheckpointTests.model

        // 1. An interrupted save: a stray temporary folder with partial files.
        let tmp = dir + "/.checkpoint-4.tmp-99999"
        mkdir(tmp, 0o755)
        try AtomicFile.write(path: tmp + "/adapter_config.json", bytes: Array("{\"r\":".utf8))
        mkdir(tmp + "/adapter", 0o755)
        var ck = try #require(try Checkpoint.loadLatest(dir: dir, model: m))
        #expect(ck.step == 3)
        #expect(access(tmp, F_OK) != 0, "the leftover is removed")
        #expect(ck.warnings.count == 1 && ck.warnings[0].contains(".checkpoint-4.tmp-99999"), "\(ck.warnings)")

        // 2. A truncated `latest`: the newest complete checkpoint is used, with a warning.
        try AtomicFile.write(path: dir + "/latest", bytes: Array("checkp".utf8))
        ck = try #require(try Checkpoint.loadLatest(dir: dir, model: m))
        #expect(ck.step == 3)
        #expect(ck.warnings.contains { $0.contains("latest") && $0.contains("does not name a checkpoint") }, "\(ck.warnings)")

        // 3. A missing `latest`.
        unlink(dir + "/latest")
        ck = try #require(try Checkpoint.loadLatest(dir: dir, model: m))
        #expect(ck.step == 3 && ck.warnings.contains { $0.contains("latest: missing") }, "\(ck.warnings)")

        // 4. A damaged newest checkpoint (truncated optimizer state): fall back to the previous one.
        try AtomicFile.write(path: dir + "/latest", bytes: Array("checkpoint-3\n".utf8))
        let opt = dir + "/checkpoint-3/optimizer.safetensors"
        let full = try readFile(opt)
        try AtomicFile.write(path: opt, bytes: Array(full.prefix(full.count / 2)))
        ck = try #require(try Checkpoint.loadLatest(dir: dir, model: m))
        #expect(ck.step == 2)
        #expect(ck.warnings.contains { $0.contains("checkpoint-3: unusable") && $0.contains("optimizer.safetensors") }, "\(ck.warnings)")
        #expect(ck.warnings.contains { $0.contains("resuming from \(dir)/checkpoint-2") }, "\(ck.warnings)")

        // 5. The newest checkpoint folder deleted after `latest` named it.
        Checkpoint.removeTree(dir + "/checkpoint-3")
        ck = try #require(try Checkpoint.loadLatest(dir: dir, model: m))
        #expect(ck.step == 2)
        #expect(ck.warnings.contains { $0.contains("checkpoint-3") && $0.contains("missing") }, "\(ck.warnings)")
        #expect(try TrainerState(json: ck.trainerState).step == 2)

        // 6. Nothing left: an error, not a silent fresh start.
        Checkpoint.removeTree(dir + "/checkpoint-2")
        #expect(throws: LKError.self) { try Checkpoint.loadLatest(dir: dir, model: m) }
        // No checkpoint and no `latest`: a fresh start.
        unlink(dir + "/latest")
        #expect(try Checkpoint.loadLatest(dir: dir, model: m) == nil)
        #expect(try Checkpoint.loadLatest(dir: dir + "/never-created", model: m) == nil)
    }

    @Test func saveValidatesAndCleansUp() throws {
        let dir = freshDir("validate")
        defer { Checkpoint.removeTree(dir) }
        let a = try adapter(seed: 2)
        let opt = try AdamW(parameters: try parameters(a))
        #expect(throws: LKError.self) { try Checkpoint.save(dir: dir, step: 1, adapter: a, optimizer: opt, trainerState: .array([])) }
        #expect(throws: LKError.self) { try Checkpoint.save(dir: dir, step: 1, adapter: a, optimizer: opt, trainerState: state(step: 2)) }
        #expect(throws: LKError.self) { try Checkpoint.save(dir: dir, step: 1, adapter: a, optimizer: opt, trainerState: state(step: 1), keep: 0) }
        #expect(DirectoryReplace.listDirectory(dir).isEmpty, "failed saves leave nothing behind")
        // Checkpoints of a larger step (an abandoned run) are not pruned; the older ones are.
        for s in [10, 1, 2, 3] {
            try Checkpoint.save(dir: dir, step: s, adapter: a, optimizer: opt, trainerState: state(step: s), keep: 2)
        }
        #expect(Checkpoint.list(dir: dir).map(\.step) == [2, 3, 10])
        #expect(try Checkpoint.loadLatest(dir: dir, model: CheckpointTests.model)?.step == 3)
        #expect(Checkpoint.step(ofDirectoryName: "checkpoint-12") == 12)
        #expect(Checkpoint.step(ofDirectoryName: "checkpoint-") == nil)
        #expect(Checkpoint.step(ofDirectoryName: "checkpoint-1/../x") == nil)
        #expect(Checkpoint.step(ofDirectoryName: "checkpoint--1") == nil)
    }
}
