import LoRAKitCore

/// RMSNorm, softmax and cross-entropy (see the shape legend in Ops.swift).
#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

// MARK: - RMSNorm

extension Ops {
    /// y = x / sqrt(mean(x²) + eps) ⊙ weight, per row. The mean of squares is accumulated in Double (as
    /// ggml does); the scaling is done in Float.
    /// - x: [T, C]; weight: [C]; out: [T, C] (may alias x); rstd: [T] or nil, receives 1/sqrt(mean(x²)+eps)
    ///   for the backward.
    public static func rmsNormForward(x: UnsafePointer<Float>, weight: UnsafePointer<Float>,
                                      out: UnsafeMutablePointer<Float>, rstd: UnsafeMutablePointer<Float>?,
                                      rows: Int, dim: Int, eps: Float, pool: ThreadPool = .shared) throws(LKError) {
        try checkDims("rmsNormForward", ("rows", rows), ("dim", dim))
        guard dim > 0 || rows == 0 else { throw .invalidArgument("rmsNormForward: dim must be positive") }
        guard eps >= 0, eps.isFinite else { throw .invalidArgument("rmsNormForward: eps \(eps) must be finite and >= 0") }
        pool.run(maxTasks: tasks(rows * dim, pool)) { idx, cnt in
            for t in partition(rows, index: idx, count: cnt) {
                let xr = x + t * dim, yr = out + t * dim
                let ms = dotDouble(xr, xr, dim) / Double(dim)
                let rs = Float(1.0 / (ms + Double(eps)).squareRoot())
                rstd?[t] = rs
                let rv = SIMD8<Float>(repeating: rs)
                var i = 0
                while i + 8 <= dim { st8(ld8(xr + i) * rv * ld8(weight + i), yr + i); i += 8 }
                while i < dim { yr[i] = xr[i] * rs * weight[i]; i += 1 }
            }
        }
    }

    /// Backward of `rmsNormForward`. With x̂ = x·rstd and g = dy ⊙ weight:
    ///   dx += rstd · (g − x̂ · mean(g ⊙ x̂)),   dweight += Σ_rows dy ⊙ x̂.
    /// dweight is reduced column-block by column-block over rows in row order (columns are split across
    /// threads), so it is bitwise independent of the thread count.
    /// - dout, x: [T, C]; weight: [C]; rstd: [T] (from the forward); dx: [T, C]; dweight: [C] or nil.
    public static func rmsNormBackward(dout: UnsafePointer<Float>, x: UnsafePointer<Float>,
                                       weight: UnsafePointer<Float>, rstd: UnsafePointer<Float>,
                                       dx: UnsafeMutablePointer<Float>, dweight: UnsafeMutablePointer<Float>?,
                                       rows: Int, dim: Int, pool: ThreadPool = .shared) throws(LKError) {
        try checkDims("rmsNormBackward", ("rows", rows), ("dim", dim))
        if rows == 0 || dim == 0 { return }
        pool.run(maxTasks: tasks(rows * dim, pool)) { idx, cnt in
            for t in partition(rows, index: idx, count: cnt) {
                let xr = x + t * dim, gr = dout + t * dim, dr = dx + t * dim
                let rs = rstd[t]
                let rv = SIMD8<Float>(repeating: rs)
                // mean(g ⊙ x̂) = rstd · Σ dy·w·x / C, accumulated in Double.
                var acc = SIMD8<Double>()
                var i = 0
                while i + 8 <= dim {
                    acc.addProduct(SIMD8<Double>(ld8(gr + i) * ld8(weight + i)), SIMD8<Double>(ld8(xr + i)))
                    i += 8
                }
                var s = acc.sum()
                while i < dim { s += Double(gr[i] * weight[i]) * Double(xr[i]); i += 1 }
                let m = Float(s * Double(rs) / Double(dim))
                let mv = SIMD8<Float>(repeating: m)
                i = 0
                while i + 8 <= dim {
                    let xh = ld8(xr + i) * rv
                    let g = ld8(gr + i) * ld8(weight + i)
                    var d = ld8(dr + i)
                    d.addProduct(rv, g - xh * mv)
                    st8(d, dr + i)
                    i += 8
                }
                while i < dim {
                    let xh = xr[i] * rs
                    dr[i] = dr[i].addingProduct(rs, gr[i] * weight[i] - xh * m)
                    i += 1
                }
            }
        }
        guard let dw = dweight else { return }
        // Columns in blocks of 32 (4 SIMD8 accumulators); blocks split across threads.
        let blocks = (dim + 31) / 32
        pool.run(maxTasks: min(blocks, tasks(rows * dim, pool))) { idx, cnt in
            for b in partition(blocks, index: idx, count: cnt) {
                let c0 = b * 32, c1 = min(dim, c0 + 32)
                if c1 - c0 == 32 {
                    var a0 = SIMD8<Float>(), a1 = SIMD8<Float>(), a2 = SIMD8<Float>(), a3 = SIMD8<Float>()
                    for t in 0..<rows {
                        let rv = SIMD8<Float>(repeating: rstd[t])
                        let xr = x + t * dim + c0, gr = dout + t * dim + c0
                        a0.addProduct(ld8(gr), ld8(xr) * rv)
                        a1.addProduct(ld8(gr + 8), ld8(xr + 8) * rv)
                        a2.addProduct(ld8(gr + 16), ld8(xr + 16) * rv)
                        a3.addProduct(ld8(gr + 24), ld8(xr + 24) * rv)
                    }
                    st8(ld8(dw + c0) + a0, dw + c0); st8(ld8(dw + c0 + 8) + a1, dw + c0 + 8)
                    st8(ld8(dw + c0 + 16) + a2, dw + c0 + 16); st8(ld8(dw + c0 + 24) + a3, dw + c0 + 24)
                } else {
                    for c in c0..<c1 {
                        var a: Float = 0
                        for t in 0..<rows { a = a.addingProduct(dout[t * dim + c], x[t * dim + c] * rstd[t]) }
                        dw[c] += a
                    }
                }
            }
        }
    }
}

// MARK: - Softmax

extension Ops {
    /// Validate optional per-row valid lengths (each in 0...dim).
    static func checkValidLengths(_ v: UnsafePointer<Int32>?, rows: Int, dim: Int, _ what: String) throws(LKError) {
        guard let v else { return }
        for t in 0..<rows where v[t] < 0 || Int(v[t]) > dim {
            throw .invalidArgument("\(what): valid length \(v[t]) of row \(t) is outside 0...\(dim)")
        }
    }

    /// Numerically stable softmax of each row. With `validLengths`, only the first `validLengths[t]` entries
    /// of row t take part (a causal / padding mask); the others are set to 0. A row with 0 valid entries is
    /// all zeros.
    /// - x: [T, C]; out: [T, C] (may alias x); validLengths: [T] (each in 0...C) or nil.
    public static func softmaxForward(x: UnsafePointer<Float>, out: UnsafeMutablePointer<Float>,
                                      rows: Int, dim: Int, validLengths: UnsafePointer<Int32>? = nil,
                                      pool: ThreadPool = .shared) throws(LKError) {
        try checkDims("softmaxForward", ("rows", rows), ("dim", dim))
        try checkValidLengths(validLengths, rows: rows, dim: dim, "softmaxForward")
        pool.run(maxTasks: tasks(rows * dim, pool, grain: 8192)) { idx, cnt in
            for t in partition(rows, index: idx, count: cnt) {
                let n = validLengths.map { Int($0[t]) } ?? dim
                softmaxRow(x + t * dim, out + t * dim, n)
                for i in n..<dim { out[t * dim + i] = 0 }
            }
        }
    }

    /// Row maximum of n values (−inf for n = 0).
    @inline(__always) static func rowMax(_ x: UnsafePointer<Float>, _ n: Int) -> Float {
        var mv = SIMD8<Float>(repeating: -.infinity)
        var i = 0
        // Compare-and-select: the generic pointwiseMax stays an out-of-line call per vector.
        while i + 8 <= n { let v = ld8(x + i); mv.replace(with: v, where: v .> mv); i += 8 }
        var m = mv.max()
        while i < n { m = max(m, x[i]); i += 1 }
        return m
    }

    /// y[i] = exp(x[i] − m) for i < n; returns Σ y in Double.
    @inline(__always) static func expShifted(_ x: UnsafePointer<Float>, _ y: UnsafeMutablePointer<Float>, _ n: Int,
                                             _ m: Float) -> Double {
        let mv = SIMD8<Float>(repeating: m)
        var acc = SIMD8<Double>()
        var i = 0
        while i + 8 <= n { let e = simdExp(ld8(x + i) - mv); st8(e, y + i); acc += SIMD8<Double>(e); i += 8 }
        var s = acc.sum()
        while i < n { let e = scalarExp(x[i] - m); y[i] = e; s += Double(e); i += 1 }
        return s
    }

