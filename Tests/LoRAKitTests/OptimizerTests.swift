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

/// AdamW, clipping and LR schedules against torch / transformers (Fixtures/train_optim/reference.json,
/// written by scripts/gen_optimizer_fixture.py).
@Suite struct OptimizerTests {
    static let ref: JSONValue = try! JSON.parse(file: fixturePath("train_optim/reference.json"))

    /// Largest |a − b| / max(1e-3, |b|) over two arrays of the same length.
    func relErr(_ a: [Float], _ b: [Float]) -> Float {
        precondition(a.count == b.count)
        var worst: Float = 0
        for (x, y) in zip(a, b) { worst = max(worst, abs(x - y) / max(1e-3, abs(y))) }
        return worst
    }

    func values(_ t: Tensor) -> [Float] { Array(UnsafeBufferPointer(start: t.f32, count: t.count)) }

    func shape(_ v: JSONValue?) -> [Int] { (v?.array ?? []).map { $0.int! } }

    @Test(arguments: 0..<3) func adamwMatchesTorch(run: Int) throws {
        let r = OptimizerTests.ref["adamw"]!.array![run]
        let name = r["name"]!.string!
        var params: [OptimizerParameter] = []
        for p in r["params"]!.array! {
            params.append(try OptimizerParameter(name: p["name"]!.string!, shape: shape(p["shape"]), values: floats(p["init"])))
        }
        let cfg = OptimizerConfig(lr: r["lr"]!.double!, beta1: r["beta1"]!.double!, beta2: r["beta2"]!.double!,
                                  eps: r["eps"]!.double!, weightDecay: r["weight_decay"]!.double!,
                                  maxGradNorm: r["max_grad_norm"]!.double)
        let opt = try AdamW(parameters: params, config: cfg)
        let sched = try LRSchedule(kind: try LRScheduleKind(parsing: r["schedule"]!.string!),
                                   warmupSteps: r["warmup"]!.int!, totalSteps: r["total"]!.int!)
        let pool = ThreadPool(threads: 2)
        var worstParam: Float = 0
        for (s, step) in r["steps"]!.array!.enumerated() {
            // The schedule gives the lr torch's LambdaLR used for this update (bit-exact in Double).
            let lr = sched.lr(base: cfg.lr, step: s)
            #expect(lr == step["lr_used"]!.double!, "\(name) step \(s): lr \(lr) vs torch \(step["lr_used"]!.double!)")
            for p in params {
                let g = floats(step["grads"]![p.name])
                p.grad.f32.update(from: g, count: g.count)
            }
            if cfg.clipNorm != nil {
                let total = try opt.clipGradients(pool: s % 2 == 0 ? pool : nil)
                let expected = Float(step["total_norm"]!.double!)
                #expect(abs(total - expected) <= 2e-7 * expected, "\(name) step \(s): norm \(total) vs torch \(expected)")
                for p in params {
                    let e = relErr(values(p.grad), floats(step["clipped_grads"]![p.name]))
                    #expect(e < 1e-6, "\(name) step \(s) \(p.name): clipped grads rel err \(e)")
                }
            }
            try opt.step(lr: lr, pool: s % 2 == 0 ? pool : nil)
            for p in params {
                let e = relErr(values(p.value), floats(step["params"]![p.name]))
                worstParam = max(worstParam, e)
                #expect(e < 2e-6, "\(name) step \(s) \(p.name): params rel err \(e)")
            }
        }
        #expect(opt.stepCount == r["final_step"]!.int!)
        for (i, p) in params.enumerated() {
            #expect(relErr(values(opt.expAvg[i]), floats(r["final_exp_avg"]![p.name])) < 1e-5, "\(name) \(p.name) exp_avg")
            #expect(relErr(values(opt.expAvgSq[i]), floats(r["final_exp_avg_sq"]![p.name])) < 1e-5, "\(name) \(p.name) exp_avg_sq")
        }
        print("adamw \(name): worst param rel err over 10 steps \(worstParam)")
    }

