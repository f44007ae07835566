import CLoRAKitPlugin
import LoRAKitCore
import LoRAKitKernels
import LoRAKitFormats
#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// Where a plugin instance sits in its module (`LKP_KIND_*`): the host computes
///     x' = x, then every `.input` instance in attach order: x' = f(x')
///     h  = W x'
///     h' = h, then every `.output` instance in attach order: h' = g(h')
///     y  = h' + Σ Δ(x', h) over the `.add` instances (LoRA is one of these)
public enum AdapterPoint: Int32, Sendable {
    case input = 0, output = 1, add = 2
}

/// One named f32 parameter of a plugin instance, as `param_info` described it.
public struct PluginParameter: Sendable {
    /// The PEFT key suffix (`ia3_l`, `lora_A.weight`, `lora_magnitude_vector`).
    public let name: String
    /// As stored in the PEFT file.
    public let shape: [Int]
    public let initRule: Int32
    public let initValue: Float
    public let trainable: Bool
    /// The axis indexed by the module's output features (permuted with W's rows), or nil.
    public let outAxis: Int?
    public var count: Int { shape.reduce(1, *) }
}

/// One plugin adapter type's instance on one linear module (layer, module) of one model: the plugin's
/// `lkp_instance`, the module description and base weight it was created for, and the parameters (owned
/// here, f32 contiguous, rows along `outAxis` in the model's order).
///
/// Forward only reads the instance, so one module serves many contexts at once. Parameter values change
/// only in a trainer's private copy (`copy()`), which calls `prepare` after each update.
public final class PluginModule: @unchecked Sendable {
    public let layer: Int
    public let module: LinearModule
    public let type: PluginAdapterType
    public let point: AdapterPoint
    public let inFeatures: Int
    public let outFeatures: Int
    public let parameters: [PluginParameter]
    /// The parameter values, in `parameters` order (f32, contiguous).
    public let values: [Tensor]
    let weight: PluginModuleWeight
    let config: PluginConfig
    private let desc: UnsafeMutablePointer<lkp_module>
    private let names: (UnsafeMutablePointer<CChar>, UnsafeMutablePointer<CChar>)
    private let instance: OpaquePointer
    private let paramPointers: UnsafeMutablePointer<UnsafePointer<Float>?>

    /// `model.layers.3.self_attn.q_proj`.
    public var fullName: String { LoRAConfig.hfModuleName(layer: layer, module: module) }
    /// `layer 3 q_proj (ia3)`, for messages.
    public var what: String { "adapter type \"\(type.name)\" on \(fullName)" }

