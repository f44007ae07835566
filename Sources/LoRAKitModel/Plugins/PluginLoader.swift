import CLoRAKitPlugin
import LoRAKitCore
#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// Adapter plugins (Include/lorakit_plugin.h, issue 11): shared libraries that add adapter types.
///
/// Loading follows the header's order, with the messages of the reference loader (Tests/plugins/ref_host.c):
/// `dlopen(RTLD_NOW | RTLD_LOCAL)`, the entry symbol, the entry call (its error message copied through the
/// host's `set_error`), then the tables: size, ABI major, types (size, name, required functions, PEFT
/// mapping, no duplicates within the plugin or with types already registered). Any failure registers
/// nothing. A loaded plugin is never unloaded: instances made by its types may live in any model, adapter,
/// context or trainer until process exit. A refused one is closed but stays mapped (`RTLD_NODELETE`): its
/// constructors and entry may already have registered state that points into it (a Swift plugin's
/// metadata and conformance records with the Swift runtime, one-time initialisers), so unmapping it could
/// leave the host with dangling pointers.

/// One loaded plugin: its file, its table's name and version, and the adapter types it declared.
/// Lives until process exit.
public final class AdapterPlugin: @unchecked Sendable, CustomStringConvertible {
    /// The path as given to `load`.
    public let path: String
    /// The canonical path (a second load of the same file returns this plugin).
    public let realPath: String
    public let name: String
    public let version: String
    /// The plugin ABI version the plugin was built with.
    public let abiMajor: Int
    public let abiMinor: Int
    /// The adapter types, in the plugin's order (set once, before the plugin is published).
    public fileprivate(set) var types: [PluginAdapterType] = []
    let handle: UnsafeMutableRawPointer

    init(path: String, realPath: String, handle: UnsafeMutableRawPointer, table: UnsafePointer<lkp_plugin>) {
        self.path = path
        self.realPath = realPath
        self.handle = handle
        let t = table.pointee
        name = t.name.map { String(cString: $0) } ?? ""
        version = t.version.map { String(cString: $0) } ?? ""
        abiMajor = Int(t.abi_major)
        abiMinor = Int(t.abi_minor)
    }

    /// The file name (`ia3.so`), for messages.
    public var fileName: String { path.split(separator: "/").last.map(String.init) ?? path }

    public var description: String { "\(name) \(version) (\(path))" }

    /// {"path", "name", "version", "abi": [major, minor], "types": [{"name", "description", "peft_type",
    /// "peft_flag", "key_suffixes", "merge", "train"}]}: what `lk_plugin_info_json` and `lorakit plugins` show.
    public var info: JSONValue {
        .object([("path", .string(path)), ("name", .string(name)), ("version", .string(version)),
                 ("abi", .array([.number(Double(abiMajor)), .number(Double(abiMinor))])),
                 ("types", .array(types.map { t in
                     .object([("name", .string(t.name)), ("description", .string(t.summary)),
                              ("peft_type", .string(t.peftType)), ("peft_flag", t.peftFlag.map { .string($0) } ?? .null),
                              ("key_suffixes", .array(t.keySuffixes.map { .string($0) })),
                              ("merge", .bool(t.canMerge)), ("train", .bool(t.canTrain))])
                 }))])
    }
}

/// One adapter type of a loaded plugin (its `lkp_adapter_type`).
public final class PluginAdapterType: @unchecked Sendable, CustomStringConvertible {
    public let name: String
    public let summary: String
    /// adapter_config.json's `peft_type` this type reads (`IA3`, `LORA`).
    public let peftType: String
    /// A boolean config field that must be true for this type (`use_dora`), or nil.
    public let peftFlag: String?
    /// The tensor-key suffixes it owns in a PEFT file (`ia3_l`; `lora_A.weight`, …).
    public let keySuffixes: [String]
    /// The plugin that declared it (plugins are never unloaded, so the cycle is harmless).
    public let plugin: AdapterPlugin
    let raw: UnsafePointer<lkp_adapter_type>

