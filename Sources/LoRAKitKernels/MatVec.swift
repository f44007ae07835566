import LoRAKitCore

/// Matrix–vector products with a stored weight: the decode shape (one token), which is memory-bound.
///
/// `y[o] = Σ_i W[o][i] · x[i]` for a weight `W` of shape `[out, in]` in any `DType`.
///
/// - f32 / f16 / bf16 weights: each row is converted to f32 eight values at a time and multiplied with
///   `x` by FMA into two 8-lane accumulators (values `i ≡ 0..7` and `8..15 (mod 16)`), a last group of 8
///   into the first one, the `in mod 8` tail in a scalar, then `hsum(acc0 + acc1) + tail`.
/// - q8_0 / q4_0 / q4_1 weights: `x` is quantized once per call per 32-value block (`ActivationQuantization`):
///   `.int8` as llama.cpp's q8_1 (`dx = max|x_b| / 127`, `q = round(x / dx)` to nearest even, and the
///   block sum `xs = dx·Σq`), or `.int16` (the default) with `dx = max|x_b| / 16256`, `q` stored as two
///   int8 digits `q = 128·hi + lo`. Each weight block's dot product is exact integer arithmetic in the C
///   kernel `lk_qdot_rows` (Sources/LoRAKitKernelsC: `vpdpbusd` with AVX-VNNI or AVX512-VNNI,
///   `vpmaddubsw` + `vpmaddwd` with AVX2, chosen at run time; a portable loop elsewhere; int16 multiplies
///   both digits), scaled once per block: `acc += f32(Σ q_w·q_x)·(d·dx)`; the offset of q4_1 (and q4_0's
///   −8) is `bias += m·xs`. All kernel paths give bitwise the same results (`QuantKernel`); the kernel
///   prefetches the weights 4 KiB ahead, as decode streams the whole model from memory.
///   Error: the product is exact for the dequantized weights and the dequantized `x̂ = dx·q` (up to f32
///   rounding), and quantizing moves each `x_i` by at most `dx_b / 2` (`max|x_b| / 254` for int8,
///   `max|x_b| / 32512` for int16), so the result differs from the exact product with the dequantized
///   weights by at most `Σ_b dx_b/2 · Σ_{i∈b} |w_i|` plus f32 rounding. With int8 this is llama.cpp's
///   error (its decode quantizes activations to q8_0/q8_1 the same way); on SmolLM2-135M it moves decode
///   logits by ~0.6 (up to 1.4), against ~0.006 (up to 0.014) with int16. (Swift's SIMD types cannot
///   express the widening multiply-add: an all-Swift float path ran at a third of the speed; see the
///   history of this file.)
///
/// Every `y[o]` is reduced in this fixed order whatever the number of threads or rows processed
/// together, so results are bitwise independent of the thread count, `matVecRows` gives bitwise the
/// same values as `matVec` on each row, and `matVecShared` the same values as one `matVec` per weight.
/// Threads take contiguous ranges of output rows.

import LoRAKitKernelsC

// MARK: - Public API

/// The paths of the quantized-weight kernel. `.auto` is the fastest path the CPU supports, or the one
/// named by the environment variable `LORAKIT_QDOT` (`scalar`, `avx2`, `avxvnni`, `avx512vnni`) when
/// that one is supported. The others force a path (for tests and benchmarks); forcing an unsupported
/// path runs the scalar code. Every path gives bitwise the same results.
public enum QuantKernel: Int32, CaseIterable, Sendable, CustomStringConvertible {
    case auto = 0
    /// Portable C (the reference the others reproduce).
    case scalar = 1
    /// x86_64 AVX2: `vpmaddubsw` + `vpmaddwd`.
    case avx2 = 2
    /// x86_64 AVX-VNNI: `vpdpbusd` (VEX).
    case avxVNNI = 3
    /// x86_64 AVX512-VNNI + AVX512VL: `vpdpbusd` on 256-bit registers (EVEX).
    case avx512VNNI = 4

