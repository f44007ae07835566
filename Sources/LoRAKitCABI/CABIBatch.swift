// C ABI for batch contexts (lorakit.h, "Batch contexts"): many sequences over one model, each with its
// own KV cache positions and LoRA adapter set, evaluated together (BatchContext).
import CLoRAKit
import LoRAKit

/// What an lk_batch handle refers to. Holds its ModelBox (and so the model) strongly.
final class BatchBox: ExclusiveBox, @unchecked Sendable {
    let batch: BatchContext
    let modelBox: ModelBox

    init(_ b: BatchContext, _ m: ModelBox) {
        batch = b
        modelBox = m
    }
}

/// Run `body` with exclusive use of the batch context behind `h`.
func withBatch<R>(_ h: OpaquePointer?, _ body: (BatchBox) throws -> R) throws -> R {
    try exclusive(h, .batch, "batch", rule: "a batch context serves one thread at a time", body)
}

/// A sequence id as the core's, or an error naming it (ids are ≥ 0).
func sequenceArg(_ id: Int32, _ name: String = "seq") throws -> Int {
    guard id >= 0 else { throw invalid("\(name) \(id) is negative (sequence ids are ≥ 0)") }
    return Int(id)
}

/// A core sequence id for C (ids grow by one per added or forked sequence).
func cSequence(_ id: Int) throws -> Int32 {
    guard let v = Int32(exactly: id) else { throw invalid("sequence id \(id) does not fit in int32 (create a new batch context)") }
    return v
}

@_cdecl("lk_batch_new")
public func lk_batch_new(_ model: OpaquePointer?, _ maxSequences: Int32, _ nCtx: Int32, _ nThreads: Int32,
                         _ out: UnsafeMutablePointer<OpaquePointer?>?) -> Int32 {
    guarded("lk_batch_new") {
        var p = lk_batch_params.defaults
        p.max_sequences = maxSequences
        p.n_ctx = nCtx
        p.n_threads = nThreads
        return try newBatch(model, p, prefix: "", out)
    }
}

@_cdecl("lk_batch_new_with_params")
public func lk_batch_new_with_params(_ model: OpaquePointer?, _ params: UnsafePointer<lk_batch_params>?,
                                     _ out: UnsafeMutablePointer<OpaquePointer?>?) -> Int32 {
    guarded("lk_batch_new_with_params") {
        let p = try lk_batch_params.read(params)
        return try newBatch(model, p, prefix: "params->", out)
    }
}

/// Both constructors: `prefix` names the fields as the caller wrote them ("params->n_ctx" or "n_ctx").
private func newBatch(_ model: OpaquePointer?, _ p: lk_batch_params, prefix: String,
                      _ out: UnsafeMutablePointer<OpaquePointer?>?) throws -> Int {
    let o = try requirePointer(out, "out")
    let box = try modelArg(model)
    guard p.max_sequences >= 1, p.max_sequences <= 4096 else {
        throw invalid("\(prefix)max_sequences \(p.max_sequences) must be in 1...4096")
    }
    let f = try contextFields(nCtx: p.n_ctx, nThreads: p.n_threads, kvType: p.kv_type, model: box.model, prefix: prefix)
    let b = try BatchContext(model: box.model, maxSequences: Int(p.max_sequences), maxPositions: f.positions,
                             threads: f.threads, kvType: f.kv)
    return Handles.shared.give(BatchBox(b, box), kind: .batch, to: o)
}

@_cdecl("lk_batch_free")
public func lk_batch_free(_ batch: OpaquePointer?) -> Int32 {
    guarded("lk_batch_free") { try Handles.shared.free(batch, kind: .batch, what: "batch") }
}

@_cdecl("lk_batch_add_sequence")
public func lk_batch_add_sequence(_ batch: OpaquePointer?, _ seq: UnsafeMutablePointer<Int32>?) -> Int32 {
    guarded("lk_batch_add_sequence") {
        let o = try requirePointer(seq, "seq")
        try withBatch(batch) { box in
            // Checked before the sequence exists, so that an error leaves nothing behind.
            let id = try box.batch.addSequence()
            do { o.pointee = try cSequence(id) } catch { try? box.batch.removeSequence(id); throw error }
        }
        return LK_OK
    }
}

@_cdecl("lk_batch_remove_sequence")
public func lk_batch_remove_sequence(_ batch: OpaquePointer?, _ seq: Int32) -> Int32 {
    guarded("lk_batch_remove_sequence") {
        try withBatch(batch) { box in try box.batch.removeSequence(try sequenceArg(seq)) }
        return LK_OK
    }
}

@_cdecl("lk_batch_fork")
public func lk_batch_fork(_ batch: OpaquePointer?, _ seq: Int32, _ newSeq: UnsafeMutablePointer<Int32>?) -> Int32 {
    guarded("lk_batch_fork") {
        let o = try requirePointer(newSeq, "new_seq")
        try withBatch(batch) { box in
            let id = try box.batch.fork(try sequenceArg(seq))
            do { o.pointee = try cSequence(id) } catch { try? box.batch.removeSequence(id); throw error }
        }
        return LK_OK
    }
}

