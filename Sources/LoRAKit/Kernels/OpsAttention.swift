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
        var acc = SIMD8<Float>()
        var i = 0
        while i + 8 <= n { acc.addProduct(ld8(a + i), ld8(b + i)); i += 8 }
        var s = acc.sum()
        while i < n { s = s.addingProduct(a[i], b[i]); i += 1 }
        return s
    }

    /// y += alpha · x over n values (SIMD8 + scalar tail).
    @inline(__always) static func axpyF(_ alpha: Float, _ x: UnsafePointer<Float>, _ y: UnsafeMutablePointer<Float>,
                                        _ n: Int) {
        let av = SIMD8<Float>(repeating: alpha)
        var i = 0
        while i + 8 <= n { var v = ld8(y + i); v.addProduct(av, ld8(x + i)); st8(v, y + i); i += 8 }
        while i < n { y[i] = y[i].addingProduct(alpha, x[i]); i += 1 }
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
    /// Work items (row, head) are dealt round-robin to the participants; each is computed by one thread.
    /// - q: [T, H·D]; k, v: [S, Hkv·D]; out: [T, H·D]; lse: [T, H] or nil (log-sum-exp of the scaled
    ///   scores, needed by the backward); scale defaults to 1/√D.
    public static func attentionForward(q: UnsafePointer<Float>, k: UnsafePointer<Float>, v: UnsafePointer<Float>,
                                        out: UnsafeMutablePointer<Float>, lse: UnsafeMutablePointer<Float>?,
                                        rows: Int, keys: Int, heads: Int, kvHeads: Int, headDim: Int,
                                        startPos: Int, scale: Float? = nil,
                                        pool: ThreadPool = .shared) throws(LKError) {
        try checkAttention("attentionForward", rows: rows, keys: keys, heads: heads, kvHeads: kvHeads,
                           headDim: headDim, startPos: startPos)
        let D = headDim, H = heads, rep = heads / kvHeads
        let ldq = H * D, ldk = kvHeads * D
        let sc = scale ?? 1 / Float(D).squareRoot()
        let items = rows * H
        let flops = rows * H * (startPos + (rows + 1) / 2) * D * 2
        pool.run(maxTasks: attentionTasks(flops, items, pool)) { idx, cnt in
            let s = pool.scratch(idx, bytes: max(keys, 1) * 4).assumingMemoryBound(to: Float.self)
            var item = idx
            while item < items {
                let t = item / H, h = item % H, g = h / rep
                let n = startPos + t + 1
                let qr = q + t * ldq + h * D, o = out + t * ldq + h * D
                for j in 0..<n { s[j] = sc * dotF(qr, k + j * ldk + g * D, D) }
                let m = rowMax(s, n)
                let sum = expShifted(s, s, n, m)
                o.update(repeating: 0, count: D)
                for j in 0..<n { axpyF(s[j], v + j * ldk + g * D, o, D) }
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
    /// Two passes: one over (row, head) items writes dq, one over (key, KV head) items writes dk and dv,
    /// so every gradient element has a single writer and a fixed summation order.
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
        let D = headDim, H = heads, rep = heads / kvHeads
        let ldq = H * D, ldk = kvHeads * D
        let sc = scale ?? 1 / Float(D).squareRoot()
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
                    for j in 0..<n {
                        p[j] = sc * dotF(qr, k + j * ldk + g * D, D)
                        dp[j] = dotF(gr, v + j * ldk + g * D, D)
                    }
                    _ = expShifted(p, p, n, l)
                    let dqr = dq + off
                    for j in 0..<n { axpyF(sc * (p[j] * (dp[j] - dl)), k + j * ldk + g * D, dqr, D) }
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
                        for t in stride(from: max(0, j - startPos), to: rows, by: 1) {
                            let off = t * ldq + h * D
                            let s = sc * dotF(q + off, kr, D)
                            let pj = scalarExp(s - lse[t * H + h])
                            let dpj = dotF(dout + off, vr, D)
                            axpyF(sc * (pj * (dpj - delta[t * H + h])), q + off, dkr, D)
                            axpyF(pj, dout + off, dvr, D)
                        }
                    }
                    item += cnt
                }
            }
        }
    }
}
