import LoRAKitCore
import LoRAKitKernels
import LoRAKitFormats
import LoRAKitTokenizer
import LoRAKitTemplates
import LoRAKitModel

/// Training checkpoints: crash-safe folders holding everything needed to resume.
///
/// Layout of an output folder `OUT`:
///
///     OUT/checkpoint-<step>/adapter_config.json        PEFT adapter (LoRAAdapter.save(format: .peft))
///     OUT/checkpoint-<step>/adapter_model.safetensors
///     OUT/checkpoint-<step>/optimizer.safetensors      AdamW state (see AdamWState)
///     OUT/checkpoint-<step>/trainer_state.json         the caller's JSON (see TrainerState)
///     OUT/latest                                       "checkpoint-<step>\n"
///
/// Saving writes everything into `OUT/.checkpoint-<step>.tmp-<pid>` (each file fsynced), fsyncs that
/// folder, renames it to `OUT/checkpoint-<step>`, fsyncs `OUT`, then atomically replaces `OUT/latest`, and
/// finally deletes the oldest checkpoints beyond `keep` (each renamed to a hidden `.checkpoint-<step>.old-<pid>`
/// first, so no partly deleted checkpoint is ever visible). A crash at any point leaves the previous checkpoint
/// complete and reachable: either `latest` still names it, or the loader falls back to it.
///
/// Loading reads `latest`; leftover `.checkpoint-*.tmp-*` / `.checkpoint-*.old-*` folders are deleted; if
/// `latest` is missing or corrupt, or the checkpoint it names is missing or damaged, the newest checkpoint
/// that loads completely is used instead, and the reasons are returned as warnings.
#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// A checkpoint read back from disk.
public struct LoadedCheckpoint: @unchecked Sendable {
    /// The checkpoint folder.
    public let path: String
    public let step: Int
    /// The LoRA adapter, with its B rows in the order it had when saved (the trainer's order), so that the
    /// optimizer moments line up with its tensors; nil in a checkpoint of a plugin adapter.
    public let adapter: LoRAAdapter!
    /// The adapter of a plugin type (IA³, DoRA, …) when the checkpoint's adapter_config.json names one
    /// (rows in the model's order, as the trainer keeps them); nil for LoRA.
    public let pluginAdapter: PluginAdapter?
    public let optimizer: AdamWState
    /// The projector trained with the adapter (`projector.gguf`), if the checkpoint has one.
    public let projector: Projector?
    /// The `trainer_state.json` object.
    public let trainerState: JSONValue
    /// Why the checkpoint named by `latest` was not used, or what was cleaned up (empty when all was well).
    public let warnings: [String]
}

/// Save and find training checkpoints (layout and crash safety in this file's header).
public enum Checkpoint {
    public static let latestFile = "latest"
    static let rowLayoutKey = "lorakit.adapter_row_layout"

    /// `checkpoint-<step>`.
    public static func directoryName(step: Int) -> String { "checkpoint-\(step)" }

    /// The step of a folder named `checkpoint-<step>` (decimal digits only), else nil.
    public static func step(ofDirectoryName name: String) -> Int? {
        guard name.hasPrefix("checkpoint-") else { return nil }
        let digits = name.dropFirst("checkpoint-".count)
        guard !digits.isEmpty, digits.count <= 18, digits.allSatisfy({ $0 >= "0" && $0 <= "9" }) else { return nil }
        return Int(digits)
    }

    /// The `checkpoint-<step>` folders in `dir` (complete or not), by ascending step.
    public static func list(dir: String) -> [(step: Int, path: String)] {
        var out: [(step: Int, path: String)] = []
        for name in DirectoryReplace.listDirectory(dir) {
            guard let s = step(ofDirectoryName: name), isDirectory(dir + "/" + name) else { continue }
            out.append((s, dir + "/" + name))
        }
        return out.sorted { $0.step < $1.step }
    }

    /// Write checkpoint `step` into `dir` (created if needed) and point `dir/latest` at it; then delete the
    /// oldest checkpoints with a step ≤ `step` so that `keep` remain (checkpoints with a larger step, left by
    /// an abandoned run, are not touched). An existing `checkpoint-<step>` is replaced.
    /// - Parameters:
    ///   - trainerState: a JSON object, written as `trainer_state.json`. If it has an integer `"step"`, it
    ///     must equal `step`.
    ///   - keep: checkpoints to keep, ≥ 1.
    /// - Returns: the checkpoint folder's path.
    @discardableResult
    public static func save(dir: String, step: Int, adapter: LoRAAdapter, optimizer: AdamW,
                            trainerState: JSONValue, keep: Int = 2, projector: Projector? = nil) throws(LKError) -> String {
        try save(dir: dir, step: step, rowLayout: adapter.rowLayout, optimizer: optimizer, trainerState: trainerState,
                 keep: keep, projector: projector) { (sub: String) throws(LKError) in try adapter.save(path: sub, format: .peft) }
    }

