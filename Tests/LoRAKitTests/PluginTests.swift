import Testing
@testable import LoRAKitCore
@testable import LoRAKitKernels
@testable import LoRAKitFormats
@testable import LoRAKitModel
@testable import LoRAKitTraining
#if canImport(Glibc)
import Glibc
#endif

/// The test plugins (`make test-plugins`: .build/plugin-tests; LORAKIT_TEST_PLUGIN_DIR overrides).
func testPluginPath(_ file: String) -> String {
    if let e = getenv("LORAKIT_TEST_PLUGIN_DIR"), !String(cString: e).isEmpty { return "\(String(cString: e))/\(file)" }
    return fixturePath("../../../.build/plugin-tests/\(file)")
}

/// The shipped plugins loaded once (the registry is per process).
enum TestPlugins {
    static let loaded: Bool = {
        do {
            try PluginRegistry.shared.load(path: testPluginPath("ia3.so"))
            try PluginRegistry.shared.load(path: testPluginPath("dora.so"))
            return true
        } catch {
            Issue.record("cannot load the test plugins (run `make test-plugins`): \(error)")
            return false
        }
    }()
}

/// Plugin adapters (IA³ in C, DoRA in Swift) through the host: PEFT folders load and give PEFT's logits on
/// the tiny model (Tests/LoRAKitTests/Fixtures/plugins, made by scripts/gen_plugin_fixtures.py) and PEFT's
/// perplexity on SmolLM2; merged equals unmerged; saved folders load back to the same logits.
@Suite(.serialized) struct PluginTests {
    static let tinyRef: JSONValue = try! JSON.parse(file: fixturePath("plugins/tiny/reference.json"))
    static let names = ["ia3_kvd", "dora_qv"]

    func logits(_ model: LlamaModel, _ adapters: [(PluginAdapter, Float)], ids: [Int32]) throws -> [Float] {
        let ctx = try LlamaContext(model: model, threads: 2)
        for (a, s) in adapters { try ctx.attach(a, scale: s) }
        return try ctx.evaluate(.tokens(ids), logits: .all)
    }

    func maxDiff(_ got: [Float], _ expected: [[Float]]) -> Float {
        var worst: Float = 0
        let v = expected[0].count
        for (i, row) in expected.enumerated() { for j in 0..<v { worst = max(worst, abs(got[i * v + j] - row[j])) } }
        return worst
    }

    @Test(arguments: names)
    func tinyLogitsMatchPEFT(name: String) throws {
        #expect(TestPlugins.loaded)
        let model = try LlamaModel.load(path: fixturePath("train/model"))
        let adapter = try PluginAdapter.load(peftDirectory: fixturePath("plugins/tiny/\(name)"), model: model)
        #expect(adapter.type.name == (name == "ia3_kvd" ? "ia3" : "dora"))
        let ref = PluginTests.tinyRef
        let seqs = ref["sequences"]!.array!.map { ints($0) }
        let merged = try mergedWithPlugins(model: model, adapters: [(adapter, 1)])
        for (s, ids) in seqs.enumerated() {
            let expected = ref[name]!["logits"]!.array![s].array!.map { floats($0) }
            let d = maxDiff(try logits(model, [(adapter, 1)], ids: ids), expected)
            #expect(d < 2e-4, "\(name) seq \(s): max |Δlogit| vs PEFT \(d)")
            let dm = maxDiff(try logits(merged, [], ids: ids), expected)
            #expect(dm < 2e-4, "\(name) merged seq \(s): max |Δlogit| vs PEFT \(dm)")
            // Scale 0 is the base model.
            let base = ref["base_logits"]!.array![s].array!.map { floats($0) }
            let d0 = maxDiff(try logits(model, [(adapter, 0)], ids: ids), base)
            #expect(d0 < 2e-4, "\(name) scale 0 seq \(s): max |Δlogit| vs base \(d0)")
            print("plugin \(name) seq \(s): max |Δlogit| vs PEFT \(d) unmerged, \(dm) merged")
        }
    }

