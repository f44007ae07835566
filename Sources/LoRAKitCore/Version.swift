/// Library version and C ABI version.
public enum LoRAKitVersion {
    public static let major = 0
    public static let minor = 1
    public static let patch = 0
    public static var string: String { "\(major).\(minor).\(patch)" }
    /// The C ABI version (`LK_ABI_VERSION` in lorakit.h). Bumped on any incompatible ABI change.
    public static let abi: Int32 = 1
}
