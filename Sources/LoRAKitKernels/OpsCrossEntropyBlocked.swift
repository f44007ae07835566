import LoRAKitCore
#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// The output head, cross-entropy and its gradient with respect to the hidden rows, computed in
/// vocabulary blocks, so the [R, V] logits (and their gradient) never exist at once.
///
/// Shape legend: R = rows (predicted positions), C = model width, V = vocabulary, B = columns of one
/// vocabulary block (the last block may be shorter), W = the head weight [V, C].
///
/// One pass over the blocks, in the manner of flash attention's forward (the gradient with respect to
/// the hidden rows is a softmax-weighted sum of head rows, like attention's output is of values):
///
///     for each block b:  L_b = X · W_bᵀ                          [R, B]   (caller: GEMM)
///                        m' = max(m, rowmax L_b); rescale s and acc by exp(m − m')
///                        E_b = exp(L_b − m'), s += Σ E_b          (`headLossBlockFold`, E_b in place)
///                        acc += E_b · W_b                         [R, C]   (caller: GEMM, beta 1 after
///                                                                           the first block)
///     lse = m + log s;  loss = lse − L[target]
///     dX = scale · (acc / s − W[target])                          (`headLossBlockFinish`)
///
/// so the head weight is read twice per pass (as with whole rows: forward and backward products) and
/// only the block's logits [R, B] are held. The caller runs the two products (it owns the GEMM and its
/// timing); these kernels do the per-row work. Every row is independent and processed by one thread in
/// block order: results do not depend on the thread count. They differ from the whole-row kernels only
/// by rounding (the exps are taken against running maxima, rescaled when a block raises the maximum).
extension Ops {
    /// Start a blocked head loss: runningMax = −inf, runningSum = 0, targetLogit = 0.
    /// - runningMax, targetLogit: [R] f32; runningSum: [R] f64.
    public static func headLossBlockBegin(rows: Int, runningMax: UnsafeMutablePointer<Float>,
                                          runningSum: UnsafeMutablePointer<Double>,
                                          targetLogit: UnsafeMutablePointer<Float>) throws(LKError) {
        try checkDims("headLossBlockBegin", ("rows", rows))
        for t in 0..<rows { runningMax[t] = -.infinity; runningSum[t] = 0; targetLogit[t] = 0 }
    }

    /// Fold one vocabulary block — logits of entries `vocabStart ..< vocabStart + cols` — into each row's
    /// running (max, Σ exp(logit − max)), picking the target's logit when it falls in the block.
    /// With `acc` (the gradient is wanted) the block's logits are OVERWRITTEN with exp(logit − max)
    /// against the updated running max, and acc's rows (the Σ E·W of the earlier blocks) are rescaled
    /// when the max rose, so that `acc += logits · W_block` keeps acc consistent; without it the logits
    /// are only read.
    /// - logits: [R, ld] (columns 0..<cols used); targets: [R]; runningMax, targetLogit: [R];
    ///   runningSum: [R] (f64); acc: [R, C] or nil (its contents are not read for the first block,
    ///   vocabStart = 0, whose product overwrites it).
    public static func headLossBlockFold(logits: UnsafeMutablePointer<Float>, ld: Int, rows: Int, cols: Int,
                                         vocabStart: Int, targets: UnsafePointer<Int32>,
                                         runningMax: UnsafeMutablePointer<Float>,
                                         runningSum: UnsafeMutablePointer<Double>,
                                         targetLogit: UnsafeMutablePointer<Float>,
                                         acc: UnsafeMutablePointer<Float>?, dim: Int,
                                         pool: ThreadPool = .shared) throws(LKError) {
        try checkDims("headLossBlockFold", ("rows", rows), ("cols", cols), ("vocabStart", vocabStart), ("dim", dim))
        guard ld >= cols else { throw .invalidArgument("headLossBlockFold: ld \(ld) < cols \(cols)") }
        if cols == 0 || rows == 0 { return }
        pool.run(maxTasks: tasks(rows * cols, pool, grain: 8192)) { idx, cnt in
            for t in partition(rows, index: idx, count: cnt) {
                let lr = logits + t * ld
                let y = Int(targets[t]) - vocabStart
                if y >= 0 && y < cols { targetLogit[t] = lr[y] }
                let old = runningMax[t]
                let newMax = max(old, rowMax(lr, cols))
                // Earlier blocks were taken against `old`: bring their sum (and Σ E·W) to `newMax`.
                if newMax > old && old > -.infinity {
                    let f = scalarExp(old - newMax)
                    runningSum[t] *= Double(f)
                    if let acc, vocabStart > 0 { scaleRow(acc + t * dim, dim, f) }
                }
                runningMax[t] = newMax
                runningSum[t] += expSum(lr, acc == nil ? nil : lr, cols, newMax)
            }
        }
    }

