import Testing
@testable import LoRAKitCore
@testable import LoRAKitKernels
@testable import LoRAKitFormats
@testable import LoRAKitTokenizer
@testable import LoRAKitTemplates
@testable import LoRAKitModel
@testable import LoRAKitTraining
#if canImport(Glibc)
import Glibc
#endif

/// PEFT and GGUF LoRA file formats against the fixtures of scripts/gen_lora_fixtures.py
/// (Fixtures/lora/README.md).
@Suite struct LoRAFileTests {
    static let dir = fixturePath("lora/")
    static let reference: JSONValue = try! JSON.parse(file: fixturePath("lora/reference.json"))
    static let config: LlamaConfig = try! LlamaModel.hfConfig(
        JSON.parse(file: fixturePath("model/tiny-llama-hf/config.json")), source: "tiny-llama-hf").0
    static let adapters = ["r4_all", "rslora_qv", "patterns_all"]

    // MARK: helpers

    /// Message of the LKError `body` throws (nil if it does not throw).
    func errorMessage(_ body: () throws -> Void) -> String? {
        do { try body() } catch let e as LKError { return e.message } catch { return "\(error)" }
        return nil
    }

    /// ΔW = s·B·A, [OUT, IN] row-major, in Double.
    func delta(_ e: LoRATensors.Entry, scaling s: Float) -> [Double] {
        let r = e.rank, o = e.b.shape[0], i = e.a.shape[1]
        let a = e.a.toFloats(), b = e.b.toFloats()
        var d = [Double](repeating: 0, count: o * i)
        for row in 0..<o {
            for k in 0..<r {
                let bk = Double(b[row * r + k]) * Double(s)
                for c in 0..<i { d[row * i + c] += bk * Double(a[k * i + c]) }
            }
        }
        return d
    }

    func maxRelDiff(_ x: [Double], _ y: [Double]) -> Double {
        let scale = max(x.map(abs).max() ?? 0, 1e-30)
        return zip(x, y).map { abs($0 - $1) }.max()! / scale
    }

    /// A scratch PEFT folder: the fixture's config edited by `edit`, tensors from `tensors` (default:
    /// the fixture's, f32).
    func scratchPEFT(_ name: String, from fixture: String = "r4_all",
                     edit: (inout [(String, JSONValue)]) -> Void = { _ in },
                     tensors: ((inout [(String, Tensor)]) throws -> Void)? = nil) throws -> String {
        let path = temporaryPath("lora-\(name)")
        DirectoryReplace.removeFlat(path)
        mkdir(path, 0o755)
        let src = LoRAFileTests.dir + fixture
        var cfg = try JSON.parse(file: src + "/adapter_config.json").object!
        edit(&cfg)
        writeBytes(path + "/adapter_config.json", Array(JSON.serialize(.object(cfg), pretty: true).utf8))
        let f = try SafetensorsFile(path: src + "/adapter_model.safetensors")
        var list: [(String, Tensor)] = []
        for n in f.tensorNames { list.append((n, try Tensor(try f.tensor(n).toFloats(), shape: f.info(n)!.shape))) }
        try tensors?(&list)
        var w = SafetensorsWriter()
        for (n, t) in list { try w.add(n, t) }
        try w.write(to: path + "/adapter_model.safetensors")
        return path
    }

    func sameTensor(_ x: Tensor, _ y: Tensor) -> Bool { x.shape == y.shape && x.toFloats() == y.toFloats() }

    // MARK: PEFT read