    /// Whether this path is compiled in and the CPU supports it.
    public var isSupported: Bool { lk_qdot_path_supported(rawValue) != 0 }
    /// The path `.auto` stands for.
    public static var resolvedDefault: QuantKernel { QuantKernel(rawValue: lk_qdot_default_path()) ?? .scalar }
    public var description: String { String(cString: lk_qdot_path_name(rawValue)) }
}

/// How `x` is quantized for the integer products with quantized weights (plain weights ignore it).
public enum ActivationQuantization: Sendable, CustomStringConvertible {
    /// int8 per 32-value block (llama.cpp's q8_1: `|q| ≤ 127`): error up to `max|x_b|/254` per value.
    /// The fastest.
    case int8
    /// 16-bit per 32-value block (`|q| ≤ 16256 = 127·128`, multiplied as two int8 digits): error up to
    /// `max|x_b|/32512` per value, 128× smaller than `.int8`, for about 1.2–1.3× the integer work (which
    /// matters little when the weights stream from memory).
    case int16

    public var description: String { self == .int8 ? "int8" : "int16" }
}

/// `y[o] = Σ_i weight[o][i] · x[i]` for `weight` of shape `[out, in]` (any dtype), `x` of `in` floats and
/// `y` of `out` floats. Plain-dtype weights may be row-strided views (`strides[1] == 1`).
public func matVec(weight: Tensor, x: UnsafePointer<Float>, y: UnsafeMutablePointer<Float>,
                   pool: ThreadPool, activations: ActivationQuantization = .int16,
                   kernel: QuantKernel = .auto) throws(LKError) {
    try matVecRows(weight: weight, x: x, rows: 1, ldx: weight.shape.last ?? 0, y: y,
                   ldy: weight.shape.first ?? 0, pool: pool, activations: activations, kernel: kernel)
}

/// `y[r·ldy + o] = Σ_i weight[o][i] · x[r·ldx + i]` for `rows` activation rows (meant for 2–11, e.g. a
/// few tokens of speculative decoding or a decode step of a small batch). Weights are read once for up
/// to 8 rows (larger `rows` are processed 8 at a time): plain dtypes by `dotRowMulti`; quantized ones by
/// the C multi-row kernels, which unpack each weight block once for all rows — `lk_qdot_rows_x16` (x as
/// int16: `vpmaddwd` with AVX2, `vpdpwssd` on 512-bit registers with AVX512-VNNI, two weight rows per
/// pass) and, for int8 activations on AVX512-VNNI, `lk_qdot_rows_multi` (`vpdpbusd`); other paths run the
/// one-row kernel per row. Row `r` of the result is bitwise equal to `matVec` on row `r` of `x`.
public func matVecRows(weight: Tensor, x: UnsafePointer<Float>, rows: Int, ldx: Int,
                       y: UnsafeMutablePointer<Float>, ldy: Int, pool: ThreadPool,
                       activations: ActivationQuantization = .int16, kernel: QuantKernel = .auto) throws(LKError) {
    guard rows >= 0 else { throw .invalidArgument("matVec: negative row count \(rows)") }
    let seg = try segment(weight, start: 0, y: y, ldy: ldy, what: "matVec")
    if rows > 1 {
        guard ldx >= seg.inner else { throw .invalidArgument("matVec: ldx \(ldx) < in \(seg.inner)") }
        guard ldy >= seg.out else { throw .invalidArgument("matVec: ldy \(ldy) < out \(seg.out)") }
    }
    if rows == 0 || seg.out == 0 { return }
    withUnsafeTemporaryAllocation(of: Segment.self, capacity: 1) { buf in
        buf.baseAddress!.initialize(to: seg)
        let segs = UnsafeBufferPointer(buf)
        var r0 = 0
        while r0 < rows {
            let nr = min(8, rows - r0)
            run(segs, dtype: seg.dtype, inner: seg.inner, x: x + r0 * ldx, ldx: ldx, nr: nr, row0: r0,
                pool: pool, activations: activations, kernel: kernel)
            r0 += nr
        }
    }
}

