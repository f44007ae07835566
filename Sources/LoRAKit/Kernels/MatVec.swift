/// Matrix–vector products with a stored weight: the decode shape (one token), which is memory-bound.
///
/// `y[o] = Σ_i W[o][i] · x[i]` for a weight `W` of shape `[out, in]` in any `DType`.
///
/// - f32 / f16 / bf16 weights: each row is converted to f32 eight values at a time and multiplied with
///   `x` by FMA into two 8-lane accumulators (values `i ≡ 0..7` and `8..15 (mod 16)`), a last group of 8
///   into the first one, the `in mod 8` tail in a scalar, then `hsum(acc0 + acc1) + tail`.
/// - q8_0 / q4_0 / q4_1 weights: `x` is quantized once per call to int16 per 32-value block
///   (`dx = max|x_b| / 32767`, round to nearest even) and each block's dot product is exact integer
///   arithmetic in the C kernel `lk_qdot_rows` (Sources/LoRAKitKernelsC: `vpmaddwd` on x86_64, a portable
///   loop elsewhere), scaled once: `acc += f32(Σ q·xq)·(d·dx)`; q4_1's offset is `bias += m·Σx_b`.
///   Error: quantizing x moves each `x_i` by at most `max|x_b|/65534`, so the result differs from the
///   exact product with the dequantized weights by at most `Σ_b max|x_b|/65534 · Σ_{i∈b} |w_i|` plus f32
///   rounding. (Swift's SIMD types cannot express the widening multiply-add: an all-Swift float path
///   ran at a third of the speed; see the history of this file.)
///
/// Every `y[o]` is reduced in this fixed order whatever the number of threads or rows processed
/// together, so results are bitwise independent of the thread count, and `matVecRows` gives bitwise the
/// same values as `matVec` on each row. Threads take contiguous ranges of output rows.

import LoRAKitKernelsC

// MARK: - Public API

/// `y[o] = Σ_i weight[o][i] · x[i]` for `weight` of shape `[out, in]` (any dtype), `x` of `in` floats and
/// `y` of `out` floats. Plain-dtype weights may be row-strided views (`strides[1] == 1`).
public func matVec(weight: Tensor, x: UnsafePointer<Float>, y: UnsafeMutablePointer<Float>,
                   pool: ThreadPool) throws(LKError) {
    try matVecRows(weight: weight, x: x, rows: 1, ldx: weight.shape.last ?? 0, y: y,
                   ldy: weight.shape.first ?? 0, pool: pool)
}

/// `y[r·ldy + o] = Σ_i weight[o][i] · x[r·ldx + i]` for `rows` activation rows (meant for 2–8, e.g. a few
/// tokens of speculative decoding or a small batch). Plain-dtype weights are read once for up to 8 rows
/// (larger `rows` are processed 8 at a time); quantized weights are read once per row by the integer
/// kernel (its rows are few). Row `r` of the result is bitwise equal to `matVec` on row `r` of `x`.
public func matVecRows(weight: Tensor, x: UnsafePointer<Float>, rows: Int, ldx: Int,
                       y: UnsafeMutablePointer<Float>, ldy: Int, pool: ThreadPool) throws(LKError) {
    guard weight.rank == 2 else {
        throw .shapeMismatch("matVec: weight must have shape [out, in], got \(weight.shape)")
    }
    let out = weight.shape[0], inner = weight.shape[1]
    let dtype = weight.dtype
    guard rows >= 0 else { throw .invalidArgument("matVec: negative row count \(rows)") }
    guard inner % dtype.blockSize == 0 else {
        throw .shapeMismatch("matVec: weight row length \(inner) is not a multiple of the \(dtype) block size \(dtype.blockSize)")
    }
    if rows > 1 {
        guard ldx >= inner else { throw .invalidArgument("matVec: ldx \(ldx) < in \(inner)") }
        guard ldy >= out else { throw .invalidArgument("matVec: ldy \(ldy) < out \(out)") }
    }
    let rowStride: Int   // bytes between weight rows
    if dtype.isQuantized {
        rowStride = try dtype.rowBytes(inner)
    } else {
        guard inner <= 1 || weight.strides[1] == 1 else {
            throw .unsupported("matVec: weight rows must be contiguous (strides \(weight.strides))")
        }
        rowStride = weight.strides[0] * dtype.blockBytes
    }
    if rows == 0 || out == 0 { return }
    let w = UnsafeRawPointer(weight.rawPointer)
    var r0 = 0
    while r0 < rows {
        let nr = min(8, rows - r0)
        let xr = x + r0 * ldx, yr = y + r0 * ldy
        switch dtype {
        case .f32: mvFloat(F32Row.self, w, rowStride, out, inner, xr, ldx, nr, yr, ldy, pool)
        case .f16: mvFloat(F16Row.self, w, rowStride, out, inner, xr, ldx, nr, yr, ldy, pool)
        case .bf16: mvFloat(BF16Row.self, w, rowStride, out, inner, xr, ldx, nr, yr, ldy, pool)
        case .q8_0: mvQuant(0, w, rowStride, out, inner, xr, ldx, nr, yr, ldy, pool)
        case .q4_0: mvQuant(1, w, rowStride, out, inner, xr, ldx, nr, yr, ldy, pool)
        case .q4_1: mvQuant(2, w, rowStride, out, inner, xr, ldx, nr, yr, ldy, pool)
        }
        r0 += nr
    }
}

