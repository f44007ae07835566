import Testing
import Foundation
@testable import LoRAKitCore
@testable import LoRAKitKernels
@testable import LoRAKitFormats
@testable import LoRAKitModel
@testable import LoRAKitTraining

/// The multimodal projector (LLaVA's mlp2x_gelu): forward and backward against a slow f64 reference,
/// thread invariance, the gradient through the language model against finite differences, and its GGUF
/// file (exact round trip, strict checks).
@Suite struct ProjectorTests {
    static let f32Path = fixturePath("model/tiny-llama-f32.gguf")

    static func randomInput(rows: Int, features: Int, seed: UInt64) -> [Float] {
        var rng = SplitMix64(seed: seed)
        return (0..<(rows * features)).map { _ in rng.nextFloat() * 2 - 1 }
    }

    /// y = W2 · gelu_erf(W0 · x + b0) + b2 in f64, and h.
    static func reference(_ p: Projector, _ x: [Float], rows r: Int) -> (y: [Double], h: [Double]) {
        let c = p.width, i = p.inFeatures
        let w0 = p.w0.toFloats(), b0 = p.b0.toFloats(), w2 = p.w2.toFloats(), b2 = p.b2.toFloats()
        var h = [Double](repeating: 0, count: r * c), y = [Double](repeating: 0, count: r * c)
        for row in 0..<r {
            for o in 0..<c {
                var s = Double(b0[o])
                for k in 0..<i { s += Double(w0[o * i + k]) * Double(x[row * i + k]) }
                h[row * c + o] = s
            }
            for o in 0..<c {
                var s = Double(b2[o])
                for k in 0..<c {
                    let v = h[row * c + k]
                    s += Double(w2[o * c + k]) * 0.5 * v * (1 + erf(v / 2.0.squareRoot()))
                }
                y[row * c + o] = s
            }
        }
        return (y, h)
    }

    @Test func forwardMatchesReference() throws {
        let p = try Projector(inFeatures: 16, width: 40, seed: 1)
        let x = Self.randomInput(rows: 7, features: 16, seed: 2)
        let y = try p.forward(x, rows: 7)
        let (ref, _) = Self.reference(p, x, rows: 7)
        #expect(y.count == 7 * 40)
        var maxErr = 0.0
        for (a, b) in zip(y, ref) { maxErr = max(maxErr, abs(Double(a) - b)) }
        #expect(maxErr < 1e-5, "max |y - ref| = \(maxErr)")
        #expect(ref.contains { abs($0) > 0.1 })
        // Zero rows give nothing; wrong sizes and non-finite inputs are refused by name.
        #expect(try p.forward([], rows: 0).isEmpty)
        #expect(throws: LKError.self) { try p.forward([1, 2, 3], rows: 1) }
        var bad = x
        bad[5] = .nan
        do { _ = try p.forward(bad, rows: 7); Issue.record("NaN input accepted") } catch {
            #expect(error.message.contains("row 0, column 5"), "\(error.message)")
        }
    }

    /// The f64 reference backward for L = Σ dy ⊙ y.
    static func referenceGradients(_ p: Projector, _ x: [Float], rows r: Int, dy: [Float]) -> [[Double]] {
        let c = p.width, i = p.inFeatures
        let w2 = p.w2.toFloats()
        let (_, h) = reference(p, x, rows: r)
        var gw0 = [Double](repeating: 0, count: c * i), gb0 = [Double](repeating: 0, count: c)
        var gw2 = [Double](repeating: 0, count: c * c), gb2 = [Double](repeating: 0, count: c)
        for row in 0..<r {
            var dg = [Double](repeating: 0, count: c)
            for o in 0..<c {
                let d = Double(dy[row * c + o])
                gb2[o] += d
                for k in 0..<c {
                    let v = h[row * c + k]
                    gw2[o * c + k] += d * 0.5 * v * (1 + erf(v / 2.0.squareRoot()))
                    dg[k] += d * Double(w2[o * c + k])
                }
            }
            for k in 0..<c {
                let v = h[row * c + k]
                let gelu1 = 0.5 * (1 + erf(v / 2.0.squareRoot())) + v * exp(-0.5 * v * v) / (2 * Double.pi).squareRoot()
                let dh = dg[k] * gelu1
                gb0[k] += dh
                for j in 0..<i { gw0[k * i + j] += dh * Double(x[row * i + j]) }
            }
        }
        return [gw0, gb0, gw2, gb2]
    }