@_cdecl("lk_batch_truncate")
public func lk_batch_truncate(_ batch: OpaquePointer?, _ seq: Int32, _ position: Int32) -> Int32 {
    guarded("lk_batch_truncate") {
        try withBatch(batch) { box in try box.batch.truncate(try sequenceArg(seq), to: Int(position)) }
        return LK_OK
    }
}

@_cdecl("lk_batch_position")
public func lk_batch_position(_ batch: OpaquePointer?, _ seq: Int32, _ position: UnsafeMutablePointer<Int32>?) -> Int32 {
    guarded("lk_batch_position") {
        let p = try requirePointer(position, "position")
        p.pointee = Int32(clamping: try withBatch(batch) { box in try box.batch.position(of: try sequenceArg(seq)) })
        return LK_OK
    }
}

@_cdecl("lk_batch_sequences")
public func lk_batch_sequences(_ batch: OpaquePointer?, _ seqs: UnsafeMutablePointer<Int32>?, _ capacity: Int64,
                                 _ count: UnsafeMutablePointer<Int64>?) -> Int32 {
    guarded("lk_batch_sequences") {
        let cnt = try requirePointer(count, "count")
        let cap = try capacityArg(capacity)
        let ids = try withBatch(batch) { box in box.batch.activeSequences }
        guard cap >= Int64(ids.count) else {
            cnt.pointee = Int64(ids.count)
            throw CError(LK_ERR_BUFFER_TOO_SMALL, "capacity \(cap) < \(ids.count) live sequences (*count holds the number needed)")
        }
        let values = try ids.map(cSequence)
        if !values.isEmpty {
            let out = try requirePointer(seqs, "seqs")
            out.update(from: values, count: values.count)
        }
        cnt.pointee = Int64(ids.count)
        return LK_OK
    }
}

@_cdecl("lk_batch_set_adapters")
public func lk_batch_set_adapters(_ batch: OpaquePointer?, _ seq: Int32, _ adapters: UnsafePointer<OpaquePointer?>?,
                                  _ scales: UnsafePointer<Float>?, _ nAdapters: Int64) -> Int32 {
    guarded("lk_batch_set_adapters") {
        guard nAdapters >= 0, nAdapters <= 4096 else { throw invalid("n_adapters \(nAdapters) must be in 0...4096") }
        let n = Int(nAdapters)
        var list: [(adapter: AnyAdapter, scale: Float)] = []
        if n > 0 {
            let hs = try requirePointer(adapters, "adapters")
            let ss = try requirePointer(scales, "scales")
            try withBatch(batch) { box in
                for i in 0..<n {
                    let a = try adapterArg(hs[i], "adapters[\(i)]")
                    try requireSameModel(a, box.batch.model, "adapters[\(i)]", "batch's model")
                    list.append((a.any, try scaleArg(ss[i], "scales[\(i)]")))
                }
                try box.batch.setAdapters(list, for: try sequenceArg(seq))
            }
        } else {
            try withBatch(batch) { box in try box.batch.setAdapters([], for: try sequenceArg(seq)) }
        }
        return LK_OK
    }
}

@_cdecl("lk_batch_step")
public func lk_batch_step(_ batch: OpaquePointer?, _ nSeqs: Int64, _ seqs: UnsafePointer<Int32>?,
                          _ tokens: UnsafePointer<Int32>?, _ nTokens: UnsafePointer<Int64>?,
                          _ logits: UnsafeMutablePointer<Float>?, _ capacity: Int64) -> Int32 {
    guarded("lk_batch_step") {
        try withBatch(batch) { box in
            let b = box.batch
            guard nSeqs >= 1, nSeqs <= Int64(b.maxSequences) else {
                throw invalid("n_seqs \(nSeqs) must be in 1...\(b.maxSequences) (the batch's max_sequences)")
            }
            let n = Int(nSeqs)
            let ids = try requirePointer(seqs, "seqs")
            let counts = try requirePointer(nTokens, "n_tokens")
            for i in 0..<n {
                guard counts[i] >= 1 else { throw invalid("n_tokens[\(i)] = \(counts[i]) must be ≥ 1") }
                guard counts[i] <= Int64(b.maxPositions) else {
                    throw invalid("n_tokens[\(i)] = \(counts[i]) exceeds the batch's \(b.maxPositions) positions per sequence")
                }
            }
            let toks = try requirePointer(tokens, "tokens")
            let vocab = Int64(b.model.config.vocabSize)
            let cap = try capacityArg(capacity)
            guard cap >= Int64(n) * vocab else {
                throw CError(LK_ERR_BUFFER_TOO_SMALL, "capacity \(cap) < n_seqs · n_vocab = \(Int64(n) * vocab) floats")
            }
            let out = try requirePointer(logits, "logits")
            var inputs: [(sequence: Int, tokens: [Int32])] = []
            var off = 0
            for i in 0..<n {
                let c = Int(counts[i])
                inputs.append((try sequenceArg(ids[i], "seqs[\(i)]"), Array(UnsafeBufferPointer(start: toks + off, count: c))))
                off += c
            }
            let rows = try b.step(inputs)
            for (i, r) in rows.enumerated() {
                r.withUnsafeBufferPointer { (out + i * Int(vocab)).update(from: $0.baseAddress!, count: r.count) }
            }
        }
        return LK_OK
    }
}
