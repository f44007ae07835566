// swift-tools-version:6.0
// LoRAKit: LoRA fine-tuning and inference for LLMs on the CPU, as a Swift library with a C ABI.
import PackageDescription

// Kernels are written with SIMD types. On x86_64 we compile for Haswell (AVX2 + FMA + F16C) so that
// `addProduct` becomes a vfmadd instruction instead of a call to fmaf (≈80× faster). On arm64 NEON and FMA
// are baseline and no flag is needed. Package.swift is evaluated on the build host, so `#if arch` picks the
// host's architecture (cross-compiling to x86_64 from arm64 would need the flag added by hand).
#if arch(x86_64)
let cpuFlags: [SwiftSetting] = [.unsafeFlags(["-target-cpu", "haswell"])]
let cpuCFlags: [CSetting] = [.unsafeFlags(["-mavx2", "-mfma", "-mf16c"])]
#else
let cpuFlags: [SwiftSetting] = []
let cpuCFlags: [CSetting] = []
#endif

let fastFlags: [SwiftSetting] = cpuFlags + [
    .unsafeFlags(["-enforce-exclusivity=unchecked"]),
]

let package = Package(
    name: "LoRAKit",
    products: [
        // liblorakit.so: the C ABI declared in Include/lorakit.h.
        .library(name: "lorakit", type: .dynamic, targets: ["LoRAKitCABI"]),
        // The Swift API, for Swift programs that depend on this package.
        .library(name: "LoRAKit", targets: ["LoRAKit"]),
        .executable(name: "lorakit-cli", targets: ["LoRAKitCLI"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.5.0"),
    ],
    targets: [
        // Core: tensors, kernels, thread pool, models, adapters, training. No C-ABI code here.
        .target(
            name: "LoRAKit",
            path: "Sources/LoRAKit",
            swiftSettings: fastFlags
        ),
        // Thin @_cdecl shims over the core; the only code that knows about the C ABI.
        .target(
            name: "LoRAKitCABI",
            dependencies: ["LoRAKit"],
            path: "Sources/LoRAKitCABI",
            swiftSettings: fastFlags
        ),
        // The `lorakit` command-line tool (built as lorakit-cli, installed as lorakit).
        .executableTarget(
            name: "LoRAKitCLI",
            dependencies: [
                "LoRAKit",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
            ],
            path: "Sources/LoRAKitCLI",
            swiftSettings: fastFlags
        ),
        .testTarget(
            name: "LoRAKitTests",
            dependencies: ["LoRAKit"],
            path: "Tests/LoRAKitTests",
            swiftSettings: cpuFlags
        ),
    ]
)
