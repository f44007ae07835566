import Testing
@testable import LoRAKitCore
@testable import LoRAKitFormats
@testable import LoRAKitTokenizer
@testable import LoRAKitModel
#if canImport(Glibc)
import Glibc
#endif

/// The GGUF checklist of issue 14: each weakness llama.cpp's GGUF loader had (CVE-2024-21802,
/// CVE-2024-23605 and the fixes around them), as a hand-made file that `GGUFFile` (and the model and
/// adapter loaders above it) must refuse with a `.format` error naming the problem — never a trap, an
/// out-of-bounds read or a huge allocation.
@Suite struct GGUFHardeningTests {
    /// Hand-made GGUF bytes: every field written explicitly, so any of them can be wrong.
    struct Bytes {
        var b: [UInt8] = []
        mutating func u8(_ v: UInt8) { b.append(v) }
        mutating func u32(_ v: UInt32) { withUnsafeBytes(of: v.littleEndian) { b.append(contentsOf: $0) } }
        mutating func u64(_ v: UInt64) { withUnsafeBytes(of: v.littleEndian) { b.append(contentsOf: $0) } }
        mutating func str(_ s: String) { u64(UInt64(s.utf8.count)); b.append(contentsOf: s.utf8) }
        /// "GGUF", version 3, the tensor and metadata counts.
        mutating func header(tensors: UInt64, kv: UInt64) { b.append(contentsOf: Array("GGUF".utf8)); u32(3); u64(tensors); u64(kv) }
        mutating func kvString(_ k: String, _ v: String) { str(k); u32(8); str(v) }
        mutating func kvU32(_ k: String, _ v: UInt32) { str(k); u32(4); u32(v) }
        /// A tensor info: name, dims (innermost first), ggml type, offset.
        mutating func tensor(_ name: String, _ ne: [UInt64], type: UInt32 = 0, offset: UInt64 = 0) {
            str(name); u32(UInt32(ne.count)); for d in ne { u64(d) }; u32(type); u64(offset)
        }
        mutating func pad(_ a: Int = 32) { while b.count % a != 0 { b.append(0) } }
        mutating func zeros(_ n: Int) { b.append(contentsOf: [UInt8](repeating: 0, count: n)) }
    }

