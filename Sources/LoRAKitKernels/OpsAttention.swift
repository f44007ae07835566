import LoRAKitCore

/// Causal scaled dot-product attention for one sequence, with grouped-query attention and a starting
/// position so the same kernel serves prefill, training and decode with a KV cache (see the shape legend
/// in Ops.swift).
///
/// Query row t sits at absolute position startPos + t and attends keys 0...startPos+t. Query head h uses
/// key/value head h / (H/Hkv) (consecutive query heads share a KV head, as Hugging Face `repeat_kv` and
/// llama.cpp). The forward stores only the log-sum-exp of each (row, head); the backward recomputes the
/// probabilities from it (as FlashAttention does) instead of keeping an [H, T, S] matrix.
#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

extension Ops {
    /// Σ a[i]·b[i] in Float with SIMD8 partial sums (fixed order).
    @inline(__always) static func dotF(_ a: UnsafePointer<Float>, _ b: UnsafePointer<Float>, _ n: Int) -> Float {
        dotRowF(F32Row.self, a, UnsafeRawPointer(b), n)
    }

    /// y += alpha · x over n values (SIMD8 + scalar tail).
    @inline(__always) static func axpyF(_ alpha: Float, _ x: UnsafePointer<Float>, _ y: UnsafeMutablePointer<Float>,
                                        _ n: Int) {
        axpyRow(F32Row.self, alpha, UnsafeRawPointer(x), y, n)
    }

    /// Four dot products sharing `x`: (x·y0, x·y1, x·y2, x·y3), the y_i read as `R`, each with its own
    /// accumulator (fixed order).
    @inline(__always) static func dot4<R: FloatRow>(_: R.Type, _ x: UnsafePointer<Float>, _ y0: UnsafeRawPointer,
                                                    _ y1: UnsafeRawPointer, _ y2: UnsafeRawPointer,
                                                    _ y3: UnsafeRawPointer, _ n: Int) -> SIMD4<Float> {
        var a0 = SIMD8<Float>(), a1 = SIMD8<Float>(), a2 = SIMD8<Float>(), a3 = SIMD8<Float>()
        var i = 0
        while i + 8 <= n {
            let xv = ld8(x + i)
            a0.addProduct(xv, R.load8(y0, i)); a1.addProduct(xv, R.load8(y1, i))
            a2.addProduct(xv, R.load8(y2, i)); a3.addProduct(xv, R.load8(y3, i))
            i += 8
        }
        var r = SIMD4<Float>(a0.sum(), a1.sum(), a2.sum(), a3.sum())
        while i < n {
            r[0] = r[0].addingProduct(x[i], R.load1(y0, i)); r[1] = r[1].addingProduct(x[i], R.load1(y1, i))
            r[2] = r[2].addingProduct(x[i], R.load1(y2, i)); r[3] = r[3].addingProduct(x[i], R.load1(y3, i))
            i += 1
        }
        return r
    }

    /// `dot4` over f32 vectors.
    @inline(__always) static func dot4(_ x: UnsafePointer<Float>, _ y0: UnsafePointer<Float>, _ y1: UnsafePointer<Float>,
                                       _ y2: UnsafePointer<Float>, _ y3: UnsafePointer<Float>, _ n: Int) -> SIMD4<Float> {
        dot4(F32Row.self, x, UnsafeRawPointer(y0), UnsafeRawPointer(y1), UnsafeRawPointer(y2), UnsafeRawPointer(y3), n)
    }

    /// x·y with `y` read as `R` (SIMD8 partial sums, fixed order).
    @inline(__always) static func dotRowF<R: FloatRow>(_: R.Type, _ x: UnsafePointer<Float>, _ y: UnsafeRawPointer,
                                                       _ n: Int) -> Float {
        var acc = SIMD8<Float>()
        var i = 0
        while i + 8 <= n { acc.addProduct(ld8(x + i), R.load8(y, i)); i += 8 }
        var s = acc.sum()
        while i < n { s = s.addingProduct(x[i], R.load1(y, i)); i += 1 }
        return s
    }

