/// Element types of tensors. Raw values are the C ABI's `lk_dtype` and, for the quantized types, equal
/// ggml's `ggml_type` numbering is NOT assumed: GGUF type ids are mapped in the GGUF reader.
///
/// Quantized types store blocks along the innermost (last, contiguous) dimension, byte-identical to ggml
/// (`ggml-common.h`), so a GGUF tensor is used in place:
/// - `q8_0`: 32 values per block, `{ f16 d; int8 qs[32]; }` (34 bytes), x = d·q.
/// - `q4_0`: 32 values per block, `{ f16 d; uint8 qs[16]; }` (18 bytes), low nibbles hold values 0..15,
///   high nibbles 16..31, x = d·(q − 8).
/// - `q4_1`: 32 values per block, `{ f16 d; f16 m; uint8 qs[16]; }` (20 bytes), x = d·q + m.
public enum DType: Int32, Sendable, CaseIterable, CustomStringConvertible {
    case f32 = 0
    case f16 = 1
    case bf16 = 2
    case q8_0 = 3
    case q4_0 = 4
    case q4_1 = 5

    /// Number of values in one block (1 for plain types).
    @inlinable public var blockSize: Int {
        switch self {
        case .f32, .f16, .bf16: return 1
        case .q8_0, .q4_0, .q4_1: return 32
        }
    }

    /// Bytes of one block (of one value for plain types).
    @inlinable public var blockBytes: Int {
        switch self {
        case .f32: return 4
        case .f16, .bf16: return 2
        case .q8_0: return 34
        case .q4_0: return 18
        case .q4_1: return 20
        }
    }

    @inlinable public var isQuantized: Bool { blockSize > 1 }

    public var description: String {
        switch self {
        case .f32: return "f32"
        case .f16: return "f16"
        case .bf16: return "bf16"
        case .q8_0: return "q8_0"
        case .q4_0: return "q4_0"
        case .q4_1: return "q4_1"
        }
    }

    public init?(name: String) {
        guard let t = DType.allCases.first(where: { $0.description == name.lowercased() }) else { return nil }
        self = t
    }

    /// Bytes needed for a row of `n` values; fails if `n` is not a multiple of the block size.
    public func rowBytes(_ n: Int) throws(LKError) -> Int {
        guard n >= 0 else { throw .invalidArgument("negative row length \(n)") }
        guard n % blockSize == 0 else {
            throw .shapeMismatch("row length \(n) is not a multiple of the \(self) block size \(blockSize)")
        }
        let (b, o) = (n / blockSize).multipliedReportingOverflow(by: blockBytes)
        guard !o else { throw .invalidArgument("row of \(n) \(self) values overflows") }
        return b
    }
}

// MARK: - Scalar conversions

/// IEEE half → float (exact). Uses the hardware conversion (F16C on x86_64, FCVT on arm64).
@inlinable @inline(__always)
public func halfToFloat(_ bits: UInt16) -> Float {
    Float(Float16(bitPattern: bits))
}

/// float → IEEE half, round to nearest even (as ggml's `GGML_FP32_TO_FP16`).
@inlinable @inline(__always)
public func floatToHalf(_ x: Float) -> UInt16 {
    Float16(x).bitPattern
}

/// bfloat16 → float (exact).
@inlinable @inline(__always)
public func bf16ToFloat(_ bits: UInt16) -> Float {
    Float(bitPattern: UInt32(bits) << 16)
}

/// float → bfloat16, round to nearest even; NaN stays a quiet NaN (as PyTorch and ggml do).
@inlinable @inline(__always)
public func floatToBF16(_ x: Float) -> UInt16 {
    let u = x.bitPattern
    if (u & 0x7fff_ffff) > 0x7f80_0000 { return UInt16(truncatingIfNeeded: (u >> 16) | 64) }
    let rounded = u &+ (0x7fff &+ ((u >> 16) & 1))
    return UInt16(truncatingIfNeeded: rounded >> 16)
}
