/// Matrix–vector products with a stored weight: the decode shape (one token), which is memory-bound.
///
/// `y[o] = Σ_i W[o][i] · x[i]` for a weight `W` of shape `[out, in]` in any `DType`.
///
/// - f32 / f16 / bf16 weights: each row is converted to f32 eight values at a time and multiplied with
///   `x` by FMA into two 8-lane accumulators (values `i ≡ 0..7` and `8..15 (mod 16)`), a last group of 8
///   into the first one, the `in mod 8` tail in a scalar, then `hsum(acc0 + acc1) + tail`.
/// - q8_0 / q4_0 / q4_1 weights: per 32-value block the codes are widened to f32 (`vpmovzxbd` +
///   `vcvtdq2ps`) and `t = Σ q·x` is formed with one multiply and three FMAs, then `acc += t·d`; the
///   offset (q4_1 `m`, q4_0 `−8·d`) is applied as `bias += m · Σx_b` with `Σx_b` computed once per call.
///   `y = hsum(acc) + bias`. `x` stays f32 (no activation quantization), so the only error is f32
///   rounding, bounded by about `(in/32 + 8) · 2⁻²³ · Σ_i (|d·q_i| + |m|)·|x_i|`.
///   (An int16-activation variant with `vpmaddwd` was tried: LLVM scalarized the even/odd lane
///   shuffles Swift's SIMD types need to express it, so it was 2× slower than this float path.)
///
/// Every `y[o]` is reduced in this fixed order whatever the number of threads or rows processed
/// together, so results are bitwise independent of the thread count, and `matVecRows` gives bitwise the
/// same values as `matVec` on each row. Threads take contiguous ranges of output rows.

// MARK: - Public API

/// `y[o] = Σ_i weight[o][i] · x[i]` for `weight` of shape `[out, in]` (any dtype), `x` of `in` floats and
/// `y` of `out` floats. Plain-dtype weights may be row-strided views (`strides[1] == 1`).
public func matVec(weight: Tensor, x: UnsafePointer<Float>, y: UnsafeMutablePointer<Float>,
                   pool: ThreadPool) throws(LKError) {
    try matVecRows(weight: weight, x: x, rows: 1, ldx: weight.shape.last ?? 0, y: y,
                   ldy: weight.shape.first ?? 0, pool: pool)
}

/// `y[r·ldy + o] = Σ_i weight[o][i] · x[r·ldx + i]` for `rows` activation rows (meant for 2–8, e.g. a few
/// tokens of speculative decoding or a small batch). Each weight block is read once for up to 8 rows
/// (larger `rows` are processed 8 at a time). Row `r` of the result is bitwise equal to `matVec` on
/// row `r` of `x`.
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
        case .q8_0: mvQuant(Q8_0Blk.self, w, rowStride, out, inner, xr, ldx, nr, yr, ldy, pool)
        case .q4_0: mvQuant(Q4_0Blk.self, w, rowStride, out, inner, xr, ldx, nr, yr, ldy, pool)
        case .q4_1: mvQuant(Q4_1Blk.self, w, rowStride, out, inner, xr, ldx, nr, yr, ldy, pool)
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

/// Per 32-value block of `x`: `Σ x` in a fixed order (for the q4_0 / q4_1 offset terms).
private func blockSums(_ x: UnsafePointer<Float>, nb: Int, into s: UnsafeMutablePointer<Float>) {
    for b in 0..<nb {
        let p = x + b * 32
        s[b] = hsum((ld8(p, 0) + ld8(p, 8)) + (ld8(p, 16) + ld8(p, 24)))
    }
}

private protocol QuantBlock {
    static var bytes: Int { get }
    static var hasOffset: Bool { get }
    static func unpack(_ p: UnsafeRawPointer) -> Unpacked
}