    /// y += c0·x0 + c1·x1 + c2·x2 + c3·x3, the x_i read as `R` (four fused multiply-adds per element, in
    /// that order).
    @inline(__always) static func axpy4<R: FloatRow>(_: R.Type, _ c: SIMD4<Float>, _ x0: UnsafeRawPointer,
                                                     _ x1: UnsafeRawPointer, _ x2: UnsafeRawPointer,
                                                     _ x3: UnsafeRawPointer, _ y: UnsafeMutablePointer<Float>, _ n: Int) {
        let c0 = SIMD8<Float>(repeating: c[0]), c1 = SIMD8<Float>(repeating: c[1])
        let c2 = SIMD8<Float>(repeating: c[2]), c3 = SIMD8<Float>(repeating: c[3])
        var i = 0
        while i + 8 <= n {
            var v = ld8(y + i)
            v.addProduct(c0, R.load8(x0, i)); v.addProduct(c1, R.load8(x1, i))
            v.addProduct(c2, R.load8(x2, i)); v.addProduct(c3, R.load8(x3, i))
            st8(v, y + i)
            i += 8
        }
        while i < n {
            y[i] = y[i].addingProduct(c[0], R.load1(x0, i)).addingProduct(c[1], R.load1(x1, i))
                .addingProduct(c[2], R.load1(x2, i)).addingProduct(c[3], R.load1(x3, i))
            i += 1
        }
    }

    /// `axpy4` over f32 vectors.
    @inline(__always) static func axpy4(_ c: SIMD4<Float>, _ x0: UnsafePointer<Float>, _ x1: UnsafePointer<Float>,
                                        _ x2: UnsafePointer<Float>, _ x3: UnsafePointer<Float>,
                                        _ y: UnsafeMutablePointer<Float>, _ n: Int) {
        axpy4(F32Row.self, c, UnsafeRawPointer(x0), UnsafeRawPointer(x1), UnsafeRawPointer(x2), UnsafeRawPointer(x3), y, n)
    }

    /// o += alpha · y over n values, `y` read as `R` (SIMD8 + scalar tail).
    @inline(__always) static func axpyRow<R: FloatRow>(_: R.Type, _ alpha: Float, _ y: UnsafeRawPointer,
                                                       _ o: UnsafeMutablePointer<Float>, _ n: Int) {
        let av = SIMD8<Float>(repeating: alpha)
        var i = 0
        while i + 8 <= n { var v = ld8(o + i); v.addProduct(av, R.load8(y, i)); st8(v, o + i); i += 8 }
        while i < n { o[i] = o[i].addingProduct(alpha, R.load1(y, i)); i += 1 }
    }

    /// s[j] = scale · x·y_j for j < n, where y_j is row j of `y` (rows `ld` elements apart, read as `R`);
    /// keys in blocks of four.
    @inline(__always) static func scores<R: FloatRow>(_ kind: R.Type, _ x: UnsafePointer<Float>, _ y: UnsafeRawPointer,
                                                      ld: Int, _ n: Int, _ d: Int, _ scale: Float,
                                                      _ s: UnsafeMutablePointer<Float>) {
        let step = ld * R.elementBytes
        var j = 0
        while j + 4 <= n {
            let b = y + j * step
            let r = scale * dot4(kind, x, b, b + step, b + 2 * step, b + 3 * step, d)
            s[j] = r[0]; s[j + 1] = r[1]; s[j + 2] = r[2]; s[j + 3] = r[3]
            j += 4
        }
        while j < n { s[j] = scale * dotRowF(kind, x, y + j * step, d); j += 1 }
    }

    /// `scores` over f32 rows.
    @inline(__always) static func scores(_ x: UnsafePointer<Float>, _ y: UnsafePointer<Float>, ld: Int, _ n: Int,
                                         _ d: Int, _ scale: Float, _ s: UnsafeMutablePointer<Float>) {
        scores(F32Row.self, x, UnsafeRawPointer(y), ld: ld, n, d, scale, s)
    }

