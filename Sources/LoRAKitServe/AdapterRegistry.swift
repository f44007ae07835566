import LoRAKit

/// The served adapters by name (vLLM's convention: a request's `"model"` names the adapter), with the
/// number of requests using each, so that unloading waits for them.
public final class AdapterRegistry: Sendable {
    public struct Entry: Sendable {
        public let name: String
        public let path: String
        public let adapter: AnyAdapter
        public let created: Int
        var inUse = 0
        var unloading = false
    }
    private struct State {
        var entries: [String: Entry] = [:]
        var order: [String] = []
        var reserved: Set<String> = []   // names being loaded
    }
    private let state = Locked(State())
    public let baseName: String
    public let model: LlamaModel

    public init(model: LlamaModel, baseName: String) {
        self.model = model
        self.baseName = baseName
    }

    /// Loads `path` (PEFT folder — LoRA, or a plugin type's such as DoRA or IA³ — or GGUF LoRA) as `name`. Errors name the field: `lora_name` (empty, the
    /// base model's name, or already loaded) or `lora_path` (the loader's message).
    public func load(name: String, path: String) throws(ServeError) {
        guard !name.isEmpty else { throw .badRequest("lora_name is empty", param: "lora_name") }
        guard name != baseName else {
            throw .badRequest("lora_name \"\(name)\" is the base model's name", param: "lora_name")
        }
        let free = state.withLock { s -> Bool in
            if s.entries[name] != nil || s.reserved.contains(name) { return false }
            s.reserved.insert(name)
            return true
        }
        guard free else {
            throw .badRequest("an adapter named \"\(name)\" is already loaded (unload it first)", param: "lora_name")
        }
        let adapter: AnyAdapter
        do throws(LKError) {
            guard !path.isEmpty else { throw LKError.invalidArgument("lora_path is empty") }
            if PluginAdapter.isPluginFolder(path) {
                adapter = .plugin(try PluginAdapter.load(peftDirectory: path, model: model, name: name))
            } else {
                adapter = .lora(try LoRAAdapter.load(path: path, model: model, name: name))
            }
            try adapter.check(against: model)
        } catch {
            state.withLock { _ = $0.reserved.remove(name) }
            throw .badRequest("cannot load lora_path: \(error.message)", param: "lora_path")
        }
        let created = Int(wallClockSeconds())
        state.withLock { s in
            s.reserved.remove(name)
            s.entries[name] = Entry(name: name, path: path, adapter: adapter, created: created)
            s.order.append(name)
        }
    }

    /// The adapter named `name`, counted as in use until `release(name)`; nil if there is none or it is
    /// being unloaded.
    public func acquire(_ name: String) -> AnyAdapter? {
        state.withLock { s -> AnyAdapter? in
            guard var e = s.entries[name], !e.unloading else { return nil }
            e.inUse += 1
            s.entries[name] = e
            return e.adapter
        }
    }

    public func release(_ name: String) {
        state.withLock { s in
            guard var e = s.entries[name] else { return }
            e.inUse -= 1
            s.entries[name] = e
        }
    }

    /// Marks `name` as unloading (new requests no longer find it); false if there is no such adapter.
    public func beginUnload(_ name: String) -> Bool {
        state.withLock { s -> Bool in
            guard var e = s.entries[name], !e.unloading else { return false }
            e.unloading = true
            s.entries[name] = e
            return true
        }
    }

    /// Requests still using `name`.
    public func users(_ name: String) -> Int { state.withLock { $0.entries[name]?.inUse ?? 0 } }

    /// Removes `name` (after `beginUnload` and once `users` is 0).
    public func remove(_ name: String) {
        state.withLock { s in
            s.entries[name] = nil
            s.order.removeAll { $0 == name }
        }
    }

    /// Served adapters, in load order (those being unloaded excluded).
    public func list() -> [Entry] {
        state.withLock { s in s.order.compactMap { s.entries[$0] }.filter { !$0.unloading } }
    }
}

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// Seconds since the Unix epoch (OpenAI's `created`).
func wallClockSeconds() -> Double {
    var ts = timespec()
    clock_gettime(CLOCK_REALTIME, &ts)
    return Double(ts.tv_sec) + Double(ts.tv_nsec) * 1e-9
}