    /// Saved to PEFT and loaded back: the same keys, config and logits.
    @Test(arguments: names)
    func saveAndReload(name: String) throws {
        #expect(TestPlugins.loaded)
        let model = try LlamaModel.load(path: fixturePath("train/model"))
        let adapter = try PluginAdapter.load(peftDirectory: fixturePath("plugins/tiny/\(name)"), model: model)
        let dir = temporaryPath("plugin-\(name)")
        try adapter.save(peftDirectory: dir)
        let f0 = try SafetensorsFile(path: fixturePath("plugins/tiny/\(name)/adapter_model.safetensors"))
        let f1 = try SafetensorsFile(path: dir + "/adapter_model.safetensors")
        #expect(Set(f0.tensorNames) == Set(f1.tensorNames))
        for k in f0.tensorNames {
            #expect(try f0.tensor(k).converted(to: .f32).toFloats() == f1.tensor(k).toFloats(), "\(k)")
        }
        let again = try PluginAdapter.load(peftDirectory: dir, model: model)
        let ids = ints(PluginTests.tinyRef["sequences"]!.array![0])
        #expect(try logits(model, [(adapter, 1)], ids: ids) == logits(model, [(again, 1)], ids: ids))
    }

    /// IA³ and DoRA stacked, and hot-swapped: detaching gives back the other's logits exactly.
    @Test func stackAndSwap() throws {
        #expect(TestPlugins.loaded)
        let model = try LlamaModel.load(path: fixturePath("train/model"))
        let ia3 = try PluginAdapter.load(peftDirectory: fixturePath("plugins/tiny/ia3_kvd"), model: model)
        let dora = try PluginAdapter.load(peftDirectory: fixturePath("plugins/tiny/dora_qv"), model: model)
        let ids = ints(PluginTests.tinyRef["sequences"]!.array![1])
        let ctx = try LlamaContext(model: model, threads: 2)
        try ctx.attach(ia3, scale: 1)
        let onlyIA3 = try ctx.evaluate(.tokens(ids), logits: .all)
        try ctx.attach(dora, scale: 1)
        ctx.reset()
        let both = try ctx.evaluate(.tokens(ids), logits: .all)
        #expect(zip(both, onlyIA3).map { abs($0 - $1) }.max()! > 0.01)
        try ctx.detach(ia3)
        ctx.reset()
        let onlyDoRA = try ctx.evaluate(.tokens(ids), logits: .all)
        let expected = PluginTests.tinyRef["dora_qv"]!["logits"]!.array![1].array!.map { floats($0) }
        #expect(maxDiff(onlyDoRA, expected) < 2e-4)
        #expect(throws: LKError.self) { try ctx.detach(ia3) }
        #expect(throws: LKError.self) { try ctx.attach(dora, scale: 1) }
    }

    /// The real model (Q4_1, GGUF row order for q/k): perplexity with the PEFT adapters within 0.05% of
    /// PEFT's on the dequantized base, unmerged and merged.
    @Test(arguments: names)
    func realModelPerplexityMatchesPEFT(name: String) throws {
        guard let model = RealModel.shared, let mref = RealModelTests.reference else { return }
        #expect(TestPlugins.loaded)
        let ref = try JSON.parse(file: fixturePath("plugins/smollm2/reference.json"))[name]!
        let adapter = try PluginAdapter.load(peftDirectory: fixturePath("plugins/smollm2/\(name)"), model: model)
        let ids = ints(mref["scoring"]!["ids"])
        let (nll, count, _) = try windowedNLL(model: model, plugins: [(adapter, 1)], ids: ids)
        let ppl = exp(nll / Double(count)), want = ref["perplexity_adapter"]!.double!
        #expect(count == ref["predicted"]!.int!)
        #expect(abs(ppl - want) / want < 0.0005, "\(name): perplexity \(ppl) vs PEFT \(want)")
        let merged = try mergedWithPlugins(model: model, adapters: [(adapter, 1)])
        let (nllM, countM, _) = try windowedNLL(model: merged, ids: ids)
        let pplM = exp(nllM / Double(countM)), wantM = ref["perplexity_merged"]!.double!
        #expect(abs(pplM - wantM) / wantM < 0.0005, "\(name) merged: perplexity \(pplM) vs PEFT \(wantM)")
        print("real model + \(name): perplexity \(ppl) (PEFT \(want)), merged (f32) \(pplM) (PEFT \(wantM))")
    }

