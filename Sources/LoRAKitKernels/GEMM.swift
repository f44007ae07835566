import LoRAKitCore

/// Packed, register-blocked matrix multiplication.
///
/// Computes `C[M×N] = alpha · A[M×K] · B[K×N] + beta · C` with
/// - `A`: f32, any row/column stride (so `A` may be a transposed view, e.g. `Xᵀ` when computing `dW`);
/// - `B`: f32 with any strides, or a weight matrix stored in any `DType` (f32, f16, bf16, q8_0, q4_0,
///   q4_1), used either transposed (`X · Wᵀ`, the forward of a linear layer) or as is (`dY · W`, the
///   backward of a linear layer with respect to its input);
/// - `C`: f32 row-major with leading dimension `ldc`.
///
/// The structure is the classic one (Goto/BLIS): B is packed by blocks of `KC × NC` into panels of `NR`
/// columns, A by blocks of `MC × KC` into panels of `MR` rows, and a `MR × NR` micro-kernel keeps the
/// C tile in registers. Quantized weights are dequantized while packing, so a many-row product runs at
/// the f32 GEMM's speed. Every C element is reduced over K in the same order whatever the thread count,
/// so results are bitwise identical for 1 or N threads.
///
/// Threads split N into contiguous ranges (or M when N is too narrow), each packing its own panels.
/// A share of at most MC rows packs each B panel just before using it (still in L1) instead of a whole
/// NC × KC block first: few rows reuse a panel too little to pay for fetching it back from L3.
/// Transposed B panels (`Wᵀ`, f32 column views) are transposed Vec.scalarCount² values at a time in
/// registers, and quantized weights are dequantized straight into those registers.
public enum GEMM {
    #if LORAKIT_AVX512
    /// The register vector of the micro-kernel (16 lanes: one zmm register).
    public typealias Vec = SIMD16<Float>
    #else
    /// The register vector of the micro-kernel (8 lanes: one ymm register, or two NEON registers).
    public typealias Vec = SIMD8<Float>
    #endif
    #if LORAKIT_AVX512
    public static let MR = 12
    #else
    public static let MR = 6
    #endif
    /// Two vectors per tile row.
    public static let NR = 2 * Vec.scalarCount
    public static let KC = 256
    public static let MC = 144
    public static let NC = 3072
}

/// The left operand: `A(i, k) = ptr[i * rowStride + k * colStride]`, f32.
public struct GEMMLeft: @unchecked Sendable {
    public var ptr: UnsafePointer<Float>
    public var rowStride: Int
    public var colStride: Int
    public init(_ ptr: UnsafePointer<Float>, rowStride: Int, colStride: Int = 1) {
        self.ptr = ptr; self.rowStride = rowStride; self.colStride = colStride
    }
    /// `A` is `Mᵀ` for a row-major `M` with leading dimension `ld`: `A(i, k) = M[k][i]`.
    public static func transposed(_ ptr: UnsafePointer<Float>, ld: Int) -> GEMMLeft {
        GEMMLeft(ptr, rowStride: 1, colStride: ld)
    }
}

/// The right operand `B` (K × N).
public enum GEMMRight: @unchecked Sendable {
    /// `B(k, n) = ptr[k * rowStride + n * colStride]`, f32.
    case f32(UnsafePointer<Float>, rowStride: Int, colStride: Int)
    /// A weight `W` of `rows × cols` values in `dtype`, row-major, rows of `dtype.rowBytes(cols)` bytes.
    /// `transposed: true` means `B = Wᵀ` (K = cols, N = rows): `B(k, n) = W[n][k]`.
    /// `transposed: false` means `B = W` (K = rows, N = cols): `B(k, n) = W[k][n]`.
    case weight(UnsafeRawPointer, dtype: DType, rows: Int, cols: Int, transposed: Bool)

    /// The f32 matrix `B = Wᵀ` for a row-major f32 `W` with leading dimension `ld`.
    public static func f32Transposed(_ ptr: UnsafePointer<Float>, ld: Int) -> GEMMRight {
        .f32(ptr, rowStride: 1, colStride: ld)
    }
    public static func f32(_ ptr: UnsafePointer<Float>, ld: Int) -> GEMMRight {
        .f32(ptr, rowStride: ld, colStride: 1)
    }

    /// The weight tensor `w` ([rows, cols], any dtype, contiguous) as `.weight`: `B = wᵀ` when
    /// `transposed`, else `B = w`.
    public static func weight(_ w: Tensor, transposed: Bool) -> GEMMRight {
        .weight(UnsafeRawPointer(w.rawPointer), dtype: w.dtype, rows: w.shape[0], cols: w.shape[1], transposed: transposed)
    }

    /// (K, N) implied by a weight operand.
    var weightKN: (Int, Int)? {
        if case let .weight(_, _, rows, cols, t) = self { return t ? (cols, rows) : (rows, cols) }
        return nil
    }
}

extension GEMM {
    /// `C = alpha · A · B + beta · C`. Validates sizes (throws instead of trapping) and runs on `pool`.
    /// `beta` = 0 overwrites C without reading it (C may hold NaN garbage).
    public static func multiply(
        m: Int, n: Int, k: Int,
        alpha: Float = 1,
        a: GEMMLeft, b: GEMMRight,
        beta: Float = 0,
        c: UnsafeMutablePointer<Float>, ldc: Int,
        pool: ThreadPool = .shared
    ) throws(LKError) {
        guard m >= 0, n >= 0, k >= 0 else { throw .invalidArgument("gemm: negative size m=\(m) n=\(n) k=\(k)") }
        guard ldc >= n else { throw .invalidArgument("gemm: ldc \(ldc) < n \(n)") }
        if case let .weight(_, dtype, rows, cols, t) = b {
            let (wk, wn) = t ? (cols, rows) : (rows, cols)
            guard wk == k, wn == n else {
                throw .shapeMismatch("gemm: weight [\(rows), \(cols)]\(t ? "ᵀ" : "") does not give B of [\(k), \(n)]")
            }
            guard cols % dtype.blockSize == 0 else {
                throw .shapeMismatch("gemm: weight row length \(cols) is not a multiple of the \(dtype) block size")
            }
        }
        if m == 0 || n == 0 { return }
        if k == 0 {
            for i in 0..<m { for j in 0..<n { c[i * ldc + j] = beta == 0 ? 0 : beta * c[i * ldc + j] } }
            return
        }
        multiplyUnchecked(m: m, n: n, k: k, alpha: alpha, a: a, b: b, beta: beta, c: c, ldc: ldc, pool: pool)
    }

