import LoRAKitCore

/// Blocked causal attention over several independent sequences packed back to back (training batches,
/// prefills), with the products done by the GEMM micro-kernel (FlashAttention-style: the forward keeps
/// the log-sum-exp of each (row, head), the backward recomputes the probabilities from it).
///
/// Rows of a sequence are cut into query blocks of `Br` rows (4·MR); a block only meets the keys up to
/// its last row, so the causal waste is one diagonal block. Per block and query head h (KV head g):
///   forward:  S = scale·Q_blk·K[0..<r1]ᵀ, causal mask, E = exp(S − rowmax), lse,
///             O_blk = diag(1/ΣE)·E·V[0..<r1];
///   backward: P = exp(S − lse), dP = dO_blk·Vᵀ, Δ_i = dO_i·O_i, dS = scale·P∘(dP − Δ),
///             dQ_blk = dS·K,  dKᵀ += Q_blkᵀ·dS,  dVᵀ += dO_blkᵀ·P.
/// Forward items are (sequence, block, KV head): Kᵀ and V of the block's keys are packed into GEMM
/// panels once and used by the group's query heads. Backward items are (sequence, KV head): Kᵀ, Vᵀ and K
/// are packed once, then its query heads and blocks are walked in a fixed order (last block first),
/// dKᵀ and dVᵀ accumulated in the participant's workspace and transposed into dk, dv at the end. So every
/// output element has one writer and one summation order: results are bitwise independent of the thread
/// count. Each participant keeps its blocks (Br × keys) and packed panels (keys × D) in its own
/// allocation (`pool.scratch` belongs to `GEMM.serial`, used for the dKᵀ/dVᵀ products).
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

    /// Sequences (per-sequence calls or batched) with at least this many rows use the blocked kernels;
    /// decode (1 row) and very short sequences stay on the row-wise ones (faster there: at 16 rows the
    /// blocked kernels are ≈1.3× slower, at 32 rows ≈1.4× faster).
    public static let attentionBlockedMinRows = 16

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
        let sc = scale ?? 1 / Float(headDim).squareRoot()
        attentionForwardBlocked(q: q, k: k, v: v, out: out, lse: lse,
                                spans: spans.filter { $0.rows >= attentionBlockedMinRows }, heads: heads,
                                kvHeads: kvHeads, headDim: headDim, scale: sc, pool: pool)
        // Short sequences: the row-wise kernel is faster there.
        let qd = heads * headDim, kd = kvHeads * headDim
        for sp in spans where sp.rows < attentionBlockedMinRows {
            attentionForwardRowwise(q: q + sp.qRow * qd, k: k + sp.kRow * kd, v: v + sp.kRow * kd,
                                    out: out + sp.qRow * qd, lse: lse.map { $0 + sp.qRow * heads }, rows: sp.rows,
                                    keys: sp.rows, heads: heads, kvHeads: kvHeads, headDim: headDim, startPos: 0,
                                    scale: sc, pool: pool)
        }
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
        let sc = scale ?? 1 / Float(headDim).squareRoot()
        attentionBackwardBlocked(q: q, k: k, v: v, out: out, dout: dout, lse: lse, dq: dq, dk: dk, dv: dv,
                                 spans: spans.filter { $0.rows >= attentionBlockedMinRows }, heads: heads,
                                 kvHeads: kvHeads, headDim: headDim, scale: sc, accumulate: false, pool: pool)
        // Short sequences: the row-wise kernel (which accumulates) on zeroed gradients.
        let qd = heads * headDim, kd = kvHeads * headDim
        for sp in spans where sp.rows < attentionBlockedMinRows {
            (dq + sp.qRow * qd).update(repeating: 0, count: sp.rows * qd)
            (dk + sp.kRow * kd).update(repeating: 0, count: sp.rows * kd)
            (dv + sp.kRow * kd).update(repeating: 0, count: sp.rows * kd)
            attentionBackwardRowwise(q: q + sp.qRow * qd, k: k + sp.kRow * kd, v: v + sp.kRow * kd,
                                     out: out + sp.qRow * qd, dout: dout + sp.qRow * qd, lse: lse + sp.qRow * heads,
                                     dq: dq + sp.qRow * qd, dk: dk + sp.kRow * kd, dv: dv + sp.kRow * kd,
                                     rows: sp.rows, keys: sp.rows, heads: heads, kvHeads: kvHeads, headDim: headDim,
                                     startPos: 0, scale: sc, pool: pool)
        }
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
                                        layout: KVLayout? = nil, out: UnsafeMutablePointer<Float>,
                                        lse: UnsafeMutablePointer<Float>?, spans: [AttentionSpan], heads: Int,
                                        kvHeads: Int, headDim: Int, scale sc: Float,
                                        blockRows: Int = attentionBlockRows, pool: ThreadPool) {
        let D = headDim, H = heads, Hkv = kvHeads, rep = heads / kvHeads, br = blockRows
        let lay = layout ?? .rows(kvHeads: kvHeads, headDim: headDim)
        let ldq = H * D, ldk = lay.rowStride, gs = lay.headStride
        // Items (span, block, KV head), numbered span by span; itemEnd[s] is one past span s's last item.
        var itemEnd = [Int](), total = 0, flops = 0
        for sp in spans {
            total += (sp.rows + br - 1) / br * Hkv
            itemEnd.append(total)
            flops += sp.rows * H * (sp.start + (sp.rows + 1) / 2) * D * 4
        }
        if total == 0 { return }
        let ldS = attentionBlockLd(spans)
        let maxKeys = ldS
        itemEnd.withUnsafeBufferPointer { itemEnd in
            pool.run(maxTasks: attentionTasks(flops, total, pool)) { idx, cnt in
                let ws = AttentionWorkspace(floats: [br * ldS, br, packedSize(k: D, n: maxKeys),
                                                     packedSize(k: maxKeys, n: D)])
                defer { ws.free() }
                let s = ws[0], inv = ws[1], kT = ws[2], vP = ws[3]
                var item = idx, si = 0
                while item < total {
                    while item >= itemEnd[si] { si += 1 }
                    let sp = spans[si]
                    let local = item - (si == 0 ? 0 : itemEnd[si - 1])
                    let b = local / Hkv, g = local % Hkv
                    let r0 = b * br, nr = min(br, sp.rows - r0), nk = sp.start + r0 + nr
                    let row0 = sp.qRow + r0
                    // Kᵀ and V of the keys this block meets, packed once for the group's query heads.
                    packRight(.f32Transposed(k + sp.kRow * ldk + g * gs, ld: ldk), k: D, n: nk, into: kT, ws: ws)
                    packRight(.f32(v + sp.kRow * ldk + g * gs, ld: ldk), k: nk, n: D, into: vP, ws: ws)
                    for h in (g * rep)..<((g + 1) * rep) {
                        // S = scale · Q_blk · Kᵀ.
                        multiplyPacked(m: nr, n: nk, k: D, alpha: sc, a: GEMMLeft(q + row0 * ldq + h * D, rowStride: ldq),
                                       b: kT, bRows: D, bCols: nk, beta: 0, c: s, ldc: ldS, ws: ws)
                        // Causal softmax numerators E = exp(S − rowmax) (0 past the row's position), lse.
                        for i in 0..<nr {
                            let row = s + i * ldS, n = sp.start + r0 + i + 1
                            let m = rowMax(row, n)
                            let sum = expRowMasked(row, n, m)
                            let n8 = (n + 7) & ~7
                            if n8 < nk { (row + n8).update(repeating: 0, count: nk - n8) }
                            inv[i] = Float(1 / sum)
                            lse?[(row0 + i) * H + h] = Float(Double(m) + log(sum))
                        }
                        // O_blk = diag(1/Σ) · E · V.
                        let o = out + row0 * ldq + h * D
                        multiplyPacked(m: nr, n: D, k: nk, alpha: 1, a: GEMMLeft(s, rowStride: ldS), b: vP, bRows: nk,
                                       bCols: D, beta: 0, c: o, ldc: ldq, ws: ws)
                        for i in 0..<nr { scaleRow(o + i * ldq, D, inv[i]) }
                    }
                    item += cnt
                }
            }
        }
    }

    /// The blocked backward over validated spans (see the file comment). `accumulate`: add to dq, dk, dv
    /// (the per-sequence API); otherwise overwrite their rows of the spans (dk, dv: keys kRow ..< kRow +
    /// start + rows). dK and dV are accumulated transposed (dKᵀ += Q_blkᵀ · dS, so the long dimension is
    /// the GEMM's N and the packed operands are plain copies) in the participant's workspace, then
    /// transposed into dk, dv once per item.
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
        let maxKeys = ldS
        pool.run(maxTasks: attentionTasks(flops, items, pool)) { idx, cnt in
            let ws = AttentionWorkspace(floats: [br * ldS, br * ldS, packedSize(k: D, n: maxKeys),
                                                 packedSize(k: D, n: maxKeys), packedSize(k: maxKeys, n: D),
                                                 D * ldS, D * ldS])
            defer { ws.free() }
            let p = ws[0], ds = ws[1], kT = ws[2], vT = ws[3], kP = ws[4], dkT = ws[5], dvT = ws[6]
            var item = idx
            while item < items {
                let sp = spans[item / Hkv], g = item % Hkv
                let keys = sp.start + sp.rows
                let kb = k + sp.kRow * ldk + g * D, vb = v + sp.kRow * ldk + g * D
                packRight(.f32Transposed(kb, ld: ldk), k: D, n: keys, into: kT, ws: ws)
                packRight(.f32Transposed(vb, ld: ldk), k: D, n: keys, into: vT, ws: ws)
                packRight(.f32(kb, ld: ldk), k: keys, n: D, into: kP, ws: ws)
                let nb = (sp.rows + br - 1) / br
                var first = true
                for h in (g * rep)..<((g + 1) * rep) {
                    // Last block first: it meets every key, so with `first` it initialises all of dKᵀ, dVᵀ.
                    for b in stride(from: nb - 1, through: 0, by: -1) {
                        let r0 = b * br, nr = min(br, sp.rows - r0), nk = sp.start + r0 + nr
                        let off = (sp.qRow + r0) * ldq + h * D
                        let qb = q + off, ob = out + off, gb = dout + off
                        // S = scale · Q_blk · Kᵀ and dP = dO_blk · Vᵀ (packed panels: the first nk keys).
                        multiplyPacked(m: nr, n: nk, k: D, alpha: sc, a: GEMMLeft(qb, rowStride: ldq), b: kT, bRows: D,
                                       bCols: keys, beta: 0, c: p, ldc: ldS, ws: ws)
                        multiplyPacked(m: nr, n: nk, k: D, alpha: 1, a: GEMMLeft(gb, rowStride: ldq), b: vT, bRows: D,
                                       bCols: keys, beta: 0, c: ds, ldc: ldS, ws: ws)
                        // P = exp(S − lse), dS = scale · P ∘ (dP − Δ); both 0 past the row's position.
                        for i in 0..<nr {
                            let n = sp.start + r0 + i + 1
                            let prow = p + i * ldS, drow = ds + i * ldS
                            let delta = dotF(gb + i * ldq, ob + i * ldq, D)
                            softmaxGradRow(prow, drow, n, lse[(sp.qRow + r0 + i) * H + h], delta, sc)
                            let n8 = (n + 7) & ~7
                            if n8 < nk {
                                (prow + n8).update(repeating: 0, count: nk - n8)
                                (drow + n8).update(repeating: 0, count: nk - n8)
                            }
                        }
                        // dQ_blk = dS · K;  dKᵀ += Q_blkᵀ · dS;  dVᵀ += dO_blkᵀ · P.
                        multiplyPacked(m: nr, n: D, k: nk, alpha: 1, a: GEMMLeft(ds, rowStride: ldS), b: kP,
                                       bRows: keys, bCols: D, beta: accumulate ? 1 : 0, c: dq + off, ldc: ldq, ws: ws)
                        let beta: Float = first ? 0 : 1
                        GEMM.serial(rows: 0..<D, cols: 0..<nk, k: nr, alpha: 1, a: .transposed(qb, ld: ldq),
                                    b: .f32(ds, ld: ldS), beta: beta, c: dkT, ldc: ldS, pool: pool, index: idx)
                        GEMM.serial(rows: 0..<D, cols: 0..<nk, k: nr, alpha: 1, a: .transposed(gb, ld: ldq),
                                    b: .f32(p, ld: ldS), beta: beta, c: dvT, ldc: ldS, pool: pool, index: idx)
                        first = false
                    }
                }
                // dk, dv (=, or += when accumulating) the transposed accumulators.
                let dkb = dk + sp.kRow * ldk + g * D, dvb = dv + sp.kRow * ldk + g * D
                for j in 0..<keys {
                    let dkr = dkb + j * ldk, dvr = dvb + j * ldk
                    if accumulate {
                        for i in 0..<D { dkr[i] += dkT[i * ldS + j]; dvr[i] += dvT[i * ldS + j] }
                    } else {
                        for i in 0..<D { dkr[i] = dkT[i * ldS + j]; dvr[i] = dvT[i * ldS + j] }
                    }
                }
                item += cnt
            }
        }
    }

    // MARK: GEMM with a pre-packed right operand

    /// Floats of `B` (k × n) packed by `packRight`: per KC block of k, ⌈n/NR⌉ panels of NR columns.
    @inline(__always) static func packedSize(k: Int, n: Int) -> Int {
        (n + GEMM.NR - 1) / GEMM.NR * GEMM.NR * max(k, 1)
    }

    /// Pack `B` (k × n) for `multiplyPacked`: per KC block of rows (at dst + k0·⌈n/NR⌉·NR), the NR-column
    /// panels of `GEMM.packB`.
    static func packRight(_ b: GEMMRight, k: Int, n: Int, into dst: UnsafeMutablePointer<Float>,
                          ws: AttentionWorkspace) {
        let w = (n + GEMM.NR - 1) / GEMM.NR * GEMM.NR
        var pc = 0
        while pc < k {
            GEMM.packB(b, k0: pc, kc: min(GEMM.KC, k - pc), n0: 0, nc: n, into: dst + pc * w, tmp: ws.edge)
            pc += GEMM.KC
        }
    }

    /// `C[m × n] = alpha · A · B + beta · C` (beta 0: overwrite) where `b` holds a `bRows × bCols` matrix
    /// packed by `packRight`, of which the first k rows and n columns are used: the same packing, tiles
    /// and per-element arithmetic as `GEMM.serial`, without packing B again for every product.
    static func multiplyPacked(m: Int, n: Int, k: Int, alpha: Float, a: GEMMLeft, b: UnsafePointer<Float>,
                               bRows: Int, bCols: Int, beta: Float, c: UnsafeMutablePointer<Float>, ldc: Int,
                               ws: AttentionWorkspace) {
        let w = (bCols + GEMM.NR - 1) / GEMM.NR * GEMM.NR
        var pc = 0
        while pc < k {
            let kc = min(GEMM.KC, k - pc), kcPacked = min(GEMM.KC, bRows - pc)
            let betaHere: Float = pc == 0 ? beta : 1
            var ic = 0
            while ic < m {
                let mc = min(GEMM.MC, m - ic)
                GEMM.packA(a, i0: ic, mc: mc, k0: pc, kc: kc, into: ws.aPack)
                var jr = 0
                while jr < n {
                    GEMM.tiles(mc: mc, nr: min(GEMM.NR, n - jr), kc: kc, aPack: ws.aPack,
                               bPanel: b + pc * w + jr * kcPacked, c: c + ic * ldc + jr, ldc: ldc, alpha: alpha,
                               beta: betaHere, edge: ws.edge)
                    jr += GEMM.NR
                }
                ic += GEMM.MC
            }
            pc += GEMM.KC
        }
    }

    /// x[i] *= c for i < n.
    @inline(__always) static func scaleRow(_ x: UnsafeMutablePointer<Float>, _ n: Int, _ c: Float) {
        let cv = SIMD8<Float>(repeating: c)
        var i = 0
        while i + 8 <= n { st8(ld8(x + i) * cv, x + i); i += 8 }
        while i < n { x[i] *= c; i += 1 }
    }

    /// Lanes i ≥ `valid` of a vector (to zero the tail of a row's last 8-value chunk).
    @inline(__always) static func lanesFrom(_ valid: Int) -> SIMDMask<SIMD8<Int32>> {
        SIMD8<Int32>(0, 1, 2, 3, 4, 5, 6, 7) .>= SIMD8(repeating: Int32(truncatingIfNeeded: valid))
    }

    /// x[i] = exp(x[i] − m) for i < n and 0 for n ≤ i < ⌈n/8⌉·8 (whole vectors: the row must have room);
    /// returns Σ x[i] (Float lanes, added into a Double every 64 values).
    @inline(__always) static func expRowMasked(_ x: UnsafeMutablePointer<Float>, _ n: Int, _ m: Float) -> Double {
        let mv = SIMD8<Float>(repeating: m)
        var acc = SIMD8<Float>(), total = 0.0
        var i = 0, chunks = 0
        while i < n {
            var e = simdExp(ld8(x + i) - mv)
            if i + 8 > n { e.replace(with: 0, where: lanesFrom(n - i)) }
            st8(e, x + i)
            acc += e
            i += 8; chunks += 1
            if chunks == 8 { total += Double(acc.sum()); acc = SIMD8(); chunks = 0 }
        }
        return total + Double(acc.sum())
    }

    /// p[i] = exp(p[i] − lse) and d[i] = scale · (p[i] · (d[i] − delta)) for i < n; both 0 for
    /// n ≤ i < ⌈n/8⌉·8 (whole vectors: the rows must have room).
    @inline(__always) static func softmaxGradRow(_ p: UnsafeMutablePointer<Float>, _ d: UnsafeMutablePointer<Float>,
                                                 _ n: Int, _ lse: Float, _ delta: Float, _ scale: Float) {
        let lv = SIMD8<Float>(repeating: lse), dv = SIMD8<Float>(repeating: delta), sv = SIMD8<Float>(repeating: scale)
        var i = 0
        while i < n {
            var e = simdExp(ld8(p + i) - lv)
            var g = sv * (e * (ld8(d + i) - dv))
            if i + 8 > n {
                let mask = lanesFrom(n - i)
                e.replace(with: 0, where: mask); g.replace(with: 0, where: mask)
            }
            st8(e, p + i); st8(g, d + i)
            i += 8
        }
    }
}

