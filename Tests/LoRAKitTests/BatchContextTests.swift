import Testing
@testable import LoRAKitCore
@testable import LoRAKitKernels
@testable import LoRAKitModel

/// `BatchContext` against single-sequence `LlamaContext`s replaying the same history.
@Suite struct BatchContextTests {
    /// What happened to one sequence, replayed on a `LlamaContext` to get the reference.
    enum Op {
        case eval([Int32], logits: [Float])
        case truncate(Int)
        case adapters([(adapter: LoRAAdapter, scale: Float)])
    }

    /// Replay `ops` on a fresh context; returns (max |Δlogit| over every eval, argmax disagreements).
    static func replay(_ m: LlamaModel, _ ops: [Op], kvType: KVCacheType = .f32) throws
        -> (maxDiff: Float, argmaxMismatches: Int, evals: Int) {
        let ctx = try LlamaContext(model: m, maxPositions: 128, threads: 2, kvType: kvType)
        var d: Float = 0, mism = 0, evals = 0
        for op in ops {
            switch op {
            case .eval(let toks, let got):
                let ref = try ctx.evaluate(.tokens(toks))
                #expect(ref.count == got.count)
                for (a, b) in zip(ref, got) { d = max(d, abs(a - b)) }
                if Sampler.argmax(ref) != Sampler.argmax(got) { mism += 1 }
                evals += 1
            case .truncate(let p):
                try ctx.truncate(to: p)
            case .adapters(let list):
                ctx.detachAll()
                for (a, s) in list { try ctx.attach(a, scale: s) }
            }
        }
        return (d, mism, evals)
    }

    /// A mixed run: different prompt lengths; adapters none / one / one shared by two sequences / two
    /// stacked with scales; a prefill joining while others decode; a fork; a truncate; a removal mid-run;
    /// greedy decoding throughout. Returns every sequence's history (ended ones included).
    static func mixedRun(_ m: LlamaModel, prompts: [[Int32]], decodeSteps: Int,
                         kvType: KVCacheType = .f32) throws -> [[Op]] {
        let a1 = try LoRATests.randomAdapter(m, targets: [.q, .v], rank: 8, alpha: 16, seed: 1, name: "a1")
        let a2 = try LoRATests.randomAdapter(m, targets: [.q, .v], rank: 8, alpha: 16, seed: 2, name: "a2")
        let a3 = try LoRATests.randomAdapter(m, targets: [.k, .o, .down], rank: 4, alpha: 8, seed: 3, name: "a3")
        let sets: [[(adapter: LoRAAdapter, scale: Float)]] = [[], [(a1, 1)], [(a2, 0.5), (a3, -0.75)], [(a1, 1)], [(a2, 1)]]
        let b = try BatchContext(model: m, maxSequences: 6, maxPositions: 128, threads: 2, kvType: kvType)
        #expect(b.kvType == kvType)
        var hist: [Int: [Op]] = [:]
        var next: [Int: Int32] = [:]
        var ids: [Int] = []
        // Four sequences prefill in one step; the fifth joins later.
        for i in 0..<4 {
            let id = try b.addSequence()
            try b.setAdapters(sets[i], for: id)
            ids.append(id)
            hist[id] = [.adapters(sets[i])]
        }
        func run(_ inputs: [(sequence: Int, tokens: [Int32])]) throws {
            let out = try b.step(inputs)
            for (inp, lg) in zip(inputs, out) {
                hist[inp.sequence]!.append(.eval(inp.tokens, logits: lg))
                next[inp.sequence] = Sampler.argmax(lg)
            }
        }
        try run((0..<4).map { (ids[$0], prompts[$0]) })
        var live = ids
        for stepNo in 0..<decodeSteps {
            var inputs = live.map { (sequence: $0, tokens: [next[$0]!]) }
            if stepNo == 2 {
                // A new sequence prefills while the others decode.
                let id = try b.addSequence()
                try b.setAdapters(sets[4], for: id)
                hist[id] = [.adapters(sets[4])]
                live.append(id)
                inputs.append((id, prompts[4]))
            }
            if stepNo == 3 {
                // Fork sequence 1 (same cache and adapters), then give the fork its own adapter.
                let f = try b.fork(ids[1])
                #expect(try b.position(of: f) == b.position(of: ids[1]))
                #expect(try b.adapters(of: f).map { ObjectIdentifier($0.adapter.object) } == [ObjectIdentifier(a1)])
                hist[f] = hist[ids[1]]!
                try b.setAdapters([(a3, 2)], for: f)
                hist[f]!.append(.adapters([(adapter: a3, scale: Float(2))]))
                next[f] = next[ids[1]]
                live.append(f)
                inputs.append((f, [next[f]!, 42]))
            }
            if stepNo == 4 {
                // Truncate sequence 3 by two positions and continue from there with other tokens.
                let p = try b.position(of: ids[3])
                try b.truncate(ids[3], to: p - 2)
                hist[ids[3]]!.append(.truncate(p - 2))
                inputs = inputs.map { $0.sequence == ids[3] ? ($0.sequence, [17, next[ids[3]]!]) : $0 }
            }
            if stepNo == 5 {
                // Sequence 0 ends.
                try b.removeSequence(ids[0])
                live.removeAll { $0 == ids[0] }
                inputs.removeAll { $0.sequence == ids[0] }
                #expect(!b.activeSequences.contains(ids[0]))
            }
            try run(inputs)
        }
        #expect(b.activeSequences == live.sorted())
        return hist.keys.sorted().map { hist[$0]! }
    }

