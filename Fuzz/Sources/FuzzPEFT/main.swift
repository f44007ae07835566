// Fuzz target peft: a PEFT adapter folder (adapter_config.json + adapter_model.safetensors), through the
// adapter loader (`LoRAAdapter.load(path:model:)`) against the tiny fixture model
// (Fixtures/model/tiny-llama-hf).
//
// Input: adapter_config.json, then optionally the separator line `#LORAKIT-FUZZ-NEXT-FILE#` and the bytes
// of adapter_model.safetensors (without it, the weights of Fixtures/lora/r4_all are used). Properties
// checked when the adapter loads:
// - it attaches to a context and runs two tokens;
// - saved as a PEFT folder and as GGUF and loaded again, every module has the same A and the same
//   effective s·B, within float rounding.
import LoRAKit
import FuzzSupport
import FuzzDriver
#if canImport(Glibc)
import Glibc
#endif

let model = Fuzz.loadModel("model/tiny-llama-hf")
let dir = Fuzz.folder("adapter")
let again = Fuzz.scratch + "/again-peft"
let gguf = Fuzz.scratch + "/again.gguf"
let fixtureWeights = Fuzz.fixtures + "/lora/r4_all/adapter_model.safetensors"

func compare(_ x: LoRATensors, _ y: LoRATensors, _ what: String) {
    let ex = Fuzz.effective(x), ey = Fuzz.effective(y)
    Fuzz.check(Set(ex.keys) == Set(ey.keys), "\(what): modules \(ex.keys.sorted()) became \(ey.keys.sorted())")
    for (k, a) in ex {
        let b = ey[k]!
        Fuzz.check(a.shapeA == b.shapeA && a.shapeB == b.shapeB, "\(what): \(k): shapes \(a.shapeA) \(a.shapeB) became \(b.shapeA) \(b.shapeB)")
        Fuzz.check(a.a == b.a, "\(what): \(k): A changed")
        Fuzz.check(Fuzz.approxEqual(a.sb, b.sb, tol: 1e-5), "\(what): \(k): s·B changed")
    }
}

func fuzzPEFT(_ data: UnsafePointer<UInt8>?, _ size: Int) -> Int32 {
    let parts = Fuzz.split(Fuzz.buffer(data, size))
    Fuzz.write(parts[0], to: dir + "/adapter_config.json")
    let weights = dir + "/adapter_model.safetensors"
    unlink(weights)
    if parts.count > 1 { Fuzz.write(parts[1], to: weights) } else { symlink(fixtureWeights, weights) }
    guard let adapter = try? LoRAAdapter.load(path: dir, model: model) else { return 0 }
    Fuzz.forward(model, adapter: adapter, what: "adapter")
    do {
        let t = try adapter.fileTensors()
        try adapter.save(path: again, format: .peft)
        let p = try LoRAAdapter.load(path: again, model: model).fileTensors()
        compare(t, p, "PEFT round trip")
        try adapter.save(path: gguf, format: .gguf)
        let g = try LoRAAdapter.load(path: gguf, model: model).fileTensors().withRowLayout(.neox, config: model.config)
        compare(try t.withRowLayout(.neox, config: model.config), g, "GGUF round trip")
    } catch {
        // Saving may refuse an adapter the format cannot hold (a GGUF LoRA whose folded B overflows
        // float32); what it writes must load again.
        if case .invalidArgument(let m) = error, m.contains("overflows float32") { return 0 }
        Fuzz.fail("an adapter that loaded cannot be saved and loaded again: \(error)")
    }
    return 0
}

exit(lorakit_fuzz_run(CommandLine.argc, CommandLine.unsafeArgv, { fuzzPEFT($0, $1) }))