    @Test func readsPEFTFixtures() throws {
        let cfg = LoRAFileTests.config
        for name in LoRAFileTests.adapters {
            let ref = LoRAFileTests.reference["adapters"]![name]!
            let t = try LoRATensors(peftDirectory: LoRAFileTests.dir + name)
            try t.check(cfg)
            #expect(t.rowLayout == .neox)
            #expect(t.useRSLoRA == (name == "rslora_qv"))
            #expect(t.baseModel == "tiny-llama-hf")
            #expect(t.dropout == 0)
            #expect(t.targetModules == ref["target_modules_saved"]!.array!.map { $0.string! })
            let mods = ref["modules"]!.object!
            #expect(t.entries.count == mods.count)
            for (full, m) in mods {
                let e = try #require(t.entries.first { $0.hfFullName == full }, "\(name): \(full) missing")
                #expect(e.rank == m["rank"]!.int!, "\(name) \(full) rank")
                #expect(Double(e.alpha) == m["alpha"]!.double!, "\(name) \(full) alpha")
                #expect(abs(Double(t.scaling(e)) - m["scaling"]!.double!) < 1e-6, "\(name) \(full) scaling \(t.scaling(e))")
                let (o, i) = e.module.shape(cfg)
                #expect(e.a.shape == [e.rank, i] && e.b.shape == [o, e.rank])
            }
            // Sorted by (layer, module).
            let keys = t.entries.map { $0.layer * 7 + $0.module.rawValue }
            #expect(keys == keys.sorted())
        }
        // Spot checks of the pattern semantics (first matching key in file order, regex keys).
        let p = try LoRATensors(peftDirectory: LoRAFileTests.dir + "patterns_all")
        #expect(p.entry(layer: 1, module: .q)!.alpha == 20 && p.entry(layer: 0, module: .q)!.alpha == 12)
        #expect(p.entry(layer: 0, module: .v)!.rank == 6 && p.entry(layer: 1, module: .v)!.rank == 2)
        #expect(p.entry(layer: 0, module: .gate)!.alpha == 3 && p.entry(layer: 1, module: .down)!.rank == 6)
        // The values are the file's.
        let f = try SafetensorsFile(path: LoRAFileTests.dir + "r4_all/adapter_model.safetensors")
        let t = try LoRATensors(peftDirectory: LoRAFileTests.dir + "r4_all")
        #expect(t.entries.count == 14)
        for e in t.entries {
            #expect(sameTensor(e.a, try f.tensor("base_model.model.\(e.hfFullName).lora_A.weight")))
            #expect(sameTensor(e.b, try f.tensor("base_model.model.\(e.hfFullName).lora_B.weight")))
        }
    }