/// The first four f16 values of a block (its `d`, then `m` for q4_1), converted with one vector load so
/// no scalar half load (`vpinsrw`, which merges into a stale register) ties iterations together.
@inline(__always)
private func blockHalves(_ p: UnsafeRawPointer) -> SIMD4<Float> {
    SIMD4<Float>(unsafeBitCast(p.loadUnaligned(as: SIMD4<UInt16>.self), to: SIMD4<Float16>.self))
}

#if LORAKIT_AVX512
/// Vector type of the quantized dot products: 16 lanes (one zmm register) with AVX-512.
private typealias QV = SIMD16<Float>

@inline(__always) private func hsumQ(_ v: QV) -> Float { hsum(v.lowHalf + v.highHalf) }
@inline(__always) private func ld16(_ x: UnsafePointer<Float>, _ i: Int) -> QV {
    UnsafeRawPointer(x + i).loadUnaligned(as: QV.self)
}

/// A quantized weight block as two groups of 16 f32 codes (values 0..15 and 16..31) with its scale `d`
/// and offset `m`: the weights are `d·q + m`.
private struct Unpacked {
    var lo, hi: QV
    var d: Float
    var m: Float
}



private enum Q8_0Blk: QuantBlock {
    static var bytes: Int { 34 }
    static var hasOffset: Bool { false }
    @inline(__always) static func unpack(_ p: UnsafeRawPointer) -> Unpacked {
        @inline(__always) func g(_ o: Int) -> QV {
            QV(SIMD16<Int32>(truncatingIfNeeded: p.loadUnaligned(fromByteOffset: o, as: SIMD16<Int8>.self)))
        }
        return Unpacked(lo: g(2), hi: g(18), d: blockHalves(p)[0], m: 0)
    }
}

/// The 32 nibble codes of the 16 bytes at `p` (low nibbles are values 0..15, high nibbles 16..31).
@inline(__always)
private func nibbles(_ p: UnsafeRawPointer) -> (QV, QV) {
    let a = SIMD16<Int32>(truncatingIfNeeded: p.loadUnaligned(as: SIMD16<UInt8>.self))
    return (QV(a & 0xF), QV(a &>> 4))
}

private enum Q4_0Blk: QuantBlock {
    static var bytes: Int { 18 }
    static var hasOffset: Bool { true }
    @inline(__always) static func unpack(_ p: UnsafeRawPointer) -> Unpacked {
        let (a, b) = nibbles(p + 2)
        let d = blockHalves(p)[0]
        return Unpacked(lo: a, hi: b, d: d, m: -8 * d)
    }
}

private enum Q4_1Blk: QuantBlock {
    static var bytes: Int { 20 }
    static var hasOffset: Bool { true }
    @inline(__always) static func unpack(_ p: UnsafeRawPointer) -> Unpacked {
        let (a, b) = nibbles(p + 4)
        let h = blockHalves(p)
        return Unpacked(lo: a, hi: b, d: h[0], m: h[1])
    }
}

/// The per-(weight block, x block) step: `t = Σ q·x` (one multiply, one FMA), `acc += t·d`,
/// `bias += m·Σx`.
@inline(__always)
private func step<B: QuantBlock>(_: B.Type, _ u: Unpacked, _ x: UnsafePointer<Float>, _ sx: Float,
                                 _ acc: inout QV, _ bias: inout Float) {
    var t = u.lo * ld16(x, 0)
    t.addProduct(u.hi, ld16(x, 16))
    acc.addProduct(t, QV(repeating: u.d))
    if B.hasOffset { bias = bias.addingProduct(u.m, sx) }
}
#else
private typealias QV = SIMD8<Float>
@inline(__always) private func hsumQ(_ v: QV) -> Float { hsum(v) }

/// A quantized weight block as four groups of 8 f32 codes (values 0..7, 8..15, 16..23, 24..31) with its
/// scale `d` and offset `m`: the weights are `d·q + m`.
private struct Unpacked {
    var q0, q1, q2, q3: SIMD8<Float>
    var d: Float
    var m: Float
}