    /// As `multiply`, with sizes already validated by the caller.
    public static func multiplyUnchecked(
        m: Int, n: Int, k: Int, alpha: Float, a: GEMMLeft, b: GEMMRight, beta: Float,
        c: UnsafeMutablePointer<Float>, ldc: Int, pool: ThreadPool
    ) {
        // Column ranges must start on a block boundary when B's columns are quantized blocks.
        var nAlign = NR
        if case let .weight(_, dtype, _, _, false) = b, dtype.isQuantized { nAlign = 32 }
        let minCols = 64
        let maxByN = max(1, n / minCols)
        let flops = Double(m) * Double(n) * Double(k)
        let wanted = flops < 200_000 ? 1 : pool.activeCount
        if maxByN >= min(wanted, pool.activeCount) || m < MR * 2 {
            pool.run(maxTasks: min(wanted, maxByN)) { idx, cnt in
                let cols = partition(n, index: idx, count: cnt, align: nAlign)
                if cols.isEmpty { return }
                serial(rows: 0..<m, cols: cols, k: k, alpha: alpha, a: a, b: b, beta: beta, c: c, ldc: ldc,
                       pool: pool, index: idx)
            }
        } else {
            pool.run(maxTasks: min(wanted, max(1, m / MR))) { idx, cnt in
                let rows = partition(m, index: idx, count: cnt, align: MR)
                if rows.isEmpty { return }
                serial(rows: rows, cols: 0..<n, k: k, alpha: alpha, a: a, b: b, beta: beta, c: c, ldc: ldc,
                       pool: pool, index: idx)
            }
        }
    }

    /// One participant's share: the C block `rows × cols`.
    static func serial(
        rows: Range<Int>, cols: Range<Int>, k: Int, alpha: Float, a: GEMMLeft, b: GEMMRight, beta: Float,
        c: UnsafeMutablePointer<Float>, ldc: Int, pool: ThreadPool, index: Int
    ) {
        let ncMax = min(NC, (cols.count + NR - 1) / NR * NR)
        let kcMax = min(KC, k)
        let mcMax = min(MC, (rows.count + MR - 1) / MR * MR)
        let bBytes = ncMax * kcMax * 4
        // (+ one vector of slack for the overlapping stores of `packA`.)
        let aBytes = (mcMax * kcMax + Vec.scalarCount) * 4
        // Temporary row for dequantizing (up to max(KC, NC) values, plus a block of slack).
        let tBytes = (max(kcMax, ncMax) + 64) * 4
        let eBytes = MR * NR * 4
        let base = pool.scratch(index, bytes: bBytes + aBytes + tBytes + eBytes + 256)
        let bPack = base.assumingMemoryBound(to: Float.self)
        let aPack = (base + ((bBytes + 63) & ~63)).assumingMemoryBound(to: Float.self)
        let tmp = (base + ((bBytes + 63) & ~63) + ((aBytes + 63) & ~63)).assumingMemoryBound(to: Float.self)
        // The edge tile of `kernelEdge`.
        let edge = (base + ((bBytes + 63) & ~63) + ((aBytes + 63) & ~63) + ((tBytes + 63) & ~63))
            .assumingMemoryBound(to: Float.self)

        if rows.count <= MC && fusedPacking(b) {
            // One block of rows: pack each B panel just before its row tiles use it, so it is still in L1
            // (a whole NC × KC block of B, up to 3 MiB, would fall out of L2 before a few rows reuse it).
            // Same tiles, same per-element arithmetic as the blocked order below.
            let mc = rows.count
            var pc = 0
            while pc < k {
                let kc = min(KC, k - pc)
                let betaHere: Float = pc == 0 ? beta : 1
                packA(a, i0: rows.lowerBound, mc: mc, k0: pc, kc: kc, into: aPack)
                var jr = cols.lowerBound
                while jr < cols.upperBound {
                    let nr = min(NR, cols.upperBound - jr)
                    packB(b, k0: pc, kc: kc, n0: jr, nc: nr, into: bPack, tmp: tmp)
                    tiles(mc: mc, nr: nr, kc: kc, aPack: aPack, bPanel: UnsafePointer(bPack),
                          c: c + rows.lowerBound * ldc + jr, ldc: ldc, alpha: alpha, beta: betaHere, edge: edge)
                    jr += NR
                }
                pc += KC
            }
            return
        }

        var jc = cols.lowerBound
        while jc < cols.upperBound {
            let nc = min(NC, cols.upperBound - jc)
            var pc = 0
            while pc < k {
                let kc = min(KC, k - pc)
                packB(b, k0: pc, kc: kc, n0: jc, nc: nc, into: bPack, tmp: tmp)
                let betaHere: Float = pc == 0 ? beta : 1
                var ic = rows.lowerBound
                while ic < rows.upperBound {
                    let mc = min(MC, rows.upperBound - ic)
                    packA(a, i0: ic, mc: mc, k0: pc, kc: kc, into: aPack)
                    var jr = 0
                    while jr < nc {
                        tiles(mc: mc, nr: min(NR, nc - jr), kc: kc, aPack: aPack, bPanel: UnsafePointer(bPack + jr * kc),
                              c: c + ic * ldc + jc + jr, ldc: ldc, alpha: alpha, beta: betaHere, edge: edge)
                        jr += NR
                    }
                    ic += MC
                }
                pc += KC
            }
            jc += NC
        }
    }

    /// The row tiles of one B panel: `C[0..<mc, 0..<nr] = alpha · Apacked · Bpanel + beta · C`.
    @inline(__always)
    static func tiles(mc: Int, nr: Int, kc: Int, aPack: UnsafeMutablePointer<Float>, bPanel: UnsafePointer<Float>,
                      c: UnsafeMutablePointer<Float>, ldc: Int, alpha: Float, beta: Float,
                      edge: UnsafeMutablePointer<Float>) {
        var ir = 0
        while ir < mc {
            let mr = min(MR, mc - ir)
            let cp = c + ir * ldc
            let ap = UnsafePointer(aPack + ir * kc)
            if mr == MR && nr == NR {
                kernelFull(kc, ap, bPanel, cp, ldc, alpha, beta)
            } else {
                kernelEdge(kc, ap, bPanel, cp, ldc, alpha, beta, mr, nr, edge)
            }
            ir += MR
        }
    }

    /// Whether B can be packed one NR-column panel at a time (`serial`'s order for a single row block).
    /// Not for a quantized `W` used as is: its panels are dequantized by whole 32-column blocks per row.
    @inline(__always)
    static func fusedPacking(_ b: GEMMRight) -> Bool {
        if case let .weight(_, dtype, _, _, false) = b, dtype.isQuantized { return false }
        return true
    }

    // MARK: Packing

