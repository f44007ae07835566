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

/// A safetensors file made by hand: u64 header length (or `length`), the header text, the data bytes.
func rawSafetensors(_ header: String, data: [UInt8] = [], length: UInt64? = nil) -> [UInt8] {
    let h = Array(header.utf8)
    var out: [UInt8] = []
    withUnsafeBytes(of: (length ?? UInt64(h.count)).littleEndian) { out.append(contentsOf: $0) }
    return out + h + data
}

/// Index of the first differing byte (or the shorter length), nil when equal. (`#expect(a == b)` on
/// large arrays makes swift-testing compute a quadratic diff on failure.)
func firstDifference(_ a: [UInt8], _ b: [UInt8]) -> Int? {
    if let i = (0..<min(a.count, b.count)).first(where: { a[$0] != b[$0] }) { return i }
    return a.count == b.count ? nil : min(a.count, b.count)
}

extension String {
    var replacingSlashes: String { String(map { $0 == "/" ? "_" : $0 }) }
}

@Suite struct SafetensorsTests {
    static let hfDir = fixturePath("model/tiny-llama-hf")

    /// Rewriting a file written by Python `safetensors` (via transformers) gives the same bytes: same
    /// tensor order, header layout and padding as the reference writer.
    @Test(arguments: ["tiny-llama-hf/model.safetensors", "tiny-llama-hf-tied-bf16/model.safetensors",
                      "tiny-llama-hf-sharded/model-00001-of-00002.safetensors",
                      "tiny-llama-hf-sharded/model-00002-of-00002.safetensors"])
    func rewritingAPythonFileIsByteIdentical(_ rel: String) throws {
        let src = fixturePath("model/" + rel)
        let f = try SafetensorsFile(path: src)
        #expect(f.metadata == ["format": "pt"])
        var w = SafetensorsWriter()
        w.metadata = f.metadata
        for name in f.tensorNames.reversed() { try w.add(name, try f.tensor(name)) }
        // Parameterized cases run in parallel: one output file each.
        let out = temporaryPath("rewrite-" + rel.replacingSlashes + ".safetensors")
        defer { unlink(out) }
        try w.write(to: out)
        let (a, b) = (readBytes(out), readBytes(src))
        #expect(a.count == b.count && firstDifference(a, b) == nil)
    }

    @Test func fixtureContents() throws {
        let f = try SafetensorsFile(path: SafetensorsTests.hfDir + "/model.safetensors")
        #expect(f.tensors.count == 21)
        #expect(f.headerLength % 8 == 0)
        let q = try #require(f.info("model.layers.1.self_attn.k_proj.weight"))
        #expect(q.fileDType == .F32 && q.shape == [32, 64] && q.byteCount == 32 * 64 * 4)
        let t = try f.tensor("model.layers.1.self_attn.k_proj.weight")
        #expect(t.storage === f.storage)  // a view of the map, not a copy
        #expect(f.info("nope") == nil)
        #expect(throws: LKError.self) { try f.tensor("nope") }
        let b = try SafetensorsFile(path: fixturePath("model/tiny-llama-hf-tied-bf16/model.safetensors"))
        #expect(b.tensors.count == 20 && b.tensors.allSatisfy { $0.dtype == .bf16 })
        // bf16 values are the f32 ones rounded to nearest even.
        let e32 = try f.tensor("model.embed_tokens.weight").toFloats()
        let e16 = try b.tensor("model.embed_tokens.weight").toFloats()
        #expect(zip(e32, e16).allSatisfy { bf16ToFloat(floatToBF16($0)) == $1 })
    }