    init(_ raw: UnsafePointer<lkp_adapter_type>, plugin: AdapterPlugin) {
        self.raw = raw
        self.plugin = plugin
        let t = raw.pointee
        name = String(cString: t.name)
        summary = t.description.map { String(cString: $0) } ?? ""
        peftType = String(cString: t.peft_type)
        peftFlag = t.peft_flag.map { String(cString: $0) }
        keySuffixes = (0..<Int(t.n_key_suffixes)).compactMap { t.key_suffixes[$0].map { String(cString: $0) } }
    }

    /// Whether the type folds into a base weight (`merge` present).
    public var canMerge: Bool { raw.pointee.merge != nil }
    /// Whether the type can be trained (`backward` present).
    public var canTrain: Bool { raw.pointee.backward != nil }

    public var description: String { "\(name) (plugin \(plugin.path))" }

    /// Whether a PEFT `adapter_config.json` (an object) is of this type: its `peft_type` and, if the type
    /// has one, its flag set to true.
    public func owns(peftConfig config: JSONValue) -> Bool {
        guard config["peft_type"]?.string?.uppercased() == peftType.uppercased() else { return false }
        guard let f = peftFlag else { return true }
        return config[f]?.bool == true
    }
}

/// Why a plugin was refused: the error, and whether it is a version/size mismatch (`LK_ERR_ABI` in C).
package struct PluginLoadError: Error {
    package let error: LKError
    package let isABI: Bool
}

/// The loaded plugins and their adapter types (one per process: `PluginRegistry.shared`).
public final class PluginRegistry: @unchecked Sendable {
    public static let shared = PluginRegistry()

    private struct State {
        var plugins: [AdapterPlugin] = []
        var types: [String: PluginAdapterType] = [:]
        var searchPathLoaded = false
        var searchPathErrors: [String] = []
        var log: [(level: Int, message: String)] = []
    }
    private let state = Locked<State>(State())
    /// Loads are serialised (one entry call at a time; the registry checks and publishes atomically).
    private let loadLock = Locked<Void>(())

    /// Every loaded plugin, in load order.
    public var plugins: [AdapterPlugin] { state.withLock { $0.plugins } }

    /// Every registered adapter type, in load order.
    public var types: [PluginAdapterType] { state.withLock { s in s.plugins.flatMap(\.types) } }

    /// The registered type called `name`.
    public func type(named name: String) -> PluginAdapterType? { state.withLock { $0.types[name] } }

    /// The registered type that owns a PEFT `adapter_config.json` (see `PluginAdapterType.owns`), or nil.
    public func type(forPEFTConfig config: JSONValue) -> PluginAdapterType? {
        state.withLock { s in s.plugins.lazy.flatMap(\.types).first { $0.owns(peftConfig: config) } }
    }

    /// Load the plugin at `path` and register its types (or return the plugin already loaded from the same
    /// file). Errors name the file; see the file comment for the checks.
    @discardableResult
    public func load(path: String) throws(LKError) -> AdapterPlugin {
        do { return try loadReporting(path: path) } catch { throw error.error }
    }

    /// `load`, telling version/size mismatches apart (the C ABI returns LK_ERR_ABI for those).
    package func loadReporting(path: String) throws(PluginLoadError) -> AdapterPlugin {
        let result: Result<AdapterPlugin, PluginLoadError> = loadLock.withLock { _ in
            do throws(PluginLoadError) { return .success(try loadLocked(path: path)) } catch { return .failure(error) }
        }
        return try result.get()
    }

    private func fail(_ m: String, abi: Bool = false) -> PluginLoadError {
        PluginLoadError(error: abi ? .unsupported(m) : .invalidArgument(m), isABI: abi)
    }

