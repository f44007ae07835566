// swift-tools-version:6.1
// LoRAKit: LoRA fine-tuning and inference for LLMs on the CPU, as a Swift library with a C ABI.
import PackageDescription
import Foundation

// Kernels are written with Swift SIMD types. On x86_64 we compile for the build machine's vector ISA,
// as llama.cpp does by default (GGML_NATIVE): AVX2 + FMA + F16C at least (`-target-cpu haswell`: without
// it `addProduct` is a call to fmaf, ≈80× slower), and AVX-512 kernels (SIMD16, 32 registers) when the
// build host has AVX-512F/BW/DQ/VL. A binary built on an AVX-512 machine does not run on an AVX2-only one:
// set LORAKIT_TARGET_CPU=haswell for a portable x86_64 build (or =native / any LLVM CPU name). On arm64
// NEON and FMA are baseline and no flag is needed. Package.swift runs on the build host, so `#if arch`
// and /proc/cpuinfo describe the host.
func hostHasAVX512() -> Bool {
    guard let info = try? String(contentsOfFile: "/proc/cpuinfo", encoding: .utf8) else { return false }
    guard let flagsLine = info.split(separator: "\n").first(where: { $0.hasPrefix("flags") }) else { return false }
    let flags = Set(flagsLine.split(separator: " ").map(String.init))
    return ["avx512f", "avx512bw", "avx512dq", "avx512vl", "fma", "f16c"].allSatisfy(flags.contains)
}

#if arch(x86_64)
let requestedCPU = ProcessInfo.processInfo.environment["LORAKIT_TARGET_CPU"]
let targetCPU = requestedCPU ?? (hostHasAVX512() ? "skylake-avx512" : "haswell")
let cpuIsAVX512 = ["skylake-avx512", "cascadelake", "cooperlake", "icelake-server", "icelake-client",
                   "tigerlake", "sapphirerapids", "znver4", "znver5", "x86-64-v4"].contains(targetCPU)
    || (targetCPU == "native" && hostHasAVX512())
let cpuFlags: [SwiftSetting] = [.unsafeFlags(["-target-cpu", targetCPU])]
    + (cpuIsAVX512 ? [.define("LORAKIT_AVX512")] : [])
// The C kernels (integer dot products) need AVX2/FMA/F16C at least.
let cpuCFlags: [CSetting] = [.unsafeFlags(["-O3", "-mavx2", "-mfma", "-mf16c"])]
#else
let cpuFlags: [SwiftSetting] = []
let cpuCFlags: [CSetting] = [.unsafeFlags(["-O3"])]
#endif

// Exclusivity checking is off for speed, except in the sanitizer builds (scripts/sanitize.sh sets
// LORAKIT_EXCLUSIVITY_CHECKS=1), which also check that no two accesses to one variable overlap.
let exclusivityChecks = ProcessInfo.processInfo.environment["LORAKIT_EXCLUSIVITY_CHECKS"] == "1"
let fastFlags: [SwiftSetting] = cpuFlags + (exclusivityChecks ? [] : [
    .unsafeFlags(["-enforce-exclusivity=unchecked"]),
])