    @Test func roundTripMixedDTypes() throws {
        var w = SafetensorsWriter()
        w.metadata = ["format": "pt", "note": "quote \" backslash \\ newline \n ünïcode"]
        let a = try Tensor((0..<6).map { Float($0) * 0.5 - 1 }, shape: [2, 3])
        let h = try a.converted(to: .f16), bf = try a.converted(to: .bf16)
        // A transposed (strided) view is written in row-major order of its shape.
        let tr = try Tensor(storage: a.storage, offset: 0, shape: [3, 2], strides: [1, 3], dtype: .f32)
        let scalar = try Tensor([42], shape: [])
        let empty = try Tensor(zeros: [0, 4], dtype: .f32)
        try w.add("b.f16", h)
        try w.add("a.bf16", bf)
        try w.add("z.f32", a)
        try w.add("B.f32", tr)
        try w.add("scalar", scalar)
        try w.add("empty", empty)
        let p = temporaryPath("rt.safetensors")
        defer { unlink(p) }
        try w.write(to: p)
        let f = try SafetensorsFile(path: p)
        #expect(f.metadata == w.metadata)
        #expect(f.headerLength % 8 == 0)
        // Reference writer order: F32 first, then BF16, then F16; by name (byte order) within a dtype.
        #expect(f.tensorNames == ["B.f32", "empty", "scalar", "z.f32", "a.bf16", "b.f16"])
        #expect(try f.tensor("z.f32").toFloats() == a.toFloats())
        #expect(try f.tensor("B.f32").toFloats() == tr.toFloats())
        #expect(try f.tensor("B.f32").toFloats() == [-1, 0.5, -0.5, 1, 0, 1.5])
        #expect(try f.tensor("b.f16").dtype == .f16)
        #expect(try f.tensor("b.f16").toFloats() == h.toFloats())
        #expect(try f.tensor("a.bf16").toFloats() == bf.toFloats())
        #expect(try f.tensor("scalar").shape == [] && f.tensor("scalar").toFloats() == [42])
        #expect(try f.tensor("empty").shape == [0, 4])
        // Same bytes again when rewritten from what was read.
        var w2 = SafetensorsWriter()
        w2.metadata = f.metadata
        for n in f.tensorNames { try w2.add(n, try f.tensor(n)) }
        #expect(w2.headerBytes() == w.headerBytes())
        let p2 = temporaryPath("rt2.safetensors")
        defer { unlink(p2) }
        try w2.write(to: p2)
        #expect(firstDifference(readBytes(p2), readBytes(p)) == nil)
        // No tensors at all: `{}` padded to 8 bytes (as Python writes it).
        #expect(SafetensorsWriter().headerBytes() == [8, 0, 0, 0, 0, 0, 0, 0] + Array("{}      ".utf8))
    }

    /// Writes `compat.safetensors` for `scripts/check_safetensors_compat.py` when
    /// LORAKIT_SAFETENSORS_COMPAT_DIR is set (run by hand); does nothing otherwise.
    @Test func writeCompatFile() throws {
        guard let d = getenv("LORAKIT_SAFETENSORS_COMPAT_DIR") else { return }
        var w = SafetensorsWriter()
        w.metadata = ["format": "pt", "lorakit": "compat"]
        try w.add("weight.f32", try Tensor((0..<15).map { Float($0) * 0.25 - 1.75 }, shape: [3, 5]))
        try w.add("bias.f16", try Tensor((0..<5).map { (Float($0) - 2) * 0.5 }, shape: [5]).converted(to: .f16))
        try w.add("emb.bf16", try Tensor((0..<8).map { Float($0) * 0.125 }, shape: [4, 2]).converted(to: .bf16))
        try w.add("scalar", try Tensor([7], shape: []))
        try w.add("empty", try Tensor(zeros: [0, 3]))
        try w.add("\u{FC}n\u{EF}.f32", try Tensor([1.5, -2.5], shape: [2]))
        try w.write(to: String(cString: d) + "/compat.safetensors")
    }

    @Test func writerRejectsBadInput() throws {
        var w = SafetensorsWriter()
        try w.add("x", try Tensor([1], shape: [1]))
        #expect(throws: LKError.self) { try w.add("x", try Tensor([1], shape: [1])) }
        #expect(throws: LKError.self) { try w.add("__metadata__", try Tensor([1], shape: [1])) }
        #expect(throws: LKError.self) { try w.add("q", try Tensor(zeros: [1, 32], dtype: .q8_0)) }
        #expect(throws: LKError.self) { try w.write(to: "/nonexistent-dir/x.safetensors") }
    }

