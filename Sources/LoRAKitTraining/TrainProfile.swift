import LoRAKitCore
import LoRAKitKernels
import LoRAKitFormats
import LoRAKitTokenizer
import LoRAKitTemplates
import LoRAKitModel

/// Where the time of training passes goes: wall-clock time (and useful floating-point operations, where
/// they are well defined) per part of the forward and backward, summed over every pass run while the
/// profile is attached to a `LoRATrainer` (`trainer.profile = TrainProfile()`).
///
/// Timing adds two clock reads per kernel call (a few hundred per layer and pass, ≈ 0.1 % of a step);
/// without a profile nothing is measured. `lorakit bench train --profile` prints this table.
#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

public final class TrainProfile: @unchecked Sendable {
    /// The parts a training pass is split into.
    public enum Part: Int, CaseIterable, Sendable {
        /// Token embedding lookup and caller-given input rows.
        case embedding
        /// Base linear layers, forward: X·Wᵀ (quantized weights dequantized in the GEMM panels).
        case baseForward
        /// Base linear layers, backward with respect to the input: dY·W.
        case baseBackward
        /// LoRA products (forward t = c·x·Aᵀ, y += t·Bᵀ; backward dA, dB, dx), dropout and the per-pass
        /// rebuild of the Bᵀ panels included.
        case lora
        /// Attention forward (scores, softmax, weighted values).
        case attentionForward
        /// Attention backward (dq, dk, dv).
        case attentionBackward
        /// RMSNorm forward and backward.
        case norm
        /// Rotary embeddings forward and backward.
        case rope
        /// SwiGLU forward (also recomputed in the backward) and backward.
        case activation
        /// Residual additions, buffer zeroing and row copies.
        case elementwise
        /// Output head forward: logits of the predicted rows.
        case headForward
        /// Output head backward: dlogits·W.
        case headBackward
        /// Cross-entropy (log-sum-exp, loss and dlogits).
        case loss

        public var label: String {
            switch self {
            case .embedding: return "embedding"
            case .baseForward: return "base GEMMs forward X·Wᵀ"
            case .baseBackward: return "base GEMMs backward dY·W"
            case .lora: return "LoRA products (+ dropout)"
            case .attentionForward: return "attention forward"
            case .attentionBackward: return "attention backward"
            case .norm: return "RMSNorm"
            case .rope: return "RoPE"
            case .activation: return "SwiGLU"
            case .elementwise: return "residual adds, zeroing, copies"
            case .headForward: return "output head forward"
            case .headBackward: return "output head backward"
            case .loss: return "cross-entropy"
            }
        }
    }

    /// Seconds per part (indexed by `Part.rawValue`).
    public private(set) var seconds: [Double]
    /// Useful floating-point operations per part (0 where not counted: element-wise parts).
    public private(set) var flops: [Double]
    /// Passes measured.
    public internal(set) var passes = 0

    public init() {
        seconds = [Double](repeating: 0, count: Part.allCases.count)
        flops = [Double](repeating: 0, count: Part.allCases.count)
    }

    /// Forget everything measured so far.
    public func reset() {
        for i in seconds.indices { seconds[i] = 0; flops[i] = 0 }
        passes = 0
    }

    /// Total seconds over all parts.
    public var totalSeconds: Double { seconds.reduce(0, +) }

    func add(_ part: Part, seconds s: Double, flops f: Double) {
        seconds[part.rawValue] += s
        flops[part.rawValue] += f
    }
}