    /// Σ exp(x[i] − m) for i < n in Double, writing the exps to `y` when given (y may alias x).
    /// Float SIMD partial sums over blocks of 256 values, each block added in Double: converting every
    /// value to Double (as `expShifted` does) costs more than the exp itself on long rows.
    @inline(__always) static func expSum(_ x: UnsafePointer<Float>, _ y: UnsafeMutablePointer<Float>?, _ n: Int,
                                         _ m: Float) -> Double {
        let mv = SIMD8<Float>(repeating: m)
        var s = 0.0
        var i = 0
        while i + 8 <= n {
            let end = min(n, i + 256) & ~7
            var a0 = SIMD8<Float>(), a1 = SIMD8<Float>()
            while i + 16 <= end {
                let e0 = simdExp(ld8(x + i) - mv), e1 = simdExp(ld8(x + i + 8) - mv)
                if let y { st8(e0, y + i); st8(e1, y + i + 8) }
                a0 += e0; a1 += e1
                i += 16
            }
            if i + 8 <= end {
                let e0 = simdExp(ld8(x + i) - mv)
                if let y { st8(e0, y + i) }
                a0 += e0
                i += 8
            }
            s += Double((a0 + a1).sum())
        }
        while i < n { let e = scalarExp(x[i] - m); y?[i] = e; s += Double(e); i += 1 }
        return s
    }

    /// log Σ exp(x[i]) over i < n (Float) and Σ exp(x[i] − max) (Double), writing those exps to `y` when
    /// given (y may alias x): the per-row core of the full-row cross-entropy kernels.
    @inline(__always) static func logSumExpRow(_ x: UnsafePointer<Float>, _ y: UnsafeMutablePointer<Float>?,
                                               _ n: Int) -> (lse: Float, sum: Double) {
        let m = rowMax(x, n)
        let s = expSum(x, y, n, m)
        return (Float(Double(m) + log(s)), s)
    }

    @inline(__always) static func softmaxRow(_ x: UnsafePointer<Float>, _ y: UnsafeMutablePointer<Float>, _ n: Int) {
        if n == 0 { return }
        let m = rowMax(x, n)
        let s = expShifted(x, y, n, m)
        let inv = Float(1.0 / s)
        let iv = SIMD8<Float>(repeating: inv)
        var i = 0
        while i + 8 <= n { st8(ld8(y + i) * iv, y + i); i += 8 }
        while i < n { y[i] *= inv; i += 1 }
    }

    /// Backward of `softmaxForward`: dx += y ⊙ (dy − Σ dy ⊙ y) per row (only the valid entries).
    /// - y (the forward output), dout, dx: [T, C]; validLengths: [T] or nil (as in the forward).
    public static func softmaxBackward(y: UnsafePointer<Float>, dout: UnsafePointer<Float>,
                                       dx: UnsafeMutablePointer<Float>, rows: Int, dim: Int,
                                       validLengths: UnsafePointer<Int32>? = nil,
                                       pool: ThreadPool = .shared) throws(LKError) {
        try checkDims("softmaxBackward", ("rows", rows), ("dim", dim))
        try checkValidLengths(validLengths, rows: rows, dim: dim, "softmaxBackward")
        pool.run(maxTasks: tasks(rows * dim, pool)) { idx, cnt in
            for t in partition(rows, index: idx, count: cnt) {
                let n = validLengths.map { Int($0[t]) } ?? dim
                let yr = y + t * dim, gr = dout + t * dim, dr = dx + t * dim
                let s = Float(dotDouble(yr, gr, n))
                let sv = SIMD8<Float>(repeating: s)
                var i = 0
                while i + 8 <= n { var d = ld8(dr + i); d.addProduct(ld8(yr + i), ld8(gr + i) - sv); st8(d, dr + i); i += 8 }
                while i < n { dr[i] = dr[i].addingProduct(yr[i], gr[i] - s); i += 1 }
            }
        }
    }
}

// MARK: - Cross-entropy

extension Ops {
    static func checkTargets(_ targets: UnsafePointer<Int32>, rows: Int, vocab: Int, ignoreIndex: Int32,
                             _ what: String) throws(LKError) {
        for t in 0..<rows {
            let y = targets[t]
            if y == ignoreIndex { continue }
            guard y >= 0, Int(y) < vocab else {
                throw .invalidArgument("\(what): target \(y) of row \(t) is outside the vocabulary of \(vocab) (ignore index \(ignoreIndex))")
            }
        }
    }

