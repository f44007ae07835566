import Testing
import Foundation
@testable import LoRAKitCore
@testable import LoRAKitKernels
@testable import LoRAKitModel
@testable import LoRAKitTraining

/// The output head and loss in vocabulary blocks (`Ops.headLoss*`, `LoRATrainer.lossVocabBlock`):
/// against a slow Double reference, and against the whole-row path on the tiny models.
@Suite struct TrainVocabularyBlockTests {
    /// `Ops.headLossBlocked` (GEMM per block, online log-sum-exp, Σ exp·W) against a Double reference of
    /// loss and dLoss/dX, for blocks that divide V, that do not, of one column and of the whole row, an
    /// ignored row, f32 and q8_0 heads; bitwise the same for 1 and 2 threads.
    @Test(arguments: ["f32", "q8_0"])
    func kernelMatchesReference(_ type: String) throws {
        let (rows, dim, vocab) = (6, 64, 300)
        var rng = SplitMix64(seed: 17)
        var x = [Float](repeating: 0, count: rows * dim), w = [Float](repeating: 0, count: vocab * dim)
        for i in x.indices { x[i] = rng.nextFloat() * 2 - 1 }
        // Large weights so the logits spread widely (max changes from block to block, exps underflow).
        for i in w.indices { w[i] = (rng.nextFloat() * 2 - 1) * 0.8 }
        let targets: [Int32] = [0, 299, 150, -100, 64, 7]
        let dtype: DType = type == "f32" ? .f32 : .q8_0
        let wt = try Tensor(w, shape: [vocab, dim])
        let head = dtype == .f32 ? wt : try wt.converted(to: dtype)
        // The reference uses the head as stored (dequantized once).
        let wd = head.toFloats()
        let scale: Float = 0.37
        var refLoss = [Double](repeating: 0, count: rows), refGrad = [Double](repeating: 0, count: rows * dim)
        for r in 0..<rows where targets[r] != -100 {
            var logits = [Double](repeating: 0, count: vocab)
            for v in 0..<vocab {
                var s = 0.0
                for j in 0..<dim { s += Double(x[r * dim + j]) * Double(wd[v * dim + j]) }
                logits[v] = s
            }
            let m = logits.max()!
            let z = logits.reduce(0.0) { $0 + exp($1 - m) }
            let y = Int(targets[r])
            refLoss[r] = m + log(z) - logits[y]
            for v in 0..<vocab {
                let p = exp(logits[v] - m) / z - (v == y ? 1 : 0)
                for j in 0..<dim { refGrad[r * dim + j] += Double(scale) * p * Double(wd[v * dim + j]) }
            }
        }
        #expect(refLoss.max()! > 5, "the logits should spread: loss \(refLoss)")
        for block in [1, 64, 128, 300, 4096] {
            var results: [([Float], [Float])] = []
            for threads in [1, 2] {
                let pool = ThreadPool(threads: threads)
                var losses = [Float](repeating: .nan, count: rows)
                var grad = [Float](repeating: .nan, count: rows * dim)
                var ws = [Float](repeating: .nan, count: Ops.headLossBlockWorkspaceFloats(rows: rows, dim: dim,
                                                                                         block: block, vocab: vocab))
                try targets.withUnsafeBufferPointer { tp in
                    try x.withUnsafeBufferPointer { xp in
                        try Ops.headLossBlocked(hidden: xp.baseAddress!, rows: rows, dim: dim,
                                                head: UnsafeRawPointer(head.rawPointer), dtype: dtype, vocab: vocab,
                                                targets: tp.baseAddress!, scale: scale, losses: &losses,
                                                dHidden: &grad, block: block, workspace: &ws, pool: pool)
                    }
                }
                results.append((losses, grad))
            }
            #expect(results[0].0 == results[1].0 && results[0].1 == results[1].1,
                    "block \(block): results differ between 1 and 2 threads")
            let (losses, grad) = results[0]
            for r in 0..<rows {
                #expect(abs(Double(losses[r]) - refLoss[r]) <= 2e-5 * max(1, refLoss[r]),
                        "block \(block) row \(r): loss \(losses[r]) vs \(refLoss[r])")
                let gmax = (0..<dim).map { abs(refGrad[r * dim + $0]) }.max()!
                for j in 0..<dim {
                    let d = abs(Double(grad[r * dim + j]) - refGrad[r * dim + j])
                    #expect(d <= 1e-5 * max(gmax, 1e-3), "block \(block) row \(r) col \(j): \(grad[r * dim + j]) vs \(refGrad[r * dim + j])")
                }
            }
            // The ignored row: loss 0, zero gradient.
            #expect(losses[3] == 0 && grad[(3 * dim)..<(4 * dim)].allSatisfy { $0 == 0 })
            // Forward only: the same losses, bit for bit.
            var fl = [Float](repeating: .nan, count: rows)
            var ws = [Float](repeating: .nan, count: Ops.headLossBlockWorkspaceFloats(rows: rows, dim: dim,
                                                                                     block: block, vocab: vocab))
            try targets.withUnsafeBufferPointer { tp in
                try x.withUnsafeBufferPointer { xp in
                    try Ops.headLossBlocked(hidden: xp.baseAddress!, rows: rows, dim: dim,
                                            head: UnsafeRawPointer(head.rawPointer), dtype: dtype, vocab: vocab,
                                            targets: tp.baseAddress!, scale: scale, losses: &fl, dHidden: nil,
                                            block: block, workspace: &ws, pool: ThreadPool(threads: 2))
                }
            }
            #expect(fl == losses, "block \(block): forward-only losses differ")
        }
        // Bad arguments are errors, not traps.
        var losses = [Float](repeating: 0, count: rows), ws = [Float](repeating: 0, count: rows * (dim + 64))
        let bad: [Int32] = [0, 1, 2, 3, 4, 300]
        #expect(throws: LKError.self) {
            try Ops.headLossBlocked(hidden: x, rows: rows, dim: dim, head: UnsafeRawPointer(head.rawPointer), dtype: dtype,
                                    vocab: vocab, targets: bad, scale: 1, losses: &losses, dHidden: nil, block: 64,
                                    workspace: &ws)
        }
        #expect(throws: LKError.self) {
            try Ops.headLossBlocked(hidden: x, rows: rows, dim: dim, head: UnsafeRawPointer(head.rawPointer), dtype: dtype,
                                    vocab: vocab, targets: targets, scale: 1, losses: &losses, dHidden: nil, block: 0,
                                    workspace: &ws)
        }
    }

    /// The trainer's loss and every gradient (LoRA parameters and input rows) with vocabulary blocks equal
    /// the whole-row path's within rounding, for several block sizes and loss chunks, on the f32 and q8_0
    /// tiny models with every module adapted; blocked gradients are bitwise the same for 1 and 2 threads.
    @Test(arguments: ["f32", "q8_0"])
    func vocabularyBlocksMatchWholeRows(_ which: String) throws {
        let model = try LlamaModel(gguf: which == "f32" ? TrainerTests.f32Path : TrainerTests.q8Path)
        let adapter = try TrainerTests.allModulesAdapter(model)
        let b = TrainerTests.batch(seed: 41)
        #expect(model.config.vocabSize == 512)
        func run(block: Int, chunk: Int? = nil, threads: Int = 2) throws -> (Double, [[Float]], [[Float]]) {
            let tr = try LoRATrainer(model: model, adapter: adapter, threads: threads)
            tr.lossVocabBlock = block
            if let chunk { tr.lossChunkRows = chunk }
            tr.zeroGradients()
            let r = try tr.pass(b, gradients: true, inputGradients: true)
            return (r.sumNLL, tr.parameters.map(\.gradArray), r.inputGradients ?? [])
        }
        let (l0, g0, x0) = try run(block: 0)
        #expect(g0.allSatisfy { $0.contains { $0 != 0 } })
        for (block, chunk) in [(64, nil), (200, 5), (1, 7), (512, nil), (2048, 3)] as [(Int, Int?)] {
            let (l, g, x) = try run(block: block, chunk: chunk)
            #expect(abs(l - l0) <= 1e-6 * abs(l0), "block \(block): loss \(l) vs whole rows \(l0)")
            for (p, (a, r)) in zip(g0.indices, zip(g, g0)) {
                let scale = r.map { abs($0) }.max()!
                let worst = zip(a, r).map { abs($0 - $1) }.max()!
                #expect(worst <= 2e-5 * scale, "block \(block) chunk \(chunk ?? 0) parameter \(p): max difference \(worst) (max |g| \(scale))")
            }
            for (s, (a, r)) in zip(x, x0).enumerated() {
                let scale = r.map { abs($0) }.max()!
                let worst = zip(a, r).map { abs($0 - $1) }.max()!
                #expect(worst <= 2e-5 * scale, "block \(block) input gradient of sequence \(s): max difference \(worst)")
            }
        }
        let (l1, g1, _) = try run(block: 64, threads: 1)
        let (l2, g2, _) = try run(block: 64, threads: 2)
        #expect(l1 == l2 && g1 == g2, "blocked gradients differ between 1 and 2 threads")
        // A negative block is an error.
        let tr = try LoRATrainer(model: model, adapter: adapter, threads: 1)
        tr.lossVocabBlock = -1
        #expect(throws: LKError.self) { try tr.pass(b, gradients: true) }
    }
}
