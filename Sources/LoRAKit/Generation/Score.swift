/// Perplexity scoring: next-token negative log-likelihood over a token sequence cut into consecutive,
/// non-overlapping windows, each evaluated alone from position 0; every position but the first of each
/// window is predicted (as llama.cpp's perplexity tool and the usual transformers loop do).
/// The output head is computed for `chunk` rows at a time, so [window, V] logits are never held at once.
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
                  chunk: Int = 64) throws(LKError) -> ScoreResult {
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
    let logits = try Storage(lazyZeroedBytes: chunk * V * 4)
    let lp = logits.base.assumingMemoryBound(to: Float.self)
    var losses = [Float](repeating: 0, count: chunk)
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
        var wsum = 0.0
        var r = 0
        let predicted = w.count - 1
        while r < predicted {
            let n = min(chunk, predicted - r)
            try Linear.forward(x: hidden + r * C, rows: n, weight: model.output, y: lp, pool: ctx.pool)
            let targets = Array(w[(r + 1)...(r + n)])
            try targets.withUnsafeBufferPointer { (tp: UnsafeBufferPointer<Int32>) throws(LKError) in
                try losses.withUnsafeMutableBufferPointer { (lo: inout UnsafeMutableBufferPointer<Float>) throws(LKError) in
                    try Ops.crossEntropyForward(logits: lp, rows: n, vocab: V, targets: tp.baseAddress!,
                                                losses: lo.baseAddress!, lse: nil, pool: ctx.pool)
                }
            }
            for i in 0..<n { wsum += Double(losses[i]) }
            r += n
        }
        windows.append((start, predicted, wsum))
        total += wsum
        count += predicted
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
