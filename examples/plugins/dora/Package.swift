// swift-tools-version:5.9
// The DoRA adapter plugin: a dynamic library (liblorakit-dora.so) exporting `lkp_entry`.
// It sees only Include/lorakit_plugin.h (through the CLoRAKitPlugin module map) and never links liblorakit.
//     swift build -c release --package-path examples/plugins/dora     (make plugins does this)
import PackageDescription

let package = Package(
    name: "LoRAKitDoRA",
    products: [
        .library(name: "lorakit-dora", type: .dynamic, targets: ["DoRA"]),
    ],
    targets: [
        // The plugin ABI header, by path (no copy): Sources/CLoRAKitPlugin/module.modulemap.
        .systemLibrary(name: "CLoRAKitPlugin", path: "Sources/CLoRAKitPlugin"),
        .target(name: "DoRA", dependencies: ["CLoRAKitPlugin"], path: "Sources/DoRA",
                swiftSettings: [.unsafeFlags(["-Ounchecked", "-enforce-exclusivity=unchecked"])]),
    ]
)
