#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif
import LoRAKitCore

/// Where a `LlamaContext`'s evaluations spend their time, part by part (issue 16's per-token profile):
/// attach with `ctx.profile = DecodeProfile()`, evaluate (or `generate`, which adds the sampling), read
/// `seconds` and divide by `tokens`. Each part is wall time on the calling thread around one kernel call,
/// so the time other participants of the thread pool wait at the end of a hand-out is inside the part that
/// handed the work out; `handOuts` counts the hand-outs, and `lorakit bench generate --profile` multiplies
/// it by the measured cost of an empty hand-out to estimate the synchronisation share. Not thread-safe
/// (a context is used by one thread at a time).
public final class DecodeProfile: @unchecked Sendable {
    public enum Part: Int, CaseIterable, Sendable {
        /// Token embedding lookup (or copying caller-given embedding rows).
        case embedding
        /// Base linear layers: x·Wᵀ, the quantized mat-vec / GEMM kernels (q, k, v, o, gate, up, down).
        case baseProducts
        /// Adapter terms (LoRA, plugin adapters).
        case adapters
        /// Attention over the KV cache.
        case attention
        /// RMSNorm (two per layer and the final one).
        case norm
        /// Rotary embeddings of q and k.
        case rope
        /// Residual additions.
        case residual
        /// SwiGLU.
        case activation
        /// The output head: logits of the last row (and their buffer).
        case head
        /// Sampling the next token from the logits (`generate`).
        case sampling

        public var label: String {
            switch self {
            case .embedding: return "embedding"
            case .baseProducts: return "base mat-vecs x·Wᵀ"
            case .adapters: return "adapters"
            case .attention: return "attention"
            case .norm: return "RMSNorm"
            case .rope: return "RoPE"
            case .residual: return "residual adds"
            case .activation: return "SwiGLU"
            case .head: return "output head"
            case .sampling: return "sampling"
            }
        }
    }

    /// Seconds per part (indexed by `Part.rawValue`).
    public private(set) var seconds: [Double]
    /// Rows (tokens) evaluated while attached.
    public internal(set) var tokens = 0
    /// Evaluation calls while attached.
    public internal(set) var evaluations = 0
    /// Thread-pool hand-outs (`ThreadPool.run` calls that woke the workers) while attached.
    public internal(set) var handOuts = 0
    /// Wall seconds inside `evaluate` (and sampling) while attached; minus the parts: the rest (argument
    /// checks, copies, calls).
    public internal(set) var wallSeconds: Double = 0

    public init() { seconds = [Double](repeating: 0, count: Part.allCases.count) }

    public func reset() {
        for i in seconds.indices { seconds[i] = 0 }
        tokens = 0; evaluations = 0; handOuts = 0; wallSeconds = 0
    }

    @inline(__always) func add(_ part: Part, _ t0: Double) { seconds[part.rawValue] += monotonicSeconds() - t0 }
    @inline(__always) func add(_ part: Part, seconds s: Double) { seconds[part.rawValue] += s }

    /// Add time spent outside `evaluate` (the caller's sampling) to a part and to the wall time.
    public func addOutside(_ part: Part, seconds s: Double) {
        seconds[part.rawValue] += s
        wallSeconds += s
    }
}