    /// o += Σ_j c[j] · y_j for j < n, where y_j is row j of `y` (rows `ld` elements apart, read as `R`);
    /// rows in blocks of four.
    @inline(__always) static func combine<R: FloatRow>(_ kind: R.Type, _ c: UnsafePointer<Float>, _ y: UnsafeRawPointer,
                                                       ld: Int, _ n: Int, _ d: Int, _ o: UnsafeMutablePointer<Float>) {
        let step = ld * R.elementBytes
        var j = 0
        while j + 4 <= n {
            let b = y + j * step
            axpy4(kind, SIMD4(c[j], c[j + 1], c[j + 2], c[j + 3]), b, b + step, b + 2 * step, b + 3 * step, o, d)
            j += 4
        }
        while j < n { axpyRow(kind, c[j], y + j * step, o, d); j += 1 }
    }

    /// `combine` over f32 rows.
    @inline(__always) static func combine(_ c: UnsafePointer<Float>, _ y: UnsafePointer<Float>, ld: Int, _ n: Int,
                                          _ d: Int, _ o: UnsafeMutablePointer<Float>) {
        combine(F32Row.self, c, UnsafeRawPointer(y), ld: ld, n, d, o)
    }

    static func checkAttention(_ what: String, rows: Int, keys: Int, heads: Int, kvHeads: Int, headDim: Int,
                               startPos: Int) throws(LKError) {
        try checkDims(what, ("rows", rows), ("keys", keys), ("startPos", startPos))
        guard heads > 0, kvHeads > 0, headDim > 0 else {
            throw .invalidArgument("\(what): heads \(heads), kvHeads \(kvHeads), headDim \(headDim) must be positive")
        }
        guard heads % kvHeads == 0 else {
            throw .invalidArgument("\(what): \(heads) query heads are not a multiple of \(kvHeads) KV heads")
        }
        guard startPos + rows <= keys else {
            throw .invalidArgument("\(what): startPos \(startPos) + rows \(rows) exceeds the \(keys) keys")
        }
    }

    /// Participants for attention work of about `flops` multiply-adds.
    @inline(__always) static func attentionTasks(_ flops: Int, _ items: Int, _ pool: ThreadPool) -> Int {
        flops < 65_536 ? 1 : min(pool.activeCount, items)
    }

    /// out[t, h] = Σ_j softmax_j(scale · q[t, h]·k[j, g]) · v[j, g] over j ≤ startPos + t, g = h/(H/Hkv).
    /// From `attentionBlockedMinRows` rows on (prefill), query blocks are computed with the GEMM micro-kernel
    /// (see OpsAttentionBlocked.swift); fewer rows (decode) go one (row, head) item at a time, items dealt
    /// round-robin to the participants. Either way each output is computed by one thread.
    /// - q: [T, H·D]; k, v: [S, Hkv·D]; out: [T, H·D]; lse: [T, H] or nil (log-sum-exp of the scaled
    ///   scores, needed by the backward); scale defaults to 1/√D.
    public static func attentionForward(q: UnsafePointer<Float>, k: UnsafePointer<Float>, v: UnsafePointer<Float>,
                                        out: UnsafeMutablePointer<Float>, lse: UnsafeMutablePointer<Float>?,
                                        rows: Int, keys: Int, heads: Int, kvHeads: Int, headDim: Int,
                                        startPos: Int, scale: Float? = nil,
                                        pool: ThreadPool = .shared) throws(LKError) {
        try checkAttention("attentionForward", rows: rows, keys: keys, heads: heads, kvHeads: kvHeads,
                           headDim: headDim, startPos: startPos)
        let sc = scale ?? 1 / Float(headDim).squareRoot()
        if rows >= attentionBlockedMinRows {
            attentionForwardBlocked(q: q, k: k, v: v, out: out, lse: lse,
                                    spans: [AttentionSpan(qRow: 0, kRow: 0, rows: rows, start: startPos)],
                                    heads: heads, kvHeads: kvHeads, headDim: headDim, scale: sc, pool: pool)
        } else {
            attentionForwardRowwise(q: q, k: k, v: v, out: out, lse: lse, rows: rows, keys: keys, heads: heads,
                                    kvHeads: kvHeads, headDim: headDim, startPos: startPos, scale: sc, pool: pool)
        }
    }

