import LoRAKitCore
import LoRAKitKernels
import LoRAKitFormats

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// A multimodal projector: maps feature vectors (one per image patch, from a frozen encoder) into the
/// language model's embedding space, where they are placed before the text's token embeddings.
///
/// The one kind so far is LLaVA-1.5's `mlp2x_gelu`: `y = W2 · gelu(W0 · x + b0) + b2` with the exact
/// (erf) GELU of `torch.nn.GELU()`. Files are GGUF with llama.cpp's LLaVA projector names (`mm.0.weight`,
/// `mm.0.bias`, `mm.2.weight`, `mm.2.bias`; `clip.projector_type` = "mlp").
///
/// Shape legend: R = rows (patches), I = input features, C = the model's embedding width.
/// Parameters: W0 [C, I], b0 [C], W2 [C, C], b2 [C] (PyTorch's `nn.Linear` layout, rows = outputs).
///
/// Thread safety: `forward` reads the parameters only and may run concurrently; `backward`,
/// `zeroGradients` and updates of the parameters (an optimizer step) need exclusive use.
public final class Projector: @unchecked Sendable {
    public enum Kind: String, Sendable, CaseIterable {
        /// Linear I→C, GELU, Linear C→C (LLaVA-1.5's `mlp2x_gelu`; llama.cpp's projector type "mlp").
        case mlp2xGELU = "mlp2x_gelu"
    }

    public let kind: Kind
    /// I: features per row going in.
    public let inFeatures: Int
    /// C: features per row coming out (the model's embedding width).
    public let width: Int

    /// The parameters, named as in the file, and their gradients (same shapes, f32, contiguous).
    public let w0: Tensor, b0: Tensor, w2: Tensor, b2: Tensor
    public let gw0: Tensor, gb0: Tensor, gw2: Tensor, gb2: Tensor

    /// The file's tensor names, in file order.
    public static let tensorNames = ["mm.0.weight", "mm.0.bias", "mm.2.weight", "mm.2.bias"]
    /// GGUF keys: llama.cpp's projector type and output width, and the input width (ours: llama.cpp's
    /// files carry a vision encoder instead).
    public static let keyProjectorType = "clip.projector_type"
    public static let keyOutputWidth = "clip.vision.projection_dim"
    public static let keyInputWidth = "lorakit.projector.input_width"
    public static let keyKind = "lorakit.projector.type"

    /// Largest accepted width and input width (a file or argument beyond it is refused, not allocated).
    public static let maxFeatures = 1 << 16

    /// (name, value, gradient) for every parameter, in file order.
    public var parameters: [(name: String, value: Tensor, grad: Tensor)] {
        [(Self.tensorNames[0], w0, gw0), (Self.tensorNames[1], b0, gb0),
         (Self.tensorNames[2], w2, gw2), (Self.tensorNames[3], b2, gb2)]
    }

    /// A new projector initialised as PyTorch's `nn.Linear` does (weights and biases uniform in
    /// ±1/√fan_in), from `seed`.
    public init(kind: Kind = .mlp2xGELU, inFeatures: Int, width: Int, seed: UInt64) throws(LKError) {
        try Self.checkSizes(inFeatures: inFeatures, width: width, what: "projector")
        self.kind = kind
        self.inFeatures = inFeatures
        self.width = width
        var rng = SplitMix64(seed: seed)
        func uniform(_ n: Int, fanIn: Int) -> [Float] {
            let bound = 1 / Float(fanIn).squareRoot()
            return (0..<n).map { _ in (rng.nextFloat() * 2 - 1) * bound }
        }
        w0 = try Tensor(uniform(width * inFeatures, fanIn: inFeatures), shape: [width, inFeatures])
        b0 = try Tensor(uniform(width, fanIn: inFeatures), shape: [width])
        w2 = try Tensor(uniform(width * width, fanIn: width), shape: [width, width])
        b2 = try Tensor(uniform(width, fanIn: width), shape: [width])
        (gw0, gb0, gw2, gb2) = try Self.zeroGradients(inFeatures: inFeatures, width: width)
    }

