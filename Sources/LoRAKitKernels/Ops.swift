import LoRAKitCore

/// Elementwise, normalisation and attention-support kernels with their backward passes.
///
/// Shape legend (as in karpathy/llm.c):
///   T = rows (tokens of a sequence; 1 when decoding)      C = channels (model or FFN width)
///   H = query heads   Hkv = key/value heads (GQA: H % Hkv == 0)   D = head dim   V = vocabulary
///   S = key/value length (cached positions + new tokens)   N = a flat element count
///
/// Conventions
/// - All buffers are row-major f32 unless stated; `[T, C]` means T rows of C contiguous values.
/// - Forward and backward functions come in pairs (`fooForward` / `fooBackward`). Backward functions
///   ACCUMULATE (`+=`) into gradient buffers; the caller zeroes them. (The one exception is
///   `crossEntropyBackwardInPlace`, which overwrites the logits with their gradient, as llm.c does, and
///   the batched `attentionBackward(…sequences:…)`, which overwrites dq, dk, dv on the sequences' rows.)
/// - Work is split with `pool.run { idx, cnt in partition(...) }` so that no two participants write the
///   same memory and every output is reduced in an order that does not depend on the thread count:
///   results are bitwise identical for any `ThreadPool` size. Tiny jobs run inline (`maxTasks: 1`).
/// - Sizes are validated (negative sizes, inconsistent shapes, out-of-range ids/targets/positions) and
///   reported with `LKError`; pointers themselves cannot be checked and must cover the documented shapes.
/// - Inner loops use `SIMD8<Float>` with a scalar tail; `addProduct` is a fused multiply-add.
#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

public enum Ops {}

// MARK: - Small helpers (internal)

@inline(__always) func ld8(_ p: UnsafePointer<Float>) -> SIMD8<Float> {
    UnsafeRawPointer(p).loadUnaligned(as: SIMD8<Float>.self)
}
@inline(__always) func st8(_ v: SIMD8<Float>, _ p: UnsafeMutablePointer<Float>) {
    UnsafeMutableRawPointer(p).storeBytes(of: v, as: SIMD8<Float>.self)
}

/// exp(x) for 8 lanes: Cephes `expf` range reduction and degree-6 polynomial (≈ 2 ulp). Returns +inf for
/// x > 88.72, 0 for x < −86.5 (true result < 2.7e-38), NaN for NaN.
@inlinable @inline(__always)
public func simdExp(_ x: SIMD8<Float>) -> SIMD8<Float> {
    // (Clamped with compare-and-select: the generic pointwiseMin/Max stay out-of-line calls, ≈3× slower.)
    let xc = x.replacing(with: 88.72283, where: x .> 88.72283).replacing(with: -86.5, where: x .< -86.5)
    // n = round(x / ln 2) with the 1.5·2²³ trick (its bit pattern then holds n in the low mantissa bits).
    let magic = SIMD8<Float>(repeating: 12_582_912)
    var t = magic
    t.addProduct(xc, SIMD8(repeating: 1.44269504088896341))
    let n = t - magic
    var r = xc
    r.addProduct(n, SIMD8(repeating: -0.693359375))
    r.addProduct(n, SIMD8(repeating: 2.12194440e-4))
    var p = SIMD8<Float>(repeating: 1.9875691500e-4)
    p = p * r + 1.3981999507e-3
    p = p * r + 8.3334519073e-3
    p = p * r + 4.1665795894e-2
    p = p * r + 1.6666665459e-1
    p = p * r + 5.0000001201e-1
    var y = r + 1
    y.addProduct(p, r * r)
    // 2^(n−1), built in the exponent field (n ∈ [−125, 128] so n + 126 ∈ [1, 254]), then ×2.
    let ni = unsafeBitCast(t, to: SIMD8<Int32>.self) &- 0x4B40_0000
    let pow2 = unsafeBitCast((ni &+ 126) &<< 23, to: SIMD8<Float>.self)
    var res = y * pow2 * 2
    res.replace(with: SIMD8(repeating: .infinity), where: x .> 88.72283)
    res.replace(with: SIMD8(repeating: 0), where: x .< -86.5)
    res.replace(with: x, where: x .!= x)
    return res
}

/// Scalar exp with the same algorithm as `simdExp` (so SIMD body and scalar tail agree bit for bit).
@inline(__always) func scalarExp(_ x: Float) -> Float { simdExp(SIMD8(repeating: x))[0] }