    @Test func readsF16AndBF16AndRegexTargets() throws {
        for dt in [DType.f16, .bf16] {
            let path = try scratchPEFT("half-\(dt)", edit: { setKey(&$0, "target_modules", .string(#".*\.(q|k|v|o|gate|up|down)_proj$"#)) }) { list in
                for k in list.indices {
                    let v = list[k].1.toFloats()
                    let h = try Tensor(zeros: list[k].1.shape, dtype: dt)
                    let p = h.rawPointer.assumingMemoryBound(to: UInt16.self)
                    for i in v.indices { p[i] = dt == .f16 ? floatToHalf(v[i]) : floatToBF16(v[i]) }
                    list[k].1 = h
                }
            }
            defer { DirectoryReplace.removeFlat(path) }
            let t = try LoRATensors(peftDirectory: path)
            let ref = try LoRATensors(peftDirectory: LoRAFileTests.dir + "r4_all")
            #expect(t.targetModules == [#".*\.(q|k|v|o|gate|up|down)_proj$"#])
            for (x, y) in zip(t.entries, ref.entries) {
                #expect(x.a.dtype == .f32)
                let want = y.b.toFloats().map { dt == .f16 ? halfToFloat(floatToHalf($0)) : bf16ToFloat(floatToBF16($0)) }
                #expect(x.b.toFloats() == want)
            }
        }
    }

    // MARK: PEFT write

    @Test func peftWriteReadRoundTrip() throws {
        let cfg = LoRAFileTests.config
        for name in LoRAFileTests.adapters {
            let t = try LoRATensors(peftDirectory: LoRAFileTests.dir + name)
            let out = temporaryPath("lora-rt-\(name)")
            defer { DirectoryReplace.removeFlat(out) }
            try t.writePEFT(directory: out, config: cfg)
            let back = try LoRATensors(peftDirectory: out)
            #expect(back.useRSLoRA == t.useRSLoRA && back.rowLayout == .neox && back.baseModel == t.baseModel)
            #expect(back.dropout == t.dropout)
            #expect(back.entries.count == t.entries.count)
            for (x, y) in zip(back.entries, t.entries) {
                #expect(x.layer == y.layer && x.module == y.module && x.alpha == y.alpha && x.rank == y.rank)
                #expect(sameTensor(x.a, y.a) && sameTensor(x.b, y.b))
                #expect(back.scaling(x) == t.scaling(y))
            }
            let j = try JSON.parse(file: out + "/adapter_config.json")
            #expect(j["peft_type"]!.string == "LORA" && j["task_type"]!.string == "CAUSAL_LM")
            if name == "patterns_all" {
                // Most common rank 2 / alpha 4; the rest as full-name patterns.
                #expect(j["r"]!.int == 2 && j["lora_alpha"]!.double == 4)
                #expect(j["rank_pattern"]!["model.layers.0.self_attn.q_proj"]!.int == 6)
                #expect(j["alpha_pattern"]!["model.layers.1.self_attn.q_proj"]!.double == 20)
                #expect(j["alpha_pattern"]!["model.layers.0.self_attn.o_proj"] == nil)
                #expect(j["target_modules"]!.array!.count == 7)
            }
            if name == "rslora_qv" {
                #expect(j["use_rslora"]!.bool == true && j["target_modules"]! == .array([.string("q_proj"), .string("v_proj")]))
            }
        }
    }

    @Test func peftWriteUnpermutesInterleavedAndReplacesFolder() throws {
        let cfg = LoRAFileTests.config
        let t = try LoRATensors(peftDirectory: LoRAFileTests.dir + "r4_all")
        let inter = try t.withRowLayout(.interleaved, config: cfg)
        #expect(!sameTensor(inter.entry(layer: 0, module: .q)!.b, t.entry(layer: 0, module: .q)!.b))
        #expect(sameTensor(inter.entry(layer: 0, module: .v)!.b, t.entry(layer: 0, module: .v)!.b))
        // GGUF row 2j = HF row j, 2j+1 = HF row j + D/2 (D = 16), per head.
        let hb = t.entry(layer: 1, module: .k)!.b.toFloats(), ib = inter.entry(layer: 1, module: .k)!.b.toFloats()
        let r = 4
        for h in 0..<2 { for j in 0..<8 { for k in 0..<r {
            #expect(ib[(h * 16 + 2 * j) * r + k] == hb[(h * 16 + j) * r + k])
            #expect(ib[(h * 16 + 2 * j + 1) * r + k] == hb[(h * 16 + j + 8) * r + k])
        } } }
        let out = temporaryPath("lora-replace")
        defer { DirectoryReplace.removeFlat(out) }
        try t.writePEFT(directory: out, config: cfg)
        writeBytes(out + "/README.md", Array("model card".utf8))
        try inter.writePEFT(directory: out, config: cfg)  // replaces the folder
        let back = try LoRATensors(peftDirectory: out)
        for (x, y) in zip(back.entries, t.entries) { #expect(sameTensor(x.b, y.b)) }
        #expect(readBytes(out + "/README.md") == Array("model card".utf8))
        #expect(Set(DirectoryReplace.listDirectory(out)) == ["adapter_config.json", "adapter_model.safetensors", "README.md"])
        let parent = AtomicFile.parentDirectory(out)
        #expect(!DirectoryReplace.listDirectory(parent).contains { $0.hasPrefix(".lorakit-new-") || $0.hasPrefix(".lorakit-old-") })
    }

    /// With LORAKIT_LORA_EXPORT=<dir>, writes PEFT folders for scripts/check_peft_export.py (which loads
    /// them with PEFT and compares the logits with reference.json): each fixture re-written, and each
    /// fixture after a trip through a GGUF file (interleaved rows, folded scalings).
    @Test func exportForPEFTCheck() throws {
        guard let d = getenv("LORAKIT_LORA_EXPORT") else { return }
        let out = String(cString: d)
        mkdir(out, 0o755)
        let cfg = LoRAFileTests.config
        for name in LoRAFileTests.adapters {
            let t = try LoRATensors(peftDirectory: LoRAFileTests.dir + name)
            try t.writePEFT(directory: out + "/" + name, config: cfg)
            let g = out + "/\(name).gguf"
            try t.writeGGUF(path: g, config: cfg)
            try LoRATensors(ggufFile: g).writePEFT(directory: out + "/\(name)_via_gguf", config: cfg)
        }
        try LoRATensors(ggufFile: LoRAFileTests.dir + "lora_a.gguf").writePEFT(directory: out + "/r4_all_from_python_gguf", config: cfg)
    }

    // MARK: GGUF

    @Test func readsPythonWrittenGGUF() throws {
        let peft = try LoRATensors(peftDirectory: LoRAFileTests.dir + "r4_all")
        for (file, tolA, tolB) in [("lora_a.gguf", Float(0), Float(0)), ("lora_a_q8_0.gguf", Float(0.004), Float(0.0005))] {
            let g = try LoRATensors(ggufFile: LoRAFileTests.dir + file)
            try g.check(LoRAFileTests.config)
            #expect(g.rowLayout == .interleaved && !g.useRSLoRA)
            #expect(g.entries.count == 14 && g.entries.allSatisfy { $0.alpha == 8 && $0.rank == 4 })
            #expect(g.targetModules == ["attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down"])
            let n = try g.withRowLayout(.neox, config: LoRAFileTests.config)
            var worstA: Float = 0, worstB: Float = 0
            for (x, y) in zip(n.entries, peft.entries) {
                #expect(x.layer == y.layer && x.module == y.module && g.scaling(x) == peft.scaling(y))
                worstA = max(worstA, zip(x.a.toFloats(), y.a.toFloats()).map { abs($0 - $1) }.max()!)
                worstB = max(worstB, zip(x.b.toFloats(), y.b.toFloats()).map { abs($0 - $1) }.max()!)
            }
            print("\(file): max |A - A_peft| \(worstA), max |B - B_peft| \(worstB) (after un-permuting q/k B rows)")
            #expect(worstA <= tolA && worstB <= tolB)
        }
    }

    @Test func ggufWriteReadRoundTrip() throws {
        let cfg = LoRAFileTests.config
        let t = try LoRATensors(peftDirectory: LoRAFileTests.dir + "r4_all")
        let path = temporaryPath("lora-rt.gguf")
        defer { unlink(path) }
        try t.writeGGUF(path: path, config: cfg)
        let g = try LoRATensors(ggufFile: path)
        #expect(g.rowLayout == .interleaved)
        let f = try GGUFFile(path: path)
        #expect(f.metadata["general.type"]?.string == "adapter" && f.metadata["adapter.type"]?.string == "lora")
        #expect(f.metadata["adapter.lora.alpha"] == .float32(8) && f.metadata["general.architecture"]?.string == "llama")
        #expect(f.tensors.first { $0.name == "blk.0.attn_k.weight.lora_b" }?.shape == [32, 4])  // ne [4, 32]
        // Same tensors as the independent Python writer (F32, B of q/k permuted the same way).
        let py = try GGUFFile(path: LoRAFileTests.dir + "lora_a.gguf")
        #expect(Set(py.tensors.map(\.name)) == Set(f.tensors.map(\.name)))
        for info in py.tensors { #expect(sameTensor(try py.tensor(info.name), try f.tensor(info.name)), "\(info.name)") }
        let n = try g.withRowLayout(.neox, config: cfg)
        for (x, y) in zip(n.entries, t.entries) {
            #expect(x.alpha == y.alpha && sameTensor(x.a, y.a) && sameTensor(x.b, y.b))
        }
        // F16 storage.
        try t.writeGGUF(path: path, config: cfg, dtype: .f16)
        let h = try LoRATensors(ggufFile: path).withRowLayout(.neox, config: cfg)
        for (x, y) in zip(h.entries, t.entries) {
            #expect(x.b.toFloats() == y.b.toFloats().map { halfToFloat(floatToHalf($0)) })
        }
    }

    @Test func ggufFoldingKeepsEffectiveDelta() throws {
        let cfg = LoRAFileTests.config
        for name in ["rslora_qv", "patterns_all"] {
            let t = try LoRATensors(peftDirectory: LoRAFileTests.dir + name)
            let path = temporaryPath("lora-fold-\(name).gguf")
            defer { unlink(path) }
            try t.writeGGUF(path: path, config: cfg)
            let g = try LoRATensors(ggufFile: path)
            #expect(g.entries.allSatisfy { $0.alpha == t.ggufAlpha } && !g.useRSLoRA)
            let n = try g.withRowLayout(.neox, config: cfg)
            var worst = 0.0
            for (x, y) in zip(n.entries, t.entries) {
                #expect(x.layer == y.layer && x.module == y.module && x.rank == y.rank)
                // llama.cpp's scale: alpha_file / rank.
                let dx = delta(x, scaling: x.alpha / Float(x.rank)), dy = delta(y, scaling: t.scaling(y))
                worst = max(worst, maxRelDiff(dy, dx))
            }
            print("\(name): GGUF alpha \(t.ggufAlpha), max relative |ΔW_gguf - ΔW_peft| \(worst)")
            #expect(worst < 1e-6)
        }
    }

    // MARK: corrupt inputs

    @Test func corruptPEFTInputsGiveClearErrors() throws {
        func expectError(_ name: String, _ needles: [String], edit: (inout [(String, JSONValue)]) -> Void = { _ in },
                         tensors: ((inout [(String, Tensor)]) throws -> Void)? = nil,
                         check: Bool = false) throws {
            let path = try scratchPEFT(name, edit: edit, tensors: tensors)
            defer { DirectoryReplace.removeFlat(path) }
            let msg = errorMessage {
                let t = try LoRATensors(peftDirectory: path)
                if check { try t.check(LoRAFileTests.config) }
            }
            #expect(msg != nil, "\(name): no error")
            for n in needles { #expect(msg?.contains(n) == true, "\(name): \(msg ?? "nil") lacks \(n)") }
            print("\(name): \(msg ?? "nil")")
        }
        let q0 = "base_model.model.model.layers.0.self_attn.q_proj"
        try expectError("missing-b", ["layer 1", "mlp.down_proj", "lora_B", "missing"], tensors: { l in
            l.removeAll { $0.0 == "base_model.model.model.layers.1.mlp.down_proj.lora_B.weight" }
        })
        try expectError("rank-mismatch", ["rank mismatch", "layer 0", "self_attn.q_proj", "[3, 64]"], tensors: { l in
            let k = l.firstIndex { $0.0 == "\(q0).lora_A.weight" }!
            l[k].1 = try Tensor([Float](repeating: 0.01, count: 3 * 64), shape: [3, 64])
        })
        try expectError("nan", ["\(q0).lora_B.weight", "not finite", "[5, 2]"], tensors: { l in
            let k = l.firstIndex { $0.0 == "\(q0).lora_B.weight" }!
            l[k].1.f32[5 * 4 + 2] = .nan
        })
        try expectError("inf", ["not finite"], tensors: { l in l[0].1.f32[0] = -.infinity })
        try expectError("wrong-shape", ["layer 0", "self_attn.q_proj", "lora_A", "[4, 48]", "expected [4, 64]"], tensors: { l in
            let k = l.firstIndex { $0.0 == "\(q0).lora_A.weight" }!
            l[k].1 = try Tensor([Float](repeating: 0.01, count: 4 * 48), shape: [4, 48])
        }, check: true)
        try expectError("layer-out-of-range", ["layer 7", "does not exist", "2 layers"], tensors: { l in
            l.append(("base_model.model.model.layers.7.self_attn.v_proj.lora_A.weight", try Tensor([Float](repeating: 0, count: 256), shape: [4, 64])))
            l.append(("base_model.model.model.layers.7.self_attn.v_proj.lora_B.weight", try Tensor([Float](repeating: 0, count: 128), shape: [32, 4])))
        }, check: true)
        try expectError("unknown-key", ["unknown tensor", "lm_head"], tensors: { l in
            l.append(("base_model.model.lm_head.weight", try Tensor([0], shape: [1])))
        })
        try expectError("modules-to-save", ["modules_to_save", "lm_head"], edit: { setKey(&$0, "modules_to_save", .array([.string("lm_head")])) }) { l in
            l.append(("base_model.model.lm_head.modules_to_save.weight", try Tensor([0], shape: [1])))
        }
        try expectError("peft-type", ["peft_type", "IA3", "only LORA"]) { setKey(&$0, "peft_type", .string("IA3")) }
        try expectError("no-peft-type", ["peft_type"]) { setKey(&$0, "peft_type", nil) }
        try expectError("dora", ["use_dora", "DoRA"]) { setKey(&$0, "use_dora", .bool(true)) }
        try expectError("fan-in-fan-out", ["fan_in_fan_out"]) { setKey(&$0, "fan_in_fan_out", .bool(true)) }
        try expectError("bias", ["bias", "all"]) { setKey(&$0, "bias", .string("all")) }
        try expectError("layer-replication", ["layer_replication"]) { setKey(&$0, "layer_replication", .array([.array([.number(0), .number(2)])])) }
        try expectError("layers-pattern", ["layers_pattern"]) { setKey(&$0, "layers_pattern", .string("layers")) }
        try expectError("pissa", ["pissa", "base weights"]) { setKey(&$0, "init_lora_weights", .string("pissa")) }
        try expectError("rank-pattern-mismatch", ["rank 4", "rank 8", "rank_pattern"]) {
            setKey(&$0, "rank_pattern", .object([("k_proj", .number(8))]))
        }
        try expectError("bad-regex", ["alpha_pattern", "(q_proj"]) { setKey(&$0, "alpha_pattern", .object([("(q_proj", .number(8))])) }
        // Missing weights file.
        let empty = temporaryPath("lora-empty")
        mkdir(empty, 0o755)
        defer { DirectoryReplace.removeFlat(empty) }
        writeBytes(empty + "/adapter_config.json", readBytes(LoRAFileTests.dir + "r4_all/adapter_config.json"))
        #expect(errorMessage { _ = try LoRATensors(peftDirectory: empty) }?.contains("adapter_model.safetensors") == true)
    }

    @Test func corruptGGUFInputsGiveClearErrors() throws {
        let t = try LoRATensors(peftDirectory: LoRAFileTests.dir + "r4_all").withRowLayout(.interleaved, config: LoRAFileTests.config)
        let path = temporaryPath("lora-bad.gguf")
        defer { unlink(path) }
        func write(_ edit: (inout GGUFWriter) throws -> Void) throws {
            var w = GGUFWriter()
            w.set("general.architecture", .string("llama"))
            w.set("general.type", .string("adapter"))
            w.set("adapter.type", .string("lora"))
            w.set("adapter.lora.alpha", .float32(8))
            for e in t.entries {
                try w.add(e.ggufBaseName + ".lora_a", e.a)
                try w.add(e.ggufBaseName + ".lora_b", e.b)
            }
            try edit(&w)
            try w.write(to: path)
        }
        func expectError(_ needles: [String], _ edit: (inout GGUFWriter) throws -> Void) throws {
            try write(edit)
            let msg = errorMessage { _ = try LoRATensors(ggufFile: path) }
            for n in needles { #expect(msg?.contains(n) == true, "\(msg ?? "nil") lacks \(n)") }
            print("GGUF: \(msg ?? "nil")")
        }
        try expectError(["general.type"]) { w in w.metadata.removeAll { $0.0 == "general.type" } }
        try expectError(["general.type", "model"]) { w in w.set("general.type", .string("model")) }
        try expectError(["adapter.type", "cvec"]) { w in w.set("adapter.type", .string("cvec")) }
        try expectError(["general.architecture", "gpt2"]) { w in w.set("general.architecture", .string("gpt2")) }
        try expectError(["layer 1", "ffn_up", "lora_b", "missing"]) { w in w.tensors.removeAll { $0.name == "blk.1.ffn_up.weight.lora_b" } }
        try expectError(["token_embd.weight.lora_a", "not supported"]) { w in try w.add("token_embd.weight.lora_a", try Tensor([0], shape: [1])) }
        try expectError(["blk.0.attn_v.weight.lora_b", "not finite"]) { w in
            let k = w.tensors.firstIndex { $0.name == "blk.0.attn_v.weight.lora_b" }!
            let copy = try Tensor(w.tensors[k].tensor.toFloats(), shape: w.tensors[k].tensor.shape)
            copy.f32[3] = .nan
            w.tensors[k].tensor = copy
        }
        try expectError(["rank mismatch", "attn_q"]) { w in
            let k = w.tensors.firstIndex { $0.name == "blk.0.attn_q.weight.lora_a" }!
            w.tensors[k].tensor = try Tensor([Float](repeating: 0, count: 5 * 64), shape: [5, 64])
        }
        // No alpha: llama.cpp uses scale 1, i.e. alpha = rank.
        try write { w in w.metadata.removeAll { $0.0 == "adapter.lora.alpha" } }
        let g = try LoRATensors(ggufFile: path)
        #expect(g.entries.allSatisfy { g.scaling($0) == 1 })
    }
}