    /// Validates a cross-entropy over full rows of `vocab` logits with row stride `ld` (default vocab);
    /// returns the stride.
    static func checkFullRows(_ what: String, rows: Int, vocab: Int, ld: Int?, targets: UnsafePointer<Int32>,
                              ignoreIndex: Int32) throws(LKError) -> Int {
        try checkDims(what, ("rows", rows), ("vocab", vocab))
        guard vocab > 0 || rows == 0 else { throw .invalidArgument("\(what): empty vocabulary") }
        try checkTargets(targets, rows: rows, vocab: vocab, ignoreIndex: ignoreIndex, what)
        let ldv = ld ?? vocab
        guard ldv >= vocab else { throw .invalidArgument("\(what): ld \(ldv) < vocab \(vocab)") }
        return ldv
    }

    /// Start an online (vocabulary-chunked) cross-entropy: runningMax = −inf, runningSum = 0,
    /// targetLogit = 0.   runningMax, runningSum, targetLogit: [T].
    public static func crossEntropyBegin(rows: Int, runningMax: UnsafeMutablePointer<Float>,
                                         runningSum: UnsafeMutablePointer<Float>,
                                         targetLogit: UnsafeMutablePointer<Float>) throws(LKError) {
        try checkDims("crossEntropyBegin", ("rows", rows))
        for t in 0..<rows { runningMax[t] = -.infinity; runningSum[t] = 0; targetLogit[t] = 0 }
    }

    /// Fold one chunk of logit columns — vocabulary entries `vocabStart ..< vocabStart + cols` — into the
    /// running (max, Σ exp(logit − max)) of each row (online log-sum-exp), and pick the target's logit when
    /// the target falls in this chunk. Chunks may come in any order; each row's result depends only on the
    /// chunk sequence, not on the thread count.
    /// - logits: [T, ld] (the chunk's columns 0..<cols); targets: [T]; runningMax, runningSum,
    ///   targetLogit: [T] (state from `crossEntropyBegin`).
    public static func crossEntropyChunk(logits: UnsafePointer<Float>, ld: Int, rows: Int, cols: Int,
                                         vocabStart: Int, targets: UnsafePointer<Int32>,
                                         runningMax: UnsafeMutablePointer<Float>,
                                         runningSum: UnsafeMutablePointer<Float>,
                                         targetLogit: UnsafeMutablePointer<Float>,
                                         pool: ThreadPool = .shared) throws(LKError) {
        try checkDims("crossEntropyChunk", ("rows", rows), ("cols", cols), ("vocabStart", vocabStart))
        guard ld >= cols else { throw .invalidArgument("crossEntropyChunk: ld \(ld) < cols \(cols)") }
        if cols == 0 { return }
        pool.run(maxTasks: tasks(rows * cols, pool, grain: 8192)) { idx, cnt in
            for t in partition(rows, index: idx, count: cnt) {
                let lr = logits + t * ld
                let m = rowMax(lr, cols)
                let newMax = max(runningMax[t], m)
                // Σ exp(l − newMax) over the chunk, without storing the exps.
                let s = expSum(lr, nil, cols, newMax)
                let old = runningSum[t] == 0 ? 0 : Double(runningSum[t]) * exp(Double(runningMax[t] - newMax))
                runningSum[t] = Float(old + s)
                runningMax[t] = newMax
                let y = Int(targets[t]) - vocabStart
                if y >= 0 && y < cols { targetLogit[t] = lr[y] }
            }
        }
    }

    /// Finish an online cross-entropy: lse[t] = runningMax + log(runningSum) and
    /// loss[t] = lse[t] − logit[target] (0 for rows whose target is `ignoreIndex`).
    /// - targets, runningMax, runningSum, targetLogit: [T]; losses: [T]; lse: [T] or nil.
    public static func crossEntropyFinish(rows: Int, vocab: Int, targets: UnsafePointer<Int32>, ignoreIndex: Int32,
                                          runningMax: UnsafePointer<Float>, runningSum: UnsafePointer<Float>,
                                          targetLogit: UnsafePointer<Float>, losses: UnsafeMutablePointer<Float>,
                                          lse: UnsafeMutablePointer<Float>?) throws(LKError) {
        try checkDims("crossEntropyFinish", ("rows", rows), ("vocab", vocab))
        try checkTargets(targets, rows: rows, vocab: vocab, ignoreIndex: ignoreIndex, "crossEntropyFinish")
        for t in 0..<rows {
            let l = Float(Double(runningMax[t]) + log(Double(runningSum[t])))
            lse?[t] = l
            losses[t] = targets[t] == ignoreIndex ? 0 : l - targetLogit[t]
        }
    }

