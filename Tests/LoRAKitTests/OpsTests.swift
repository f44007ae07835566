import Testing
@testable import LoRAKitCore
@testable import LoRAKitKernels
@testable import LoRAKitFormats
@testable import LoRAKitTokenizer
@testable import LoRAKitTemplates
@testable import LoRAKitModel
@testable import LoRAKitTraining
#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

// MARK: - Test helpers

/// A heap buffer of Floats with a stable pointer (freed on deinit).
final class FBuf {
    let p: UnsafeMutablePointer<Float>
    let n: Int
    init(_ n: Int, _ v: Float = 0) {
        self.n = n
        p = .allocate(capacity: max(n, 1))
        p.initialize(repeating: v, count: max(n, 1))
    }
    convenience init(_ a: [Float]) {
        self.init(a.count)
        for i in 0..<a.count { p[i] = a[i] }
    }
    var a: [Float] { Array(UnsafeBufferPointer(start: p, count: n)) }
    var d: [Double] { a.map(Double.init) }
    var bits: [UInt32] { a.map(\.bitPattern) }
    /// Element i as Double (cheap; `.d` copies the whole buffer).
    subscript(d i: Int) -> Double { Double(p[i]) }
    deinit { p.deallocate() }
}

final class IBuf {
    let p: UnsafeMutablePointer<Int32>
    let n: Int
    init(_ a: [Int32]) {
        n = a.count
        p = .allocate(capacity: max(n, 1))
        p.initialize(repeating: 0, count: max(n, 1))
        for i in 0..<n { p[i] = a[i] }
    }
    deinit { p.deallocate() }
}

func randn(_ n: Int, seed: UInt64, scale: Float = 1) -> [Float] {
    var g = SplitMix64(seed: seed)
    return (0..<n).map { _ in g.nextGaussian() * scale }
}

/// Largest violation of |a − b| ≤ atol + rtol·|b| (0 when all within tolerance).
@discardableResult
func expectClose(_ a: [Float], _ b: [Double], atol: Double, rtol: Double, _ what: String,
                 sourceLocation: SourceLocation = #_sourceLocation) -> Double {
    #expect(a.count == b.count, "\(what): count \(a.count) vs \(b.count)", sourceLocation: sourceLocation)
    var worst = 0.0, at = -1
    for i in 0..<min(a.count, b.count) {
        let err = abs(Double(a[i]) - b[i])
        let excess = err - (atol + rtol * abs(b[i]))
        if !(excess <= 0) && (excess > worst || excess.isNaN) { worst = excess.isNaN ? .infinity : excess; at = i }
    }
    #expect(at < 0, "\(what): index \(at) got \(at >= 0 ? a[at] : 0) expected \(at >= 0 ? b[at] : 0)",
            sourceLocation: sourceLocation)
    return worst
}

/// Central finite-difference gradient (Double) of a scalar function.
func fdGrad(_ x: [Double], h: Double = 1e-6, _ f: ([Double]) -> Double) -> [Double] {
    var g = [Double](repeating: 0, count: x.count)
    var xp = x
    for i in 0..<x.count {
        let step = h * max(1, abs(x[i]))
        xp[i] = x[i] + step
        let fp = f(xp)
        xp[i] = x[i] - step
        let fm = f(xp)
        xp[i] = x[i]
        g[i] = (fp - fm) / (2 * step)
    }
    return g
}

func dotD(_ a: [Double], _ b: [Double]) -> Double { zip(a, b).reduce(0) { $0 + $1.0 * $1.1 } }

/// Pools of 1, 2 and 3 participants, alive for the whole run. Only this (serialized) suite uses them.
/// (They are not created per test: destroying a pool right after creating it can crash in ThreadPool —
/// a worker that has not started yet reads its `unowned` pool after deinit.)
let testPools = [ThreadPool(threads: 1), ThreadPool(threads: 2), ThreadPool(threads: 3)]
func makePools() -> [ThreadPool] { testPools }

