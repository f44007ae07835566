import Testing
@testable import LoRAKitCore
@testable import LoRAKitKernels

private let manyPools: [ThreadPool] = [ThreadPool(threads: 1), ThreadPool(threads: 2), ThreadPool(threads: 3)]

private func randomFloats(_ n: Int, seed: UInt64) -> [Float] {
    var rng = SplitMix64(seed: seed)
    return (0..<n).map { _ in rng.nextFloat() * 2 - 1 }
}

/// The kernels a `BatchContext` step uses for many sequences at once.
@Suite struct BatchKernelTests {
    /// `Ops.attentionForwardMany` gives every sequence bitwise what `Ops.attentionForward` gives it alone:
    /// decode rows (1 row at various positions), short prefills, one long prefill (blocked kernel), GQA,
    /// 1–3 threads.
    @Test func attentionManyEqualsSingle() throws {
        let H = 6, Hkv = 2, D = 40
        let shapes: [(rows: Int, start: Int)] = [(1, 0), (1, 17), (3, 5), (1, 64), (2, 0), (Ops.attentionBlockedMinRows + 3, 4), (1, 1)]
        var bufs: [(q: [Float], k: [Float], v: [Float])] = []
        for (i, s) in shapes.enumerated() {
            let keys = s.start + s.rows
            bufs.append((randomFloats(s.rows * H * D, seed: UInt64(10 + i)), randomFloats(keys * Hkv * D, seed: UInt64(50 + i)),
                         randomFloats(keys * Hkv * D, seed: UInt64(90 + i))))
        }
        for pool in manyPools {
            var outs = shapes.map { [Float](repeating: .nan, count: $0.rows * H * D) }
            var refs = outs
            for (i, s) in shapes.enumerated() {
                try refs[i].withUnsafeMutableBufferPointer { o in
                    try Ops.attentionForward(q: bufs[i].q, k: bufs[i].k, v: bufs[i].v, out: o.baseAddress!, lse: nil, rows: s.rows,
                                             keys: s.start + s.rows, heads: H, kvHeads: Hkv, headDim: D, startPos: s.start,
                                             pool: pool)
                }
            }
            // Pointers stay valid: the arrays are not mutated (other than through these pointers) meanwhile.
            let qs = bufs.map { b in let p = UnsafeMutablePointer<Float>.allocate(capacity: b.q.count); p.initialize(from: b.q, count: b.q.count); return p }
            let ks = bufs.map { b in let p = UnsafeMutablePointer<Float>.allocate(capacity: b.k.count); p.initialize(from: b.k, count: b.k.count); return p }
            let vs = bufs.map { b in let p = UnsafeMutablePointer<Float>.allocate(capacity: b.v.count); p.initialize(from: b.v, count: b.v.count); return p }
            let os = outs.map { o in let p = UnsafeMutablePointer<Float>.allocate(capacity: o.count); p.initialize(repeating: .nan, count: o.count); return p }
            defer { (qs + ks + vs + os).forEach { $0.deallocate() } }
            let seqs = shapes.indices.map { i in
                Ops.AttentionSequence(q: qs[i], k: ks[i], v: vs[i], out: os[i], rows: shapes[i].rows, startPos: shapes[i].start)
            }
            try Ops.attentionForwardMany(seqs, heads: H, kvHeads: Hkv, headDim: D, pool: pool)
            for i in shapes.indices {
                outs[i] = Array(UnsafeBufferPointer(start: os[i], count: outs[i].count))
                #expect(outs[i].map(\.bitPattern) == refs[i].map(\.bitPattern), "sequence \(i) threads \(pool.activeCount)")
                #expect(outs[i].allSatisfy { $0.isFinite })
            }
        }
        // A sequence whose rows overflow its keys is refused.
        let p = UnsafeMutablePointer<Float>.allocate(capacity: H * D)
        defer { p.deallocate() }
        #expect(throws: LKError.self) {
            try Ops.attentionForwardMany([Ops.AttentionSequence(q: p, k: p, v: p, out: p, rows: 1, startPos: -1)],
                                         heads: H, kvHeads: Hkv, headDim: D, pool: manyPools[0])
        }
    }
    /// The same over f16 caches laid out head-major: every sequence bitwise what the typed
    /// `Ops.attentionForward` gives it alone (decode and short rows read the f16 rows; the long prefill
    /// converts them to f32 in scratch); a long prefill without scratch is refused.
    @Test func attentionManyEqualsSingleF16() throws {
        let H = 6, Hkv = 2, D = 40, cap = 48
        let layout = Ops.KVLayout.heads(capacity: cap, headDim: D)
        let shapes: [(rows: Int, start: Int)] = [(1, 0), (1, 17), (3, 5), (Ops.attentionBlockedMinRows + 3, 4), (1, 46)]
        var qs: [[Float]] = [], caches: [(k: [Float16], v: [Float16])] = []
        for (i, s) in shapes.enumerated() {
            qs.append(randomFloats(s.rows * H * D, seed: UInt64(10 + i)))
            let kf = randomFloats(cap * Hkv * D, seed: UInt64(50 + i)), vf = randomFloats(cap * Hkv * D, seed: UInt64(90 + i))
            caches.append((kf.map { Float16($0) }, vf.map { Float16($0) }))
        }
        let scratch = [Float](repeating: 0, count: 2 * cap * Hkv * D)
        for pool in manyPools {
            var refs = shapes.map { [Float](repeating: .nan, count: $0.rows * H * D) }
            var outs = refs
            try scratch.withUnsafeBufferPointer { sb in
                let sp = UnsafeMutablePointer(mutating: sb.baseAddress!)
                for (i, s) in shapes.enumerated() {
                    try refs[i].withUnsafeMutableBufferPointer { o in
                        try Ops.attentionForward(q: qs[i], k: caches[i].k, v: caches[i].v, type: .f16, layout: layout,
                                                 out: o.baseAddress!, rows: s.rows, keys: s.start + s.rows, heads: H,
                                                 kvHeads: Hkv, headDim: D, startPos: s.start, scratch: sp, pool: pool)
                    }
                }
                let os = outs.map { o in let p = UnsafeMutablePointer<Float>.allocate(capacity: o.count); p.initialize(repeating: .nan, count: o.count); return p }
                defer { os.forEach { $0.deallocate() } }
                // Copies whose pointers stay valid for the call (as above).
                let qp = qs.map { b in let p = UnsafeMutablePointer<Float>.allocate(capacity: b.count); p.initialize(from: b, count: b.count); return p }
                let kp = caches.map { c in let p = UnsafeMutablePointer<Float16>.allocate(capacity: c.k.count); p.initialize(from: c.k, count: c.k.count); return p }
                let vp = caches.map { c in let p = UnsafeMutablePointer<Float16>.allocate(capacity: c.v.count); p.initialize(from: c.v, count: c.v.count); return p }
                defer { qp.forEach { $0.deallocate() }; kp.forEach { $0.deallocate() }; vp.forEach { $0.deallocate() } }
                let seqs = shapes.indices.map { i in
                    Ops.AttentionSequence(q: qp[i], k: kp[i], v: vp[i], layout: layout,
                                          out: os[i], rows: shapes[i].rows, startPos: shapes[i].start)
                }
                try Ops.attentionForwardMany(seqs, type: .f16, heads: H, kvHeads: Hkv, headDim: D, scratch: sp, pool: pool)
                #expect(throws: LKError.self) {
                    try Ops.attentionForwardMany(seqs, type: .f16, heads: H, kvHeads: Hkv, headDim: D, scratch: nil, pool: pool)
                }
                for i in shapes.indices { outs[i] = Array(UnsafeBufferPointer(start: os[i], count: outs[i].count)) }
            }
            for i in shapes.indices {
                #expect(outs[i].map(\.bitPattern) == refs[i].map(\.bitPattern), "f16 sequence \(i) threads \(pool.activeCount)")
                #expect(outs[i].allSatisfy { $0.isFinite })
            }
        }
    }
}