    @Test func unknownTypeNamesThePlugin() throws {
        let dir = temporaryPath("plugin-loha")
        mkdir(dir, 0o755)
        try AtomicFile.write(path: dir + "/adapter_config.json", bytes: Array("{\"peft_type\": \"LOHA\", \"target_modules\": [\"q_proj\"]}".utf8))
        let model = try LlamaModel.load(path: fixturePath("train/model"))
        do {
            _ = try PluginAdapter.load(peftDirectory: dir, model: model)
            Issue.record("LOHA accepted")
        } catch {
            #expect(error.message.contains("peft_type \"LOHA\"") && error.message.contains("no shipped plugin serves it"), "\(error.message)")
        }
    }
}

/// Finite differences of each shipped plugin's backward through the host (the host's forward, its kinds
/// composed with the base product W x, and the parameter and input gradients the plugin reports), on
/// modules of the tiny model with the fixture adapters: L = Σ y ⊙ r for a fixed random r. DoRA's row norm is
/// cached by `prepare` and detached in the backward (as PEFT does), so the parameters are perturbed without
/// a new prepare: the differences then measure exactly the derivative the backward computes.
@Suite struct PluginGradientTests {
    /// y [T, OUT] of the module with `m` attached at scale `s` (double-precision base product).
    static func moduleForward(_ m: PluginModule, w: [Float], x: [Float], rows t: Int, scale s: Float) throws -> [Float] {
        let nIn = m.inFeatures, nOut = m.outFeatures
        let pool = ThreadPool(threads: 1)
        var xin = x
        var ws = [Float](repeating: 0, count: max(1, m.workspaceFloats(call: 0, rows: t)))
        if m.point == .input {
            var o = [Float](repeating: 0, count: t * nIn)
            try m.forward(x: x, baseY: nil, rows: t, y: &o, scale: s, workspace: &ws, pool: pool)
            xin = o
        }
        var h = [Float](repeating: 0, count: t * nOut)
        for r in 0..<t { for o in 0..<nOut {
            var acc = 0.0
            for i in 0..<nIn { acc += Double(w[o * nIn + i]) * Double(xin[r * nIn + i]) }
            h[r * nOut + o] = Float(acc)
        } }
        var y = h
        if m.point == .output { try m.forward(x: xin, baseY: h, rows: t, y: &y, scale: s, workspace: &ws, pool: pool) }
        if m.point == .add { try m.forward(x: xin, baseY: h, rows: t, y: &y, scale: s, workspace: &ws, pool: pool) }
        return y
    }

    static func loss(_ y: [Float], _ r: [Float]) -> Double { zip(y, r).reduce(0.0) { $0 + Double($1.0) * Double($1.1) } }

