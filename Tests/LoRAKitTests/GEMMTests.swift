import Testing
@testable import LoRAKit

/// Slow, obvious reference: C = alpha·A·B + beta·C with f64 accumulation.
func referenceGEMM(m: Int, n: Int, k: Int, alpha: Float, a: (Int, Int) -> Float, b: (Int, Int) -> Float,
                   beta: Float, c: [Float]) -> [Float] {
    var out = c
    for i in 0..<m {
        for j in 0..<n {
            var acc = 0.0
            for p in 0..<k { acc += Double(a(i, p)) * Double(b(p, j)) }
            out[i * n + j] = Float(Double(alpha) * acc + (beta == 0 ? 0 : Double(beta) * Double(c[i * n + j])))
        }
    }
    return out
}

func randomFloats(_ n: Int, seed: UInt64, scale: Float = 1) -> [Float] {
    var rng = SplitMix64(seed: seed)
    return (0..<n).map { _ in (rng.nextFloat() * 2 - 1) * scale }
}

/// Max |x - y| / (|y| + atol) style check; returns the worst violation ratio (≤ 1 passes).
func closeness(_ x: [Float], _ y: [Float], rtol: Float, atol: Float) -> Float {
    precondition(x.count == y.count)
    var worst: Float = 0
    for i in 0..<x.count {
        let tol = atol + rtol * abs(y[i])
        let r = abs(x[i] - y[i]) / tol
        if !(r <= worst) { worst = r.isNaN ? .infinity : r }
    }
    return worst
}

@Suite struct GEMMTests {
    static let shapes: [(Int, Int, Int)] = [
        (1, 1, 1), (1, 16, 1), (7, 13, 5), (6, 32, 24), (13, 33, 17), (65, 96, 130), (100, 300, 70),
        (12, 257, 33), (200, 513, 45), (3, 1000, 7),
    ]

    @Test(arguments: shapes)
    func f32MatchesReference(shape: (Int, Int, Int)) throws {
        let (m, k, n) = shape
        let a = randomFloats(m * k, seed: 1)
        let b = randomFloats(k * n, seed: 2)
        let c0 = randomFloats(m * n, seed: 3)
        for (alpha, beta) in [(Float(1), Float(0)), (0.5, 1), (-2, 0.25)] {
            var c = c0
            try a.withUnsafeBufferPointer { ap in
                try b.withUnsafeBufferPointer { bp in
                    try c.withUnsafeMutableBufferPointer { cp in
                        try GEMM.multiply(m: m, n: n, k: k, alpha: alpha, a: GEMMLeft(ap.baseAddress!, rowStride: k),
                                          b: .f32(bp.baseAddress!, ld: n), beta: beta, c: cp.baseAddress!, ldc: n)
                    }
                }
            }
            let ref = referenceGEMM(m: m, n: n, k: k, alpha: alpha, a: { a[$0 * k + $1] }, b: { b[$0 * n + $1] },
                                    beta: beta, c: c0)
            let w = closeness(c, ref, rtol: 1e-5, atol: 1e-5 * Float(k).squareRoot())
            #expect(w <= 1, "m=\(m) k=\(k) n=\(n) alpha=\(alpha) beta=\(beta): worst \(w)")
        }
    }

    @Test(arguments: shapes)
    func transposedOperands(shape: (Int, Int, Int)) throws {
        let (m, k, n) = shape
        // A given as Aᵀ stored [k, m]; B given as Bᵀ stored [n, k].
        let at = randomFloats(k * m, seed: 4)
        let bt = randomFloats(n * k, seed: 5)
        var c = [Float](repeating: .nan, count: m * n)  // beta = 0 must not read C
        try at.withUnsafeBufferPointer { ap in
            try bt.withUnsafeBufferPointer { bp in
                try c.withUnsafeMutableBufferPointer { cp in
                    try GEMM.multiply(m: m, n: n, k: k, a: .transposed(ap.baseAddress!, ld: m),
                                      b: .f32Transposed(bp.baseAddress!, ld: k), c: cp.baseAddress!, ldc: n)
                }
            }
        }
        let ref = referenceGEMM(m: m, n: n, k: k, alpha: 1, a: { at[$1 * m + $0] }, b: { bt[$1 * k + $0] },
                                beta: 0, c: c)
        #expect(closeness(c, ref, rtol: 1e-5, atol: 1e-5 * Float(k).squareRoot()) <= 1)
    }