    /// Write `bytes`, open them as GGUF, expect a `.format` error containing every string in `contains`.
    func expectRefused(_ bytes: Bytes, _ contains: [String], sourceLocation: SourceLocation = #_sourceLocation) {
        let path = temporaryPath("hard.gguf")
        defer { unlink(path) }
        writeBytes(path, bytes.b)
        do {
            let f = try GGUFFile(path: path)
            Issue.record("accepted: \(f.tensors.count) tensors, \(f.metadata.count) keys", sourceLocation: sourceLocation)
        } catch {
            guard case .format(let m) = error else {
                Issue.record("expected a format error, got \(error)", sourceLocation: sourceLocation)
                return
            }
            #expect(m.hasPrefix(path), "\(m)", sourceLocation: sourceLocation)
            for c in contains { #expect(m.contains(c), "\(m) should mention \(c)", sourceLocation: sourceLocation) }
        }
    }

    func open(_ bytes: Bytes) throws -> GGUFFile {
        let path = temporaryPath("ok.gguf")
        defer { unlink(path) }  // the map stays valid after unlink
        writeBytes(path, bytes.b)
        return try GGUFFile(path: path)
    }

    // MARK: Integer overflows in sizes (CVE-2024-21802: ggml_nbytes of crafted dims; CVE-2024-23605)

    /// Dims whose element count overflows 64 bits: [2^40, 2^40, 2^40] (each dim at the 2^40 sanity
    /// limit; the product is 2^120).
    @Test func elementCountOverflow() {
        var g = Bytes()
        g.header(tensors: 1, kv: 0)
        g.tensor("w", [1 << 40, 1 << 40, 1 << 40])
        g.pad(); g.zeros(64)
        expectRefused(g, ["tensor w", "size overflow"])
    }

    /// The element count fits but the byte size wraps: 2^40 × 2^22 f32 values = 2^62 elements × 4 bytes
    /// = 2^64 bytes, which is 0 modulo 2^64 (a reader computing in UInt64 would see an empty tensor).
    @Test func byteSizeWrap() {
        var g = Bytes()
        g.header(tensors: 1, kv: 0)
        g.tensor("w", [1 << 40, 1 << 22], type: 0)
        g.pad(); g.zeros(64)
        expectRefused(g, ["tensor w", "overflows"])
        // Q8_0: 2^40 × 0x7C0000 values = 0x7C00…0 < 2^63 elements (the count fits), but 34 bytes per 32
        // values make 9.5e18 bytes > 2^63.
        var q = Bytes()
        q.header(tensors: 1, kv: 0)
        q.tensor("w", [1 << 40, 0x7C_0000], type: 8)
        q.pad(); q.zeros(64)
        expectRefused(q, ["tensor w", "q8_0", "overflows"])
    }

    /// A dimension beyond 2^40 (a negative int64 in ggml's view) and a tensor whose size fits 64 bits but
    /// not the file: the data would be read past the end of the map.
    @Test func dimensionsLargerThanTheFile() {
        var g = Bytes()
        g.header(tensors: 1, kv: 0)
        g.tensor("w", [UInt64.max, 1])
        expectRefused(g, ["tensor w", "dimension", "absurd"])
        var h = Bytes()
        h.header(tensors: 1, kv: 0)
        h.tensor("w", [1 << 20, 1 << 10])  // 4 GiB of f32
        h.pad(); h.zeros(64)
        expectRefused(h, ["tensor w", "beyond the end of the file"])
        // The data offset itself beyond the file, and an offset that wraps when added to the data start.
        var o = Bytes()
        o.header(tensors: 1, kv: 0)
        o.tensor("w", [4], offset: 1 << 62)
        o.pad(); o.zeros(64)
        expectRefused(o, ["tensor w", "offset"])
        var w = Bytes()
        w.header(tensors: 1, kv: 0)
        w.tensor("w", [4], offset: UInt64.max - 31)
        w.pad(); w.zeros(64)
        expectRefused(w, ["tensor w", "offset"])
    }

    /// n_dims beyond ggml's 4 (CVE-2024-21802 wrote dims past a 4-element array), and 0.
    @Test func dimensionCountOutOfRange() {
        for n in [UInt32(0), 5, UInt32.max] {
            var g = Bytes()
            g.header(tensors: 1, kv: 0)
            g.str("w"); g.u32(n); g.u64(4); g.u64(4); g.u32(0); g.u64(0)
            g.pad(); g.zeros(64)
            expectRefused(g, ["tensor w", "n_dims \(n)"])
        }
    }

    // MARK: Counts × per-item overhead (CVE-2024-23605: n_kv × sizeof(gguf_kv) wrapped the allocation)

    /// Tensor and metadata counts that would need more memory than the file could describe are refused
    /// before anything is allocated for them; counts under the limit fail at the first missing byte.
    @Test func countsTimesOverhead() {
        for n: UInt64 in [UInt64.max, 1 << 63, (UInt64.max / 64) + 1, 1 << 32, (1 << 20) + 1] {
            var g = Bytes()
            g.header(tensors: n, kv: 0)
            expectRefused(g, ["tensor_count \(n)", "absurd"])
            var k = Bytes()
            k.header(tensors: 0, kv: n)
            expectRefused(k, ["metadata_kv_count \(n)", "absurd"])
        }
        var g = Bytes()
        g.header(tensors: 1 << 20, kv: 0)  // at the limit: no reservation, the first tensor name is missing
        expectRefused(g, ["truncated", "tensor #0 name"])
    }

    // MARK: Strings and arrays longer than the file

    @Test func stringsLongerThanTheFile() {
        // Key length: one byte more than the file holds, and lengths that wrap `position + length`.
        for len: UInt64 in [5, UInt64.max, UInt64.max - 15, 1 << 63] {
            var g = Bytes()
            g.header(tensors: 0, kv: 1)
            g.u64(len); g.b.append(contentsOf: Array("abcd".utf8))
            expectRefused(g, ["metadata key #0", "claims \(len) bytes"])
        }
        // A string value and a tensor name.
        var v = Bytes()
        v.header(tensors: 0, kv: 1)
        v.str("general.name"); v.u32(8); v.u64(1000); v.b.append(contentsOf: Array("short".utf8))
        expectRefused(v, ["general.name", "claims 1000 bytes"])
        var t = Bytes()
        t.header(tensors: 1, kv: 0)
        t.u64(UInt64.max - 7); t.b.append(contentsOf: Array("w".utf8))
        expectRefused(t, ["tensor #0 name", "claims"])
    }

    @Test func arraysLongerThanTheFile() {
        // An array of u8 one element longer than the bytes left.
        var g = Bytes()
        g.header(tensors: 0, kv: 1)
        g.str("a"); g.u32(9); g.u32(0); g.u64(5); g.zeros(4)
        expectRefused(g, ["array of 5 elements", "the file has 4 left"])
        // Elements of 8 bytes: 100 of them "fit" byte for byte (≥ 100 bytes left) but need 800.
        var u = Bytes()
        u.header(tensors: 0, kv: 1)
        u.str("a"); u.u32(9); u.u32(10); u.u64(100); u.zeros(120)
        expectRefused(u, ["array of 100 elements of type 10", "100 × 8 bytes"])
        // A huge length: refused before anything is reserved for it.
        for n: UInt64 in [UInt64.max, 1 << 62, 1 << 40] {
            var h = Bytes()
            h.header(tensors: 0, kv: 1)
            h.str("a"); h.u32(9); h.u32(8); h.u64(n); h.zeros(16)
            expectRefused(h, ["array of \(n) elements"])
        }
        // An array of strings whose strings are longer than the file.
        var s = Bytes()
        s.header(tensors: 0, kv: 1)
        s.str("tokenizer.ggml.tokens"); s.u32(9); s.u32(8); s.u64(2); s.str("a"); s.u64(1 << 40)
        expectRefused(s, ["tokenizer.ggml.tokens[1]", "claims"])
    }

    /// More array elements in total than the metadata cap, spread over arrays that each fit the file.
    @Test func totalArrayElementsAreCapped() throws {
        let per = ByteReader.maxValues / 4 + 1
        var g = Bytes()
        g.header(tensors: 0, kv: 4)
        for k in 0..<4 { g.str("a\(k)"); g.u32(9); g.u32(0); g.u64(UInt64(per)); g.zeros(per) }
        expectRefused(g, ["more than \(ByteReader.maxValues) array elements"])
        // Three of them are fine.
        var ok = Bytes()
        ok.header(tensors: 0, kv: 3)
        for k in 0..<3 { ok.str("a\(k)"); ok.u32(9); ok.u32(0); ok.u64(UInt64(per)); ok.zeros(per) }
        #expect(try open(ok).metadata["a2"]?.array?.count == per)
    }

    // MARK: Alignment

    @Test func alignmentMustBeAPowerOfTwo() throws {
        for a: UInt32 in [0, 3, 48, 96, 1 << 21, UInt32.max] {
            var g = Bytes()
            g.header(tensors: 0, kv: 1)
            g.kvU32("general.alignment", a)
            expectRefused(g, ["general.alignment", "power of two"])
        }
        // Not an integer: a string, a float, a bool (llama.cpp's gguf_get_val_u32 aborted on those).
        var s = Bytes()
        s.header(tensors: 0, kv: 1)
        s.kvString("general.alignment", "32")
        expectRefused(s, ["general.alignment", "not an integer"])
        var f = Bytes()
        f.header(tensors: 0, kv: 1)
        f.str("general.alignment"); f.u32(6); f.u32(Float(32).bitPattern)
        expectRefused(f, ["general.alignment", "not an integer"])
        var b = Bytes()
        b.header(tensors: 0, kv: 1)
        b.str("general.alignment"); b.u32(7); b.u8(1)
        expectRefused(b, ["general.alignment", "not an integer"])
        // A valid alignment of 64 is applied to the data section and the tensor offsets.
        var ok = Bytes()
        ok.header(tensors: 1, kv: 1)
        ok.str("general.alignment"); ok.u32(10); ok.u64(64)
        ok.tensor("w", [4])
        ok.pad(64); ok.b.append(contentsOf: [Float(1), 2, 3, 4].flatMap { withUnsafeBytes(of: $0.bitPattern.littleEndian, Array.init) })
        let file = try open(ok)
        #expect(file.alignment == 64 && file.dataOffset % 64 == 0)
        #expect(try file.tensor("w").toFloats() == [1, 2, 3, 4])
        // A tensor offset that is not a multiple of the alignment.
        var m = Bytes()
        m.header(tensors: 1, kv: 0)
        m.tensor("w", [4], offset: 8)
        m.pad(); m.zeros(64)
        expectRefused(m, ["tensor w", "not aligned to 32"])
    }

    // MARK: Duplicates

    @Test func duplicateKeysAndTensorsAreRefused() {
        var g = Bytes()
        g.header(tensors: 0, kv: 2)
        g.kvString("general.architecture", "llama")
        g.kvString("general.architecture", "gpt2")
        expectRefused(g, ["duplicate metadata key general.architecture"])
        var t = Bytes()
        t.header(tensors: 2, kv: 0)
        t.tensor("w", [4])
        t.tensor("w", [4], offset: 32)
        t.pad(); t.zeros(64)
        expectRefused(t, ["duplicate tensor name w"])
    }

    // MARK: Zero dimensions

    /// A tensor with a zero dimension is a valid empty tensor in a GGUF file (ggml allows it), but never a
    /// usable weight: the model loader refuses it by shape, the adapter loader by rank.
    @Test func zeroDimensions() throws {
        var g = Bytes()
        g.header(tensors: 2, kv: 0)
        g.tensor("empty", [0, 8])
        g.tensor("empty_q", [32, 0], type: 8)
        g.pad()
        let f = try open(g)
        #expect(try f.tensor("empty").shape == [8, 0])
        #expect(try f.tensor("empty").toFloats() == [])
        #expect(try f.tensor("empty_q").count == 0)

        // As a LoRA: rank 0 is refused.
        var l = Bytes()
        l.header(tensors: 2, kv: 4)
        l.kvString("general.architecture", "llama"); l.kvString("general.type", "adapter"); l.kvString("adapter.type", "lora")
        l.str("adapter.lora.alpha"); l.u32(6); l.u32(Float(1).bitPattern)
        l.tensor("blk.0.attn_q.weight.lora_a", [64, 0])
        l.tensor("blk.0.attn_q.weight.lora_b", [0, 64])
        l.pad()
        let path = temporaryPath("zero-lora.gguf")
        defer { unlink(path) }
        writeBytes(path, l.b)
        #expect {
            _ = try LoRATensors(ggufFile: path)
        } throws: { e in (e as? LKError)?.message.contains("rank mismatch") == true || (e as? LKError)?.message.contains("rank 0") == true }

        // As a model weight: the tiny fixture model with token_embd.weight's vocabulary dim made 0.
        let fixture = readBytes(fixturePath("model/tiny-llama-f32.gguf"))
        let name = Array("token_embd.weight".utf8)
        guard let at = fixture.indices.first(where: { fixture[$0..<min($0 + name.count, fixture.count)].elementsEqual(name) }) else {
            Issue.record("token_embd.weight not found in the fixture"); return
        }
        var bytes = fixture
        let ne1 = at + name.count + 4 + 8  // n_dims (u32), ne[0] (u64), then ne[1]
        for k in 0..<8 { bytes[ne1 + k] = 0 }
        let mpath = temporaryPath("zero-model.gguf")
        defer { unlink(mpath) }
        writeBytes(mpath, bytes)
        #expect {
            _ = try LlamaModel(gguf: mpath)
        } throws: { e in (e as? LKError)?.message.contains("token_embd.weight has shape [0, 64]") == true }
    }

    // MARK: Value and element types

    /// Array element types are checked — also for empty arrays — and unknown value types refused;
    /// arrays of arrays are limited in depth; typed readers refuse values of the wrong type.
    @Test func valueAndElementTypesAreChecked() throws {
        for et: UInt32 in [13, 255, UInt32.max] {
            for n: UInt64 in [0, 3] {
                var g = Bytes()
                g.header(tensors: 0, kv: 1)
                g.str("a"); g.u32(9); g.u32(et); g.u64(n); g.zeros(24)
                expectRefused(g, ["a", "unknown array element type \(et)"])
            }
        }
        var v = Bytes()
        v.header(tensors: 0, kv: 1)
        v.str("a"); v.u32(13); v.zeros(8)
        expectRefused(v, ["unknown metadata value type 13"])
        var bad = Bytes()
        bad.header(tensors: 0, kv: 1)
        bad.str("flag"); bad.u32(7); bad.u8(2)
        expectRefused(bad, ["flag", "bool value 2"])
        // Nested five deep.
        var nest = Bytes()
        nest.header(tensors: 0, kv: 1)
        nest.str("deep")
        nest.u32(9)
        for _ in 0..<5 { nest.u32(9); nest.u64(1) }
        nest.u32(0); nest.u64(0)
        expectRefused(nest, ["deep", "nested too deeply"])

        // Typed readers: a tokenizer whose tokens are numbers, whose token types are strings.
        func tokenizerError(_ fill: (inout Bytes) -> Void) throws -> String {
            var g = Bytes()
            fill(&g)
            let f = try open(g)
            do { _ = try Tokenizer(gguf: f); return "accepted" } catch { return error.message }
        }
        let numbers = try tokenizerError { g in
            g.header(tensors: 0, kv: 2)
            g.kvString("tokenizer.ggml.model", "gpt2")
            g.str("tokenizer.ggml.tokens"); g.u32(9); g.u32(4); g.u64(2); g.u32(1); g.u32(2)
        }
        #expect(numbers.contains("tokenizer.ggml.tokens[0] is not a string"), "\(numbers)")
        let types = try tokenizerError { g in
            g.header(tensors: 0, kv: 4)
            g.kvString("tokenizer.ggml.model", "gpt2")
            g.str("tokenizer.ggml.tokens"); g.u32(9); g.u32(8); g.u64(1); g.str("a")
            g.str("tokenizer.ggml.token_type"); g.u32(9); g.u32(8); g.u64(1); g.str("1")
            g.str("tokenizer.ggml.merges"); g.u32(9); g.u32(8); g.u64(0)
        }
        #expect(types.contains("tokenizer.ggml.token_type[0]"), "\(types)")
        // A model whose embedding length is a string.
        var m = Bytes()
        m.header(tensors: 0, kv: 2)
        m.kvString("general.architecture", "llama")
        m.kvString("llama.embedding_length", "64")
        let path = temporaryPath("types.gguf")
        defer { unlink(path) }
        writeBytes(path, m.b)
        #expect {
            _ = try LlamaModel(gguf: path)
        } throws: { e in (e as? LKError)?.message.contains("llama.embedding_length is not an integer") == true }
    }

    /// Wrong magic, versions 1 and 4, a big-endian file (its version reads 0x03000000).
    @Test func magicAndVersion() {
        var g = Bytes()
        g.b.append(contentsOf: Array("GGUG".utf8)); g.u32(3); g.u64(0); g.u64(0)
        expectRefused(g, ["not a GGUF file"])
        for v: UInt32 in [1, 4, 0x0300_0000] {
            var h = Bytes()
            h.b.append(contentsOf: Array("GGUF".utf8)); h.u32(v); h.u64(0); h.u64(0)
            let path = temporaryPath("v.gguf")
            writeBytes(path, h.b)
            #expect {
                _ = try GGUFFile(path: path)
            } throws: { e in (e as? LKError)?.message.contains("GGUF version \(v)") == true }
            unlink(path)
        }
    }

    // MARK: Error messages

    /// The reader names what it was reading only when it fails (the descriptions are built lazily, so a
    /// valid file with a large vocabulary formats none of them): each message, whole, for every kind of
    /// description — metadata key, its type, its value, array elements nested two deep, element types,
    /// lengths, and every field of a tensor info.
    @Test func errorMessagesNameWhatWasRead() {
        func expectMessage(_ g: Bytes, _ rest: String, sourceLocation: SourceLocation = #_sourceLocation) {
            let path = temporaryPath("msg.gguf")
            defer { unlink(path) }
            writeBytes(path, g.b)
            #expect(throws: LKError.format(path + ": " + rest), sourceLocation: sourceLocation) { try GGUFFile(path: path) }
        }
        var g = Bytes()  // the header is 24 bytes
        g.header(tensors: 0, kv: 1); g.zeros(4)
        expectMessage(g, "truncated file: reading length of metadata key #0 needs 8 bytes at offset 24, file has 28")
        g = Bytes(); g.header(tensors: 0, kv: 2); g.kvU32("a", 1); g.u64(1 << 40)
        expectMessage(g, "truncated file or corrupt length: metadata key #1 claims 1099511627776 bytes at offset 49, file has 49")
        g = Bytes(); g.header(tensors: 0, kv: 1); g.str("a")
        expectMessage(g, "truncated file: reading type of a needs 4 bytes at offset 33, file has 33")
        g = Bytes(); g.header(tensors: 0, kv: 1); g.str("k"); g.u32(4); g.zeros(2)
        expectMessage(g, "truncated file: reading k needs 4 bytes at offset 37, file has 39")
        g = Bytes(); g.header(tensors: 0, kv: 1); g.str("s"); g.u32(8); g.zeros(3)
        expectMessage(g, "truncated file: reading length of s needs 8 bytes at offset 37, file has 40")
        g = Bytes(); g.header(tensors: 0, kv: 1); g.str("t"); g.u32(9); g.zeros(2)
        expectMessage(g, "truncated file: reading element type of t needs 4 bytes at offset 37, file has 39")
        g = Bytes(); g.header(tensors: 0, kv: 1); g.str("t"); g.u32(9); g.u32(10); g.zeros(3)
        expectMessage(g, "truncated file: reading length of t needs 8 bytes at offset 41, file has 44")
        // Arrays of arrays: the element's name carries each index.
        g = Bytes(); g.header(tensors: 0, kv: 1); g.str("t"); g.u32(9); g.u32(9); g.u64(1); g.u32(0); g.u64(2); g.u8(1)
        expectMessage(g, "t[0]: array of 2 elements of type 0 needs at least 2 × 1 bytes, the file has 1 left")
        g = Bytes(); g.header(tensors: 0, kv: 1); g.str("t"); g.u32(9); g.u32(9); g.u64(1); g.u32(7); g.u64(2); g.u8(1); g.u8(2); g.zeros(2)
        expectMessage(g, "t[0][1]: bool value 2 at offset 62")
        g = Bytes(); g.header(tensors: 0, kv: 1); g.str("s"); g.u32(9); g.u32(8); g.u64(2); g.str("x"); g.u64(100); g.zeros(3)
        expectMessage(g, "truncated file or corrupt length: s[1] claims 100 bytes at offset 66, file has 69")
        // value → array of arrays (9) of length 1, four levels down: k[0][0][0][0] is one too many.
        g = Bytes(); g.header(tensors: 0, kv: 1); g.str("k"); g.u32(9); for _ in 0..<5 { g.u32(9); g.u64(1) }; g.zeros(64)
        expectMessage(g, "k[0][0][0][0]: arrays nested too deeply")
        g = Bytes(); g.header(tensors: 0, kv: 1); g.str("k"); g.u32(13)
        expectMessage(g, "k: unknown metadata value type 13 at offset 33")
        g = Bytes(); g.header(tensors: 0, kv: 1); g.str("k"); g.u32(9); g.u32(99); g.zeros(8)
        expectMessage(g, "k: unknown array element type 99 at offset 37")
        // Tensor infos.
        g = Bytes(); g.header(tensors: 1, kv: 0); g.zeros(4)
        expectMessage(g, "truncated file: reading length of tensor #0 name needs 8 bytes at offset 24, file has 28")
        g = Bytes(); g.header(tensors: 1, kv: 0); g.str("w")
        expectMessage(g, "truncated file: reading n_dims of w needs 4 bytes at offset 33, file has 33")
        g = Bytes(); g.header(tensors: 1, kv: 0); g.str("w"); g.u32(2); g.u64(4); g.zeros(3)
        expectMessage(g, "truncated file: reading dim 1 of w needs 8 bytes at offset 45, file has 48")
        g = Bytes(); g.header(tensors: 1, kv: 0); g.str("w"); g.u32(1); g.u64(4)
        expectMessage(g, "truncated file: reading type of w needs 4 bytes at offset 45, file has 45")
        g = Bytes(); g.header(tensors: 1, kv: 0); g.str("w"); g.u32(1); g.u64(4); g.u32(0)
        expectMessage(g, "truncated file: reading offset of w needs 8 bytes at offset 49, file has 49")
        g = Bytes(); g.header(tensors: 2, kv: 0); g.tensor("w", [4]); g.str("v"); g.u32(7)
        expectMessage(g, "tensor v: n_dims 7 outside 1...4")
    }
}
