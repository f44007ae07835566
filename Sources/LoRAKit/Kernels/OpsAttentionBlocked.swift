/// Blocked causal attention over several independent sequences packed back to back (training batches,
/// prefills), with the products done by the GEMM micro-kernel (FlashAttention-style: the forward keeps
/// the log-sum-exp of each (row, head), the backward recomputes the probabilities from it).
///
/// Rows of a sequence are cut into query blocks of `Br` rows (4·MR); a block only meets the keys up to
/// its last row, so the causal waste is one diagonal block. Per block and query head h (KV head g):
///   forward:  S = scale·Q_blk·K[0..<r1]ᵀ, causal mask, softmax rows → P (normalised) and lse,
///             O_blk = P·V[0..<r1];
///   backward: P from S and lse, dP = dO_blk·Vᵀ, Δ_i = dO_i·O_i, dS = scale·P∘(dP − Δ),
///             dQ_blk = dS·K,  dK += dSᵀ·Q_blk,  dV += Pᵀ·dO_blk.
/// Forward items are (sequence, block, head); backward items are (sequence, KV head), each walking its
/// query heads and blocks in a fixed order, so every dK/dV element has one writer and one summation
/// order: results are bitwise independent of the thread count. Each participant keeps its S/P and dP
/// blocks (Br × keys) in its own allocation (`pool.scratch` belongs to `GEMM.serial`).
#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

extension Ops {
    /// One causal sequence inside packed buffers: its queries (and outputs, lse, dq) are rows
    /// qRow ..< qRow + rows, its keys/values rows kRow ..< kRow + start + rows; query row t sits at
    /// position start + t and attends keys 0 ... start + t.
    struct AttentionSpan {
        var qRow: Int, kRow: Int, rows: Int, start: Int
    }

    /// Per-sequence calls with at least this many rows use the blocked kernels; decode (1 row) and very
    /// short prefills stay on the row-wise ones.
    static let attentionBlockedMinRows = 16

    /// Query rows per block: 4·MR (48 with AVX-512, 24 with AVX2 or NEON).
    static var attentionBlockRows: Int { 4 * GEMM.MR }

    /// Attention over `sequences` packed back to back: the rows of sequence s are offset ..< offset + length
    /// of every buffer, it is causal within itself (positions 0 ..< length) and never sees another
    /// sequence. Identical in meaning to `attentionForward(rows: length, keys: length, startPos: 0)` on each
    /// sequence; rows not covered by any sequence are not touched.
    /// - q, out: [N, H·D]; k, v: [N, Hkv·D]; lse: [N, H] or nil (needed by the backward); sequences must not
    ///   overlap; scale defaults to 1/√D.
    public static func attentionForward(q: UnsafePointer<Float>, k: UnsafePointer<Float>, v: UnsafePointer<Float>,
                                        out: UnsafeMutablePointer<Float>, lse: UnsafeMutablePointer<Float>?,
                                        sequences: [(offset: Int, length: Int)], heads: Int, kvHeads: Int,
                                        headDim: Int, scale: Float? = nil,
                                        pool: ThreadPool = .shared) throws(LKError) {
        let spans = try attentionSpans("attentionForward", sequences, heads: heads, kvHeads: kvHeads, headDim: headDim)
        attentionForwardBlocked(q: q, k: k, v: v, out: out, lse: lse, spans: spans, heads: heads, kvHeads: kvHeads,
                                headDim: headDim, scale: scale ?? 1 / Float(headDim).squareRoot(), pool: pool)
    }