    /// A new projector whose output width is `model`'s embedding width.
    public convenience init(kind: Kind = .mlp2xGELU, inFeatures: Int, model: LlamaModel, seed: UInt64) throws(LKError) {
        try self.init(kind: kind, inFeatures: inFeatures, width: model.config.dim, seed: seed)
    }

    /// A projector holding copies of the given parameter values (shapes as in the legend).
    public init(kind: Kind = .mlp2xGELU, w0: Tensor, b0: Tensor, w2: Tensor, b2: Tensor, source: String = "projector") throws(LKError) {
        guard w0.rank == 2 else { throw .shapeMismatch("\(source): mm.0.weight has shape \(w0.shape), expected [width, input width]") }
        let c = w0.shape[0], i = w0.shape[1]
        try Self.checkSizes(inFeatures: i, width: c, what: source)
        for (name, t, shape) in [("mm.0.bias", b0, [c]), ("mm.2.weight", w2, [c, c]), ("mm.2.bias", b2, [c])] where t.shape != shape {
            throw .shapeMismatch("\(source): \(name) has shape \(t.shape), expected \(shape) (mm.0.weight is \(w0.shape))")
        }
        self.kind = kind
        inFeatures = i
        width = c
        func copy(_ t: Tensor, _ name: String) throws(LKError) -> Tensor {
            let v = t.toFloats()
            if let bad = v.firstIndex(where: { !$0.isFinite }) {
                throw .format("\(source): \(name) value \(bad) is not finite (\(v[bad]))")
            }
            return try Tensor(v, shape: t.shape)
        }
        self.w0 = try copy(w0, "mm.0.weight")
        self.b0 = try copy(b0, "mm.0.bias")
        self.w2 = try copy(w2, "mm.2.weight")
        self.b2 = try copy(b2, "mm.2.bias")
        (gw0, gb0, gw2, gb2) = try Self.zeroGradients(inFeatures: i, width: c)
    }

    private static func checkSizes(inFeatures: Int, width: Int, what: String) throws(LKError) {
        guard inFeatures >= 1, inFeatures <= maxFeatures else {
            throw .invalidArgument("\(what): input width \(inFeatures) must be in 1...\(maxFeatures)")
        }
        guard width >= 1, width <= maxFeatures else {
            throw .invalidArgument("\(what): width \(width) must be in 1...\(maxFeatures)")
        }
    }

    private static func zeroGradients(inFeatures i: Int, width c: Int) throws(LKError) -> (Tensor, Tensor, Tensor, Tensor) {
        (try Tensor(zeros: [c, i]), try Tensor(zeros: [c]), try Tensor(zeros: [c, c]), try Tensor(zeros: [c]))
    }

    /// Refuses a model whose embedding width is not this projector's output width.
    public func checkFits(_ model: LlamaModel, source: String = "projector") throws(LKError) {
        guard model.config.dim == width else {
            throw .shapeMismatch("\(source): output width \(width) does not fit the model's embedding width \(model.config.dim)")
        }
    }

    // MARK: Forward and backward

    /// What `forward(training:)` keeps for `backward`: the input and the pre-activation h = W0·x + b0.
    public struct Activations: @unchecked Sendable {
        public let rows: Int
        /// x: [R, I]
        public let input: [Float]
        /// h: [R, C]
        public let hidden: [Float]
    }