private enum Q8_0Blk: QuantBlock {
    static var bytes: Int { 34 }
    static var hasOffset: Bool { false }
    @inline(__always) static func unpack(_ p: UnsafeRawPointer) -> Unpacked {
        @inline(__always) func g(_ o: Int) -> SIMD8<Float> {
            SIMD8<Float>(SIMD8<Int32>(truncatingIfNeeded: p.loadUnaligned(fromByteOffset: o, as: SIMD8<Int8>.self)))
        }
        return Unpacked(q0: g(2), q1: g(10), q2: g(18), q3: g(26), d: blockHalves(p)[0], m: 0)
    }
}

/// The 32 nibble codes of the 16 bytes at `p` (low nibbles are values 0..15, high nibbles 16..31).
@inline(__always)
private func nibbles(_ p: UnsafeRawPointer) -> (SIMD8<Float>, SIMD8<Float>, SIMD8<Float>, SIMD8<Float>) {
    let a = SIMD8<Int32>(truncatingIfNeeded: p.loadUnaligned(as: SIMD8<UInt8>.self))
    let b = SIMD8<Int32>(truncatingIfNeeded: p.loadUnaligned(fromByteOffset: 8, as: SIMD8<UInt8>.self))
    return (SIMD8<Float>(a & 0xF), SIMD8<Float>(b & 0xF), SIMD8<Float>(a &>> 4), SIMD8<Float>(b &>> 4))
}

private enum Q4_0Blk: QuantBlock {
    static var bytes: Int { 18 }
    static var hasOffset: Bool { true }
    @inline(__always) static func unpack(_ p: UnsafeRawPointer) -> Unpacked {
        let (a, b, c, e) = nibbles(p + 2)
        let d = blockHalves(p)[0]
        // d·(q − 8) = d·q + (−8·d); −8·d is exact.
        return Unpacked(q0: a, q1: b, q2: c, q3: e, d: d, m: -8 * d)
    }
}

private enum Q4_1Blk: QuantBlock {
    static var bytes: Int { 20 }
    static var hasOffset: Bool { true }
    @inline(__always) static func unpack(_ p: UnsafeRawPointer) -> Unpacked {
        let (a, b, c, e) = nibbles(p + 4)
        let h = blockHalves(p)
        return Unpacked(q0: a, q1: b, q2: c, q3: e, d: h[0], m: h[1])
    }
}

/// The per-(weight block, x block) step, identical wherever it is used:
/// `t = Σ q·x` (one multiply and three FMAs), `acc += t·d`, `bias += m·Σx`.
/// (One chain on purpose: with two chains LLVM's SLP vectorizer scalarized the byte → f32 conversions
/// of the codes, 10× slower. Check `objdump -d` for `vcvtsi2ss` in `quantRows4` after edits here.)
@inline(__always)
private func step<B: QuantBlock>(_: B.Type, _ u: Unpacked, _ x: UnsafePointer<Float>, _ sx: Float,
                                 _ acc: inout QV, _ bias: inout Float) {
    var t = u.q0 * ld8(x, 0)
    t.addProduct(u.q1, ld8(x, 8))
    t.addProduct(u.q2, ld8(x, 16))
    t.addProduct(u.q3, ld8(x, 24))
    acc.addProduct(t, SIMD8<Float>(repeating: u.d))
    if B.hasOffset { bias = bias.addingProduct(u.m, sx) }
}

#endif

