import LoRAKitCore
import LoRAKitKernels
import LoRAKitFormats
import LoRAKitTokenizer
import LoRAKitTemplates

/// Token sampling: greedy, temperature, top-k, top-p, min-p, repetition penalty, with a seeded
/// generator so the same seed gives the same tokens.
///
/// Order of operations (as llama.cpp's default chain and Hugging Face's logits processors): repetition
/// penalty on the raw logits → greedy if temperature is 0 → top-k → temperature → softmax → top-p →
/// min-p → draw.
public struct SamplerParams: Sendable, Equatable {
    /// 0 = greedy (argmax; ties go to the lowest id).
    public var temperature: Float = 0.8
    /// Keep the k most likely tokens (0 = off).
    public var topK: Int = 40
    /// Keep the smallest set of most likely tokens whose probability reaches p (1 = off).
    public var topP: Float = 0.95
    /// Drop tokens whose probability is below minP × the top probability (0 = off).
    public var minP: Float = 0.05
    /// Divide positive logits (multiply negative ones) of already seen tokens by this (1 = off), as
    /// Hugging Face's RepetitionPenaltyLogitsProcessor / llama.cpp's penalty_repeat.
    public var repetitionPenalty: Float = 1.0
    /// How many of the most recent tokens the penalty looks at (0 = all).
    public var penaltyLastN: Int = 64
    public var seed: UInt64 = 0

    public init() {}

    public static var greedy: SamplerParams {
        var p = SamplerParams()
        p.temperature = 0
        return p
    }

    /// Checks every field; the error (`LKError.invalidOption`) names it as lk_sampler_params and Python do
    /// (`temperature`, `top_k`, `top_p`, `min_p`, `repeat_penalty`, `repeat_last_n`).
    public func validate() throws(LKError) {
        func bad(_ field: String, _ problem: String) -> LKError { .invalidOption(field: field, problem: problem) }
        guard temperature.isFinite, temperature >= 0 else { throw bad("temperature", "\(temperature) must be finite and ≥ 0 (0 = greedy)") }
        guard topK >= 0 else { throw bad("top_k", "\(topK) must be ≥ 0 (0 = off)") }
        guard topP.isFinite, topP > 0, topP <= 1 else { throw bad("top_p", "\(topP) must be in (0, 1] (1 = off)") }
        guard minP.isFinite, minP >= 0, minP <= 1 else { throw bad("min_p", "\(minP) must be in [0, 1] (0 = off)") }
        guard repetitionPenalty.isFinite, repetitionPenalty > 0 else {
            throw bad("repeat_penalty", "\(repetitionPenalty) must be finite and > 0 (1 = off)")
        }
        guard penaltyLastN >= 0 else { throw bad("repeat_last_n", "\(penaltyLastN) must be ≥ 0 (0 = all)") }
    }
}

public struct Sampler: Sendable {
    public let params: SamplerParams
    private var rng: SplitMix64
    private var indices: [Int32] = []

    public init(_ params: SamplerParams) throws(LKError) {
        try params.validate()
        self.params = params
        self.rng = SplitMix64(seed: params.seed)
    }

    /// Pick the next token from `logits` (modified in place by the penalty), given the tokens so far.
    public mutating func sample(logits: inout [Float], history: [Int32]) -> Int32 {
        let n = logits.count
        if params.repetitionPenalty != 1 {
            let recent = params.penaltyLastN == 0 ? history[...] : history.suffix(params.penaltyLastN)
            var seen = Set<Int32>()
            for t in recent where t >= 0 && Int(t) < n && seen.insert(t).inserted {
                let v = logits[Int(t)]
                logits[Int(t)] = v > 0 ? v / params.repetitionPenalty : v * params.repetitionPenalty
            }
        }
        if params.temperature == 0 { return Sampler.argmax(logits) }

        // Candidates sorted by logit (descending), ties by id; top-k bounds the sort.
        indices = (0..<Int32(n)).filter { !logits[Int($0)].isNaN }
        if indices.isEmpty { return Sampler.argmax(logits) }
        let k = params.topK > 0 ? min(params.topK, indices.count) : indices.count
        let byLogit: (Int32, Int32) -> Bool = { a, b in
            let la = logits[Int(a)], lb = logits[Int(b)]
            return la != lb ? la > lb : a < b
        }
        if k < indices.count {
            // Partial selection: keep the k best, then sort them.
            indices = Array(indices.sorted(by: byLogit).prefix(k))
        } else {
            indices.sort(by: byLogit)
        }
        // Softmax with temperature over the candidates (Double for a stable sum).
        let maxL = Double(logits[Int(indices[0])])
        var probs = indices.map { exp((Double(logits[Int($0)]) - maxL) / Double(params.temperature)) }
        var total = probs.reduce(0, +)
        for i in probs.indices { probs[i] /= total }
        var keep = probs.count
        if params.topP < 1 {
            var acc = 0.0
            for i in 0..<probs.count {
                acc += probs[i]
                if acc >= Double(params.topP) { keep = i + 1; break }
            }
        }
        if params.minP > 0 {
            let floor = probs[0] * Double(params.minP)
            var m = 0
            while m < keep && probs[m] >= floor { m += 1 }
            keep = max(1, m)
        }
        total = probs[0..<keep].reduce(0, +)
        let r = Double(rng.next() >> 11) * (1.0 / 9_007_199_254_740_992.0) * total
        var acc = 0.0
        for i in 0..<keep {
            acc += probs[i]
            if r < acc { return indices[i] }
        }
        return indices[keep - 1]
    }

    /// Index of the largest value (the lowest index among ties; NaN never wins).
    public static func argmax(_ v: [Float]) -> Int32 {
        var best = -Float.infinity
        var bi = 0
        for (i, x) in v.enumerated() where x > best {
            best = x
            bi = i
        }
        return Int32(bi)
    }
}

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif
