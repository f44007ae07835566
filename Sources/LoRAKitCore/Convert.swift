
/// Conversions between storage dtypes and f32.
///
/// `dequantize(_:dtype:count:into:)` converts `count` consecutive values starting at a block boundary
/// (`count` must be a multiple of the dtype's block size) into f32.

/// Convert `count` values of `dtype` at `src` (starting at a block boundary) to f32 at `dst`.
@inlinable
public func dequantize(_ src: UnsafeRawPointer, dtype: DType, count: Int, into dst: UnsafeMutablePointer<Float>) {
    switch dtype {
    case .f32:
        dst.update(from: src.assumingMemoryBound(to: Float.self), count: count)
    case .f16:
        let s = src.assumingMemoryBound(to: UInt16.self)
        var i = 0
        while i + 8 <= count {
            let h = UnsafeRawPointer(s + i).loadUnaligned(as: SIMD8<UInt16>.self)
            let f = SIMD8<Float>(unsafeBitCast(h, to: SIMD8<Float16>.self))
            UnsafeMutableRawPointer(dst + i).storeBytes(of: f, as: SIMD8<Float>.self)
            i += 8
        }
        while i < count { dst[i] = halfToFloat(s[i]); i += 1 }
    case .bf16:
        let s = src.assumingMemoryBound(to: UInt16.self)
        var i = 0
        while i + 8 <= count {
            let h = UnsafeRawPointer(s + i).loadUnaligned(as: SIMD8<UInt16>.self)
            let u = SIMD8<UInt32>(truncatingIfNeeded: h) &<< 16
            UnsafeMutableRawPointer(dst + i).storeBytes(of: unsafeBitCast(u, to: SIMD8<Float>.self), as: SIMD8<Float>.self)
            i += 8
        }
        while i < count { dst[i] = bf16ToFloat(s[i]); i += 1 }
    case .q8_0:
        let nb = count / 32
        for b in 0..<nb {
            let blk = src + b * 34
            let d = SIMD8<Float>(repeating: halfToFloat(blk.loadUnaligned(as: UInt16.self)))
            let o = dst + b * 32
            for g in 0..<4 {
                let q = (blk + 2 + g * 8).loadUnaligned(as: SIMD8<Int8>.self)
                let f = SIMD8<Float>(SIMD8<Int32>(truncatingIfNeeded: q)) * d
                UnsafeMutableRawPointer(o + g * 8).storeBytes(of: f, as: SIMD8<Float>.self)
            }
        }
    case .q4_0:
        let nb = count / 32
        for b in 0..<nb {
            let blk = src + b * 18
            let d = SIMD8<Float>(repeating: halfToFloat(blk.loadUnaligned(as: UInt16.self)))
            let o = dst + b * 32
            for g in 0..<2 {
                let q = SIMD8<Int32>(truncatingIfNeeded: (blk + 2 + g * 8).loadUnaligned(as: SIMD8<UInt8>.self))
                let lo = SIMD8<Float>((q & 0xF) &- 8) * d
                let hi = SIMD8<Float>((q &>> 4) &- 8) * d
                UnsafeMutableRawPointer(o + g * 8).storeBytes(of: lo, as: SIMD8<Float>.self)
                UnsafeMutableRawPointer(o + 16 + g * 8).storeBytes(of: hi, as: SIMD8<Float>.self)
            }
        }
    case .q4_1:
        let nb = count / 32
        for b in 0..<nb {
            let blk = src + b * 20
            let d = SIMD8<Float>(repeating: halfToFloat(blk.loadUnaligned(as: UInt16.self)))
            let m = SIMD8<Float>(repeating: halfToFloat((blk + 2).loadUnaligned(as: UInt16.self)))
            let o = dst + b * 32
            for g in 0..<2 {
                let q = SIMD8<Int32>(truncatingIfNeeded: (blk + 4 + g * 8).loadUnaligned(as: SIMD8<UInt8>.self))
                // d·q + m as a rounded multiply then a rounded add (no FMA), as gguf-py's dequantize.
                let lo = d * SIMD8<Float>(q & 0xF) + m
                let hi = d * SIMD8<Float>(q &>> 4) + m
                UnsafeMutableRawPointer(o + g * 8).storeBytes(of: lo, as: SIMD8<Float>.self)
                UnsafeMutableRawPointer(o + 16 + g * 8).storeBytes(of: hi, as: SIMD8<Float>.self)
            }
        }
    }
}

/// Convert `rows` contiguous rows of `cols` values each (row stride `dtype.rowBytes(cols)`) to f32.
public func convertRowsToF32(src: UnsafeRawPointer, dtype: DType, rows: Int, cols: Int, dst: UnsafeMutablePointer<Float>) {
    let rb = (cols / dtype.blockSize) * dtype.blockBytes
    for r in 0..<rows {
        dequantize(src + r * rb, dtype: dtype, count: cols, into: dst + r * cols)
    }
}