/// `ys[j][o] = Σ_i weights[j][o][i] · x[i]` for several weights that read the same `x` (e.g. the q, k and
/// v projections of one token): one hand-out to the thread pool for all of them (threads take
/// contiguous ranges of the concatenated output rows) and, for quantized weights, `x` quantized once.
/// Each `ys[j]` is bitwise equal to `matVec(weight: weights[j], ...)`. The weights need the same `in`;
/// if they mix plain and quantized dtypes, or different plain dtypes, they are computed one by one.
public func matVecShared(weights: [Tensor], x: UnsafePointer<Float>, ys: [UnsafeMutablePointer<Float>],
                         pool: ThreadPool, activations: ActivationQuantization = .int16,
                         kernel: QuantKernel = .auto) throws(LKError) {
    try matVecRowsShared(weights: weights, x: x, rows: 1, ldx: weights.first?.shape.last ?? 0, ys: ys,
                         pool: pool, activations: activations, kernel: kernel)
}

/// `ys[j][r·out_j + o] = Σ_i weights[j][o][i] · x[r·ldx + i]` for several weights that read the same
/// `rows` activation rows (e.g. the q, k and v projections of a few tokens; `out_j` = `weights[j].shape[0]`,
/// so each `ys[j]` is a contiguous `[rows, out_j]`): `matVecRows` for all weights at once — one hand-out
/// to the thread pool per 8 rows and, for quantized weights, each x row quantized once for all of them.
/// Row `r` of each `ys[j]` is bitwise equal to `matVec(weight: weights[j], ...)` on row `r` of `x`. The
/// weights need the same `in`; if they mix plain and quantized dtypes, or different plain dtypes, they
/// are computed one by one.
public func matVecRowsShared(weights: [Tensor], x: UnsafePointer<Float>, rows: Int, ldx: Int,
                             ys: [UnsafeMutablePointer<Float>], pool: ThreadPool,
                             activations: ActivationQuantization = .int16, kernel: QuantKernel = .auto) throws(LKError) {
    guard weights.count == ys.count else {
        throw .invalidArgument("matVecRowsShared: \(weights.count) weights but \(ys.count) outputs")
    }
    guard rows >= 0 else { throw .invalidArgument("matVecRowsShared: negative row count \(rows)") }
    guard let first = weights.first else { return }
    var segs: [Segment] = []
    segs.reserveCapacity(weights.count)
    var start = 0
    for (j, w) in weights.enumerated() {
        let s = try segment(w, start: start, y: ys[j], ldy: w.shape.first ?? 0, what: "matVecRowsShared: weight \(j)")
        guard s.inner == segs.first?.inner ?? s.inner else {
            throw .shapeMismatch("matVecRowsShared: weight \(j) has \(s.inner) inputs, weight 0 has \(segs[0].inner)")
        }
        segs.append(s)
        start += s.out
    }
    if rows > 1 {
        guard ldx >= segs[0].inner else { throw .invalidArgument("matVecRowsShared: ldx \(ldx) < in \(segs[0].inner)") }
    }
    let quantized = first.dtype.isQuantized
    if !segs.allSatisfy({ $0.dtype.isQuantized == quantized && (quantized || $0.dtype == first.dtype) }) {
        for (j, w) in weights.enumerated() {
            try matVecRows(weight: w, x: x, rows: rows, ldx: ldx, y: ys[j], ldy: w.shape[0], pool: pool,
                           activations: activations, kernel: kernel)
        }
        return
    }
    if start == 0 || rows == 0 { return }
    segs.withUnsafeBufferPointer { b in
        var r0 = 0
        while r0 < rows {
            let nr = min(8, rows - r0)
            run(b, dtype: first.dtype, inner: segs[0].inner, x: x + r0 * ldx, ldx: ldx, nr: nr, row0: r0,
                pool: pool, activations: activations, kernel: kernel)
            r0 += nr
        }
    }
}