    /// `attentionForward` over a KV cache whose keys and values are stored as `type` ([S, Hkv·D] each, at
    /// `k` and `v`). With f16, decode and short prefills (fewer than `attentionBlockedMinRows` rows) read
    /// the f16 rows directly, so a decoded token reads half the cache bytes; longer prefills convert the
    /// `keys` rows they see to f32 in `scratch` (2·keys·Hkv·D floats, required for f16) and run the blocked
    /// kernel. Every score and product is in f32, as with an f32 cache holding the same (f16-rounded) values.
    public static func attentionForward(q: UnsafePointer<Float>, k: UnsafeRawPointer, v: UnsafeRawPointer,
                                        type: KVCacheType, out: UnsafeMutablePointer<Float>, rows: Int, keys: Int,
                                        heads: Int, kvHeads: Int, headDim: Int, startPos: Int,
                                        scratch: UnsafeMutablePointer<Float>?, scale: Float? = nil,
                                        pool: ThreadPool = .shared) throws(LKError) {
        switch type {
        case .f32:
            try attentionForward(q: q, k: k.assumingMemoryBound(to: Float.self), v: v.assumingMemoryBound(to: Float.self),
                                 out: out, lse: nil, rows: rows, keys: keys, heads: heads, kvHeads: kvHeads,
                                 headDim: headDim, startPos: startPos, scale: scale, pool: pool)
        case .f16:
            try checkAttention("attentionForward", rows: rows, keys: keys, heads: heads, kvHeads: kvHeads,
                               headDim: headDim, startPos: startPos)
            let sc = scale ?? 1 / Float(headDim).squareRoot()
            if rows >= attentionBlockedMinRows {
                guard let scratch else { throw .invalidArgument("attentionForward: an f16 KV cache needs scratch for a prefill") }
                let n = keys * kvHeads * headDim
                dequantize(k, dtype: .f16, count: n, into: scratch)
                dequantize(v, dtype: .f16, count: n, into: scratch + n)
                attentionForwardBlocked(q: q, k: scratch, v: scratch + n, out: out, lse: nil,
                                        spans: [AttentionSpan(qRow: 0, kRow: 0, rows: rows, start: startPos)],
                                        heads: heads, kvHeads: kvHeads, headDim: headDim, scale: sc, pool: pool)
            } else {
                attentionForwardRowwise(F16Row.self, q: q, k: k, v: v, out: out, lse: nil, rows: rows, keys: keys,
                                        heads: heads, kvHeads: kvHeads, headDim: headDim, startPos: startPos,
                                        scale: sc, pool: pool)
            }
        }
    }

    /// One sequence of `attentionForwardMany`: its queries and outputs ([rows, H·D]), its keys and values
    /// ([startPos + rows, Hkv·D]), its row count and the position of its first row.
    public struct AttentionSequence {
        public var q: UnsafePointer<Float>
        public var k: UnsafePointer<Float>
        public var v: UnsafePointer<Float>
        public var out: UnsafeMutablePointer<Float>
        public var rows: Int
        public var startPos: Int

        public init(q: UnsafePointer<Float>, k: UnsafePointer<Float>, v: UnsafePointer<Float>,
                    out: UnsafeMutablePointer<Float>, rows: Int, startPos: Int) {
            self.q = q; self.k = k; self.v = v; self.out = out; self.rows = rows; self.startPos = startPos
        }
    }