    /// Pack `A[i0 ..< i0+mc, k0 ..< k0+kc]` into panels of MR rows: panel p holds, for each k, the MR
    /// values `A(i0 + p·MR + 0..<MR, k)` contiguously (zero-padded past `mc`).
    @inline(__always)
    static func packA(_ a: GEMMLeft, i0: Int, mc: Int, k0: Int, kc: Int, into dst: UnsafeMutablePointer<Float>) {
        let rs = a.rowStride, cs = a.colStride
        var p = 0
        while p < mc {
            let rowsHere = min(MR, mc - p)
            let out = dst + p * kc
            if cs == 1 {
                // Rows contiguous in k: w × w blocks (w = Vec.scalarCount ≥ MR; rows past the panel are
                // zeros) transposed in registers; column t of a block (k = kk + t, lanes = rows) is stored
                // as a whole vector at `out + (kk + t)·MR`, in increasing order, so the w − MR lanes that
                // spill past each MR-slot are overwritten by the next store (the last spill lands in the
                // next panel, packed after this one, or in the buffer's slack: see `serial`).
                let w = Vec.scalarCount
                let base = a.ptr + (i0 + p) * rs + k0
                var kk = 0
                while kk + w <= kc {
                    let src = base + kk
                    var v = rowsHere == MR
                        ? VecBlock { $0 < MR ? UnsafeRawPointer(src + $0 * rs).loadUnaligned(as: Vec.self) : Vec() }
                        : VecBlock { $0 < rowsHere ? UnsafeRawPointer(src + $0 * rs).loadUnaligned(as: Vec.self) : Vec() }
                    v.transpose()
                    v.store(out + kk * MR, ld: MR)
                    kk += w
                }
                while kk < kc {
                    for i in 0..<MR { out[kk * MR + i] = i < rowsHere ? base[i * rs + kk] : 0 }
                    kk += 1
                }
            } else if rs == 1 {
                // Columns contiguous in i (A is a transposed view).
                for kk in 0..<kc {
                    let src = a.ptr + (k0 + kk) * cs + i0 + p
                    let o = out + kk * MR
                    for i in 0..<MR { o[i] = i < rowsHere ? src[i] : 0 }
                }
            } else {
                for kk in 0..<kc {
                    let o = out + kk * MR
                    for i in 0..<MR {
                        o[i] = i < rowsHere ? a.ptr[(i0 + p + i) * rs + (k0 + kk) * cs] : 0
                    }
                }
            }
            p += MR
        }
    }

    /// Pack `B[k0 ..< k0+kc, n0 ..< n0+nc]` into panels of NR columns: panel q holds, for each k, the NR
    /// values `B(k, n0 + q·NR + 0..<NR)` contiguously (zero-padded past `nc`).
    static func packB(_ b: GEMMRight, k0: Int, kc: Int, n0: Int, nc: Int, into dst: UnsafeMutablePointer<Float>,
                      tmp: UnsafeMutablePointer<Float>) {
        let panels = (nc + NR - 1) / NR
        switch b {
        case let .f32(ptr, rs, cs):
            if cs == 1 {
                for q in 0..<panels {
                    let colsHere = min(NR, nc - q * NR)
                    let out = dst + q * NR * kc
                    let src = ptr + k0 * rs + n0 + q * NR
                    if colsHere == NR {
                        for kk in 0..<kc {
                            let s = UnsafeRawPointer(src + kk * rs)
                            let o = UnsafeMutableRawPointer(out + kk * NR)
                            o.storeBytes(of: s.loadUnaligned(as: Vec.self), as: Vec.self)
                            (o + vecBytes).storeBytes(of: (s + vecBytes).loadUnaligned(as: Vec.self), as: Vec.self)
                        }
                    } else {
                        for kk in 0..<kc {
                            for j in 0..<NR { out[kk * NR + j] = j < colsHere ? src[kk * rs + j] : 0 }
                        }
                    }
                }
            } else if rs == 1 {
                // Column n of B is contiguous in k: full panels are transposed in registers, a partial
                // last panel is scattered column by column.
                for q in 0..<panels {
                    let colsHere = min(NR, nc - q * NR)
                    let out = dst + q * NR * kc
                    if colsHere == NR {
                        transposePanel(ptr + (n0 + q * NR) * cs + k0, ld: cs, count: kc, into: out)
                        continue
                    }
                    for j in 0..<NR {
                        if j < colsHere {
                            let src = ptr + (n0 + q * NR + j) * cs + k0
                            for kk in 0..<kc { out[kk * NR + j] = src[kk] }
                        } else {
                            for kk in 0..<kc { out[kk * NR + j] = 0 }
                        }
                    }
                }
            } else {
                for q in 0..<panels {
                    let colsHere = min(NR, nc - q * NR)
                    let out = dst + q * NR * kc
                    for kk in 0..<kc {
                        for j in 0..<NR {
                            out[kk * NR + j] = j < colsHere ? ptr[(k0 + kk) * rs + (n0 + q * NR + j) * cs] : 0
                        }
                    }
                }
            }
        case let .weight(wp, dtype, _, cols, true):
            // B = Wᵀ: column n of B is row n of W. k0 is a multiple of KC (so of every block size).
            let rb = (cols / dtype.blockSize) * dtype.blockBytes
            let bs = dtype.blockSize
            for q in 0..<panels {
                let colsHere = min(NR, nc - q * NR)
                let out = dst + q * NR * kc
                let row0 = wp + (n0 + q * NR) * rb + (k0 / bs) * dtype.blockBytes
                if dtype.isQuantized {
                    // kc is a whole number of 32-value blocks (cols and k0 are multiples of 32).
                    packQuantizedTransposed(row0, rowBytes: rb, dtype: dtype, rows: colsHere, kc: kc, into: out)
                    continue
                }
                if colsHere == NR && dtype == .f32 {
                    transposePanel(row0.assumingMemoryBound(to: Float.self), ld: cols, count: kc, into: out)
                    continue
                }
                // f16/bf16 (and partial f32 panels): dequantize row by row and scatter.
                let dq = (kc + bs - 1) / bs * bs
                for j in 0..<NR {
                    if j < colsHere {
                        dequantize(row0 + j * rb, dtype: dtype, count: dq, into: tmp)
                        for kk in 0..<kc { out[kk * NR + j] = tmp[kk] }
                    } else {
                        for kk in 0..<kc { out[kk * NR + j] = 0 }
                    }
                }
            }
        case let .weight(wp, dtype, _, cols, false):
            // B = W: row k of B is row k of W; dequantize W[k][n0 ..< n0+nc] (n0 is block-aligned).
            let rb = (cols / dtype.blockSize) * dtype.blockBytes
            let bs = dtype.blockSize
            let nEnd = min(cols, (n0 + nc + bs - 1) / bs * bs)
            for kk in 0..<kc {
                let row = wp + (k0 + kk) * rb + (n0 / bs) * dtype.blockBytes
                dequantize(row, dtype: dtype, count: nEnd - n0, into: tmp)
                for q in 0..<panels {
                    let colsHere = min(NR, nc - q * NR)
                    let o = dst + q * NR * kc + kk * NR
                    let s = tmp + q * NR
                    if colsHere == NR {
                        UnsafeMutableRawPointer(o).storeBytes(of: UnsafeRawPointer(s).loadUnaligned(as: Vec.self), as: Vec.self)
                        UnsafeMutableRawPointer(o + Vec.scalarCount).storeBytes(of: UnsafeRawPointer(s + Vec.scalarCount).loadUnaligned(as: Vec.self), as: Vec.self)
                    } else {
                        for j in 0..<NR { o[j] = j < colsHere ? s[j] : 0 }
                    }
                }
            }
        }
    }