    private func loadLocked(path: String) throws(PluginLoadError) -> AdapterPlugin {
        guard !path.isEmpty else { throw fail("plugin path is empty") }
        let real = canonicalPath(path)
        if let p = state.withLock({ s in s.plugins.first { $0.realPath == real } }) { return p }
        _ = dlerror()
        guard let h = dlopen(path, RTLD_NOW | RTLD_LOCAL | RTLD_NODELETE) else {
            let why = dlerror().map { String(cString: $0) } ?? "unknown error"
            // A file that exists but is no loadable library is malformed content; anything else (missing,
            // a folder, unreadable) is an I/O error.
            var st = stat()
            let isFile = stat(path, &st) == 0 && (st.st_mode & S_IFMT) == S_IFREG
            let m = "plugin \(path): cannot load: \(why)"
            throw PluginLoadError(error: isFile ? .format(m) : .io(m), isABI: false)
        }
        // Until the plugin is registered nothing of it is in use: every refusal below closes it.
        var registered = false
        defer { if !registered { dlclose(h) } }
        guard let sym = dlsym(h, LKP_ENTRY_SYMBOL) else {
            throw fail("plugin \(path): no entry symbol \(LKP_ENTRY_SYMBOL) (not a LoRAKit plugin?)")
        }
        let entry = unsafeBitCast(sym, to: lkp_entry_fn.self)
        var out: UnsafePointer<lkp_plugin>? = nil
        lkph_clear_error()
        let st = entry(PluginHost.table, &out)
        if st != LKP_OK {
            let msg = lkph_error().map { String(cString: $0) } ?? "(the plugin gave no message)"
            lkph_clear_error()
            let m = "plugin \(path): \(LKP_ENTRY_SYMBOL) failed (status \(st)): \(msg)"
            throw PluginLoadError(error: pluginError(status: st, m), isABI: st == LKP_ERR_ABI)
        }
        guard let table = out else { throw fail("plugin \(path): \(LKP_ENTRY_SYMBOL) returned no table") }
        try check(table, path: path)
        let plugin = AdapterPlugin(path: path, realPath: real, handle: h, table: table)
        let t = table.pointee
        plugin.types = (0..<Int(t.n_types)).map { PluginAdapterType(t.types[$0]!, plugin: plugin) }
        // Publish (duplicates were checked under loadLock, the only writer).
        state.withLock { s in
            s.plugins.append(plugin)
            for ty in plugin.types { s.types[ty.name] = ty }
        }
        registered = true
        return plugin
    }

