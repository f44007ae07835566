// Placeholder until the quantization branch lands (replaced by Quantize.swift).
extension Tensor {
    public func converted(to dtype: DType) throws(LKError) -> Tensor {
        guard dtype == .f32 || dtype == self.dtype else { throw .unsupported("conversion to \(dtype)") }
        if dtype == self.dtype { return self }
        let t = try Tensor(zeros: shape, dtype: .f32)
        convertRowsToF32(src: rawPointer, dtype: self.dtype, rows: rows, cols: cols, dst: t.f32)
        return t
    }
}