    /// A full panel from NR rows of `count` contiguous f32 values each: `out[t·NR + j] = src[j·ld + t]`
    /// for j < NR, t < count, by w × w blocks (w = Vec.scalarCount) transposed in registers, and a
    /// scalar tail when `count` is not a multiple of w.
    @inline(__always)
    static func transposePanel(_ src: UnsafePointer<Float>, ld: Int, count: Int, into out: UnsafeMutablePointer<Float>) {
        let w = Vec.scalarCount
        var t = 0
        while t + w <= count {
            for g in 0..<(NR / w) {
                let s = src + g * w * ld + t
                var v = VecBlock { UnsafeRawPointer(s + $0 * ld).loadUnaligned(as: Vec.self) }
                v.transpose()
                v.store(out + t * NR + g * w, ld: NR)
            }
            t += w
        }
        while t < count {
            for j in 0..<NR { out[t * NR + j] = src[j * ld + t] }
            t += 1
        }
    }

    /// A panel of `Wᵀ` from `rows` (≤ NR) rows of a q8_0/q4_0/q4_1 weight starting at `row0`, `kc` values
    /// (whole 32-value blocks) each: `out[t·NR + j] = W[j][t]` dequantized (0 for j ≥ rows). Each w-value
    /// slice of a block (w = Vec.scalarCount) is dequantized straight into a register with the arithmetic
    /// of `dequantize` (so the values are bitwise those of the row-wise path): q8_0 d·q; q4_0 d·(q − 8);
    /// q4_1 d·q + m (a rounded multiply, then a rounded add). Values 0..<16 of a q4 block are the low
    /// nibbles of its 16 bytes, 16..<32 the high nibbles. w × w blocks are then transposed in registers.
    static func packQuantizedTransposed(_ row0: UnsafeRawPointer, rowBytes rb: Int, dtype: DType, rows: Int, kc: Int,
                                        into out: UnsafeMutablePointer<Float>) {
        switch dtype {
        case .q8_0: packQuantizedTransposed(Q8_0Slice.self, row0, rowBytes: rb, rows: rows, kc: kc, into: out)
        case .q4_0: packQuantizedTransposed(Q4_0Slice.self, row0, rowBytes: rb, rows: rows, kc: kc, into: out)
        default:
            precondition(dtype == .q4_1, "packQuantizedTransposed: \(dtype) is not q8_0, q4_0 or q4_1")
            packQuantizedTransposed(Q4_1Slice.self, row0, rowBytes: rb, rows: rows, kc: kc, into: out)
        }
    }

    /// The loops of `packQuantizedTransposed` for one block format (a generic, so that each format's
    /// `slice` is inlined into its own copy of the loops).
    @inline(__always)
    static func packQuantizedTransposed<S: QuantizedSlice>(_: S.Type, _ row0: UnsafeRawPointer, rowBytes rb: Int,
                                                           rows: Int, kc: Int, into out: UnsafeMutablePointer<Float>) {
        let w = Vec.scalarCount
        for blk in 0..<(kc / 32) {
            for h in 0..<(32 / w) {
                let o = out + (blk * 32 + h * w) * NR
                for g in 0..<(NR / w) {
                    let base = row0 + g * w * rb + blk * S.blockBytes
                    let live = min(w, max(0, rows - g * w))
                    var v = live == w ? VecBlock { S.slice(base + $0 * rb, h) }
                                      : VecBlock { $0 < live ? S.slice(base + $0 * rb, h) : Vec() }
                    v.transpose()
                    v.store(o + g * w, ld: NR)
                }
            }
        }
    }

    /// Lane-wise Float(q) (written as a loop: it compiles to one widening move and one conversion,
    /// where the generic SIMD conversion initialisers stay out-of-line calls).
    @inline(__always)
    static func floats(_ q: VecI8) -> Vec {
        var r = Vec()
        for i in 0..<Vec.scalarCount { r[i] = Float(q[i]) }
        return r
    }

    /// Lane-wise Float(low or high nibble of q).
    @inline(__always)
    static func nibbles(_ q: VecU8, high: Bool) -> Vec {
        var r = Vec()
        if high {
            for i in 0..<Vec.scalarCount { r[i] = Float(q[i] >> 4) }
        } else {
            for i in 0..<Vec.scalarCount { r[i] = Float(q[i] & 0xF) }
        }
        return r
    }

    #if LORAKIT_AVX512
    typealias Vec2 = SIMD32<Float>
    typealias VecI8 = SIMD16<Int8>
    typealias VecU8 = SIMD16<UInt8>
    #else
    typealias Vec2 = SIMD16<Float>
    typealias VecI8 = SIMD8<Int8>
    typealias VecU8 = SIMD8<UInt8>
    #endif

    // MARK: Micro-kernels

    static let vecBytes = MemoryLayout<Vec>.size

    /// `row[0..<NR] = alpha·(v0, v1) + beta·row` (beta 0: overwrite without reading); without `both`,
    /// only the first vector `row[0..<Vec.scalarCount]`.
    @inline(__always)
    static func storeRow(_ row: UnsafeMutablePointer<Float>, _ v0: Vec, _ v1: Vec, _ alpha: Float, _ beta: Float,
                         both: Bool = true) {
        let p = UnsafeMutableRawPointer(row)
        let al = Vec(repeating: alpha)
        if beta == 0 {
            p.storeBytes(of: v0 * al, as: Vec.self)
            if both { (p + vecBytes).storeBytes(of: v1 * al, as: Vec.self) }
        } else {
            let be = Vec(repeating: beta)
            var o0 = p.loadUnaligned(as: Vec.self) * be
            o0.addProduct(v0, al)
            p.storeBytes(of: o0, as: Vec.self)
            if both {
                var o1 = (p + vecBytes).loadUnaligned(as: Vec.self) * be
                o1.addProduct(v1, al)
                (p + vecBytes).storeBytes(of: o1, as: Vec.self)
            }
        }
    }