    @Test func backwardMatchesReferenceAndAccumulates() throws {
        let p = try Projector(inFeatures: 16, width: 24, seed: 3)
        let r = 5
        let x = Self.randomInput(rows: r, features: 16, seed: 4)
        let dy = Self.randomInput(rows: r, features: 24, seed: 5)
        let (_, acts) = try p.forwardForTraining(x, rows: r)
        try p.backward(acts, dOutput: dy)
        let ref = Self.referenceGradients(p, x, rows: r, dy: dy)
        for (k, (name, _, grad)) in p.parameters.enumerated() {
            let g = grad.toFloats()
            var maxErr = 0.0, maxRef = 0.0
            for (a, b) in zip(g, ref[k]) { maxErr = max(maxErr, abs(Double(a) - b)); maxRef = max(maxRef, abs(b)) }
            #expect(maxRef > 1e-2, "\(name): reference gradient is trivial")
            #expect(maxErr <= 1e-5 * max(1, maxRef), "\(name): max error \(maxErr) (max |ref| \(maxRef))")
        }
        // A second backward accumulates (doubles); zeroGradients clears.
        let once = p.gw0.toFloats()
        try p.backward(acts, dOutput: dy)
        #expect(zip(p.gw0.toFloats(), once).allSatisfy { $0 == 2 * $1 })
        p.zeroGradients()
        #expect(p.parameters.allSatisfy { $0.grad.toFloats().allSatisfy { $0 == 0 } })
        // Shape and value errors are reported, not trapped.
        #expect(throws: LKError.self) { try p.backward(acts, dOutput: [1]) }
        var nanDy = dy
        nanDy[0] = .infinity
        #expect(throws: LKError.self) { try p.backward(acts, dOutput: nanDy) }
    }

    @Test func resultsIndependentOfThreads() throws {
        let x = Self.randomInput(rows: 33, features: 16, seed: 6)
        let dy = Self.randomInput(rows: 33, features: 64, seed: 7)
        func run(_ threads: Int) throws -> [[Float]] {
            let pool = ThreadPool(threads: threads)
            let p = try Projector(inFeatures: 16, width: 64, seed: 8)
            let (y, a) = try p.forwardForTraining(x, rows: 33, pool: pool)
            try p.backward(a, dOutput: dy, pool: pool)
            return [y] + p.parameters.map { $0.grad.toFloats() }
        }
        let one = try run(1), three = try run(3)
        #expect(one == three)
    }

    /// The projector's gradient through the language model: the trainer's input-embedding gradient of the
    /// prefix rows, fed to `backward`, against a central difference of the mean loss along a random
    /// direction of each projector parameter.
    @Test func gradientThroughModelMatchesFiniteDifference() throws {
        let model = try LlamaModel(gguf: Self.f32Path)
        let c = model.config.dim
        let adapter = try LoRAAdapter.create(for: model, config: LoRAConfig(rank: 4, alpha: 8, targets: [.q, .v]),
                                             initialization: .random(seed: 3))
        let tr = try LoRATrainer(model: model, adapter: adapter, threads: 2)
        let p = try Projector(inFeatures: 16, model: model, seed: 9)
        #expect(p.width == c)
        let patches = 4
        let x = Self.randomInput(rows: patches, features: 16, seed: 10)
        let ids: [Int32] = [3, 99, 250, 17, 400, 8, 77]
        func meanLoss() throws -> Double {
            let prefix = try p.forward(x, rows: patches)
            let r = try tr.pass([TrainSequence(tokens: ids, isTarget: [Bool](repeating: true, count: ids.count),
                                               prefixEmbeddings: prefix)], gradients: false)
            return r.sumNLL / Double(r.predicted)
        }
        let (prefix, acts) = try p.forwardForTraining(x, rows: patches)
        let seq = TrainSequence(tokens: ids, isTarget: [Bool](repeating: true, count: ids.count), prefixEmbeddings: prefix)
        let r = try tr.pass([seq], gradients: false, inputGradients: true)
        let g = try #require(r.inputGradients?.first)
        p.zeroGradients()
        try p.backward(acts, dOutput: Array(g[0..<(patches * c)]))
        var rng = SplitMix64(seed: 11)
        for (name, value, grad) in p.parameters {
            let n = value.count
            let d = (0..<n).map { _ in rng.nextFloat() * 2 - 1 }
            var analytic = 0.0
            let gv = grad.toFloats()
            for k in 0..<n { analytic += Double(gv[k]) * Double(d[k]) }
            let saved = value.toFloats()
            let eps: Float = 1e-2
            for k in 0..<n { value.f32[k] = saved[k] + eps * d[k] }
            let lp = try meanLoss()
            for k in 0..<n { value.f32[k] = saved[k] - eps * d[k] }
            let lm = try meanLoss()
            for k in 0..<n { value.f32[k] = saved[k] }
            let fd = (lp - lm) / (2 * Double(eps))
            #expect(abs(analytic) > 1e-3, "\(name): directional derivative \(analytic) is trivial")
            #expect(abs(analytic - fd) <= 1e-3 + 0.01 * abs(analytic), "\(name): analytic \(analytic) vs finite difference \(fd)")
        }
    }