    func expectRejected(_ bytes: [UInt8], _ needle: String, sourceLocation: SourceLocation = #_sourceLocation) {
        let p = temporaryPath("bad.safetensors")
        defer { unlink(p) }
        writeBytes(p, bytes)
        do {
            _ = try SafetensorsFile(path: p)
            Issue.record("accepted a corrupt file (\(needle))", sourceLocation: sourceLocation)
        } catch {
            #expect(error.message.contains(p), "\(error.message)", sourceLocation: sourceLocation)
            #expect(error.message.contains(needle), "\(error.message)", sourceLocation: sourceLocation)
        }
    }

    @Test func corruptFilesAreRejected() throws {
        let t = #"{"t":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}"#
        let data = [UInt8](repeating: 0, count: 8)
        expectRejected([], "shorter than the 8-byte header length")
        expectRejected([16, 0, 0], "shorter than the 8-byte header length")
        // Truncated header: the file ends inside it.
        expectRejected(Array(rawSafetensors(t, data: data).prefix(30)), "exceeds")
        expectRejected(rawSafetensors(t, data: data, length: 1 << 62), "exceeds")
        expectRejected(rawSafetensors(t, data: data, length: 200_000_000), "exceeds")
        expectRejected(rawSafetensors("[1,2]   "), "does not start with")
        expectRejected(rawSafetensors(#"{"t":{"dtype":"F32","#), "safetensors header")  // bad JSON
        expectRejected(rawSafetensors(#"{"t":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},}"#, data: data), "safetensors header")
        // Offsets out of range, reversed, negative, or not two integers.
        expectRejected(rawSafetensors(#"{"t":{"dtype":"F32","shape":[4],"data_offsets":[0,16]}}"#, data: data), "beyond the data section")
        expectRejected(rawSafetensors(#"{"t":{"dtype":"F32","shape":[0],"data_offsets":[8,0]}}"#, data: data), "increasing")
        expectRejected(rawSafetensors(#"{"t":{"dtype":"F32","shape":[0],"data_offsets":[-4,0]}}"#, data: data), "increasing")
        expectRejected(rawSafetensors(#"{"t":{"dtype":"F32","shape":[2],"data_offsets":[0]}}"#, data: data), "data_offsets")
        // Shape × dtype size ≠ offsets.
        expectRejected(rawSafetensors(#"{"t":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}}"#, data: data), "needs 12 bytes")
        expectRejected(rawSafetensors(#"{"t":{"dtype":"F16","shape":[2,-1],"data_offsets":[0,8]}}"#, data: data), "invalid dimension")
        expectRejected(rawSafetensors(#"{"t":{"dtype":"F32","shape":[4611686018427387904,4],"data_offsets":[0,8]}}"#, data: data), "t:")
        // Overlapping tensors.
        expectRejected(rawSafetensors(#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}}"#, data: data), "overlap")
        // Unknown dtype, duplicate names, bad metadata, missing fields.
        expectRejected(rawSafetensors(#"{"t":{"dtype":"Q7","shape":[2],"data_offsets":[0,8]}}"#, data: data), "unknown dtype \"Q7\"")
        expectRejected(rawSafetensors(#"{"t":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"t":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}"#, data: data), "duplicate tensor name t")
        expectRejected(rawSafetensors(#"{"__metadata__":{"n":1}}"#), "not a string")
        expectRejected(rawSafetensors(#"{"t":{"shape":[2],"data_offsets":[0,8]}}"#, data: data), "dtype")
        expectRejected(rawSafetensors(#"{"t":[1]}"#), "not an object")
    }

    @Test func unsupportedDTypesAreListedButNotUsable() throws {
        // F64 (8 bytes), then I8 (2 bytes), then an F32 at byte 10: not 4-aligned in the file, so copied.
        var header = #"{"d":{"dtype":"F64","shape":[1],"data_offsets":[0,8]},"i":{"dtype":"I8","shape":[2],"data_offsets":[8,10]},"f":{"dtype":"F32","shape":[1],"data_offsets":[10,14]}}"#
        while header.utf8.count % 8 != 0 { header += " " }  // data section 8-aligned in the file
        var data = [UInt8](repeating: 0, count: 10)
        withUnsafeBytes(of: Float(3.25).bitPattern.littleEndian) { data.append(contentsOf: $0) }
        let p = temporaryPath("f64.safetensors")
        defer { unlink(p) }
        writeBytes(p, rawSafetensors(header, data: data))
        let f = try SafetensorsFile(path: p)
        #expect(f.tensorNames == ["d", "i", "f"])
        #expect(f.info("d")?.fileDType == .F64 && f.info("d")?.dtype == nil)
        do {
            _ = try f.tensor("d")
            Issue.record("F64 accepted")
        } catch {
            #expect(error.message.contains("F64") && error.message.contains(p) && error.message.contains("tensor d"))
            #expect(error == .unsupported(error.message))
        }
        #expect(throws: LKError.self) { try f.tensor("i") }
        let t = try f.tensor("f")
        #expect(t.storage !== f.storage && t.toFloats() == [3.25])
    }

    @Test func shardedIndexPresentsOneNamespace() throws {
        let idx = try SafetensorsIndex(path: fixturePath("model/tiny-llama-hf-sharded/model.safetensors.index.json"))
        let single = try SafetensorsFile(path: SafetensorsTests.hfDir + "/model.safetensors")
        #expect(idx.shards.count == 2)
        #expect(idx.tensorNames == single.tensorNames.sorted())
        #expect(idx.metadata?["total_size"]?.int == 607488)
        for n in single.tensorNames {
            #expect(try idx.tensor(n).toFloats() == single.tensor(n).toFloats(), "\(n)")
            #expect(idx.info(n)?.shape == single.info(n)?.shape)
        }
        #expect(idx.filePath(of: "lm_head.weight").hasSuffix("model-00002-of-00002.safetensors"))
        #expect(throws: LKError.self) { try idx.tensor("nope") }
    }

    @Test func badIndexesAreRejected() throws {
        let dir = temporaryPath("idx")
        mkdir(dir, 0o755)
        defer {
            for f in ["model.safetensors.index.json", "a.safetensors"] { unlink(dir + "/" + f) }
            rmdir(dir)
        }
        var w = SafetensorsWriter()
        try w.add("x", try Tensor([1, 2], shape: [2]))
        try w.write(to: dir + "/a.safetensors")
        let ip = dir + "/model.safetensors.index.json"
        func expectBad(_ json: String, _ needle: String) {
            writeBytes(ip, Array(json.utf8))
            do {
                _ = try SafetensorsIndex(path: ip)
                Issue.record("accepted \(json)")
            } catch {
                #expect(error.message.contains(needle), "\(error.message)")
            }
        }
        expectBad(#"{"weight_map":{"x":"a.safetensors","y":"a.safetensors"}}"#, "does not hold it")
        expectBad(#"{"weight_map":{"x":"b.safetensors"}}"#, "b.safetensors")
        expectBad(#"{"weight_map":{"x":"../a.safetensors"}}"#, "not a file inside")
        expectBad(#"{"weight_map":{"x":"/etc/passwd"}}"#, "not a file inside")
        expectBad(#"{"weight_map":{"x":1}}"#, "not a file name")
        expectBad(#"{"weight_map":{"x":"a.safetensors","x":"a.safetensors"}}"#, "twice")
        expectBad(#"{"metadata":{}}"#, "weight_map")
        expectBad(#"{"weight_map":"#, ip)
        writeBytes(ip, Array(#"{"weight_map":{"x":"a.safetensors"}}"#.utf8))
        #expect(try SafetensorsIndex(path: ip).tensor("x").toFloats() == [1, 2])
    }
}