    #if LORAKIT_AVX512
    /// The MR × NR (12 × 2 vectors) register tile: 24 of the 32 zmm registers hold accumulators;
    /// A values are broadcast straight from memory into the FMAs.
    @inline(__always)
    static func kernelFull(_ kc: Int, _ a: UnsafePointer<Float>, _ b: UnsafePointer<Float>,
                           _ c: UnsafeMutablePointer<Float>, _ ldc: Int, _ alpha: Float, _ beta: Float) {
        var c0_0 = Vec(), c0_1 = Vec()
        var c1_0 = Vec(), c1_1 = Vec()
        var c2_0 = Vec(), c2_1 = Vec()
        var c3_0 = Vec(), c3_1 = Vec()
        var c4_0 = Vec(), c4_1 = Vec()
        var c5_0 = Vec(), c5_1 = Vec()
        var c6_0 = Vec(), c6_1 = Vec()
        var c7_0 = Vec(), c7_1 = Vec()
        var c8_0 = Vec(), c8_1 = Vec()
        var c9_0 = Vec(), c9_1 = Vec()
        var c10_0 = Vec(), c10_1 = Vec()
        var c11_0 = Vec(), c11_1 = Vec()
        var ap = a
        var bp = UnsafeRawPointer(b)
        for _ in 0..<kc {
            let b0 = bp.load(as: Vec.self)
            let b1 = bp.load(fromByteOffset: vecBytes, as: Vec.self)
            let a0 = Vec(repeating: ap[0]); c0_0.addProduct(a0, b0); c0_1.addProduct(a0, b1)
            let a1 = Vec(repeating: ap[1]); c1_0.addProduct(a1, b0); c1_1.addProduct(a1, b1)
            let a2 = Vec(repeating: ap[2]); c2_0.addProduct(a2, b0); c2_1.addProduct(a2, b1)
            let a3 = Vec(repeating: ap[3]); c3_0.addProduct(a3, b0); c3_1.addProduct(a3, b1)
            let a4 = Vec(repeating: ap[4]); c4_0.addProduct(a4, b0); c4_1.addProduct(a4, b1)
            let a5 = Vec(repeating: ap[5]); c5_0.addProduct(a5, b0); c5_1.addProduct(a5, b1)
            let a6 = Vec(repeating: ap[6]); c6_0.addProduct(a6, b0); c6_1.addProduct(a6, b1)
            let a7 = Vec(repeating: ap[7]); c7_0.addProduct(a7, b0); c7_1.addProduct(a7, b1)
            let a8 = Vec(repeating: ap[8]); c8_0.addProduct(a8, b0); c8_1.addProduct(a8, b1)
            let a9 = Vec(repeating: ap[9]); c9_0.addProduct(a9, b0); c9_1.addProduct(a9, b1)
            let a10 = Vec(repeating: ap[10]); c10_0.addProduct(a10, b0); c10_1.addProduct(a10, b1)
            let a11 = Vec(repeating: ap[11]); c11_0.addProduct(a11, b0); c11_1.addProduct(a11, b1)
            ap += 12
            bp += 2 * vecBytes
        }
        storeRow(c + 0 * ldc, c0_0, c0_1, alpha, beta); storeRow(c + 1 * ldc, c1_0, c1_1, alpha, beta); storeRow(c + 2 * ldc, c2_0, c2_1, alpha, beta); storeRow(c + 3 * ldc, c3_0, c3_1, alpha, beta); storeRow(c + 4 * ldc, c4_0, c4_1, alpha, beta); storeRow(c + 5 * ldc, c5_0, c5_1, alpha, beta)
        storeRow(c + 6 * ldc, c6_0, c6_1, alpha, beta); storeRow(c + 7 * ldc, c7_0, c7_1, alpha, beta); storeRow(c + 8 * ldc, c8_0, c8_1, alpha, beta); storeRow(c + 9 * ldc, c9_0, c9_1, alpha, beta); storeRow(c + 10 * ldc, c10_0, c10_1, alpha, beta); storeRow(c + 11 * ldc, c11_0, c11_1, alpha, beta)
    }
    #else
    /// The MR × NR (6 × 2 vectors) register tile: 12 vector accumulators. `C = alpha·acc + beta·C` (beta 0: overwrite).
    @inline(__always)
    static func kernelFull(_ kc: Int, _ a: UnsafePointer<Float>, _ b: UnsafePointer<Float>,
                           _ c: UnsafeMutablePointer<Float>, _ ldc: Int, _ alpha: Float, _ beta: Float) {
        var c00 = Vec(), c01 = Vec()
        var c10 = Vec(), c11 = Vec()
        var c20 = Vec(), c21 = Vec()
        var c30 = Vec(), c31 = Vec()
        var c40 = Vec(), c41 = Vec()
        var c50 = Vec(), c51 = Vec()
        var ap = a
        var bp = UnsafeRawPointer(b)
        for _ in 0..<kc {
            let b0 = bp.load(as: Vec.self)
            let b1 = bp.load(fromByteOffset: vecBytes, as: Vec.self)
            var av = Vec(repeating: ap[0])
            c00.addProduct(av, b0); c01.addProduct(av, b1)
            av = Vec(repeating: ap[1])
            c10.addProduct(av, b0); c11.addProduct(av, b1)
            av = Vec(repeating: ap[2])
            c20.addProduct(av, b0); c21.addProduct(av, b1)
            av = Vec(repeating: ap[3])
            c30.addProduct(av, b0); c31.addProduct(av, b1)
            av = Vec(repeating: ap[4])
            c40.addProduct(av, b0); c41.addProduct(av, b1)
            av = Vec(repeating: ap[5])
            c50.addProduct(av, b0); c51.addProduct(av, b1)
            ap += 6
            bp += 2 * vecBytes
        }
        storeRow(c + 0 * ldc, c00, c01, alpha, beta); storeRow(c + 1 * ldc, c10, c11, alpha, beta); storeRow(c + 2 * ldc, c20, c21, alpha, beta)
        storeRow(c + 3 * ldc, c30, c31, alpha, beta); storeRow(c + 4 * ldc, c40, c41, alpha, beta); storeRow(c + 5 * ldc, c50, c51, alpha, beta)
    }
    #endif

    #if LORAKIT_AVX512
    /// The register tile of `kernelFull` restricted to its first `R.rows` (< 12) rows and, without
    /// `both`, to its first vector of columns: the same FMA chain per element, so the same values, for
    /// fewer operations. A generic so that each row count gets its own copy with the unused rows removed.
    /// Writes full rows of NR (or one vector of) columns: `C = alpha·acc + beta·C` (beta 0: overwrite).
    @inline(__always)
    static func kernelRows<R: TileRows>(_: R.Type, _ kc: Int, _ a: UnsafePointer<Float>, _ b: UnsafePointer<Float>,
                                        _ c: UnsafeMutablePointer<Float>, _ ldc: Int, _ alpha: Float, _ beta: Float,
                                        both: Bool) {
        let rows = R.rows
        var c0_0 = Vec(), c0_1 = Vec()
        var c1_0 = Vec(), c1_1 = Vec()
        var c2_0 = Vec(), c2_1 = Vec()
        var c3_0 = Vec(), c3_1 = Vec()
        var c4_0 = Vec(), c4_1 = Vec()
        var c5_0 = Vec(), c5_1 = Vec()
        var c6_0 = Vec(), c6_1 = Vec()
        var c7_0 = Vec(), c7_1 = Vec()
        var c8_0 = Vec(), c8_1 = Vec()
        var c9_0 = Vec(), c9_1 = Vec()
        var c10_0 = Vec(), c10_1 = Vec()
        var ap = a
        var bp = UnsafeRawPointer(b)
        for _ in 0..<kc {
            let b0 = bp.load(as: Vec.self)
            let b1 = both ? bp.load(fromByteOffset: vecBytes, as: Vec.self) : Vec()
            if rows > 0 { let a0 = Vec(repeating: ap[0]); c0_0.addProduct(a0, b0); if both { c0_1.addProduct(a0, b1) } }
            if rows > 1 { let a1 = Vec(repeating: ap[1]); c1_0.addProduct(a1, b0); if both { c1_1.addProduct(a1, b1) } }
            if rows > 2 { let a2 = Vec(repeating: ap[2]); c2_0.addProduct(a2, b0); if both { c2_1.addProduct(a2, b1) } }
            if rows > 3 { let a3 = Vec(repeating: ap[3]); c3_0.addProduct(a3, b0); if both { c3_1.addProduct(a3, b1) } }
            if rows > 4 { let a4 = Vec(repeating: ap[4]); c4_0.addProduct(a4, b0); if both { c4_1.addProduct(a4, b1) } }
            if rows > 5 { let a5 = Vec(repeating: ap[5]); c5_0.addProduct(a5, b0); if both { c5_1.addProduct(a5, b1) } }
            if rows > 6 { let a6 = Vec(repeating: ap[6]); c6_0.addProduct(a6, b0); if both { c6_1.addProduct(a6, b1) } }
            if rows > 7 { let a7 = Vec(repeating: ap[7]); c7_0.addProduct(a7, b0); if both { c7_1.addProduct(a7, b1) } }
            if rows > 8 { let a8 = Vec(repeating: ap[8]); c8_0.addProduct(a8, b0); if both { c8_1.addProduct(a8, b1) } }
            if rows > 9 { let a9 = Vec(repeating: ap[9]); c9_0.addProduct(a9, b0); if both { c9_1.addProduct(a9, b1) } }
            if rows > 10 { let a10 = Vec(repeating: ap[10]); c10_0.addProduct(a10, b0); if both { c10_1.addProduct(a10, b1) } }
            ap += 12
            bp += 2 * vecBytes
        }
        if rows > 0 { storeRow(c + 0 * ldc, c0_0, c0_1, alpha, beta, both: both) }
        if rows > 1 { storeRow(c + 1 * ldc, c1_0, c1_1, alpha, beta, both: both) }
        if rows > 2 { storeRow(c + 2 * ldc, c2_0, c2_1, alpha, beta, both: both) }
        if rows > 3 { storeRow(c + 3 * ldc, c3_0, c3_1, alpha, beta, both: both) }
        if rows > 4 { storeRow(c + 4 * ldc, c4_0, c4_1, alpha, beta, both: both) }
        if rows > 5 { storeRow(c + 5 * ldc, c5_0, c5_1, alpha, beta, both: both) }
        if rows > 6 { storeRow(c + 6 * ldc, c6_0, c6_1, alpha, beta, both: both) }
        if rows > 7 { storeRow(c + 7 * ldc, c7_0, c7_1, alpha, beta, both: both) }
        if rows > 8 { storeRow(c + 8 * ldc, c8_0, c8_1, alpha, beta, both: both) }
        if rows > 9 { storeRow(c + 9 * ldc, c9_0, c9_1, alpha, beta, both: both) }
        if rows > 10 { storeRow(c + 10 * ldc, c10_0, c10_1, alpha, beta, both: both) }
    }

