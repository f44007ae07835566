import Testing
@testable import LoRAKitCore
@testable import LoRAKitKernels
@testable import LoRAKitFormats
@testable import LoRAKitTokenizer
@testable import LoRAKitTemplates
@testable import LoRAKitModel
@testable import LoRAKitTraining

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

    /// C = alpha·A·B + beta·C through `GEMM.multiply` on arrays.
    static func run(m: Int, n: Int, k: Int, alpha: Float = 1, a: [Float], rowStride: Int, b: (UnsafePointer<Float>) -> GEMMRight,
                    bValues: [Float], beta: Float = 0, c0: [Float]? = nil, pool: ThreadPool = .shared) throws -> [Float] {
        var c = c0 ?? [Float](repeating: .nan, count: m * n)
        try a.withUnsafeBufferPointer { ap in
            try bValues.withUnsafeBufferPointer { bp in
                try c.withUnsafeMutableBufferPointer { cp in
                    try GEMM.multiply(m: m, n: n, k: k, alpha: alpha, a: GEMMLeft(ap.baseAddress!, rowStride: rowStride),
                                      b: b(bp.baseAddress!), beta: beta, c: cp.baseAddress!, ldc: n, pool: pool)
                }
            }
        }
        return c
    }

    /// A weight W [n, k] stored in `dtype` and used transposed (B = Wᵀ) gives bitwise the product with
    /// B = Wᵀ given as f32 strided views of the dequantized values — both the transposed view of W and
    /// a materialised Wᵀ [k, n] — whatever the dtype, with partial panels (n not a multiple of NR), k not
    /// a multiple of KC or of the vector width, and a row count on either side of MC (one row block,
    /// packed panel by panel, or several). The packings are pure data movement (register transposes,
    /// in-register dequantization with `dequantize`'s arithmetic), so any difference is a bug.
    @Test(arguments: DType.allCases)
    func transposedWeightPackingIsExact(dtype: DType) throws {
        let ks = dtype.isQuantized ? [32, 96, 320, 608] : [5, 17, 32, 96, 320, 608]
        for k in ks {
            for (m, n) in [(1, 33), (7, 70), (13, 64), (GEMM.MC + 6, 97)] {
                let w = try Tensor(randomFloats(n * k, seed: UInt64(k * 31 + n)), shape: [n, k]).converted(to: dtype)
                let wDeq = w.toFloats()
                var wt = [Float](repeating: 0, count: k * n)
                for j in 0..<n { for p in 0..<k { wt[p * n + j] = wDeq[j * k + p] } }
                let a = randomFloats(m * k, seed: 21)
                let c0 = randomFloats(m * n, seed: 22)
                for (alpha, beta) in [(Float(1), Float(0)), (0.5, 1)] {
                    let quant = try Self.run(m: m, n: n, k: k, alpha: alpha, a: a, rowStride: k, b: { _ in
                        .weight(UnsafeRawPointer(w.rawPointer), dtype: dtype, rows: n, cols: k, transposed: true)
                    }, bValues: [0], beta: beta, c0: c0)
                    let view = try Self.run(m: m, n: n, k: k, alpha: alpha, a: a, rowStride: k,
                                            b: { .f32Transposed($0, ld: k) }, bValues: wDeq, beta: beta, c0: c0)
                    let plain = try Self.run(m: m, n: n, k: k, alpha: alpha, a: a, rowStride: k,
                                             b: { .f32($0, ld: n) }, bValues: wt, beta: beta, c0: c0)
                    #expect(quant == plain, "\(dtype) Wᵀ m=\(m) k=\(k) n=\(n) alpha=\(alpha) beta=\(beta)")
                    #expect(view == plain, "f32 view of \(dtype) Wᵀ m=\(m) k=\(k) n=\(n) alpha=\(alpha) beta=\(beta)")
                    let ref = referenceGEMM(m: m, n: n, k: k, alpha: alpha, a: { a[$0 * k + $1] }, b: { wt[$0 * n + $1] },
                                            beta: beta, c: c0)
                    #expect(closeness(quant, ref, rtol: 1e-5, atol: 1e-5 * Float(k).squareRoot()) <= 1,
                            "\(dtype) Wᵀ m=\(m) k=\(k) n=\(n) vs f64")
                }
            }
        }
    }

    /// Rows computed in one product or split into several (down to one row at a time) are bitwise
    /// equal, for every kind of B: a batch's loss must not depend on how it is split into products.
    @Test func rowSplitDoesNotChangeResults() throws {
        let (m, k, n) = (2 * GEMM.MC + 30, 320, 75)
        let nq = 96  // a multiple of 32 for a quantized W used as is
        let a = randomFloats(m * k, seed: 31)
        let bf = randomFloats(k * n, seed: 32)
        let wT = try Tensor(randomFloats(n * k, seed: 33), shape: [n, k]).converted(to: .q4_1)
        let wN = try Tensor(randomFloats(k * nq, seed: 34), shape: [k, nq]).converted(to: .q8_0)
        typealias Operand = (String, Int, (UnsafePointer<Float>) -> GEMMRight, [Float])
        let operands: [Operand] = [
            ("f32", n, { .f32($0, ld: n) }, bf),
            ("f32 transposed", n, { .f32Transposed($0, ld: k) }, bf),
            ("q4_1 Wᵀ", n, { _ in .weight(UnsafeRawPointer(wT.rawPointer), dtype: .q4_1, rows: n, cols: k, transposed: true) }, [0]),
            ("q8_0 W", nq, { _ in .weight(UnsafeRawPointer(wN.rawPointer), dtype: .q8_0, rows: k, cols: nq, transposed: false) }, [0]),
        ]
        for (name, cols, b, values) in operands {
            let whole = try Self.run(m: m, n: cols, k: k, alpha: 0.75, a: a, rowStride: k, b: b, bValues: values)
            for chunk in [1, 7, GEMM.MC, GEMM.MC + 1] {
                var split: [Float] = []
                var i0 = 0
                while i0 < m {
                    let rows = min(chunk, m - i0)
                    split += try Self.run(m: rows, n: cols, k: k, alpha: 0.75, a: Array(a[(i0 * k)..<((i0 + rows) * k)]),
                                          rowStride: k, b: b, bValues: values)
                    i0 += rows
                }
                #expect(split == whole, "\(name): rows in chunks of \(chunk)")
            }
        }
    }

    /// Weight operands (transposed and as is) give bitwise the same result on 1, 2 or 3 threads.
    @Test(arguments: [DType.q8_0, .q4_1, .f16])
    func weightThreadCountDoesNotChangeResults(dtype: DType) throws {
        let pools = [ThreadPool(threads: 1), ThreadPool(threads: 2), ThreadPool(threads: 3)]
        for (m, k, n) in [(64, 320, 1000), (300, 256, 200), (5, 96, 130)] {
            let w = try Tensor(randomFloats(n * k, seed: 41), shape: [n, k]).converted(to: dtype)
            let x = randomFloats(m * k, seed: 42)
            let dy = randomFloats(m * n, seed: 43)
            var fwd: [[Float]] = [], bwd: [[Float]] = []
            for pool in pools {
                fwd.append(try Self.run(m: m, n: n, k: k, a: x, rowStride: k, b: { _ in
                    .weight(UnsafeRawPointer(w.rawPointer), dtype: dtype, rows: n, cols: k, transposed: true) }, bValues: [0], pool: pool))
                bwd.append(try Self.run(m: m, n: k, k: n, a: dy, rowStride: n, b: { _ in
                    .weight(UnsafeRawPointer(w.rawPointer), dtype: dtype, rows: n, cols: k, transposed: false) }, bValues: [0], pool: pool))
            }
            #expect(fwd[0] == fwd[1] && fwd[0] == fwd[2], "\(dtype) Wᵀ m=\(m) k=\(k) n=\(n)")
            #expect(bwd[0] == bwd[1] && bwd[0] == bwd[2], "\(dtype) W m=\(m) k=\(n) n=\(k)")
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