    /// `attentionForward` (keys = startPos + rows, no lse) for several independent sequences with the same
    /// head shape, e.g. the decode rows of a batch of sequences: sequences of fewer than
    /// `attentionBlockedMinRows` rows share one hand-out to the thread pool, their (row, head) items dealt
    /// round-robin to the participants; longer ones run `attentionForward` one by one. Each output is
    /// computed exactly as `attentionForward` computes it (bitwise the same).
    public static func attentionForwardMany(_ seqs: [AttentionSequence], heads: Int, kvHeads: Int, headDim: Int,
                                            scale: Float? = nil, pool: ThreadPool = .shared) throws(LKError) {
        for s in seqs {
            try checkAttention("attentionForwardMany", rows: s.rows, keys: s.startPos + s.rows, heads: heads,
                               kvHeads: kvHeads, headDim: headDim, startPos: s.startPos)
        }
        let sc = scale ?? 1 / Float(headDim).squareRoot()
        var small: [AttentionSequence] = []
        for s in seqs where s.rows > 0 {
            if s.rows >= attentionBlockedMinRows {
                try attentionForward(q: s.q, k: s.k, v: s.v, out: s.out, lse: nil, rows: s.rows, keys: s.startPos + s.rows,
                                     heads: heads, kvHeads: kvHeads, headDim: headDim, startPos: s.startPos,
                                     scale: sc, pool: pool)
            } else {
                small.append(s)
            }
        }
        if small.isEmpty { return }
        let D = headDim, H = heads, rep = heads / kvHeads
        let ldq = H * D, ldk = kvHeads * D
        // first[i]: index of sequence i's first item; items = all (row, head) pairs.
        var first: [Int] = [], items = 0, flops = 0, maxKeys = 1
        for s in small {
            first.append(items)
            items += s.rows * H
            flops += s.rows * H * (s.startPos + (s.rows + 1) / 2) * D * 2
            maxKeys = max(maxKeys, s.startPos + s.rows)
        }
        first.append(items)
        small.withUnsafeBufferPointer { sb in
            first.withUnsafeBufferPointer { fb in
                pool.run(maxTasks: attentionTasks(flops, items, pool)) { idx, cnt in
                    let sp = pool.scratch(idx, bytes: maxKeys * 4).assumingMemoryBound(to: Float.self)
                    var item = idx, i = 0
                    while item < items {
                        while fb[i + 1] <= item { i += 1 }
                        let seq = sb[i], local = item - fb[i]
                        let t = local / H, h = local % H, g = h / rep
                        let n = seq.startPos + t + 1
                        let qr = seq.q + t * ldq + h * D, o = seq.out + t * ldq + h * D
                        scores(qr, seq.k + g * D, ld: ldk, n, D, sc, sp)
                        let m = rowMax(sp, n)
                        let sum = expShifted(sp, sp, n, m)
                        o.update(repeating: 0, count: D)
                        combine(sp, seq.v + g * D, ld: ldk, n, D, o)
                        let inv = Float(1 / sum)
                        for j in 0..<D { o[j] *= inv }
                        item += cnt
                    }
                }
            }
        }
    }

    /// `attentionForward` one (row, head) at a time (decode and short prefills), sizes already validated.
    static func attentionForwardRowwise(q: UnsafePointer<Float>, k: UnsafePointer<Float>, v: UnsafePointer<Float>,
                                        out: UnsafeMutablePointer<Float>, lse: UnsafeMutablePointer<Float>?,
                                        rows: Int, keys: Int, heads: Int, kvHeads: Int, headDim: Int,
                                        startPos: Int, scale sc: Float, pool: ThreadPool) {
        attentionForwardRowwise(F32Row.self, q: q, k: UnsafeRawPointer(k), v: UnsafeRawPointer(v), out: out, lse: lse,
                                rows: rows, keys: keys, heads: heads, kvHeads: kvHeads, headDim: headDim,
                                startPos: startPos, scale: sc, pool: pool)
    }

    /// The row-wise forward with keys and values read as `R` (f32, or f16 from an f16 KV cache).
    static func attentionForwardRowwise<R: FloatRow>(_ kind: R.Type, q: UnsafePointer<Float>, k: UnsafeRawPointer,
                                                     v: UnsafeRawPointer, out: UnsafeMutablePointer<Float>,
                                                     lse: UnsafeMutablePointer<Float>?, rows: Int, keys: Int,
                                                     heads: Int, kvHeads: Int, headDim: Int, startPos: Int,
                                                     scale sc: Float, pool: ThreadPool) {
        let D = headDim, H = heads, rep = heads / kvHeads
        let ldq = H * D, ldk = kvHeads * D, eb = R.elementBytes
        let items = rows * H
        let flops = rows * H * (startPos + (rows + 1) / 2) * D * 2
        pool.run(maxTasks: attentionTasks(flops, items, pool)) { idx, cnt in
            let s = pool.scratch(idx, bytes: max(keys, 1) * 4).assumingMemoryBound(to: Float.self)
            var item = idx
            while item < items {
                let t = item / H, h = item % H, g = h / rep
                let n = startPos + t + 1
                let qr = q + t * ldq + h * D, o = out + t * ldq + h * D
                scores(kind, qr, k + g * D * eb, ld: ldk, n, D, sc, s)
                let m = rowMax(s, n)
                let sum = expShifted(s, s, n, m)
                o.update(repeating: 0, count: D)
                combine(kind, s, v + g * D * eb, ld: ldk, n, D, o)
                let inv = Float(1 / sum)
                for i in 0..<D { o[i] *= inv }
                lse?[t * H + h] = Float(Double(m) + log(sum))
                item += cnt
            }
        }
    }

