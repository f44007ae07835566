import LoRAKitCore

/// Matrix products on tensors: validation and routing to the right kernel.
///
/// Shape legend: M = rows of activations (tokens), K = input features, N = output features.
public enum Linear {
    /// `out[M, N] = x[M, K] · wᵀ` (`transposeWeight`, w is `[N, K]`: the forward of a linear layer) or
    /// `out[M, N] = x[M, K] · w` (w is `[K, N]`: e.g. the input gradient `dY · W`).
    /// `x` and `out` are contiguous f32 matrices; `w` is a contiguous 2-D tensor of any dtype.
    public static func matmul(x: Tensor, weight w: Tensor, transposeWeight: Bool, out: Tensor,
                              pool: ThreadPool) throws(LKError) {
        guard x.dtype == .f32, out.dtype == .f32 else {
            throw .unsupported("x and out must be f32 (got \(x.dtype), \(out.dtype))")
        }
        guard x.rank == 2, w.rank == 2, out.rank == 2 else {
            throw .shapeMismatch("x \(x.shape), w \(w.shape) and out \(out.shape) must be 2-D")
        }
        guard x.isContiguous, out.isContiguous, w.isContiguous else {
            throw .unsupported("matmul needs contiguous tensors")
        }
        let m = x.shape[0], k = x.shape[1]
        let (wk, n) = transposeWeight ? (w.shape[1], w.shape[0]) : (w.shape[0], w.shape[1])
        guard wk == k else {
            throw .shapeMismatch("x is [\(m), \(k)] but w\(transposeWeight ? "ᵀ" : "") is [\(wk), \(n)]")
        }
        guard out.shape == [m, n] else {
            throw .shapeMismatch("out is \(out.shape), expected [\(m), \(n)]")
        }
        try GEMM.multiply(m: m, n: n, k: k, a: GEMMLeft(UnsafePointer(x.f32), rowStride: k),
                          b: .weight(w, transposed: transposeWeight),
                          c: out.f32, ldc: n, pool: pool)
    }

    /// The forward of a linear layer on raw rows: `y[T, N] = x[T, K] · Wᵀ` for a weight `[N, K]` of any
    /// dtype. One row goes to the memory-bound mat-vec kernel, a few rows to the multi-row mat-vec (each
    /// weight block read once for up to 8 rows), more rows to the packed GEMM (which dequantizes panels).
    /// `activations`: how the mat-vec kernels quantize x for quantized weights (the GEMM computes in f32).
    /// - x: [T, K] contiguous; y: [T, N] contiguous (overwritten).
    public static func forward(x: UnsafePointer<Float>, rows: Int, weight w: Tensor, y: UnsafeMutablePointer<Float>,
                               pool: ThreadPool, activations: ActivationQuantization = .int16) throws(LKError) {
        guard w.rank == 2 else { throw .shapeMismatch("linear: weight must be 2-D, got \(w.shape)") }
        let n = w.shape[0], k = w.shape[1]
        if rows == 1 {
            try matVec(weight: w, x: x, y: y, pool: pool, activations: activations)
        } else if rows < smallRowLimit {
            try matVecRows(weight: w, x: x, rows: rows, ldx: k, y: y, ldy: n, pool: pool, activations: activations)
        } else {
            try GEMM.multiply(m: rows, n: n, k: k, a: GEMMLeft(x, rowStride: k),
                              b: .weight(w, transposed: true),
                              c: y, ldc: n, pool: pool)
        }
    }

    /// The forwards of several linear layers on the same input (e.g. the q, k and v projections):
    /// `ys[j][T, N_j] = x[T, K] · weights[j]ᵀ`. One row goes to `matVecShared` and a few rows (below
    /// `smallRowLimit`) to `matVecRowsShared` (one hand-out to the thread pool for all weights, each x row
    /// quantized once for quantized weights); more rows to `forward` per weight. Each `ys[j]` is bitwise
    /// equal to `forward(x:rows:weight: weights[j] ...)`.
    public static func forwardShared(x: UnsafePointer<Float>, rows: Int, weights: [Tensor],
                                     ys: [UnsafeMutablePointer<Float>], pool: ThreadPool,
                                     activations: ActivationQuantization = .int16) throws(LKError) {
        guard weights.count == ys.count else {
            throw .invalidArgument("linear: \(weights.count) weights but \(ys.count) outputs")
        }
        if rows == 1 {
            try matVecShared(weights: weights, x: x, ys: ys, pool: pool, activations: activations)
        } else if rows > 1 && rows < smallRowLimit && weights.allSatisfy({ $0.rank == 2 }) {
            try matVecRowsShared(weights: weights, x: x, rows: rows, ldx: weights.first?.shape[1] ?? 0, ys: ys,
                                 pool: pool, activations: activations)
        } else {
            for (w, y) in zip(weights, ys) {
                try forward(x: x, rows: rows, weight: w, y: y, pool: pool, activations: activations)
            }
        }
    }

    /// Below this many rows the mat-vec kernels beat the GEMM (no packing of the weight panels).
    public static let smallRowLimit = 12
}