    /// The same for an adapter of a plugin type: its PEFT folder (PluginAdapter.save) is the checkpoint's
    /// adapter; the optimizer state needs no row-layout key (the adapter loads back in the model's order).
    @discardableResult
    public static func save(dir: String, step: Int, plugin: PluginAdapter, optimizer: AdamW,
                            trainerState: JSONValue, keep: Int = 2, projector: Projector? = nil) throws(LKError) -> String {
        try save(dir: dir, step: step, rowLayout: nil, optimizer: optimizer, trainerState: trainerState,
                 keep: keep, projector: projector) { (sub: String) throws(LKError) in try plugin.save(peftDirectory: sub) }
    }

    private static func save(dir: String, step: Int, rowLayout: RoPELayout?, optimizer: AdamW, trainerState: JSONValue,
                             keep: Int, projector: Projector?,
                             writeAdapter: (String) throws(LKError) -> Void) throws(LKError) -> String {
        guard step >= 0 else { throw .invalidArgument("checkpoint step \(step) must be ≥ 0") }
        guard keep >= 1 else { throw .invalidArgument("checkpoints to keep (\(keep)) must be ≥ 1") }
        guard trainerState.object != nil else { throw .invalidArgument("trainer state must be a JSON object") }
        if let s = trainerState["step"], s.int != step {
            throw .invalidArgument("trainer state step \(JSON.serialize(s)) does not match the checkpoint step \(step)")
        }
        let out = trimSlashes(dir)
        try makeDirectories(out)
        let name = directoryName(step: step)
        let final = out + "/" + name
        let tmp = out + "/.\(name).tmp-\(getpid())"
        removeTree(tmp)
        guard mkdir(tmp, 0o755) == 0 else { throw .io("\(tmp): cannot create a folder: \(String(cString: strerror(errno)))") }
        var placed = false
        defer { if !placed { removeTree(tmp) } }

        // The adapter goes through a sub-folder (LoRAAdapter.save replaces a whole folder), then its two
        // files are moved up.
        let sub = tmp + "/adapter"
        try writeAdapter(sub)
        for f in DirectoryReplace.listDirectory(sub) {
            guard rename(sub + "/" + f, tmp + "/" + f) == 0 else {
                throw .io("\(tmp)/\(f): rename failed: \(String(cString: strerror(errno)))")
            }
        }
        guard rmdir(sub) == 0 else { throw .io("\(sub): cannot remove: \(String(cString: strerror(errno)))") }
        try projector?.save(to: tmp + "/projector.gguf")
        try optimizer.saveState(to: tmp + "/optimizer.safetensors",
                                extraMetadata: rowLayout.map { [rowLayoutKey: layoutName($0)] } ?? [:])
        try AtomicFile.write(path: tmp + "/trainer_state.json",
                             bytes: Array((JSON.serialize(trainerState, pretty: true) + "\n").utf8))
        try fsyncDirectory(tmp)

        if isDirectory(final) {
            let old = out + "/.\(name).old-\(getpid())"
            removeTree(old)
            guard rename(final, old) == 0 else { throw .io("\(final): cannot move the old checkpoint aside: \(String(cString: strerror(errno)))") }
            guard rename(tmp, final) == 0 else {
                let e = errno
                rename(old, final)
                throw .io("\(final): rename failed: \(String(cString: strerror(e)))")
            }
            removeTree(old)
        } else {
            guard rename(tmp, final) == 0 else { throw .io("\(final): rename failed: \(String(cString: strerror(errno)))") }
        }
        placed = true
        try fsyncDirectory(out)
        try AtomicFile.write(path: out + "/" + latestFile, bytes: Array((name + "\n").utf8))

        let older = list(dir: out).filter { $0.step <= step }.sorted { $0.step > $1.step }
        for c in older.dropFirst(keep) {
            // Hidden first (one rename), then deleted: a crash while deleting must not leave a partial
            // checkpoint-N in sight (found by the kill test); loadLatest removes the hidden leftover.
            let hidden = out + "/.\(directoryName(step: c.step)).old-\(getpid())"
            removeTree(hidden)
            removeTree(rename(c.path, hidden) == 0 ? hidden : c.path)
        }
        return final
    }