    /// Backward of `attentionForward`. With p_j = exp(scale·q·k_j − lse), dP_j = dout·v_j,
    /// Δ = dout·out and dS_j = p_j·(dP_j − Δ):
    ///   dq[t,h] += scale·Σ_j dS_j·k_j,   dk[j,g] += scale·Σ_{t,h∈g} dS·q[t,h],   dv[j,g] += Σ_{t,h∈g} p·dout[t,h].
    /// Accumulates into dq, dk, dv (keys attended by no row keep their value). From
    /// `attentionBlockedMinRows` rows on, the blocked kernel of OpsAttentionBlocked.swift; below, two
    /// passes: one over (row, head) items writes dq, one over (key, KV head) items writes dk and dv.
    /// Either way every gradient element has a single writer and a fixed summation order.
    /// - q, out, dout, dq: [T, H·D]; k, v, dk, dv: [S, Hkv·D]; lse: [T, H] (from the forward).
    public static func attentionBackward(q: UnsafePointer<Float>, k: UnsafePointer<Float>, v: UnsafePointer<Float>,
                                         out: UnsafePointer<Float>, dout: UnsafePointer<Float>,
                                         lse: UnsafePointer<Float>,
                                         dq: UnsafeMutablePointer<Float>, dk: UnsafeMutablePointer<Float>,
                                         dv: UnsafeMutablePointer<Float>,
                                         rows: Int, keys: Int, heads: Int, kvHeads: Int, headDim: Int,
                                         startPos: Int, scale: Float? = nil,
                                         pool: ThreadPool = .shared) throws(LKError) {
        try checkAttention("attentionBackward", rows: rows, keys: keys, heads: heads, kvHeads: kvHeads,
                           headDim: headDim, startPos: startPos)
        if rows == 0 { return }
        let sc = scale ?? 1 / Float(headDim).squareRoot()
        if rows >= attentionBlockedMinRows {
            attentionBackwardBlocked(q: q, k: k, v: v, out: out, dout: dout, lse: lse, dq: dq, dk: dk, dv: dv,
                                     spans: [AttentionSpan(qRow: 0, kRow: 0, rows: rows, start: startPos)],
                                     heads: heads, kvHeads: kvHeads, headDim: headDim, scale: sc, accumulate: true,
                                     pool: pool)
        } else {
            attentionBackwardRowwise(q: q, k: k, v: v, out: out, dout: dout, lse: lse, dq: dq, dk: dk, dv: dv,
                                     rows: rows, keys: keys, heads: heads, kvHeads: kvHeads, headDim: headDim,
                                     startPos: startPos, scale: sc, pool: pool)
        }
    }