    /// `kernelRows` for a run-time `rows` in 1..<MR: one specialised copy per row count.
    @inline(never)
    static func kernelPartial(_ kc: Int, _ a: UnsafePointer<Float>, _ b: UnsafePointer<Float>,
                              _ c: UnsafeMutablePointer<Float>, _ ldc: Int, _ alpha: Float, _ beta: Float,
                              rows: Int, both: Bool) {
        switch (rows, both) {
        case (1, true): kernelRows(Rows1.self, kc, a, b, c, ldc, alpha, beta, both: true)
        case (1, false): kernelRows(Rows1.self, kc, a, b, c, ldc, alpha, beta, both: false)
        case (2, true): kernelRows(Rows2.self, kc, a, b, c, ldc, alpha, beta, both: true)
        case (2, false): kernelRows(Rows2.self, kc, a, b, c, ldc, alpha, beta, both: false)
        case (3, true): kernelRows(Rows3.self, kc, a, b, c, ldc, alpha, beta, both: true)
        case (3, false): kernelRows(Rows3.self, kc, a, b, c, ldc, alpha, beta, both: false)
        case (4, true): kernelRows(Rows4.self, kc, a, b, c, ldc, alpha, beta, both: true)
        case (4, false): kernelRows(Rows4.self, kc, a, b, c, ldc, alpha, beta, both: false)
        case (5, true): kernelRows(Rows5.self, kc, a, b, c, ldc, alpha, beta, both: true)
        case (5, false): kernelRows(Rows5.self, kc, a, b, c, ldc, alpha, beta, both: false)
        case (6, true): kernelRows(Rows6.self, kc, a, b, c, ldc, alpha, beta, both: true)
        case (6, false): kernelRows(Rows6.self, kc, a, b, c, ldc, alpha, beta, both: false)
        case (7, true): kernelRows(Rows7.self, kc, a, b, c, ldc, alpha, beta, both: true)
        case (7, false): kernelRows(Rows7.self, kc, a, b, c, ldc, alpha, beta, both: false)
        case (8, true): kernelRows(Rows8.self, kc, a, b, c, ldc, alpha, beta, both: true)
        case (8, false): kernelRows(Rows8.self, kc, a, b, c, ldc, alpha, beta, both: false)
        case (9, true): kernelRows(Rows9.self, kc, a, b, c, ldc, alpha, beta, both: true)
        case (9, false): kernelRows(Rows9.self, kc, a, b, c, ldc, alpha, beta, both: false)
        case (10, true): kernelRows(Rows10.self, kc, a, b, c, ldc, alpha, beta, both: true)
        case (10, false): kernelRows(Rows10.self, kc, a, b, c, ldc, alpha, beta, both: false)
        case (11, true): kernelRows(Rows11.self, kc, a, b, c, ldc, alpha, beta, both: true)
        case (11, false): kernelRows(Rows11.self, kc, a, b, c, ldc, alpha, beta, both: false)
        default: preconditionFailure("kernelPartial: rows \(rows) not in 1..<\(MR)")
        }
    }
    #else
    /// The register tile of `kernelFull` restricted to its first `R.rows` (< 6) rows and, without
    /// `both`, to its first vector of columns: the same FMA chain per element, so the same values, for
    /// fewer operations. A generic so that each row count gets its own copy with the unused rows removed.
    /// Writes full rows of NR (or one vector of) columns: `C = alpha·acc + beta·C` (beta 0: overwrite).
    @inline(__always)
    static func kernelRows<R: TileRows>(_: R.Type, _ kc: Int, _ a: UnsafePointer<Float>, _ b: UnsafePointer<Float>,
                                        _ c: UnsafeMutablePointer<Float>, _ ldc: Int, _ alpha: Float, _ beta: Float,
                                        both: Bool) {
        let rows = R.rows
        var c0_0 = Vec(), c0_1 = Vec()
        var c1_0 = Vec(), c1_1 = Vec()
        var c2_0 = Vec(), c2_1 = Vec()
        var c3_0 = Vec(), c3_1 = Vec()
        var c4_0 = Vec(), c4_1 = Vec()
        var ap = a
        var bp = UnsafeRawPointer(b)
        for _ in 0..<kc {
            let b0 = bp.load(as: Vec.self)
            let b1 = both ? bp.load(fromByteOffset: vecBytes, as: Vec.self) : Vec()
            if rows > 0 { let a0 = Vec(repeating: ap[0]); c0_0.addProduct(a0, b0); if both { c0_1.addProduct(a0, b1) } }
            if rows > 1 { let a1 = Vec(repeating: ap[1]); c1_0.addProduct(a1, b0); if both { c1_1.addProduct(a1, b1) } }
            if rows > 2 { let a2 = Vec(repeating: ap[2]); c2_0.addProduct(a2, b0); if both { c2_1.addProduct(a2, b1) } }
            if rows > 3 { let a3 = Vec(repeating: ap[3]); c3_0.addProduct(a3, b0); if both { c3_1.addProduct(a3, b1) } }
            if rows > 4 { let a4 = Vec(repeating: ap[4]); c4_0.addProduct(a4, b0); if both { c4_1.addProduct(a4, b1) } }
            ap += 6
            bp += 2 * vecBytes
        }
        if rows > 0 { storeRow(c + 0 * ldc, c0_0, c0_1, alpha, beta, both: both) }
        if rows > 1 { storeRow(c + 1 * ldc, c1_0, c1_1, alpha, beta, both: both) }
        if rows > 2 { storeRow(c + 2 * ldc, c2_0, c2_1, alpha, beta, both: both) }
        if rows > 3 { storeRow(c + 3 * ldc, c3_0, c3_1, alpha, beta, both: both) }
        if rows > 4 { storeRow(c + 4 * ldc, c4_0, c4_1, alpha, beta, both: both) }
    }

