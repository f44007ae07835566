import LoRAKitCore

/// f32 → storage dtype conversion (quantization), and `Tensor` conversions between dtypes.
///
/// The quantized formats are byte-identical to ggml's reference quantizers (`quantize_row_q8_0_ref`,
/// `quantize_row_q4_0_ref`, `quantize_row_q4_1_ref` in ggml-quants.c) and to the Python `gguf` package
/// (`gguf.quants.quantize`, gguf-py 0.19); `Tests/LoRAKitTests/Fixtures/quant` holds bytes written by
/// gguf-py and `QuantTests` checks equality. Per 32-value block, all arithmetic in f32:
/// - q8_0: `d = max|x| / 127`, `id = d == 0 ? 0 : 1/d`, `q = round(x·id)` with ties away from zero (C
///   `roundf`, gguf-py `np_roundf`); stores `f16(d)` (round to nearest even) and the int8 `q`.
/// - q4_0: `max` is the value of largest magnitude (the first one on equal magnitudes), `d = max / −8`,
///   `q = min(15, trunc(x·id + 8.5))`; stores `f16(d)`, low nibbles values 0..15, high nibbles 16..31.
/// - q4_1: `d = (max − min) / 15`, `q = min(15, trunc((x − min)·id + 0.5))`; stores `f16(d)`, `f16(min)`.
///
/// Where ggml and gguf-py could disagree we follow gguf-py: `x·id + 8.5` and `(x − min)·id + 0.5` are a
/// rounded multiply followed by a rounded add, never a fused multiply-add (ggml's C, when built with
/// `-ffp-contract=fast` for an FMA target, may contract them and then differ on rare exact ties). The same
/// holds for dequantizing q4_1 (`d·q + m`, see `dequantize`). Non-finite inputs to the quantized formats
/// give unspecified (but non-trapping) codes.

/// Quantize (or convert) `count` f32 values at `src` to `dtype` at `dst`. `count` must be a multiple of
/// `dtype.blockSize` (a trailing partial block is ignored); `dst` needs `count / blockSize · blockBytes`
/// bytes. f16 and bf16 round to nearest even (bf16 keeps NaN a quiet NaN), f32 is copied.
public func quantize(_ src: UnsafePointer<Float>, count: Int, dtype: DType, into dst: UnsafeMutableRawPointer) {
    guard count > 0 else { return }
    switch dtype {
    case .f32:
        dst.copyMemory(from: src, byteCount: count * 4)
    case .f16:
        let d = dst.assumingMemoryBound(to: UInt16.self)
        var i = 0
        while i + 8 <= count {
            // SIMD8<Float> → SIMD8<Float16> is a vcvtps2ph (round to nearest even) on F16C hardware.
            let f = UnsafeRawPointer(src + i).loadUnaligned(as: SIMD8<Float>.self)
            let h = SIMD8<Float16>(f)
            UnsafeMutableRawPointer(d + i).storeBytes(of: unsafeBitCast(h, to: SIMD8<UInt16>.self), as: SIMD8<UInt16>.self)
            i += 8
        }
        while i < count { d[i] = floatToHalf(src[i]); i += 1 }
    case .bf16:
        let d = dst.assumingMemoryBound(to: UInt16.self)
        for i in 0..<count { d[i] = floatToBF16(src[i]) }
    case .q8_0:
        for b in 0..<count / 32 { quantizeBlockQ8_0(src + b * 32, dst + b * 34) }
    case .q4_0:
        for b in 0..<count / 32 { quantizeBlockQ4_0(src + b * 32, dst + b * 18) }
    case .q4_1:
        for b in 0..<count / 32 { quantizeBlockQ4_1(src + b * 32, dst + b * 20) }
    }
}

/// `Int32(v)` for a value already known to be in a small range; NaN (impossible for finite blocks) maps
/// to `nanValue` instead of trapping.
@inline(__always)
private func toInt(_ v: Float, lo: Float, hi: Float, nanValue: Int32) -> Int32 {
    if v.isNaN { return nanValue }
    return Int32(Swift.min(Swift.max(v, lo), hi))
}

@inline(__always)
private func quantizeBlockQ8_0(_ x: UnsafePointer<Float>, _ out: UnsafeMutableRawPointer) {
    var amax: Float = 0
    for j in 0..<32 { amax = Swift.max(amax, abs(x[j])) }
    let d = amax / 127
    let id: Float = d == 0 ? 0 : 1 / d
    out.storeBytes(of: floatToHalf(d), toByteOffset: 0, as: UInt16.self)
    let q = (out + 2).assumingMemoryBound(to: Int8.self)
    for j in 0..<32 {
        // Ties away from zero, as C roundf / gguf's np_roundf.
        let r = (x[j] * id).rounded(.toNearestOrAwayFromZero)
        q[j] = Int8(truncatingIfNeeded: toInt(r, lo: -128, hi: 127, nanValue: 0))
    }
}

