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

/// This library's logits with PEFT adapters attached, on the GGUF (interleaved Q/K rows) and Hugging Face
/// (half-rotation order) versions of the tiny model, against PEFT + transformers.
@Suite struct PEFTParityTests {
    static let reference: JSONValue = try! JSON.parse(file: fixturePath("lora/reference.json"))
    static let adapterNames = ["r4_all", "rslora_qv", "patterns_all"]

    func logits(_ model: LlamaModel, _ adapter: LoRAAdapter?, scale: Float, ids: [Int32]) throws -> [Float] {
        let ctx = try LlamaContext(model: model, threads: 2)
        if let a = adapter { try ctx.attach(a, scale: scale) }
        return try ctx.evaluate(.tokens(ids), logits: .all)
    }

    func maxDiff(_ got: [Float], _ expected: [[Float]]) -> Float {
        var worst: Float = 0
        let v = expected[0].count
        for (i, row) in expected.enumerated() {
            for j in 0..<v { worst = max(worst, abs(got[i * v + j] - row[j])) }
        }
        return worst
    }

    @Test(arguments: adapterNames)
    func logitsMatchPEFT(name: String) throws {
        let ref = PEFTParityTests.reference["adapters"]![name]!
        let seqs = PEFTParityTests.reference["sequences"]!.array!.map { ints($0) }
        for modelPath in ["model/tiny-llama-f32.gguf", "model/tiny-llama-hf"] {
            let model = try LlamaModel.load(path: fixturePath(modelPath))
            let adapter = try LoRAAdapter.load(path: fixturePath("lora/\(name)"), model: model)
            for (s, ids) in seqs.enumerated() {
                for (key, scale) in [("logits", Float(1)), ("logits_scale_0_5", Float(0.5))] {
                    let expected = ref[key]!.array![s].array!.map { floats($0) }
                    let got = try logits(model, adapter, scale: scale, ids: ids)
                    let d = maxDiff(got, expected)
                    #expect(d < 2e-4, "\(name) on \(modelPath) seq \(s) \(key): max |Δlogit| \(d)")
                }
                // Merged into the weights (f32) equals PEFT's merge_and_unload.
                let merged = try LoRAKitModel.merged(model: model, adapters: [(adapter, 1)], outType: .f32)
                let expected = ref["logits_merged"]!.array![s].array!.map { floats($0) }
                let d = maxDiff(try logits(merged, nil, scale: 1, ids: ids), expected)
                #expect(d < 2e-4, "\(name) merged on \(modelPath) seq \(s): max |Δlogit| \(d)")
            }
        }
    }

    /// PEFT → GGUF LoRA → loaded again gives the same logits (rsLoRA and patterns folded into B).
    @Test(arguments: adapterNames)
    func ggufRoundTripKeepsLogits(name: String) throws {
        let model = try LlamaModel.load(path: fixturePath("model/tiny-llama-f32.gguf"))
        let adapter = try LoRAAdapter.load(path: fixturePath("lora/\(name)"), model: model)
        let path = temporaryPath("\(name).gguf")
        defer { unlink(path) }
        try adapter.save(path: path, format: .gguf)
        let again = try LoRAAdapter.load(path: path, model: model)
        let ids = ints(PEFTParityTests.reference["sequences"]!.array![1])
        let a = try logits(model, adapter, scale: 1, ids: ids)
        let b = try logits(model, again, scale: 1, ids: ids)
        let d = zip(a, b).map { abs($0 - $1) }.max()!
        #expect(d < 1e-4, "\(name): GGUF round trip max |Δlogit| \(d)")
    }

    /// The llama.cpp-format fixture written by the gguf Python package (lora_b of q/k permuted like the
    /// base) gives PEFT's logits on the GGUF model.
    @Test func pythonWrittenGGUFLoRAMatchesPEFT() throws {
        let model = try LlamaModel.load(path: fixturePath("model/tiny-llama-f32.gguf"))
        let adapter = try LoRAAdapter.load(path: fixturePath("lora/lora_a.gguf"), model: model)
        #expect(adapter.rowLayout == .interleaved)
        let ref = PEFTParityTests.reference["adapters"]!["r4_all"]!
        let seqs = PEFTParityTests.reference["sequences"]!.array!.map { ints($0) }
        for (s, ids) in seqs.enumerated() {
            let expected = ref["logits"]!.array![s].array!.map { floats($0) }
            let d = maxDiff(try logits(model, adapter, scale: 1, ids: ids), expected)
            #expect(d < 2e-4, "seq \(s): max |Δlogit| \(d)")
        }
    }

    @Test func adapterForAnotherModelIsRejected() throws {
        guard let real = RealModel.shared else { return }
        do {
            _ = try LoRAAdapter.load(path: fixturePath("lora/r4_all"), model: real)
            Issue.record("an adapter for the tiny model was accepted by SmolLM2")
        } catch {
            #expect(error.message.contains("layer") || error.message.contains("shape"), "\(error.message)")
        }
    }
}
