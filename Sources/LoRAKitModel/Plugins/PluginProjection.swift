import CLoRAKitPlugin
import LoRAKitCore
import LoRAKitKernels

/// The plugin adapters attached to one context: per (layer, module), the (module, scale) entries in
/// attach order, and the buffers the projection with plugins needs. Owned by one context (one thread at
/// a time).
final class PluginAttachments {
    struct Entry {
        let module: PluginModule
        var scale: Float
    }
    struct Attachment {
        let adapter: PluginAdapter
        var scale: Float
    }
    private(set) var attachments: [Attachment] = []
    /// Indexed by layer * 7 + module.
    private(set) var entries: [[Entry]]
    private var buffers: [Storage] = []
    private var bufferFloats = 0
    private var workspace: Storage?

    init(nLayers: Int) { entries = Array(repeating: [], count: nLayers * LinearModule.allCases.count) }

    var isEmpty: Bool { attachments.isEmpty }

    @inline(__always)
    func at(_ layer: Int, _ m: LinearModule) -> [Entry] { entries[layer * LinearModule.allCases.count + m.rawValue] }

    func attach(_ a: PluginAdapter, scale: Float) throws(LKError) {
        guard scale.isFinite else { throw .invalidArgument("attach \(a.name): scale \(scale) is not finite") }
        guard !attachments.contains(where: { $0.adapter === a }) else {
            throw .invalidArgument("attach \(a.name): this adapter is already attached to the context (use setScale)")
        }
        attachments.append(Attachment(adapter: a, scale: scale))
        rebuild()
    }

    func detach(_ a: PluginAdapter) throws(LKError) {
        guard let i = attachments.firstIndex(where: { $0.adapter === a }) else {
            throw .invalidArgument("detach \(a.name): the adapter is not attached to this context")
        }
        attachments.remove(at: i)
        rebuild()
    }

    func setScale(_ scale: Float, for a: PluginAdapter) throws(LKError) {
        guard scale.isFinite else { throw .invalidArgument("setScale \(a.name): scale \(scale) is not finite") }
        guard let i = attachments.firstIndex(where: { $0.adapter === a }) else {
            throw .invalidArgument("setScale \(a.name): the adapter is not attached to this context")
        }
        attachments[i].scale = scale
        rebuild()
    }

    func detachAll() {
        attachments.removeAll()
        rebuild()
    }

    private func rebuild() {
        for i in entries.indices { entries[i].removeAll() }
        for at in attachments {
            for m in at.adapter.modules {
                entries[m.layer * LinearModule.allCases.count + m.module.rawValue].append(Entry(module: m, scale: at.scale))
            }
        }
    }

    /// y = the module's output with the plugin entries of (layer, m) around the base product:
    ///     x' = f_k(…f_1(x)) over the `.input` entries, h = base(x'), h' = g_k(…g_1(h)) over the `.output`
    ///     entries, y = h' + Σ Δ(x', h) over the `.add` entries, then `rest(x', y)` (the host's own
    ///     adapters, e.g. LoRA, which also read x').
    /// - x: [T, IN]; y: [T, OUT]; base(x', y) writes y = x'·Wᵀ.
    func project(_ list: [Entry], x: UnsafePointer<Float>, rows t: Int, inFeatures: Int, outFeatures: Int,
                 y: UnsafeMutablePointer<Float>, pool: ThreadPool,
                 base: (UnsafePointer<Float>, UnsafeMutablePointer<Float>) throws(LKError) -> Void,
                 rest: (UnsafePointer<Float>, UnsafeMutablePointer<Float>) throws(LKError) -> Void) throws(LKError) {
        let wsp = try prepare(list, rows: t, width: max(inFeatures, outFeatures))
        let xin = try inputs(list, x: x, rows: t, workspace: wsp, pool: pool)
        try base(xin, y)
        try afterBase(list, x: xin, rows: t, outFeatures: outFeatures, y: y, workspace: wsp, pool: pool)
        try rest(xin, y)
    }

    /// x' of the `.input` entries (x itself when there are none): ping-pong between buffers 0 and 1.
    private func inputs(_ list: [Entry], x: UnsafePointer<Float>, rows t: Int, workspace wsp: UnsafeMutablePointer<Float>,
                        pool: ThreadPool) throws(LKError) -> UnsafePointer<Float> {
        var xin = x
        var k = 0
        for e in list where e.module.point == .input {
            let dst = buffer(k)
            try e.module.forward(x: xin, baseY: nil, rows: t, y: dst, scale: e.scale, workspace: wsp, pool: pool)
            xin = UnsafePointer(dst)
            k ^= 1
        }
        return xin
    }

