import Testing
@testable import LoRAKitCore
@testable import LoRAKitKernels
@testable import LoRAKitFormats
@testable import LoRAKitTokenizer
@testable import LoRAKitTemplates
@testable import LoRAKitModel
@testable import LoRAKitTraining

private func randomValues(_ n: Int, seed: UInt64, scale: Float = 1) -> [Float] {
    var rng = SplitMix64(seed: seed)
    return (0..<n).map { _ in (rng.nextFloat() * 2 - 1) * scale }
}

/// A weight [out, in] in `dtype` made from random values (rows with different magnitudes and offsets).
private func makeWeight(out: Int, in n: Int, dtype: DType, seed: UInt64) throws -> Tensor {
    var v = randomValues(out * n, seed: seed)
    for o in 0..<out {
        let s = Float(1 + o % 7) * 0.3, off = Float(o % 3) * 0.2
        for i in 0..<n { v[o * n + i] = v[o * n + i] * s + off }
    }
    return try Tensor.quantized(v, shape: [out, n], dtype: dtype)
}

/// f64 reference on the dequantized weights, and the error bound for one output.
///
/// Bound, quantized weights. The kernel computes `Σ_b (d_b·dx_b · Σ_{i∈b} q_i·qx_i + m_b·xs_b)` with
/// `xs_b = dx_b·Σ qx_i` (q4_0: m = −8d): in exact arithmetic that is `Σ_i w_i·x̂_i`, the product of the
/// dequantized weights with the dequantized activations `x̂_i = dx_b·qx_i`. Two error sources:
/// 1. Quantizing x: `dx_b = max|x_b| / 127` and `qx_i = round(x_i / dx_b)`, so `|x_i − x̂_i| ≤ dx_b / 2`
///    (plus f32 rounding of `x_i / dx_b`, below 2⁻²³·127 relative), and
///    `|Σ_i w_i·x_i − Σ_i w_i·x̂_i| ≤ Σ_b (max|x_b| / 254) · Σ_{i∈b} |w_i|` (times 1.001 for that rounding).
/// 2. f32 rounding: the integer sums are exact; per block pair one `d·dx` product, one FMA per lane,
///    `m·xs` (with `xs` itself rounded) and one add, then 3 + 2 adds to finish: a relative error of at
///    most `(pairs + 8)·2⁻²⁴` of `M = Σ_b |d_b·dx_b|·Σ|q_i·qx_i| + |m_b·xs_b|`, and since `|d·q_i| ≤ |w_i|
///    + |m|`, `|m| ≤ max_b|w|` and `|x̂_i| ≤ |x_i| + max|x_b|/254`: `M ≤ Σ_i (|w_i| + 2·max_b|w|)·|x̂_i|`.
///    The bound below uses `(blocks + 8)·2⁻²³·M` (twice that, for slack).
/// With `.int16` activations the same holds with 16256 levels: `|x_i − x̂_i| ≤ max|x_b| / 32512` (the
/// integer lanes stay exact: 8·128·16256 < 2²⁴).
/// Plain weights: `x` is not quantized; the f32 FMA chains of length `in/16` give `(in/16 + 8)·2⁻²³·Σ|w·x|`.
private func reference(_ w: Tensor, _ x: [Float], _ activations: ActivationQuantization = .int8) -> (y: [Double], tol: [Double]) {
    let halfStep: Double = activations == .int8 ? 254 : 32512
    let out = w.shape[0], n = w.shape[1]
    let wf = w.toFloats()
    var y = [Double](repeating: 0, count: out), tol = y
    let bs = w.dtype.blockSize
    for o in 0..<out {
        var s = 0.0, m = 0.0, q = 0.0
        for b in 0..<(n / bs) {
            let r = (o * n + b * bs)..<(o * n + (b + 1) * bs)
            let amax = w.dtype.isQuantized ? wf[r].map { Double(abs($0)) }.max()! : 0
            let xmax = w.dtype.isQuantized ? r.map { Double(abs(x[$0 - o * n])) }.max()! : 0
            for i in r {
                let xi = Double(x[i - o * n])
                s += Double(wf[i]) * xi
                m += (Double(abs(wf[i])) + 2 * amax) * (abs(xi) + xmax / halfStep)
                q += xmax / halfStep * Double(abs(wf[i]))
            }
        }
        y[o] = s
        let chain = w.dtype.isQuantized ? Double(n / 32) : Double(n) / 16
        tol[o] = (chain + 8) * 0x1p-23 * m + 1.001 * q + 1e-30
    }
    return (y, tol)
}