    /// Backward of the batched `attentionForward`. OVERWRITES dq, dk and dv on the rows of the sequences
    /// (the one exception to "backward functions accumulate": the caller need not zero them); rows not
    /// covered by any sequence are not touched. Otherwise as the per-sequence `attentionBackward`.
    /// - q, out, dout, dq: [N, H·D]; k, v, dk, dv: [N, Hkv·D]; lse: [N, H] (from the forward).
    public static func attentionBackward(q: UnsafePointer<Float>, k: UnsafePointer<Float>, v: UnsafePointer<Float>,
                                         out: UnsafePointer<Float>, dout: UnsafePointer<Float>,
                                         lse: UnsafePointer<Float>,
                                         dq: UnsafeMutablePointer<Float>, dk: UnsafeMutablePointer<Float>,
                                         dv: UnsafeMutablePointer<Float>,
                                         sequences: [(offset: Int, length: Int)], heads: Int, kvHeads: Int,
                                         headDim: Int, scale: Float? = nil,
                                         pool: ThreadPool = .shared) throws(LKError) {
        let spans = try attentionSpans("attentionBackward", sequences, heads: heads, kvHeads: kvHeads, headDim: headDim)
        attentionBackwardBlocked(q: q, k: k, v: v, out: out, dout: dout, lse: lse, dq: dq, dk: dk, dv: dv, spans: spans,
                                 heads: heads, kvHeads: kvHeads, headDim: headDim,
                                 scale: scale ?? 1 / Float(headDim).squareRoot(), accumulate: false, pool: pool)
    }

    /// Validated spans of packed sequences (non-negative, non-overlapping).
    static func attentionSpans(_ what: String, _ sequences: [(offset: Int, length: Int)], heads: Int, kvHeads: Int,
                               headDim: Int) throws(LKError) -> [AttentionSpan] {
        try checkAttention(what, rows: 0, keys: 0, heads: heads, kvHeads: kvHeads, headDim: headDim, startPos: 0)
        for (i, s) in sequences.enumerated() where s.offset < 0 || s.length < 0 {
            throw .invalidArgument("\(what): sequence \(i) has offset \(s.offset), length \(s.length)")
        }
        let order = sequences.indices.filter { sequences[$0].length > 0 }.sorted { sequences[$0].offset < sequences[$1].offset }
        for (a, b) in zip(order, order.dropFirst()) where sequences[a].offset + sequences[a].length > sequences[b].offset {
            throw .invalidArgument("\(what): sequences \(a) (rows \(sequences[a].offset)..<\(sequences[a].offset + sequences[a].length)) and \(b) (from row \(sequences[b].offset)) overlap")
        }
        return sequences.filter { $0.length > 0 }.map { AttentionSpan(qRow: $0.offset, kRow: $0.offset, rows: $0.length, start: 0) }
    }

    /// Leading dimension of a participant's Br × keys blocks (whole cache lines).
    @inline(__always) static func attentionBlockLd(_ spans: [AttentionSpan]) -> Int {
        let keys = spans.map { $0.start + $0.rows }.max() ?? 1
        return (max(keys, 1) + 15) & ~15
    }