// MARK: - Segments

/// One weight's rows within the concatenated output rows of a call: rows `start ..< start + out`; the
/// result of x row r goes to `y + r·ldy`.
private struct Segment {
    var w: UnsafeRawPointer
    var rowStride: Int      // bytes between weight rows
    var out: Int
    var inner: Int
    var start: Int
    var y: UnsafeMutablePointer<Float>
    var ldy: Int
    var dtype: DType
}

/// Validate a weight for the mat-vec kernels.
private func segment(_ weight: Tensor, start: Int, y: UnsafeMutablePointer<Float>, ldy: Int,
                     what: String) throws(LKError) -> Segment {
    guard weight.rank == 2 else {
        throw .shapeMismatch("\(what): weight must have shape [out, in], got \(weight.shape)")
    }
    let out = weight.shape[0], inner = weight.shape[1]
    let dtype = weight.dtype
    guard inner % dtype.blockSize == 0 else {
        throw .shapeMismatch("\(what): weight row length \(inner) is not a multiple of the \(dtype) block size \(dtype.blockSize)")
    }
    let rowStride: Int
    if dtype.isQuantized {
        rowStride = try dtype.rowBytes(inner)
    } else {
        guard inner <= 1 || weight.strides[1] == 1 else {
            throw .unsupported("\(what): weight rows must be contiguous (strides \(weight.strides))")
        }
        rowStride = weight.strides[0] * dtype.blockBytes
    }
    return Segment(w: UnsafeRawPointer(weight.rawPointer), rowStride: rowStride, out: out, inner: inner,
                   start: start, y: y, ldy: ldy, dtype: dtype)
}

/// `body(segment, rows)` for the part of `range` (of the concatenated rows) in each segment, with
/// `rows` relative to the segment.
@inline(__always)
private func forEachPiece(_ segs: UnsafeBufferPointer<Segment>, _ range: Range<Int>,
                          _ body: (Segment, Range<Int>) -> Void) {
    for s in segs {
        let lo = max(range.lowerBound, s.start), hi = min(range.upperBound, s.start + s.out)
        if lo < hi { body(s, (lo - s.start)..<(hi - s.start)) }
    }
}

/// `nr` ≤ 8 x rows (`ldx` apart; rows `row0 ..< row0 + nr` of the call) against all segments (one dtype
/// family: all quantized, or all the same plain dtype); results of x row r go to
/// `segment.y + (row0 + r)·segment.ldy`.
private func run(_ segs: UnsafeBufferPointer<Segment>, dtype: DType, inner: Int, x: UnsafePointer<Float>,
                 ldx: Int, nr: Int, row0: Int, pool: ThreadPool, activations: ActivationQuantization,
                 kernel: QuantKernel) {
    switch dtype {
    case .f32: mvFloat(F32Row.self, segs, inner, x, ldx, nr, row0, pool)
    case .f16: mvFloat(F16Row.self, segs, inner, x, ldx, nr, row0, pool)
    case .bf16: mvFloat(BF16Row.self, segs, inner, x, ldx, nr, row0, pool)
    case .q8_0, .q4_0, .q4_1: mvQuant(segs, inner, x, ldx, nr, row0, pool, kernel, activations)
    }
}

// MARK: - Threading

/// Participants to use: about one per 64 KiB of weights (a job costs a few microseconds to hand out).
@inline(__always)
private func mvTasks(_ weightBytes: Int, _ out: Int, _ pool: ThreadPool) -> Int {
    max(1, min(pool.activeCount, weightBytes / 65536, (out + 3) / 4))
}

