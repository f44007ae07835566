/// Library version (the C ABI's version is `LK_ABI_VERSION` in Include/lorakit.h).
public enum LoRAKitVersion {
    public static let major = 0
    public static let minor = 1
    public static let patch = 0
    public static var string: String { "\(major).\(minor).\(patch)" }
}
