import LoRAKitCore

/// Rotary position embedding (see the shape legend in Ops.swift).
///
/// Frequencies follow Hugging Face's float32 computation exactly:
///   invFreq[i] = Float(1) / powf(base, Float(2i) / Float(nRot))       (i < nRot/2, all in float32)
///   angle      = Float(pos) · invFreq[i]                               (one float32 rounding)
///   cos, sin   = Float(cos(Double(angle))), Float(sin(Double(angle)))  (correctly rounded of the f32 angle)
/// so cos/sin agree with PyTorch's float32 `emb.cos()` to ≈ 1 ulp. (llama.cpp instead builds θ by
/// repeated multiplication by base^(−2/n_rot) in float32; the two differ by a few ulps of the angle.)
#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// How rotated dimensions are paired.
public enum RoPELayout: Sendable, Equatable {
    /// Pairs (2i, 2i+1): llama.cpp's `LLAMA_ROPE_TYPE_NORM` (GGML_ROPE_TYPE_NORM), original LLaMA/Meta code.
    case interleaved
    /// Pairs (i, i + nRot/2): GPT-NeoX / Hugging Face `rotate_half` (llama.cpp's `GGML_ROPE_TYPE_NEOX`).
    case neox
}

/// cos and sin of every rotation angle for positions 0..<positions, computed once (exactly as `Ops.rope`
/// computes them per row) so that kernels called many times on the same positions — training runs RoPE
/// forward and backward on q and k in every layer — skip the per-row cos/sin.
public final class RoPETable: @unchecked Sendable {
    public let nRot: Int
    public let base: Float
    public let positions: Int
    /// [positions, nRot]: cos of the nRot/2 angles, then their sin.
    let values: [Float]

    public init(nRot: Int, base: Float, positions: Int) throws(LKError) {
        guard nRot >= 2, nRot % 2 == 0 else { throw .invalidArgument("RoPETable: rotated dims \(nRot) must be even and ≥ 2") }
        guard base.isFinite, base > 1 else { throw .invalidArgument("RoPETable: base \(base) must be finite and > 1") }
        guard positions >= 0, positions <= 1 << 24 else {
            throw .invalidArgument("RoPETable: positions \(positions) must be in 0...\(1 << 24)")
        }
        self.nRot = nRot
        self.base = base
        self.positions = positions
        let half = nRot / 2
        let inv = Ops.ropeInverseFrequencies(nRot: nRot, base: base)
        var v = [Float](repeating: 0, count: positions * nRot)
        for p in 0..<positions {
            for i in 0..<half {
                let a = Double(Float(p) * inv[i])
                v[p * nRot + i] = Float(cos(a))
                v[p * nRot + half + i] = Float(sin(a))
            }
        }
        values = v
    }
}

extension Ops {
    /// The float32 inverse frequencies (nRot/2 values), as Hugging Face computes them.
    public static func ropeInverseFrequencies(nRot: Int, base: Float) -> [Float] {
        (0..<(nRot / 2)).map { i in Float(1) / powf(base, Float(2 * i) / Float(nRot)) }
    }

    static func checkRoPE(_ what: String, rows: Int, heads: Int, headDim: Int, ld: Int, nRot: Int, base: Float,
                          positions: UnsafePointer<Int32>) throws(LKError) {
        try checkDims(what, ("rows", rows), ("heads", heads), ("headDim", headDim))
        guard nRot >= 2, nRot % 2 == 0, nRot <= headDim else {
            throw .invalidArgument("\(what): rotated dims \(nRot) must be even and in 2...\(headDim) (head dim)")
        }
        guard base.isFinite, base > 1 else { throw .invalidArgument("\(what): base \(base) must be finite and > 1") }
        guard ld >= heads * headDim else { throw .invalidArgument("\(what): row stride \(ld) < heads·headDim \(heads * headDim)") }
        for t in 0..<rows where positions[t] < 0 {
            throw .invalidArgument("\(what): negative position \(positions[t]) at row \(t)")
        }
    }

    /// Apply RoPE to every head of every row: each pair (a, b) becomes (a·cos − b·sin, a·sin + b·cos) with
    /// angle pos[t]·invFreq[i]; dims nRot..<D are copied unchanged.
    /// - x, out: [T, ld] with H heads of D values at the start of each row (ld defaults to H·D; out may
    ///   alias x); positions: [T].
    /// `table` (same nRot and base) supplies cos/sin for positions below its size (same values).
    public static func ropeForward(x: UnsafePointer<Float>, out: UnsafeMutablePointer<Float>, rows: Int,
                                   heads: Int, headDim: Int, ld: Int? = nil, nRot: Int? = nil,
                                   base: Float = 10_000, positions: UnsafePointer<Int32>,
                                   layout: RoPELayout, table: RoPETable? = nil,
                                   pool: ThreadPool = .shared) throws(LKError) {
        try rope(src: x, dst: out, rows: rows, heads: heads, headDim: headDim, ld: ld ?? heads * headDim,
                 nRot: nRot ?? headDim, base: base, positions: positions, layout: layout, backward: false,
                 accumulate: false, table: table, pool: pool, "ropeForward")
    }