    static let tinyPrompts: [[Int32]] = [[5, 77, 300, 2, 511, 42, 9], [130, 260, 17, 88, 401, 3, 250, 199, 64, 31, 480, 11, 7],
                                         [11, 7, 99], Array(LoRATests.ids.reversed()), [300, 301, 302, 303, 304]]

    @Test func mixedBatchMatchesSingleContextsTinyModel() throws {
        // f32 weights: every path computes in f32, so only the summation order differs.
        let m = try LlamaModel(gguf: LoRATests.f32Path)
        let hist = try BatchContextTests.mixedRun(m, prompts: BatchContextTests.tinyPrompts, decodeSteps: 8)
        #expect(hist.count == 6)
        for (i, ops) in hist.enumerated() {
            let r = try BatchContextTests.replay(m, ops)
            #expect(r.maxDiff < 1e-3, "sequence \(i): max |Δlogit| \(r.maxDiff)")
            #expect(r.argmaxMismatches == 0, "sequence \(i)")
            #expect(r.evals >= 3)
        }
    }

    @Test func f16CacheBatchMatchesF16SingleContexts() throws {
        // An f16 KV cache: the same mixed run (fork copies f16 rows; a 20-token prompt prefills through
        // the converted-to-f32 blocked kernel, the others row-wise on the f16 rows) against LlamaContexts
        // with f16 caches.
        let m = try LlamaModel(gguf: LoRATests.f32Path)
        var prompts = BatchContextTests.tinyPrompts
        prompts[4] = (0..<20).map { Int32(($0 * 37 + 5) % 500) }
        let hist = try BatchContextTests.mixedRun(m, prompts: prompts, decodeSteps: 8, kvType: .f16)
        #expect(hist.count == 6)
        var worstF32: Float = 0
        for (i, ops) in hist.enumerated() {
            let r = try BatchContextTests.replay(m, ops, kvType: .f16)
            #expect(r.maxDiff < 1e-3, "sequence \(i): max |Δlogit| \(r.maxDiff)")
            #expect(r.argmaxMismatches == 0, "sequence \(i)")
            #expect(r.evals >= 3)
            worstF32 = max(worstF32, try BatchContextTests.replay(m, ops, kvType: .f32).maxDiff)
        }
        // The cache really holds f16 values: against f32 caches the logits move by more than the
        // batch's own summation-order differences (and still by little).
        #expect(worstF32 > 1e-4 && worstF32 < 0.1, "f16 vs f32 cache: max |Δlogit| \(worstF32)")
    }

    @Test(arguments: [KVCacheType.f32, .f16]) func decodeStepIsBitwiseASingleDecode(kv: KVCacheType) throws {
        // Quantized weights: a decode step of up to 11 rows uses the mat-vec kernels row by row, as a
        // one-token LlamaContext.evaluate does, so the logits are bitwise equal (f16 caches: both read
        // the same f16 rows with the same row-wise kernel).
        let m = try LlamaModel(gguf: LoRATests.q8Path)
        let a = try LoRATests.randomAdapter(m, targets: [.q, .v], rank: 8, alpha: 16, seed: 5)
        let b = try BatchContext(model: m, maxSequences: 3, maxPositions: 64, threads: 2, kvType: kv)
        let s0 = try b.addSequence(), s1 = try b.addSequence(), s2 = try b.addSequence()
        try b.setAdapters([(a, 1)], for: s1)
        let refs = try [s0, s1, s2].map { id throws -> LlamaContext in
            let c = try LlamaContext(model: m, maxPositions: 64, threads: 2, kvType: kv)
            if id == s1 { try c.attach(a) }
            return c
        }
        for t in 0..<4 {
            let toks: [Int32] = [Int32(10 + t), Int32(200 + t), Int32(400 + t)]
            let out = try b.step([(s0, [toks[0]]), (s1, [toks[1]]), (s2, [toks[2]])])
            for j in 0..<3 {
                let ref = try refs[j].evaluate(.tokens([toks[j]]))
                #expect(out[j] == ref, "\(kv) step \(t) sequence \(j)")
            }
        }
    }