/// Four weight rows (`rs` bytes apart) against one x row; same arithmetic per row as `quantRow1`. Kept
/// out of line: small functions are where LLVM vectorizes the SIMD conversions cleanly.
@inline(never)
private func quantRows4<B: QuantBlock>(_ kind: B.Type, _ w: UnsafeRawPointer, _ rs: Int, _ nb: Int,
                                       _ x: UnsafePointer<Float>, _ sxs: UnsafePointer<Float>,
                                       _ y: UnsafeMutablePointer<Float>) {
    let p0 = w, p1 = w + rs, p2 = w + 2 * rs, p3 = w + 3 * rs
    var a0 = QV(), a1 = QV(), a2 = QV(), a3 = QV()
    var b0: Float = 0, b1: Float = 0, b2: Float = 0, b3: Float = 0
    for b in 0..<nb {
        let xb = x + b * 32
        let sx = sxs[b]
        step(kind, B.unpack(p0 + b * B.bytes), xb, sx, &a0, &b0)
        step(kind, B.unpack(p1 + b * B.bytes), xb, sx, &a1, &b1)
        step(kind, B.unpack(p2 + b * B.bytes), xb, sx, &a2, &b2)
        step(kind, B.unpack(p3 + b * B.bytes), xb, sx, &a3, &b3)
    }
    y[0] = hsumQ(a0) + b0
    y[1] = hsumQ(a1) + b1
    y[2] = hsumQ(a2) + b2
    y[3] = hsumQ(a3) + b3
}

@inline(never)
private func quantRow1<B: QuantBlock>(_ kind: B.Type, _ p: UnsafeRawPointer, _ nb: Int,
                                      _ x: UnsafePointer<Float>, _ sxs: UnsafePointer<Float>) -> Float {
    var a = QV()
    var bias: Float = 0
    for b in 0..<nb {
        step(kind, B.unpack(p + b * B.bytes), x + b * 32, sxs[b], &a, &bias)
    }
    return hsumQ(a) + bias
}

/// One weight row against `nr` ≤ 8 x rows, unpacking each weight block once.
@inline(never)
private func quantRowMulti<B: QuantBlock>(_ kind: B.Type, _ p: UnsafeRawPointer, _ nb: Int,
                                          _ x: UnsafePointer<Float>, _ ldx: Int, _ nr: Int,
                                          _ sxs: UnsafePointer<Float>, _ y: UnsafeMutablePointer<Float>, _ ldy: Int) {
    withUnsafeTemporaryAllocation(of: QV.self, capacity: 8) { accBuf in
        withUnsafeTemporaryAllocation(of: Float.self, capacity: 8) { biasBuf in
            let acc = accBuf.baseAddress!, bias = biasBuf.baseAddress!
            for r in 0..<nr { acc[r] = QV(); bias[r] = 0 }
            for b in 0..<nb {
                let u = B.unpack(p + b * B.bytes)
                for r in 0..<nr {
                    step(kind, u, x + r * ldx + b * 32, sxs[r * nb + b], &acc[r], &bias[r])
                }
            }
            for r in 0..<nr { y[r * ldy] = hsumQ(acc[r]) + bias[r] }
        }
    }
}

private func mvQuant<B: QuantBlock>(_ kind: B.Type, _ w: UnsafeRawPointer, _ rs: Int, _ out: Int, _ n: Int,
                                    _ x: UnsafePointer<Float>, _ ldx: Int, _ nr: Int,
                                    _ y: UnsafeMutablePointer<Float>, _ ldy: Int, _ pool: ThreadPool) {
    let nb = n / 32
    withUnsafeTemporaryAllocation(of: Float.self, capacity: max(1, nr * nb)) { sums in
        let sxs = sums.baseAddress!
        for i in 0..<max(1, nr * nb) { sxs[i] = 0 }
        if B.hasOffset {
            for r in 0..<nr { blockSums(x + r * ldx, nb: nb, into: sxs + r * nb) }
        }
        let tasks = mvTasks(out * rs * nr, out, pool)
        pool.run(maxTasks: tasks) { idx, cnt in
            let range = partition(out, index: idx, count: cnt, align: 4)
            if range.isEmpty { return }
            let s = UnsafePointer(sxs)
            if nr == 1 {
                var o = range.lowerBound
                while o + 4 <= range.upperBound {
                    quantRows4(kind, w + o * rs, rs, nb, x, s, y + o)
                    o += 4
                }
                while o < range.upperBound {
                    y[o] = quantRow1(kind, w + o * rs, nb, x, s)
                    o += 1
                }
            } else {
                for o in range {
                    quantRowMulti(kind, w + o * rs, nb, x, ldx, nr, s, y + o, ldy)
                }
            }
        }
    }
}