    @Test(arguments: [("ia3_kvd", 0, LinearModule.k), ("ia3_kvd", 1, .down), ("dora_qv", 0, .q), ("dora_qv", 1, .v)])
    func backwardMatchesFiniteDifferences(name: String, layer: Int, module: LinearModule) throws {
        #expect(TestPlugins.loaded)
        let model = try LlamaModel.load(path: fixturePath("train/model"))
        let adapter = try PluginAdapter.load(peftDirectory: fixturePath("plugins/tiny/\(name)"), model: model)
        let m = try #require(adapter.module(layer, module)).copy(model: model, pool: ThreadPool(threads: 1))
        let nIn = m.inFeatures, nOut = m.outFeatures, t = 3
        let w = m.weight.floats()
        var rng = SplitMix64(seed: 7)
        let x = (0..<(t * nIn)).map { _ in rng.nextGaussian() }
        let r = (0..<(t * nOut)).map { _ in rng.nextGaussian() }
        let s: Float = 0.8
        // Analytic gradients through the host's backward composition.
        let pool = ThreadPool(threads: 1)
        var grads = m.parameters.map { [Float](repeating: 0, count: $0.count) }
        var dx = [Float](repeating: 0, count: t * nIn)
        var ws = [Float](repeating: 0, count: max(1, m.workspaceFloats(call: 1, rows: t)))
        func wT(_ d: [Float]) -> [Float] {  // d [T, OUT] · W → [T, IN]
            var o = [Float](repeating: 0, count: t * nIn)
            for q in 0..<t { for i in 0..<nIn {
                var acc = 0.0
                for j in 0..<nOut { acc += Double(d[q * nOut + j]) * Double(w[j * nIn + i]) }
                o[q * nIn + i] = Float(acc)
            } }
            return o
        }
        var h = [Float](repeating: 0, count: t * nOut)
        for q in 0..<t { for o in 0..<nOut {
            var acc = 0.0
            for i in 0..<nIn { acc += Double(w[o * nIn + i]) * Double(x[q * nIn + i]) }
            h[q * nOut + o] = Float(acc)
        } }
        try withArrayPointers(&grads) { gp in
            switch m.point {
            case .input:
                let dxp = wT(r)
                try m.backward(x: x, baseY: nil, dy: dxp, rows: t, dx: &dx, dBaseY: nil, paramGrads: gp, scale: s,
                               workspace: &ws, pool: pool)
            case .output:
                var dh = [Float](repeating: 0, count: t * nOut)
                try m.backward(x: x, baseY: h, dy: r, rows: t, dx: &dx, dBaseY: &dh, paramGrads: gp, scale: s,
                               workspace: &ws, pool: pool)
                dx = zip(dx, wT(dh)).map { $0 + $1 }
            case .add:
                var dh = [Float](repeating: 0, count: t * nOut)
                try m.backward(x: x, baseY: h, dy: r, rows: t, dx: &dx, dBaseY: &dh, paramGrads: gp, scale: s,
                               workspace: &ws, pool: pool)
                dx = zip(dx, wT(zip(r, dh).map { $0 + $1 })).map { $0 + $1 }
            }
        }
        // Central differences (f32 forward, relative step), on a few entries of every parameter and of x.
        let eps: Float = 1e-2
        var worst = 0.0
        func compare(_ analytic: Float, _ plus: Double, _ minus: Double, _ step: Float, _ what: String) {
            let fd = (plus - minus) / (2 * Double(step))
            let err = abs(fd - Double(analytic)) / max(1, abs(fd))
            worst = max(worst, err)
            #expect(err < 2e-2, "\(name) \(what): analytic \(analytic), finite difference \(fd)")
        }
        for (pi, p) in m.parameters.enumerated() where p.trainable {
            let v = m.values[pi].f32
            // DoRA's prepare caches m/n: a magnitude change needs it (n itself does not change with m).
            let reprepare = p.name == "lora_magnitude_vector"
            for k in stride(from: 0, to: p.count, by: max(1, p.count / 5)) {
                let old = v[k], step = eps * max(1, abs(old))
                v[k] = old + step
                if reprepare { try m.prepare(pool: pool) }
                let lp = Self.loss(try Self.moduleForward(m, w: w, x: x, rows: t, scale: s), r)
                v[k] = old - step
                if reprepare { try m.prepare(pool: pool) }
                let lm = Self.loss(try Self.moduleForward(m, w: w, x: x, rows: t, scale: s), r)
                v[k] = old
                if reprepare { try m.prepare(pool: pool) }
                compare(grads[pi][k], lp, lm, step, "d\(p.name)[\(k)]")
            }
        }
        for k in stride(from: 0, to: t * nIn, by: max(1, t * nIn / 7)) {
            var xp = x, xm = x
            xp[k] += eps
            xm[k] -= eps
            compare(dx[k], Self.loss(try Self.moduleForward(m, w: w, x: xp, rows: t, scale: s), r),
                    Self.loss(try Self.moduleForward(m, w: w, x: xm, rows: t, scale: s), r), eps, "dx[\(k)]")
        }
        print("plugin \(name) layer \(layer) \(module): backward vs finite differences, worst relative error \(worst)")
    }
}

