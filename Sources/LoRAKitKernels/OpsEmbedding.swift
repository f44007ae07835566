import LoRAKitCore

/// Token embedding lookup and its backward (see the shape legend in Ops.swift).

extension Ops {
    static func checkIds(_ ids: UnsafePointer<Int32>, rows: Int, vocab: Int, _ what: String) throws(LKError) {
        for t in 0..<rows where ids[t] < 0 || Int(ids[t]) >= vocab {
            throw .invalidArgument("\(what): token id \(ids[t]) at row \(t) is outside the vocabulary of \(vocab)")
        }
    }

    /// out[t] = table[ids[t]] converted to f32.
    /// - table: [V, C] in `dtype` (f32/f16/bf16/q8_0/q4_0/q4_1; rows of `dtype.rowBytes(C)` bytes; C must be
    ///   a multiple of the block size); ids: [T]; out: [T, C] f32.
    public static func embeddingForward(table: UnsafeRawPointer, dtype: DType, vocab: Int, dim: Int,
                                        ids: UnsafePointer<Int32>, rows: Int, out: UnsafeMutablePointer<Float>,
                                        pool: ThreadPool = .shared) throws(LKError) {
        try checkDims("embeddingForward", ("vocab", vocab), ("dim", dim), ("rows", rows))
        let rb = try dtype.rowBytes(dim)
        try checkIds(ids, rows: rows, vocab: vocab, "embeddingForward")
        pool.run(maxTasks: tasks(rows * dim, pool)) { idx, cnt in
            for t in partition(rows, index: idx, count: cnt) {
                dequantize(table + Int(ids[t]) * rb, dtype: dtype, count: dim, into: out + t * dim)
            }
        }
    }

    /// Backward of the lookup: dtable[ids[t]] += dout[t] for every row, in row order. Columns are split
    /// across threads, so repeated ids are summed in the same order for any thread count.
    /// - dout: [T, C]; ids: [T]; dtable: [V, C] f32.
    public static func embeddingBackward(dout: UnsafePointer<Float>, ids: UnsafePointer<Int32>, rows: Int,
                                         dtable: UnsafeMutablePointer<Float>, vocab: Int, dim: Int,
                                         pool: ThreadPool = .shared) throws(LKError) {
        try checkDims("embeddingBackward", ("vocab", vocab), ("dim", dim), ("rows", rows))
        try checkIds(ids, rows: rows, vocab: vocab, "embeddingBackward")
        pool.run(maxTasks: min(max(1, dim / 64), tasks(rows * dim, pool))) { idx, cnt in
            let cols = partition(dim, index: idx, count: cnt, align: 8)
            if cols.isEmpty { return }
            for t in 0..<rows {
                let g = dout + t * dim, d = dtable + Int(ids[t]) * dim
                var i = cols.lowerBound
                while i + 8 <= cols.upperBound { st8(ld8(d + i) + ld8(g + i), d + i); i += 8 }
                while i < cols.upperBound { d[i] += g[i]; i += 1 }
            }
        }
    }
}