    /// Load one checkpoint folder for `model` (every file is read and checked).
    public static func load(path: String, model: LlamaModel) throws(LKError) -> LoadedCheckpoint {
        let p = trimSlashes(path)
        let base = p.split(separator: "/").last.map(String.init) ?? p
        guard let step = step(ofDirectoryName: base) else {
            throw .invalidArgument("\(p): not a checkpoint folder (expected a name like checkpoint-100)")
        }
        guard isDirectory(p) else { throw .io("\(p): checkpoint folder is missing") }
        let state = try JSON.parse(file: p + "/trainer_state.json")
        guard state.object != nil else { throw .format("\(p)/trainer_state.json: not a JSON object") }
        if let s = state["step"], s.int != step {
            throw .format("\(p)/trainer_state.json: step \(JSON.serialize(s)) does not match the folder's step \(step)")
        }
        let opt = try AdamWState(path: p + "/optimizer.safetensors")
        let projector = access(p + "/projector.gguf", F_OK) == 0 ? try Projector.load(path: p + "/projector.gguf", model: model) : nil
        if PluginAdapter.isPluginFolder(p) {
            let plugin = try PluginAdapter.load(peftDirectory: p, model: model, name: base)
            return LoadedCheckpoint(path: p, step: step, adapter: nil, pluginAdapter: plugin, optimizer: opt,
                                    projector: projector, trainerState: state, warnings: [])
        }
        var adapter = try LoRAAdapter.load(path: p, model: model, name: base)
        if let l = opt.metadata[rowLayoutKey] {
            guard let layout = layout(named: l) else {
                throw .format("\(p)/optimizer.safetensors: unknown \(rowLayoutKey) \"\(l)\"")
            }
            if layout != adapter.rowLayout {
                let mods = try adapter.modules(for: layout)
                adapter = try LoRAAdapter(name: base, config: adapter.config, modelConfig: adapter.modelConfig,
                                          rowLayout: layout, modules: Array(mods.values))
            }
        }
        return LoadedCheckpoint(path: p, step: step, adapter: adapter, pluginAdapter: nil, optimizer: opt,
                                projector: projector, trainerState: state, warnings: [])
    }

    /// The checkpoint to resume from in `dir`, or nil when `dir` holds none (a fresh start).
    /// - Throws: when checkpoints exist but none loads (the message lists why each failed), or when
    ///   `latest` names a checkpoint and no checkpoint folder is left.
    public static func loadLatest(dir: String, model: LlamaModel) throws(LKError) -> LoadedCheckpoint? {
        let out = trimSlashes(dir)
        guard isDirectory(out) else { return nil }
        var warnings: [String] = []
        for name in DirectoryReplace.listDirectory(out) where name.hasPrefix(".checkpoint-") &&
            (name.contains(".tmp-") || name.contains(".old-")) {
            removeTree(out + "/" + name)
            warnings.append("\(out)/\(name): removed an incomplete checkpoint left by an interrupted save")
        }
        let all = list(dir: out)
        var first: String? = nil
        let latestPath = out + "/" + latestFile
        if access(latestPath, F_OK) == 0 {
            do {
                let text = String(decoding: try readFile(latestPath), as: UTF8.self)
                let name = text.hasSuffix("\n") ? String(text.dropLast()) : text
                if step(ofDirectoryName: name) != nil {
                    first = out + "/" + name
                } else {
                    warnings.append("\(latestPath): does not name a checkpoint folder (found \"\(text.prefix(60))\")")
                }
            } catch {
                warnings.append("\(latestPath): \(error.message)")
            }
        } else if !all.isEmpty {
            warnings.append("\(latestPath): missing")
        }
        guard !all.isEmpty else {
            if let f = first { throw .io("\(latestPath) names \(f), which is missing, and \(out) holds no other checkpoint") }
            return nil
        }
        var candidates: [String] = []
        if let f = first { candidates.append(f) }
        for c in all.reversed() where c.path != first { candidates.append(c.path) }
        var failures: [String] = []
        for c in candidates {
            do {
                let ck = try load(path: c, model: model)
                if c != first, let f = first { warnings.append("\(f) could not be used; resuming from \(c) instead") }
                else if c != first { warnings.append("resuming from the newest complete checkpoint, \(c)") }
                return LoadedCheckpoint(path: ck.path, step: ck.step, adapter: ck.adapter, pluginAdapter: ck.pluginAdapter,
                                        optimizer: ck.optimizer, projector: ck.projector,
                                        trainerState: ck.trainerState, warnings: warnings)
            } catch {
                failures.append(error.message)
                warnings.append("\(c): unusable: \(error.message)")
            }
        }
        throw .format("\(out): no usable checkpoint:\n  " + failures.joined(separator: "\n  "))
    }

