import LoRAKit

/// What the server's scheduler needs from a multi-sequence inference engine: sequences that are added,
/// advanced together one step at a time (each with its own adapters and its own KV positions), and removed.
/// The shape is `BatchContext`'s (LoRAKitModel), which conforms below; `LlamaContextEngine` is a simple
/// implementation over one single-sequence `LlamaContext` per slot. Not thread-safe: one caller at a time
/// (the scheduler's thread).
public protocol SequenceBatchEngine: AnyObject {
    /// A new, empty sequence (no adapters, position 0); its id. Fails when every slot is taken.
    func addSequence() throws(LKError) -> Int
    /// Frees the sequence's slot (its cache and adapters).
    func removeSequence(_ id: Int) throws(LKError)
    /// A new sequence holding a copy of `id`'s cache and adapters.
    func fork(_ id: Int) throws(LKError) -> Int
    /// Drops cached positions of `id` from `position` on.
    func truncate(_ id: Int, to position: Int) throws(LKError)
    /// Positions in `id`'s cache.
    func position(of id: Int) throws(LKError) -> Int
    /// Replaces the adapters of one sequence (others are untouched); [] = the base model.
    func setAdapters(_ adapters: [(adapter: AnyAdapter, scale: Float)], for id: Int) throws(LKError)
    /// Appends each input's tokens to its sequence and evaluates them all as one step; the logits [V] of
    /// each input's last token, in input order.
    func step(_ inputs: [(sequence: Int, tokens: [Int32])]) throws(LKError) -> [[Float]]
}

/// `SequenceBatchEngine` over N independent `LlamaContext`s (one per slot, adapters attached to it).
/// Each step evaluates the sequences one after the other, so every step reads the base weights once per
/// sequence: correct and exact (each sequence's logits are those of a context of its own), but without
/// the weight sharing of a batch context.
public final class LlamaContextEngine: SequenceBatchEngine {
    public let model: LlamaModel
    public let maxPositions: Int
    private let contexts: [LlamaContext]
    private var used: [Bool]
    /// The tokens in each slot's cache (to re-evaluate on `fork`).
    private var history: [[Int32]]

    public init(model: LlamaModel, maxSequences: Int, maxPositions: Int? = nil, threads: Int? = nil,
                kvType: KVCacheType = .f32) throws(LKError) {
        guard maxSequences >= 1, maxSequences <= 4096 else {
            throw .invalidArgument("maxSequences \(maxSequences) must be in 1...4096")
        }
        var cs: [LlamaContext] = []
        for _ in 0..<maxSequences { cs.append(try LlamaContext(model: model, maxPositions: maxPositions, threads: threads, kvType: kvType)) }
        self.model = model
        self.contexts = cs
        self.maxPositions = cs[0].maxPositions
        self.used = [Bool](repeating: false, count: maxSequences)
        self.history = [[Int32]](repeating: [], count: maxSequences)
    }

    private func slot(_ id: Int, _ what: String) throws(LKError) -> LlamaContext {
        guard id >= 0, id < contexts.count, used[id] else {
            throw .invalidArgument("\(what): sequence \(id) does not exist")
        }
        return contexts[id]
    }

    public func addSequence() throws(LKError) -> Int {
        guard let i = used.firstIndex(of: false) else {
            throw .invalidArgument("addSequence: all \(contexts.count) sequences are in use")
        }
        used[i] = true
        contexts[i].reset()
        contexts[i].detachAll()
        history[i] = []
        return i
    }

    public func removeSequence(_ id: Int) throws(LKError) {
        let c = try slot(id, "removeSequence")
        c.detachAll()
        c.reset()
        used[id] = false
        history[id] = []
    }

    public func fork(_ id: Int) throws(LKError) -> Int {
        let src = try slot(id, "fork")
        let n = try addSequence()
        do throws(LKError) {
            for (a, s) in src.attachedAdapters { try contexts[n].attach(a, scale: s) }
            if !history[id].isEmpty { _ = try contexts[n].evaluate(.tokens(history[id]), logits: .none) }
            history[n] = history[id]
        } catch {
            try? removeSequence(n)
            throw error
        }
        return n
    }

    public func truncate(_ id: Int, to position: Int) throws(LKError) {
        try slot(id, "truncate").truncate(to: position)
        history[id].removeLast(history[id].count - position)
    }

    public func position(of id: Int) throws(LKError) -> Int { try slot(id, "position").position }

    public func setAdapters(_ adapters: [(adapter: AnyAdapter, scale: Float)], for id: Int) throws(LKError) {
        let c = try slot(id, "setAdapters")
        let before = c.attachedAdapters, beforePlugins = c.attachedPluginAdapters
        func attach(_ list: [(adapter: AnyAdapter, scale: Float)]) throws(LKError) {
            c.detachAll()
            c.detachAllPlugins()
            for (a, s) in list { try c.attach(a, scale: s) }
        }
        do throws(LKError) {
            try attach(adapters)
        } catch {
            try? attach(before.map { (.lora($0.adapter), $0.scale) } + beforePlugins.map { (.plugin($0.adapter), $0.scale) })
            throw error
        }
    }

    public func step(_ inputs: [(sequence: Int, tokens: [Int32])]) throws(LKError) -> [[Float]] {
        var seen = Set<Int>()
        for (i, input) in inputs.enumerated() {
            _ = try slot(input.sequence, "step: inputs[\(i)]")
            guard seen.insert(input.sequence).inserted else {
                throw .invalidArgument("step: inputs[\(i)]: sequence \(input.sequence) appears twice")
            }
            guard !input.tokens.isEmpty else { throw .invalidArgument("step: inputs[\(i)]: no tokens") }
        }
        var out: [[Float]] = []
        out.reserveCapacity(inputs.count)
        for input in inputs {
            out.append(try contexts[input.sequence].evaluate(.tokens(input.tokens), logits: .last))
            history[input.sequence] += input.tokens
        }
        return out
    }
}

/// The batch context (LoRAKitModel) is the server's default engine: one step runs every running
/// sequence's rows through each base weight once, LoRA per group of rows sharing an adapter set.
extension BatchContext: SequenceBatchEngine {}
