import Testing
@testable import LoRAKitCore
@testable import LoRAKitKernels
@testable import LoRAKitModel

/// The f16 KV cache (issue 16): the attention kernel over f16 keys and values, and contexts that store
/// their cache in f16.
@Suite struct KVCacheTests {
    /// `x` stored as f16 bytes, and the f32 values those bytes hold.
    static func f16(_ x: FBuf) -> (bytes: [UInt8], rounded: FBuf) {
        var bytes = [UInt8](repeating: 0, count: x.n * 2)
        bytes.withUnsafeMutableBytes { quantize(x.p, count: x.n, dtype: .f16, into: $0.baseAddress!) }
        let back = FBuf(x.n)
        bytes.withUnsafeBytes { dequantize($0.baseAddress!, dtype: .f16, count: x.n, into: back.p) }
        return (bytes, back)
    }

    @Test func f16AttentionEqualsF32AttentionOnRoundedValues() throws {
        let pool = testPools[1]
        // Row-wise (fewer than attentionBlockedMinRows rows) and blocked prefills; head sizes with tails.
        let configs: [(T: Int, S: Int, H: Int, Hkv: Int, D: Int, start: Int)] = [
            (1, 1, 1, 1, 8, 0), (1, 41, 9, 3, 64, 40), (5, 12, 6, 3, 33, 7),
            (Ops.attentionBlockedMinRows, 40, 4, 2, 16, 40 - Ops.attentionBlockedMinRows), (40, 40, 9, 3, 64, 0),
        ]
        for c in configs {
            let q = FBuf(randn(c.T * c.H * c.D, seed: 11)), k = FBuf(randn(c.S * c.Hkv * c.D, seed: 12))
            let v = FBuf(randn(c.S * c.Hkv * c.D, seed: 13))
            let (kb, kr) = Self.f16(k), (vb, vr) = Self.f16(v)
            #expect(kr.a != k.a, "f16 rounding changes some keys")
            let ref = attentionRef(q: q.d, k: kr.d, v: vr.d, T: c.T, S: c.S, H: c.H, Hkv: c.Hkv, D: c.D, start: c.start)
            let out = FBuf(c.T * c.H * c.D, .nan), scratch = FBuf(2 * c.S * c.Hkv * c.D, .nan)
            try kb.withUnsafeBytes { kp in
                try vb.withUnsafeBytes { vp in
                    try Ops.attentionForward(q: q.p, k: kp.baseAddress!, v: vp.baseAddress!, type: .f16, out: out.p,
                                             rows: c.T, keys: c.S, heads: c.H, kvHeads: c.Hkv, headDim: c.D,
                                             startPos: c.start, scratch: scratch.p, pool: pool)
                }
            }
            expectClose(out.a, ref.out, atol: 2e-6, rtol: 2e-5, "f16 attention \(c)")
            // The f32 kernel on the rounded values gives the same outputs (same order of sums row-wise).
            let out32 = FBuf(c.T * c.H * c.D, .nan)
            try Ops.attentionForward(q: q.p, k: kr.p, v: vr.p, type: .f32, out: out32.p, rows: c.T, keys: c.S,
                                     heads: c.H, kvHeads: c.Hkv, headDim: c.D, startPos: c.start, scratch: nil,
                                     pool: pool)
            if c.T < Ops.attentionBlockedMinRows {
                #expect(out.a == out32.a, "row-wise f16 == f32 on rounded values \(c)")
            } else {
                expectClose(out.a, out32.d, atol: 1e-6, rtol: 1e-6, "blocked f16 vs f32 \(c)")
            }
        }
        // A long prefill without scratch is refused, naming what is missing.
        let q = FBuf(40 * 8), kv = [UInt8](repeating: 0, count: 40 * 8 * 2), out = FBuf(40 * 8)
        #expect(throws: LKError.self) {
            try kv.withUnsafeBytes { p in
                try Ops.attentionForward(q: q.p, k: p.baseAddress!, v: p.baseAddress!, type: .f16, out: out.p, rows: 40,
                                         keys: 40, heads: 1, kvHeads: 1, headDim: 8, startPos: 0, scratch: nil,
                                         pool: pool)
            }
        }
    }

    /// Rows with `attentionChunkedMinKeys` keys or more attend chunk by chunk (partial sums merged): equal
    /// to the reference, one row at a time equal to the rows at once (also when a call's rows straddle the
    /// threshold), alone equal to beside other sequences, f32 and f16.
    @Test func chunkedRowwiseAttention() throws {
        let pool = testPools[2], C = Ops.attentionKeyChunk, M = Ops.attentionChunkedMinKeys
        let (H, Hkv, D) = (9, 3, 64)
        for (T, start) in [(1, M + 37), (6, M - 3), (5, M + C), (1, M - 1), (3, M - 3)] {
            let S = start + T
            let q = FBuf(randn(T * H * D, seed: 21)), k = FBuf(randn(S * Hkv * D, seed: 22))
            let v = FBuf(randn(S * Hkv * D, seed: 23))
            let ref = attentionRef(q: q.d, k: k.d, v: v.d, T: T, S: S, H: H, Hkv: Hkv, D: D, start: start)
            let out = FBuf(T * H * D, .nan), lse = FBuf(T * H, .nan)
            try Ops.attentionForward(q: q.p, k: k.p, v: v.p, out: out.p, lse: lse.p, rows: T, keys: S, heads: H,
                                     kvHeads: Hkv, headDim: D, startPos: start, pool: pool)
            expectClose(out.a, ref.out, atol: 2e-6, rtol: 2e-5, "chunked attention T \(T) start \(start)")
            expectClose(lse.a, ref.lse, atol: 2e-6, rtol: 2e-6, "chunked lse T \(T) start \(start)")
            for t in 0..<T {
                let o = FBuf(H * D)
                try Ops.attentionForward(q: q.p + t * H * D, k: k.p, v: v.p, out: o.p, lse: nil, rows: 1,
                                         keys: start + t + 1, heads: H, kvHeads: Hkv, headDim: D,
                                         startPos: start + t, pool: pool)
                #expect(o.a == Array(out.a[(t * H * D)..<((t + 1) * H * D)]), "row \(t) alone, start \(start)")
            }
            // Beside a short sequence in one hand-out: the same bits.
            let q2 = FBuf(randn(2 * H * D, seed: 24)), k2 = FBuf(randn(9 * Hkv * D, seed: 25))
            let v2 = FBuf(randn(9 * Hkv * D, seed: 26))
            let many = FBuf(T * H * D, .nan), other = FBuf(2 * H * D, .nan), otherAlone = FBuf(2 * H * D, .nan)
            try Ops.attentionForwardMany([
                Ops.AttentionSequence(q: q2.p, k: k2.p, v: v2.p, out: other.p, rows: 2, startPos: 7),
                Ops.AttentionSequence(q: q.p, k: k.p, v: v.p, out: many.p, rows: T, startPos: start),
            ], heads: H, kvHeads: Hkv, headDim: D, pool: pool)
            try Ops.attentionForward(q: q2.p, k: k2.p, v: v2.p, out: otherAlone.p, lse: nil, rows: 2, keys: 9, heads: H,
                                     kvHeads: Hkv, headDim: D, startPos: 7, pool: pool)
            #expect(many.a == out.a && other.a == otherAlone.a, "attentionForwardMany T \(T) start \(start)")
            // f16 cache: the f32 kernel on the rounded values, bit for bit (both row-wise).
            let (kb, kr) = Self.f16(k), (vb, vr) = Self.f16(v)
            let o16 = FBuf(T * H * D, .nan), o32 = FBuf(T * H * D, .nan)
            try kb.withUnsafeBytes { kp in
                try vb.withUnsafeBytes { vp in
                    try Ops.attentionForward(q: q.p, k: kp.baseAddress!, v: vp.baseAddress!, type: .f16, out: o16.p,
                                             rows: T, keys: S, heads: H, kvHeads: Hkv, headDim: D, startPos: start,
                                             scratch: nil, pool: pool)
                }
            }
            try Ops.attentionForward(q: q.p, k: kr.p, v: vr.p, out: o32.p, lse: nil, rows: T, keys: S, heads: H,
                                     kvHeads: Hkv, headDim: D, startPos: start, pool: pool)
            #expect(o16.a == o32.a, "f16 chunked T \(T) start \(start)")
        }
    }

    @Test func f16ContextMatchesF32AndDecodeEqualsPrefill() throws {
        let m = try LlamaModel(gguf: fixturePath("model/tiny-llama-f32.gguf"))
        let ids: [Int32] = [5, 77, 300, 2, 511, 40, 41, 42, 43, 44, 45, 46, 47, 48, 49, 50, 51, 52, 53, 54, 1, 9]
        let c32 = try LlamaContext(model: m, threads: 2)
        let c16 = try LlamaContext(model: m, threads: 2, kvType: .f16)
        #expect(c16.kvType == .f16 && c32.kvType == .f32)
        let a = try c32.evaluate(.tokens(ids), logits: .all)
        let b = try c16.evaluate(.tokens(ids), logits: .all)
        #expect(a.count == b.count)
        let maxDiff = zip(a, b).map { abs($0 - $1) }.max()!
        // Rounding keys and values to f16 moves the tiny model's logits by about 1e-3.
        #expect(maxDiff > 0 && maxDiff < 2e-2, "f16 vs f32 cache: max |Δlogit| \(maxDiff)")
        // One token at a time through the f16 cache (row-wise kernel reading f16) equals the prefill (blocked
        // kernel on the converted cache) up to summation order.
        let one = try LlamaContext(model: m, threads: 2, kvType: .f16)
        let vocab = m.config.vocabSize
        for (t, id) in ids.enumerated() {
            let l = try one.evaluate(.tokens([id]))
            let row = Array(b[(t * vocab)..<((t + 1) * vocab)])
            let d = zip(l, row).map { abs($0 - $1) }.max()!
            #expect(d < 1e-4, "position \(t): max |Δlogit| \(d)")
        }
        // Truncating and re-evaluating through the f16 cache gives the same logits again.
        try one.truncate(to: 3)
        let again = try one.evaluate(.tokens(Array(ids[3...])), logits: .all)
        let d = zip(again, b[(3 * vocab)...]).map { abs($0 - $1) }.max()!
        #expect(d < 1e-4, "after truncate: max |Δlogit| \(d)")
    }

    @Test func f16CacheOnTheRealModelKeepsGreedyOutput() throws {
        guard let m = RealModel.shared else { return }
        let ids = try #require(m.tokenizer).encode("The capital of France is Paris. The capital of Italy is")
        var outs: [[Int32]] = []
        for kv in KVCacheType.allCases {
            let ctx = try LlamaContext(model: m, maxPositions: 128, threads: 2, kvType: kv)
            var logits = try ctx.evaluate(.tokens(ids))
            var got: [Int32] = []
            for _ in 0..<12 {
                let t = Sampler.argmax(logits)
                got.append(t)
                logits = try ctx.evaluate(.tokens([t]))
            }
            outs.append(got)
        }
        #expect(outs[0] == outs[1], "greedy output f32 \(outs[0]) vs f16 \(outs[1])")
    }
}