    /// The blocked forward over validated spans (see the file comment).
    static func attentionForwardBlocked(q: UnsafePointer<Float>, k: UnsafePointer<Float>, v: UnsafePointer<Float>,
                                        out: UnsafeMutablePointer<Float>, lse: UnsafeMutablePointer<Float>?,
                                        spans: [AttentionSpan], heads: Int, kvHeads: Int, headDim: Int,
                                        scale sc: Float, blockRows: Int = attentionBlockRows, pool: ThreadPool) {
        let D = headDim, H = heads, rep = heads / kvHeads, br = blockRows
        let ldq = H * D, ldk = kvHeads * D
        // Items (span, block, head), numbered span by span; itemEnd[s] is one past span s's last item.
        var itemEnd = [Int](), total = 0, flops = 0
        for sp in spans {
            total += (sp.rows + br - 1) / br * H
            itemEnd.append(total)
            flops += sp.rows * H * (sp.start + (sp.rows + 1) / 2) * D * 4
        }
        if total == 0 { return }
        let ldS = attentionBlockLd(spans)
        itemEnd.withUnsafeBufferPointer { itemEnd in
            pool.run(maxTasks: attentionTasks(flops, total, pool)) { idx, cnt in
                let raw = UnsafeMutableRawPointer.allocate(byteCount: br * ldS * 4, alignment: 64)
                defer { raw.deallocate() }
                let s = raw.assumingMemoryBound(to: Float.self)
                var item = idx, si = 0
                while item < total {
                    while item >= itemEnd[si] { si += 1 }
                    let sp = spans[si]
                    let local = item - (si == 0 ? 0 : itemEnd[si - 1])
                    let b = local / H, h = local % H, g = h / rep
                    let r0 = b * br, nr = min(br, sp.rows - r0), nk = sp.start + r0 + nr
                    let row0 = sp.qRow + r0
                    let kb = k + sp.kRow * ldk + g * D, vb = v + sp.kRow * ldk + g * D
                    // S = scale · Q_blk · Kᵀ.
                    GEMM.serial(rows: 0..<nr, cols: 0..<nk, k: D, alpha: sc,
                                a: GEMMLeft(q + row0 * ldq + h * D, rowStride: ldq), b: .f32Transposed(kb, ld: ldk),
                                beta: 0, c: s, ldc: ldS, pool: pool, index: idx)
                    // Causal softmax of each row → P (normalised, 0 past the row's position), lse.
                    for i in 0..<nr {
                        let row = s + i * ldS, n = sp.start + r0 + i + 1
                        let m = rowMax(row, n)
                        let sum = expShifted(row, row, n, m)
                        scaleRow(row, n, Float(1 / sum))
                        if n < nk { (row + n).update(repeating: 0, count: nk - n) }
                        lse?[(row0 + i) * H + h] = Float(Double(m) + log(sum))
                    }
                    // O_blk = P · V.
                    GEMM.serial(rows: 0..<nr, cols: 0..<D, k: nk, alpha: 1, a: GEMMLeft(s, rowStride: ldS),
                                b: .f32(vb, ld: ldk), beta: 0, c: out + row0 * ldq + h * D, ldc: ldq,
                                pool: pool, index: idx)
                    item += cnt
                }
            }
        }
    }