/// Run `body` with an array of mutable pointers into each inner array.
func withArrayPointers(_ a: inout [[Float]], _ body: ([UnsafeMutablePointer<Float>?]) throws -> Void) throws {
    let bufs = a.map { v -> UnsafeMutablePointer<Float> in
        let p = UnsafeMutablePointer<Float>.allocate(capacity: max(1, v.count))
        p.initialize(from: v, count: v.count)
        return p
    }
    defer { bufs.forEach { $0.deallocate() } }
    try body(bufs)
    for i in a.indices { a[i] = Array(UnsafeBufferPointer(start: bufs[i], count: a[i].count)) }
}

/// Training parity with PEFT + PyTorch (Fixtures/plugins/train, scripts/gen_plugin_fixtures.py): the same
/// random start, 12 steps of 2 examples (seq 24, each row alone, loss = Σ target NLL / N), AdamW (betas 0.9,
/// 0.999, eps 1e-8, weight decay 0.01, constant lr, no clipping) on every adapter tensor. Per-step losses and
/// gradient norms within 1e-4 relative; the final tensors within 1e-4.
@Suite struct PluginTrainingTests {
    @Test(arguments: ["ia3_kvd", "dora_qv"])
    func trainingMatchesPEFT(run: String) throws {
        #expect(TestPlugins.loaded)
        let model = try LlamaModel.load(path: fixturePath("train/model"))
        let ref = try JSON.parse(file: fixturePath("plugins/train/reference.json"))["runs"]![run]!
        let start = try PluginAdapter.load(peftDirectory: fixturePath("plugins/train/\(run)/init"), model: model)
        let tr = try LoRATrainer(model: model, plugin: start, threads: 2)
        let ex = try TrainParityTests.examples("text.jsonl")
        let betas = ref["betas"]!.array!.map { $0.double! }
        let params = try tr.parameters.map { t throws(LKError) -> OptimizerParameter in
            let (v, g) = try t.tensors()
            return try OptimizerParameter(name: t.name, value: v, grad: g)
        }
        let opt = try AdamW(parameters: params, config: OptimizerConfig(lr: ref["lr"]!.double!, beta1: betas[0], beta2: betas[1],
                                                                         eps: ref["eps"]!.double!, weightDecay: 0.01, maxGradNorm: nil))
        let seq = ref["seq"]!.int!
        for want in ref["steps"]!.array! {
            let batch = want["examples"]!.array!.map { TrainParityTests.sequence(ex[$0.int!], seq: seq) }
            tr.zeroGradients()
            let r = try tr.pass(batch, gradients: true)
            let i = want["step"]!.int!
            #expect(r.predicted == want["n_target_tokens"]!.int!)
            let wl = want["loss"]!.double!
            #expect(abs(r.meanNLL - wl) / wl < 1e-4, "\(run) step \(i): loss \(r.meanNLL) vs PEFT \(wl)")
            let gn = try opt.clipGradients(pool: tr.pool)
            let wg = want["grad_norm"]!.double!
            #expect(abs(Double(gn) - wg) / wg < 1e-4, "\(run) step \(i): grad norm \(gn) vs PEFT \(wg)")
            try opt.step(lr: ref["lr"]!.double!, pool: tr.pool)
            if i == 0 || i == 11 { print("plugin training \(run) step \(i): loss \(r.meanNLL) (PEFT \(wl)), grad norm \(gn) (PEFT \(wg))") }
        }
        // The final values vs PEFT's final folder, and the trained adapter saved to PEFT and loaded back.
        let mine = try tr.trainedPluginAdapter()
        let theirs = try PluginAdapter.load(peftDirectory: fixturePath("plugins/train/\(run)/final"), model: model)
        var worst: Float = 0
        for m in theirs.modules {
            let a = try #require(mine.module(m.layer, m.module))
            for (x, y) in zip(a.values, m.values) { for k in 0..<x.count { worst = max(worst, abs(x.f32[k] - y.f32[k])) } }
        }
        #expect(worst < 1e-4, "\(run): final tensors max |Δ| \(worst) vs PEFT")
        print("plugin training \(run): final tensors max |Δ| vs PEFT \(worst)")
    }
}