// MARK: - Threading

/// Participants to use: about one per 64 KiB of weights (a job costs a few microseconds to hand out).
@inline(__always)
private func mvTasks(_ weightBytes: Int, _ out: Int, _ pool: ThreadPool) -> Int {
    max(1, min(pool.activeCount, weightBytes / 65536, (out + 3) / 4))
}

// MARK: - Shared helpers

/// Horizontal sum in a fixed order.
@inline(__always)
private func hsum(_ v: SIMD8<Float>) -> Float {
    let h = v.lowHalf + v.highHalf
    let q = h.lowHalf + h.highHalf
    return q[0] + q[1]
}

// MARK: - Float weights

private protocol FloatRow {
    static var elementBytes: Int { get }
    /// Eight weights starting at element `i` of row `p`, as f32.
    static func load8(_ p: UnsafeRawPointer, _ i: Int) -> SIMD8<Float>
    static func load1(_ p: UnsafeRawPointer, _ i: Int) -> Float
}

private enum F32Row: FloatRow {
    static var elementBytes: Int { 4 }
    @inline(__always) static func load8(_ p: UnsafeRawPointer, _ i: Int) -> SIMD8<Float> {
        p.loadUnaligned(fromByteOffset: i * 4, as: SIMD8<Float>.self)
    }
    @inline(__always) static func load1(_ p: UnsafeRawPointer, _ i: Int) -> Float {
        p.loadUnaligned(fromByteOffset: i * 4, as: Float.self)
    }
}

private enum F16Row: FloatRow {
    static var elementBytes: Int { 2 }
    @inline(__always) static func load8(_ p: UnsafeRawPointer, _ i: Int) -> SIMD8<Float> {
        let h = p.loadUnaligned(fromByteOffset: i * 2, as: SIMD8<UInt16>.self)
        return SIMD8<Float>(unsafeBitCast(h, to: SIMD8<Float16>.self))
    }
    @inline(__always) static func load1(_ p: UnsafeRawPointer, _ i: Int) -> Float {
        halfToFloat(p.loadUnaligned(fromByteOffset: i * 2, as: UInt16.self))
    }
}

private enum BF16Row: FloatRow {
    static var elementBytes: Int { 2 }
    @inline(__always) static func load8(_ p: UnsafeRawPointer, _ i: Int) -> SIMD8<Float> {
        let h = p.loadUnaligned(fromByteOffset: i * 2, as: SIMD8<UInt16>.self)
        return unsafeBitCast(SIMD8<UInt32>(truncatingIfNeeded: h) &<< 16, to: SIMD8<Float>.self)
    }
    @inline(__always) static func load1(_ p: UnsafeRawPointer, _ i: Int) -> Float {
        bf16ToFloat(p.loadUnaligned(fromByteOffset: i * 2, as: UInt16.self))
    }
}

