import CLoRAKitPlugin
import LoRAKitCore
#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// The host's side of the plugin ABI: the function table every plugin receives (`lkp_host`) and the
/// objects behind its opaque pointers.
///
/// - `lkp_module_weight` is a `PluginModuleWeight` (the module's base weight as the model stores it);
/// - `lkp_config` is a `PluginConfig` (a parsed adapter_config.json, or the options of a new adapter);
/// - `lkp_exec` is the `ThreadPool` of the call (`parallel_for` runs the plugin's tasks on it).
/// Each is passed unretained: its owner keeps it alive for as long as the header says the pointer is valid.
package enum PluginHost {
    /// The one host table (static: valid until process exit, as the header requires).
    nonisolated(unsafe) package static let table: UnsafePointer<lkp_host> = {
        let p = UnsafeMutablePointer<lkp_host>.allocate(capacity: 1)
        p.initialize(to: lkp_host(
            struct_size: UInt32(MemoryLayout<lkp_host>.size),
            abi_major: Int32(LKP_ABI_MAJOR),
            abi_minor: Int32(LKP_ABI_MINOR),
            host_version: UnsafePointer(strdup(LoRAKitVersion.string)),
            set_error: lkph_set_error,
            log: { level, message in
                PluginRegistry.shared.record(level: Int(level), message: message.map { String(cString: $0) } ?? "")
            },
            weight_rows_f32: { w, begin, n, out, stride in
                guard let w, let out else { return PluginHost.badArgument("weight access: NULL weight or output") }
                let wt = PluginModuleWeight.from(w)
                if let e = wt.checkRows(begin, n) { return PluginHost.badArgument(e) }
                guard stride >= wt.inFeatures else {
                    return PluginHost.badArgument("weight access: out_stride \(stride) < IN = \(wt.inFeatures)")
                }
                for i in 0..<Int(n) { wt.row(Int(begin) + i, into: out + i * Int(stride)) }
                return Int32(LKP_OK)
            },
            weight_row_norms: { w, begin, n, out in
                guard let w, let out else { return PluginHost.badArgument("weight access: NULL weight or output") }
                let wt = PluginModuleWeight.from(w)
                if let e = wt.checkRows(begin, n) { return PluginHost.badArgument(e) }
                let row = UnsafeMutablePointer<Float>.allocate(capacity: wt.inFeatures)
                defer { row.deallocate() }
                for i in 0..<Int(n) {
                    wt.row(Int(begin) + i, into: row)
                    var s = 0.0
                    for j in 0..<wt.inFeatures { s += Double(row[j]) * Double(row[j]) }
                    out[i] = Float(s.squareRoot())
                }
                return Int32(LKP_OK)
            },
            parallel_for: { exec, task, user in
                guard let task else { return }
                guard let exec else { task(user, 0, 1); return }
                let pool = Unmanaged<ThreadPool>.fromOpaque(UnsafeRawPointer(exec)).takeUnretainedValue()
                pool.run { i, n in task(user, Int32(i), Int32(n)) }
            },
            config_number: { c, key, out in
                PluginHost.lookup(c, key) { v, k in
                    guard let d = v.double else { return PluginHost.wrongType(k, "number") }
                    out?.pointee = d
                    return Int32(LKP_OK)
                }
            },
            config_bool: { c, key, out in
                PluginHost.lookup(c, key) { v, k in
                    guard let b = v.bool else { return PluginHost.wrongType(k, "boolean") }
                    out?.pointee = b ? 1 : 0
                    return Int32(LKP_OK)
                }
            },
            config_string: { c, key, buf, capacity, needed in
                PluginHost.lookup(c, key) { v, k in
                    guard let s = v.string else { return PluginHost.wrongType(k, "string") }
                    let bytes = Array(s.utf8)
                    needed?.pointee = Int64(bytes.count + 1)
                    guard let buf, capacity >= Int64(bytes.count + 1) else {
                        return PluginHost.badArgument("adapter config: \"\(k)\" needs \(bytes.count + 1) bytes, the buffer has \(capacity)")
                    }
                    for (i, b) in bytes.enumerated() { buf[i] = CChar(bitPattern: b) }
                    buf[bytes.count] = 0
                    return Int32(LKP_OK)
                }
            },
            config_module_matches: { c, key, module, out in
                PluginHost.lookup(c, key) { v, k in
                    guard let module, let fn = module.pointee.full_name else {
                        return PluginHost.badArgument("adapter config: NULL module")
                    }
                    let full = String(cString: fn)
                    if let pattern = v.string {
                        out?.pointee = PluginConfig.regexWholeMatch(pattern, full) ? 1 : 0
                        return Int32(LKP_OK)
                    }
                    guard let list = v.array else {
                        return PluginHost.wrongType(k, "list of module names or a regular expression")
                    }
                    var hit = false
                    for item in list {
                        guard let n = item.string else { return PluginHost.wrongType(k, "list of module names") }
                        if full == n || full.hasSuffix("." + n) { hit = true; break }
                    }
                    out?.pointee = hit ? 1 : 0
                    return Int32(LKP_OK)
                }
            },
            config_pattern_number: { c, key, module, out in
                PluginHost.lookup(c, key) { v, k in
                    guard let module, let fn = module.pointee.full_name else {
                        return PluginHost.badArgument("adapter config: NULL module")
                    }
                    guard let dict = v.object else { return PluginHost.wrongType(k, "pattern dictionary") }
                    // PEFT's get_pattern_key: the full name itself, else the first key (in the file's order)
                    // whose `(.*\.)?(KEY)$` matches the whole name.
                    let full = String(cString: fn)
                    guard let hit = dict.first(where: { $0.0 == full })?.0
                            ?? dict.first(where: { LoRAConfig.matches(key: $0.0, name: full) })?.0 else {
                        return Int32(LKP_ERR_NOT_FOUND)
                    }
                    guard let d = dict.first(where: { $0.0 == hit })?.1.double else {
                        return PluginHost.badArgument("adapter config: \"\(k)\"[\"\(hit)\"] is not a number")
                    }
                    out?.pointee = d
                    return Int32(LKP_OK)
                }
            }))
        return UnsafePointer(p)
    }()

    static func badArgument(_ m: String) -> Int32 {
        lkph_set_error(m)
        return Int32(LKP_ERR_INVALID_ARGUMENT)
    }

    static func wrongType(_ key: String, _ want: String) -> Int32 {
        badArgument("adapter config: \"\(key)\" is not a \(want)")
    }

    /// Find `key` in the config (absent or null: LKP_ERR_NOT_FOUND) and run `body` on its value.
    static func lookup(_ c: OpaquePointer?, _ key: UnsafePointer<CChar>?,
                       _ body: (JSONValue, String) -> Int32) -> Int32 {
        guard let c, let key else { return badArgument("adapter config: NULL config or key") }
        let k = String(cString: key)
        guard let v = PluginConfig.from(c).value(k) else { return Int32(LKP_ERR_NOT_FOUND) }
        return body(v, k)
    }

    /// A pool as an `lkp_exec *` (valid while the caller holds the pool).
    static func exec(_ pool: ThreadPool) -> OpaquePointer {
        OpaquePointer(Unmanaged.passUnretained(pool).toOpaque())
    }
}

