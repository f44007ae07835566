// DoRA (Weight-Decomposed Low-Rank Adaptation) as a LoRAKit adapter plugin, written in Swift.
//
// PEFT's LoRA with use_dora=True (peft/tuners/lora/dora.py, DoraLinearLayer). Per target module:
//   lora_A.weight           A [r, IN]    kaiming-uniform at creation (PEFT's default)
//   lora_B.weight           B [OUT, r]   zeros at creation
//   lora_magnitude_vector   m [OUT]      ‖W + s·B·A‖ per row at creation
// with s = lora_alpha / r (lora_alpha / √r with use_rslora; rank_pattern / alpha_pattern apply).
//   forward:  y = W x + c·[(m/n − 1) ⊙ W x + (m/n) ⊙ s·B(A x)],   n = ‖W + s·B·A‖ per row
//             (c = the host's attach multiplier; c = 1 is PEFT's output (m/n) ⊙ (W + s·B·A) x)
//   backward: n is a constant (detached, as PEFT does: DoRA paper §4.3)
//   merge:    W' = (1 + c(m/n − 1)) ⊙ W + c·(m/n) ⊙ s·B·A    (c = 1: PEFT's (m/n) ⊙ (W + s·B·A))
// n depends on W and on A, B only, so it is computed once in `prepare` (after load and after every
// optimizer step), from the host's dequantized base rows, not per token.
//
// Shape legend: T = rows, IN/OUT = module features, r = rank. All matrices row-major f32.
// Threads: rows (forward, backward's per-row part) or output/input features (gradient sums, each summed
// over rows in order) are split over the host's threads: results do not depend on the thread count.

import CLoRAKitPlugin
#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

private var host: UnsafePointer<lkp_host>! = nil

@inline(__always) private func cstr(_ s: StaticString) -> UnsafePointer<CChar> {
    UnsafeRawPointer(s.utf8Start).assumingMemoryBound(to: CChar.self)
}

private func fail(_ status: Int, _ message: String) -> lkp_status {
    host.pointee.set_error(message)
    return lkp_status(status)
}

// MARK: - Instance

private final class DoRAInstance {
    let module: UnsafePointer<lkp_module>
    let inF: Int, outF: Int, r: Int
    let s: Float
    /// n_i = ‖W_i + s·(B·A)_i‖ and m_i / n_i, set by prepare.
    let norms: UnsafeMutablePointer<Float>
    let mn: UnsafeMutablePointer<Float>
    var prepared = false

    init(module: UnsafePointer<lkp_module>, r: Int, s: Float) {
        self.module = module
        inF = Int(module.pointee.in_features); outF = Int(module.pointee.out_features)
        self.r = r; self.s = s
        norms = .allocate(capacity: outF); norms.initialize(repeating: 1, count: outF)
        mn = .allocate(capacity: outF); mn.initialize(repeating: 1, count: outF)
    }
    deinit { norms.deallocate(); mn.deallocate() }

    var name: String { String(cString: module.pointee.full_name) }
}

@inline(__always) private func instance(_ p: OpaquePointer?) -> DoRAInstance {
    Unmanaged<DoRAInstance>.fromOpaque(UnsafeRawPointer(p!)).takeUnretainedValue()
}

/// Run body(index, count) on the host's threads (contiguous shares via lkp_split).
private final class Job { let body: (Int, Int) -> Void; init(_ b: @escaping (Int, Int) -> Void) { body = b } }
/// `rows` 1 (a decoded token): run here, without a hand-out to the host's threads (the work of one row
/// is a few microseconds, less than waking the pool).
private func parallel(_ exec: OpaquePointer?, rows: Int64, _ body: @escaping (Int, Int) -> Void) {
    if rows <= 1 { body(0, 1); return }
    parallel(exec, body)
}
private func parallel(_ exec: OpaquePointer?, _ body: @escaping (Int, Int) -> Void) {
    let job = Unmanaged.passRetained(Job(body))
    host.pointee.parallel_for(exec, { user, index, count in
        Unmanaged<Job>.fromOpaque(user!).takeUnretainedValue().body(Int(index), Int(count))
    }, job.toOpaque())
    job.release()
}
@inline(__always) private func split(_ n: Int, _ index: Int, _ count: Int) -> Range<Int> {
    var b: Int64 = 0, e: Int64 = 0
    lkp_split(Int64(n), Int32(index), Int32(count), &b, &e)
    return Int(b)..<Int(e)
}

/// Σ a[j]·b[j] in a fixed order: 8-wide lanes (two accumulators over 16-float blocks), summed, then the tail.
/// (A plain loop is one dependent add per element, which Swift does not reorder: at decode the adapter's
/// A·x and B·u cost ~5 % of a token on SmolLM2 with DoRA on q, v; this is several times faster.)
@inline(__always) private func dot(_ a: UnsafePointer<Float>, _ b: UnsafePointer<Float>, _ n: Int) -> Float {
    var j = 0
    var s0 = SIMD8<Float>(), s1 = SIMD8<Float>()
    let ra = UnsafeRawPointer(a), rb = UnsafeRawPointer(b)
    while j + 16 <= n {
        s0 += ra.loadUnaligned(fromByteOffset: j * 4, as: SIMD8<Float>.self) * rb.loadUnaligned(fromByteOffset: j * 4, as: SIMD8<Float>.self)
        s1 += ra.loadUnaligned(fromByteOffset: (j + 8) * 4, as: SIMD8<Float>.self) * rb.loadUnaligned(fromByteOffset: (j + 8) * 4, as: SIMD8<Float>.self)
        j += 16
    }
    if j + 8 <= n {
        s0 += ra.loadUnaligned(fromByteOffset: j * 4, as: SIMD8<Float>.self) * rb.loadUnaligned(fromByteOffset: j * 4, as: SIMD8<Float>.self)
        j += 8
    }
    var s = (s0 + s1).sum()
    while j < n { s += a[j] * b[j]; j += 1 }
    return s
}

// MARK: - create / params

private func configNumber(_ cfg: OpaquePointer?, _ module: UnsafePointer<lkp_module>, plain: String,
                          pattern: String, default def: Double) -> (lkp_status, Double) {
    var v = 0.0
    var st = host.pointee.config_pattern_number(cfg, pattern, module, &v)
    if st == lkp_status(LKP_OK) { return (st, v) }
    if st != lkp_status(LKP_ERR_NOT_FOUND) { return (st, 0) }
    st = host.pointee.config_number(cfg, plain, &v)
    if st == lkp_status(LKP_ERR_NOT_FOUND) { return (lkp_status(LKP_OK), def) }
    return (st, v)
}

private func create(_ args: UnsafeMutablePointer<lkp_create_args>?) -> lkp_status {
    let a = args!
    let module = a.pointee.module!, cfg = a.pointee.config
    let name = String(cString: module.pointee.full_name)
    var flag: Int32 = 0
    var st = host.pointee.config_bool(cfg, "fan_in_fan_out", &flag)
    if st != lkp_status(LKP_OK) && st != lkp_status(LKP_ERR_NOT_FOUND) { return st }
    if st == lkp_status(LKP_OK) && flag != 0 {
        return fail(Int(LKP_ERR_UNSUPPORTED), "dora: fan_in_fan_out=true is not supported (\(name) is a Linear [out, in])")
    }
    let (st1, rank) = configNumber(cfg, module, plain: "r", pattern: "rank_pattern", default: 8)
    if st1 != lkp_status(LKP_OK) { return st1 }
    let (st2, alpha) = configNumber(cfg, module, plain: "lora_alpha", pattern: "alpha_pattern", default: 8)
    if st2 != lkp_status(LKP_OK) { return st2 }
    guard rank >= 1, rank <= 4096, rank == rank.rounded() else {
        return fail(Int(LKP_ERR_INVALID_ARGUMENT), "dora: rank \(rank) for \(name) is not an integer in 1...4096")
    }
    guard alpha.isFinite, alpha > 0 else {
        return fail(Int(LKP_ERR_INVALID_ARGUMENT), "dora: lora_alpha \(alpha) for \(name) is not finite and > 0")
    }
    var rs: Int32 = 0
    st = host.pointee.config_bool(cfg, "use_rslora", &rs)
    if st != lkp_status(LKP_OK) && st != lkp_status(LKP_ERR_NOT_FOUND) { return st }
    let s = Float(rs != 0 ? alpha / rank.squareRoot() : alpha / rank)
    let inst = DoRAInstance(module: module, r: Int(rank), s: s)
    a.pointee.instance = OpaquePointer(Unmanaged.passRetained(inst).toOpaque())
    a.pointee.kind = Int32(LKP_KIND_ADD)
    a.pointee.n_params = 3
    return lkp_status(LKP_OK)
}