extension Ops {
    /// Participants to use for `work` units of cheap elementwise work (≈ 1 task per 16 K values).
    @inline(__always) static func tasks(_ work: Int, _ pool: ThreadPool, grain: Int = 16_384) -> Int {
        work < 2 * grain ? 1 : min(pool.activeCount, work / grain)
    }

    @inline(__always) static func checkCount(_ n: Int, _ what: String) throws(LKError) {
        guard n >= 0 else { throw .invalidArgument("\(what): negative size \(n)") }
    }

    @inline(__always) static func checkDims(_ what: String, _ dims: (String, Int)...) throws(LKError) {
        for (name, v) in dims where v < 0 {
            throw .invalidArgument("\(what): negative \(name) \(v)")
        }
    }

    /// Run `body(range)` over `0..<n` split into 8-aligned contiguous ranges.
    @inline(__always) package static func parallelFlat(_ n: Int, _ pool: ThreadPool, _ body: (Range<Int>) -> Void) {
        pool.run(maxTasks: tasks(n, pool)) { idx, cnt in
            let r = partition(n, index: idx, count: cnt, align: 8)
            if !r.isEmpty { body(r) }
        }
    }
}

// MARK: - Elementwise

extension Ops {
    /// out = a + b.   a, b, out: [N]. `out` may alias `a` or `b`.
    public static func add(_ a: UnsafePointer<Float>, _ b: UnsafePointer<Float>, out: UnsafeMutablePointer<Float>,
                           count n: Int, pool: ThreadPool = .shared) throws(LKError) {
        try checkCount(n, "add")
        parallelFlat(n, pool) { r in
            var i = r.lowerBound
            while i + 8 <= r.upperBound { st8(ld8(a + i) + ld8(b + i), out + i); i += 8 }
            while i < r.upperBound { out[i] = a[i] + b[i]; i += 1 }
        }
    }

    /// Backward of `add`: da += dout, db += dout.   dout, da, db: [N].
    public static func addBackward(dout: UnsafePointer<Float>, da: UnsafeMutablePointer<Float>,
                                   db: UnsafeMutablePointer<Float>, count n: Int,
                                   pool: ThreadPool = .shared) throws(LKError) {
        try checkCount(n, "addBackward")
        parallelFlat(n, pool) { r in
            var i = r.lowerBound
            while i + 8 <= r.upperBound {
                let g = ld8(dout + i)
                st8(ld8(da + i) + g, da + i); st8(ld8(db + i) + g, db + i); i += 8
            }
            while i < r.upperBound { da[i] += dout[i]; db[i] += dout[i]; i += 1 }
        }
    }

    /// out = a ⊙ b.   a, b, out: [N]. `out` may alias `a` or `b`.
    public static func mul(_ a: UnsafePointer<Float>, _ b: UnsafePointer<Float>, out: UnsafeMutablePointer<Float>,
                           count n: Int, pool: ThreadPool = .shared) throws(LKError) {
        try checkCount(n, "mul")
        parallelFlat(n, pool) { r in
            var i = r.lowerBound
            while i + 8 <= r.upperBound { st8(ld8(a + i) * ld8(b + i), out + i); i += 8 }
            while i < r.upperBound { out[i] = a[i] * b[i]; i += 1 }
        }
    }

    /// Backward of `mul`: da += dout ⊙ b, db += dout ⊙ a.   a, b, dout, da, db: [N].
    public static func mulBackward(a: UnsafePointer<Float>, b: UnsafePointer<Float>, dout: UnsafePointer<Float>,
                                   da: UnsafeMutablePointer<Float>, db: UnsafeMutablePointer<Float>,
                                   count n: Int, pool: ThreadPool = .shared) throws(LKError) {
        try checkCount(n, "mulBackward")
        parallelFlat(n, pool) { r in
            var i = r.lowerBound
            while i + 8 <= r.upperBound {
                let g = ld8(dout + i)
                var x = ld8(da + i); x.addProduct(g, ld8(b + i)); st8(x, da + i)
                var y = ld8(db + i); y.addProduct(g, ld8(a + i)); st8(y, db + i)
                i += 8
            }
            while i < r.upperBound {
                da[i] = da[i].addingProduct(dout[i], b[i]); db[i] = db[i].addingProduct(dout[i], a[i]); i += 1
            }
        }
    }

    /// out = s · x.   x, out: [N]. `out` may alias `x`. (Backward: `axpy(s, dout, dx)`.)
    public static func scale(_ x: UnsafePointer<Float>, by s: Float, out: UnsafeMutablePointer<Float>,
                             count n: Int, pool: ThreadPool = .shared) throws(LKError) {
        try checkCount(n, "scale")
        parallelFlat(n, pool) { r in
            let sv = SIMD8<Float>(repeating: s)
            var i = r.lowerBound
            while i + 8 <= r.upperBound { st8(ld8(x + i) * sv, out + i); i += 8 }
            while i < r.upperBound { out[i] = x[i] * s; i += 1 }
        }
    }

