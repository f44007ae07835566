import LoRAKitCore
import LoRAKitKernels
import LoRAKitFormats
import LoRAKitTokenizer
import LoRAKitTemplates

/// Perplexity scoring: next-token negative log-likelihood over a token sequence cut into consecutive,
/// non-overlapping windows, each evaluated alone from position 0; every position but the first of each
/// window is predicted (as llama.cpp's perplexity tool and the usual transformers loop do).
/// The output head is computed for all rows of a window and `vocabChunk` vocabulary entries at a time
/// (an online log-sum-exp folds the chunks), so [window, V] logits are never held at once and each
/// (quantized) output-head panel is dequantized once per window.
public struct ScoreResult: Sendable {
    /// Predicted tokens.
    public var tokens: Int
    /// Mean negative log-likelihood (nats).
    public var meanNLL: Double
    public var perplexity: Double { exp(meanNLL) }
    /// Per-window (start, predicted count, NLL sum).
    public var windows: [(start: Int, predicted: Int, nllSum: Double)]
    public var seconds: Double
}

public func score(context ctx: LlamaContext, tokens: [Int32], window: Int, maxTokens: Int? = nil,
                  vocabChunk: Int = 4096) throws(LKError) -> ScoreResult {
    guard window >= 2 else { throw .invalidArgument("score: window \(window) must be ≥ 2") }
    guard window <= ctx.maxPositions else {
        throw .invalidArgument("score: window \(window) exceeds the context size \(ctx.maxPositions)")
    }
    guard window <= ctx.batchCapacity else {
        throw .invalidArgument("score: window \(window) exceeds the context batch \(ctx.batchCapacity)")
    }
    var ids = tokens
    if let m = maxTokens {
        guard m >= 0 else { throw .invalidArgument("score: max tokens \(m) must be ≥ 0") }
        ids = Array(ids.prefix(m))
    }
    guard ids.count >= 2 else { throw .invalidArgument("score: need at least 2 tokens, got \(ids.count)") }
    let model = ctx.model
    let V = model.config.vocabSize, C = model.config.dim
    let head = model.output
    let headRowBytes = try head.dtype.rowBytes(C)
    let vc = min(vocabChunk, V)
    let logits = try Storage(lazyZeroedBytes: window * vc * 4)
    let lp = logits.base.assumingMemoryBound(to: Float.self)
    let state = try Storage(lazyZeroedBytes: 4 * window * 4)
    let runMax = state.base.assumingMemoryBound(to: Float.self)
    let runSum = runMax + window, tgtLogit = runMax + 2 * window, losses = runMax + 3 * window
    var total = 0.0
    var count = 0
    var windows: [(start: Int, predicted: Int, nllSum: Double)] = []
    let t0 = monotonicSeconds()
    var start = 0
    while start < ids.count {
        let w = Array(ids[start..<min(start + window, ids.count)])
        if w.count < 2 { break }
        ctx.reset()
        _ = try ctx.evaluate(.tokens(w), logits: .none)
        let hidden = try ctx.lastHidden(rows: w.count)
        let n = w.count - 1
        let targets = Array(w[1...])
        try Ops.crossEntropyBegin(rows: n, runningMax: runMax, runningSum: runSum, targetLogit: tgtLogit)
        var v0 = 0
        while v0 < V {
            let cols = min(vc, V - v0)
            let panel = try Tensor(storage: head.storage, offset: head.offset + v0 * headRowBytes, shape: [cols, C],
                                   dtype: head.dtype)
            try Linear.forward(x: hidden, rows: n, weight: panel, y: lp, pool: ctx.pool)
            try targets.withUnsafeBufferPointer { (tp: UnsafeBufferPointer<Int32>) throws(LKError) in
                try Ops.crossEntropyChunk(logits: lp, ld: cols, rows: n, cols: cols, vocabStart: v0,
                                          targets: tp.baseAddress!, runningMax: runMax, runningSum: runSum,
                                          targetLogit: tgtLogit, pool: ctx.pool)
            }
            v0 += cols
        }
        try targets.withUnsafeBufferPointer { (tp: UnsafeBufferPointer<Int32>) throws(LKError) in
            try Ops.crossEntropyFinish(rows: n, vocab: V, targets: tp.baseAddress!, ignoreIndex: -100,
                                       runningMax: runMax, runningSum: runSum, targetLogit: tgtLogit,
                                       losses: losses, lse: nil)
        }
        var wsum = 0.0
        for i in 0..<n { wsum += Double(losses[i]) }
        windows.append((start, n, wsum))
        total += wsum
        count += n
        start += window
    }
    ctx.reset()
    return ScoreResult(tokens: count, meanNLL: total / Double(count), windows: windows, seconds: monotonicSeconds() - t0)
}

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif
