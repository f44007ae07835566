// Fuzz target projector: a multimodal projector file (GGUF, llama.cpp's LLaVA "mlp" keys), through
// `Projector.load(path:model:)` against the tiny fixture model (Fixtures/model/tiny-llama-f32.gguf, width 64).
//
// Input: the bytes of a projector .gguf file. Properties checked when it loads:
// - its widths are the declared ones and the output width is the model's;
// - forward on three rows of fixed features gives finite values or a clear error, never a crash;
// - saved (atomically) and loaded again, every parameter is bitwise the same and forward gives the same bits.
import LoRAKit
import FuzzSupport
import FuzzDriver
#if canImport(Glibc)
import Glibc
#endif

let model = Fuzz.loadModel("model/tiny-llama-f32.gguf")
let path = Fuzz.scratch + "/projector.gguf"
let again = Fuzz.scratch + "/again.gguf"

func fuzzProjector(_ data: UnsafePointer<UInt8>?, _ size: Int) -> Int32 {
    Fuzz.write(Fuzz.buffer(data, size), to: path)
    guard let p = try? Projector.load(path: path, model: model) else { return 0 }
    Fuzz.check(p.width == model.config.dim, "output width \(p.width) for a model of width \(model.config.dim)")
    Fuzz.check(p.inFeatures >= 1 && p.inFeatures <= Projector.maxFeatures, "input width \(p.inFeatures)")
    let rows = 3
    let x = (0..<(rows * p.inFeatures)).map { Float(($0 * 37) % 11) / 11 - 0.5 }
    let y = try? p.forward(x, rows: rows)
    if let y { Fuzz.check(y.count == rows * p.width, "forward gave \(y.count) values for \(rows) rows of width \(p.width)") }
    do {
        try p.save(to: again)
        let q = try Projector.load(path: again, model: model)
        for ((name, a, _), (_, b, _)) in zip(p.parameters, q.parameters) {
            Fuzz.check(a.shape == b.shape, "\(name): shape \(a.shape) became \(b.shape)")
            for i in 0..<a.count where a.f32[i].bitPattern != b.f32[i].bitPattern {
                Fuzz.fail("\(name)[\(i)]: \(a.f32[i]) became \(b.f32[i]) in a save/load round trip")
            }
        }
        if let y {
            let z = try q.forward(x, rows: rows)
            Fuzz.check(zip(y, z).allSatisfy { $0.bitPattern == $1.bitPattern }, "forward changed after a save/load round trip")
        }
    } catch {
        Fuzz.fail("a projector that loaded cannot be saved and loaded again: \(error)")
    }
    return 0
}

exit(lorakit_fuzz_run(CommandLine.argc, CommandLine.unsafeArgv, { fuzzProjector($0, $1) }))