/// Total output rows and weight bytes of the segments.
@inline(__always)
private func totals(_ segs: UnsafeBufferPointer<Segment>) -> (rows: Int, bytes: Int) {
    var rows = 0, bytes = 0
    for s in segs {
        rows += s.out
        bytes += s.out * s.rowStride
    }
    return (rows, bytes)
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

/// How a row of float-like values (f32, f16, bf16) is read as f32: the float weights of the mat-vec and
/// the keys and values of an f16 KV cache (OpsAttention.swift).
protocol FloatRow {
    static var elementBytes: Int { get }
    /// Eight weights starting at element `i` of row `p`, as f32.
    static func load8(_ p: UnsafeRawPointer, _ i: Int) -> SIMD8<Float>
    static func load1(_ p: UnsafeRawPointer, _ i: Int) -> Float
}

enum F32Row: FloatRow {
    static var elementBytes: Int { 4 }
    @inline(__always) static func load8(_ p: UnsafeRawPointer, _ i: Int) -> SIMD8<Float> {
        p.loadUnaligned(fromByteOffset: i * 4, as: SIMD8<Float>.self)
    }
    @inline(__always) static func load1(_ p: UnsafeRawPointer, _ i: Int) -> Float {
        p.loadUnaligned(fromByteOffset: i * 4, as: Float.self)
    }
}

enum F16Row: FloatRow {
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

private func mvFloat<R: FloatRow>(_ kind: R.Type, _ segs: UnsafeBufferPointer<Segment>, _ n: Int,
                                  _ x: UnsafePointer<Float>, _ ldx: Int, _ nr: Int, _ row0: Int,
                                  _ pool: ThreadPool) {
    let total = totals(segs).rows
    let tasks = mvTasks(total * n * R.elementBytes * nr, total, pool)
    pool.run(maxTasks: tasks) { idx, cnt in
        let range = partition(total, index: idx, count: cnt, align: 4)
        if range.isEmpty { return }
        forEachPiece(segs, range) { s, rows in
            let w = s.w, rs = s.rowStride, y = s.y + row0 * s.ldy, ldy = s.ldy
            if nr == 1 {
                var o = rows.lowerBound
                while o + 4 <= rows.upperBound {
                    dotRows4(kind, w + o * rs, rs, n, x, y + o)
                    o += 4
                }
                while o < rows.upperBound {
                    y[o] = dotRow(kind, w + o * rs, n, x)
                    o += 1
                }
            } else {
                withUnsafeTemporaryAllocation(of: SIMD8<Float>.self, capacity: 16) { buf in
                    let acc = buf.baseAddress!
                    for o in rows {
                        dotRowMulti(kind, w + o * rs, n, x, ldx, nr, y + o, ldy, acc)
                    }
                }
            }
        }
    }
}

// MARK: - Quantized weights

/// The C kernel's weight type code.
@inline(__always)
private func qdotType(_ d: DType) -> Int32 {
    switch d {
    case .q8_0: return 0
    case .q4_0: return 1
    default: return 2
    }
}

private func mvQuant(_ segs: UnsafeBufferPointer<Segment>, _ n: Int, _ x: UnsafePointer<Float>, _ ldx: Int,
                     _ nr: Int, _ row0: Int, _ pool: ThreadPool, _ kernel: QuantKernel,
                     _ activations: ActivationQuantization) {
    // Integer path (C kernel): each x row is quantized once per call (block pairs of 64 int8 digits, or
    // 128 for int16 as two digits, and 4 floats; see lk_qdot.h); each weight block is multiplied in
    // integers and scaled once. Rows are split between threads; every row gets the same arithmetic, so
    // results do not depend on the split.
    let nb = n / 32, np = (nb + 1) / 2
    let wide: Int32 = activations == .int16 ? 1 : 0
    let xqStride = wide == 1 ? 128 : 64
    let (total, bytes) = totals(segs)
    let path = kernel.rawValue
    let tasks = mvTasks(bytes * nr, total, pool)
    // Several x rows: each weight block unpacked once for all of them (same results). With int16
    // activations (and on AVX2 with either), the x16 kernel: x as int16, no digit split; int8 activations
    // on AVX512-VNNI keep the two-rows-per-register vpdpbusd kernel (half the multiplies of int16).
    let multi8 = nr > 1 && lk_qdot_multi_supported(path) != 0
    if nr > 1 && lk_qdot_x16_supported(path) != 0 && (wide == 1 || !multi8) {
        let npx = (nr + 1) / 2
        withUnsafeTemporaryAllocation(of: Int16.self, capacity: max(1, npx * np * 128)) { xiBuf in
            withUnsafeTemporaryAllocation(of: Float.self, capacity: max(1, npx * np * 16 + np * 16)) { fBuf in
                let xi = xiBuf.baseAddress!, xd = fBuf.baseAddress!, xs = xd + npx * np * 16
                lk_quantize_x16(path, wide, x, Int64(ldx), Int64(nr), Int64(nb), xi, xd, xs)
                pool.run(maxTasks: tasks) { idx, cnt in
                    let range = partition(total, index: idx, count: cnt, align: 4)
                    if range.isEmpty { return }
                    forEachPiece(segs, range) { s, rows in
                        lk_qdot_rows_x16(path, qdotType(s.dtype), s.w + rows.lowerBound * s.rowStride, s.rowStride,
                                         Int64(rows.count), Int64(nb), xi, xd, xs, Int64(nr),
                                         s.y + row0 * s.ldy + rows.lowerBound, Int64(s.ldy))
                    }
                }
            }
        }
        return
    }
    withUnsafeTemporaryAllocation(of: Int8.self, capacity: max(1, nr * np * xqStride)) { xqBuf in
        withUnsafeTemporaryAllocation(of: Float.self, capacity: max(1, nr * np * 4)) { xfBuf in
            let xq = xqBuf.baseAddress!, xf = xfBuf.baseAddress!
            for r in 0..<nr {
                lk_quantize_x8(path, wide, x + r * ldx, Int64(nb), xq + r * np * xqStride, xf + r * np * 4)
            }
            if multi8 {
                let npx = (nr + 1) / 2
                withUnsafeTemporaryAllocation(of: Int8.self, capacity: max(1, npx * np * 2 * xqStride)) { xiBuf in
                    withUnsafeTemporaryAllocation(of: Float.self, capacity: max(1, npx * np * 8)) { xfiBuf in
                        let xi = xiBuf.baseAddress!, xfi = xfiBuf.baseAddress!
                        lk_qdot_interleave(wide, xq, xf, Int64(nr), Int64(nb), xi, xfi)
                        pool.run(maxTasks: tasks) { idx, cnt in
                            let range = partition(total, index: idx, count: cnt, align: 4)
                            if range.isEmpty { return }
                            forEachPiece(segs, range) { s, rows in
                                let w = s.w + rows.lowerBound * s.rowStride
                                lk_qdot_rows_multi(path, wide, qdotType(s.dtype), w, s.rowStride, Int64(rows.count),
                                                   Int64(nb), xi, xfi, Int64(nr), s.y + row0 * s.ldy + rows.lowerBound,
                                                   Int64(s.ldy))
                            }
                        }
                    }
                }
                return
            }
            pool.run(maxTasks: tasks) { idx, cnt in
                let range = partition(total, index: idx, count: cnt, align: 4)
                if range.isEmpty { return }
                forEachPiece(segs, range) { s, rows in
                    let w = s.w + rows.lowerBound * s.rowStride, type = qdotType(s.dtype)
                    for r in 0..<nr {
                        lk_qdot_rows(path, wide, type, w, s.rowStride, Int64(rows.count), Int64(nb),
                                     xq + r * np * xqStride, xf + r * np * 4,
                                     s.y + (row0 + r) * s.ldy + rows.lowerBound)
                    }
                }
            }
        }
    }
}