    /// out[R, C] = W2 · gelu(W0 · x + b0) + b2 for x: [R, I]. Returns h (the pre-activation) as well when
    /// `keep` is set, for `backward`.
    private func run(_ x: UnsafePointer<Float>, rows r: Int, out: UnsafeMutablePointer<Float>,
                     keepHidden: Bool, pool: ThreadPool) throws(LKError) -> [Float] {
        let c = width, i = inFeatures
        var h = [Float](repeating: 0, count: r * c)
        try h.withUnsafeMutableBufferPointer { (hb) throws(LKError) in
            let hp = hb.baseAddress!
            // h = x · W0ᵀ + b0
            for row in 0..<r { (hp + row * c).update(from: b0.f32, count: c) }
            try GEMM.multiply(m: r, n: c, k: i, a: GEMMLeft(x, rowStride: i), b: .f32Transposed(UnsafePointer(w0.f32), ld: i),
                              beta: 1, c: hp, ldc: c, pool: pool)
            // g = gelu(h), written to out; out = g · W2ᵀ + b2 (g kept in a scratch copy)
            var g = [Float](repeating: 0, count: r * c)
            try g.withUnsafeMutableBufferPointer { (gb) throws(LKError) in
                try Ops.geluForward(UnsafePointer(hp), out: gb.baseAddress!, count: r * c, approximation: .erf, pool: pool)
                for row in 0..<r { (out + row * c).update(from: b2.f32, count: c) }
                try GEMM.multiply(m: r, n: c, k: c, a: GEMMLeft(UnsafePointer(gb.baseAddress!), rowStride: c),
                                  b: .f32Transposed(UnsafePointer(w2.f32), ld: c), beta: 1, c: out, ldc: c, pool: pool)
            }
        }
        return keepHidden ? h : []
    }

    private func checkInput(_ x: [Float], rows: Int, what: String) throws(LKError) {
        guard rows >= 0, rows <= 1 << 24 else { throw .invalidArgument("\(what): rows \(rows) must be in 0...\(1 << 24)") }
        let want = try checkedProduct([rows, inFeatures], what: what)
        guard x.count == want else {
            throw .shapeMismatch("\(what): \(x.count) input values for \(rows) rows of \(inFeatures) features (expected \(want))")
        }
        if let bad = x.firstIndex(where: { !$0.isFinite }) {
            throw .invalidArgument("\(what): input value at row \(bad / inFeatures), column \(bad % inFeatures) is not finite (\(x[bad]))")
        }
    }

    /// Embedding rows [R, C] for features x: [R, I].
    public func forward(_ x: [Float], rows: Int, pool: ThreadPool = .shared) throws(LKError) -> [Float] {
        try checkInput(x, rows: rows, what: "projector forward")
        var out = [Float](repeating: 0, count: rows * width)
        if rows == 0 { return out }
        try x.withUnsafeBufferPointer { (xb) throws(LKError) in
            try out.withUnsafeMutableBufferPointer { (ob) throws(LKError) in
                _ = try run(xb.baseAddress!, rows: rows, out: ob.baseAddress!, keepHidden: false, pool: pool)
            }
        }
        return out
    }

    /// As `forward`, also returning what `backward` needs.
    public func forwardForTraining(_ x: [Float], rows: Int, pool: ThreadPool = .shared) throws(LKError) -> (output: [Float], activations: Activations) {
        try checkInput(x, rows: rows, what: "projector forward")
        var out = [Float](repeating: 0, count: rows * width)
        var h: [Float] = []
        if rows > 0 {
            try x.withUnsafeBufferPointer { (xb) throws(LKError) in
                try out.withUnsafeMutableBufferPointer { (ob) throws(LKError) in
                    h = try run(xb.baseAddress!, rows: rows, out: ob.baseAddress!, keepHidden: true, pool: pool)
                }
            }
        }
        return (out, Activations(rows: rows, input: x, hidden: h))
    }