private func destroy(_ p: OpaquePointer?) {
    guard let p else { return }
    Unmanaged<DoRAInstance>.fromOpaque(UnsafeRawPointer(p)).release()
}

private func paramInfo(_ p: OpaquePointer?, _ index: Int32, _ out: UnsafeMutablePointer<lkp_param_info>?) -> lkp_status {
    let inst = instance(p)
    let o = out!
    o.pointee.trainable = 1
    o.pointee.init_value = 0
    switch index {
    case 0:
        o.pointee.name = cstr("lora_A.weight"); o.pointee.n_dims = 2
        o.pointee.shape = (Int64(inst.r), Int64(inst.inF), 0, 0)
        o.pointee.`init` = Int32(LKP_INIT_KAIMING_UNIFORM)
        o.pointee.out_axis = -1
    case 1:
        o.pointee.name = cstr("lora_B.weight"); o.pointee.n_dims = 2
        o.pointee.shape = (Int64(inst.outF), Int64(inst.r), 0, 0)
        o.pointee.`init` = Int32(LKP_INIT_ZEROS)
        o.pointee.out_axis = 0                                  // rows of B follow W's rows
    case 2:
        o.pointee.name = cstr("lora_magnitude_vector"); o.pointee.n_dims = 1
        o.pointee.shape = (Int64(inst.outF), 0, 0, 0)
        o.pointee.`init` = Int32(LKP_INIT_PLUGIN)
        o.pointee.out_axis = 0
    default:
        return fail(Int(LKP_ERR_INVALID_ARGUMENT), "dora: \(inst.name) has 3 parameters, asked for index \(index)")
    }
    return lkp_status(LKP_OK)
}

private func workspaceFloats(_ p: OpaquePointer?, _ call: Int32, _ rows: Int64) -> Int64 {
    let inst = instance(p)
    switch call {
    case Int32(LKP_CALL_FORWARD): return rows * Int64(inst.r)                       // U [T, r]
    case Int32(LKP_CALL_BACKWARD): return rows * Int64(2 * inst.r + inst.outF)      // U, V [T, r]; G [T, OUT]
    default: return 0
    }
}

// MARK: - norms (init of m, prepare)

/// out[i] = ‖W_i + s·(B·A)_i‖ for every row, from the host's dequantized rows (blocks of 64 rows fetched
/// on the calling thread, the arithmetic split over rows).
private func rowNorms(_ inst: DoRAInstance, _ A: UnsafePointer<Float>, _ B: UnsafePointer<Float>,
                      _ exec: OpaquePointer?, _ out: UnsafeMutablePointer<Float>) -> lkp_status {
    let IN = inst.inF, OUT = inst.outF, r = inst.r, s = inst.s
    let block = 64
    let buf = UnsafeMutablePointer<Float>.allocate(capacity: block * IN)
    defer { buf.deallocate() }
    var b = 0
    while b < OUT {
        let n = min(block, OUT - b)
        let st = host.pointee.weight_rows_f32(inst.module.pointee.weight, Int64(b), Int64(n), buf, Int64(IN))
        if st != lkp_status(LKP_OK) { return st }
        let base = b
        parallel(exec) { index, count in
            for i in split(n, index, count) {
                let w = buf + i * IN
                for k in 0..<r {                               // w += s·B_ik·A_k
                    let c = s * B[(base + i) * r + k]
                    let ak = A + k * IN
                    for j in 0..<IN { w[j] += c * ak[j] }
                }
                var acc = 0.0
                for j in 0..<IN { acc += Double(w[j]) * Double(w[j]) }
                out[base + i] = Float(acc.squareRoot())
            }
        }
        b += n
    }
    return lkp_status(LKP_OK)
}