/// Run `body` on pools of 1, 2 and 3 threads and expect bitwise identical results.
func expectThreadInvariant(_ what: String, sourceLocation: SourceLocation = #_sourceLocation,
                           _ body: (ThreadPool) throws -> [[Float]]) rethrows {
    var ref: [[UInt32]]? = nil
    for pool in makePools() {
        let r = try body(pool).map { $0.map(\.bitPattern) }
        if let ref { #expect(r == ref, "\(what): \(pool.activeCount) threads differ from 1 thread", sourceLocation: sourceLocation) } else { ref = r }
    }
}

let oddSizes = [1, 7, 8, 33, 577]

enum ProcessInfoLite {
    static func env(_ name: String) -> String? { getenv(name).map { String(cString: $0) } }
}

// MARK: - Double references

func rmsNormRef(_ x: [Double], _ w: [Double], rows: Int, dim: Int, eps: Double) -> [Double] {
    var y = [Double](repeating: 0, count: rows * dim)
    for t in 0..<rows {
        var ss = 0.0
        for i in 0..<dim { ss += x[t * dim + i] * x[t * dim + i] }
        let r = 1 / (ss / Double(dim) + eps).squareRoot()
        for i in 0..<dim { y[t * dim + i] = x[t * dim + i] * r * w[i] }
    }
    return y
}

func softmaxRef(_ x: [Double], rows: Int, dim: Int, valid: [Int32]?) -> [Double] {
    var y = [Double](repeating: 0, count: rows * dim)
    for t in 0..<rows {
        let n = valid.map { Int($0[t]) } ?? dim
        if n == 0 { continue }
        let m = (0..<n).map { x[t * dim + $0] }.max()!
        var s = 0.0
        for i in 0..<n { s += exp(x[t * dim + i] - m) }
        for i in 0..<n { y[t * dim + i] = exp(x[t * dim + i] - m) / s }
    }
    return y
}

func lseRef(_ x: [Double], row t: Int, dim: Int) -> Double {
    let r = x[(t * dim)..<((t + 1) * dim)]
    let m = r.max()!
    return m + log(r.reduce(0) { $0 + exp($1 - m) })
}

/// RoPE in Double with HF's float32 frequencies (the documented choice); `inverse` rotates by −angle.
func ropeRef(_ x: [Double], rows: Int, heads: Int, D: Int, ld: Int, nRot: Int, base: Float, pos: [Int32],
             layout: RoPELayout, inverse: Bool = false) -> [Double] {
    var y = x
    let inv = (0..<(nRot / 2)).map { i in Float(1) / powf(base, Float(2 * i) / Float(nRot)) }
    for t in 0..<rows { for h in 0..<heads { for i in 0..<(nRot / 2) {
        let ang = Double(Float(pos[t]) * inv[i])
        let c = Double(Float(cos(ang))), s = Double(Float(sin(ang))) * (inverse ? -1 : 1)
        let (ia, ib) = layout == .neox ? (i, i + nRot / 2) : (2 * i, 2 * i + 1)
        let a = x[t * ld + h * D + ia], b = x[t * ld + h * D + ib]
        y[t * ld + h * D + ia] = a * c - b * s
        y[t * ld + h * D + ib] = a * s + b * c
    } } }
    return y
}

func attentionRef(q: [Double], k: [Double], v: [Double], T: Int, S: Int, H: Int, Hkv: Int, D: Int,
                  start: Int) -> (out: [Double], lse: [Double]) {
    var out = [Double](repeating: 0, count: T * H * D), lse = [Double](repeating: 0, count: T * H)
    let rep = H / Hkv, scale = 1 / Double(D).squareRoot()
    for t in 0..<T { for h in 0..<H {
        let g = h / rep, n = start + t + 1
        var s = [Double](repeating: 0, count: n)
        for j in 0..<n { for i in 0..<D { s[j] += q[t * H * D + h * D + i] * k[j * Hkv * D + g * D + i] }; s[j] *= scale }
        let m = s.max()!
        let z = s.reduce(0) { $0 + exp($1 - m) }
        lse[t * H + h] = m + log(z)
        for j in 0..<n { let p = exp(s[j] - m) / z
            for i in 0..<D { out[t * H * D + h * D + i] += p * v[j * Hkv * D + g * D + i] } }
    } }
    return (out, lse)
}

/// f64 gradients of Σ dy·attention(q, k, v) (same layout and causal rule as `attentionRef`).
func attentionBackwardRef(q: [Double], k: [Double], v: [Double], dy: [Double], T: Int, S: Int, H: Int, Hkv: Int,
                          D: Int, start: Int) -> (dq: [Double], dk: [Double], dv: [Double]) {
    var dq = [Double](repeating: 0, count: T * H * D), dk = [Double](repeating: 0, count: S * Hkv * D)
    var dv = dk
    let rep = H / Hkv, scale = 1 / Double(D).squareRoot()
    for t in 0..<T { for h in 0..<H {
        let g = h / rep, n = start + t + 1, qo = t * H * D + h * D
        var s = [Double](repeating: 0, count: n), dp = s
        for j in 0..<n { for i in 0..<D {
            s[j] += q[qo + i] * k[j * Hkv * D + g * D + i]; dp[j] += dy[qo + i] * v[j * Hkv * D + g * D + i] }
            s[j] *= scale }
        let m = s.max()!
        let z = s.reduce(0) { $0 + exp($1 - m) }
        let p = s.map { exp($0 - m) / z }
        let delta = zip(p, dp).reduce(0) { $0 + $1.0 * $1.1 }
        for j in 0..<n {
            let ds = p[j] * (dp[j] - delta) * scale, ko = j * Hkv * D + g * D
            for i in 0..<D {
                dq[qo + i] += ds * k[ko + i]; dk[ko + i] += ds * q[qo + i]; dv[ko + i] += p[j] * dy[qo + i]
            }
        }
    } }
    return (dq, dk, dv)
}

func siluD(_ x: Double) -> Double { x / (1 + exp(-x)) }
func geluTanhD(_ x: Double) -> Double { 0.5 * x * (1 + tanh(0.7978845608028654 * (x + 0.044715 * x * x * x))) }
func geluErfD(_ x: Double) -> Double { 0.5 * x * (1 + erf(x / 2.0.squareRoot())) }

// MARK: - Tests

@Suite(.serialized) struct OpsTests {
    // MARK: exp

    @Test func simdExpAccuracy() {
        var worst = 0.0
        var x: Float = -86.4
        while x < 88.7 {
            let v = SIMD8<Float>((0..<8).map { x + Float($0) * 0.0013 })
            let e = simdExp(v)
            for l in 0..<8 {
                let ref = exp(Double(v[l]))
                worst = max(worst, abs(Double(e[l]) - ref) / ref)
            }
            x += 0.0173
        }
        #expect(worst < 4e-7, "simdExp max relative error \(worst)")
        let sp = simdExp(SIMD8<Float>(0, 1, -1, 89, -90, .infinity, -.infinity, .nan))
        #expect(sp[0] == 1)
        #expect(abs(sp[1] - 2.7182817) <= 2.4e-7 * 3)
        #expect(sp[3] == .infinity && sp[5] == .infinity)
        #expect(sp[4] == 0 && sp[6] == 0)
        #expect(sp[7].isNaN)
    }

    // MARK: elementwise

    @Test func elementwiseForwardAndBackward() throws {
        let pool = testPools[1]
        for n in [0] + oddSizes + [40_001] {
            let a = FBuf(randn(n, seed: 1)), b = FBuf(randn(n, seed: 2)), out = FBuf(n)
            try Ops.add(a.p, b.p, out: out.p, count: n, pool: pool)
            #expect(out.a == zip(a.a, b.a).map { $0 + $1 })
            try Ops.mul(a.p, b.p, out: out.p, count: n, pool: pool)
            #expect(out.a == zip(a.a, b.a).map { $0 * $1 })
            try Ops.scale(a.p, by: -0.37, out: out.p, count: n, pool: pool)
            #expect(out.a == a.a.map { $0 * -0.37 })
            // axpy is a fused multiply-add: compare with the Double result (within 1 rounding).
            let y = FBuf(b.a)
            try Ops.axpy(1.7, a.p, y.p, count: n, pool: pool)
            expectClose(y.a, zip(a.d, b.d).map { 1.7 * $0 + $1 }, atol: 1e-6, rtol: 2e-7, "axpy n=\(n)")
            #expect(y.a == zip(a.a, b.a).map { $1.addingProduct(1.7, $0) })
            let r = FBuf(b.a)
            try Ops.addInPlace(r.p, a.p, count: n, pool: pool)
            #expect(r.a == zip(a.a, b.a).map { $1 + $0 })
            // Backward: accumulates into existing gradients.
            let dy = FBuf(randn(n, seed: 3)), da = FBuf(n, 0.5), db = FBuf(n, -0.25)
            try Ops.addBackward(dout: dy.p, da: da.p, db: db.p, count: n, pool: pool)
            #expect(da.a == dy.a.map { 0.5 + $0 } && db.a == dy.a.map { -0.25 + $0 })
            let da2 = FBuf(n, 0.5), db2 = FBuf(n, -0.25)
            try Ops.mulBackward(a: a.p, b: b.p, dout: dy.p, da: da2.p, db: db2.p, count: n, pool: pool)
            expectClose(da2.a, (0..<n).map { 0.5 + dy[d: $0] * b[d: $0] }, atol: 1e-6, rtol: 2e-7, "mul da n=\(n)")
            expectClose(db2.a, (0..<n).map { -0.25 + dy[d: $0] * a[d: $0] }, atol: 1e-6, rtol: 2e-7, "mul db n=\(n)")
        }
    }

    @Test func reductionsDoubleAccurateAndDeterministic() throws {
        for n in [0] + oddSizes + [4096, 4097, 100_003] {
            let a = FBuf(randn(n, seed: 11)), b = FBuf(randn(n, seed: 12))
            let refDot = dotD(a.d, b.d), refSS = dotD(a.d, a.d), refSum = a.d.reduce(0, +)
            let pool = testPools[1]
            let d = try Ops.dot(a.p, b.p, count: n, pool: pool)
            let ss = try Ops.sumOfSquares(a.p, count: n, pool: pool)
            let s = try Ops.sum(a.p, count: n, pool: pool)
            #expect(abs(d - refDot) <= 1e-12 * max(1, Double(n)), "dot n=\(n): \(d) vs \(refDot)")
            #expect(abs(ss - refSS) <= 1e-12 * max(1, refSS), "sumOfSquares n=\(n)")
            #expect(abs(s - refSum) <= 1e-12 * max(1, Double(n)), "sum n=\(n)")
            var results: [[Double]] = []
            for p in makePools() {
                results.append([try Ops.dot(a.p, b.p, count: n, pool: p), try Ops.sumOfSquares(a.p, count: n, pool: p),
                                try Ops.sum(a.p, count: n, pool: p)])
            }
            #expect(results[0].map(\.bitPattern) == results[1].map(\.bitPattern))
            #expect(results[0].map(\.bitPattern) == results[2].map(\.bitPattern))
        }
        // A sum where f32 accumulation would lose everything: 1e8 + many ones.
        var big = [Float](repeating: 1, count: 10_000); big[0] = 1e8
        let bb = FBuf(big)
        #expect(try Ops.sum(bb.p, count: big.count) == 1e8 + 9999)
    }

    // MARK: RMSNorm

    @Test func rmsNormForwardMatchesReference() throws {
        let pool = testPools[1]
        for (rows, dim) in [(1, 1), (3, 7), (2, 8), (5, 33), (4, 577), (1, 4096)] {
            let x = FBuf(randn(rows * dim, seed: UInt64(dim), scale: 3)), w = FBuf(randn(dim, seed: 99))
            let y = FBuf(rows * dim), rstd = FBuf(rows)
            try Ops.rmsNormForward(x: x.p, weight: w.p, out: y.p, rstd: rstd.p, rows: rows, dim: dim, eps: 1e-5, pool: pool)
            expectClose(y.a, rmsNormRef(x.d, w.d, rows: rows, dim: dim, eps: 1e-5), atol: 1e-6, rtol: 2e-6, "rmsNorm \(rows)x\(dim)")
            for t in 0..<rows {
                let ms = (0..<dim).reduce(0.0) { $0 + x[d: t * dim + $1] * x[d: t * dim + $1] } / Double(dim)
                #expect(abs(Double(rstd.p[t]) - 1 / (ms + 1e-5).squareRoot()) <= 1e-6 / (ms + 1e-5).squareRoot())
            }
            // In place (out aliases x) gives the same values.
            try Ops.rmsNormForward(x: x.p, weight: w.p, out: x.p, rstd: nil, rows: rows, dim: dim, eps: 1e-5, pool: pool)
            #expect(x.a == y.a)
        }
        // Known value: x = [3, 4] → rms = sqrt(12.5), y = x / sqrt(12.5).
        let x = FBuf([3, 4]), w = FBuf([1, 2]), y = FBuf(2)
        try Ops.rmsNormForward(x: x.p, weight: w.p, out: y.p, rstd: nil, rows: 1, dim: 2, eps: 0)
        #expect(abs(y.p[0] - Float(3 / 12.5.squareRoot())) < 1e-7 && abs(y.p[1] - Float(8 / 12.5.squareRoot())) < 1e-6)
    }

    @Test func rmsNormBackwardFiniteDifferencesAndThreads() throws {
        let pool = testPools[2]
        for (rows, dim) in [(1, 1), (3, 7), (2, 9), (4, 33)] {
            let x = FBuf(randn(rows * dim, seed: 5, scale: 2)), w = FBuf(randn(dim, seed: 6)), dy = FBuf(randn(rows * dim, seed: 7))
            let y = FBuf(rows * dim), rstd = FBuf(rows)
            try Ops.rmsNormForward(x: x.p, weight: w.p, out: y.p, rstd: rstd.p, rows: rows, dim: dim, eps: 1e-5, pool: pool)
            let dx = FBuf(rows * dim, 0.25), dw = FBuf(dim, -0.5)
            try Ops.rmsNormBackward(dout: dy.p, x: x.p, weight: w.p, rstd: rstd.p, dx: dx.p, dweight: dw.p,
                                    rows: rows, dim: dim, pool: pool)
            let gx = fdGrad(x.d) { dotD(dy.d, rmsNormRef($0, w.d, rows: rows, dim: dim, eps: 1e-5)) }
            let gw = fdGrad(w.d) { dotD(dy.d, rmsNormRef(x.d, $0, rows: rows, dim: dim, eps: 1e-5)) }
            expectClose(dx.a, gx.map { $0 + 0.25 }, atol: 2e-5, rtol: 1e-4, "rmsNorm dx \(rows)x\(dim)")
            expectClose(dw.a, gw.map { $0 - 0.5 }, atol: 2e-5, rtol: 1e-4, "rmsNorm dw \(rows)x\(dim)")
        }
        let (rows, dim) = (70, 577)
        let x = FBuf(randn(rows * dim, seed: 8)), w = FBuf(randn(dim, seed: 9)), dy = FBuf(randn(rows * dim, seed: 10))
        try expectThreadInvariant("rmsNorm") { p in
            let y = FBuf(rows * dim), rstd = FBuf(rows), dx = FBuf(rows * dim), dw = FBuf(dim)
            try Ops.rmsNormForward(x: x.p, weight: w.p, out: y.p, rstd: rstd.p, rows: rows, dim: dim, eps: 1e-6, pool: p)
            try Ops.rmsNormBackward(dout: dy.p, x: x.p, weight: w.p, rstd: rstd.p, dx: dx.p, dweight: dw.p, rows: rows, dim: dim, pool: p)
            return [y.a, rstd.a, dx.a, dw.a]
        }
        // Analytic reference for the large case: dweight = Σ_t dy·x·rstd in Double.
        let y = FBuf(rows * dim), rstd = FBuf(rows), dx = FBuf(rows * dim), dw = FBuf(dim)
        try Ops.rmsNormForward(x: x.p, weight: w.p, out: y.p, rstd: rstd.p, rows: rows, dim: dim, eps: 1e-6, pool: pool)
        try Ops.rmsNormBackward(dout: dy.p, x: x.p, weight: w.p, rstd: rstd.p, dx: dx.p, dweight: dw.p, rows: rows, dim: dim, pool: pool)
        let dwRef = (0..<dim).map { c in (0..<rows).reduce(0.0) { $0 + dy[d: $1 * dim + c] * x[d: $1 * dim + c] * Double(rstd.p[$1]) } }
        expectClose(dw.a, dwRef, atol: 1e-4, rtol: 1e-4, "rmsNorm dweight 70x577")
    }

    // MARK: softmax

    @Test func softmaxForwardBackward() throws {
        let pool = testPools[1]
        for (rows, dim) in [(1, 1), (3, 7), (2, 8), (5, 33), (3, 577)] {
            for masked in [false, true] {
                let x = FBuf(randn(rows * dim, seed: UInt64(dim) + 1, scale: 4))
                let valid: [Int32]? = masked ? (0..<rows).map { Int32(($0 * 5 + 1) % (dim + 1)) } : nil
                let vb = valid.map { IBuf($0) }
                let y = FBuf(rows * dim, .nan)
                try Ops.softmaxForward(x: x.p, out: y.p, rows: rows, dim: dim, validLengths: vb?.p, pool: pool)
                let ref = softmaxRef(x.d, rows: rows, dim: dim, valid: valid)
                expectClose(y.a, ref, atol: 1e-7, rtol: 2e-6, "softmax \(rows)x\(dim) masked=\(masked)")
                let dy = FBuf(randn(rows * dim, seed: 3))
                let dx = FBuf(rows * dim, 0.125)
                try Ops.softmaxBackward(y: y.p, dout: dy.p, dx: dx.p, rows: rows, dim: dim, validLengths: vb?.p, pool: pool)
                // Analytic reference in Double.
                var dref = [Double](repeating: 0.125, count: rows * dim)
                for t in 0..<rows {
                    let s = (0..<dim).reduce(0.0) { $0 + dy[d: t * dim + $1] * ref[t * dim + $1] }
                    for i in 0..<dim { dref[t * dim + i] += ref[t * dim + i] * (dy[d: t * dim + i] - s) }
                }
                expectClose(dx.a, dref, atol: 2e-6, rtol: 1e-5, "softmax backward \(rows)x\(dim)")
                if rows * dim <= 200 {
                    let g = fdGrad(x.d) { dotD(dy.d, softmaxRef($0, rows: rows, dim: dim, valid: valid)) }
                    expectClose(dx.a, g.map { $0 + 0.125 }, atol: 2e-5, rtol: 1e-4, "softmax FD \(rows)x\(dim)")
                }
            }
        }
        // Large logits do not overflow.
        let x = FBuf([1000, 1001, -1000]), y = FBuf(3)
        try Ops.softmaxForward(x: x.p, out: y.p, rows: 1, dim: 3, pool: pool)
        #expect(abs(y.p[1] - Float(1 / (1 + exp(-1.0)))) < 1e-6 && y.p[2] == 0)
        let (rows, dim) = (64, 1000)
        let xb = FBuf(randn(rows * dim, seed: 4, scale: 3)), dy = FBuf(randn(rows * dim, seed: 5))
        let vl = IBuf((0..<rows).map { Int32(dim - $0 * 7) })
        try expectThreadInvariant("softmax") { p in
            let y = FBuf(rows * dim), dx = FBuf(rows * dim)
            try Ops.softmaxForward(x: xb.p, out: y.p, rows: rows, dim: dim, validLengths: vl.p, pool: p)
            try Ops.softmaxBackward(y: y.p, dout: dy.p, dx: dx.p, rows: rows, dim: dim, validLengths: vl.p, pool: p)
            return [y.a, dx.a]
        }
    }

    // MARK: cross-entropy

    @Test func crossEntropyForwardBackwardChunked() throws {
        let pool = testPools[1]
        let ignore: Int32 = -100
        for (rows, V) in [(1, 1), (3, 7), (4, 33), (5, 577), (2, 1000)] {
            let logits = FBuf(randn(rows * V, seed: UInt64(V), scale: 3))
            let tg: [Int32] = (0..<rows).map { $0 == 1 ? ignore : Int32(($0 * 13 + 5) % V) }
            let targets = IBuf(tg)
            let losses = FBuf(rows), lse = FBuf(rows)
            try Ops.crossEntropyForward(logits: logits.p, rows: rows, vocab: V, targets: targets.p, ignoreIndex: ignore,
                                        losses: losses.p, lse: lse.p, pool: pool)
            let lseRefs = (0..<rows).map { lseRef(logits.d, row: $0, dim: V) }
            let lossRef = (0..<rows).map { tg[$0] == ignore ? 0 : lseRefs[$0] - logits[d: $0 * V + Int(tg[$0])] }
            expectClose(lse.a, lseRefs, atol: 1e-6, rtol: 1e-6, "CE lse \(rows)x\(V)")
            expectClose(losses.a, lossRef, atol: 2e-6, rtol: 1e-6, "CE loss \(rows)x\(V)")
            // Online over vocabulary chunks of 5 columns (ld = V): same losses.
            let m = FBuf(rows), s = FBuf(rows), tl = FBuf(rows), l2 = FBuf(rows), lse2 = FBuf(rows)
            try Ops.crossEntropyBegin(rows: rows, runningMax: m.p, runningSum: s.p, targetLogit: tl.p)
            var c0 = 0
            while c0 < V {
                let cols = min(5, V - c0)
                try Ops.crossEntropyChunk(logits: logits.p + c0, ld: V, rows: rows, cols: cols, vocabStart: c0,
                                          targets: targets.p, runningMax: m.p, runningSum: s.p, targetLogit: tl.p, pool: pool)
                c0 += cols
            }
            try Ops.crossEntropyFinish(rows: rows, vocab: V, targets: targets.p, ignoreIndex: ignore, runningMax: m.p,
                                       runningSum: s.p, targetLogit: tl.p, losses: l2.p, lse: lse2.p)
            expectClose(l2.a, lossRef, atol: 4e-6, rtol: 2e-6, "CE chunked loss \(rows)x\(V)")
            // Backward: analytic and finite differences of Σ scale·loss.
            let scale: Float = 0.37
            let dl = FBuf(rows * V, 0.5)
            try Ops.crossEntropyBackward(logits: logits.p, ld: V, lse: lse.p, targets: targets.p, ignoreIndex: ignore,
                                         scale: scale, dlogits: dl.p, ldd: V, rows: rows, cols: V, pool: pool)
            var dref = [Double](repeating: 0.5, count: rows * V)
            for t in 0..<rows where tg[t] != ignore {
                for i in 0..<V { dref[t * V + i] += Double(scale) * (exp(logits[d: t * V + i] - lseRefs[t]) - (i == Int(tg[t]) ? 1 : 0)) }
            }
            expectClose(dl.a, dref, atol: 1e-6, rtol: 1e-5, "CE dlogits \(rows)x\(V)")
            if rows * V <= 200 {
                let g = fdGrad(logits.d) { x in
                    (0..<rows).reduce(0.0) { acc, t in tg[t] == ignore ? acc : acc + Double(scale) * (lseRef(x, row: t, dim: V) - x[t * V + Int(tg[t])]) }
                }
                expectClose(dl.a, g.map { $0 + 0.5 }, atol: 2e-5, rtol: 1e-4, "CE FD \(rows)x\(V)")
            }
            // Backward over vocabulary chunks equals the full-row backward bit for bit.
            let dl2 = FBuf(rows * V, 0.5)
            c0 = 0
            while c0 < V {
                let cols = min(16, V - c0)
                try Ops.crossEntropyBackward(logits: logits.p + c0, ld: V, lse: lse.p, targets: targets.p, ignoreIndex: ignore,
                                             scale: scale, dlogits: dl2.p + c0, ldd: V, rows: rows, cols: cols,
                                             vocabStart: c0, pool: pool)
                c0 += cols
            }
            expectClose(dl2.a, dl.d, atol: 1e-7, rtol: 1e-6, "CE chunked dlogits")
            // In place: logits become the gradient (0 for ignored rows), losses match.
            let inplace = FBuf(logits.a), l3 = FBuf(rows)
            try Ops.crossEntropyBackwardInPlace(logits: inplace.p, rows: rows, vocab: V, targets: targets.p,
                                                ignoreIndex: ignore, scale: scale, losses: l3.p, pool: pool)
            #expect(l3.a == losses.a)
            expectClose(inplace.a, dref.map { $0 - 0.5 }, atol: 1e-6, rtol: 1e-5, "CE in place \(rows)x\(V)")
            // Unnormalised in place: rowScale · logits is the same gradient, losses match.
            let un = FBuf(logits.a), l4 = FBuf(rows), rs = FBuf(rows, .nan)
            try Ops.crossEntropyUnnormalizedBackwardInPlace(logits: un.p, rows: rows, vocab: V, targets: targets.p,
                                                            ignoreIndex: ignore, scale: scale, losses: l4.p,
                                                            rowScale: rs.p, pool: pool)
            #expect(l4.a == losses.a)
            let scaled = (0..<(rows * V)).map { Double(un.a[$0]) * Double(rs.a[$0 / V]) }
            expectClose(scaled.map { Float($0) }, dref.map { $0 - 0.5 }, atol: 1e-6, rtol: 1e-5, "CE unnormalised \(rows)x\(V)")
        }
        let (rows, V) = (40, 3001)
        let lg = FBuf(randn(rows * V, seed: 77, scale: 2)), tgt = IBuf((0..<rows).map { Int32($0 * 71 % V) })
        try expectThreadInvariant("cross-entropy") { p in
            let losses = FBuf(rows), lse = FBuf(rows), d = FBuf(rows * V), ip = FBuf(lg.a), l2 = FBuf(rows)
            try Ops.crossEntropyForward(logits: lg.p, rows: rows, vocab: V, targets: tgt.p, losses: losses.p, lse: lse.p, pool: p)
            try Ops.crossEntropyBackward(logits: lg.p, ld: V, lse: lse.p, targets: tgt.p, scale: 1 / Float(rows),
                                         dlogits: d.p, ldd: V, rows: rows, cols: V, pool: p)
            try Ops.crossEntropyBackwardInPlace(logits: ip.p, rows: rows, vocab: V, targets: tgt.p, scale: 1 / Float(rows),
                                                losses: l2.p, pool: p)
            let un = FBuf(lg.a), l3 = FBuf(rows), rs = FBuf(rows)
            try Ops.crossEntropyUnnormalizedBackwardInPlace(logits: un.p, rows: rows, vocab: V, targets: tgt.p,
                                                            scale: 1 / Float(rows), losses: l3.p, rowScale: rs.p, pool: p)
            return [losses.a, lse.a, d.a, ip.a, un.a, l3.a, rs.a]
        }
    }

    // MARK: RoPE

    @Test func ropeForwardBackwardBothLayouts() throws {
        let pool = testPools[1]
        let configs: [(rows: Int, heads: Int, D: Int, nRot: Int, extra: Int, base: Float)] = [
            (1, 1, 2, 2, 0, 10_000), (3, 2, 8, 8, 0, 10_000), (5, 3, 64, 64, 5, 500_000),
            (4, 2, 34, 18, 0, 100_000), (7, 1, 18, 16, 3, 10_000), (2, 4, 128, 128, 0, 1_000_000),
        ]
        for c in configs {
            for layout in [RoPELayout.interleaved, .neox] {
                let ld = c.heads * c.D + c.extra
                let x = FBuf(randn(c.rows * ld, seed: UInt64(c.D)))
                let pos = (0..<c.rows).map { Int32($0 * 37 + 3) }
                let pb = IBuf(pos)
                let y = FBuf(x.a)   // extra columns must stay untouched
                try Ops.ropeForward(x: x.p, out: y.p, rows: c.rows, heads: c.heads, headDim: c.D, ld: ld, nRot: c.nRot,
                                    base: c.base, positions: pb.p, layout: layout, pool: pool)
                let ref = ropeRef(x.d, rows: c.rows, heads: c.heads, D: c.D, ld: ld, nRot: c.nRot, base: c.base, pos: pos, layout: layout)
                expectClose(y.a, ref, atol: 1e-6, rtol: 1e-6, "rope \(layout) \(c)")
                // Pure-Double angles (pos·base^(−2i/nRot)) agree to float32 angle precision.
                var pure = x.d
                for t in 0..<c.rows { for h in 0..<c.heads { for i in 0..<(c.nRot / 2) {
                    let ang = Double(pos[t]) * pow(Double(c.base), -2 * Double(i) / Double(c.nRot))
                    let (ia, ib) = layout == .neox ? (i, i + c.nRot / 2) : (2 * i, 2 * i + 1)
                    let o = t * ld + h * c.D, a = x[d: o + ia], b = x[d: o + ib]
                    pure[o + ia] = a * cos(ang) - b * sin(ang); pure[o + ib] = a * sin(ang) + b * cos(ang)
                } } }
                expectClose(y.a, pure, atol: 3e-7 * Double(c.rows * 37) * 4, rtol: 0, "rope vs Double angles \(layout)")
                // In place gives the same result.
                let xi = FBuf(x.a)
                try Ops.ropeForward(x: xi.p, out: xi.p, rows: c.rows, heads: c.heads, headDim: c.D, ld: ld, nRot: c.nRot,
                                    base: c.base, positions: pb.p, layout: layout, pool: pool)
                #expect(xi.a == y.a)
                // Backward: accumulates Rᵀ·dy; check against the inverse rotation and the adjoint identity.
                let dy = FBuf(randn(c.rows * ld, seed: 21)), dx = FBuf(c.rows * ld, 0.5)
                try Ops.ropeBackward(dout: dy.p, dx: dx.p, rows: c.rows, heads: c.heads, headDim: c.D, ld: ld, nRot: c.nRot,
                                     base: c.base, positions: pb.p, layout: layout, pool: pool)
                var bref = ropeRef(dy.d, rows: c.rows, heads: c.heads, D: c.D, ld: ld, nRot: c.nRot, base: c.base, pos: pos,
                                   layout: layout, inverse: true).map { $0 + 0.5 }
                for t in 0..<c.rows { for j in (c.heads * c.D)..<ld { bref[t * ld + j] = 0.5 } }   // padding untouched
                expectClose(dx.a, bref, atol: 1e-6, rtol: 1e-6, "rope backward \(layout) \(c)")
                // A precomputed table (covering only some of the positions) gives the same bits, and the
                // overwriting backward equals the accumulating one into zeros (padding columns untouched).
                let table = try RoPETable(nRot: c.nRot, base: c.base, positions: Int(pos[c.rows / 2]) + 1)
                let yt = FBuf(x.a)
                try Ops.ropeForward(x: x.p, out: yt.p, rows: c.rows, heads: c.heads, headDim: c.D, ld: ld, nRot: c.nRot,
                                    base: c.base, positions: pb.p, layout: layout, table: table, pool: pool)
                #expect(yt.a == y.a, "rope with table \(layout) \(c)")
                let dz = FBuf(c.rows * ld, 0), dw = FBuf(c.rows * ld, .nan)
                for t in 0..<c.rows { for j in (c.heads * c.D)..<ld { dw.p[t * ld + j] = 0 } }
                try Ops.ropeBackward(dout: dy.p, dx: dz.p, rows: c.rows, heads: c.heads, headDim: c.D, ld: ld, nRot: c.nRot,
                                     base: c.base, positions: pb.p, layout: layout, pool: pool)
                try Ops.ropeBackward(dout: dy.p, dx: dw.p, rows: c.rows, heads: c.heads, headDim: c.D, ld: ld, nRot: c.nRot,
                                     base: c.base, positions: pb.p, layout: layout, accumulate: false, table: table,
                                     pool: pool)
                #expect(dw.a == dz.a, "rope backward overwrite/table \(layout) \(c)")
                var lhs = 0.0, rhs = 0.0
                for t in 0..<c.rows { for j in 0..<(c.heads * c.D) {
                    lhs += dy[d: t * ld + j] * ref[t * ld + j]; rhs += (Double(dx.a[t * ld + j]) - 0.5) * x[d: t * ld + j] } }
                #expect(abs(lhs - rhs) <= 1e-4 * max(1, abs(lhs)), "rope adjoint \(lhs) vs \(rhs)")
            }
        }
        // A table made for other rotation settings is refused.
        let wrong = try RoPETable(nRot: 4, base: 10_000, positions: 2)
        let xw = FBuf(8), yw = FBuf(8), pw = IBuf([0, 1])
        #expect(throws: LKError.self) {
            try Ops.ropeForward(x: xw.p, out: yw.p, rows: 2, heads: 1, headDim: 4, nRot: 4, base: 500_000, positions: pw.p,
                                layout: .neox, table: wrong, pool: pool)
        }
        // Known values: D = 2, pos = 1, θ = 1 rad: (1, 0) → (cos 1, sin 1); pos 0 is the identity.
        let x = FBuf([1, 0, 0.5, -2]), y = FBuf(4), pb = IBuf([1, 0])
        try Ops.ropeForward(x: x.p, out: y.p, rows: 2, heads: 1, headDim: 2, positions: pb.p, layout: .interleaved, pool: pool)
        #expect(y.a == [Float(cos(1.0)), Float(sin(1.0)), 0.5, -2])
        // neox and interleaved are the same map up to a permutation of dims.
        let D = 16, xs = randn(D, seed: 5), pp = IBuf([11])
        var perm = [Float](repeating: 0, count: D)
        for i in 0..<(D / 2) { perm[i] = xs[2 * i]; perm[D / 2 + i] = xs[2 * i + 1] }
        let a = FBuf(xs), b = FBuf(perm), ya = FBuf(D), yb = FBuf(D)
        try Ops.ropeForward(x: a.p, out: ya.p, rows: 1, heads: 1, headDim: D, positions: pp.p, layout: .interleaved, pool: pool)
        try Ops.ropeForward(x: b.p, out: yb.p, rows: 1, heads: 1, headDim: D, positions: pp.p, layout: .neox, pool: pool)
        for i in 0..<(D / 2) { #expect(ya.p[2 * i] == yb.p[i] && ya.p[2 * i + 1] == yb.p[D / 2 + i]) }
        let (rows, heads, hd) = (50, 8, 64)
        let xb = FBuf(randn(rows * heads * hd, seed: 3)), posb = IBuf((0..<rows).map { Int32($0 + 100) })
        for layout in [RoPELayout.interleaved, .neox] {
            try expectThreadInvariant("rope \(layout)") { p in
                let y = FBuf(rows * heads * hd), dx = FBuf(rows * heads * hd)
                try Ops.ropeForward(x: xb.p, out: y.p, rows: rows, heads: heads, headDim: hd, nRot: 48, base: 10_000,
                                    positions: posb.p, layout: layout, pool: p)
                try Ops.ropeBackward(dout: xb.p, dx: dx.p, rows: rows, heads: heads, headDim: hd, nRot: 48, base: 10_000,
                                     positions: posb.p, layout: layout, pool: p)
                return [y.a, dx.a]
            }
        }
    }

    // MARK: activations

    @Test func activationsForwardBackward() throws {
        let pool = testPools[1]
        for n in oddSizes + [40_003] {
            var xs = randn(n, seed: UInt64(n), scale: 4)
            if n >= 8 { xs[0] = 0; xs[1] = 30; xs[2] = -30; xs[3] = 100; xs[4] = -100; xs[5] = 1e-4 }
            let x = FBuf(xs), up = FBuf(randn(n, seed: 9)), dy = FBuf(randn(n, seed: 10)), out = FBuf(n)
            let xd = x.d
            // SiLU
            try Ops.siluForward(x.p, out: out.p, count: n, pool: pool)
            expectClose(out.a, xd.map(siluD), atol: 1e-6, rtol: 2e-6, "silu n=\(n)")
            let dx = FBuf(n, 0.5)
            try Ops.siluBackward(x: x.p, dout: dy.p, dx: dx.p, count: n, pool: pool)
            let siluGrad = xd.map { v -> Double in let s = 1 / (1 + exp(-v)); return s * (1 + v * (1 - s)) }
            expectClose(dx.a, (0..<n).map { 0.5 + dy[d: $0] * siluGrad[$0] }, atol: 2e-6, rtol: 4e-6, "silu' n=\(n)")
            // SwiGLU
            try Ops.swigluForward(gate: x.p, up: up.p, out: out.p, count: n, pool: pool)
            expectClose(out.a, (0..<n).map { siluD(xd[$0]) * up[d: $0] }, atol: 1e-6, rtol: 2e-6, "swiglu n=\(n)")
            let dg = FBuf(n, 0.5), du = FBuf(n, -1)
            try Ops.swigluBackward(gate: x.p, up: up.p, dout: dy.p, dgate: dg.p, dup: du.p, count: n, pool: pool)
            expectClose(dg.a, (0..<n).map { 0.5 + dy[d: $0] * up[d: $0] * siluGrad[$0] }, atol: 2e-6, rtol: 4e-6, "swiglu dgate n=\(n)")
            expectClose(du.a, (0..<n).map { -1 + dy[d: $0] * siluD(xd[$0]) }, atol: 2e-6, rtol: 4e-6, "swiglu dup n=\(n)")
            // Overwriting: what the buffers held (here NaN) is neither read nor kept.
            let og = FBuf(n, .nan), ou = FBuf(n, .nan)
            try Ops.swigluBackward(gate: x.p, up: up.p, dout: dy.p, dgate: og.p, dup: ou.p, count: n,
                                   accumulate: false, pool: pool)
            expectClose(og.a, (0..<n).map { dy[d: $0] * up[d: $0] * siluGrad[$0] }, atol: 2e-6, rtol: 4e-6, "swiglu dgate (overwrite) n=\(n)")
            expectClose(ou.a, (0..<n).map { dy[d: $0] * siluD(xd[$0]) }, atol: 2e-6, rtol: 4e-6, "swiglu dup (overwrite) n=\(n)")
            // GELU (both variants)
            for (mode, f) in [(GELUApproximation.tanh, geluTanhD), (.erf, geluErfD)] as [(GELUApproximation, (Double) -> Double)] {
                try Ops.geluForward(x.p, out: out.p, count: n, approximation: mode, pool: pool)
                expectClose(out.a, xd.map(f), atol: 2e-6, rtol: 2e-6, "gelu \(mode) n=\(n)")
                let gx = FBuf(n, 0.25)
                try Ops.geluBackward(x: x.p, dout: dy.p, dx: gx.p, count: n, approximation: mode, pool: pool)
                // Finite differences of the Double forward, per element.
                let fd = xd.map { v -> Double in let h = 1e-6 * max(1, abs(v)); return (f(v + h) - f(v - h)) / (2 * h) }
                expectClose(gx.a, (0..<n).map { 0.25 + dy[d: $0] * fd[$0] }, atol: 2e-5, rtol: 1e-4, "gelu' \(mode) n=\(n)")
            }
        }
        // SiLU/SwiGLU backward against finite differences too (small n).
        let n = 13
        let g = FBuf(randn(n, seed: 1, scale: 3)), u = FBuf(randn(n, seed: 2)), dy = FBuf(randn(n, seed: 3))
        let dg = FBuf(n), du = FBuf(n)
        try Ops.swigluBackward(gate: g.p, up: u.p, dout: dy.p, dgate: dg.p, dup: du.p, count: n, pool: pool)
        let fg = fdGrad(g.d) { gg in (0..<n).reduce(0.0) { $0 + dy[d: $1] * siluD(gg[$1]) * u[d: $1] } }
        let fu = fdGrad(u.d) { uu in (0..<n).reduce(0.0) { $0 + dy[d: $1] * siluD(g[d: $1]) * uu[$1] } }
        expectClose(dg.a, fg, atol: 2e-5, rtol: 1e-4, "swiglu FD gate")
        expectClose(du.a, fu, atol: 2e-5, rtol: 1e-4, "swiglu FD up")
        let N = 50_001
        let xb = FBuf(randn(N, seed: 4, scale: 3)), ub = FBuf(randn(N, seed: 5)), db = FBuf(randn(N, seed: 6))
        try expectThreadInvariant("activations") { p in
            let o1 = FBuf(N), o2 = FBuf(N), o3 = FBuf(N), d1 = FBuf(N), d2 = FBuf(N), d3 = FBuf(N), d4 = FBuf(N)
            try Ops.siluForward(xb.p, out: o1.p, count: N, pool: p)
            try Ops.swigluForward(gate: xb.p, up: ub.p, out: o2.p, count: N, pool: p)
            try Ops.geluForward(xb.p, out: o3.p, count: N, pool: p)
            try Ops.siluBackward(x: xb.p, dout: db.p, dx: d1.p, count: N, pool: p)
            try Ops.swigluBackward(gate: xb.p, up: ub.p, dout: db.p, dgate: d2.p, dup: d3.p, count: N, pool: p)
            try Ops.geluBackward(x: xb.p, dout: db.p, dx: d4.p, count: N, approximation: .erf, pool: p)
            return [o1.a, o2.a, o3.a, d1.a, d2.a, d3.a, d4.a]
        }
    }

    // MARK: embedding

    /// A random table of `vocab × dim` values in `dtype` plus its exact f32 values (decoded per the format).
    static func makeTable(_ dtype: DType, vocab: Int, dim: Int, seed: UInt64) -> ([UInt8], [Float]) {
        var g = SplitMix64(seed: seed)
        let rb = try! dtype.rowBytes(dim)
        var bytes = [UInt8](repeating: 0, count: vocab * rb)
        var vals = [Float](repeating: 0, count: vocab * dim)
        func put16(_ v: UInt16, _ o: Int) { bytes[o] = UInt8(v & 0xff); bytes[o + 1] = UInt8(v >> 8) }
        for r in 0..<vocab {
            let o = r * rb
            switch dtype {
            case .f32:
                for i in 0..<dim { let v = g.nextGaussian(); vals[r * dim + i] = v
                    let b = v.bitPattern; for k in 0..<4 { bytes[o + 4 * i + k] = UInt8((b >> (8 * UInt32(k))) & 0xff) } }
            case .f16:
                for i in 0..<dim { let h = floatToHalf(g.nextGaussian()); put16(h, o + 2 * i); vals[r * dim + i] = halfToFloat(h) }
            case .bf16:
                for i in 0..<dim { let h = floatToBF16(g.nextGaussian()); put16(h, o + 2 * i); vals[r * dim + i] = bf16ToFloat(h) }
            case .q8_0, .q4_0, .q4_1:
                for b in 0..<(dim / 32) {
                    let bo = o + b * dtype.blockBytes
                    let d = halfToFloat(floatToHalf(0.01 + g.nextFloat() * 0.1))
                    put16(floatToHalf(d), bo)
                    if dtype == .q8_0 {
                        for i in 0..<32 { let q = Int8(truncatingIfNeeded: g.next()); bytes[bo + 2 + i] = UInt8(bitPattern: q)
                            vals[r * dim + b * 32 + i] = d * Float(q) }
                    } else {
                        let m = halfToFloat(floatToHalf(g.nextGaussian()))
                        let qo = dtype == .q4_1 ? 4 : 2
                        if dtype == .q4_1 { put16(floatToHalf(m), bo + 2) }
                        for i in 0..<16 {
                            let byte = UInt8(truncatingIfNeeded: g.next()); bytes[bo + qo + i] = byte
                            let lo = Float(byte & 0xf), hi = Float(byte >> 4)
                            vals[r * dim + b * 32 + i] = dtype == .q4_1 ? d * lo + m : d * (lo - 8)
                            vals[r * dim + b * 32 + 16 + i] = dtype == .q4_1 ? d * hi + m : d * (hi - 8)
                        }
                    }
                }
            }
        }
        return (bytes, vals)
    }

    @Test func embeddingAllDTypesAndBackward() throws {
        let pool = testPools[1]
        for dtype in DType.allCases {
            for dim in (dtype.isQuantized ? [32, 96, 576] : [1, 7, 33, 577]) {
                let vocab = 11
                let (bytes, vals) = Self.makeTable(dtype, vocab: vocab, dim: dim, seed: UInt64(dim))
                let ids: [Int32] = [3, 0, 10, 3, 7]
                let ib = IBuf(ids), out = FBuf(ids.count * dim, .nan)
                try bytes.withUnsafeBytes { tb in
                    try Ops.embeddingForward(table: tb.baseAddress!, dtype: dtype, vocab: vocab, dim: dim, ids: ib.p,
                                             rows: ids.count, out: out.p, pool: pool)
                }
                var ref: [Float] = []
                for id in ids { ref += vals[(Int(id) * dim)..<(Int(id) * dim + dim)] }
                #expect(out.a == ref, "embedding \(dtype) dim=\(dim)")
                // Out-of-range id: throws with the id and vocabulary size.
                let bad = IBuf([1, Int32(vocab)])
                do {
                    try bytes.withUnsafeBytes { tb in
                        try Ops.embeddingForward(table: tb.baseAddress!, dtype: dtype, vocab: vocab, dim: dim, ids: bad.p,
                                                 rows: 2, out: out.p, pool: pool)
                    }
                    Issue.record("embedding with id \(vocab) did not throw")
                } catch {
                    let m = (error as? LKError)?.message ?? ""
                    #expect(m.contains("token id \(vocab)") && m.contains("vocabulary of \(vocab)"), "\(m)")
                }
            }
        }
        // Quantized row length must be a multiple of the block size.
        let tb = [UInt8](repeating: 0, count: 1024), ib = IBuf([0]), out = FBuf(64)
        #expect(throws: LKError.self) {
            try tb.withUnsafeBytes { p in
                try Ops.embeddingForward(table: p.baseAddress!, dtype: .q4_0, vocab: 2, dim: 40, ids: ib.p, rows: 1, out: out.p)
            }
        }
        #expect(throws: LKError.self) {
            let neg = IBuf([-1])
            try tb.withUnsafeBytes { p in
                try Ops.embeddingForward(table: p.baseAddress!, dtype: .f32, vocab: 2, dim: 4, ids: neg.p, rows: 1, out: out.p)
            }
        }
        // Backward: scatter-add with repeated ids, against a Double reference; thread invariant.
        for (rows, dim, vocab) in [(1, 1, 1), (6, 7, 3), (9, 33, 5), (200, 577, 17)] {
            let ids = (0..<rows).map { Int32(($0 * 7 + $0 / 3) % vocab) }
            let ib = IBuf(ids), dy = FBuf(randn(rows * dim, seed: 8))
            let base = randn(vocab * dim, seed: 9)
            let dt = FBuf(base)
            try Ops.embeddingBackward(dout: dy.p, ids: ib.p, rows: rows, dtable: dt.p, vocab: vocab, dim: dim, pool: pool)
            var ref = base.map(Double.init)
            for t in 0..<rows { for c in 0..<dim { ref[Int(ids[t]) * dim + c] += dy[d: t * dim + c] } }
            expectClose(dt.a, ref, atol: 1e-5, rtol: 1e-6, "embedding backward \(rows)x\(dim)")
            try expectThreadInvariant("embedding backward") { p in
                let d = FBuf(base)
                try Ops.embeddingBackward(dout: dy.p, ids: ib.p, rows: rows, dtable: d.p, vocab: vocab, dim: dim, pool: p)
                return [d.a]
            }
        }
        let bad = IBuf([0, 5]), dy = FBuf(8), dt = FBuf(20)
        #expect(throws: LKError.self) { try Ops.embeddingBackward(dout: dy.p, ids: bad.p, rows: 2, dtable: dt.p, vocab: 5, dim: 4) }
    }

    // MARK: attention

    @Test func attentionForwardMatchesReference() throws {
        let pool = testPools[1]
        let configs: [(T: Int, S: Int, H: Int, Hkv: Int, D: Int, start: Int)] = [
            (1, 1, 1, 1, 1, 0), (7, 7, 4, 2, 8, 0), (5, 12, 6, 3, 33, 4), (1, 40, 8, 2, 64, 39),   // decode
            (33, 33, 2, 1, 16, 0), (3, 20, 4, 4, 7, 10),                                          // S > start + T
        ]
        for c in configs {
            let q = FBuf(randn(c.T * c.H * c.D, seed: 1)), k = FBuf(randn(c.S * c.Hkv * c.D, seed: 2))
            let v = FBuf(randn(c.S * c.Hkv * c.D, seed: 3))
            let out = FBuf(c.T * c.H * c.D, .nan), lse = FBuf(c.T * c.H)
            try Ops.attentionForward(q: q.p, k: k.p, v: v.p, out: out.p, lse: lse.p, rows: c.T, keys: c.S, heads: c.H,
                                     kvHeads: c.Hkv, headDim: c.D, startPos: c.start, pool: pool)
            let ref = attentionRef(q: q.d, k: k.d, v: v.d, T: c.T, S: c.S, H: c.H, Hkv: c.Hkv, D: c.D, start: c.start)
            expectClose(out.a, ref.out, atol: 2e-6, rtol: 2e-5, "attention \(c)")
            expectClose(lse.a, ref.lse, atol: 2e-6, rtol: 2e-6, "attention lse \(c)")
        }
        // Decode row by row with a growing cache equals the full causal prefill.
        let (T, H, Hkv, D) = (6, 4, 2, 16)
        let q = FBuf(randn(T * H * D, seed: 4)), k = FBuf(randn(T * Hkv * D, seed: 5)), v = FBuf(randn(T * Hkv * D, seed: 6))
        let full = FBuf(T * H * D)
        try Ops.attentionForward(q: q.p, k: k.p, v: v.p, out: full.p, lse: nil, rows: T, keys: T, heads: H, kvHeads: Hkv,
                                 headDim: D, startPos: 0, pool: pool)
        for t in 0..<T {
            let o = FBuf(H * D)
            try Ops.attentionForward(q: q.p + t * H * D, k: k.p, v: v.p, out: o.p, lse: nil, rows: 1, keys: t + 1,
                                     heads: H, kvHeads: Hkv, headDim: D, startPos: t, pool: pool)
            #expect(o.a == Array(full.a[(t * H * D)..<((t + 1) * H * D)]), "decode row \(t)")
        }
    }

    @Test func attentionBackwardFiniteDifferences() throws {
        let pool = testPools[2]
        let configs: [(T: Int, S: Int, H: Int, Hkv: Int, D: Int, start: Int)] = [
            (1, 1, 1, 1, 1, 0), (3, 3, 2, 1, 5, 0), (3, 5, 4, 2, 9, 2), (2, 6, 2, 2, 8, 1), (4, 7, 3, 1, 3, 3),
        ]
        for c in configs {
            let nq = c.T * c.H * c.D, nk = c.S * c.Hkv * c.D
            let q = FBuf(randn(nq, seed: 11)), k = FBuf(randn(nk, seed: 12)), v = FBuf(randn(nk, seed: 13))
            let dy = FBuf(randn(nq, seed: 14))
            let out = FBuf(nq), lse = FBuf(c.T * c.H)
            try Ops.attentionForward(q: q.p, k: k.p, v: v.p, out: out.p, lse: lse.p, rows: c.T, keys: c.S, heads: c.H,
                                     kvHeads: c.Hkv, headDim: c.D, startPos: c.start, pool: pool)
            let dq = FBuf(nq, 0.5), dk = FBuf(nk, -0.5), dv = FBuf(nk, 0.25)
            try Ops.attentionBackward(q: q.p, k: k.p, v: v.p, out: out.p, dout: dy.p, lse: lse.p, dq: dq.p, dk: dk.p, dv: dv.p,
                                      rows: c.T, keys: c.S, heads: c.H, kvHeads: c.Hkv, headDim: c.D, startPos: c.start, pool: pool)
            let all = q.d + k.d + v.d
            let g = fdGrad(all) { p in
                let r = attentionRef(q: Array(p[0..<nq]), k: Array(p[nq..<(nq + nk)]), v: Array(p[(nq + nk)...]),
                                     T: c.T, S: c.S, H: c.H, Hkv: c.Hkv, D: c.D, start: c.start)
                return dotD(dy.d, r.out)
            }
            expectClose(dq.a, g[0..<nq].map { $0 + 0.5 }, atol: 3e-5, rtol: 1e-4, "attention dq \(c)")
            expectClose(dk.a, g[nq..<(nq + nk)].map { $0 - 0.5 }, atol: 3e-5, rtol: 1e-4, "attention dk \(c)")
            expectClose(dv.a, g[(nq + nk)...].map { $0 + 0.25 }, atol: 3e-5, rtol: 1e-4, "attention dv \(c)")
            // Keys past startPos + T − 1 are attended by nobody: their gradient stays as it was.
            for j in (c.start + c.T)..<c.S { for i in 0..<(c.Hkv * c.D) {
                #expect(dk.p[j * c.Hkv * c.D + i] == -0.5 && dv.p[j * c.Hkv * c.D + i] == 0.25) } }
        }
    }

    @Test func attentionThreadInvariant() throws {
        let (T, S, H, Hkv, D, start) = (37, 45, 8, 2, 64, 8)
        let q = FBuf(randn(T * H * D, seed: 1)), k = FBuf(randn(S * Hkv * D, seed: 2)), v = FBuf(randn(S * Hkv * D, seed: 3))
        let dy = FBuf(randn(T * H * D, seed: 4))
        try expectThreadInvariant("attention") { p in
            let out = FBuf(T * H * D), lse = FBuf(T * H), dq = FBuf(T * H * D), dk = FBuf(S * Hkv * D), dv = FBuf(S * Hkv * D)
            try Ops.attentionForward(q: q.p, k: k.p, v: v.p, out: out.p, lse: lse.p, rows: T, keys: S, heads: H, kvHeads: Hkv,
                                     headDim: D, startPos: start, pool: p)
            try Ops.attentionBackward(q: q.p, k: k.p, v: v.p, out: out.p, dout: dy.p, lse: lse.p, dq: dq.p, dk: dk.p, dv: dv.p,
                                      rows: T, keys: S, heads: H, kvHeads: Hkv, headDim: D, startPos: start, pool: p)
            return [out.a, lse.a, dq.a, dk.a, dv.a]
        }
    }

    /// Packed sequences of `lengths` with `gap` unused rows before each; returns the (offset, length) list and N.
    static func packed(_ lengths: [Int], gap: Int) -> (seqs: [(offset: Int, length: Int)], rows: Int) {
        var seqs: [(offset: Int, length: Int)] = [], n = 0
        for l in lengths { n += gap; seqs.append((n, l)); n += l }
        return (seqs, n)
    }

    @Test func attentionBatchedMatchesReference() throws {
        let pool = testPools[2]
        // Lengths: 1, not multiples of the block (4·MR), several blocks, a zero-length sequence.
        let br = Ops.attentionBlockRows
        let configs: [(lengths: [Int], H: Int, Hkv: Int, D: Int)] = [
            ([1, 2 * br + 5, 17, 0, br, br + 1], 6, 2, 16), ([9, 1, 40], 9, 3, 64), ([3, 7], 2, 2, 5),
        ]
        for c in configs {
            let (seqs, N) = OpsTests.packed(c.lengths, gap: 2)
            let qd = c.H * c.D, kd = c.Hkv * c.D
            let q = FBuf(randn(N * qd, seed: 21)), k = FBuf(randn(N * kd, seed: 22)), v = FBuf(randn(N * kd, seed: 23))
            let dy = FBuf(randn(N * qd, seed: 24))
            // Rows outside the sequences must stay untouched; rows inside are overwritten (NaN before).
            let sentinel: Float = 7.5
            let out = FBuf(N * qd, sentinel), lse = FBuf(N * c.H, sentinel)
            let dq = FBuf(N * qd, sentinel), dk = FBuf(N * kd, sentinel), dv = FBuf(N * kd, sentinel)
            for (o, l) in seqs {
                for i in (o * qd)..<((o + l) * qd) { out.p[i] = .nan; dq.p[i] = .nan }
                for i in (o * kd)..<((o + l) * kd) { dk.p[i] = .nan; dv.p[i] = .nan }
            }
            try Ops.attentionForward(q: q.p, k: k.p, v: v.p, out: out.p, lse: lse.p, sequences: seqs, heads: c.H,
                                     kvHeads: c.Hkv, headDim: c.D, pool: pool)
            try Ops.attentionBackward(q: q.p, k: k.p, v: v.p, out: out.p, dout: dy.p, lse: lse.p, dq: dq.p, dk: dk.p,
                                      dv: dv.p, sequences: seqs, heads: c.H, kvHeads: c.Hkv, headDim: c.D, pool: pool)
            var covered = [Bool](repeating: false, count: N)
            for (o, T) in seqs {
                for t in o..<(o + T) { covered[t] = true }
                if T == 0 { continue }
                func slice(_ b: FBuf, _ w: Int) -> [Double] { (0..<(T * w)).map { b[d: o * w + $0] } }
                let ref = attentionRef(q: slice(q, qd), k: slice(k, kd), v: slice(v, kd), T: T, S: T, H: c.H,
                                       Hkv: c.Hkv, D: c.D, start: 0)
                let g = attentionBackwardRef(q: slice(q, qd), k: slice(k, kd), v: slice(v, kd), dy: slice(dy, qd),
                                             T: T, S: T, H: c.H, Hkv: c.Hkv, D: c.D, start: 0)
                func got(_ b: FBuf, _ w: Int) -> [Float] { Array(b.a[(o * w)..<((o + T) * w)]) }
                let what = "batched \(c.lengths) H \(c.H)/\(c.Hkv) D \(c.D) seq at \(o) length \(T)"
                expectClose(got(out, qd), ref.out, atol: 2e-6, rtol: 2e-5, what + " out")
                expectClose(got(lse, c.H), ref.lse, atol: 2e-6, rtol: 2e-6, what + " lse")
                expectClose(got(dq, qd), g.dq, atol: 2e-5, rtol: 1e-4, what + " dq")
                expectClose(got(dk, kd), g.dk, atol: 2e-5, rtol: 1e-4, what + " dk")
                expectClose(got(dv, kd), g.dv, atol: 2e-5, rtol: 1e-4, what + " dv")
            }
            for t in 0..<N where !covered[t] {
                #expect(out.a[(t * qd)..<((t + 1) * qd)].allSatisfy { $0 == sentinel } && lse.p[t * c.H] == sentinel
                        && dq.p[t * qd] == sentinel && dk.p[t * kd] == sentinel && dv.p[t * kd + kd - 1] == sentinel,
                        "row \(t) outside the sequences was written")
            }
        }
        // The f64 reference gradient itself agrees with finite differences.
        let (T, H, Hkv, D, start) = (3, 4, 2, 3, 2)
        let nq = T * H * D, nk = (start + T) * Hkv * D
        let q = randn(nq, seed: 31).map(Double.init), k = randn(nk, seed: 32).map(Double.init)
        let v = randn(nk, seed: 33).map(Double.init), dy = randn(nq, seed: 34).map(Double.init)
        let g = attentionBackwardRef(q: q, k: k, v: v, dy: dy, T: T, S: start + T, H: H, Hkv: Hkv, D: D, start: start)
        let fd = fdGrad(q + k + v) { p in
            dotD(dy, attentionRef(q: Array(p[0..<nq]), k: Array(p[nq..<(nq + nk)]), v: Array(p[(nq + nk)...]), T: T,
                                  S: start + T, H: H, Hkv: Hkv, D: D, start: start).out)
        }
        expectClose((g.dq + g.dk + g.dv).map(Float.init), fd, atol: 1e-6, rtol: 1e-6, "attentionBackwardRef vs FD")
    }

    @Test func attentionBlockedPerSequenceMatchesReference() throws {
        // Per-sequence calls from attentionBlockedMinRows rows on take the blocked path, also with startPos > 0
        // and keys past the last row (the backward accumulates and leaves those keys alone).
        let pool = testPools[1]
        let (T, S, H, Hkv, D, start) = (Ops.attentionBlockRows + 3, Ops.attentionBlockRows + 9, 4, 2, 16, 5)
        #expect(T >= Ops.attentionBlockedMinRows)
        let nq = T * H * D, nk = S * Hkv * D
        let q = FBuf(randn(nq, seed: 41)), k = FBuf(randn(nk, seed: 42)), v = FBuf(randn(nk, seed: 43))
        let dy = FBuf(randn(nq, seed: 44))
        let out = FBuf(nq, .nan), lse = FBuf(T * H)
        try Ops.attentionForward(q: q.p, k: k.p, v: v.p, out: out.p, lse: lse.p, rows: T, keys: S, heads: H,
                                 kvHeads: Hkv, headDim: D, startPos: start, pool: pool)
        let ref = attentionRef(q: q.d, k: k.d, v: v.d, T: T, S: S, H: H, Hkv: Hkv, D: D, start: start)
        expectClose(out.a, ref.out, atol: 2e-6, rtol: 2e-5, "blocked prefill out")
        expectClose(lse.a, ref.lse, atol: 2e-6, rtol: 2e-6, "blocked prefill lse")
        let dq = FBuf(nq, 0.5), dk = FBuf(nk, -0.5), dv = FBuf(nk, 0.25)
        try Ops.attentionBackward(q: q.p, k: k.p, v: v.p, out: out.p, dout: dy.p, lse: lse.p, dq: dq.p, dk: dk.p, dv: dv.p,
                                  rows: T, keys: S, heads: H, kvHeads: Hkv, headDim: D, startPos: start, pool: pool)
        let g = attentionBackwardRef(q: q.d, k: k.d, v: v.d, dy: dy.d, T: T, S: S, H: H, Hkv: Hkv, D: D, start: start)
        expectClose(dq.a, g.dq.map { $0 + 0.5 }, atol: 2e-5, rtol: 1e-4, "blocked dq")
        expectClose(dk.a, g.dk.map { $0 - 0.5 }, atol: 2e-5, rtol: 1e-4, "blocked dk")
        expectClose(dv.a, g.dv.map { $0 + 0.25 }, atol: 2e-5, rtol: 1e-4, "blocked dv")
        // The blocked prefill agrees with row-by-row decode (the row-wise kernel) to rounding.
        for t in [0, T / 2, T - 1] {
            let o = FBuf(H * D)
            try Ops.attentionForward(q: q.p + t * H * D, k: k.p, v: v.p, out: o.p, lse: nil, rows: 1, keys: start + t + 1,
                                     heads: H, kvHeads: Hkv, headDim: D, startPos: start + t, pool: pool)
            expectClose(o.a, out.d[(t * H * D)..<((t + 1) * H * D)].map { $0 }, atol: 1e-6, rtol: 1e-5, "decode row \(t)")
        }
    }

    @Test func attentionBatchedEqualsPerSequenceAndThreadInvariant() throws {
        let br = Ops.attentionBlockRows
        let (H, Hkv, D) = (9, 3, 64)
        let (seqs, N) = OpsTests.packed([br + 7, 1, 2 * br, 13, 3 * br - 1], gap: 0)
        let qd = H * D, kd = Hkv * D
        let q = FBuf(randn(N * qd, seed: 51)), k = FBuf(randn(N * kd, seed: 52)), v = FBuf(randn(N * kd, seed: 53))
        let dy = FBuf(randn(N * qd, seed: 54))
        var results: [[Float]] = []
        try expectThreadInvariant("batched attention") { p in
            let out = FBuf(N * qd), lse = FBuf(N * H), dq = FBuf(N * qd, .nan), dk = FBuf(N * kd, .nan), dv = FBuf(N * kd, .nan)
            try Ops.attentionForward(q: q.p, k: k.p, v: v.p, out: out.p, lse: lse.p, sequences: seqs, heads: H,
                                     kvHeads: Hkv, headDim: D, pool: p)
            try Ops.attentionBackward(q: q.p, k: k.p, v: v.p, out: out.p, dout: dy.p, lse: lse.p, dq: dq.p, dk: dk.p,
                                      dv: dv.p, sequences: seqs, heads: H, kvHeads: Hkv, headDim: D, pool: p)
            results = [out.a, lse.a, dq.a, dk.a, dv.a]
            return results
        }
        // Per-sequence calls (zeroed gradients, accumulating) give the same values.
        let out = FBuf(N * qd), lse = FBuf(N * H), dq = FBuf(N * qd), dk = FBuf(N * kd), dv = FBuf(N * kd)
        for (o, T) in seqs {
            try Ops.attentionForward(q: q.p + o * qd, k: k.p + o * kd, v: v.p + o * kd, out: out.p + o * qd,
                                     lse: lse.p + o * H, rows: T, keys: T, heads: H, kvHeads: Hkv, headDim: D,
                                     startPos: 0, pool: testPools[1])
            try Ops.attentionBackward(q: q.p + o * qd, k: k.p + o * kd, v: v.p + o * kd, out: out.p + o * qd,
                                      dout: dy.p + o * qd, lse: lse.p + o * H, dq: dq.p + o * qd, dk: dk.p + o * kd,
                                      dv: dv.p + o * kd, rows: T, keys: T, heads: H, kvHeads: Hkv, headDim: D,
                                      startPos: 0, pool: testPools[1])
        }
        for (i, (name, b)) in [("out", out), ("lse", lse), ("dq", dq), ("dk", dk), ("dv", dv)].enumerated() {
            expectClose(results[i], b.d, atol: 1e-6, rtol: 1e-5, "batched vs per-sequence \(name)")
        }
    }

    @Test func attentionBatchedInvalidArguments() throws {
        let a = FBuf(256), b = FBuf(256), c = FBuf(256)
        #expect(throws: LKError.self) {
            try Ops.attentionForward(q: a.p, k: b.p, v: b.p, out: c.p, lse: nil, sequences: [(0, 4), (3, 2)], heads: 2,
                                     kvHeads: 1, headDim: 4)
        }
        #expect(throws: LKError.self) {
            try Ops.attentionForward(q: a.p, k: b.p, v: b.p, out: c.p, lse: nil, sequences: [(0, -1)], heads: 2,
                                     kvHeads: 1, headDim: 4)
        }
        #expect(throws: LKError.self) {
            try Ops.attentionBackward(q: a.p, k: b.p, v: b.p, out: c.p, dout: c.p, lse: c.p, dq: a.p, dk: b.p, dv: b.p,
                                      sequences: [(0, 2)], heads: 3, kvHeads: 2, headDim: 4)
        }
        // Empty and adjacent (in any order) sequences are fine.
        try Ops.attentionForward(q: a.p, k: b.p, v: b.p, out: c.p, lse: nil, sequences: [], heads: 2, kvHeads: 1, headDim: 4)
        try Ops.attentionForward(q: a.p, k: b.p, v: b.p, out: c.p, lse: nil, sequences: [(3, 2), (0, 3), (1, 0)], heads: 2,
                                 kvHeads: 1, headDim: 4)
    }

    /// Old (row-wise, one call per sequence) vs blocked batched attention for a training batch of
    /// SmolLM2-135M (4 × 128 rows, H 9 / Hkv 3, D 64): interleaved repetitions, medians, GFLOP/s counting
    /// the causal half (forward 2 products, backward 5, of T²/2·D·2 flops per head).
    @Test(.enabled(if: ProcessInfoLite.env("LORAKIT_ATTN_BENCH") != nil)) func attentionBlockedBench() throws {
        let nSeq = Int(ProcessInfoLite.env("LORAKIT_ATTN_SEQS") ?? "") ?? 4
        let T = Int(ProcessInfoLite.env("LORAKIT_ATTN_T") ?? "") ?? 128
        let reps = Int(ProcessInfoLite.env("LORAKIT_ATTN_REPS") ?? "") ?? 15
        let (H, Hkv, D) = (9, 3, 64)
        let N = nSeq * T, qd = H * D, kd = Hkv * D
        let seqs = (0..<nSeq).map { (offset: $0 * T, length: T) }
        let spans = seqs.map { Ops.AttentionSpan(qRow: $0.offset, kRow: $0.offset, rows: $0.length, start: 0) }
        let q = FBuf(randn(N * qd, seed: 1, scale: 0.5)), k = FBuf(randn(N * kd, seed: 2, scale: 0.5))
        let v = FBuf(randn(N * kd, seed: 3)), dy = FBuf(randn(N * qd, seed: 4))
        let out = FBuf(N * qd), lse = FBuf(N * H), dq = FBuf(N * qd), dk = FBuf(N * kd), dv = FBuf(N * kd)
        let sc = 1 / Float(D).squareRoot()
        let unit = Double(nSeq) * Double(T * T) * Double(D) * Double(H)  // one causal product
        func now() -> Double { var ts = timespec(); clock_gettime(CLOCK_MONOTONIC, &ts); return Double(ts.tv_sec) + Double(ts.tv_nsec) * 1e-9 }
        let mr = GEMM.MR
        var variants: [(String, Double, (ThreadPool) -> Void)] = [
            ("fwd old", 2, { p in for (o, t) in seqs {
                Ops.attentionForwardRowwise(q: q.p + o * qd, k: k.p + o * kd, v: v.p + o * kd, out: out.p + o * qd,
                                            lse: lse.p + o * H, rows: t, keys: t, heads: H, kvHeads: Hkv, headDim: D,
                                            startPos: 0, scale: sc, pool: p) } }),
            ("bwd old", 5, { p in
                dq.p.update(repeating: 0, count: N * qd); dk.p.update(repeating: 0, count: N * kd)
                dv.p.update(repeating: 0, count: N * kd)
                for (o, t) in seqs {
                    Ops.attentionBackwardRowwise(q: q.p + o * qd, k: k.p + o * kd, v: v.p + o * kd, out: out.p + o * qd,
                                                 dout: dy.p + o * qd, lse: lse.p + o * H, dq: dq.p + o * qd,
                                                 dk: dk.p + o * kd, dv: dv.p + o * kd, rows: t, keys: t, heads: H,
                                                 kvHeads: Hkv, headDim: D, startPos: 0, scale: sc, pool: p) } }),
        ]
        for br in [2 * mr, 4 * mr, 8 * mr] {
            variants.append(("fwd Br=\(br)", 2, { p in
                Ops.attentionForwardBlocked(q: q.p, k: k.p, v: v.p, out: out.p, lse: lse.p, spans: spans, heads: H,
                                            kvHeads: Hkv, headDim: D, scale: sc, blockRows: br, pool: p) }))
            variants.append(("bwd Br=\(br)", 5, { p in
                Ops.attentionBackwardBlocked(q: q.p, k: k.p, v: v.p, out: out.p, dout: dy.p, lse: lse.p, dq: dq.p,
                                             dk: dk.p, dv: dv.p, spans: spans, heads: H, kvHeads: Hkv, headDim: D,
                                             scale: sc, accumulate: false, blockRows: br, pool: p) }))
        }
        for pool in testPools.prefix(2) {
            var times = [[Double]](repeating: [], count: variants.count)
            for _ in 0..<reps {
                for (i, vt) in variants.enumerated() {
                    let t0 = now(); vt.2(pool); times[i].append(now() - t0)
                }
            }
            for (i, vt) in variants.enumerated() {
                let m = times[i].sorted()[times[i].count / 2]
                print("attn bench \(nSeq)x\(T) threads \(pool.activeCount) \(vt.0): \((m * 1e6).rounded() / 1e3) ms, \((vt.1 * unit / m / 1e8).rounded() / 10) GFLOP/s")
            }
        }
    }

    // MARK: speed (opt-in: LORAKIT_PERF=1, meaningful with -c release)

    @Test(.enabled(if: ProcessInfoLite.env("LORAKIT_PERF") != nil)) func perfReport() throws {
        let pool = testPools[1]
        func time(_ what: String, reps: Int = 3, _ body: () throws -> Void) rethrows {
            try body()
            var ts = timespec(); clock_gettime(CLOCK_MONOTONIC, &ts)
            let t0 = Double(ts.tv_sec) + Double(ts.tv_nsec) * 1e-9
            for _ in 0..<reps { try body() }
            clock_gettime(CLOCK_MONOTONIC, &ts)
            let dt = (Double(ts.tv_sec) + Double(ts.tv_nsec) * 1e-9 - t0) / Double(reps)
            print("perf \(what): \(dt * 1e3) ms")
        }
        let (T, H, Hkv, D) = (512, 32, 8, 128)
        let q = FBuf(randn(T * H * D, seed: 1)), k = FBuf(randn(T * Hkv * D, seed: 2)), v = FBuf(randn(T * Hkv * D, seed: 3))
        let o = FBuf(T * H * D), lse = FBuf(T * H), dq = FBuf(T * H * D), dk = FBuf(T * Hkv * D), dv = FBuf(T * Hkv * D)
        try time("attention fwd T=512 H=32/8 D=128") {
            try Ops.attentionForward(q: q.p, k: k.p, v: v.p, out: o.p, lse: lse.p, rows: T, keys: T, heads: H, kvHeads: Hkv,
                                     headDim: D, startPos: 0, pool: pool)
        }
        try time("attention bwd T=512 H=32/8 D=128", reps: 1) {
            try Ops.attentionBackward(q: q.p, k: k.p, v: v.p, out: o.p, dout: q.p, lse: lse.p, dq: dq.p, dk: dk.p, dv: dv.p,
                                      rows: T, keys: T, heads: H, kvHeads: Hkv, headDim: D, startPos: 0, pool: pool)
        }
        try time("attention decode S=512 H=32/8 D=128", reps: 50) {
            try Ops.attentionForward(q: q.p, k: k.p, v: v.p, out: o.p, lse: nil, rows: 1, keys: T, heads: H, kvHeads: Hkv,
                                     headDim: D, startPos: T - 1, pool: pool)
        }
        let V = 32_000, R = 64
        let logits = FBuf(randn(R * V, seed: 4)), tg = IBuf((0..<R).map { Int32($0 * 97) }), losses = FBuf(R)
        try time("cross-entropy in place 64x32000") {
            try Ops.crossEntropyBackwardInPlace(logits: logits.p, rows: R, vocab: V, targets: tg.p, scale: 1, losses: losses.p, pool: pool)
        }
        let x = FBuf(randn(T * 4096, seed: 5)), w = FBuf(4096, 1), y = FBuf(T * 4096), rs = FBuf(T), dx = FBuf(T * 4096), dw = FBuf(4096)
        try time("rmsNorm fwd+bwd 512x4096") {
            try Ops.rmsNormForward(x: x.p, weight: w.p, out: y.p, rstd: rs.p, rows: T, dim: 4096, eps: 1e-5, pool: pool)
            try Ops.rmsNormBackward(dout: x.p, x: x.p, weight: w.p, rstd: rs.p, dx: dx.p, dweight: dw.p, rows: T, dim: 4096, pool: pool)
        }
        try time("swiglu fwd+bwd 512x4096") {
            try Ops.swigluForward(gate: x.p, up: x.p, out: y.p, count: T * 4096, pool: pool)
            try Ops.swigluBackward(gate: x.p, up: x.p, dout: x.p, dgate: dx.p, dup: y.p, count: T * 4096, pool: pool)
        }
        let pos = IBuf((0..<T).map { Int32($0) })
        try time("rope fwd 512 x 32 heads x 128") {
            try Ops.ropeForward(x: q.p, out: o.p, rows: T, heads: H, headDim: D, positions: pos.p, layout: .neox, pool: pool)
        }
    }

    // MARK: invalid arguments

    @Test func invalidArgumentsThrow() throws {
        let a = FBuf(64), b = FBuf(64), c = FBuf(64)
        let ids = IBuf([0, 1, 2, 3])
        #expect(throws: LKError.self) { try Ops.add(a.p, b.p, out: c.p, count: -1) }
        #expect(throws: LKError.self) { try Ops.siluForward(a.p, out: c.p, count: -3) }
        #expect(throws: LKError.self) { _ = try Ops.dot(a.p, b.p, count: -1) }
        #expect(throws: LKError.self) {
            try Ops.rmsNormForward(x: a.p, weight: b.p, out: c.p, rstd: nil, rows: 2, dim: 4, eps: -1)
        }
        #expect(throws: LKError.self) {
            try Ops.rmsNormForward(x: a.p, weight: b.p, out: c.p, rstd: nil, rows: -2, dim: 4, eps: 1e-5)
        }
        let tooLong = IBuf([3, 9])
        #expect(throws: LKError.self) { try Ops.softmaxForward(x: a.p, out: c.p, rows: 2, dim: 8, validLengths: tooLong.p) }
        let badTarget = IBuf([1, 8])
        do {
            try Ops.crossEntropyForward(logits: a.p, rows: 2, vocab: 8, targets: badTarget.p, losses: b.p, lse: nil)
            Issue.record("cross-entropy with target 8 of 8 did not throw")
        } catch { #expect(error.message.contains("8")) }
        let ignored = IBuf([1, -100])
        try Ops.crossEntropyForward(logits: a.p, rows: 2, vocab: 8, targets: ignored.p, losses: b.p, lse: nil)
        #expect(b.p[1] == 0)
        #expect(throws: LKError.self) {
            try Ops.ropeForward(x: a.p, out: c.p, rows: 1, heads: 1, headDim: 8, nRot: 5, positions: ids.p, layout: .neox)
        }
        #expect(throws: LKError.self) {
            try Ops.ropeForward(x: a.p, out: c.p, rows: 1, heads: 1, headDim: 8, nRot: 10, positions: ids.p, layout: .neox)
        }
        #expect(throws: LKError.self) {
            try Ops.ropeForward(x: a.p, out: c.p, rows: 1, heads: 1, headDim: 8, base: 0, positions: ids.p, layout: .interleaved)
        }
        let negPos = IBuf([-1])
        #expect(throws: LKError.self) {
            try Ops.ropeBackward(dout: a.p, dx: c.p, rows: 1, heads: 1, headDim: 8, positions: negPos.p, layout: .interleaved)
        }
        #expect(throws: LKError.self) {
            try Ops.attentionForward(q: a.p, k: b.p, v: b.p, out: c.p, lse: nil, rows: 1, keys: 4, heads: 3, kvHeads: 2,
                                     headDim: 4, startPos: 0)
        }
        #expect(throws: LKError.self) {
            try Ops.attentionForward(q: a.p, k: b.p, v: b.p, out: c.p, lse: nil, rows: 2, keys: 4, heads: 2, kvHeads: 1,
                                     headDim: 4, startPos: 3)
        }
        #expect(throws: LKError.self) {
            try Ops.attentionBackward(q: a.p, k: b.p, v: b.p, out: c.p, dout: c.p, lse: c.p, dq: a.p, dk: b.p, dv: b.p,
                                      rows: 1, keys: 1, heads: 1, kvHeads: 1, headDim: 0, startPos: 0)
        }
        #expect(throws: LKError.self) {
            try Ops.crossEntropyChunk(logits: a.p, ld: 4, rows: 2, cols: 8, vocabStart: 0, targets: ids.p,
                                      runningMax: b.p, runningSum: c.p, targetLogit: c.p)
        }
        // Zero sizes are valid no-ops.
        try Ops.add(a.p, b.p, out: c.p, count: 0)
        try Ops.softmaxForward(x: a.p, out: c.p, rows: 0, dim: 8)
        try Ops.crossEntropyBackwardInPlace(logits: a.p, rows: 0, vocab: 8, targets: ids.p, scale: 1, losses: b.p)
        try Ops.rmsNormBackward(dout: a.p, x: a.p, weight: a.p, rstd: a.p, dx: b.p, dweight: c.p, rows: 0, dim: 8)
        try Ops.ropeForward(x: a.p, out: c.p, rows: 0, heads: 2, headDim: 8, positions: ids.p, layout: .neox)
        #expect(try Ops.sumOfSquares(a.p, count: 0) == 0)
        try Ops.attentionForward(q: a.p, k: b.p, v: b.p, out: c.p, lse: nil, rows: 0, keys: 0, heads: 2, kvHeads: 1,
                                 headDim: 4, startPos: 0)
    }
}
