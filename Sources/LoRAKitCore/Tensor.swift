/// An n-dimensional array viewing a `Storage`.
///
/// Shapes are row-major and written outermost first, as in PyTorch: a weight `W` of a linear layer with
/// `in` inputs and `out` outputs has shape `[out, in]` and each row (one output feature) is contiguous.
/// (ggml writes the same tensor as `ne = [in, out]`.) Strides are in elements for plain dtypes. Tensors of
/// quantized dtypes are always contiguous, with blocks along the last dimension.
public struct Tensor: @unchecked Sendable {
    public let storage: Storage
    /// Byte offset of element 0 inside `storage`.
    public let offset: Int
    public let shape: [Int]
    /// Element strides (plain dtypes) — for quantized dtypes, the contiguous row-major strides in values.
    public let strides: [Int]
    public let dtype: DType

    /// A new zero-filled contiguous tensor.
    public init(zeros shape: [Int], dtype: DType = .f32) throws(LKError) {
        let bytes = try Tensor.byteCount(shape: shape, dtype: dtype)
        self.storage = try Storage(byteCount: bytes)
        self.offset = 0
        self.shape = shape
        self.strides = Tensor.contiguousStrides(shape)
        self.dtype = dtype
    }

    /// A contiguous f32 tensor holding `values`.
    public init(_ values: [Float], shape: [Int]) throws(LKError) {
        let n = try checkedProduct(shape, what: "tensor")
        guard n == values.count else {
            throw .shapeMismatch("\(values.count) values for shape \(shape) (\(n) elements)")
        }
        try self.init(zeros: shape, dtype: .f32)
        values.withUnsafeBytes { src in
            if let b = src.baseAddress { storage.base.copyMemory(from: b, byteCount: src.count) }
        }
    }

    /// View `storage` at `offset` as a contiguous tensor; validates that the bytes are inside.
    public init(storage: Storage, offset: Int, shape: [Int], dtype: DType) throws(LKError) {
        let bytes = try Tensor.byteCount(shape: shape, dtype: dtype)
        guard offset >= 0, offset <= storage.byteCount, bytes <= storage.byteCount - offset else {
            throw .format("tensor of \(bytes) bytes at offset \(offset) lies outside its storage of \(storage.byteCount) bytes")
        }
        self.storage = storage
        self.offset = offset
        self.shape = shape
        self.strides = Tensor.contiguousStrides(shape)
        self.dtype = dtype
    }

    /// A strided view (plain dtypes only). Validates that every addressed element is inside storage.
    public init(storage: Storage, offset: Int, shape: [Int], strides: [Int], dtype: DType) throws(LKError) {
        guard !dtype.isQuantized else { throw .unsupported("strided views of quantized tensors") }
        guard shape.count == strides.count else { throw .shapeMismatch("shape \(shape) vs strides \(strides)") }
        let n = try checkedProduct(shape, what: "tensor view")
        if n > 0 {
            var lo = 0, hi = 0
            for (d, s) in zip(shape, strides) {
                let (span, o) = (d - 1).multipliedReportingOverflow(by: s)
                guard !o else { throw .invalidArgument("stride overflow") }
                if span < 0 { lo += span } else { hi += span }
            }
            let es = dtype.blockBytes
            guard offset >= 0, offset + lo * es >= 0, offset + (hi + 1) * es <= storage.byteCount else {
                throw .invalidArgument("strided view \(shape)/\(strides) at \(offset) lies outside storage of \(storage.byteCount) bytes")
            }
        }
        self.storage = storage
        self.offset = offset
        self.shape = shape
        self.strides = strides
        self.dtype = dtype
    }

    public static func contiguousStrides(_ shape: [Int]) -> [Int] {
        var s = [Int](repeating: 1, count: shape.count)
        var acc = 1
        for i in stride(from: shape.count - 1, through: 0, by: -1) {
            s[i] = acc
            acc &*= shape[i]
        }
        return s
    }

    /// Bytes of a contiguous tensor of this shape and dtype (checks block alignment and overflow).
    public static func byteCount(shape: [Int], dtype: DType) throws(LKError) -> Int {
        let n = try checkedProduct(shape, what: "tensor")
        if shape.isEmpty { return dtype.blockBytes }
        let inner = shape[shape.count - 1]
        let rows = inner == 0 ? 0 : n / inner
        let rb = try dtype.rowBytes(inner)
        let (b, o) = rows.multipliedReportingOverflow(by: rb)
        guard !o else { throw .invalidArgument("tensor \(shape) \(dtype) overflows") }
        return b
    }

    public var count: Int { shape.reduce(1, *) }
    public var rank: Int { shape.count }
    public var isContiguous: Bool { strides == Tensor.contiguousStrides(shape) }
    public var byteCount: Int { (try? Tensor.byteCount(shape: shape, dtype: dtype)) ?? 0 }

    /// Pointer to element 0.
    @inlinable public var rawPointer: UnsafeMutableRawPointer { storage.base + offset }

    /// Typed pointer to f32 data (caller must know `dtype == .f32`).
    @inlinable public var f32: UnsafeMutablePointer<Float> { rawPointer.assumingMemoryBound(to: Float.self) }

    /// Number of rows when viewed as a matrix `[rows, shape.last]`.
    public var rows: Int { shape.isEmpty ? 1 : (shape.last! == 0 ? 0 : count / shape.last!) }
    public var cols: Int { shape.last ?? 1 }

    /// Values as f32 (dequantizing/converting as needed). For tests and small tensors.
    public func toFloats() -> [Float] {
        let n = count
        var out = [Float](repeating: 0, count: n)
        if n == 0 { return out }
        if isContiguous || dtype.isQuantized {
            out.withUnsafeMutableBufferPointer { dst in
                convertRowsToF32(src: rawPointer, dtype: dtype, rows: rows, cols: cols, dst: dst.baseAddress!)
            }
            return out
        }
        // Strided plain view: walk indices.
        var idx = [Int](repeating: 0, count: rank)
        for i in 0..<n {
            var off = 0
            for d in 0..<rank { off += idx[d] * strides[d] }
            out[i] = loadElement(rawPointer, dtype: dtype, index: off)
            var d = rank - 1
            while d >= 0 {
                idx[d] += 1
                if idx[d] < shape[d] { break }
                idx[d] = 0
                d -= 1
            }
        }
        return out
    }
}

@inlinable @inline(__always)
func loadElement(_ p: UnsafeRawPointer, dtype: DType, index: Int) -> Float {
    switch dtype {
    case .f32: return p.load(fromByteOffset: index * 4, as: Float.self)
    case .f16: return halfToFloat(p.load(fromByteOffset: index * 2, as: UInt16.self))
    case .bf16: return bf16ToFloat(p.load(fromByteOffset: index * 2, as: UInt16.self))
    default: return .nan
    }
}
