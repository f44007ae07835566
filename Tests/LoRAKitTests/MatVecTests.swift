import Testing
@testable import LoRAKit

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
/// Bound: the kernels accumulate in f32 (per 32-value block for quantized weights: `Σ q·x` in 4 f32 ops,
/// then `acc += t·d` and `bias += m·Σx`), so the rounding error is at most about
/// `(chain length + 8) · 2⁻²³ · M` where `M = Σ_i (|d·q_i| + |m|)·|x_i|` ≤ `Σ_i (|w_i| + 2·max_b|w|)·|x_i|`
/// for quantized weights (|m| ≤ max_b|w| for q4_0 and q4_1) and `M = Σ|w_i·x_i|` for plain ones.
/// For quantized weights x is quantized per 32-block to int16 (`dx = max|x_b|/32767`, round to nearest),
/// which moves each x_i by at most `dx/2`: a second term `Σ_b max|x_b|/65534 · Σ_{i∈b} |w_i|`.
private func reference(_ w: Tensor, _ x: [Float]) -> (y: [Double], tol: [Double]) {
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
                m += (Double(abs(wf[i])) + 2 * amax) * abs(xi)
                q += xmax / 65534 * Double(abs(wf[i]))
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

private func run(_ w: Tensor, _ x: [Float], threads: Int) throws -> [Float] {
    var y = [Float](repeating: .nan, count: w.shape[0])
    let pool = pools[threads - 1]
    try x.withUnsafeBufferPointer { xp in
        try y.withUnsafeMutableBufferPointer { yp in
            try matVec(weight: w, x: xp.baseAddress!, y: yp.baseAddress!, pool: pool)
        }
    }
    return y
}

private let quantShapes: [(Int, Int)] = [(1, 32), (7, 64), (33, 96), (1000, 64), (7, 4096), (33, 32), (1, 4096)]
private let plainShapes: [(Int, Int)] = [(1, 1), (7, 13), (33, 577), (1000, 13), (7, 32), (1, 577), (33, 96), (5, 4096)]

@Suite struct MatVecTests {
    @Test(arguments: DType.allCases)
    func matchesReference(_ dtype: DType) throws {
        let shapes = dtype.isQuantized ? quantShapes : plainShapes
        for (k, (out, n)) in shapes.enumerated() {
            let w = try makeWeight(out: out, in: n, dtype: dtype, seed: UInt64(10 + k))
            let x = randomValues(n, seed: UInt64(100 + k), scale: 2)
            let y = try run(w, x, threads: 2)
            let (ref, tol) = reference(w, x)
            var worst = 0.0
            for o in 0..<out {
                let err = abs(Double(y[o]) - ref[o])
                #expect(err <= tol[o], "\(dtype) [\(out), \(n)] row \(o): \(y[o]) vs \(ref[o]) (tol \(tol[o]))")
                worst = max(worst, err / tol[o])
            }
            // Outputs are real sums, not zeros.
            #expect(y.contains { abs($0) > 1e-3 })
        }
    }

    @Test(arguments: DType.allCases)
    func threadCountDoesNotChangeBits(_ dtype: DType) throws {
        let n = dtype.isQuantized ? 320 : 333
        for out in [1, 7, 33, 1000] {
            let w = try makeWeight(out: out, in: n, dtype: dtype, seed: 5)
            let x = randomValues(n, seed: 6)
            let y1 = try run(w, x, threads: 1)
            let y2 = try run(w, x, threads: 2)
            let y3 = try run(w, x, threads: 3)
            #expect(y1.map(\.bitPattern) == y2.map(\.bitPattern), "\(dtype) out=\(out) 1 vs 2 threads")
            #expect(y1.map(\.bitPattern) == y3.map(\.bitPattern), "\(dtype) out=\(out) 1 vs 3 threads")
        }
    }

    @Test(arguments: DType.allCases)
    func rowsEqualSingleRows(_ dtype: DType) throws {
        let n = dtype.isQuantized ? 96 : 77
        let out = 37
        let w = try makeWeight(out: out, in: n, dtype: dtype, seed: 9)
        let pool = pools[1]
        for rows in [2, 3, 5, 8, 9] {
            let ldx = n + 5, ldy = out + 3
            let x = randomValues(rows * ldx, seed: UInt64(rows))
            var y = [Float](repeating: .nan, count: rows * ldy)
            try x.withUnsafeBufferPointer { xp in
                try y.withUnsafeMutableBufferPointer { yp in
                    try matVecRows(weight: w, x: xp.baseAddress!, rows: rows, ldx: ldx, y: yp.baseAddress!, ldy: ldy, pool: pool)
                }
            }
            for r in 0..<rows {
                let xr = Array(x[r * ldx..<(r * ldx + n)])
                let single = try run(w, xr, threads: 1)
                #expect(Array(y[r * ldy..<(r * ldy + out)]).map(\.bitPattern) == single.map(\.bitPattern),
                        "\(dtype) rows=\(rows) row \(r)")
                // Padding between output rows is untouched.
                #expect(y[r * ldy + out].isNaN)
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
        let w = try makeWeight(out: 4, in: 64, dtype: .q4_1, seed: 1)
        var x = randomValues(64, seed: 2)
        x[40] = .nan
        let y = try run(w, x, threads: 1)
        #expect(y.allSatisfy { $0.isNaN })
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