    /// Weights in every dtype, used transposed (X·Wᵀ) and as is (dY·W), against f64 on the dequantized values.
    @Test(arguments: DType.allCases)
    func weightOperands(dtype: DType) throws {
        for (m, k, n) in [(1, 64, 3), (7, 96, 33), (50, 320, 70), (13, 64, 290)] {
            // W [n, k] for the transposed use.
            let wVals = randomFloats(n * k, seed: 7)
            let w = try Tensor(wVals, shape: [n, k]).converted(to: dtype)
            let wDeq = w.toFloats()
            let x = randomFloats(m * k, seed: 8)
            var y = [Float](repeating: 0, count: m * n)
            try x.withUnsafeBufferPointer { xp in
                try y.withUnsafeMutableBufferPointer { yp in
                    try GEMM.multiply(m: m, n: n, k: k, a: GEMMLeft(xp.baseAddress!, rowStride: k),
                                      b: .weight(UnsafeRawPointer(w.rawPointer), dtype: dtype, rows: n, cols: k, transposed: true),
                                      c: yp.baseAddress!, ldc: n)
                }
            }
            let ref = referenceGEMM(m: m, n: n, k: k, alpha: 1, a: { x[$0 * k + $1] }, b: { wDeq[$1 * k + $0] }, beta: 0, c: y)
            #expect(closeness(y, ref, rtol: 1e-5, atol: 1e-5 * Float(k).squareRoot()) <= 1, "\(dtype) Wᵀ m=\(m) k=\(k) n=\(n)")

            // W [k2, n2] as is, n2 a multiple of the block size: dY [m, k2] · W.
            let (k2, n2) = (n, k)
            let dy = randomFloats(m * k2, seed: 9)
            var dx = [Float](repeating: 0, count: m * n2)
            try dy.withUnsafeBufferPointer { dp in
                try dx.withUnsafeMutableBufferPointer { xp in
                    try GEMM.multiply(m: m, n: n2, k: k2, a: GEMMLeft(dp.baseAddress!, rowStride: k2),
                                      b: .weight(UnsafeRawPointer(w.rawPointer), dtype: dtype, rows: k2, cols: n2, transposed: false),
                                      c: xp.baseAddress!, ldc: n2)
                }
            }
            let ref2 = referenceGEMM(m: m, n: n2, k: k2, alpha: 1, a: { dy[$0 * k2 + $1] }, b: { wDeq[$0 * n2 + $1] }, beta: 0, c: dx)
            #expect(closeness(dx, ref2, rtol: 1e-5, atol: 1e-5 * Float(k2).squareRoot()) <= 1, "\(dtype) W m=\(m) k=\(k2) n=\(n2)")
        }
    }

    /// Every element is reduced in the same order whatever the split: bitwise equal results.
    @Test func threadCountDoesNotChangeResults() throws {
        let pools = [ThreadPool(threads: 1), ThreadPool(threads: 2), ThreadPool(threads: 3)]
        for (m, k, n) in [(300, 600, 200), (40, 257, 1000), (500, 64, 40)] {
            let a = randomFloats(m * k, seed: 11)
            let b = randomFloats(k * n, seed: 12)
            var results: [[Float]] = []
            for pool in pools {
                var c = [Float](repeating: 0, count: m * n)
                try a.withUnsafeBufferPointer { ap in
                    try b.withUnsafeBufferPointer { bp in
                        try c.withUnsafeMutableBufferPointer { cp in
                            try GEMM.multiply(m: m, n: n, k: k, a: GEMMLeft(ap.baseAddress!, rowStride: k),
                                              b: .f32(bp.baseAddress!, ld: n), c: cp.baseAddress!, ldc: n, pool: pool)
                        }
                    }
                }
                results.append(c)
            }
            #expect(results[0] == results[1])
            #expect(results[0] == results[2])
        }
    }

    @Test func badArgumentsThrow() throws {
        var c = [Float](repeating: 0, count: 4)
        let a = [Float](repeating: 1, count: 4)
        try a.withUnsafeBufferPointer { ap in
            try c.withUnsafeMutableBufferPointer { cp in
                #expect(throws: LKError.self) {
                    try GEMM.multiply(m: -1, n: 2, k: 2, a: GEMMLeft(ap.baseAddress!, rowStride: 2),
                                      b: .f32(ap.baseAddress!, ld: 2), c: cp.baseAddress!, ldc: 2)
                }
                #expect(throws: LKError.self) {
                    try GEMM.multiply(m: 2, n: 2, k: 2, a: GEMMLeft(ap.baseAddress!, rowStride: 2),
                                      b: .f32(ap.baseAddress!, ld: 2), c: cp.baseAddress!, ldc: 1)
                }
                // Weight shape that does not give B [k, n].
                #expect(throws: LKError.self) {
                    try GEMM.multiply(m: 2, n: 2, k: 2, a: GEMMLeft(ap.baseAddress!, rowStride: 2),
                                      b: .weight(UnsafeRawPointer(ap.baseAddress!), dtype: .f32, rows: 1, cols: 4, transposed: true),
                                      c: cp.baseAddress!, ldc: 2)
                }
            }
        }
    }
}