    /// `kernelRows` for a run-time `rows` in 1..<MR: one specialised copy per row count.
    @inline(never)
    static func kernelPartial(_ kc: Int, _ a: UnsafePointer<Float>, _ b: UnsafePointer<Float>,
                              _ c: UnsafeMutablePointer<Float>, _ ldc: Int, _ alpha: Float, _ beta: Float,
                              rows: Int, both: Bool) {
        switch (rows, both) {
        case (1, true): kernelRows(Rows1.self, kc, a, b, c, ldc, alpha, beta, both: true)
        case (1, false): kernelRows(Rows1.self, kc, a, b, c, ldc, alpha, beta, both: false)
        case (2, true): kernelRows(Rows2.self, kc, a, b, c, ldc, alpha, beta, both: true)
        case (2, false): kernelRows(Rows2.self, kc, a, b, c, ldc, alpha, beta, both: false)
        case (3, true): kernelRows(Rows3.self, kc, a, b, c, ldc, alpha, beta, both: true)
        case (3, false): kernelRows(Rows3.self, kc, a, b, c, ldc, alpha, beta, both: false)
        case (4, true): kernelRows(Rows4.self, kc, a, b, c, ldc, alpha, beta, both: true)
        case (4, false): kernelRows(Rows4.self, kc, a, b, c, ldc, alpha, beta, both: false)
        case (5, true): kernelRows(Rows5.self, kc, a, b, c, ldc, alpha, beta, both: true)
        case (5, false): kernelRows(Rows5.self, kc, a, b, c, ldc, alpha, beta, both: false)
        default: preconditionFailure("kernelPartial: rows \(rows) not in 1..<\(MR)")
        }
    }
    #endif

    /// Partial tile `mr × nr` (mr < MR or nr < NR). Full-width tiles (nr = NR) with fewer rows go straight
    /// to C through `kernelRows`; narrower ones compute `mr` rows of one or two vectors of columns into
    /// `t` (MR·NR floats, the caller's scratch) and write the `mr × nr` part. The same FMA chain per element
    /// as `kernelFull`, and the same final `alpha·acc + beta·C`, so results do not depend on where tile
    /// edges fall.
    @inline(never)
    static func kernelEdge(_ kc: Int, _ a: UnsafePointer<Float>, _ b: UnsafePointer<Float>,
                           _ c: UnsafeMutablePointer<Float>, _ ldc: Int, _ alpha: Float, _ beta: Float,
                           _ mr: Int, _ nr: Int, _ t: UnsafeMutablePointer<Float>) {
        if nr == NR {
            kernelPartial(kc, a, b, c, ldc, alpha, beta, rows: mr, both: true)
            return
        }
        let both = nr > Vec.scalarCount
        if mr == MR {
            kernelFull(kc, a, b, t, NR, 1, 0)
        } else {
            kernelPartial(kc, a, b, t, NR, 1, 0, rows: mr, both: both)
        }
        for i in 0..<mr {
            for j in 0..<nr {
                let v = t[i * NR + j]
                let dst = c + i * ldc + j
                dst.pointee = beta == 0 ? v * alpha : (dst.pointee * beta).addingProduct(v, alpha)
            }
        }
    }
}

/// One w-value slice (w = GEMM.Vec.scalarCount) of a 32-value quantized block, dequantized into a register
/// with the arithmetic of `dequantize`.
protocol QuantizedSlice {
    static var blockBytes: Int { get }
    /// Values h·w ..< (h+1)·w of the block at `b`.
    static func slice(_ b: UnsafeRawPointer, _ h: Int) -> GEMM.Vec
}

/// q8_0: d·q.
enum Q8_0Slice: QuantizedSlice {
    static var blockBytes: Int { 34 }
    @inline(__always) static func slice(_ b: UnsafeRawPointer, _ h: Int) -> GEMM.Vec {
        let d = GEMM.Vec(repeating: halfToFloat(b.loadUnaligned(as: UInt16.self)))
        return GEMM.floats((b + 2 + h * GEMM.Vec.scalarCount).loadUnaligned(as: GEMM.VecI8.self)) * d
    }
}

/// q4_0: d·(q − 8); values 0..<16 are the low nibbles of the 16 bytes, 16..<32 the high nibbles.
enum Q4_0Slice: QuantizedSlice {
    static var blockBytes: Int { 18 }
    @inline(__always) static func slice(_ b: UnsafeRawPointer, _ h: Int) -> GEMM.Vec {
        let w = GEMM.Vec.scalarCount
        let d = GEMM.Vec(repeating: halfToFloat(b.loadUnaligned(as: UInt16.self)))
        let q = (b + 2 + (h * w) % 16).loadUnaligned(as: GEMM.VecU8.self)
        return (GEMM.nibbles(q, high: h * w >= 16) - GEMM.Vec(repeating: 8)) * d
    }
}

/// q4_1: d·q + m (a rounded multiply, then a rounded add, as `dequantize`); nibbles as q4_0.
enum Q4_1Slice: QuantizedSlice {
    static var blockBytes: Int { 20 }
    @inline(__always) static func slice(_ b: UnsafeRawPointer, _ h: Int) -> GEMM.Vec {
        let w = GEMM.Vec.scalarCount
        let d = GEMM.Vec(repeating: halfToFloat(b.loadUnaligned(as: UInt16.self)))
        let m = GEMM.Vec(repeating: halfToFloat((b + 2).loadUnaligned(as: UInt16.self)))
        let q = (b + 4 + (h * w) % 16).loadUnaligned(as: GEMM.VecU8.self)
        return d * GEMM.nibbles(q, high: h * w >= 16) + m
    }
}

#if LORAKIT_AVX512
/// A 16 × 16 block of f32 in 16 vector registers (row i = `r{i}`), transposed in registers.
struct VecBlock {
    var r0, r1, r2, r3, r4, r5, r6, r7, r8, r9, r10, r11, r12, r13, r14, r15: GEMM.Vec