private func initParam(_ args: UnsafePointer<lkp_init_args>?) -> lkp_status {
    let a = args!.pointee
    let inst = instance(a.instance)
    guard a.index == 2 else {
        return fail(Int(LKP_ERR_INVALID_ARGUMENT), "dora: init_param for parameter \(a.index) (only 2, the magnitude, is the plugin's)")
    }
    return rowNorms(inst, a.params[0]!, a.params[1]!, a.exec, a.out)
}

private func prepare(_ args: UnsafePointer<lkp_prepare_args>?) -> lkp_status {
    let a = args!.pointee
    let inst = instance(a.instance)
    let st = rowNorms(inst, a.params[0]!, a.params[1]!, a.exec, inst.norms)
    if st != lkp_status(LKP_OK) { return st }
    let m = a.params[2]!
    for i in 0..<inst.outF {
        guard inst.norms[i] > 0, m[i].isFinite else {
            return fail(Int(LKP_ERR_FORMAT), "dora: \(inst.name) row \(i): norm \(inst.norms[i]), magnitude \(m[i]) (need a norm > 0 and a finite magnitude)")
        }
        inst.mn[i] = m[i] / inst.norms[i]
    }
    inst.prepared = true
    return lkp_status(LKP_OK)
}

// MARK: - forward / backward / merge

private func forward(_ args: UnsafePointer<lkp_forward_args>?) -> lkp_status {
    let a = args!.pointee
    let inst = instance(a.instance)
    guard inst.prepared else { return fail(Int(LKP_ERR_INVALID_ARGUMENT), "dora: forward on \(inst.name) before prepare") }
    let IN = inst.inF, OUT = inst.outF, r = inst.r, s = inst.s, c = a.scale
    let A = a.params[0]!, B = a.params[1]!, mn = inst.mn
    let x = a.x!, h = a.base_y!, y = a.y!, U = a.workspace!
    let xs = Int(a.x_stride), hs = Int(a.base_y_stride), ys = Int(a.y_stride)
    parallel(a.exec, rows: a.rows) { index, count in
        for t in split(Int(a.rows), index, count) {
            let u = U + t * r, xt = x + t * xs, ht = h + t * hs, yt = y + t * ys
            for k in 0..<r { u[k] = dot(A + k * IN, xt, IN) }                          // u = A x_t
            for i in 0..<OUT {
                let bu = dot(B + i * r, u, r)
                yt[i] += c * ((mn[i] - 1) * ht[i] + mn[i] * (s * bu))
            }
        }
    }
    return lkp_status(LKP_OK)
}