@inline(__always)
private func ld8(_ x: UnsafePointer<Float>, _ i: Int) -> SIMD8<Float> {
    UnsafeRawPointer(x + i).loadUnaligned(as: SIMD8<Float>.self)
}

/// One weight row against one x row (the reference order described at the top of the file).
@inline(never)
private func dotRow<R: FloatRow>(_: R.Type, _ w: UnsafeRawPointer, _ n: Int, _ x: UnsafePointer<Float>) -> Float {
    var a0 = SIMD8<Float>(), a1 = SIMD8<Float>()
    var i = 0
    while i + 16 <= n {
        a0.addProduct(R.load8(w, i), ld8(x, i))
        a1.addProduct(R.load8(w, i + 8), ld8(x, i + 8))
        i += 16
    }
    if i + 8 <= n {
        a0.addProduct(R.load8(w, i), ld8(x, i))
        i += 8
    }
    var t: Float = 0
    while i < n {
        t = t.addingProduct(R.load1(w, i), x[i])
        i += 1
    }
    return hsum(a0 + a1) + t
}

/// Four weight rows against one x row: the same arithmetic per row as `dotRow`, interleaved.
@inline(never)
private func dotRows4<R: FloatRow>(_: R.Type, _ w: UnsafeRawPointer, _ rs: Int, _ n: Int,
                                    _ x: UnsafePointer<Float>, _ y: UnsafeMutablePointer<Float>) {
    let w0 = w, w1 = w + rs, w2 = w + 2 * rs, w3 = w + 3 * rs
    var a00 = SIMD8<Float>(), a01 = SIMD8<Float>(), a10 = SIMD8<Float>(), a11 = SIMD8<Float>()
    var a20 = SIMD8<Float>(), a21 = SIMD8<Float>(), a30 = SIMD8<Float>(), a31 = SIMD8<Float>()
    var i = 0
    while i + 16 <= n {
        let xa = ld8(x, i), xb = ld8(x, i + 8)
        a00.addProduct(R.load8(w0, i), xa); a01.addProduct(R.load8(w0, i + 8), xb)
        a10.addProduct(R.load8(w1, i), xa); a11.addProduct(R.load8(w1, i + 8), xb)
        a20.addProduct(R.load8(w2, i), xa); a21.addProduct(R.load8(w2, i + 8), xb)
        a30.addProduct(R.load8(w3, i), xa); a31.addProduct(R.load8(w3, i + 8), xb)
        i += 16
    }
    if i + 8 <= n {
        let xa = ld8(x, i)
        a00.addProduct(R.load8(w0, i), xa)
        a10.addProduct(R.load8(w1, i), xa)
        a20.addProduct(R.load8(w2, i), xa)
        a30.addProduct(R.load8(w3, i), xa)
        i += 8
    }
    var t0: Float = 0, t1: Float = 0, t2: Float = 0, t3: Float = 0
    while i < n {
        let xi = x[i]
        t0 = t0.addingProduct(R.load1(w0, i), xi)
        t1 = t1.addingProduct(R.load1(w1, i), xi)
        t2 = t2.addingProduct(R.load1(w2, i), xi)
        t3 = t3.addingProduct(R.load1(w3, i), xi)
        i += 1
    }
    y[0] = hsum(a00 + a01) + t0
    y[1] = hsum(a10 + a11) + t1
    y[2] = hsum(a20 + a21) + t2
    y[3] = hsum(a30 + a31) + t3
}