    /// Backward of `ropeForward`: dx += Rᵀ·dout (rotation by −angle); dims nRot..<D: dx += dout.
    /// With `accumulate: false`, dx = Rᵀ·dout (dx is not read).
    /// - dout, dx: [T, ld]; positions: [T]; other parameters as in the forward.
    public static func ropeBackward(dout: UnsafePointer<Float>, dx: UnsafeMutablePointer<Float>, rows: Int,
                                    heads: Int, headDim: Int, ld: Int? = nil, nRot: Int? = nil,
                                    base: Float = 10_000, positions: UnsafePointer<Int32>,
                                    layout: RoPELayout, accumulate: Bool = true, table: RoPETable? = nil,
                                    pool: ThreadPool = .shared) throws(LKError) {
        try rope(src: dout, dst: dx, rows: rows, heads: heads, headDim: headDim, ld: ld ?? heads * headDim,
                 nRot: nRot ?? headDim, base: base, positions: positions, layout: layout, backward: true,
                 accumulate: accumulate, table: table, pool: pool, "ropeBackward")
    }

    static func rope(src: UnsafePointer<Float>, dst: UnsafeMutablePointer<Float>, rows: Int, heads: Int,
                     headDim: Int, ld: Int, nRot: Int, base: Float, positions: UnsafePointer<Int32>,
                     layout: RoPELayout, backward: Bool, accumulate: Bool, table: RoPETable?, pool: ThreadPool,
                     _ what: String) throws(LKError) {
        try checkRoPE(what, rows: rows, heads: heads, headDim: headDim, ld: ld, nRot: nRot, base: base,
                      positions: positions)
        if let tb = table, tb.nRot != nRot || tb.base != base {
            throw .invalidArgument("\(what): table for nRot \(tb.nRot), base \(tb.base) used with nRot \(nRot), base \(base)")
        }
        let half = nRot / 2
        let add = backward && accumulate
        let invFreq = ropeInverseFrequencies(nRot: nRot, base: base)
        let tableValues = table?.values ?? []
        let tablePositions = table?.positions ?? 0
        invFreq.withUnsafeBufferPointer { ifb in
          tableValues.withUnsafeBufferPointer { tvb in
            let inv = ifb.baseAddress!
            pool.run(maxTasks: tasks(rows * heads * headDim, pool, grain: 8192)) { idx, cnt in
                let r = partition(rows, index: idx, count: cnt)
                if r.isEmpty { return }
                // cos[0..<half] then sin[0..<half] for the current row.
                let cs = pool.scratch(idx, bytes: nRot * 4).assumingMemoryBound(to: Float.self)
                let sn = cs + half
                for t in r {
                    let pi = Int(positions[t])
                    if pi < tablePositions {
                        let row = tvb.baseAddress! + pi * nRot
                        for i in 0..<half {
                            cs[i] = row[i]
                            sn[i] = backward ? -row[half + i] : row[half + i]
                        }
                    } else {
                        let p = Float(positions[t])
                        for i in 0..<half {
                            let a = Double(p * inv[i])
                            cs[i] = Float(cos(a))
                            // The backward rotates by −angle.
                            sn[i] = backward ? -Float(sin(a)) : Float(sin(a))
                        }
                    }
                    for h in 0..<heads {
                        let s = src + t * ld + h * headDim, d = dst + t * ld + h * headDim
                        switch layout {
                        case .neox:
                            var i = 0
                            while i + 8 <= half {
                                let a = ld8(s + i), b = ld8(s + half + i), c = ld8(cs + i), n = ld8(sn + i)
                                var ya = a * c; ya.addProduct(-b, n)
                                var yb = a * n; yb.addProduct(b, c)
                                if add { ya += ld8(d + i); yb += ld8(d + half + i) }
                                st8(ya, d + i); st8(yb, d + half + i)
                                i += 8
                            }
                            while i < half {
                                let a = s[i], b = s[half + i]
                                var ya = (a * cs[i]).addingProduct(-b, sn[i])
                                var yb = (a * sn[i]).addingProduct(b, cs[i])
                                if add { ya += d[i]; yb += d[half + i] }
                                d[i] = ya; d[half + i] = yb
                                i += 1
                            }
                        case .interleaved:
                            for i in 0..<half {
                                let a = s[2 * i], b = s[2 * i + 1]
                                var ya = (a * cs[i]).addingProduct(-b, sn[i])
                                var yb = (a * sn[i]).addingProduct(b, cs[i])
                                if add { ya += d[2 * i]; yb += d[2 * i + 1] }
                                d[2 * i] = ya; d[2 * i + 1] = yb
                            }
                        }
                        if nRot < headDim {
                            if add {
                                for i in nRot..<headDim { d[i] += s[i] }
                            } else if UnsafePointer(d) != s {
                                for i in nRot..<headDim { d[i] = s[i] }
                            }
                        }
                    }
                }
            }
          }
        }
    }
}