let package = Package(
    name: "LoRAKit",
    platforms: [.macOS(.v15)],  // Synchronization.Mutex
    products: [
        // liblorakit.so: the C ABI declared in Include/lorakit.h.
        .library(name: "lorakit", type: .dynamic, targets: ["LoRAKitCABI"]),
        // The Swift API, for Swift programs that depend on this package.
        .library(name: "LoRAKit", targets: ["LoRAKit"]),
        .executable(name: "lorakit-cli", targets: ["LoRAKitCLI"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.5.0"),
        // The HTTP server of `lorakit serve` (LoRAKitServe only; liblorakit.so does not depend on it). Its
        // default traits (swift-configuration support, full Foundation) are off: nothing here uses them, and
        // they add build time.
        .package(url: "https://github.com/hummingbird-project/hummingbird", from: "2.0.0", traits: []),
    ],
    targets: [
        // The few kernels that need instructions Swift's SIMD types cannot express (widening integer
        // multiply-add for quantized dot products), in C with intrinsics and a portable fallback.
        .target(
            name: "LoRAKitKernelsC",
            path: "Sources/LoRAKitKernelsC",
            cSettings: cpuCFlags
        ),
        // The layers, lowest first. A target imports only those below it, so the compiler keeps the
        // kernels free of models, the formats free of training, and so on (ARCHITECTURE.md).
        // Core: errors, dtypes, storage, tensors, the thread pool, JSON, files (atomic writes).
        .target(name: "LoRAKitCore", path: "Sources/LoRAKitCore", swiftSettings: fastFlags),
        // Kernels: GEMM, mat-vec, quantization, the NN ops with their backward.
        .target(name: "LoRAKitKernels", dependencies: ["LoRAKitCore", "LoRAKitKernelsC"],
                path: "Sources/LoRAKitKernels", swiftSettings: fastFlags),
        // File formats: GGUF and safetensors readers and writers.
        .target(name: "LoRAKitFormats", dependencies: ["LoRAKitCore"],
                path: "Sources/LoRAKitFormats", swiftSettings: fastFlags),
        // Tokenizers: byte-level BPE and SentencePiece BPE.
        .target(name: "LoRAKitTokenizer", dependencies: ["LoRAKitCore", "LoRAKitFormats"],
                path: "Sources/LoRAKitTokenizer", swiftSettings: fastFlags),
        // Chat templates: a sandboxed Jinja2 engine.
        .target(name: "LoRAKitTemplates", dependencies: ["LoRAKitCore"],
                path: "Sources/LoRAKitTemplates", swiftSettings: fastFlags),
        // The adapter-plugin ABI (Include/lorakit_plugin.h, header-only but for the host's per-thread
        // plugin error), for the plugin host in LoRAKitModel.
        .target(name: "CLoRAKitPlugin", path: "Sources/CLoRAKitPlugin"),
        // Models, inference contexts, adapters (LoRA, the adapter interface, the plugin host), generation, scoring.
        .target(name: "LoRAKitModel",
                dependencies: ["LoRAKitCore", "LoRAKitKernels", "LoRAKitFormats", "LoRAKitTokenizer", "LoRAKitTemplates",
                               "CLoRAKitPlugin"],
                path: "Sources/LoRAKitModel", swiftSettings: fastFlags),
        // Training: backward pass, data, optimizer, checkpoints, the run loop.
        .target(name: "LoRAKitTraining",
                dependencies: ["LoRAKitCore", "LoRAKitKernels", "LoRAKitFormats", "LoRAKitTokenizer", "LoRAKitTemplates", "LoRAKitModel"],
                path: "Sources/LoRAKitTraining", swiftSettings: fastFlags),
        // The Swift API: re-exports the layers above (`import LoRAKit`). No C-ABI code here.
        .target(name: "LoRAKit", dependencies: ["LoRAKitTraining"], path: "Sources/LoRAKit", swiftSettings: fastFlags),
        // The C ABI's types and constants, imported into Swift from Include/lorakit.h (header-only).
        .target(name: "CLoRAKit", path: "Sources/CLoRAKit"),
        // Thin @_cdecl shims over the core; the only code that knows about the C ABI.
        .target(
            name: "LoRAKitCABI",
            dependencies: ["LoRAKit", "CLoRAKit"],
            path: "Sources/LoRAKitCABI",
            swiftSettings: fastFlags,
            // `make install` copies the Swift runtime libraries next to liblorakit.so (lib/lorakit-swift/)
            // so an installed library also loads on a machine without a Swift toolchain.
            linkerSettings: [.unsafeFlags(["-Xlinker", "-rpath", "-Xlinker", "$ORIGIN/lorakit-swift"], .when(platforms: [.linux]))]
        ),
        // `lorakit serve`: an OpenAI-compatible HTTP server with continuous batching over a multi-sequence
        // engine, one adapter per request (Hummingbird). Used by the CLI only.
        .target(
            name: "LoRAKitServe",
            dependencies: [
                "LoRAKit",
                .product(name: "Hummingbird", package: "hummingbird"),
            ],
            path: "Sources/LoRAKitServe",
            swiftSettings: fastFlags
        ),
        // The `lorakit` command-line tool (built as lorakit-cli, installed as lorakit).
        .executableTarget(
            name: "LoRAKitCLI",
            dependencies: [
                "LoRAKit",
                "LoRAKitServe",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
            ],
            path: "Sources/LoRAKitCLI",
            swiftSettings: fastFlags,
            linkerSettings: [.unsafeFlags(["-Xlinker", "-rpath", "-Xlinker", "$ORIGIN/../lib/lorakit-swift"], .when(platforms: [.linux]))]
        ),
        .testTarget(
            name: "LoRAKitTests",
            dependencies: ["LoRAKitCore", "LoRAKitKernels", "LoRAKitFormats", "LoRAKitTokenizer", "LoRAKitTemplates",
                           "LoRAKitModel", "LoRAKitTraining", "CLoRAKitPlugin"],
            path: "Tests/LoRAKitTests",
            exclude: ["Fixtures"],  // data read by path at run time (tokenizer fixtures)
            swiftSettings: cpuFlags
        ),
    ]
)

// Fuzz targets (Fuzz/, issue 14): libFuzzer executables, declared only when LORAKIT_FUZZ=1 so that a
// normal build never tries to link them without libFuzzer. `make fuzz TARGET=… SECONDS=…` builds them
// with `--sanitize=fuzzer --sanitize=address` in .build-fuzz and runs one (Fuzz/README.md).
if ProcessInfo.processInfo.environment["LORAKIT_FUZZ"] == "1" {
    package.targets.append(.target(name: "FuzzSupport", dependencies: ["LoRAKit"], path: "Fuzz/Sources/FuzzSupport"))
    package.targets.append(.target(name: "FuzzDriver", path: "Fuzz/Sources/FuzzDriver"))
    let fuzzTargets = [
        ("gguf-model", "FuzzGGUFModel"), ("gguf-lora", "FuzzGGUFLoRA"), ("safetensors", "FuzzSafetensors"),
        ("hf-config", "FuzzHFConfig"), ("peft", "FuzzPEFT"), ("jsonl", "FuzzJSONL"), ("tokenizer", "FuzzTokenizer"),
        ("tokenizer-json", "FuzzTokenizerJSON"), ("templates", "FuzzTemplates"),
        ("projector", "FuzzProjector"),
    ]
    for (product, target) in fuzzTargets {
        package.targets.append(.executableTarget(name: target, dependencies: ["LoRAKit", "FuzzSupport", "FuzzDriver"],
                                                 path: "Fuzz/Sources/\(target)", swiftSettings: cpuFlags))
        package.products.append(.executable(name: "fuzz-\(product)", targets: [target]))
    }
}