    /// Cross-entropy of full rows: loss[t] = logsumexp(logits[t]) − logits[t, target[t]] (0 for ignored
    /// rows), and lse[t] = logsumexp(logits[t]) for the backward.
    /// - logits: [T, ld] with V columns used; targets: [T]; losses: [T]; lse: [T] or nil.
    public static func crossEntropyForward(logits: UnsafePointer<Float>, ld: Int? = nil, rows: Int, vocab: Int,
                                           targets: UnsafePointer<Int32>, ignoreIndex: Int32 = -100,
                                           losses: UnsafeMutablePointer<Float>, lse: UnsafeMutablePointer<Float>?,
                                           pool: ThreadPool = .shared) throws(LKError) {
        let ldv = try checkFullRows("crossEntropyForward", rows: rows, vocab: vocab, ld: ld, targets: targets,
                                    ignoreIndex: ignoreIndex)
        pool.run(maxTasks: tasks(rows * vocab, pool, grain: 8192)) { idx, cnt in
            for t in partition(rows, index: idx, count: cnt) {
                let lr = logits + t * ldv
                let l = logSumExpRow(lr, nil, vocab).lse
                lse?[t] = l
                losses[t] = targets[t] == ignoreIndex ? 0 : l - lr[Int(targets[t])]
            }
        }
    }

    /// Backward of the cross-entropy for a chunk of logit columns (vocabulary entries
    /// `vocabStart ..< vocabStart + cols`; the whole row when vocabStart = 0 and cols = V):
    ///   dlogits += scale · (softmax(logits) − onehot(target)),  softmax = exp(logit − lse).
    /// Rows whose target is `ignoreIndex` are left unchanged. `scale` is typically dloss/num_valid_tokens.
    /// - logits: [T, ld]; lse: [T] (from the forward / finish); targets: [T]; dlogits: [T, ldd].
    public static func crossEntropyBackward(logits: UnsafePointer<Float>, ld: Int, lse: UnsafePointer<Float>,
                                            targets: UnsafePointer<Int32>, ignoreIndex: Int32 = -100,
                                            scale: Float, dlogits: UnsafeMutablePointer<Float>, ldd: Int,
                                            rows: Int, cols: Int, vocabStart: Int = 0,
                                            pool: ThreadPool = .shared) throws(LKError) {
        try checkDims("crossEntropyBackward", ("rows", rows), ("cols", cols), ("vocabStart", vocabStart))
        guard ld >= cols, ldd >= cols else {
            throw .invalidArgument("crossEntropyBackward: ld \(ld) / ldd \(ldd) < cols \(cols)")
        }
        pool.run(maxTasks: tasks(rows * cols, pool, grain: 8192)) { idx, cnt in
            for t in partition(rows, index: idx, count: cnt) where targets[t] != ignoreIndex {
                ceGradRow(logits + t * ld, dlogits + t * ldd, cols, lse[t], scale,
                          target: Int(targets[t]) - vocabStart, accumulate: true)
            }
        }
    }

