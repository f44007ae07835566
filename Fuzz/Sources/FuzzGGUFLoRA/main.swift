// Fuzz target gguf-lora: a llama.cpp GGUF LoRA file, through the adapter loader
// (`LoRAAdapter.load(path:model:)`) against the tiny fixture model (Fixtures/model/tiny-llama-f32.gguf).
//
// Input: the bytes of a .gguf file. Properties checked when the adapter loads:
// - it attaches to a context and runs two tokens;
// - saved as GGUF and as a PEFT folder and loaded again, every module has the same A and the same
//   effective s·B (the GGUF writer folds per-module alphas into B), within float rounding.
import LoRAKit
import FuzzSupport
import FuzzDriver
#if canImport(Glibc)
import Glibc
#endif

let model = Fuzz.loadModel("model/tiny-llama-f32.gguf")
let path = Fuzz.scratch + "/adapter.gguf"
let again = Fuzz.scratch + "/again.gguf"
let peft = Fuzz.scratch + "/again-peft"

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

func fuzzGGUFLoRA(_ data: UnsafePointer<UInt8>?, _ size: Int) -> Int32 {
    Fuzz.write(Fuzz.buffer(data, size), to: path)
    guard let adapter = try? LoRAAdapter.load(path: path, model: model) else { return 0 }
    Fuzz.forward(model, adapter: adapter, what: "adapter")
    do {
        let t = try adapter.fileTensors().withRowLayout(.neox, config: model.config)
        try adapter.save(path: again, format: .gguf)
        let g = try LoRAAdapter.load(path: again, model: model).fileTensors().withRowLayout(.neox, config: model.config)
        compare(t, g, "GGUF round trip")
        try adapter.save(path: peft, format: .peft)
        let p = try LoRAAdapter.load(path: peft, model: model).fileTensors().withRowLayout(.neox, config: model.config)
        compare(t, p, "PEFT round trip")
    } catch {
        // Saving may refuse an adapter the format cannot hold (a GGUF LoRA whose folded B overflows
        // float32); what it writes must load again.
        if case .invalidArgument(let m) = error, m.contains("overflows float32") { return 0 }
        Fuzz.fail("an adapter that loaded cannot be saved and loaded again: \(error)")
    }
    return 0
}

exit(lorakit_fuzz_run(CommandLine.argc, CommandLine.unsafeArgv, { fuzzGGUFLoRA($0, $1) }))