    /// Finish a blocked head loss: lse = runningMax + log(runningSum), loss = lse − target logit, and with
    /// `acc`, dX = scale · (acc / runningSum − W[target]) written over acc. Rows whose target is
    /// `ignoreIndex` get loss 0 and (with acc) a zero gradient row.
    /// - targets, runningMax, runningSum (f64), targetLogit, losses: [R]; lse: [R] or nil;
    ///   acc: [R, C] (in: Σ E·W; out: dX) or nil; targetRows: [R, C], the head rows W[target]
    ///   (dequantized; read only with acc, rows of ignored targets unused).
    public static func headLossBlockFinish(rows: Int, vocab: Int, dim: Int, targets: UnsafePointer<Int32>,
                                           ignoreIndex: Int32 = -100, scale: Float,
                                           runningMax: UnsafePointer<Float>, runningSum: UnsafePointer<Double>,
                                           targetLogit: UnsafePointer<Float>, losses: UnsafeMutablePointer<Float>,
                                           lse: UnsafeMutablePointer<Float>? = nil,
                                           acc: UnsafeMutablePointer<Float>?, targetRows: UnsafePointer<Float>?,
                                           pool: ThreadPool = .shared) throws(LKError) {
        try checkDims("headLossBlockFinish", ("rows", rows), ("vocab", vocab), ("dim", dim))
        try checkTargets(targets, rows: rows, vocab: vocab, ignoreIndex: ignoreIndex, "headLossBlockFinish")
        if acc != nil && targetRows == nil {
            throw .invalidArgument("headLossBlockFinish: the gradient needs the target rows of the head")
        }
        pool.run(maxTasks: tasks(rows * dim, pool)) { idx, cnt in
            for t in partition(rows, index: idx, count: cnt) {
                let l = Float(Double(runningMax[t]) + log(runningSum[t]))
                lse?[t] = l
                let ignored = targets[t] == ignoreIndex
                losses[t] = ignored ? 0 : l - targetLogit[t]
                guard let acc, let targetRows else { continue }
                let a = acc + t * dim, w = targetRows + t * dim
                if ignored { a.update(repeating: 0, count: dim); continue }
                let f = Float(Double(scale) / runningSum[t])
                let fv = SIMD8<Float>(repeating: f), sv = SIMD8<Float>(repeating: scale)
                var i = 0
                while i + 8 <= dim { st8(ld8(a + i) * fv - sv * ld8(w + i), a + i); i += 8 }
                while i < dim { a[i] = a[i] * f - scale * w[i]; i += 1 }
            }
        }
    }

