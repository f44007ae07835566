import Testing
@testable import LoRAKitCore
@testable import LoRAKitFormats
@testable import LoRAKitModel
@testable import LoRAKitTraining
#if canImport(Glibc)
import Glibc
#endif

/// Regression tests for what the fuzz targets (Fuzz/) and the kill test (Tests/kill) found (issue 14),
/// each named after its finding. Crash inputs are kept in Fuzz/regressions/<target>/ and read from there.
@Suite struct HardeningRegressionTests {
    static let regressions: String = {
        var parts = "\(#filePath)".split(separator: "/", omittingEmptySubsequences: false).map(String.init)
        parts.removeLast(3)  // Tests/LoRAKitTests/HardeningRegressionTests.swift
        return parts.joined(separator: "/") + "/Fuzz/regressions"
    }()

    /// The fuzz targets' multi-file input: files separated by this line (Fuzz/README.md).
    static func splitFuzzInput(_ b: [UInt8]) -> [[UInt8]] {
        let sep = Array("\n#LORAKIT-FUZZ-NEXT-FILE#\n".utf8)
        var parts: [[UInt8]] = [], start = 0, i = 0
        while i + sep.count <= b.count {
            if b[i..<(i + sep.count)].elementsEqual(sep) { parts.append(Array(b[start..<i])); i += sep.count; start = i } else { i += 1 }
        }
        parts.append(Array(b[start...]))
        return parts
    }

    /// peft target, finding `rslora-fold-overflows-float32`: an rsLoRA PEFT adapter (r 8, alpha 16) with a
    /// lora_B value of 1.34e38 loads, but as a llama.cpp GGUF LoRA its scaling is folded into B
    /// (×√8 = 2.83): the writer wrote -inf, and the file it had just written was refused when loaded.
    /// Now writing refuses the adapter, naming the module and the overflow; nothing is written; the PEFT
    /// form (which needs no folding) still saves and loads.
    @Test func rsloraFoldOverflowsFloat32() throws {
        let input = readBytes(Self.regressions + "/peft/rslora-fold-overflows-float32")
        let parts = Self.splitFuzzInput(input)
        #expect(parts.count == 2)
        let dir = temporaryPath("fold-overflow")
        mkdir(dir, 0o755)
        defer { Checkpoint.removeTree(dir) }
        writeBytes(dir + "/adapter_config.json", parts[0])
        writeBytes(dir + "/adapter_model.safetensors", parts[1])
        let model = try LlamaModel.load(path: fixturePath("model/tiny-llama-hf"))
        let adapter = try LoRAAdapter.load(path: dir, model: model)
        #expect(adapter.config.useRSLoRA && adapter.config.rank == 8)
        let gguf = temporaryPath("fold-overflow.gguf")
        defer { unlink(gguf) }
        #expect {
            try adapter.save(path: gguf, format: .gguf)
        } throws: { e in
            guard case .invalidArgument(let m) = e as? LKError else { return false }
            return m.contains("layer 1 q (self_attn.q_proj)") && m.contains("overflows float32")
        }
        #expect(access(gguf, F_OK) != 0, "no file is written")
        let peft = temporaryPath("fold-overflow-peft")
        defer { Checkpoint.removeTree(peft) }
        try adapter.save(path: peft, format: .peft)
        let again = try LoRAAdapter.load(path: peft, model: model)
        #expect(again.module(1, .q)?.b.toFloats() == adapter.module(1, .q)?.b.toFloats())
    }

    /// Kill test, finding `save: out is missing after a kill`: replacing a PEFT folder moved the old folder
    /// aside, then renamed the new one in; a SIGKILL between the two renames left no folder at the path.
    /// Now the two are swapped in one atomic `renameat2(RENAME_EXCHANGE)`. This checks that the atomic
    /// path is the one taken here, that the result is the new content plus the old folder's other files,
    /// with no temporary left, and that the folder is not left private (mkdtemp's 0700).
    @Test func directoryReplaceIsOneAtomicSwap() throws {
        let parent = temporaryPath("replace")
        mkdir(parent, 0o755)
        defer { Checkpoint.removeTree(parent) }
        let a = parent + "/a", b = parent + "/b"
        mkdir(a, 0o755); mkdir(b, 0o755)
        writeBytes(a + "/x", [1]); writeBytes(b + "/y", [2])
        #if os(Linux)
        #expect(DirectoryReplace.exchange(a, b), "renameat2(RENAME_EXCHANGE) is available")
        #expect(readBytes(a + "/y") == [2] && readBytes(b + "/x") == [1])
        #endif
        let dir = parent + "/adapter"
        try DirectoryReplace.write(directory: dir) { (tmp: String) throws(LKError) in
            try AtomicFile.write(path: tmp + "/weights", bytes: [1, 1])
            try AtomicFile.write(path: tmp + "/README.md", bytes: [9])
        }
        try DirectoryReplace.write(directory: dir) { (tmp: String) throws(LKError) in
            try AtomicFile.write(path: tmp + "/weights", bytes: [2, 2])
        }
        #expect(readBytes(dir + "/weights") == [2, 2])
        #expect(readBytes(dir + "/README.md") == [9], "the old folder's other files are kept")
        #expect(DirectoryReplace.listDirectory(parent).sorted() == ["a", "adapter", "b"], "no temporary left")
        var st = stat()
        stat(dir, &st)
        #expect(st.st_mode & 0o777 == 0o755)
    }
}