    /// Row i = `row(i)`.
    @inline(__always) init(_ row: (Int) -> GEMM.Vec) {
        r0 = row(0); r1 = row(1); r2 = row(2); r3 = row(3)
        r4 = row(4); r5 = row(5); r6 = row(6); r7 = row(7)
        r8 = row(8); r9 = row(9); r10 = row(10); r11 = row(11)
        r12 = row(12); r13 = row(13); r14 = row(14); r15 = row(15)
    }

    /// Transpose: 4 rounds of a perfect unshuffle of the 256 values (see `unshuffle`); each
    /// rotates the 8-bit (row, column) index by one bit, so after 4 rounds row and
    /// column are swapped. Pure data movement: values are copied exactly.
    @inline(__always) mutating func transpose() {
        unshuffle(); unshuffle(); unshuffle(); unshuffle()
    }

    /// Row i < 8 of the result is the even lanes, row 8 + i the odd lanes, of rows 2i and
    /// 2i + 1 concatenated (two-source permutes).
    @inline(__always) mutating func unshuffle() {
        let c0 = GEMM.Vec2(lowHalf: r0, highHalf: r1)
        let c1 = GEMM.Vec2(lowHalf: r2, highHalf: r3)
        let c2 = GEMM.Vec2(lowHalf: r4, highHalf: r5)
        let c3 = GEMM.Vec2(lowHalf: r6, highHalf: r7)
        let c4 = GEMM.Vec2(lowHalf: r8, highHalf: r9)
        let c5 = GEMM.Vec2(lowHalf: r10, highHalf: r11)
        let c6 = GEMM.Vec2(lowHalf: r12, highHalf: r13)
        let c7 = GEMM.Vec2(lowHalf: r14, highHalf: r15)
        r0 = c0.evenHalf; r8 = c0.oddHalf
        r1 = c1.evenHalf; r9 = c1.oddHalf
        r2 = c2.evenHalf; r10 = c2.oddHalf
        r3 = c3.evenHalf; r11 = c3.oddHalf
        r4 = c4.evenHalf; r12 = c4.oddHalf
        r5 = c5.evenHalf; r13 = c5.oddHalf
        r6 = c6.evenHalf; r14 = c6.oddHalf
        r7 = c7.evenHalf; r15 = c7.oddHalf
    }

    /// Row i to `out + i·ld`.
    @inline(__always) func store(_ out: UnsafeMutablePointer<Float>, ld: Int) {
        let o = UnsafeMutableRawPointer(out), b = ld * 4
        (o + 0 * b).storeBytes(of: r0, as: GEMM.Vec.self); (o + 1 * b).storeBytes(of: r1, as: GEMM.Vec.self); (o + 2 * b).storeBytes(of: r2, as: GEMM.Vec.self); (o + 3 * b).storeBytes(of: r3, as: GEMM.Vec.self)
        (o + 4 * b).storeBytes(of: r4, as: GEMM.Vec.self); (o + 5 * b).storeBytes(of: r5, as: GEMM.Vec.self); (o + 6 * b).storeBytes(of: r6, as: GEMM.Vec.self); (o + 7 * b).storeBytes(of: r7, as: GEMM.Vec.self)
        (o + 8 * b).storeBytes(of: r8, as: GEMM.Vec.self); (o + 9 * b).storeBytes(of: r9, as: GEMM.Vec.self); (o + 10 * b).storeBytes(of: r10, as: GEMM.Vec.self); (o + 11 * b).storeBytes(of: r11, as: GEMM.Vec.self)
        (o + 12 * b).storeBytes(of: r12, as: GEMM.Vec.self); (o + 13 * b).storeBytes(of: r13, as: GEMM.Vec.self); (o + 14 * b).storeBytes(of: r14, as: GEMM.Vec.self); (o + 15 * b).storeBytes(of: r15, as: GEMM.Vec.self)
    }
}
#else
/// A 8 × 8 block of f32 in 8 vector registers (row i = `r{i}`), transposed in registers.
struct VecBlock {
    var r0, r1, r2, r3, r4, r5, r6, r7: GEMM.Vec

    /// Row i = `row(i)`.
    @inline(__always) init(_ row: (Int) -> GEMM.Vec) {
        r0 = row(0); r1 = row(1); r2 = row(2); r3 = row(3)
        r4 = row(4); r5 = row(5); r6 = row(6); r7 = row(7)
    }

    /// Transpose: 3 rounds of a perfect unshuffle of the 64 values (see `unshuffle`); each
    /// rotates the 6-bit (row, column) index by one bit, so after 3 rounds row and
    /// column are swapped. Pure data movement: values are copied exactly.
    @inline(__always) mutating func transpose() {
        unshuffle(); unshuffle(); unshuffle()
    }

    /// Row i < 4 of the result is the even lanes, row 4 + i the odd lanes, of rows 2i and
    /// 2i + 1 concatenated (two-source permutes).
    @inline(__always) mutating func unshuffle() {
        let c0 = GEMM.Vec2(lowHalf: r0, highHalf: r1)
        let c1 = GEMM.Vec2(lowHalf: r2, highHalf: r3)
        let c2 = GEMM.Vec2(lowHalf: r4, highHalf: r5)
        let c3 = GEMM.Vec2(lowHalf: r6, highHalf: r7)
        r0 = c0.evenHalf; r4 = c0.oddHalf
        r1 = c1.evenHalf; r5 = c1.oddHalf
        r2 = c2.evenHalf; r6 = c2.oddHalf
        r3 = c3.evenHalf; r7 = c3.oddHalf
    }

    /// Row i to `out + i·ld`.
    @inline(__always) func store(_ out: UnsafeMutablePointer<Float>, ld: Int) {
        let o = UnsafeMutableRawPointer(out), b = ld * 4
        (o + 0 * b).storeBytes(of: r0, as: GEMM.Vec.self); (o + 1 * b).storeBytes(of: r1, as: GEMM.Vec.self); (o + 2 * b).storeBytes(of: r2, as: GEMM.Vec.self); (o + 3 * b).storeBytes(of: r3, as: GEMM.Vec.self)
        (o + 4 * b).storeBytes(of: r4, as: GEMM.Vec.self); (o + 5 * b).storeBytes(of: r5, as: GEMM.Vec.self); (o + 6 * b).storeBytes(of: r6, as: GEMM.Vec.self); (o + 7 * b).storeBytes(of: r7, as: GEMM.Vec.self)
    }
}
#endif

/// A row count of `GEMM.kernelRows` as a type (so the generic is specialised per count).
protocol TileRows { static var rows: Int { get } }
enum Rows1: TileRows { static var rows: Int { 1 } }
enum Rows2: TileRows { static var rows: Int { 2 } }
enum Rows3: TileRows { static var rows: Int { 3 } }
enum Rows4: TileRows { static var rows: Int { 4 } }
enum Rows5: TileRows { static var rows: Int { 5 } }
enum Rows6: TileRows { static var rows: Int { 6 } }
enum Rows7: TileRows { static var rows: Int { 7 } }
enum Rows8: TileRows { static var rows: Int { 8 } }
enum Rows9: TileRows { static var rows: Int { 9 } }
enum Rows10: TileRows { static var rows: Int { 10 } }
enum Rows11: TileRows { static var rows: Int { 11 } }