/// Pools live for the whole test run: creating and destroying pools quickly trips a ThreadPool bug
/// (a worker reads its `unowned` pool after the pool was freed; see the report on branch `quant`).
private let pools: [ThreadPool] = [ThreadPool(threads: 1), ThreadPool(threads: 2), ThreadPool(threads: 3)]

private func run(_ w: Tensor, _ x: [Float], threads: Int, _ activations: ActivationQuantization = .int8,
                 kernel: QuantKernel = .auto) throws -> [Float] {
    var y = [Float](repeating: .nan, count: w.shape[0])
    let pool = pools[threads - 1]
    try x.withUnsafeBufferPointer { xp in
        try y.withUnsafeMutableBufferPointer { yp in
            try matVec(weight: w, x: xp.baseAddress!, y: yp.baseAddress!, pool: pool, activations: activations,
                       kernel: kernel)
        }
    }
    return y
}

private let bothActivations: [ActivationQuantization] = [.int8, .int16]

/// The quantized-kernel paths this machine runs (always `.scalar`; on x86_64 `.avx2` and the VNNI
/// paths the CPU has). Printed so a test log says which paths were covered.
private let kernelPaths: [QuantKernel] = {
    let paths = QuantKernel.allCases.filter { $0 != .auto && $0.isSupported }
    print("MatVec: quantized kernel paths tested: \(paths.map(\.description)), default \(QuantKernel.resolvedDefault)")
    return paths
}()

private let quantShapes: [(Int, Int)] = [(1, 32), (7, 64), (33, 96), (1000, 64), (7, 4096), (33, 32), (1, 4096)]
private let plainShapes: [(Int, Int)] = [(1, 1), (7, 13), (33, 577), (1000, 13), (7, 32), (1, 577), (33, 96), (5, 4096)]

@Suite struct MatVecTests {
    @Test(arguments: DType.allCases)
    func matchesReference(_ dtype: DType) throws {
        let shapes = dtype.isQuantized ? quantShapes : plainShapes
        for act in bothActivations {
            var worst = 0.0
            for (k, (out, n)) in shapes.enumerated() {
                let w = try makeWeight(out: out, in: n, dtype: dtype, seed: UInt64(10 + k))
                let x = randomValues(n, seed: UInt64(100 + k), scale: 2)
                let y = try run(w, x, threads: 2, act)
                let (ref, tol) = reference(w, x, act)
                for o in 0..<out {
                    let err = abs(Double(y[o]) - ref[o])
                    #expect(err <= tol[o], "\(dtype) \(act) [\(out), \(n)] row \(o): \(y[o]) vs \(ref[o]) (tol \(tol[o]))")
                    worst = max(worst, err / tol[o])
                }
                // Outputs are real sums, not zeros.
                #expect(y.contains { abs($0) > 1e-3 })
            }
            // The bound is not vacuous: the observed error is a sizeable fraction of it.
            if dtype.isQuantized { #expect(worst > 0.05, "\(dtype) \(act): worst error / bound \(worst)") }
        }
    }

    @Test(arguments: DType.allCases)
    func threadCountDoesNotChangeBits(_ dtype: DType) throws {
        let n = dtype.isQuantized ? 320 : 333
        for out in [1, 7, 33, 1000] {
            let w = try makeWeight(out: out, in: n, dtype: dtype, seed: 5)
            let x = randomValues(n, seed: 6)
            for act in bothActivations {
                let y1 = try run(w, x, threads: 1, act)
                let y2 = try run(w, x, threads: 2, act)
                let y3 = try run(w, x, threads: 3, act)
                #expect(y1.map(\.bitPattern) == y2.map(\.bitPattern), "\(dtype) \(act) out=\(out) 1 vs 2 threads")
                #expect(y1.map(\.bitPattern) == y3.map(\.bitPattern), "\(dtype) \(act) out=\(out) 1 vs 3 threads")
            }
        }
    }

    @Test(arguments: DType.allCases)
    func rowsEqualSingleRows(_ dtype: DType) throws {
        let n = dtype.isQuantized ? 96 : 77
        let out = 37
        let w = try makeWeight(out: out, in: n, dtype: dtype, seed: 9)
        let pool = pools[1]
        for rows in [2, 3, 5, 8, 9] {
            for act in bothActivations {
                let ldx = n + 5, ldy = out + 3
                let x = randomValues(rows * ldx, seed: UInt64(rows))
                var y = [Float](repeating: .nan, count: rows * ldy)
                try x.withUnsafeBufferPointer { xp in
                    try y.withUnsafeMutableBufferPointer { yp in
                        try matVecRows(weight: w, x: xp.baseAddress!, rows: rows, ldx: ldx, y: yp.baseAddress!, ldy: ldy,
                                       pool: pool, activations: act)
                    }
                }
                for r in 0..<rows {
                    let xr = Array(x[r * ldx..<(r * ldx + n)])
                    let single = try run(w, xr, threads: 1, act)
                    #expect(Array(y[r * ldy..<(r * ldy + out)]).map(\.bitPattern) == single.map(\.bitPattern),
                            "\(dtype) \(act) rows=\(rows) row \(r)")
                    // Padding between output rows is untouched.
                    #expect(y[r * ldy + out].isNaN)
                }
            }
        }
    }