    /// Accumulates the parameter gradients for dLoss/d(output) `dOutput`: [R, C] (the input-embedding
    /// gradient of the prefix rows the output was placed at). The caller zeroes the gradients
    /// (`zeroGradients`) at the start of an optimizer step. Sums over rows run in row order, so results
    /// do not depend on the thread count.
    public func backward(_ a: Activations, dOutput dy: [Float], pool: ThreadPool = .shared) throws(LKError) {
        let r = a.rows, c = width, i = inFeatures
        guard a.input.count == r * i, a.hidden.count == r * c else {
            throw .shapeMismatch("projector backward: activations of \(a.input.count) input / \(a.hidden.count) hidden values do not fit \(r) rows (input width \(i), width \(c))")
        }
        guard dy.count == r * c else {
            throw .shapeMismatch("projector backward: \(dy.count) gradient values for \(r) rows of width \(c)")
        }
        if let bad = dy.firstIndex(where: { !$0.isFinite }) {
            throw .invalidArgument("projector backward: gradient at row \(bad / c), column \(bad % c) is not finite (\(dy[bad]))")
        }
        if r == 0 { return }
        var g = [Float](repeating: 0, count: r * c)
        var dh = [Float](repeating: 0, count: r * c)
        try a.hidden.withUnsafeBufferPointer { (hb) throws(LKError) in
            try dy.withUnsafeBufferPointer { (dyb) throws(LKError) in
                try a.input.withUnsafeBufferPointer { (xb) throws(LKError) in
                    try g.withUnsafeMutableBufferPointer { (gb) throws(LKError) in
                        try dh.withUnsafeMutableBufferPointer { (dhb) throws(LKError) in
                            let hp = hb.baseAddress!, dyp = dyb.baseAddress!, xp = xb.baseAddress!
                            let gp = gb.baseAddress!, dhp = dhb.baseAddress!
                            try Ops.geluForward(hp, out: gp, count: r * c, approximation: .erf, pool: pool)
                            // db2 += Σ_rows dy;  dW2 [C, C] += dyᵀ · g
                            Self.addColumnSums(dyp, rows: r, cols: c, into: gb2.f32)
                            try GEMM.multiply(m: c, n: c, k: r, a: .transposed(dyp, ld: c), b: .f32(UnsafePointer(gp), ld: c),
                                              beta: 1, c: gw2.f32, ldc: c, pool: pool)
                            // dg [R, C] = dy · W2 (reusing g's buffer), dh = dg ⊙ gelu'(h)
                            try GEMM.multiply(m: r, n: c, k: c, a: GEMMLeft(dyp, rowStride: c), b: .f32(UnsafePointer(w2.f32), ld: c),
                                              beta: 0, c: gp, ldc: c, pool: pool)
                            try Ops.geluBackward(x: hp, dout: UnsafePointer(gp), dx: dhp, count: r * c, approximation: .erf, pool: pool)
                            // db0 += Σ_rows dh;  dW0 [C, I] += dhᵀ · x
                            Self.addColumnSums(UnsafePointer(dhp), rows: r, cols: c, into: gb0.f32)
                            try GEMM.multiply(m: c, n: i, k: r, a: .transposed(UnsafePointer(dhp), ld: c), b: .f32(xp, ld: i),
                                              beta: 1, c: gw0.f32, ldc: i, pool: pool)
                        }
                    }
                }
            }
        }
    }

    private static func addColumnSums(_ m: UnsafePointer<Float>, rows: Int, cols: Int, into out: UnsafeMutablePointer<Float>) {
        for row in 0..<rows {
            let p = m + row * cols
            for j in 0..<cols { out[j] += p[j] }
        }
    }

    /// Copies the parameter values of `other` (same kind and shapes), e.g. from a checkpoint.
    public func copyParameters(from other: Projector, source: String) throws(LKError) {
        guard other.kind == kind, other.inFeatures == inFeatures, other.width == width else {
            throw .shapeMismatch("\(source): projector \(other.kind.rawValue) \(other.inFeatures)→\(other.width) does not match \(kind.rawValue) \(inFeatures)→\(width)")
        }
        for (dst, src) in zip(parameters, other.parameters) { dst.value.f32.update(from: src.value.f32, count: dst.value.count) }
    }