    /// Create an instance for (layer, module) of `model` (the plugin's `create` and `param_info`), with
    /// parameter storage zeroed. Values are then loaded or initialised by the caller, who calls `prepare`.
    init(type: PluginAdapterType, config: PluginConfig, model: LlamaModel, layer: Int, module: LinearModule) throws(LKError) {
        self.type = type
        self.layer = layer
        self.module = module
        self.config = config
        let w = model.layers[layer].weight(module)
        weight = try PluginModuleWeight(w)
        (outFeatures, inFeatures) = (weight.outFeatures, weight.inFeatures)
        let full = LoRAConfig.hfModuleName(layer: layer, module: module)
        let n0 = strdup(String(module.hfName.split(separator: ".").last!))!, n1 = strdup(full)!
        let d = UnsafeMutablePointer<lkp_module>.allocate(capacity: 1)
        d.initialize(to: lkp_module(struct_size: UInt32(MemoryLayout<lkp_module>.size), layer: Int32(layer),
                                    module: Int32(module.rawValue), weight_dtype: w.dtype.rawValue,
                                    in_features: Int64(inFeatures), out_features: Int64(outFeatures),
                                    name: UnsafePointer(n0), full_name: UnsafePointer(n1),
                                    weight: weight.opaque))
        var args = lkp_create_args(struct_size: UInt32(MemoryLayout<lkp_create_args>.size), module: UnsafePointer(d),
                                   config: config.opaque, instance: nil, kind: -1, n_params: -1)
        let t = type.raw.pointee
        lkph_clear_error()
        let st = t.create(&args)
        func cleanup() {
            d.deallocate()
            free(n0)
            free(n1)
        }
        if st != LKP_OK {
            let msg = lkph_error().map { String(cString: $0) } ?? "(the plugin gave no message)"
            cleanup()
            throw pluginError(status: st, "adapter type \"\(type.name)\" (plugin \(type.plugin.path)) on \(full): create failed (status \(st)): \(msg)")
        }
        guard let inst = args.instance else {
            cleanup()
            throw .internal("adapter type \"\(type.name)\" on \(full): create returned no instance")
        }
        guard let p = AdapterPoint(rawValue: args.kind), (0...64).contains(args.n_params) else {
            t.destroy(inst)
            cleanup()
            throw .internal("adapter type \"\(type.name)\" (plugin \(type.plugin.path)) on \(full): create gave kind \(args.kind) and \(args.n_params) parameters (kinds 0...2, 0...64 parameters)")
        }
        desc = d
        names = (n0, n1)
        instance = inst
        point = p
        var params: [PluginParameter] = []
        var vals: [Tensor] = []
        var failure: LKError? = nil
        for i in 0..<Int(args.n_params) {
            var info = lkp_param_info()
            info.struct_size = UInt32(MemoryLayout<lkp_param_info>.size)
            info.out_axis = -1
            lkph_clear_error()
            let s = t.param_info(inst, Int32(i), &info)
            if s != LKP_OK {
                let msg = lkph_error().map { String(cString: $0) } ?? "(the plugin gave no message)"
                failure = pluginError(status: s, "adapter type \"\(type.name)\" on \(full): param_info(\(i)) failed (status \(s)): \(msg)")
                break
            }
            let nd = Int(info.n_dims)
            let dims = [info.shape.0, info.shape.1, info.shape.2, info.shape.3].prefix(max(0, min(nd, 4))).map(Int.init)
            let pname = info.name.map { String(cString: $0) } ?? ""
            let axis = Int(info.out_axis)
            if !(1...4).contains(nd) || dims.contains(where: { $0 < 1 || $0 > 1 << 28 }) || pname.isEmpty
                || axis < -1 || axis >= nd || (axis >= 0 && dims[axis] != outFeatures) {
                failure = .internal("adapter type \"\(type.name)\" (plugin \(type.plugin.path)) on \(full): parameter \(i) \"\(pname)\" has shape \(dims) (n_dims \(nd)) and out_axis \(axis); expected 1-4 positive dims and out_axis -1 or an axis of OUT = \(outFeatures)")
                break
            }
            params.append(PluginParameter(name: pname, shape: dims, initRule: info.`init`, initValue: info.init_value,
                                          trainable: info.trainable != 0, outAxis: axis >= 0 ? axis : nil))
            do throws(LKError) { vals.append(try Tensor(zeros: dims, dtype: .f32)) } catch { failure = error; break }
        }
        parameters = params
        values = vals
        paramPointers = .allocate(capacity: max(1, vals.count))
        for (i, v) in vals.enumerated() { paramPointers[i] = UnsafePointer(v.f32) }
        if let failure { throw failure }  // deinit destroys the instance
    }

    deinit {
        type.raw.pointee.destroy(instance)
        paramPointers.deallocate()
        desc.deallocate()
        free(names.0)
        free(names.1)
    }

    private func run(_ name: String, _ body: () -> Int32) throws(LKError) {
        lkph_clear_error()
        let st = body()
        guard st != LKP_OK else { return }
        let msg = lkph_error().map { String(cString: $0) } ?? "(the plugin gave no message)"
        throw pluginError(status: st, "\(what) (plugin \(type.plugin.fileName)): \(name) failed (status \(st)): \(msg)")
    }

    var params: UnsafePointer<UnsafePointer<Float>?> { UnsafePointer(paramPointers) }

    /// Floats of workspace a call needs (`LKP_CALL_*`).
    public func workspaceFloats(call: Int32, rows: Int) -> Int {
        guard let f = type.raw.pointee.workspace_floats else { return 0 }
        return max(0, Int(f(instance, call, Int64(rows))))
    }