extension HardeningRegressionTests {
    /// Kill test, finding `train: checkpoint-5 is not the complete checkpoint (files adapter_config.json,
    /// optimizer.safetensors, trainer_state.json)`: pruning old checkpoints deleted their files one by one,
    /// so a kill in the middle left a visible checkpoint-N without its weights. Now a pruned checkpoint is
    /// first renamed to a hidden `.checkpoint-N.old-PID` (one atomic step), then deleted; such leftovers are
    /// never listed as checkpoints and `loadLatest` deletes them.
    @Test func checkpointPruningHidesBeforeDeleting() throws {
        let model = try LlamaModel(gguf: fixturePath("model/tiny-llama-f32.gguf"))
        let dir = temporaryPath("prune")
        mkdir(dir, 0o755)
        defer { Checkpoint.removeTree(dir) }
        let a = try LoRAAdapter.create(for: model, config: LoRAConfig(rank: 2, alpha: 4, targets: [.q]), initialization: .random(seed: 1))
        var ps: [OptimizerParameter] = []
        for k in a.keys {
            let m = a.modules[k]!
            ps.append(try OptimizerParameter(name: "\(k.layer).A", value: m.a, grad: try Tensor(zeros: m.a.shape)))
            ps.append(try OptimizerParameter(name: "\(k.layer).B", value: m.b, grad: try Tensor(zeros: m.b.shape)))
        }
        let opt = try AdamW(parameters: ps, config: OptimizerConfig(lr: 1e-2))
        let state = { (s: Int) in
            TrainerState(step: s, data: TrainDataIteratorState(epoch: 0, index: 0, exampleCount: 4, shuffle: false, seed: 1), rng: 1).json
        }
        for s in 1...4 { try Checkpoint.save(dir: dir, step: s, adapter: a, optimizer: opt, trainerState: state(s), keep: 2) }
        #expect(DirectoryReplace.listDirectory(dir).sorted() == ["checkpoint-3", "checkpoint-4", "latest"], "pruned, nothing hidden left")
        // What a kill during pruning leaves: a hidden, partly deleted checkpoint.
        let partial = dir + "/.checkpoint-2.old-99999"
        mkdir(partial, 0o755)
        writeBytes(partial + "/adapter_config.json", Array("{}".utf8))
        #expect(Checkpoint.list(dir: dir).map(\.step) == [3, 4], "a hidden leftover is not a checkpoint")
        let ck = try #require(try Checkpoint.loadLatest(dir: dir, model: model))
        #expect(ck.step == 4)
        #expect(ck.warnings.contains { $0.contains(".checkpoint-2.old-99999") })
        #expect(access(partial, F_OK) != 0, "loadLatest deleted the leftover")
    }
}

extension HardeningRegressionTests {
    /// make test-asan, finding `heap-buffer-overflow in DirectoryReplace.listDirectory`: the name of a
    /// `readdir` entry was read by copying the whole 256-byte `d_name` array, but glibc's entries are only as
    /// long as their name (`d_reclen`), so the copy of the buffer's last entry read past the end. Names are
    /// now read in place (`direntName`). Under make test-asan this fails with the overflow; everywhere it
    /// checks that names of every length (1…255 bytes) and many entries (several getdents buffers) come back
    /// exactly.
    @Test func listDirectoryReadsNamesInPlace() throws {
        let dir = temporaryPath("names")
        mkdir(dir, 0o755)
        defer { Checkpoint.removeTree(dir) }
        var expected: [String] = []
        for len in 1...255 {
            let name = String(repeating: Character(UnicodeScalar(UInt8(97 + len % 26))), count: len - 1) + "\(len % 10)"
            writeBytes(dir + "/" + name, [UInt8(len % 256)])
            expected.append(name)
        }
        let names = DirectoryReplace.listDirectory(dir)
        #expect(names.count == 255)
        #expect(names.sorted() == expected.sorted())
    }
}
