// swift-tools-version:6.0
// A Swift program that uses LoRAKit as a package: `import LoRAKit`, the Swift API directly (no C ABI).
//   swift run -c release --package-path examples/swift lorakit-example MODEL.gguf [STEPS]
// In your own package, depend on LoRAKit by URL or path and add the "LoRAKit" product to your target.
import PackageDescription

let package = Package(
    name: "LoRAKitExample",
    platforms: [.macOS(.v13)],
    dependencies: [
        // The repository root; elsewhere: .package(url: "https://…/LoRAKit.git", branch: "main").
        .package(name: "LoRAKit", path: "../.."),
    ],
    targets: [
        .executableTarget(
            name: "lorakit-example",
            dependencies: [.product(name: "LoRAKit", package: "LoRAKit")],
            path: "Sources/LoRAKitExample"
        ),
    ]
)