    /// Fill the parameters of a new adapter by their declared rules (random ones from `rng`), then the
    /// plugin's own (`init_param`), then `prepare`.
    func initialise(rng: inout SplitMix64, pool: ThreadPool) throws(LKError) {
        for (p, v) in zip(parameters, values) {
            let out = v.f32, n = p.count
            switch Int(p.initRule) {
            case Int(LKP_INIT_ZEROS): out.update(repeating: 0, count: n)
            case Int(LKP_INIT_ONES): out.update(repeating: 1, count: n)
            case Int(LKP_INIT_CONSTANT): out.update(repeating: p.initValue, count: n)
            case Int(LKP_INIT_NORMAL): for i in 0..<n { out[i] = rng.nextGaussian() * p.initValue }
            case Int(LKP_INIT_UNIFORM): for i in 0..<n { out[i] = (rng.nextFloat() * 2 - 1) * p.initValue }
            case Int(LKP_INIT_KAIMING_UNIFORM):
                let bound = 1 / Float(p.shape.last!).squareRoot()
                for i in 0..<n { out[i] = (rng.nextFloat() * 2 - 1) * bound }
            case Int(LKP_INIT_PLUGIN): break
            default:
                throw .internal("\(what): parameter \(p.name) has unknown init rule \(p.initRule)")
            }
        }
        for (i, p) in parameters.enumerated() where p.initRule == LKP_INIT_PLUGIN {
            guard let f = type.raw.pointee.init_param else {
                throw .internal("\(what): parameter \(p.name) needs init_param, which the type lacks")
            }
            var a = lkp_init_args(struct_size: UInt32(MemoryLayout<lkp_init_args>.size), instance: instance, index: Int32(i),
                                  params: params, out: values[i].f32, exec: PluginHost.exec(pool))
            try run("init_param(\(p.name))") { f(&a) }
        }
        try prepare(pool: pool)
    }

    /// The plugin's prepare step (after load/initialisation and after every optimizer step).
    public func prepare(pool: ThreadPool) throws(LKError) {
        guard let f = type.raw.pointee.prepare else { return }
        var a = lkp_prepare_args(struct_size: UInt32(MemoryLayout<lkp_prepare_args>.size), instance: instance,
                                 params: params, exec: PluginHost.exec(pool))
        try run("prepare") { f(&a) }
    }

    /// The plugin's forward over `rows` rows (see `lkp_forward_args`): `.input` y[T, IN] := f(x);
    /// `.output` y[T, OUT] := g(baseY); `.add` y[T, OUT] += Δ(x, baseY). Rows are contiguous.
    public func forward(x: UnsafePointer<Float>, baseY: UnsafePointer<Float>?, rows: Int, y: UnsafeMutablePointer<Float>,
                        scale: Float, workspace: UnsafeMutablePointer<Float>?, pool: ThreadPool) throws(LKError) {
        let yStride = point == .input ? inFeatures : outFeatures
        var a = lkp_forward_args(struct_size: UInt32(MemoryLayout<lkp_forward_args>.size), instance: instance,
                                 params: params, rows: Int64(rows), x: x, x_stride: Int64(inFeatures),
                                 base_y: baseY, base_y_stride: Int64(outFeatures), y: y, y_stride: Int64(yStride),
                                 scale: scale, workspace: workspace, exec: PluginHost.exec(pool))
        let f = type.raw.pointee.forward!
        try run("forward") { f(&a) }
    }