    /// The plugin table's checks, in the reference loader's order and words.
    private func check(_ p: UnsafePointer<lkp_plugin>, path: String) throws(PluginLoadError) {
        let raw = UnsafeRawPointer(p)
        let size = Int(raw.load(as: UInt32.self))
        let header = MemoryLayout<lkp_plugin>.offset(of: \lkp_plugin.abi_minor)! + 4
        guard size >= header else {
            throw fail("plugin \(path): plugin table is \(size) bytes, too small to hold its version (at least \(header))", abi: true)
        }
        let major = Int(raw.load(fromByteOffset: MemoryLayout<lkp_plugin>.offset(of: \lkp_plugin.abi_major)!, as: Int32.self))
        let minor = Int(raw.load(fromByteOffset: MemoryLayout<lkp_plugin>.offset(of: \lkp_plugin.abi_minor)!, as: Int32.self))
        guard major == Int(LKP_ABI_MAJOR) else {
            throw fail("plugin \(path): built for plugin ABI \(major).\(minor), host has \(LKP_ABI_MAJOR).\(LKP_ABI_MINOR) (major versions differ)", abi: true)
        }
        let v1 = MemoryLayout<lkp_plugin>.offset(of: \lkp_plugin.types)! + MemoryLayout<UnsafeRawPointer>.size
        guard size >= v1 else {
            throw fail("plugin \(path): plugin table is \(size) bytes, below the \(v1) bytes of ABI \(LKP_ABI_MAJOR).0 (plugin says ABI \(major).\(minor))", abi: true)
        }
        let t = p.pointee
        guard t.n_types >= 1, let types = t.types else {
            throw fail("plugin \(path): declares no adapter types (n_types \(t.n_types))")
        }
        guard t.n_types <= 256 else { throw fail("plugin \(path): declares \(t.n_types) adapter types (at most 256)") }
        let registered = state.withLock { $0.types }
        let typeV1 = MemoryLayout<lkp_adapter_type>.offset(of: \lkp_adapter_type.merge)! + MemoryLayout<UnsafeRawPointer>.size
        var names: [String] = []
        for i in 0..<Int(t.n_types) {
            guard let tp = types[i] else { throw fail("plugin \(path): adapter type \(i) is NULL") }
            let tsize = Int(UnsafeRawPointer(tp).load(as: UInt32.self))
            guard tsize >= typeV1 else {
                throw fail("plugin \(path): adapter type \(i) table is \(tsize) bytes, below the \(typeV1) bytes of ABI \(LKP_ABI_MAJOR).0", abi: true)
            }
            let ty = tp.pointee
            let name = ty.name.map { String(cString: $0) }
            guard let name, PluginRegistry.validTypeName(name) else {
                throw fail("plugin \(path): adapter type \(i) name \"\(name ?? "(null)")\" is not 1-63 characters of [a-z0-9_]")
            }
            let missing = ty.create == nil ? "create" : ty.destroy == nil ? "destroy" : ty.param_info == nil ? "param_info"
                : ty.forward == nil ? "forward" : nil
            if let missing {
                throw fail("plugin \(path): adapter type \"\(name)\" has no \(missing) function (required: create, destroy, param_info, forward)")
            }
            guard let pt = ty.peft_type, pt.pointee != 0 else {
                throw fail("plugin \(path): adapter type \"\(name)\" has no peft_type")
            }
            guard ty.n_key_suffixes >= 1, ty.n_key_suffixes <= 64, let ks = ty.key_suffixes,
                  (0..<Int(ty.n_key_suffixes)).allSatisfy({ ks[$0] != nil }) else {
                throw fail("plugin \(path): adapter type \"\(name)\" owns no tensor-key suffixes")
            }
            guard !names.contains(name) else {
                throw fail("plugin \(path): adapter type \"\(name)\" is declared twice")
            }
            if let other = registered[name] {
                throw fail("plugin \(path): adapter type \"\(name)\" is already registered by \(other.plugin.path)")
            }
            names.append(name)
        }
    }

    static func validTypeName(_ s: String) -> Bool {
        let u = Array(s.utf8)
        return (1...63).contains(u.count) && u.allSatisfy { ($0 >= 97 && $0 <= 122) || ($0 >= 48 && $0 <= 57) || $0 == 95 }
    }

    // MARK: Search path

    /// The folders searched for plugins, in order: every entry of `LORAKIT_PLUGIN_PATH` (colon-separated
    /// folders or plugin files), then the shipped plugins' folder: `.build/plugins` when the library (or
    /// the program) runs from a build tree, `<prefix>/lib/lorakit/plugins` when installed.
    public static var searchPath: [String] {
        var out: [String] = []
        if let env = getenv("LORAKIT_PLUGIN_PATH") {
            out += String(cString: env).split(separator: ":").map(String.init).filter { !$0.isEmpty }
        }
        if let dir = imageDirectory() {
            // build tree: .build/<triple>/<config>/ → .build/plugins; install: <prefix>/lib → lib/lorakit/plugins;
            // the CLI installed in <prefix>/bin → ../lib/lorakit/plugins.
            for c in ["\(dir)/../../plugins", "\(dir)/../plugins", "\(dir)/lorakit/plugins", "\(dir)/../lib/lorakit/plugins"] {
                let r = canonicalPath(c)
                if isDirectory(r), !out.contains(r) { out.append(r) }
            }
        }
        return out
    }