/// One participant's memory for the blocked attention kernels: its own buffers (sizes in floats, each
/// 64-byte aligned) plus the packed-A block and edge tile of `Ops.multiplyPacked`, in one allocation.
struct AttentionWorkspace {
    let raw: UnsafeMutableRawPointer
    let buffers: [UnsafeMutablePointer<Float>]
    let aPack: UnsafeMutablePointer<Float>
    let edge: UnsafeMutablePointer<Float>

    init(floats: [Int]) {
        // (+ one vector of slack after the packed A block for the overlapping stores of `packA`.)
        let sizes = floats + [GEMM.MC * GEMM.KC + GEMM.Vec.scalarCount, GEMM.MR * GEMM.NR + 64]
        let rounded = sizes.map { (max($0, 1) + 15) & ~15 }
        raw = UnsafeMutableRawPointer.allocate(byteCount: rounded.reduce(0, +) * 4, alignment: 64)
        var ptrs: [UnsafeMutablePointer<Float>] = [], at = 0
        for r in rounded {
            ptrs.append((raw + at * 4).bindMemory(to: Float.self, capacity: r))
            at += r
        }
        aPack = ptrs[floats.count]
        edge = ptrs[floats.count + 1]
        buffers = Array(ptrs[0..<floats.count])
    }

    subscript(_ i: Int) -> UnsafeMutablePointer<Float> { buffers[i] }

    func free() { raw.deallocate() }
}
