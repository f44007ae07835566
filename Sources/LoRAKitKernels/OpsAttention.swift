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
        scores(kind, x, queries: 1, y, ld: ld, n, d, scale, s)
    }

    /// `scores` for `queries` query vectors that share the keys (x_r = x + r·d, scores to s + r·n: the
    /// query heads of one key-value head): each block of four keys is read from memory once and from cache
    /// for the other queries. Each s[r·n + j] is computed exactly as `scores` computes it for x_r alone.
    @inline(__always) static func scores<R: FloatRow>(_ kind: R.Type, _ x: UnsafePointer<Float>, queries: Int,
                                                      _ y: UnsafeRawPointer, ld: Int, _ n: Int, _ d: Int,
                                                      _ scale: Float, _ s: UnsafeMutablePointer<Float>) {
        let step = ld * R.elementBytes
        var j = 0
        while j + 4 <= n {
            let b = y + j * step
            for q in 0..<queries {
                let r = scale * dot4(kind, x + q * d, b, b + step, b + 2 * step, b + 3 * step, d)
                let sq = s + q * n + j
                sq[0] = r[0]; sq[1] = r[1]; sq[2] = r[2]; sq[3] = r[3]
            }
            j += 4
        }
        while j < n {
            for q in 0..<queries { s[q * n + j] = scale * dotRowF(kind, x + q * d, y + j * step, d) }
            j += 1
        }
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
        combine(kind, c, outputs: 1, y, ld: ld, n, d, o)
    }

    /// `combine` for `outputs` weight vectors over the same rows (c_r = c + r·n into o_r = o + r·d), each
    /// block of four rows read from memory once; each o_r computed exactly as `combine` computes it alone.
    @inline(__always) static func combine<R: FloatRow>(_ kind: R.Type, _ c: UnsafePointer<Float>, outputs: Int,
                                                       _ y: UnsafeRawPointer, ld: Int, _ n: Int, _ d: Int,
                                                       _ o: UnsafeMutablePointer<Float>) {
        let step = ld * R.elementBytes
        var j = 0
        while j + 4 <= n {
            let b = y + j * step
            for r in 0..<outputs {
                let cr = c + r * n
                axpy4(kind, SIMD4(cr[j], cr[j + 1], cr[j + 2], cr[j + 3]), b, b + step, b + 2 * step, b + 3 * step,
                      o + r * d, d)
            }
            j += 4
        }
        while j < n {
            for r in 0..<outputs { axpyRow(kind, c[r * n + j], y + j * step, o + r * d, d) }
            j += 1
        }
    }

    /// One unchunked (row, head) item of the row-wise forward: out = softmax(scale·q·kᵀ)·v over n keys, lse.
    @inline(__always) static func attentionHead<R: FloatRow>(_ kind: R.Type, q: UnsafePointer<Float>, k: UnsafeRawPointer,
                                                             v: UnsafeRawPointer, ld: Int, out: UnsafeMutablePointer<Float>,
                                                             lse: UnsafeMutablePointer<Float>?, n: Int, headDim D: Int,
                                                             scale sc: Float, scratch s: UnsafeMutablePointer<Float>) {
        scores(kind, q, k, ld: ld, n, D, sc, s)
        let m = rowMax(s, n)
        let sum = expShifted(s, s, n, m)
        out.update(repeating: 0, count: D)
        combine(kind, s, v, ld: ld, n, D, out)
        let inv = Float(1 / sum)
        for i in 0..<D { out[i] *= inv }
        lse?.pointee = Float(Double(m) + log(sum))
    }

    /// One chunk item of the row-wise forward: the `heads` query heads of one row that share a key-value
    /// head (q and out at the first of them, [heads·D] each; k and v at the group's column of the chunk's
    /// first key, in a cache whose rows are `ld` elements apart, read as `R`), over the chunk's n keys; `s`
    /// holds heads·n floats. Leaves the outputs unnormalized (Σ_j exp(s_j − m)·v_j) and writes each head's
    /// maximum m to `maxes` and Σ exp(s_j − m) to `sums`, for `mergeChunks`.
    @inline(__always) static func attentionChunk<R: FloatRow>(_ kind: R.Type, q: UnsafePointer<Float>, k: UnsafeRawPointer,
                                                              v: UnsafeRawPointer, ld: Int, out: UnsafeMutablePointer<Float>,
                                                              maxes: UnsafeMutablePointer<Float>,
                                                              sums: UnsafeMutablePointer<Double>, heads: Int, n: Int,
                                                              headDim D: Int, scale sc: Float,
                                                              scratch s: UnsafeMutablePointer<Float>) {
        scores(kind, q, queries: heads, k, ld: ld, n, D, sc, s)
        for r in 0..<heads {
            let sr = s + r * n
            maxes[r] = rowMax(sr, n)
            sums[r] = expShifted(sr, sr, n, maxes[r])
        }
        out.update(repeating: 0, count: heads * D)
        combine(kind, s, outputs: heads, v, ld: ld, n, D, out)
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
    /// (see OpsAttentionBlocked.swift); fewer rows (decode) go row-wise: one (row, head) item at a time, or
    /// from `attentionChunkedMinKeys` keys on one (row, key chunk) item (`attentionRowwise`), items dealt
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

    /// Where a KV cache keeps key (or value) row j of key-value head g: at element
    /// `g·headStride + j·rowStride` from its start.
    public struct KVLayout: Sendable, Equatable {
        public var headStride: Int
        public var rowStride: Int
        public init(headStride: Int, rowStride: Int) { self.headStride = headStride; self.rowStride = rowStride }
        /// [S, Hkv·D], a row per position: the layout of training tensors (and the default).
        public static func rows(kvHeads: Int, headDim: Int) -> KVLayout {
            KVLayout(headStride: headDim, rowStride: kvHeads * headDim)
        }
        /// [Hkv, capacity, D]: each key-value head's rows contiguous (`LlamaContext`'s and `BatchContext`'s
        /// caches, filled by `storeKV`). Decode reads
        /// one head's keys as one stream instead of a third of every row (SmolLM2's three key-value heads):
        /// attention over 1.5K positions read its cache at twice the speed this way.
        public static func heads(capacity: Int, headDim: Int) -> KVLayout {
            KVLayout(headStride: capacity * headDim, rowStride: headDim)
        }
    }

    /// A layout's strides must not be negative (`what` names the caller in the error).
    static func checkKVLayout(_ what: String, _ lay: KVLayout) throws(LKError) {
        guard lay.rowStride >= 0, lay.headStride >= 0 else {
            throw .invalidArgument("\(what): negative KV layout strides \(lay.headStride), \(lay.rowStride)")
        }
    }

    /// Store `rows` new key (or value) rows ([rows, Hkv·D] f32 at `src`) at positions `position...` of a
    /// cache laid out as `layout` whose elements are `type` (f16: rounded to nearest even).
    public static func storeKV(_ src: UnsafePointer<Float>, rows: Int, kvHeads: Int, headDim D: Int,
                               into cache: UnsafeMutableRawPointer, type: KVCacheType, layout: KVLayout,
                               position: Int) {
        let eb = type.bytes
        for r in 0..<rows {
            for g in 0..<kvHeads {
                let from = src + (r * kvHeads + g) * D
                let to = cache + (g * layout.headStride + (position + r) * layout.rowStride) * eb
                switch type {
                case .f32: to.assumingMemoryBound(to: Float.self).update(from: from, count: D)
                case .f16: quantize(from, count: D, dtype: .f16, into: to)
                }
            }
        }
    }

    /// `attentionForward` over a KV cache whose keys and values are stored as `type` at `k` and `v`, laid
    /// out as `layout` (nil: [S, Hkv·D] each). With f16, decode and short prefills (fewer than `attentionBlockedMinRows` rows) read
    /// the f16 rows directly, so a decoded token reads half the cache bytes; longer prefills convert the
    /// `keys` rows they see to f32 in `scratch` (2·keys·Hkv·D floats, required for f16) and run the blocked
    /// kernel. Every score and product is in f32, as with an f32 cache holding the same (f16-rounded) values.
    public static func attentionForward(q: UnsafePointer<Float>, k: UnsafeRawPointer, v: UnsafeRawPointer,
                                        type: KVCacheType, layout: KVLayout? = nil, out: UnsafeMutablePointer<Float>,
                                        rows: Int, keys: Int, heads: Int, kvHeads: Int, headDim: Int, startPos: Int,
                                        scratch: UnsafeMutablePointer<Float>?, scale: Float? = nil,
                                        pool: ThreadPool = .shared) throws(LKError) {
        try checkAttention("attentionForward", rows: rows, keys: keys, heads: heads, kvHeads: kvHeads,
                           headDim: headDim, startPos: startPos)
        let lay = layout ?? .rows(kvHeads: kvHeads, headDim: headDim)
        try checkKVLayout("attentionForward", lay)
        let sc = scale ?? 1 / Float(headDim).squareRoot()
        let span = [AttentionSpan(qRow: 0, kRow: 0, rows: rows, start: startPos)]
        switch type {
        case .f32:
            let kf = k.assumingMemoryBound(to: Float.self), vf = v.assumingMemoryBound(to: Float.self)
            if rows >= attentionBlockedMinRows {
                attentionForwardBlocked(q: q, k: kf, v: vf, layout: lay, out: out, lse: nil, spans: span, heads: heads,
                                        kvHeads: kvHeads, headDim: headDim, scale: sc, pool: pool)
            } else {
                attentionRowwise(F32Row.self, [RowwiseSequence(q: q, k: k, v: v, layout: lay, out: out, lse: nil, rows: rows,
                                                               startPos: startPos)],
                                 heads: heads, kvHeads: kvHeads, headDim: headDim, scale: sc, pool: pool)
            }
        case .f16:
            if rows >= attentionBlockedMinRows {
                // The keys' rows converted to f32, each key-value head's [keys, D] contiguous.
                guard let scratch else { throw .invalidArgument("attentionForward: an f16 KV cache needs scratch for a prefill") }
                let n = keys * kvHeads * headDim, D = headDim
                func toF32(_ src: UnsafeRawPointer, _ dst: UnsafeMutablePointer<Float>) {
                    for g in 0..<kvHeads {
                        let from = src + g * lay.headStride * 2, to = dst + g * keys * D
                        if lay.rowStride == D {
                            dequantize(from, dtype: .f16, count: keys * D, into: to)
                        } else {
                            for j in 0..<keys { dequantize(from + j * lay.rowStride * 2, dtype: .f16, count: D, into: to + j * D) }
                        }
                    }
                }
                toF32(k, scratch)
                toF32(v, scratch + n)
                attentionForwardBlocked(q: q, k: scratch, v: scratch + n, layout: .heads(capacity: keys, headDim: D),
                                        out: out, lse: nil, spans: span, heads: heads, kvHeads: kvHeads, headDim: D,
                                        scale: sc, pool: pool)
            } else {
                attentionRowwise(F16Row.self, [RowwiseSequence(q: q, k: k, v: v, layout: lay, out: out, lse: nil, rows: rows,
                                                               startPos: startPos)],
                                 heads: heads, kvHeads: kvHeads, headDim: headDim, scale: sc, pool: pool)
            }
        }
    }

    /// One sequence of `attentionForwardMany`: its queries and outputs ([rows, H·D]), its keys and values
    /// (startPos + rows positions laid out as `layout`; nil: [startPos + rows, Hkv·D]; elements of the
    /// call's `type`), its row count and the position of its first row.
    public struct AttentionSequence {
        public var q: UnsafePointer<Float>
        public var k: UnsafeRawPointer
        public var v: UnsafeRawPointer
        public var layout: KVLayout?
        public var out: UnsafeMutablePointer<Float>
        public var rows: Int
        public var startPos: Int

        /// Keys and values of any `KVCacheType` (the one given to `attentionForwardMany`; f32 and f16
        /// pointers convert implicitly).
        public init(q: UnsafePointer<Float>, k: UnsafeRawPointer, v: UnsafeRawPointer, layout: KVLayout? = nil,
                    out: UnsafeMutablePointer<Float>, rows: Int, startPos: Int) {
            self.q = q; self.k = k; self.v = v; self.layout = layout; self.out = out; self.rows = rows
            self.startPos = startPos
        }
    }

    /// `attentionForward` (keys = startPos + rows, no lse) for several independent sequences with the same
    /// head shape, e.g. the decode rows of a batch of sequences, over caches whose elements are `type`:
    /// sequences of fewer than `attentionBlockedMinRows` rows share one hand-out to the thread pool, their
    /// (row, key-value head) items dealt round-robin to the participants; longer ones run the typed
    /// `attentionForward` one by one (an f16 cache then needs `scratch`: 2·keys·Hkv·D floats for the
    /// longest such sequence). Each output is computed exactly as `attentionForward` computes it alone
    /// (bitwise the same).
    public static func attentionForwardMany(_ seqs: [AttentionSequence], type: KVCacheType = .f32, heads: Int,
                                            kvHeads: Int, headDim: Int, scratch: UnsafeMutablePointer<Float>? = nil,
                                            scale: Float? = nil, pool: ThreadPool = .shared) throws(LKError) {
        for s in seqs {
            try checkAttention("attentionForwardMany", rows: s.rows, keys: s.startPos + s.rows, heads: heads,
                               kvHeads: kvHeads, headDim: headDim, startPos: s.startPos)
            if let l = s.layout { try checkKVLayout("attentionForwardMany", l) }
        }
        if type == .f16, seqs.contains(where: { $0.rows >= attentionBlockedMinRows }), scratch == nil {
            throw .invalidArgument("attentionForwardMany: an f16 KV cache needs scratch for a prefill")
        }
        let sc = scale ?? 1 / Float(headDim).squareRoot()
        var small: [RowwiseSequence] = []
        for s in seqs where s.rows > 0 {
            let lay = s.layout ?? .rows(kvHeads: kvHeads, headDim: headDim)
            if s.rows >= attentionBlockedMinRows {
                try attentionForward(q: s.q, k: s.k, v: s.v, type: type, layout: lay, out: s.out, rows: s.rows,
                                     keys: s.startPos + s.rows, heads: heads, kvHeads: kvHeads, headDim: headDim,
                                     startPos: s.startPos, scratch: scratch, scale: sc, pool: pool)
            } else {
                small.append(RowwiseSequence(q: s.q, k: s.k, v: s.v, layout: lay, out: s.out, lse: nil, rows: s.rows,
                                             startPos: s.startPos))
            }
        }
        if small.isEmpty { return }
        switch type {
        case .f32: attentionRowwise(F32Row.self, small, heads: heads, kvHeads: kvHeads, headDim: headDim, scale: sc, pool: pool)
        case .f16: attentionRowwise(F16Row.self, small, heads: heads, kvHeads: kvHeads, headDim: headDim, scale: sc, pool: pool)
        }
    }

    /// `attentionForward` one (row, key-value head) at a time (decode and short prefills), sizes already validated.
    static func attentionForwardRowwise(q: UnsafePointer<Float>, k: UnsafePointer<Float>, v: UnsafePointer<Float>,
                                        out: UnsafeMutablePointer<Float>, lse: UnsafeMutablePointer<Float>?,
                                        rows: Int, keys: Int, heads: Int, kvHeads: Int, headDim: Int,
                                        startPos: Int, scale sc: Float, pool: ThreadPool) {
        attentionRowwise(F32Row.self, [RowwiseSequence(q: q, k: UnsafeRawPointer(k), v: UnsafeRawPointer(v),
                                                       layout: .rows(kvHeads: kvHeads, headDim: headDim), out: out,
                                                       lse: lse, rows: rows, startPos: startPos)],
                         heads: heads, kvHeads: kvHeads, headDim: headDim, scale: sc, pool: pool)
    }

    /// Keys per item of the row-wise forward on long sequences (`attentionChunkedMinKeys` keys or more):
    /// a row attends to its keys in chunks of this many, one item per (row, chunk), the query heads of a
    /// key-value head reading its keys and values once; the chunks' partial sums are merged at the end
    /// (`mergeChunks`). Shorter sequences: one item per (row, head), no merge.
    static let attentionKeyChunk = 256
    /// Sequences of at least this many keys attend in chunks. Below it the per-head items are as fast or
    /// faster (SmolLM2-135M, 1 and 2 threads, f32 and f16 caches: decode at position 2048 unchunked 41.3 vs
    /// 36.6 tok/s at 1 thread f32; at 4096 chunked 22.0 vs 18.3 and 38.0 vs 29.1 at 2 threads).
    static let attentionChunkedMinKeys = 3072

    /// A sequence of the row-wise forward: queries and outputs [rows, H·D], keys and values of
    /// startPos + rows positions laid out as `layout` (read as the kernel's `R`), lse [rows, H] or nil.
    struct RowwiseSequence {
        var q: UnsafePointer<Float>
        var k: UnsafeRawPointer
        var v: UnsafeRawPointer
        var layout: KVLayout
        var out: UnsafeMutablePointer<Float>
        var lse: UnsafeMutablePointer<Float>?
        var rows: Int
        var startPos: Int
    }

    /// The row-wise forward of several sequences in one hand-out to the pool, items dealt round-robin.
    /// A sequence of fewer than `attentionChunkedMinKeys` keys has one item per (row, head); a longer one
    /// one item per (row, key chunk), each row's chunks merged after (its rows with fewer keys than that
    /// are computed unchunked). Every row's result depends only on its own queries, keys and count of
    /// keys: the same alone or beside other sequences, in a prefill or decoded one row at a time.
    static func attentionRowwise<R: FloatRow>(_ kind: R.Type, _ seqs: [RowwiseSequence], heads: Int, kvHeads: Int,
                                              headDim: Int, scale sc: Float, pool: ThreadPool) {
        let D = headDim, H = heads, rep = heads / kvHeads, C = attentionKeyChunk
        let ldq = H * D, eb = R.elementBytes
        // Per sequence: its first item, items per row (H, or its chunk count), and the first of its
        // partial slots (one per (row, chunk) of a chunked sequence).
        var first: [Int] = [], per: [Int] = [], slot0: [Int] = [], items = 0, slots = 0, flops = 0
        for s in seqs {
            let keys = s.startPos + s.rows
            let chunks = keys >= attentionChunkedMinKeys ? (keys + C - 1) / C : 1  // > 1 when chunked
            first.append(items)
            per.append(chunks > 1 ? chunks : H)
            slot0.append(slots)
            items += s.rows * per.last!
            if chunks > 1 { slots += s.rows * chunks }
            flops += s.rows * H * (s.startPos + (s.rows + 1) / 2) * D * 2
        }
        first.append(items)
        if items == 0 { return }
        let pOut = UnsafeMutablePointer<Float>.allocate(capacity: max(slots * H * D, 1))
        let pMax = UnsafeMutablePointer<Float>.allocate(capacity: max(slots * H, 1))
        let pSum = UnsafeMutablePointer<Double>.allocate(capacity: max(slots * H, 1))
        defer { pOut.deallocate(); pMax.deallocate(); pSum.deallocate() }
        // Scores: n floats for an unchunked head (n ≤ the longest sequence), rep·C for a chunk item.
        let scratchFloats = max(rep * C, seqs.reduce(1) { max($0, $1.startPos + $1.rows) })
        seqs.withUnsafeBufferPointer { sb in
            pool.run(maxTasks: attentionTasks(flops, items, pool)) { idx, cnt in
                let sp = pool.scratch(idx, bytes: scratchFloats * 4).assumingMemoryBound(to: Float.self)
                var item = idx, i = 0
                while item < items {
                    while first[i + 1] <= item { i += 1 }
                    let seq = sb[i], local = item - first[i]
                    let t = local / per[i], n = seq.startPos + t + 1
                    if n < attentionChunkedMinKeys {
                        // Unchunked: item = head (a short sequence), or the row's first chunk item does every
                        // head (a row of a chunked sequence that is itself short).
                        let chunked = seq.startPos + seq.rows >= attentionChunkedMinKeys
                        if chunked && local % per[i] != 0 { item += cnt; continue }
                        for h in chunked ? 0..<H : (local % per[i])..<(local % per[i] + 1) {
                            let g = h / rep, off = t * ldq + h * D
                            let at = g * seq.layout.headStride * eb
                            attentionHead(kind, q: seq.q + off, k: seq.k + at, v: seq.v + at,
                                          ld: seq.layout.rowStride, out: seq.out + off, lse: seq.lse.map { $0 + t * H + h }, n: n,
                                          headDim: D, scale: sc, scratch: sp)
                        }
                    } else {
                        let c = local % per[i], j0 = c * C
                        if j0 < n {
                            let slot = slot0[i] + local, len = min(C, n - j0)
                            for g in 0..<kvHeads {
                                let at = (j0 * seq.layout.rowStride + g * seq.layout.headStride) * eb, h0 = slot * H + g * rep
                                attentionChunk(kind, q: seq.q + t * ldq + g * rep * D, k: seq.k + at, v: seq.v + at,
                                               ld: seq.layout.rowStride, out: pOut + h0 * D, maxes: pMax + h0, sums: pSum + h0,
                                               heads: rep, n: len, headDim: D, scale: sc, scratch: sp)
                            }
                        }
                    }
                    item += cnt
                }
            }
        }
        for (i, s) in seqs.enumerated() where s.startPos + s.rows >= attentionChunkedMinKeys {
            mergeChunks(s, chunks: per[i], slot0: slot0[i], heads: H, headDim: D, pOut: pOut, pMax: pMax, pSum: pSum)
        }
    }

    /// Each row of a chunked sequence with at least `attentionChunkedMinKeys` keys (shorter rows were
    /// computed unchunked): out = Σ_c w_c·o_c / Σ_c w_c·S_c with w_c = exp(m_c − max_c m_c) over the row's
    /// chunks (o_c, m_c, S_c: a chunk's unnormalized output, maximum and Σexp); lse = max + log Σ.
    static func mergeChunks(_ s: RowwiseSequence, chunks: Int, slot0: Int, heads H: Int, headDim D: Int,
                            pOut: UnsafeMutablePointer<Float>, pMax: UnsafeMutablePointer<Float>,
                            pSum: UnsafeMutablePointer<Double>) {
        let C = attentionKeyChunk
        for t in 0..<s.rows where s.startPos + t + 1 >= attentionChunkedMinKeys {
            let used = (s.startPos + t + C) / C  // ⌈(startPos + t + 1) / C⌉
            let base = slot0 + t * chunks
            for h in 0..<H {
                var m = -Float.infinity
                for c in 0..<used { m = max(m, pMax[(base + c) * H + h]) }
                var total = 0.0
                let o = s.out + (t * H + h) * D
                o.update(repeating: 0, count: D)
                for c in 0..<used {
                    let at = (base + c) * H + h
                    let w = exp(Double(pMax[at] - m))
                    total += pSum[at] * w
                    axpyF(Float(w), pOut + at * D, o, D)
                }
                let inv = Float(1 / total)
                for d in 0..<D { o[d] *= inv }
                s.lse?[t * H + h] = Float(Double(m) + log(total))
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