    /// The blocked backward over validated spans (see the file comment). `accumulate`: add to dq, dk, dv
    /// (the per-sequence API); otherwise overwrite their rows of the spans (dk, dv: keys kRow ..< kRow +
    /// start + rows).
    static func attentionBackwardBlocked(q: UnsafePointer<Float>, k: UnsafePointer<Float>, v: UnsafePointer<Float>,
                                         out: UnsafePointer<Float>, dout: UnsafePointer<Float>,
                                         lse: UnsafePointer<Float>,
                                         dq: UnsafeMutablePointer<Float>, dk: UnsafeMutablePointer<Float>,
                                         dv: UnsafeMutablePointer<Float>,
                                         spans: [AttentionSpan], heads: Int, kvHeads: Int, headDim: Int,
                                         scale sc: Float, accumulate: Bool, blockRows: Int = attentionBlockRows,
                                         pool: ThreadPool) {
        let D = headDim, H = heads, Hkv = kvHeads, rep = heads / kvHeads, br = blockRows
        let ldq = H * D, ldk = Hkv * D
        let items = spans.count * Hkv
        if items == 0 { return }
        let flops = spans.reduce(0) { $0 + $1.rows * H * ($1.start + ($1.rows + 1) / 2) * D * 10 }
        let ldS = attentionBlockLd(spans)
        pool.run(maxTasks: attentionTasks(flops, items, pool)) { idx, cnt in
            let raw = UnsafeMutableRawPointer.allocate(byteCount: 2 * br * ldS * 4, alignment: 64)
            defer { raw.deallocate() }
            let p = raw.assumingMemoryBound(to: Float.self), ds = p + br * ldS
            var item = idx
            while item < items {
                let sp = spans[item / Hkv], g = item % Hkv
                let kb = k + sp.kRow * ldk + g * D, vb = v + sp.kRow * ldk + g * D
                let dkb = dk + sp.kRow * ldk + g * D, dvb = dv + sp.kRow * ldk + g * D
                let nb = (sp.rows + br - 1) / br
                var first = true
                for h in (g * rep)..<((g + 1) * rep) {
                    // Last block first: it meets every key, so with `first` it initialises all of dK, dV.
                    for b in stride(from: nb - 1, through: 0, by: -1) {
                        let r0 = b * br, nr = min(br, sp.rows - r0), nk = sp.start + r0 + nr
                        let off = (sp.qRow + r0) * ldq + h * D
                        let qb = q + off, ob = out + off, gb = dout + off
                        // S = scale · Q_blk · Kᵀ and dP = dO_blk · Vᵀ.
                        GEMM.serial(rows: 0..<nr, cols: 0..<nk, k: D, alpha: sc, a: GEMMLeft(qb, rowStride: ldq),
                                    b: .f32Transposed(kb, ld: ldk), beta: 0, c: p, ldc: ldS, pool: pool, index: idx)
                        GEMM.serial(rows: 0..<nr, cols: 0..<nk, k: D, alpha: 1, a: GEMMLeft(gb, rowStride: ldq),
                                    b: .f32Transposed(vb, ld: ldk), beta: 0, c: ds, ldc: ldS, pool: pool, index: idx)
                        // P = exp(S − lse), dS = scale · P ∘ (dP − Δ); both 0 past the row's position.
                        for i in 0..<nr {
                            let n = sp.start + r0 + i + 1
                            let prow = p + i * ldS, drow = ds + i * ldS
                            let delta = dotF(gb + i * ldq, ob + i * ldq, D)
                            _ = expShifted(prow, prow, n, lse[(sp.qRow + r0 + i) * H + h])
                            softmaxGradRow(prow, drow, n, delta, sc)
                            if n < nk {
                                (prow + n).update(repeating: 0, count: nk - n)
                                (drow + n).update(repeating: 0, count: nk - n)
                            }
                        }
                        // dQ_blk = dS · K;  dK += dSᵀ · Q_blk;  dV += Pᵀ · dO_blk.
                        GEMM.serial(rows: 0..<nr, cols: 0..<D, k: nk, alpha: 1, a: GEMMLeft(ds, rowStride: ldS),
                                    b: .f32(kb, ld: ldk), beta: accumulate ? 1 : 0, c: dq + off, ldc: ldq,
                                    pool: pool, index: idx)
                        let beta: Float = first && !accumulate ? 0 : 1
                        GEMM.serial(rows: 0..<nk, cols: 0..<D, k: nr, alpha: 1, a: .transposed(ds, ld: ldS),
                                    b: .f32(qb, ld: ldq), beta: beta, c: dkb, ldc: ldk, pool: pool, index: idx)
                        GEMM.serial(rows: 0..<nk, cols: 0..<D, k: nr, alpha: 1, a: .transposed(p, ld: ldS),
                                    b: .f32(gb, ld: ldq), beta: beta, c: dvb, ldc: ldk, pool: pool, index: idx)
                        first = false
                    }
                }
                item += cnt
            }
        }
    }

    /// x[i] *= c for i < n.
    @inline(__always) static func scaleRow(_ x: UnsafeMutablePointer<Float>, _ n: Int, _ c: Float) {
        let cv = SIMD8<Float>(repeating: c)
        var i = 0
        while i + 8 <= n { st8(ld8(x + i) * cv, x + i); i += 8 }
        while i < n { x[i] *= c; i += 1 }
    }

    /// d[i] = scale · (p[i] · (d[i] − delta)) for i < n.
    @inline(__always) static func softmaxGradRow(_ p: UnsafePointer<Float>, _ d: UnsafeMutablePointer<Float>, _ n: Int,
                                                 _ delta: Float, _ scale: Float) {
        let dv = SIMD8<Float>(repeating: delta), sv = SIMD8<Float>(repeating: scale)
        var i = 0
        while i + 8 <= n { st8(sv * (ld8(p + i) * (ld8(d + i) - dv)), d + i); i += 8 }
        while i < n { d[i] = scale * (p[i] * (d[i] - delta)); i += 1 }
    }
}
