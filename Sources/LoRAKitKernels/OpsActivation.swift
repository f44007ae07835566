import LoRAKitCore

/// Activations: SiLU, SwiGLU, GELU (see the shape legend in Ops.swift). All are elementwise over a flat
/// count N, split into 8-aligned contiguous ranges across threads; SIMD bodies and scalar tails use the
/// same `simdExp`, so results do not depend on where a range boundary falls.
#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// Which GELU: the tanh approximation of GPT-2 / llama.cpp (`gelu_pytorch_tanh`) or the exact erf form.
public enum GELUApproximation: Sendable, Equatable {
    case tanh
    case erf
}

@inline(__always) func sigmoid8(_ x: SIMD8<Float>) -> SIMD8<Float> {
    1 / (1 + simdExp(-x))
}
@inline(__always) func sigmoid1(_ x: Float) -> Float { sigmoid8(SIMD8(repeating: x))[0] }

let geluK0: Float = 0.7978845608028654   // sqrt(2/π)
let geluK1: Float = 0.044715

/// tanh(u) = 1 − 2/(exp(2u) + 1): exact limits ±1 for large |u|, absolute error ≈ 1e-7 near 0.
@inline(__always) func tanh8(_ u: SIMD8<Float>) -> SIMD8<Float> {
    1 - 2 / (simdExp(u + u) + 1)
}

extension Ops {
    // MARK: SiLU

    /// out = x · sigmoid(x).   x, out: [N] (out may alias x).
    public static func siluForward(_ x: UnsafePointer<Float>, out: UnsafeMutablePointer<Float>, count n: Int,
                                   pool: ThreadPool = .shared) throws(LKError) {
        try checkCount(n, "siluForward")
        parallelFlat(n, pool) { r in
            var i = r.lowerBound
            while i + 8 <= r.upperBound { let v = ld8(x + i); st8(v * sigmoid8(v), out + i); i += 8 }
            while i < r.upperBound { out[i] = x[i] * sigmoid1(x[i]); i += 1 }
        }
    }

    /// dx += dout · s · (1 + x · (1 − s)), s = sigmoid(x).   x, dout, dx: [N].
    public static func siluBackward(x: UnsafePointer<Float>, dout: UnsafePointer<Float>,
                                    dx: UnsafeMutablePointer<Float>, count n: Int,
                                    pool: ThreadPool = .shared) throws(LKError) {
        try checkCount(n, "siluBackward")
        parallelFlat(n, pool) { r in
            var i = r.lowerBound
            while i + 8 <= r.upperBound {
                let v = ld8(x + i), s = sigmoid8(v)
                var d = ld8(dx + i)
                d.addProduct(ld8(dout + i), s * (1 + v * (1 - s)))
                st8(d, dx + i)
                i += 8
            }
            while i < r.upperBound {
                let v = x[i], s = sigmoid1(v)
                dx[i] = dx[i].addingProduct(dout[i], s * (1 + v * (1 - s)))
                i += 1
            }
        }
    }

    // MARK: SwiGLU

    /// out = silu(gate) ⊙ up.   gate, up, out: [N] (out may alias gate or up).
    public static func swigluForward(gate: UnsafePointer<Float>, up: UnsafePointer<Float>,
                                     out: UnsafeMutablePointer<Float>, count n: Int,
                                     pool: ThreadPool = .shared) throws(LKError) {
        try checkCount(n, "swigluForward")
        parallelFlat(n, pool) { r in
            var i = r.lowerBound
            while i + 8 <= r.upperBound {
                let g = ld8(gate + i)
                st8(g * sigmoid8(g) * ld8(up + i), out + i)
                i += 8
            }
            while i < r.upperBound { out[i] = gate[i] * sigmoid1(gate[i]) * up[i]; i += 1 }
        }
    }