private func backward(_ args: UnsafePointer<lkp_backward_args>?) -> lkp_status {
    let a = args!.pointee
    let inst = instance(a.instance)
    guard inst.prepared else { return fail(Int(LKP_ERR_INVALID_ARGUMENT), "dora: backward on \(inst.name) before prepare") }
    let IN = inst.inF, OUT = inst.outF, r = inst.r, s = inst.s, c = a.scale, T = Int(a.rows)
    let A = a.params[0]!, B = a.params[1]!, mn = inst.mn, norms = inst.norms
    let x = a.x!, h = a.base_y!, dy = a.dy!
    let xs = Int(a.x_stride), hs = Int(a.base_y_stride), dys = Int(a.dy_stride)
    let U = a.workspace!, V = U + T * r, G = V + T * r                              // U, V [T, r]; G [T, OUT]
    let dA = a.param_grads?[0], dB = a.param_grads?[1], dm = a.param_grads?[2]
    let dx = a.dx, dxs = Int(a.dx_stride), dh = a.d_base_y, dhs = Int(a.d_base_y_stride)
    // Per row: u = A x, g = c·(m/n) ⊙ dy, v = Bᵀ g; d_base_y += c(m/n − 1) ⊙ dy; dx += s·Aᵀ v.
    parallel(a.exec) { index, count in
        for t in split(T, index, count) {
            let u = U + t * r, v = V + t * r, g = G + t * OUT, xt = x + t * xs, dyt = dy + t * dys
            for k in 0..<r { u[k] = dot(A + k * IN, xt, IN) }
            for i in 0..<OUT { g[i] = c * mn[i] * dyt[i] }
            for k in 0..<r { v[k] = 0 }
            for i in 0..<OUT { let gi = g[i], bi = B + i * r; for k in 0..<r { v[k] += bi[k] * gi } }
            if let dh {
                let d = dh + t * dhs
                for i in 0..<OUT { d[i] += c * (mn[i] - 1) * dyt[i] }
            }
            if let dx {
                let d = dx + t * dxs
                for k in 0..<r { let vk = s * v[k], ak = A + k * IN; for j in 0..<IN { d[j] += vk * ak[j] } }
            }
        }
    }
    // dB_ik += s·Σ_t g_ti u_tk; dm_i += c·Σ_t dy_ti (h_ti + s·B_i·u_t) / n_i (tasks own rows i; t in order).
    if dB != nil || dm != nil {
        parallel(a.exec) { index, count in
            for i in split(OUT, index, count) {
                let bi = B + i * r
                if let dB {
                    for k in 0..<r {
                        var acc: Float = 0
                        for t in 0..<T { acc += G[t * OUT + i] * U[t * r + k] }
                        dB[i * r + k] += s * acc
                    }
                }
                if let dm {
                    var acc: Float = 0
                    for t in 0..<T { acc += dy[t * dys + i] * (h[t * hs + i] + s * dot(bi, U + t * r, r)) }
                    dm[i] += c * acc / norms[i]
                }
            }
        }
    }
    // dA_kj += s·Σ_t v_tk x_tj (tasks own columns j; t in order).
    if let dA {
        parallel(a.exec) { index, count in
            let cols = split(IN, index, count)
            for k in 0..<r {
                let d = dA + k * IN
                for t in 0..<T {
                    let vk = s * V[t * r + k], xt = x + t * xs
                    for j in cols { d[j] += vk * xt[j] }
                }
            }
        }
    }
    return lkp_status(LKP_OK)
}

private func merge(_ args: UnsafePointer<lkp_merge_args>?) -> lkp_status {
    let a = args!.pointee
    let inst = instance(a.instance)
    guard inst.prepared else { return fail(Int(LKP_ERR_INVALID_ARGUMENT), "dora: merge on \(inst.name) before prepare") }
    let IN = inst.inF, r = inst.r, s = inst.s, c = a.scale
    let A = a.params[0]!, B = a.params[1]!, mn = inst.mn
    let w = a.w!, ws = Int(a.w_stride), b0 = Int(a.row_begin)
    guard b0 >= 0, a.n_rows >= 0, b0 + Int(a.n_rows) <= inst.outF else {
        return fail(Int(LKP_ERR_INVALID_ARGUMENT), "dora: merge rows [\(b0), \(b0 + Int(a.n_rows))) outside [0, \(inst.outF))")
    }
    // W'_i = (1 + c(m/n − 1))·W_i + c·(m/n)·s·(B·A)_i
    parallel(a.exec) { index, count in
        for i in split(Int(a.n_rows), index, count) {
            let row = w + i * ws, g = b0 + i
            let f = 1 + c * (mn[g] - 1)
            for j in 0..<IN { row[j] *= f }
            for k in 0..<r {
                let q = c * mn[g] * s * B[g * r + k], ak = A + k * IN
                for j in 0..<IN { row[j] += q * ak[j] }
            }
        }
    }
    return lkp_status(LKP_OK)
}