/// The base weight of one module, as the host keeps it (possibly quantized), for `weight_rows_f32` and
/// `weight_row_norms`. Rows are in the host's order (GGUF q/k rows permuted for RoPE: the plugin's
/// parameters are permuted the same way, see `lkp_param_info.out_axis`).
package final class PluginModuleWeight: @unchecked Sendable {
    let weight: Tensor
    let outFeatures: Int
    let inFeatures: Int
    private let rowBytes: Int

    /// - weight: [OUT, IN], rows contiguous (any dtype `dequantize` reads).
    package init(_ weight: Tensor) throws(LKError) {
        guard weight.rank == 2 else { throw .shapeMismatch("plugin host: weight \(weight.shape) is not 2-D") }
        self.weight = weight
        outFeatures = weight.shape[0]
        inFeatures = weight.shape[1]
        rowBytes = try weight.dtype.rowBytes(inFeatures)
        guard weight.strides[1] == 1 || weight.dtype.isQuantized else {
            throw .shapeMismatch("plugin host: weight rows are not contiguous")
        }
    }

    static func from(_ p: OpaquePointer) -> PluginModuleWeight {
        Unmanaged<PluginModuleWeight>.fromOpaque(UnsafeRawPointer(p)).takeUnretainedValue()
    }

    var opaque: OpaquePointer { OpaquePointer(Unmanaged.passUnretained(self).toOpaque()) }

    func checkRows(_ b: Int64, _ n: Int64) -> String? {
        if b < 0 || n < 0 || b > Int64(outFeatures) - n {
            return "weight access: rows [\(b), \(b &+ n)) outside [0, \(outFeatures))"
        }
        return nil
    }

    /// Row `i` dequantized to f32 into `out[IN]`.
    func row(_ i: Int, into out: UnsafeMutablePointer<Float>) {
        dequantize(UnsafeRawPointer(weight.rawPointer) + i * rowBytes, dtype: weight.dtype, count: inFeatures, into: out)
    }

    /// The whole weight as f32 [OUT, IN].
    func floats() -> [Float] {
        var out = [Float](repeating: 0, count: outFeatures * inFeatures)
        out.withUnsafeMutableBufferPointer { b in
            for i in 0..<outFeatures { row(i, into: b.baseAddress! + i * inFeatures) }
        }
        return out
    }
}

/// An adapter's configuration as plugins read it (`lkp_config`): a JSON object with PEFT's field names.
package final class PluginConfig: @unchecked Sendable {
    let json: JSONValue

    package init(_ json: JSONValue) { self.json = json }

    static func from(_ p: OpaquePointer) -> PluginConfig {
        Unmanaged<PluginConfig>.fromOpaque(UnsafeRawPointer(p)).takeUnretainedValue()
    }

    var opaque: OpaquePointer { OpaquePointer(Unmanaged.passUnretained(self).toOpaque()) }

    /// The value of `key`, nil when absent or null.
    func value(_ key: String) -> JSONValue? {
        guard let v = json[key], !v.isNull else { return nil }
        return v
    }

    /// PEFT's string form of target_modules: the whole name matches the regular expression (an invalid
    /// expression matches nothing).
    static func regexWholeMatch(_ pattern: String, _ s: String) -> Bool {
        guard let re = try? Regex(pattern) else { return false }
        return (try? re.wholeMatch(in: s)) != nil
    }
}