@inline(__always)
private func quantizeBlockQ4_0(_ x: UnsafePointer<Float>, _ out: UnsafeMutableRawPointer) {
    var amax: Float = 0
    var mx: Float = 0
    for j in 0..<32 where amax < abs(x[j]) {
        amax = abs(x[j])
        mx = x[j]
    }
    let d = mx / -8
    let id: Float = d == 0 ? 0 : 1 / d
    out.storeBytes(of: floatToHalf(d), toByteOffset: 0, as: UInt16.self)
    let qs = (out + 2).assumingMemoryBound(to: UInt8.self)
    for j in 0..<16 {
        // Separate multiply and add (no FMA), then truncation toward zero, as gguf-py.
        let p0 = x[j] * id, p1 = x[j + 16] * id
        let v0 = (p0 + 8.5).rounded(.towardZero)
        let v1 = (p1 + 8.5).rounded(.towardZero)
        let q0 = toInt(v0, lo: 0, hi: 15, nanValue: 0)
        let q1 = toInt(v1, lo: 0, hi: 15, nanValue: 0)
        qs[j] = UInt8(truncatingIfNeeded: q0 | (q1 << 4))
    }
}

@inline(__always)
private func quantizeBlockQ4_1(_ x: UnsafePointer<Float>, _ out: UnsafeMutableRawPointer) {
    var mn = x[0], mx = x[0]
    for j in 1..<32 {
        mn = Swift.min(mn, x[j])
        mx = Swift.max(mx, x[j])
    }
    let d = (mx - mn) / 15
    let id: Float = d == 0 ? 0 : 1 / d
    out.storeBytes(of: floatToHalf(d), toByteOffset: 0, as: UInt16.self)
    out.storeBytes(of: floatToHalf(mn), toByteOffset: 2, as: UInt16.self)
    let qs = (out + 4).assumingMemoryBound(to: UInt8.self)
    for j in 0..<16 {
        let p0 = (x[j] - mn) * id, p1 = (x[j + 16] - mn) * id
        let v0 = (p0 + 0.5).rounded(.towardZero)
        let v1 = (p1 + 0.5).rounded(.towardZero)
        let q0 = toInt(v0, lo: 0, hi: 15, nanValue: 0)
        let q1 = toInt(v1, lo: 0, hi: 15, nanValue: 0)
        qs[j] = UInt8(truncatingIfNeeded: q0 | (q1 << 4))
    }
}

extension Tensor {
    /// A new contiguous tensor with the same shape holding these values in `dtype` (through f32: the
    /// source is dequantized/converted to f32, then quantized/converted). Works on strided views of plain
    /// dtypes. Throws `.shapeMismatch` if the last dimension is not a multiple of `dtype.blockSize`.
    public func converted(to dtype: DType) throws(LKError) -> Tensor {
        let inner = shape.last ?? 1
        guard inner % dtype.blockSize == 0 else {
            throw .shapeMismatch("cannot convert tensor \(shape) to \(dtype): the last dimension \(inner) is not a multiple of the \(dtype) block size \(dtype.blockSize)")
        }
        let out = try Tensor(zeros: shape, dtype: dtype)
        let n = count
        if n == 0 { return out }
        if self.dtype == dtype && isContiguous {
            out.rawPointer.copyMemory(from: rawPointer, byteCount: out.byteCount)
            return out
        }
        let outRowBytes = try dtype.rowBytes(inner)
        if isContiguous || self.dtype.isQuantized {
            // Row by row through a one-row f32 buffer (no full-size f32 copy).
            let inRowBytes = try self.dtype.rowBytes(inner)
            let src = UnsafeRawPointer(rawPointer)
            var row = [Float](repeating: 0, count: inner)
            row.withUnsafeMutableBufferPointer { buf in
                let r = buf.baseAddress!
                for i in 0..<rows {
                    dequantize(src + i * inRowBytes, dtype: self.dtype, count: inner, into: r)
                    quantize(UnsafePointer(r), count: inner, dtype: dtype, into: out.rawPointer + i * outRowBytes)
                }
            }
        } else {
            let values = toFloats()
            values.withUnsafeBufferPointer { buf in
                quantize(buf.baseAddress!, count: n, dtype: dtype, into: out.rawPointer)
            }
        }
        return out
    }

    /// A contiguous tensor of `shape` in `dtype` holding `values` (row-major), quantized or converted from
    /// f32. Throws if `values.count` does not match the shape or the last dimension is not a multiple of
    /// the block size.
    public static func quantized(_ values: [Float], shape: [Int], dtype: DType) throws(LKError) -> Tensor {
        let n = try checkedProduct(shape, what: "tensor")
        guard n == values.count else {
            throw .shapeMismatch("\(values.count) values for shape \(shape) (\(n) elements)")
        }
        let inner = shape.last ?? 1
        guard inner % dtype.blockSize == 0 else {
            throw .shapeMismatch("cannot quantize shape \(shape) to \(dtype): the last dimension \(inner) is not a multiple of the \(dtype) block size \(dtype.blockSize)")
        }
        let out = try Tensor(zeros: shape, dtype: dtype)
        if n > 0 {
            values.withUnsafeBufferPointer { buf in
                quantize(buf.baseAddress!, count: n, dtype: dtype, into: out.rawPointer)
            }
        }
        return out
    }
}