    /// `matVecRowsShared` (several weights, 1–11 x rows, x quantized once per row) gives, row by row, bitwise
    /// a one-row `matVec` of each weight, for every kernel path this CPU runs (the multi-row kernels: x16
    /// with AVX2 and AVX512-VNNI, the vpdpbusd one for int8 on AVX512-VNNI), both activation
    /// quantizations, mixed quantized types, odd block counts, row counts that are not multiples of 4 (and
    /// of 2), an all-zero block, tiny and huge blocks, a NaN row, and 1–3 threads.
    @Test func rowsSharedEqualsSingleRows() throws {
        let cases: [(n: Int, weights: [(Int, DType)])] = [
            (96, [(37, .q4_1), (12, .q4_1), (5, .q4_1)]),
            (160, [(9, .q8_0), (33, .q4_0), (6, .q4_1), (1, .q8_0)]),
            (576, [(13, .q4_1), (2, .q8_0)]),
            (32, [(7, .q4_0), (3, .q4_1)]),
        ]
        for (g, cs) in cases.enumerated() {
            let n = cs.n
            let ws = try cs.weights.enumerated().map { try makeWeight(out: $1.0, in: n, dtype: $1.1, seed: UInt64(300 + 11 * g + $0)) }
            let ldx = n + 3
            var x = randomValues(11 * ldx, seed: UInt64(400 + g), scale: 2)
            if n >= 64 { for i in 32..<64 { x[2 * ldx + i] = 0 } }               // row 2: an all-zero block
            if n >= 96 { for i in 64..<96 { x[3 * ldx + i] *= 1e-30 } }          // row 3: a tiny block
            for i in 0..<32 { x[4 * ldx + i] *= 1e20 }                            // row 4: a huge block
            x[6 * ldx + n - 1] = .nan                                             // row 6: NaN in the last block
            for kernel in kernelPaths {
                for act in bothActivations {
                    // The one-row results, per weight and x row.
                    let singles = try ws.map { w in
                        try (0..<11).map { r in try run(w, Array(x[(r * ldx)..<(r * ldx + n)]), threads: 1, act, kernel: kernel) }
                    }
                    for rows in [1, 2, 3, 5, 8, 9, 11] {
                        for threads in 1...3 where threads == 2 || rows == 8 || rows == 3 {
                            let ptrs = ws.map { w in
                                let p = UnsafeMutablePointer<Float>.allocate(capacity: rows * w.shape[0] + 1)
                                p.initialize(repeating: -7, count: rows * w.shape[0] + 1)
                                return p
                            }
                            defer { ptrs.forEach { $0.deallocate() } }
                            try x.withUnsafeBufferPointer { xp in
                                try matVecRowsShared(weights: ws, x: xp.baseAddress!, rows: rows, ldx: ldx, ys: ptrs,
                                                     pool: pools[threads - 1], activations: act, kernel: kernel)
                            }
                            for (j, w) in ws.enumerated() {
                                let out = w.shape[0]
                                for r in 0..<rows {
                                    let got = Array(UnsafeBufferPointer(start: ptrs[j] + r * out, count: out))
                                    #expect(got.map(\.bitPattern) == singles[j][r].map(\.bitPattern),
                                            "case \(g) weight \(j) (\(w.dtype)) \(kernel) \(act) rows \(rows) row \(r) threads \(threads)")
                                }
                                #expect(ptrs[j][rows * out] == -7, "case \(g) weight \(j): wrote past its rows")
                            }
                        }
                    }
                    // The NaN row gives NaN everywhere, the others finite values.
                    #expect(singles[0][6].allSatisfy { $0.isNaN })
                    #expect(singles[0][5].allSatisfy { $0.isFinite })
                }
            }
        }
    }

    @Test func stridedF32Rows() throws {
        // A [5, 40] view of a [5, 48] buffer (row stride 48).
        let full = try Tensor(randomValues(5 * 48, seed: 4), shape: [5, 48])
        let view = try Tensor(storage: full.storage, offset: 0, shape: [5, 40], strides: [48, 1], dtype: .f32)
        let x = randomValues(40, seed: 8)
        let y = try run(view, x, threads: 2)
        let (ref, tol) = reference(try Tensor(view.toFloats(), shape: [5, 40]), x)
        for o in 0..<5 { #expect(abs(Double(y[o]) - ref[o]) <= tol[o]) }
    }

    @Test func nonFiniteInputsPropagate() throws {
        for dtype in DType.allCases {
            let w = try makeWeight(out: 5, in: 64, dtype: dtype, seed: 1)
            for bad in [Float.nan, .infinity, -.infinity] {
                var x = randomValues(64, seed: 2)
                x[40] = bad
                for kernel in kernelPaths {
                    for act in bothActivations {
                        let y = try run(w, x, threads: 1, act, kernel: kernel)
                        // Quantized weights: the block's scale becomes NaN. Plain weights: w·±inf is ±inf or NaN.
                        #expect(y.allSatisfy { !$0.isFinite }, "\(dtype) x[40] = \(bad) \(act) \(kernel): \(y)")
                        if dtype.isQuantized || bad.isNaN {
                            #expect(y.allSatisfy { $0.isNaN }, "\(dtype) \(bad) \(act) \(kernel)")
                        }
                    }
                }
            }
        }
    }

    /// Every compiled kernel path the CPU supports gives bitwise the scalar path's results, and the scalar
    /// path is within the bound of the f64 reference, for both activation quantizations, all quantized
    /// dtypes, odd and even block counts, row counts that are not multiples of 4, an all-zero block and a
    /// block of tiny values.
    @Test(arguments: [DType.q8_0, .q4_0, .q4_1])
    func kernelPathsAgreeBitwise(_ dtype: DType) throws {
        for (k, (out, n)) in (quantShapes + [(13, 576), (6, 1536), (9, 160)]).enumerated() {
            let w = try makeWeight(out: out, in: n, dtype: dtype, seed: UInt64(40 + k))
            var x = randomValues(n, seed: UInt64(70 + k), scale: 3)
            if n >= 64 { for i in 32..<64 { x[i] = 0 } }          // an all-zero block (dx = 0)
            if n >= 96 { for i in 64..<96 { x[i] *= 1e-30 } }     // a block of tiny values
            for act in bothActivations {
                let scalar = try run(w, x, threads: 2, act, kernel: .scalar)
                let (ref, tol) = reference(w, x, act)
                for o in 0..<out {
                    #expect(abs(Double(scalar[o]) - ref[o]) <= tol[o], "\(dtype) \(act) [\(out), \(n)] scalar row \(o)")
                }
                for kernel in kernelPaths where kernel != .scalar {
                    let y = try run(w, x, threads: 2, act, kernel: kernel)
                    #expect(y.map(\.bitPattern) == scalar.map(\.bitPattern),
                            "\(dtype) \(act) [\(out), \(n)] \(kernel) vs scalar")
                }
            }
        }
    }

    /// `matVecShared` equals one `matVec` per weight, bitwise, at every thread count: quantized weights
    /// of mixed types (x quantized once), plain weights of one dtype, and a plain/quantized mix (computed
    /// one by one).
    @Test func sharedEqualsSeparate() throws {
        let n = 96
        let groups: [[(Int, DType)]] = [
            [(37, .q4_1), (12, .q4_1), (5, .q4_1)],
            [(9, .q8_0), (33, .q4_0), (6, .q4_1), (1, .q8_0)],
            [(7, .f16), (18, .f16)],
            [(4, .f32), (9, .q4_1)],
            [(0, .q4_1), (3, .q4_1)],
        ]
        for (g, group) in groups.enumerated() {
            let ws = try group.enumerated().map { try makeWeight(out: $1.0, in: n, dtype: $1.1, seed: UInt64(90 + 7 * g + $0)) }
            let x = randomValues(n, seed: UInt64(200 + g))
            for kernel in kernelPaths {
                for act in bothActivations {
                    for threads in 1...3 {
                        // One buffer per weight with a NaN sentinel after its rows.
                        let ptrs = ws.map { w in
                            let p = UnsafeMutablePointer<Float>.allocate(capacity: w.shape[0] + 1)
                            p.initialize(repeating: .nan, count: w.shape[0] + 1)
                            return p
                        }
                        defer { ptrs.forEach { $0.deallocate() } }
                        try x.withUnsafeBufferPointer { xp in
                            try matVecShared(weights: ws, x: xp.baseAddress!, ys: ptrs, pool: pools[threads - 1],
                                             activations: act, kernel: kernel)
                        }
                        for (j, w) in ws.enumerated() {
                            let got = Array(UnsafeBufferPointer(start: ptrs[j], count: w.shape[0]))
                            let single = try run(w, x, threads: 1, act, kernel: kernel)
                            #expect(got.map(\.bitPattern) == single.map(\.bitPattern),
                                    "group \(g) weight \(j) \(kernel) \(act) threads \(threads)")
                            #expect(ptrs[j][w.shape[0]].isNaN, "group \(g) weight \(j): wrote past its rows")
                        }
                    }
                }
            }
        }
        // Mismatched inputs are rejected.
        let a = try makeWeight(out: 4, in: 64, dtype: .q4_1, seed: 1), b = try makeWeight(out: 4, in: 96, dtype: .q4_1, seed: 2)
        var y = [Float](repeating: 0, count: 8)
        let x = randomValues(96, seed: 3)
        x.withUnsafeBufferPointer { xp in
            y.withUnsafeMutableBufferPointer { yp in
                let p = yp.baseAddress!
                #expect(throws: LKError.self) { try matVecShared(weights: [a, b], x: xp.baseAddress!, ys: [p, p + 4], pool: pools[0]) }
                #expect(throws: LKError.self) { try matVecShared(weights: [a], x: xp.baseAddress!, ys: [p, p + 4], pool: pools[0]) }
            }
        }
    }

    @Test func badArgumentsThrow() throws {
        let pool = pools[0]
        var x = [Float](repeating: 1, count: 256)
        var y = [Float](repeating: 0, count: 256)
        func call(_ w: Tensor, rows: Int = 1, ldx: Int = 64, ldy: Int = 64) throws(LKError) {
            var err: LKError? = nil
            x.withUnsafeBufferPointer { xp in
                y.withUnsafeMutableBufferPointer { yp in
                    do throws(LKError) {
                        try matVecRows(weight: w, x: xp.baseAddress!, rows: rows, ldx: ldx, y: yp.baseAddress!, ldy: ldy, pool: pool)
                    } catch { err = error }
                }
            }
            if let err { throw err }
        }
        func fails(_ body: () throws -> Void) -> Bool {
            do { try body(); return false } catch { return error is LKError }
        }
        let rank1 = try Tensor([Float](repeating: 0, count: 64), shape: [64])
        #expect(fails { try call(rank1) })
        let rank3 = try Tensor(zeros: [2, 2, 32], dtype: .q8_0)
        #expect(fails { try call(rank3) })
        // A transposed (column-strided) view is not supported.
        let base = try Tensor(zeros: [64, 4])
        let transposed = try Tensor(storage: base.storage, offset: 0, shape: [4, 64], strides: [1, 4], dtype: .f32)
        do {
            try call(transposed)
            Issue.record("expected an error")
        } catch {
            guard case .unsupported = error else { Issue.record("wrong error \(error)"); return }
        }
        let w = try Tensor(zeros: [4, 64], dtype: .q4_0)
        #expect(fails { try call(w, rows: -1) })
        #expect(fails { try call(w, rows: 2, ldx: 63) })
        #expect(fails { try call(w, rows: 2, ldy: 3) })
        // Valid calls do not throw, including 0 rows and an empty weight.
        try call(w)
        try call(w, rows: 0)
        try call(try Tensor(zeros: [0, 64], dtype: .q4_1))
        x[0] = 0 // keep `x` mutable for the closure above
    }

    @Test func zeroInnerDimensionGivesZeros() throws {
        let w = try Tensor(zeros: [3, 0], dtype: .f16)
        let y = try run(w, [0], threads: 2)
        #expect(y == [0, 0, 0])
    }
}