/// One weight row against `nr` ≤ 8 x rows, reading the weights once: same arithmetic per (row, x row)
/// as `dotRow`.
@inline(never)
private func dotRowMulti<R: FloatRow>(_: R.Type, _ w: UnsafeRawPointer, _ n: Int, _ x: UnsafePointer<Float>,
                                      _ ldx: Int, _ nr: Int, _ y: UnsafeMutablePointer<Float>, _ ldy: Int,
                                      _ acc: UnsafeMutablePointer<SIMD8<Float>>) {
    for r in 0..<2 * nr { acc[r] = SIMD8<Float>() }
    var i = 0
    while i + 16 <= n {
        let wa = R.load8(w, i), wb = R.load8(w, i + 8)
        for r in 0..<nr {
            let xr = x + r * ldx
            acc[2 * r].addProduct(wa, ld8(xr, i))
            acc[2 * r + 1].addProduct(wb, ld8(xr, i + 8))
        }
        i += 16
    }
    if i + 8 <= n {
        let wa = R.load8(w, i)
        for r in 0..<nr { acc[2 * r].addProduct(wa, ld8(x + r * ldx, i)) }
        i += 8
    }
    for r in 0..<nr {
        let xr = x + r * ldx
        var t: Float = 0
        var j = i
        while j < n {
            t = t.addingProduct(R.load1(w, j), xr[j])
            j += 1
        }
        y[r * ldy] = hsum(acc[2 * r] + acc[2 * r + 1]) + t
    }
}

private func mvFloat<R: FloatRow>(_ kind: R.Type, _ w: UnsafeRawPointer, _ rs: Int, _ out: Int, _ n: Int,
                                  _ x: UnsafePointer<Float>, _ ldx: Int, _ nr: Int,
                                  _ y: UnsafeMutablePointer<Float>, _ ldy: Int, _ pool: ThreadPool) {
    let tasks = mvTasks(out * n * R.elementBytes * nr, out, pool)
    pool.run(maxTasks: tasks) { idx, cnt in
        let range = partition(out, index: idx, count: cnt, align: 4)
        if range.isEmpty { return }
        if nr == 1 {
            var o = range.lowerBound
            while o + 4 <= range.upperBound {
                dotRows4(kind, w + o * rs, rs, n, x, y + o)
                o += 4
            }
            while o < range.upperBound {
                y[o] = dotRow(kind, w + o * rs, n, x)
                o += 1
            }
        } else {
            withUnsafeTemporaryAllocation(of: SIMD8<Float>.self, capacity: 16) { buf in
                let acc = buf.baseAddress!
                for o in range {
                    dotRowMulti(kind, w + o * rs, n, x, ldx, nr, y + o, ldy, acc)
                }
            }
        }
    }
}

// MARK: - Quantized weights

private func mvQuant(_ type: Int32, _ w: UnsafeRawPointer, _ rs: Int, _ out: Int, _ n: Int,
                                    _ x: UnsafePointer<Float>, _ ldx: Int, _ nr: Int,
                                    _ y: UnsafeMutablePointer<Float>, _ ldy: Int, _ pool: ThreadPool) {
    // Integer path (C kernel, vpmaddwd): x is quantized once per call to int16 blocks; each weight
    // block is multiplied in integers and scaled once. Rows are split between threads; each x row is
    // processed by the same per-row arithmetic, so matVecRows equals matVec row by row.
    let nb = n / 32
    withUnsafeTemporaryAllocation(of: Int16.self, capacity: max(1, nr * nb * 32)) { xqBuf in
        withUnsafeTemporaryAllocation(of: Float.self, capacity: max(1, 2 * nr * nb)) { sBuf in
            let xq = xqBuf.baseAddress!, dx = sBuf.baseAddress!, xs = sBuf.baseAddress! + nr * nb
            for r in 0..<nr {
                lk_quantize_x16(x + r * ldx, Int64(nb), xq + r * nb * 32, dx + r * nb, xs + r * nb)
            }
            let tasks = mvTasks(out * rs * nr, out, pool)
            pool.run(maxTasks: tasks) { idx, cnt in
                let range = partition(out, index: idx, count: cnt, align: 4)
                if range.isEmpty { return }
                for r in 0..<nr {
                    lk_qdot_rows(type, w + range.lowerBound * rs, rs, Int64(range.count), Int64(nb),
                                 xq + r * nb * 32, dx + r * nb, xs + r * nb, y + r * ldy + range.lowerBound)
                }
            }
        }
    }
}