    /// `attentionBackward` one (row, head) and one (key, KV head) at a time (accumulates), sizes already
    /// validated and rows > 0.
    static func attentionBackwardRowwise(q: UnsafePointer<Float>, k: UnsafePointer<Float>, v: UnsafePointer<Float>,
                                         out: UnsafePointer<Float>, dout: UnsafePointer<Float>,
                                         lse: UnsafePointer<Float>,
                                         dq: UnsafeMutablePointer<Float>, dk: UnsafeMutablePointer<Float>,
                                         dv: UnsafeMutablePointer<Float>,
                                         rows: Int, keys: Int, heads: Int, kvHeads: Int, headDim: Int,
                                         startPos: Int, scale sc: Float, pool: ThreadPool) {
        let D = headDim, H = heads, rep = heads / kvHeads
        let ldq = H * D, ldk = kvHeads * D
        let flops = rows * H * (startPos + (rows + 1) / 2) * D * 2
        var delta = [Float](repeating: 0, count: rows * H)
        delta.withUnsafeMutableBufferPointer { dbuf in
            let delta = dbuf.baseAddress!
            // Pass 1: dq, one (row, head) item at a time.
            let items = rows * H
            pool.run(maxTasks: attentionTasks(flops, items, pool)) { idx, cnt in
                let p = pool.scratch(idx, bytes: max(keys, 1) * 8).assumingMemoryBound(to: Float.self)
                let dp = p + max(keys, 1)
                var item = idx
                while item < items {
                    let t = item / H, h = item % H, g = h / rep
                    let n = startPos + t + 1
                    let off = t * ldq + h * D
                    let qr = q + off, gr = dout + off
                    let dl = dotF(gr, out + off, D)
                    delta[item] = dl
                    let l = lse[item]
                    scores(qr, k + g * D, ld: ldk, n, D, sc, p)
                    scores(gr, v + g * D, ld: ldk, n, D, 1, dp)
                    _ = expShifted(p, p, n, l)
                    // dp[j] ← scale · dS_j
                    for j in 0..<n { dp[j] = sc * (p[j] * (dp[j] - dl)) }
                    combine(dp, k + g * D, ld: ldk, n, D, dq + off)
                    item += cnt
                }
            }
            // Pass 2: dk and dv, one (key, KV head) item at a time, summing over rows then heads in order.
            let kvItems = keys * kvHeads
            pool.run(maxTasks: attentionTasks(flops, kvItems, pool)) { idx, cnt in
                var item = idx
                while item < kvItems {
                    let j = item / kvHeads, g = item % kvHeads
                    let kr = k + j * ldk + g * D, vr = v + j * ldk + g * D
                    let dkr = dk + j * ldk + g * D, dvr = dv + j * ldk + g * D
                    for h in (g * rep)..<((g + 1) * rep) {
                        // Rows t0..<rows attend key j; blocks of four rows share the loads of k_j and v_j.
                        var t = max(0, j - startPos)
                        while t < rows {
                            let nb = min(4, rows - t)
                            if nb == 4 {
                                let q0 = q + t * ldq + h * D, g0 = dout + t * ldq + h * D
                                let qp = (q0, q0 + ldq, q0 + 2 * ldq, q0 + 3 * ldq)
                                let gp = (g0, g0 + ldq, g0 + 2 * ldq, g0 + 3 * ldq)
                                let s4 = sc * dot4(kr, qp.0, qp.1, qp.2, qp.3, D)
                                let dp4 = dot4(vr, gp.0, gp.1, gp.2, gp.3, D)
                                let l4 = SIMD4<Float>(lse[t * H + h], lse[(t + 1) * H + h], lse[(t + 2) * H + h],
                                                      lse[(t + 3) * H + h])
                                let d4 = SIMD4<Float>(delta[t * H + h], delta[(t + 1) * H + h], delta[(t + 2) * H + h],
                                                      delta[(t + 3) * H + h])
                                let ps = simdExp(SIMD8(lowHalf: s4 - l4, highHalf: .zero)).lowHalf
                                let cs = sc * (ps * (dp4 - d4))
                                axpy4(cs, qp.0, qp.1, qp.2, qp.3, dkr, D)
                                axpy4(ps, gp.0, gp.1, gp.2, gp.3, dvr, D)
                            } else {
                                for u in 0..<nb {
                                    let off = (t + u) * ldq + h * D
                                    let s1 = sc * dotF(kr, q + off, D)
                                    let pj = scalarExp(s1 - lse[(t + u) * H + h])
                                    let dpj = dotF(vr, dout + off, D)
                                    axpyF(sc * (pj * (dpj - delta[(t + u) * H + h])), q + off, dkr, D)
                                    axpyF(pj, dout + off, dvr, D)
                                }
                            }
                            t += nb
                        }
                    }
                    item += cnt
                }
            }
        }
    }
}

/// The element type of a KV cache's keys and values: f32 (exact), or f16 (half the memory and half the
/// bytes a decoded token reads, keys and values rounded to nearest even as they are stored; llama.cpp's
/// default cache type).
public enum KVCacheType: String, Sendable, CaseIterable {
    case f32, f16

    /// Bytes per stored value.
    public var bytes: Int { self == .f32 ? 4 : 2 }
}