    @Test func clipMatchesTorch() throws {
        for c in OptimizerTests.ref["clip"]!.array! {
            let name = c["name"]!.string!
            let shapes = c["shapes"]!.array!.map { shape($0) }
            var params: [OptimizerParameter] = []
            for (i, g) in c["grads"]!.array!.enumerated() {
                let p = try OptimizerParameter(name: "p\(i)", shape: shapes[i], values: [Float](repeating: 0, count: shapes[i].reduce(1, *)))
                let gv = floats(g)
                p.grad.f32.update(from: gv, count: gv.count)
                params.append(p)
            }
            let (per, _) = GradientClipping.norms(params)
            let expNorms = floats(c["tensor_norms"])
            for (a, b) in zip(per, expNorms) { #expect(abs(a - b) <= 2e-7 * max(b, 1e-30), "\(name): tensor norm \(a) vs \(b)") }
            let total = try GradientClipping.clip(params, maxNorm: c["max_norm"]!.double!)
            let expected = Float(c["total_norm"]!.double!)
            #expect(abs(total - expected) <= 2e-7 * expected, "\(name): total \(total) vs \(expected)")
            for (i, p) in params.enumerated() {
                let e = relErr(values(p.grad), floats(c["clipped"]!.array![i]))
                #expect(e < 1e-6, "\(name) p\(i): clipped rel err \(e)")
            }
        }
    }

    @Test func clipIsIndependentOfThreads() throws {
        // A parameter big enough to be split into chunks and spread over the pool.
        let rng = SplitMix64(seed: 5)
        let n = 300_001
        func make() throws -> [OptimizerParameter] {
            var r = rng
            let a = try OptimizerParameter(name: "a", shape: [n], values: [Float](repeating: 0, count: n))
            let b = try OptimizerParameter(name: "b", shape: [7], values: [Float](repeating: 0, count: 7))
            for i in 0..<n { a.grad.f32[i] = r.nextGaussian() }
            for i in 0..<7 { b.grad.f32[i] = r.nextGaussian() }
            return [a, b]
        }
        let p1 = try make(), p2 = try make()
        let t1 = try GradientClipping.clip(p1, maxNorm: 1, pool: nil)
        let t2 = try GradientClipping.clip(p2, maxNorm: 1, pool: ThreadPool(threads: 3))
        #expect(t1 == t2)
        #expect(memcmp(p1[0].grad.f32, p2[0].grad.f32, n * 4) == 0)
        if let i = (0..<n).first(where: { p1[0].grad.f32[$0] != p2[0].grad.f32[$0] }) {
            print("first difference at \(i): \(p1[0].grad.f32[i]) vs \(p2[0].grad.f32[i]); norm \(t1)")
        }
        // Slow reference: Double sum of squares.
        var s = 0.0
        var r = SplitMix64(seed: 5)
        for _ in 0..<(n + 7) { let g = Double(r.nextGaussian()); s += g * g }
        #expect(abs(Double(t1) - s.squareRoot()) <= 1e-6 * s.squareRoot())
        var after = 0.0
        for p in p1 { for i in 0..<p.count { after += Double(p.grad.f32[i]) * Double(p.grad.f32[i]) } }
        #expect(abs(after.squareRoot() - 1) < 1e-5, "norm after clipping \(after.squareRoot())")
    }

    @Test func nonFiniteGradientIsAnError() throws {
        let a = try OptimizerParameter(name: "layers.3.q.lora_A", shape: [2, 2], values: [1, 2, 3, 4])
        let b = try OptimizerParameter(name: "layers.3.q.lora_B", shape: [3], values: [0, 0, 0])
        a.grad.f32[0] = 1
        b.grad.f32[1] = .nan
        do {
            _ = try GradientClipping.clip([a, b], maxNorm: 1)
            Issue.record("NaN gradient accepted")
        } catch {
            #expect(error.message.contains("NaN") && error.message.contains("layers.3.q.lora_B"), "\(error)")
        }
        #expect(a.grad.f32[0] == 1, "gradients must be left untouched")
        b.grad.f32[1] = .infinity
        let opt = try AdamW(parameters: [a, b], config: OptimizerConfig(maxGradNorm: nil))
        #expect(throws: LKError.self) { try opt.clipGradients() }
    }

    @Test func schedulesMatchTransformers() throws {
        for c in OptimizerTests.ref["schedules"]!.array! {
            let kind = try LRScheduleKind(parsing: c["kind"]!.string!)
            let s = try LRSchedule(kind: kind, warmupSteps: c["warmup"]!.int!, totalSteps: c["total"]!.int!)
            for (step, lam) in c["lambda"]!.array!.enumerated() {
                #expect(s.factor(step: step) == lam.double!, "\(kind) W=\(s.warmupSteps) T=\(s.totalSteps) s=\(step): \(s.factor(step: step)) vs \(lam.double!)")
            }
        }
        #expect(throws: LKError.self) { try LRScheduleKind(parsing: "exponential") }
        #expect(try LRScheduleKind(parsing: "Cosine") == .cosine)
        #expect(throws: LKError.self) { try LRSchedule(kind: .linear, totalSteps: 0) }
        #expect(throws: LKError.self) { try LRSchedule(kind: .constant, warmupSteps: -1, totalSteps: 0) }
    }

    /// lr_min_ratio m (transformers' cosine_with_min_lr, min_lr_rate): after the warm-up λ = c · (1 − m) + m
    /// with c the plain half cosine, so λ falls from 1 to (1 + m)/2 half-way and to m at the last step;
    /// m = 0 is the plain cosine bit for bit. m outside [0, 1], or with another schedule, is refused.
    @Test func cosineDecaysToTheMinimumRatio() throws {
        let (w, t, m) = (3, 23, 0.1)
        let s = try LRSchedule(kind: .cosine, warmupSteps: w, totalSteps: t, minRatio: m)
        let plain = try LRSchedule(kind: .cosine, warmupSteps: w, totalSteps: t)
        for step in 0...(t + 3) {
            let want = step < w ? Double(step) / Double(w)
                : 0.5 * (1 + cos(Double.pi * Double(step - w) / Double(t - w))) * (1 - m) + m
            #expect(abs(s.factor(step: step) - want) <= 1e-15, "s=\(step): \(s.factor(step: step)) vs \(want)")
            #expect(s.lr(base: 2e-3, step: step) == 2e-3 * s.factor(step: step))
        }
        #expect(abs(s.factor(step: w) - 1) <= 1e-15)
        #expect(abs(s.factor(step: w + (t - w) / 2) - (1 + m) / 2) <= 1e-15)
        #expect(abs(s.factor(step: t) - m) <= 1e-15)
        #expect((w..<t).allSatisfy { s.factor(step: $0) > s.factor(step: $0 + 1) && s.factor(step: $0 + 1) >= m - 1e-15 })
        let zero = try LRSchedule(kind: .cosine, warmupSteps: w, totalSteps: t, minRatio: 0)
        #expect((0...t).allSatisfy { zero.factor(step: $0) == plain.factor(step: $0) })
        #expect(try LRSchedule(kind: .cosine, totalSteps: 5, minRatio: 1).factor(step: 3) == 1)
        func field(_ body: () throws -> Void) -> String? {
            do { try body(); return nil } catch { if case .invalidOption(let f, _)? = error as? LKError { return f }; return "\(error)" }
        }
        for bad in [-0.1, 1.5, .nan, .infinity] {
            #expect(field { _ = try LRSchedule(kind: .cosine, totalSteps: 5, minRatio: bad) } == "lr_min_ratio")
        }
        #expect(field { _ = try LRSchedule(kind: .linear, totalSteps: 5, minRatio: 0.1) } == "lr_min_ratio")
        #expect(field { _ = try LRSchedule(kind: .constant, totalSteps: 5, minRatio: 0.1) } == "lr_min_ratio")
    }

    @Test func hyperParameterValidation() throws {
        func rejects(_ field: String, _ edit: (inout OptimizerConfig) -> Void, sourceLocation: SourceLocation = #_sourceLocation) {
            var c = OptimizerConfig()
            edit(&c)
            do {
                try c.validate()
                Issue.record("accepted bad \(field)", sourceLocation: sourceLocation)
            } catch {
                #expect(error.message.contains(field), "\(error)", sourceLocation: sourceLocation)
            }
        }
        try OptimizerConfig().validate()
        rejects("lr") { $0.lr = 0 }
        rejects("lr") { $0.lr = -1e-3 }
        rejects("lr") { $0.lr = .nan }
        rejects("lr") { $0.lr = 11 }
        rejects("beta1") { $0.beta1 = 1 }
        rejects("beta1") { $0.beta1 = -0.1 }
        rejects("beta2") { $0.beta2 = 1.5 }
        rejects("eps") { $0.eps = 0 }
        rejects("eps") { $0.eps = .infinity }
        rejects("weight decay") { $0.weightDecay = -0.01 }
        rejects("weight decay") { $0.weightDecay = .nan }
        rejects("max grad norm") { $0.maxGradNorm = -1 }
        rejects("max grad norm") { $0.maxGradNorm = .nan }
        var c = OptimizerConfig(lr: 10, beta1: 0, maxGradNorm: 0)
        try c.validate()
        #expect(c.clipNorm == nil)
        c.maxGradNorm = nil
        try c.validate()
        // JSON round trip
        let c2 = OptimizerConfig(lr: 3e-4, beta1: 0.85, beta2: 0.95, eps: 1e-7, weightDecay: 0, maxGradNorm: 0.5)
        #expect(try OptimizerConfig(json: try JSON.parse(JSON.serialize(c2.json))) == c2)
        #expect(throws: LKError.self) { try OptimizerConfig(json: try JSON.parse("{\"lr\": \"big\"}")) }
        // AdamW refuses duplicate names, no parameters and a bad scheduled lr.
        let p = try OptimizerParameter(name: "x", shape: [1], values: [1])
        #expect(throws: LKError.self) { try AdamW(parameters: [p, p]) }
        #expect(throws: LKError.self) { try AdamW(parameters: []) }
        #expect(throws: LKError.self) { try AdamW(parameters: [p]).step(lr: .nan) }
        #expect(throws: LKError.self) { try OptimizerParameter(name: "y", value: try Tensor(zeros: [2]), grad: try Tensor(zeros: [3])) }
    }

    @Test func stateRoundTripContinuesExactly() throws {
        let dir = "/tmp/lorakit-optim-test-\(getpid())"
        mkdir(dir, 0o755)
        defer { unlink(dir + "/opt.safetensors"); unlink(dir + "/bad.safetensors"); rmdir(dir) }
        var rng = SplitMix64(seed: 11)
        func params() throws -> [OptimizerParameter] {
            var r = SplitMix64(seed: 3)
            return [try OptimizerParameter(name: "base_model.layers.0.q.lora_A", shape: [3, 5], values: (0..<15).map { _ in r.nextGaussian() }),
                    try OptimizerParameter(name: "base_model.layers.0.q.lora_B", shape: [4, 3], values: (0..<12).map { _ in r.nextGaussian() })]
        }
        let grads: [[[Float]]] = (0..<6).map { _ in [(0..<15).map { _ in rng.nextGaussian() }, (0..<12).map { _ in rng.nextGaussian() }] }
        func feed(_ ps: [OptimizerParameter], _ s: Int) {
            for (i, p) in ps.enumerated() { p.grad.f32.update(from: grads[s][i], count: p.count) }
        }
        let cfg = OptimizerConfig(lr: 1e-2, weightDecay: 0.05)
        // Straight run of 6 steps.
        let pa = try params()
        let a = try AdamW(parameters: pa, config: cfg)
        for s in 0..<6 { feed(pa, s); try a.clipGradients(); try a.step(lr: 1e-2 * Double(s + 1)) }
        // 3 steps, save, new optimizer over copies of the parameters, restore, 3 more steps.
        let pb = try params()
        let b = try AdamW(parameters: pb, config: cfg)
        for s in 0..<3 { feed(pb, s); try b.clipGradients(); try b.step(lr: 1e-2 * Double(s + 1)) }
        try b.saveState(to: dir + "/opt.safetensors", extraMetadata: ["note": "x"])
        let pc = try params()
        for (x, y) in zip(pc, pb) { x.value.f32.update(from: y.value.f32, count: x.count) }
        let c = try AdamW(parameters: pc, config: cfg)
        let st = try AdamWState(path: dir + "/opt.safetensors")
        #expect(st.step == 3 && st.config == cfg && st.metadata["note"] == "x" && st.names == pc.map(\.name))
        try c.restore(st)
        #expect(c.stepCount == 3)
        for s in 3..<6 { feed(pc, s); try c.clipGradients(); try c.step(lr: 1e-2 * Double(s + 1)) }
        for (x, y) in zip(pa, pc) { #expect(memcmp(x.value.f32, y.value.f32, x.count * 4) == 0, "\(x.name) differs after resume") }
        // Mismatched parameters are refused with their names.
        let other = try AdamW(parameters: [try OptimizerParameter(name: "base_model.layers.0.q.lora_A", shape: [5, 3], values: [Float](repeating: 0, count: 15)),
                                           pc[1]])
        do { try other.restore(st); Issue.record("shape mismatch accepted") } catch {
            #expect(error.message.contains("lora_A") && error.message.contains("shape"), "\(error)")
        }
        let renamed = try AdamW(parameters: [try OptimizerParameter(name: "z", shape: [3, 5], values: [Float](repeating: 0, count: 15)), pc[1]])
        do { try renamed.restore(st); Issue.record("name mismatch accepted") } catch {
            #expect(error.message.contains("missing z") && error.message.contains("unknown base_model.layers.0.q.lora_A"), "\(error)")
        }
        // A file that is not an optimizer state.
        var w = SafetensorsWriter()
        try w.add("x", try Tensor([1], shape: [1]))
        try w.write(to: dir + "/bad.safetensors")
        #expect(throws: LKError.self) { try AdamWState(path: dir + "/bad.safetensors") }
    }

    @Test func stepIsIndependentOfThreads() throws {
        let n = 200_003
        var r = SplitMix64(seed: 9)
        let init0 = (0..<n).map { _ in r.nextGaussian() }
        let g = (0..<n).map { _ in r.nextGaussian() * 0.01 }
        var results: [[Float]] = []
        for threads in [1, 2, 3] {
            let p = try OptimizerParameter(name: "w", shape: [n], values: init0)
            p.grad.f32.update(from: g, count: n)
            let opt = try AdamW(parameters: [p])
            for _ in 0..<3 { try opt.step(lr: 1e-3, pool: threads == 1 ? nil : ThreadPool(threads: threads)) }
            results.append(values(p.value))
        }
        #expect(results[0] == results[1] && results[1] == results[2])
        // Slow reference of the documented formula in Double for element 0..99 (agrees to float rounding).
        var m = 0.0, v = 0.0
        for k in 0..<100 {
            var p = Double(init0[k]); m = 0; v = 0
            for t in 1...3 {
                p *= 1 - 1e-3 * 0.01
                m = 0.9 * m + 0.1 * Double(g[k]); v = 0.999 * v + 0.001 * Double(g[k]) * Double(g[k])
                p -= 1e-3 / (1 - pow(0.9, Double(t))) * m / (v.squareRoot() / (1 - pow(0.999, Double(t))).squareRoot() + 1e-8)
            }
            #expect(abs(Double(results[0][k]) - p) < 1e-6 * max(1, abs(p)), "element \(k): \(results[0][k]) vs \(p)")
        }
    }
}