    /// Sets every gradient to zero.
    public func zeroGradients() {
        for t in [gw0, gb0, gw2, gb2] { t.f32.update(repeating: 0, count: t.count) }
    }

    // MARK: Files

    /// Writes the projector as GGUF (f32 tensors), atomically (temporary file, then rename).
    public func save(to path: String) throws(LKError) {
        var w = GGUFWriter()
        w.set("general.architecture", .string("clip"))
        w.set("general.name", .string("LoRAKit projector"))
        w.set("clip.has_llava_projector", .bool(true))
        w.set(Self.keyProjectorType, .string("mlp"))
        w.set(Self.keyKind, .string(kind.rawValue))
        w.set(Self.keyOutputWidth, .uint32(UInt32(width)))
        w.set(Self.keyInputWidth, .uint32(UInt32(inFeatures)))
        for (name, value, _) in parameters { try w.add(name, value) }
        try w.write(to: path)
    }

    /// Reads a projector file written by `save` (or any GGUF with the same keys and tensors), checking it
    /// as strictly as a model file: the keys, the four tensors and no others, their shapes against the
    /// declared widths, f32/f16 values that are all finite, and — with `model` — that the output width is
    /// the model's embedding width. Errors name the file.
    public static func load(path: String, model: LlamaModel? = nil) throws(LKError) -> Projector {
        let f = try GGUFFile(path: path)
        let arch = f.metadata["general.architecture"]?.string
        guard arch == "clip" else {
            throw .format("\(path): not a projector file (general.architecture is \(arch.map { "\"\($0)\"" } ?? "missing"), expected \"clip\")")
        }
        let ptype = f.metadata[keyProjectorType]?.string
        guard ptype == "mlp" else {
            throw .unsupported("\(path): projector type \(ptype.map { "\"\($0)\"" } ?? "missing") (\(keyProjectorType)); supported: \"mlp\" (mlp2x_gelu)")
        }
        if let k = f.metadata[keyKind] {
            guard k.string == Kind.mlp2xGELU.rawValue else {
                throw .unsupported("\(path): \(keyKind) is \(k), supported: \"\(Kind.mlp2xGELU.rawValue)\"")
            }
        }
        guard let width = f.metadata[keyOutputWidth]?.int, let input = f.metadata[keyInputWidth]?.int else {
            throw .format("\(path): missing \(f.metadata[keyOutputWidth] == nil ? keyOutputWidth : keyInputWidth)")
        }
        try checkSizes(inFeatures: input, width: width, what: path)
        let names = Set(f.tensors.map(\.name))
        for name in tensorNames where !names.contains(name) { throw .format("\(path): missing tensor \(name)") }
        if let extra = f.tensors.first(where: { !tensorNames.contains($0.name) }) {
            throw .format("\(path): unexpected tensor \(extra.name) in a projector file")
        }
        let shapes: [String: [Int]] = ["mm.0.weight": [width, input], "mm.0.bias": [width],
                                       "mm.2.weight": [width, width], "mm.2.bias": [width]]
        var t: [String: Tensor] = [:]
        for name in tensorNames {
            let info = f.tensors[f.tensorIndex[name]!]
            guard info.dtype == .f32 || info.dtype == .f16 else {
                throw .unsupported("\(path): tensor \(name) is \(info.dtype.map { "\($0)" } ?? "ggml type \(info.ggmlType)"); projector tensors must be f32 or f16")
            }
            guard info.shape == shapes[name]! else {
                throw .shapeMismatch("\(path): tensor \(name) has shape \(info.shape), expected \(shapes[name]!) (width \(width), input width \(input))")
            }
            t[name] = try f.tensor(name)
        }
        let p = try Projector(w0: t["mm.0.weight"]!, b0: t["mm.0.bias"]!, w2: t["mm.2.weight"]!, b2: t["mm.2.bias"]!, source: path)
        if let model { try p.checkFits(model, source: path) }
        return p
    }
}