// MARK: - tables and entry

private let suffixes: UnsafeMutablePointer<UnsafePointer<CChar>?> = {
    let p = UnsafeMutablePointer<UnsafePointer<CChar>?>.allocate(capacity: 3)
    p[0] = cstr("lora_A.weight"); p[1] = cstr("lora_B.weight"); p[2] = cstr("lora_magnitude_vector")
    return p
}()

private let doraType: UnsafeMutablePointer<lkp_adapter_type> = {
    var t = lkp_adapter_type()
    t.struct_size = UInt32(MemoryLayout<lkp_adapter_type>.size)
    t.name = cstr("dora")
    t.description = cstr("PEFT DoRA (LoRA with use_dora): magnitude-scaled, row-normalised W + s·B·A")
    t.peft_type = cstr("LORA")
    t.peft_flag = cstr("use_dora")
    t.key_suffixes = UnsafePointer(suffixes)
    t.n_key_suffixes = 3
    t.create = { create($0) }
    t.destroy = { destroy($0) }
    t.param_info = { paramInfo($0, $1, $2) }
    t.workspace_floats = { workspaceFloats($0, $1, $2) }
    t.init_param = { initParam($0) }
    t.prepare = { prepare($0) }
    t.forward = { forward($0) }
    t.backward = { backward($0) }
    t.merge = { merge($0) }
    let p = UnsafeMutablePointer<lkp_adapter_type>.allocate(capacity: 1)
    p.initialize(to: t)
    return p
}()

private let typeList: UnsafeMutablePointer<UnsafePointer<lkp_adapter_type>?> = {
    let p = UnsafeMutablePointer<UnsafePointer<lkp_adapter_type>?>.allocate(capacity: 1)
    p[0] = UnsafePointer(doraType)
    return p
}()

private let pluginTable: UnsafeMutablePointer<lkp_plugin> = {
    var pl = lkp_plugin()
    pl.struct_size = UInt32(MemoryLayout<lkp_plugin>.size)
    pl.abi_major = Int32(LKP_ABI_MAJOR)
    pl.abi_minor = Int32(LKP_ABI_MINOR)
    pl.name = cstr("dora")
    pl.version = cstr("1.0.0")
    pl.n_types = 1
    pl.types = UnsafePointer(typeList)
    let p = UnsafeMutablePointer<lkp_plugin>.allocate(capacity: 1)
    p.initialize(to: pl)
    return p
}()

/// The plugin's entry point (LKP_ENTRY_SYMBOL).
@_cdecl("lkp_entry")
public func lkp_entry(_ h: UnsafePointer<lkp_host>?, _ out: UnsafeMutablePointer<UnsafePointer<lkp_plugin>?>?) -> lkp_status {
    guard let h, let out else { return lkp_status(LKP_ERR_INVALID_ARGUMENT) }
    // The host table must have everything of ABI 1.0 (the last 1.0 function is config_pattern_number).
    let needed = MemoryLayout<lkp_host>.offset(of: \lkp_host.config_pattern_number)! + MemoryLayout<UnsafeRawPointer>.size
    if h.pointee.abi_major != Int32(LKP_ABI_MAJOR) || Int(h.pointee.struct_size) < needed {
        if Int(h.pointee.struct_size) >= MemoryLayout<lkp_host>.offset(of: \lkp_host.set_error)! + MemoryLayout<UnsafeRawPointer>.size {
            h.pointee.set_error("dora plugin needs plugin ABI \(LKP_ABI_MAJOR).x with a host table of >= \(needed) bytes; host has \(h.pointee.abi_major).\(h.pointee.abi_minor), \(h.pointee.struct_size) bytes")
        }
        return lkp_status(LKP_ERR_ABI)
    }
    host = h
    out.pointee = UnsafePointer(pluginTable)
    return lkp_status(LKP_OK)
}
