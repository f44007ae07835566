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
        let aBytes = mcMax * kcMax * 4
        // Temporary row for dequantizing (up to max(KC, NC) values, plus a block of slack).
        let tBytes = (max(kcMax, ncMax) + 64) * 4
        let base = pool.scratch(index, bytes: bBytes + aBytes + tBytes + 256)
        let bPack = base.assumingMemoryBound(to: Float.self)
        let aPack = (base + ((bBytes + 63) & ~63)).assumingMemoryBound(to: Float.self)
        let tmp = (base + ((bBytes + 63) & ~63) + ((aBytes + 63) & ~63)).assumingMemoryBound(to: Float.self)

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
                        let nr = min(NR, nc - jr)
                        let bp = UnsafePointer(bPack + jr * kc)
                        var ir = 0
                        while ir < mc {
                            let mr = min(MR, mc - ir)
                            let cp = c + (ic + ir) * ldc + jc + jr
                            let ap = UnsafePointer(aPack + ir * kc)
                            if mr == MR && nr == NR {
                                kernelFull(kc, ap, bp, cp, ldc, alpha, betaHere)
                            } else {
                                kernelEdge(kc, ap, bp, cp, ldc, alpha, betaHere, mr, nr)
                            }
                            ir += MR
                        }
                        jr += NR
                    }
                    ic += MC
                }
                pc += KC
            }
            jc += NC
        }
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
                // Rows contiguous in k: interleave MR rows.
                for i in 0..<MR {
                    if i < rowsHere {
                        let row = a.ptr + (i0 + p + i) * rs + k0
                        for kk in 0..<kc { out[kk * MR + i] = row[kk] }
                    } else {
                        for kk in 0..<kc { out[kk * MR + i] = 0 }
                    }
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
                // Column n of B is contiguous in k: scatter each column into its panel slot.
                for q in 0..<panels {
                    let colsHere = min(NR, nc - q * NR)
                    let out = dst + q * NR * kc
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
            // B = Wᵀ: column n of B is row n of W; dequantize W[n][k0 ..< k0+kc] and scatter.
            let rb = (cols / dtype.blockSize) * dtype.blockBytes
            let bs = dtype.blockSize
            let kStart = k0 / bs * bs            // k0 is a multiple of KC, itself a multiple of 32
            let kEnd = min(cols, (k0 + kc + bs - 1) / bs * bs)
            let skip = k0 - kStart
            for q in 0..<panels {
                let colsHere = min(NR, nc - q * NR)
                let out = dst + q * NR * kc
                for j in 0..<NR {
                    if j < colsHere {
                        let row = wp + (n0 + q * NR + j) * rb + (kStart / bs) * dtype.blockBytes
                        if dtype == .f32 && skip == 0 {
                            let src = row.assumingMemoryBound(to: Float.self)
                            for kk in 0..<kc { out[kk * NR + j] = src[kk] }
                        } else {
                            dequantize(row, dtype: dtype, count: kEnd - kStart, into: tmp)
                            for kk in 0..<kc { out[kk * NR + j] = tmp[skip + kk] }
                        }
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

    // MARK: Micro-kernels

    static let vecBytes = MemoryLayout<Vec>.size

    /// `row[0..<NR] = alpha·(v0, v1) + beta·row` (beta 0: overwrite without reading).
    @inline(__always)
    static func storeRow(_ row: UnsafeMutablePointer<Float>, _ v0: Vec, _ v1: Vec, _ alpha: Float, _ beta: Float) {
        let p = UnsafeMutableRawPointer(row)
        let al = Vec(repeating: alpha)
        if beta == 0 {
            p.storeBytes(of: v0 * al, as: Vec.self)
            (p + vecBytes).storeBytes(of: v1 * al, as: Vec.self)
        } else {
            let be = Vec(repeating: beta)
            var o0 = p.loadUnaligned(as: Vec.self) * be
            var o1 = (p + vecBytes).loadUnaligned(as: Vec.self) * be
            o0.addProduct(v0, al)
            o1.addProduct(v1, al)
            p.storeBytes(of: o0, as: Vec.self)
            (p + vecBytes).storeBytes(of: o1, as: Vec.self)
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

    /// Partial tile: compute the full 6 × 16 tile into a local buffer with the same arithmetic as
    /// `kernelFull` (so results do not depend on where tile edges fall) and write the `mr × nr` part.
    @inline(never)
    static func kernelEdge(_ kc: Int, _ a: UnsafePointer<Float>, _ b: UnsafePointer<Float>,
                           _ c: UnsafeMutablePointer<Float>, _ ldc: Int, _ alpha: Float, _ beta: Float,
                           _ mr: Int, _ nr: Int) {
        withUnsafeTemporaryAllocation(of: Float.self, capacity: MR * NR) { buf in
            let t = buf.baseAddress!
            kernelFull(kc, a, b, t, NR, 1, 0)
            for i in 0..<mr {
                for j in 0..<nr {
                    let v = t[i * NR + j]
                    let dst = c + i * ldc + j
                    dst.pointee = beta == 0 ? v * alpha : (dst.pointee * beta).addingProduct(v, alpha)
                }
            }
        }
    }
}