    // MARK: File helpers

    static func layoutName(_ l: RoPELayout) -> String { l == .neox ? "neox" : "interleaved" }
    static func layout(named s: String) -> RoPELayout? {
        switch s {
        case "neox": return .neox
        case "interleaved": return .interleaved
        default: return nil
        }
    }

    static func trimSlashes(_ p: String) -> String {
        var s = p
        while s.count > 1 && s.hasSuffix("/") { s.removeLast() }
        return s
    }

    static func isDirectory(_ path: String) -> Bool {
        var st = stat()
        return stat(path, &st) == 0 && (st.st_mode & S_IFMT) == S_IFDIR
    }

    /// `mkdir -p`.
    static func makeDirectories(_ path: String) throws(LKError) {
        if isDirectory(path) { return }
        let parent = AtomicFile.parentDirectory(path)
        if parent != path && !isDirectory(parent) { try makeDirectories(parent) }
        guard mkdir(path, 0o755) == 0 || (errno == EEXIST && isDirectory(path)) else {
            throw .io("\(path): cannot create the folder: \(String(cString: strerror(errno)))")
        }
    }

    static func fsyncDirectory(_ path: String) throws(LKError) {
        let fd = open(path, O_RDONLY)
        guard fd >= 0 else { throw .io("\(path): cannot open the folder: \(String(cString: strerror(errno)))") }
        defer { close(fd) }
        guard fsync(fd) == 0 else { throw .io("\(path): fsync failed: \(String(cString: strerror(errno)))") }
    }

    /// Delete a file or a folder with everything in it (symbolic links are removed, not followed).
    static func removeTree(_ path: String) {
        var st = stat()
        guard lstat(path, &st) == 0 else { return }
        if (st.st_mode & S_IFMT) == S_IFDIR {
            for name in DirectoryReplace.listDirectory(path) { removeTree(path + "/" + name) }
            rmdir(path)
        } else {
            unlink(path)
        }
    }
}

// MARK: - Trainer state

/// A suggested shape for `trainer_state.json`: what a trainer needs to resume exactly.
///
///     {"step": 120, "data": {TrainDataIteratorState}, "rng": "1234567890123456789",
///      "options": {...}, "losses": [2.31, 2.28, ...], ...extra keys}
public struct TrainerState: Sendable, Equatable {
    /// Optimizer updates done.
    public var step: Int
    public var data: TrainDataIteratorState
    /// The trainer's random generator state (e.g. `SplitMix64.state`), written as a decimal string.
    public var rng: UInt64
    /// The training options, as the trainer writes them.
    public var options: JSONValue
    /// Recent losses (for logs and plots).
    public var losses: [Double]
    /// Any other members, kept in order.
    public var extra: [(String, JSONValue)]

    public init(step: Int, data: TrainDataIteratorState, rng: UInt64, options: JSONValue = .object([]),
                losses: [Double] = [], extra: [(String, JSONValue)] = []) {
        self.step = step
        self.data = data
        self.rng = rng
        self.options = options
        self.losses = losses
        self.extra = extra
    }

    public static func == (a: TrainerState, b: TrainerState) -> Bool {
        a.json == b.json
    }

    public var json: JSONValue {
        .object([("step", .number(Double(step))), ("data", data.json), ("rng", .string(String(rng))),
                 ("options", options), ("losses", .array(losses.map { .number($0) }))] + extra)
    }

    public init(json: JSONValue) throws(LKError) {
        guard let members = json.object else { throw .format("trainer state: not a JSON object") }
        guard let s = json["step"]?.int, s >= 0 else { throw .format("trainer state: missing or invalid \"step\"") }
        guard let d = json["data"] else { throw .format("trainer state: missing \"data\"") }
        guard let rs = json["rng"]?.string, let r = UInt64(rs) else {
            throw .format("trainer state: \"rng\" must be a decimal string of a 64-bit unsigned integer")
        }
        var losses: [Double] = []
        if let l = json["losses"] {
            guard let arr = l.array else { throw .format("trainer state: \"losses\" must be an array") }
            for v in arr {
                // Non-finite losses are written as null by the JSON writer.
                if v.isNull { losses.append(.nan); continue }
                guard let x = v.double else { throw .format("trainer state: \"losses\" must hold numbers") }
                losses.append(x)
            }
        }
        let known: Set<String> = ["step", "data", "rng", "options", "losses"]
        self.init(step: s, data: try TrainDataIteratorState(json: d), rng: r, options: json["options"] ?? .object([]),
                  losses: losses, extra: members.filter { !known.contains($0.0) })
    }
}