    @Test func badCallsChangeNothing() throws {
        let m = try LlamaModel(gguf: LoRATests.f32Path)
        let b = try BatchContext(model: m, maxSequences: 2, maxPositions: 16, threads: 1)
        #expect(throws: LKError.self) { try BatchContext(model: m, maxSequences: 0) }
        #expect(throws: LKError.self) { try BatchContext(model: m, maxSequences: 1, maxPositions: 0) }
        let s0 = try b.addSequence(), s1 = try b.addSequence()
        #expect(s0 != s1)
        #expect { try b.addSequence() } throws: { ($0 as? LKError).map { if case .limit = $0 { true } else { false } } ?? false }
        #expect { try b.fork(s0) } throws: { ($0 as? LKError).map { if case .limit = $0 { true } else { false } } ?? false }
        _ = try b.step([(s0, [1, 2, 3]), (s1, [4])])
        #expect(try b.position(of: s0) == 3 && b.position(of: s1) == 1)
        // Every bad step is refused before anything moves.
        let bad: [[(sequence: Int, tokens: [Int32])]] = [
            [], [(s0, [])], [(s0, [1]), (s0, [2])], [(s0, [1]), (99, [2])], [(s1, [1]), (s0, [-1])],
            [(s1, [1]), (s0, [Int32(m.config.vocabSize)])], [(s1, [1]), (s0, [Int32](repeating: 1, count: 14))],
        ]
        for inputs in bad {
            #expect(throws: LKError.self) { try b.step(inputs) }
            #expect(try b.position(of: s0) == 3 && b.position(of: s1) == 1)
        }
        #expect(throws: LKError.self) { try b.truncate(s0, to: 4) }
        #expect(throws: LKError.self) { try b.truncate(s0, to: -1) }
        #expect(throws: LKError.self) { try b.position(of: 7) }
        #expect(throws: LKError.self) { try b.removeSequence(7) }
        let a = try LoRATests.randomAdapter(m, rank: 2, seed: 1)
        try b.setAdapters([(a, 0.5)], for: s1)
        #expect(throws: LKError.self) { try b.setAdapters([(a, 1), (a, 2)], for: s1) }
        #expect(throws: LKError.self) { try b.setAdapters([(a, .nan)], for: s1) }
        #expect(try b.adapters(of: s1).map(\.scale) == [0.5])
        #expect(try b.adapters(of: s0).isEmpty)
        // Removal frees a slot; ids are not reused.
        try b.removeSequence(s0)
        #expect(throws: LKError.self) { try b.position(of: s0) }
        let s2 = try b.addSequence()
        #expect(s2 != s0 && s2 != s1)
        #expect(try b.position(of: s2) == 0)
        #expect(b.activeSequences == [s1, s2])
        // A step longer than one internal pass gives the same as two calls.
        let long = (0..<15).map { Int32($0 * 7 + 1) }
        let b2 = try BatchContext(model: m, maxSequences: 1, maxPositions: 16, threads: 1)
        let x = try b2.addSequence()
        let got = try b2.step([(x, long)])[0]
        let ctx = try LlamaContext(model: m, maxPositions: 16, threads: 1)
        let ref = try ctx.evaluate(.tokens(long))
        #expect(LoRATests.rel(got, ref) < 1e-4)
    }

    @Test func mixedBatchMatchesSingleContextsRealModel() throws {
        guard let m = RealModel.shared else { return }
        let tk = try #require(m.tokenizer)
        let texts = ["The capital of France is", "Write a haiku about the sea. The sea", "1, 2, 3,",
                     "Once upon a time, in a small village at the edge of a great forest, there lived",
                     "def fibonacci(n):"]
        let prompts = texts.map { tk.encode($0) }
        let hist = try BatchContextTests.mixedRun(m, prompts: prompts, decodeSteps: 10)
        var worst: Float = 0
        for (i, ops) in hist.enumerated() {
            let r = try BatchContextTests.replay(m, ops)
            worst = max(worst, r.maxDiff)
            // LlamaContext.activations: int16 activations keep logits within 0.015 of f32 math; a prefill
            // of ≥ 12 rows is f32, of fewer int16, so batch and single may sit on either side.
            #expect(r.maxDiff < 0.03, "sequence \(i): max |Δlogit| \(r.maxDiff)")
            #expect(r.argmaxMismatches == 0, "sequence \(i): greedy continuation differs")
        }
        print("BatchContext real model: max |Δlogit| vs single contexts \(worst)")
    }
}