    /// Fused forward + backward over full rows, in place (the memory-saving path): computes losses (and
    /// lse) like `crossEntropyForward`, then OVERWRITES logits[t] with scale · (softmax − onehot); rows
    /// whose target is `ignoreIndex` are set to 0.
    /// - logits: [T, ld] (V columns used), in: logits, out: dlogits; targets, losses: [T]; lse: [T] or nil.
    public static func crossEntropyBackwardInPlace(logits: UnsafeMutablePointer<Float>, ld: Int? = nil, rows: Int,
                                                   vocab: Int, targets: UnsafePointer<Int32>,
                                                   ignoreIndex: Int32 = -100, scale: Float,
                                                   losses: UnsafeMutablePointer<Float>,
                                                   lse: UnsafeMutablePointer<Float>? = nil,
                                                   pool: ThreadPool = .shared) throws(LKError) {
        let ldv = try checkFullRows("crossEntropyBackwardInPlace", rows: rows, vocab: vocab, ld: ld, targets: targets,
                                    ignoreIndex: ignoreIndex)
        // One row at a time: max, then e = exp(logit − max) stored in place while summing, then
        // e · scale/Σe − scale·onehot. Two passes over the row instead of three, one exp per value.
        pool.run(maxTasks: tasks(rows * vocab, pool, grain: 8192)) { idx, cnt in
            for t in partition(rows, index: idx, count: cnt) {
                let lr = logits + t * ldv
                let y = Int(targets[t])
                let target = targets[t] == ignoreIndex ? 0 : lr[y]
                let (l, s) = logSumExpRow(lr, lr, vocab)
                lse?[t] = l
                if targets[t] == ignoreIndex {
                    losses[t] = 0
                    lr.update(repeating: 0, count: vocab)
                    continue
                }
                losses[t] = l - target
                let f = Float(Double(scale) / s)
                let fv = SIMD8<Float>(repeating: f)
                var i = 0
                while i + 8 <= vocab { st8(ld8(lr + i) * fv, lr + i); i += 8 }
                while i < vocab { lr[i] *= f; i += 1 }
                lr[y] -= scale
            }
        }
    }

    /// The cross-entropy backward in place, left unnormalised (one pass fewer over the logits than
    /// `crossEntropyBackwardInPlace`): logits[t] becomes e − Σe·onehot(target) with e = exp(logit − max),
    /// and rowScale[t] = scale / Σe, so that dlogits[t] = rowScale[t] · logits[t]. A caller multiplying
    /// dlogits by a matrix next (the output head's backward) applies rowScale to the product's rows
    /// instead. Rows whose target is `ignoreIndex` become 0 with rowScale 0. Losses (and lse) as
    /// `crossEntropyForward`.
    /// - logits: [T, ld] (V columns used); targets, losses, rowScale: [T]; lse: [T] or nil.
    public static func crossEntropyUnnormalizedBackwardInPlace(
        logits: UnsafeMutablePointer<Float>, ld: Int? = nil, rows: Int, vocab: Int, targets: UnsafePointer<Int32>,
        ignoreIndex: Int32 = -100, scale: Float, losses: UnsafeMutablePointer<Float>,
        rowScale: UnsafeMutablePointer<Float>, lse: UnsafeMutablePointer<Float>? = nil,
        pool: ThreadPool = .shared
    ) throws(LKError) {
        let ldv = try checkFullRows("crossEntropyUnnormalizedBackwardInPlace", rows: rows, vocab: vocab, ld: ld,
                                    targets: targets, ignoreIndex: ignoreIndex)
        pool.run(maxTasks: tasks(rows * vocab, pool, grain: 8192)) { idx, cnt in
            for t in partition(rows, index: idx, count: cnt) {
                let lr = logits + t * ldv
                let ignored = targets[t] == ignoreIndex
                let y = ignored ? 0 : Int(targets[t])
                let target = lr[y]
                let (l, s) = logSumExpRow(lr, lr, vocab)
                lse?[t] = l
                if ignored {
                    losses[t] = 0
                    rowScale[t] = 0
                    lr.update(repeating: 0, count: vocab)
                } else {
                    losses[t] = l - target
                    rowScale[t] = Float(Double(scale) / s)
                    lr[y] = Float(Double(lr[y]) - s)
                }
            }
        }
    }

    /// d[i] (+)= scale · (exp(l[i] − lse) − [i == target]) for i < n.
    @inline(__always) static func ceGradRow(_ l: UnsafePointer<Float>, _ d: UnsafeMutablePointer<Float>, _ n: Int,
                                            _ lse: Float, _ scale: Float, target: Int, accumulate: Bool) {
        let lv = SIMD8<Float>(repeating: lse), sv = SIMD8<Float>(repeating: scale)
        var i = 0
        if accumulate {
            while i + 8 <= n { var v = ld8(d + i); v.addProduct(sv, simdExp(ld8(l + i) - lv)); st8(v, d + i); i += 8 }
            while i < n { d[i] = d[i].addingProduct(scale, scalarExp(l[i] - lse)); i += 1 }
        } else {
            while i + 8 <= n { st8(sv * simdExp(ld8(l + i) - lv), d + i); i += 8 }
            while i < n { d[i] = scale * scalarExp(l[i] - lse); i += 1 }
        }
        if target >= 0 && target < n { d[target] -= scale }
    }
}
