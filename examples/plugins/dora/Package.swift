// swift-tools-version:5.9
// The DoRA adapter plugin: a dynamic library (liblorakit-dora.so) exporting `lkp_entry`.
// It sees only Include/lorakit_plugin.h (through the CLoRAKitPlugin module map) and never links liblorakit.
//     swift build -c release --package-path examples/plugins/dora     (make plugins does this)
import PackageDescription
import Foundation

// Its SIMD8 loops need AVX2 + FMA, the library's own minimum on x86_64 (without a target CPU, Swift emits
// SSE2 code and `addProduct` becomes a call to fmaf). Haswell's ISA runs on every CPU the library runs on;
// LORAKIT_TARGET_CPU overrides it as it does for the library. arm64: NEON and FMA are baseline.
#if arch(x86_64)
let cpuFlags = ["-target-cpu", ProcessInfo.processInfo.environment["LORAKIT_TARGET_CPU"] ?? "haswell"]
#else
let cpuFlags: [String] = []
#endif

let package = Package(
    name: "LoRAKitDoRA",
    products: [
        .library(name: "lorakit-dora", type: .dynamic, targets: ["DoRA"]),
    ],
    targets: [
        // The plugin ABI header, by path (no copy): Sources/CLoRAKitPlugin/module.modulemap.
        .systemLibrary(name: "CLoRAKitPlugin", path: "Sources/CLoRAKitPlugin"),
        .target(name: "DoRA", dependencies: ["CLoRAKitPlugin"], path: "Sources/DoRA",
                swiftSettings: [.unsafeFlags(["-Ounchecked", "-enforce-exclusivity=unchecked"] + cpuFlags)]),
    ]
)
