import LoRAKitCore
import LoRAKitKernels
import LoRAKitFormats
import LoRAKitTokenizer
import LoRAKitTemplates

/// The hook every adapter type implements for one linear layer. LoRA implements it twice over one
/// value type: `LoRAModule` (inference) and its trainable wrapper `TrainableLoRAModule` (training).
///
/// Shape legend: T = rows (tokens), IN = input features, OUT = output features of the base layer.
/// An adapter never changes the base weight: the layer computes `y = W x` and then each attached adapter
/// adds its own term `y += scale · Δ(x)`, for one row (decode) or many (prefill, training).
///
/// The hook is shaped so that another adapter type — DoRA or IA³ as a dlopen'ed plugin — can implement
/// it the way LoRA does. What such a type needs, and where LoRA has it:
/// - parameters, named f32 tensors: LoRA's A and B (`LoRAModule.a`/`b`); training wraps them as
///   `TrainableTensor`s (values shared, gradients; the optimizer keeps its state by their names);
/// - a prepare step after attaching or loading and after every optimizer step, deriving what the
///   forward needs from the parameters: `LoRAModule.prepare()` (the Bᵀ panels; the trainer runs it
///   before every pass);
/// - the forward over one row (decode) or many (prefill, training): `forward` below, whose workspace
///   keeps what the backward reads. LoRA adds a term to the output, as DoRA does (DoRA also reads the
///   base output W x, which the caller would pass along); IA³ scales the output (y := l ⊙ W x) or the
///   input (x := l ⊙ x before the base product), at the other two points of the same projection step
///   (`LlamaContext`'s and `LoRATrainer`'s `project`);
/// - the backward, adding parameter gradients and the input gradient, from that workspace:
///   `TrainableLoRAModule.backward`;
/// - an optional merge into the base weight: `LoRAModule.merge(into:scale:pool:)`.
public protocol LinearAdapter: AnyObject, Sendable {
    var inFeatures: Int { get }
    var outFeatures: Int { get }
    /// Floats of workspace `forward` needs for `rows` rows (the caller provides it; it must not be
    /// kernel scratch, which the GEMM itself uses).
    func workspaceFloats(rows: Int) -> Int
    /// y[T, OUT] += scale · Δ(x[T, IN]). On return the workspace holds what a backward needs (training
    /// keeps it per module; inference reuses it).
    /// - x: [T, IN]; y: [T, OUT]; workspace: ≥ `workspaceFloats(rows:)` floats.
    func forward(x: UnsafePointer<Float>, rows: Int, y: UnsafeMutablePointer<Float>, scale: Float,
                 workspace: UnsafeMutablePointer<Float>, pool: ThreadPool) throws(LKError)
}

/// The adapters attached to one context: for every (layer, module), the list of (adapter, scale) pairs
/// applied in attachment order. Owned by one context; cheap to rebuild on attach/detach.
public struct AdapterStack: Sendable {
    public struct Entry: Sendable {
        public let adapter: LinearAdapter
        public let scale: Float
        public init(adapter: LinearAdapter, scale: Float) { self.adapter = adapter; self.scale = scale }
    }
    /// Indexed by layer * LinearModule.allCases.count + module.rawValue.
    public private(set) var entries: [[Entry]]
    public let nLayers: Int

    public init(nLayers: Int) {
        self.nLayers = nLayers
        entries = Array(repeating: [], count: nLayers * LinearModule.allCases.count)
    }

    public var isEmpty: Bool { entries.allSatisfy(\.isEmpty) }

    @inline(__always)
    public func at(_ layer: Int, _ module: LinearModule) -> [Entry] {
        entries[layer * LinearModule.allCases.count + module.rawValue]
    }

    public mutating func append(_ layer: Int, _ module: LinearModule, _ e: Entry) {
        entries[layer * LinearModule.allCases.count + module.rawValue].append(e)
    }

    /// Remove every entry for which `drop` is true (order of the others kept).
    public mutating func removeAll(where drop: (Entry) -> Bool) {
        for i in entries.indices where !entries[i].isEmpty { entries[i].removeAll(where: drop) }
    }

    /// Set the scale of every entry for which `match` is true (positions kept).
    public mutating func setScale(_ scale: Float, where match: (Entry) -> Bool) {
        for i in entries.indices {
            for j in entries[i].indices where match(entries[i][j]) {
                entries[i][j] = Entry(adapter: entries[i][j].adapter, scale: scale)
            }
        }
    }

    /// Largest workspace any entry needs for `rows` rows.
    public func workspaceFloats(rows: Int) -> Int {
        var n = 0
        for list in entries { for e in list { n = max(n, e.adapter.workspaceFloats(rows: rows)) } }
        return n
    }
}