    /// dgate += dout ⊙ up ⊙ silu'(gate),  dup += dout ⊙ silu(gate).   gate, up, dout, dgate, dup: [N].
    /// With `accumulate: false` dgate and dup are overwritten (not read: they may hold garbage).
    public static func swigluBackward(gate: UnsafePointer<Float>, up: UnsafePointer<Float>,
                                      dout: UnsafePointer<Float>, dgate: UnsafeMutablePointer<Float>,
                                      dup: UnsafeMutablePointer<Float>, count n: Int, accumulate: Bool = true,
                                      pool: ThreadPool = .shared) throws(LKError) {
        try checkCount(n, "swigluBackward")
        parallelFlat(n, pool) { r in
            var i = r.lowerBound
            while i + 8 <= r.upperBound {
                let g = ld8(gate + i), s = sigmoid8(g), dy = ld8(dout + i)
                var dg = accumulate ? ld8(dgate + i) : SIMD8()
                dg.addProduct(dy * ld8(up + i), s * (1 + g * (1 - s)))
                st8(dg, dgate + i)
                var du = accumulate ? ld8(dup + i) : SIMD8()
                du.addProduct(dy, g * s)
                st8(du, dup + i)
                i += 8
            }
            while i < r.upperBound {
                let g = gate[i], s = sigmoid1(g), dy = dout[i]
                dgate[i] = (accumulate ? dgate[i] : 0).addingProduct(dy * up[i], s * (1 + g * (1 - s)))
                dup[i] = (accumulate ? dup[i] : 0).addingProduct(dy, g * s)
                i += 1
            }
        }
    }

    // MARK: GELU

    /// tanh: out = 0.5·x·(1 + tanh(√(2/π)·(x + 0.044715·x³))); erf: out = 0.5·x·(1 + erf(x/√2)).
    /// x, out: [N] (out may alias x). The erf variant is scalar (erf evaluated in Double).
    public static func geluForward(_ x: UnsafePointer<Float>, out: UnsafeMutablePointer<Float>, count n: Int,
                                   approximation: GELUApproximation = .tanh,
                                   pool: ThreadPool = .shared) throws(LKError) {
        try checkCount(n, "geluForward")
        switch approximation {
        case .tanh:
            parallelFlat(n, pool) { r in
                var i = r.lowerBound
                while i + 8 <= r.upperBound { st8(geluTanh8(ld8(x + i)), out + i); i += 8 }
                while i < r.upperBound { out[i] = geluTanh8(SIMD8(repeating: x[i]))[0]; i += 1 }
            }
        case .erf:
            parallelFlat(n, pool) { r in
                for i in r {
                    let v = Double(x[i])
                    out[i] = Float(0.5 * v * (1 + erf(v * 0.70710678118654752)))
                }
            }
        }
    }

    @inline(__always) static func geluTanh8(_ v: SIMD8<Float>) -> SIMD8<Float> {
        let u = geluK0 * (v + geluK1 * v * v * v)
        return 0.5 * v * (1 + tanh8(u))
    }

    @inline(__always) static func geluTanhGrad8(_ v: SIMD8<Float>) -> SIMD8<Float> {
        let v2 = v * v
        let u = geluK0 * (v + geluK1 * v2 * v)
        let t = tanh8(u)
        let du = geluK0 * (1 + 3 * geluK1 * v2)
        return 0.5 * (1 + t) + 0.5 * v * (1 - t * t) * du
    }

    /// dx += dout · gelu'(x).   x, dout, dx: [N].
    /// tanh: gelu' = ½(1 + t) + ½·x·(1 − t²)·√(2/π)(1 + 3·0.044715·x²); erf: ½(1 + erf(x/√2)) + x·φ(x).
    public static func geluBackward(x: UnsafePointer<Float>, dout: UnsafePointer<Float>,
                                    dx: UnsafeMutablePointer<Float>, count n: Int,
                                    approximation: GELUApproximation = .tanh,
                                    pool: ThreadPool = .shared) throws(LKError) {
        try checkCount(n, "geluBackward")
        switch approximation {
        case .tanh:
            parallelFlat(n, pool) { r in
                var i = r.lowerBound
                while i + 8 <= r.upperBound {
                    var d = ld8(dx + i)
                    d.addProduct(ld8(dout + i), geluTanhGrad8(ld8(x + i)))
                    st8(d, dx + i)
                    i += 8
                }
                while i < r.upperBound {
                    dx[i] = dx[i].addingProduct(dout[i], geluTanhGrad8(SIMD8(repeating: x[i]))[0])
                    i += 1
                }
            }
        case .erf:
            parallelFlat(n, pool) { r in
                for i in r {
                    let v = Double(x[i])
                    let g = 0.5 * (1 + erf(v * 0.70710678118654752)) + v * exp(-0.5 * v * v) * 0.39894228040143268
                    dx[i] = dx[i].addingProduct(dout[i], Float(g))
                }
            }
        }
    }
}