    @Test func fileRoundTripIsExact() throws {
        let model = try LlamaModel(gguf: Self.f32Path)
        let p = try Projector(inFeatures: 16, model: model, seed: 12)
        let path = temporaryPath("projector.gguf")
        try p.save(to: path)
        let q = try Projector.load(path: path, model: model)
        #expect(q.kind == .mlp2xGELU && q.inFeatures == 16 && q.width == model.config.dim)
        for (a, b) in zip(p.parameters, q.parameters) {
            #expect(a.name == b.name && a.value.shape == b.value.shape && a.value.toFloats() == b.value.toFloats())
        }
        let x = Self.randomInput(rows: 3, features: 16, seed: 13)
        #expect(try p.forward(x, rows: 3) == q.forward(x, rows: 3))
        // The file carries llama.cpp's LLaVA names and keys.
        let f = try GGUFFile(path: path)
        #expect(f.tensors.map(\.name) == ["mm.0.weight", "mm.0.bias", "mm.2.weight", "mm.2.bias"])
        #expect(f.metadata["clip.projector_type"]?.string == "mlp")
        #expect(f.metadata["clip.vision.projection_dim"]?.int == model.config.dim)
    }

    @Test func strictLoading() throws {
        let model = try LlamaModel(gguf: Self.f32Path)
        // A projector whose output width does not fit the model is refused with both widths named.
        let wide = try Projector(inFeatures: 16, width: model.config.dim + 8, seed: 14)
        let widePath = temporaryPath("wide.gguf")
        try wide.save(to: widePath)
        do { _ = try Projector.load(path: widePath, model: model); Issue.record("width mismatch accepted") } catch {
            #expect(error.message.contains("output width \(model.config.dim + 8)") && error.message.contains("\(model.config.dim)"), "\(error.message)")
        }
        _ = try Projector.load(path: widePath)  // without a model: fine
        let good = try Projector(inFeatures: 16, width: 8, seed: 15)
        func write(_ edit: (inout GGUFWriter) throws -> Void) throws -> String {
            var w = GGUFWriter()
            w.set("general.architecture", .string("clip"))
            w.set("clip.projector_type", .string("mlp"))
            w.set("clip.vision.projection_dim", .uint32(8))
            w.set("lorakit.projector.input_width", .uint32(16))
            for (name, value, _) in good.parameters { try w.add(name, value) }
            try edit(&w)
            let path = temporaryPath("bad.gguf")
            try w.write(to: path)
            return path
        }
        func expectRefused(_ what: String, _ needle: String, _ edit: (inout GGUFWriter) throws -> Void) throws {
            let path = try write(edit)
            do { _ = try Projector.load(path: path); Issue.record("\(what): accepted") } catch {
                #expect(error.message.contains(needle), "\(what): \(error.message)")
                #expect(error.message.contains(path), "\(what): the message names the file: \(error.message)")
            }
        }
        _ = try Projector.load(path: try write { _ in })
        try expectRefused("model file", "general.architecture") { $0.set("general.architecture", .string("llama")) }
        try expectRefused("other projector", "projector type") { $0.set("clip.projector_type", .string("ldp")) }
        try expectRefused("missing width", "clip.vision.projection_dim") { w in w.metadata.removeAll { $0.0 == "clip.vision.projection_dim" } }
        try expectRefused("missing tensor", "missing tensor mm.2.bias") { w in w.tensors.removeAll { $0.name == "mm.2.bias" } }
        try expectRefused("extra tensor", "unexpected tensor") { try $0.add("mm.4.weight", try Tensor(zeros: [8])) }
        try expectRefused("wrong shape", "mm.0.weight has shape [8, 15]") { w in
            w.tensors[0] = ("mm.0.weight", try Tensor(zeros: [8, 15]))
        }
        try expectRefused("declared width", "expected [16, 16]") { $0.set("clip.vision.projection_dim", .uint32(16)) }
        try expectRefused("NaN weight", "not finite") { w in
            var v = good.w2.toFloats()
            v[3] = .nan
            w.tensors[2] = ("mm.2.weight", try Tensor(v, shape: [8, 8]))
        }
        try expectRefused("huge width", "must be in 1...") { $0.set("clip.vision.projection_dim", .uint32(1 << 30)) }
        // A truncated file is a format error naming the file.
        let full = try readFile(try write { _ in })
        let cut = temporaryPath("cut.gguf")
        FileManager.default.createFile(atPath: cut, contents: Data(full[0..<(full.count - 100)]))
        #expect(throws: LKError.self) { try Projector.load(path: cut) }
    }
}