    /// The first part of `project`: x' of the `.input` entries of `list` written to `dst` [T, IN] (a batch
    /// context rewrites one group's rows of a module input shared with other groups).
    func applyInput(_ list: [Entry], x: UnsafePointer<Float>, rows t: Int, inFeatures: Int, outFeatures: Int,
                    into dst: UnsafeMutablePointer<Float>, pool: ThreadPool) throws(LKError) {
        let wsp = try prepare(list, rows: t, width: max(inFeatures, outFeatures))
        let xin = try inputs(list, x: x, rows: t, workspace: wsp, pool: pool)
        if xin != UnsafePointer(dst) { dst.update(from: xin, count: t * inFeatures) }
    }

    /// Whether an entry sits at the input point (its module's base product must wait for x').
    static func hasInputPoint(_ list: [Entry]) -> Bool { list.contains { $0.module.point == .input } }

    /// The part of `project` after the base product, for a list without `.input` entries whose y already
    /// holds x·Wᵀ (the context computed it together with other modules': q/k/v, gate/up): the output
    /// points and the added terms. The host's own adapters are the caller's.
    func applyAfterBase(_ list: [Entry], x: UnsafePointer<Float>, rows t: Int, inFeatures: Int, outFeatures: Int,
                        y: UnsafeMutablePointer<Float>, pool: ThreadPool) throws(LKError) {
        let wsp = try prepare(list, rows: t, width: max(inFeatures, outFeatures))
        try afterBase(list, x: x, rows: t, outFeatures: outFeatures, y: y, workspace: wsp, pool: pool)
    }

    /// Buffers for `rows` rows of `width` floats and the workspace every entry's forward needs.
    private func prepare(_ list: [Entry], rows t: Int, width: Int) throws(LKError) -> UnsafeMutablePointer<Float> {
        try ensure(floats: t * width, count: 4)
        var ws = 0
        for e in list { ws = max(ws, e.module.workspaceFloats(call: Int32(LKP_CALL_FORWARD), rows: t)) }
        if workspace == nil || workspace!.byteCount < ws * 4 { workspace = try Storage(lazyZeroedBytes: max(ws, 1) * 4) }
        return workspace!.base.assumingMemoryBound(to: Float.self)
    }

    @inline(__always) private func buffer(_ i: Int) -> UnsafeMutablePointer<Float> {
        buffers[i].base.assumingMemoryBound(to: Float.self)
    }

    /// Outputs and added terms on y = h (the base product of x').
    private func afterBase(_ list: [Entry], x xin: UnsafePointer<Float>, rows t: Int, outFeatures: Int,
                           y: UnsafeMutablePointer<Float>, workspace wsp: UnsafeMutablePointer<Float>,
                           pool: ThreadPool) throws(LKError) {
        var hasOutput = false, hasAdd = false
        for e in list {
            if e.module.point == .output { hasOutput = true } else if e.module.point == .add { hasAdd = true }
        }
        if !hasOutput && !hasAdd { return }
        // h (the plain base product) in buffer 2; outputs ping-pong through buffer 3 and y.
        let h = buffer(2)
        h.update(from: y, count: t * outFeatures)
        if hasOutput {
            var cur = UnsafePointer(h)
            for e in list where e.module.point == .output {
                let dst = cur == UnsafePointer(y) ? buffer(3) : y
                try e.module.forward(x: xin, baseY: cur, rows: t, y: dst, scale: e.scale, workspace: wsp, pool: pool)
                cur = UnsafePointer(dst)
            }
            if cur != UnsafePointer(y) { y.update(from: cur, count: t * outFeatures) }
        }
        for e in list where e.module.point == .add {
            try e.module.forward(x: xin, baseY: UnsafePointer(h), rows: t, y: y, scale: e.scale, workspace: wsp, pool: pool)
        }
    }

    private func ensure(floats: Int, count: Int) throws(LKError) {
        if floats <= bufferFloats && buffers.count >= count { return }
        let n = max(floats, bufferFloats)
        buffers = []
        for _ in 0..<count { buffers.append(try Storage(lazyZeroedBytes: max(n, 1) * 4)) }
        bufferFloats = n
    }
}
