import ArgumentParser
import LoRAKit
#if canImport(Glibc)
import Glibc
#endif

/// A CBLAS `sgemm` loaded at run time (e.g. numpy's OpenBLAS), to time beside `GEMM.multiply` call by call
/// in one process (`lorakit bench gemm --blas PATH`): on a shared machine, alternating single calls of the
/// two and taking the median of the per-pair ratios is far steadier than comparing separate processes.
struct LoadedBLAS {
    /// cblas_sgemm(order, transA, transB, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc), 64-bit integers.
    typealias SGEMM64 = @convention(c) (Int32, Int32, Int32, Int64, Int64, Int64, Float, UnsafePointer<Float>, Int64,
                                        UnsafePointer<Float>, Int64, Float, UnsafeMutablePointer<Float>, Int64) -> Void
    /// The same with 32-bit integers (an LP64 build's plain `cblas_sgemm`).
    typealias SGEMM32 = @convention(c) (Int32, Int32, Int32, Int32, Int32, Int32, Float, UnsafePointer<Float>, Int32,
                                        UnsafePointer<Float>, Int32, Float, UnsafeMutablePointer<Float>, Int32) -> Void
    typealias SetThreads = @convention(c) (Int32) -> Void
    typealias CharFn = @convention(c) () -> UnsafePointer<CChar>?

    let sgemm64: SGEMM64?
    let sgemm32: SGEMM32?
    /// "OpenBLAS 0.3.x … (core: Zen)" when the library tells.
    let name: String

    init(path: String, threads: Int) throws {
        guard let h = dlopen(path, RTLD_NOW | RTLD_LOCAL) else {
            throw ValidationError("--blas: cannot load \(path): \(String(cString: dlerror()))")
        }
        func sym<T>(_ names: [String], _: T.Type) -> T? {
            for n in names { if let p = dlsym(h, n) { return unsafeBitCast(p, to: T.self) } }
            return nil
        }
        sgemm64 = sym(["scipy_cblas_sgemm64_", "cblas_sgemm64_"], SGEMM64.self)
        sgemm32 = sgemm64 == nil ? sym(["cblas_sgemm"], SGEMM32.self) : nil
        guard sgemm64 != nil || sgemm32 != nil else { throw ValidationError("--blas: no cblas_sgemm in \(path)") }
        if let set = sym(["scipy_openblas_set_num_threads64_", "openblas_set_num_threads64_", "openblas_set_num_threads"],
                         SetThreads.self) {
            set(Int32(threads))
        } else {
            throw ValidationError("--blas: no openblas_set_num_threads in \(path) (the thread count could not be set)")
        }
        var parts: [String] = []
        if let cfg = sym(["scipy_openblas_get_config64_", "openblas_get_config64_", "openblas_get_config"], CharFn.self),
           let s = cfg() { parts.append(String(cString: s)) }
        if let core = sym(["scipy_openblas_get_corename64_", "openblas_get_corename64_", "openblas_get_corename"], CharFn.self),
           let s = core() { parts.append("core \(String(cString: s))") }
        name = parts.isEmpty ? path : parts.joined(separator: ", ")
    }

    /// C[m×n] = A[m×k] · B[k×n], row-major, contiguous.
    func multiply(m: Int, n: Int, k: Int, a: UnsafePointer<Float>, b: UnsafePointer<Float>, c: UnsafeMutablePointer<Float>) {
        // CblasRowMajor = 101, CblasNoTrans = 111.
        if let f = sgemm64 {
            f(101, 111, 111, Int64(m), Int64(n), Int64(k), 1, a, Int64(k), b, Int64(n), 0, c, Int64(n))
        } else if let f = sgemm32 {
            f(101, 111, 111, Int32(m), Int32(n), Int32(k), 1, a, Int32(k), b, Int32(n), 0, c, Int32(n))
        }
    }
}