    /// y += alpha · x (fused multiply-add).   x, y: [N]. Also the backward of `scale` and of `axpy` itself
    /// (dx += alpha · dy).
    public static func axpy(_ alpha: Float, _ x: UnsafePointer<Float>, _ y: UnsafeMutablePointer<Float>,
                            count n: Int, pool: ThreadPool = .shared) throws(LKError) {
        try checkCount(n, "axpy")
        parallelFlat(n, pool) { r in
            let av = SIMD8<Float>(repeating: alpha)
            var i = r.lowerBound
            while i + 8 <= r.upperBound { var v = ld8(y + i); v.addProduct(av, ld8(x + i)); st8(v, y + i); i += 8 }
            while i < r.upperBound { y[i] = y[i].addingProduct(alpha, x[i]); i += 1 }
        }
    }

    /// Residual add in place: residual += x.   residual, x: [N]. (Backward: the gradient of the residual
    /// stream flows unchanged to both branches, i.e. `dx += dresidual` with `addInPlace` again.)
    public static func addInPlace(_ residual: UnsafeMutablePointer<Float>, _ x: UnsafePointer<Float>,
                                  count n: Int, pool: ThreadPool = .shared) throws(LKError) {
        try add(residual, x, out: residual, count: n, pool: pool)
    }

    // MARK: Reductions (deterministic, f64 accumulation)

    /// Fixed chunk length of the reductions: chunk partials are summed in chunk order, so the result does
    /// not depend on the thread count.
    static let reduceChunk = 4096

    /// Σ a[i]·b[i] over [N], accumulated in Double (each product is exact in Double). Deterministic.
    public static func dot(_ a: UnsafePointer<Float>, _ b: UnsafePointer<Float>, count n: Int,
                           pool: ThreadPool = .shared) throws(LKError) -> Double {
        try checkCount(n, "dot")
        return chunkedSum(n, pool) { lo, hi in dotDouble(a + lo, b + lo, hi - lo) }
    }

    /// Σ x[i]² over [N], accumulated in Double. Deterministic (used for gradient norms).
    public static func sumOfSquares(_ x: UnsafePointer<Float>, count n: Int,
                                    pool: ThreadPool = .shared) throws(LKError) -> Double {
        try checkCount(n, "sumOfSquares")
        return chunkedSum(n, pool) { lo, hi in dotDouble(x + lo, x + lo, hi - lo) }
    }

    /// Σ x[i] over [N], accumulated in Double. Deterministic.
    public static func sum(_ x: UnsafePointer<Float>, count n: Int, pool: ThreadPool = .shared) throws(LKError) -> Double {
        try checkCount(n, "sum")
        return chunkedSum(n, pool) { lo, hi in
            var acc = SIMD8<Double>()
            var i = lo
            while i + 8 <= hi { acc += SIMD8<Double>(ld8(x + i)); i += 8 }
            var s = acc.sum()
            while i < hi { s += Double(x[i]); i += 1 }
            return s
        }
    }

    @inline(__always) static func dotDouble(_ a: UnsafePointer<Float>, _ b: UnsafePointer<Float>, _ n: Int) -> Double {
        var acc = SIMD8<Double>()
        var i = 0
        while i + 8 <= n {
            let x = SIMD8<Double>(ld8(a + i)), y = SIMD8<Double>(ld8(b + i))
            acc.addProduct(x, y)
            i += 8
        }
        var s = acc.sum()
        while i < n { s += Double(a[i]) * Double(b[i]); i += 1 }
        return s
    }

    static func chunkedSum(_ n: Int, _ pool: ThreadPool, _ chunkSum: (Int, Int) -> Double) -> Double {
        let c = reduceChunk
        let chunks = (n + c - 1) / c
        if chunks <= 1 { return n == 0 ? 0 : chunkSum(0, n) }
        var partial = [Double](repeating: 0, count: chunks)
        partial.withUnsafeMutableBufferPointer { pp in
            let p = pp.baseAddress!
            pool.run(maxTasks: tasks(n, pool, grain: 32_768)) { idx, cnt in
                for ch in partition(chunks, index: idx, count: cnt) {
                    p[ch] = chunkSum(ch * c, min(n, (ch + 1) * c))
                }
            }
        }
        var s = 0.0
        for v in partial { s += v }
        return s
    }
}