    /// Load every plugin of `searchPath` (once per process; later calls return the first call's result).
    /// A plugin that fails to load, or declares a type already registered (an earlier folder wins), is
    /// skipped; the messages are returned (and kept for error messages about unknown types).
    @discardableResult
    public func loadSearchPath() -> [String] {
        if let done = state.withLock({ $0.searchPathLoaded ? $0.searchPathErrors : nil }) { return done }
        var errors: [String] = []
        for entry in PluginRegistry.searchPath {
            let files: [String]
            if isDirectory(entry) {
                files = listDirectory(entry).filter { $0.hasSuffix(".so") || $0.hasSuffix(".dylib") }.sorted()
                    .map { "\(entry)/\($0)" }
            } else {
                files = [entry]
            }
            for f in files {
                do { try load(path: f) } catch { errors.append(error.message) }
            }
        }
        state.withLock { $0.searchPathLoaded = true; $0.searchPathErrors = errors }
        return errors
    }

    /// Problems met while loading the search path (empty before `loadSearchPath`).
    public var searchPathErrors: [String] { state.withLock { $0.searchPathErrors } }

    // MARK: Log

    /// Messages plugins logged (host->log), the last 64, oldest first. Warnings and errors also go to
    /// stderr; every level does when LORAKIT_PLUGIN_LOG is set.
    public var log: [(level: Int, message: String)] { state.withLock { $0.log } }

    func record(level: Int, message: String) {
        state.withLock { s in
            s.log.append((level, message))
            if s.log.count > 64 { s.log.removeFirst(s.log.count - 64) }
        }
        if level >= Int(LKP_LOG_WARNING) || getenv("LORAKIT_PLUGIN_LOG") != nil {
            let tag = ["debug", "info", "warning", "error"][max(0, min(3, level))]
            let line = Array("lorakit plugin \(tag): \(message)\n".utf8)
            _ = line.withUnsafeBytes { write(2, $0.baseAddress, $0.count) }
        }
    }
}

/// A plugin's status as the host's error (the message already says what failed).
func pluginError(status: Int32, _ message: String) -> LKError {
    switch Int(status) {
    case Int(LKP_ERR_SHAPE): return .shapeMismatch(message)
    case Int(LKP_ERR_UNSUPPORTED), Int(LKP_ERR_ABI): return .unsupported(message)
    case Int(LKP_ERR_FORMAT): return .format(message)
    case Int(LKP_ERR_OUT_OF_MEMORY): return .outOfMemory(message)
    case Int(LKP_ERR_INTERNAL): return .internal(message)
    default: return .invalidArgument(message)
    }
}

/// The adapter types a PEFT `peft_type` would need, for "no loaded plugin owns it" messages: the
/// shipped plugin that serves it, if any.
func shippedPluginHint(peftType: String, flags: [String: Bool]) -> String {
    switch peftType.uppercased() {
    case "IA3": return "the adapter type \"ia3\" of the shipped plugin ia3.so (examples/plugins/ia3)"
    case "LORA" where flags["use_dora"] == true:
        return "the adapter type \"dora\" of the shipped plugin dora.so (examples/plugins/dora)"
    default: return "a plugin declaring peft_type \"\(peftType)\" (no shipped plugin serves it)"
    }
}

// MARK: - Files

func canonicalPath(_ p: String) -> String {
    guard let r = realpath(p, nil) else { return p }
    defer { free(r) }
    return String(cString: r)
}

func isDirectory(_ p: String) -> Bool {
    var st = stat()
    return stat(p, &st) == 0 && (st.st_mode & S_IFMT) == S_IFDIR
}

func listDirectory(_ p: String) -> [String] {
    guard let d = opendir(p) else { return [] }
    defer { closedir(d) }
    var out: [String] = []
    while let e = readdir(d) {
        let name = withUnsafePointer(to: e.pointee.d_name) {
            $0.withMemoryRebound(to: CChar.self, capacity: 256) { String(cString: $0) }
        }
        if name != "." && name != ".." { out.append(name) }
    }
    return out
}

/// The folder of the binary holding this code (liblorakit.so, or the program it is linked into).
func imageDirectory() -> String? {
    guard let f = lkph_image_path() else { return nil }
    let path = canonicalPath(String(cString: f))
    guard let slash = path.lastIndex(of: "/") else { return nil }
    return String(path[..<slash])
}