    /// The whole blocked head loss for rows X against a head weight (any stored dtype), products
    /// included: losses (and lse), and with `dHidden` the gradient scale · d(Σ loss)/dX written over it.
    /// A convenience over `headLossBlockBegin/Fold/Finish` and `GEMM` for callers that do not time the
    /// parts separately (the trainer runs the steps itself).
    /// - hidden: [R, C]; head: W [V, C] in `dtype`; targets, losses: [R]; lse: [R] or nil;
    ///   dHidden: [R, C] or nil; workspace: `headLossBlockWorkspaceFloats(rows:dim:block:)` floats.
    public static func headLossBlocked(hidden: UnsafePointer<Float>, rows: Int, dim: Int,
                                       head: UnsafeRawPointer, dtype: DType, vocab: Int,
                                       targets: UnsafePointer<Int32>, ignoreIndex: Int32 = -100, scale: Float,
                                       losses: UnsafeMutablePointer<Float>, lse: UnsafeMutablePointer<Float>? = nil,
                                       dHidden: UnsafeMutablePointer<Float>?, block: Int,
                                       workspace: UnsafeMutablePointer<Float>,
                                       pool: ThreadPool = .shared) throws(LKError) {
        try checkDims("headLossBlocked", ("rows", rows), ("dim", dim), ("vocab", vocab))
        guard block > 0 else { throw .invalidArgument("headLossBlocked: block \(block) must be positive") }
        guard vocab > 0 || rows == 0 else { throw .invalidArgument("headLossBlocked: empty vocabulary") }
        try checkTargets(targets, rows: rows, vocab: vocab, ignoreIndex: ignoreIndex, "headLossBlocked")
        if rows == 0 { return }
        let rb = try dtype.rowBytes(dim)
        let bs = min(block, vocab)
        let logits = workspace
        var maxes = [Float](repeating: 0, count: rows), tl = [Float](repeating: 0, count: rows)
        var sums = [Double](repeating: 0, count: rows)
        try maxes.withUnsafeMutableBufferPointer { (m: inout UnsafeMutableBufferPointer<Float>) throws(LKError) in
            try tl.withUnsafeMutableBufferPointer { (tlp: inout UnsafeMutableBufferPointer<Float>) throws(LKError) in
                try sums.withUnsafeMutableBufferPointer { (s: inout UnsafeMutableBufferPointer<Double>) throws(LKError) in
                    let mp = m.baseAddress!, tp = tlp.baseAddress!, sp = s.baseAddress!
                    try headLossBlockBegin(rows: rows, runningMax: mp, runningSum: sp, targetLogit: tp)
                    var v0 = 0
                    while v0 < vocab {
                        let cols = min(bs, vocab - v0)
                        let wb = head + v0 * rb
                        try GEMM.multiply(m: rows, n: cols, k: dim, a: GEMMLeft(hidden, rowStride: dim),
                                          b: .weight(wb, dtype: dtype, rows: cols, cols: dim, transposed: true),
                                          c: logits, ldc: cols, pool: pool)
                        try headLossBlockFold(logits: logits, ld: cols, rows: rows, cols: cols, vocabStart: v0,
                                              targets: targets, runningMax: mp, runningSum: sp, targetLogit: tp,
                                              acc: dHidden, dim: dim, pool: pool)
                        if let dHidden {
                            try GEMM.multiply(m: rows, n: dim, k: cols, a: GEMMLeft(UnsafePointer(logits), rowStride: cols),
                                              b: .weight(wb, dtype: dtype, rows: cols, cols: dim, transposed: false),
                                              beta: v0 == 0 ? 0 : 1, c: dHidden, ldc: dim, pool: pool)
                        }
                        v0 += cols
                    }
                    var targetRows: UnsafeMutablePointer<Float>? = nil
                    if dHidden != nil {
                        // W[target] rows after the logits (the workspace's second part); ignored rows read row 0.
                        let tr = workspace + rows * bs
                        var ids = [Int32](repeating: 0, count: rows)
                        for t in 0..<rows where targets[t] != ignoreIndex { ids[t] = targets[t] }
                        try ids.withUnsafeBufferPointer { (p: UnsafeBufferPointer<Int32>) throws(LKError) in
                            try embeddingForward(table: head, dtype: dtype, vocab: vocab, dim: dim, ids: p.baseAddress!,
                                                 rows: rows, out: tr, pool: pool)
                        }
                        targetRows = tr
                    }
                    try headLossBlockFinish(rows: rows, vocab: vocab, dim: dim, targets: targets, ignoreIndex: ignoreIndex,
                                            scale: scale, runningMax: mp, runningSum: sp, targetLogit: tp, losses: losses,
                                            lse: lse, acc: dHidden, targetRows: targetRows.map { UnsafePointer($0) },
                                            pool: pool)
                }
            }
        }
    }

    /// Floats of `headLossBlocked`'s workspace: the block's logits [R, min(B, V)] and the target rows [R, C].
    public static func headLossBlockWorkspaceFloats(rows: Int, dim: Int, block: Int, vocab: Int) -> Int {
        rows * (min(max(block, 1), max(vocab, 1)) + dim)
    }
}
