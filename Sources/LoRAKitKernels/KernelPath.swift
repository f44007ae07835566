import LoRAKitCore
import LoRAKitKernelsC

/// Which code paths the kernels of this build run on this machine, for benchmark reports.
///
/// - `vector`: the f32 kernels' vector ISA, fixed at build time (`Package.swift` picks `-target-cpu`):
///   `avx512` (SIMD16 micro-kernels, 32 registers), `avx2` (x86_64 AVX2 + FMA, SIMD8), `neon` (arm64),
///   `scalar` (any other architecture: Swift SIMD lowered to scalar code).
/// - `qdot`: the quantized-weight dot-product path chosen at run time (`QuantKernel.resolvedDefault`:
///   `avx512vnni`, `avxvnni`, `avx2`, `scalar`; `LORAKIT_QDOT` may force another supported one).
public enum KernelPath {
    public static var vector: String {
        #if arch(x86_64)
        #if LORAKIT_AVX512
        return "avx512"
        #else
        return "avx2"
        #endif
        #elseif arch(arm64)
        return "neon"
        #else
        return "scalar"
        #endif
    }

    /// The GEMM micro-kernel's register tile, e.g. "6x16".
    public static var gemmTile: String { "\(GEMM.MR)x\(GEMM.NR)" }

    public static var qdot: String { QuantKernel.resolvedDefault.description }

    /// One line for text reports: "kernels: avx2 (gemm 6x16), qdot avx512vnni".
    public static var summary: String { "kernels: \(vector) (gemm \(gemmTile)), qdot \(qdot)" }
}