    /// The plugin's backward (see `lkp_backward_args`); gradients are added.
    public func backward(x: UnsafePointer<Float>, baseY: UnsafePointer<Float>?, dy: UnsafePointer<Float>, rows: Int,
                         dx: UnsafeMutablePointer<Float>?, dBaseY: UnsafeMutablePointer<Float>?,
                         paramGrads: [UnsafeMutablePointer<Float>?], scale: Float,
                         workspace: UnsafeMutablePointer<Float>?, pool: ThreadPool) throws(LKError) {
        guard let f = type.raw.pointee.backward else {
            throw .unsupported("adapter type \"\(type.name)\" (plugin \(type.plugin.fileName)) cannot be trained (it has no backward)")
        }
        let dyStride = point == .input ? inFeatures : outFeatures
        try paramGrads.withUnsafeBufferPointer { (g: UnsafeBufferPointer<UnsafeMutablePointer<Float>?>) throws(LKError) in
            var a = lkp_backward_args(struct_size: UInt32(MemoryLayout<lkp_backward_args>.size), instance: instance,
                                      params: params, param_grads: g.baseAddress, rows: Int64(rows), x: x,
                                      x_stride: Int64(inFeatures), base_y: baseY, base_y_stride: Int64(outFeatures),
                                      dy: dy, dy_stride: Int64(dyStride), dx: dx, dx_stride: Int64(inFeatures),
                                      d_base_y: dBaseY, d_base_y_stride: Int64(outFeatures), scale: scale,
                                      workspace: workspace, exec: PluginHost.exec(pool))
            try run("backward") { f(&a) }
        }
    }

    /// Fold the instance (at `scale`) into rows [rowBegin, rowBegin + n) of the base weight, given as f32
    /// `w[n, IN]` (rewritten in place). Unsupported when the type has no merge.
    public func merge(rowBegin: Int, rows n: Int, w: UnsafeMutablePointer<Float>, scale: Float, pool: ThreadPool) throws(LKError) {
        guard let f = type.raw.pointee.merge else {
            throw .unsupported("adapter type \"\(type.name)\" (plugin \(type.plugin.fileName)): merging into the base weight is not supported by this type")
        }
        let need = workspaceFloats(call: Int32(LKP_CALL_MERGE), rows: n)
        let ws = UnsafeMutablePointer<Float>.allocate(capacity: max(1, need))
        defer { ws.deallocate() }
        var a = lkp_merge_args(struct_size: UInt32(MemoryLayout<lkp_merge_args>.size), instance: instance, params: params,
                               row_begin: Int64(rowBegin), n_rows: Int64(n), w: w, w_stride: Int64(inFeatures),
                               scale: scale, workspace: ws, exec: PluginHost.exec(pool))
        try run("merge") { f(&a) }
    }

    /// A new instance of the same type and module with its own copy of the values (prepared): what a
    /// trainer updates.
    public func copy(model: LlamaModel, pool: ThreadPool) throws(LKError) -> PluginModule {
        let m = try PluginModule(type: type, config: config, model: model, layer: layer, module: module)
        for (d, s) in zip(m.values, values) { d.f32.update(from: s.f32, count: s.count) }
        try m.prepare(pool: pool)
        return m
    }

    /// The first non-finite value of a parameter, as an error naming it.
    func checkFinite() throws(LKError) {
        for (p, v) in zip(parameters, values) {
            let f = v.f32
            for i in 0..<p.count where !f[i].isFinite {
                throw .format("\(what): parameter \(p.name)[\(i)] is \(f[i]) (not finite)")
            }
        }
    }
}

// MARK: - Row order

/// A parameter's values with its `outAxis` rearranged between the Hugging Face (neox) row order of q/k and
/// the model's (GGUF: interleaved), like `LoRARowOrder` does for LoRA's B.
func permuteOutAxis(_ src: UnsafePointer<Float>, _ dst: UnsafeMutablePointer<Float>, shape: [Int], axis: Int,
                    from: RoPELayout, to: RoPELayout, headDim d: Int) throws(LKError) {
    let n = shape.reduce(1, *)
    if from == to { dst.update(from: src, count: n); return }
    let rows = shape[axis]
    guard d >= 2, d % 2 == 0, rows % d == 0 else {
        throw .shapeMismatch("plugin parameter: cannot permute \(rows) rows in heads of \(d)")
    }
    let outer = shape[..<axis].reduce(1, *), inner = shape[(axis + 1)...].reduce(1, *)
    for o in 0..<outer {
        for g in 0..<rows {
            let h = LoRARowOrder.hfRow(ofGGUFRow: g, headDim: d)
            // interleaved[g] = neox[h]
            let (si, di) = from == .neox ? (h, g) : (g, h)
            (dst + (o * rows + di) * inner).update(from: src + (o * rows + si) * inner, count: inner)
        }
    }
}
