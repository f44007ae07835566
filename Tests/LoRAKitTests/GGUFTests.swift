import Synchronization
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

/// Calls made so far to `temporaryPath` in this process.
private let temporaryPathCount = Atomic<Int>(0)

/// A path for a test file, unique per call: swift-testing runs tests in parallel, and two tests asking for
/// the same name (e.g. a helper's "tok.gguf") must not overwrite each other's file.
func temporaryPath(_ name: String) -> String {
    let dir = getenv("TMPDIR").map { String(cString: $0) } ?? "/tmp"  // (strdup leaked a string per call: make test-asan)
    let n = temporaryPathCount.add(1, ordering: .relaxed).newValue
    return "\(dir)/lorakit-test-\(getpid())-\(n)-\(name)"
}

func writeBytes(_ path: String, _ bytes: [UInt8]) {
    let f = fopen(path, "wb")!
    _ = bytes.withUnsafeBytes { fwrite($0.baseAddress, 1, $0.count, f) }
    fclose(f)
}

func readBytes(_ path: String) -> [UInt8] {
    guard let f = fopen(path, "rb") else { return [] }
    defer { fclose(f) }
    var out: [UInt8] = []
    var buf = [UInt8](repeating: 0, count: 65536)
    while true {
        let n = fread(&buf, 1, buf.count, f)
        if n <= 0 { break }
        out += buf[0..<n]
    }
    return out
}

@Suite struct GGUFTests {
    func sampleWriter() throws -> GGUFWriter {
        var w = GGUFWriter()
        w.set("general.architecture", .string("llama"))
        w.set("llama.block_count", .uint32(2))
        w.set("llama.rope.freq_base", .float32(10000))
        w.set("tokenizer.ggml.tokens", .array(elementType: 8, [.string("a"), .string("b"), .string("ü")]))
        w.set("flags", .array(elementType: 7, [.bool(true), .bool(false)]))
        w.set("big", .int64(-5))
        let t1 = try Tensor((0..<96).map { Float($0) * 0.5 - 3 }, shape: [3, 32])
        let t2 = try Tensor([1, 2, 3, 4, 5], shape: [5])
        try w.add("blk.0.attn_q.weight", t1)
        try w.add("norm", t2)
        return w
    }

    @Test func roundTrip() throws {
        let path = temporaryPath("rt.gguf")
        defer { unlink(path) }
        try sampleWriter().write(to: path)
        let f = try GGUFFile(path: path)
        #expect(f.version == 3)
        #expect(try f.string("general.architecture") == "llama")
        #expect(try f.int("llama.block_count") == 2)
        #expect(try f.double("llama.rope.freq_base") == 10000)
        #expect(f.metadata["tokenizer.ggml.tokens"]?.stringArray == ["a", "b", "ü"])
        #expect(f.metadata["flags"] == .array(elementType: 7, [.bool(true), .bool(false)]))
        #expect(try f.int("big") == -5)
        #expect(f.metadataKeys.first == "general.architecture")
        let q = try f.tensor("blk.0.attn_q.weight")
        #expect(q.shape == [3, 32])
        #expect(q.toFloats() == (0..<96).map { Float($0) * 0.5 - 3 })
        #expect(try f.tensor("norm").toFloats() == [1, 2, 3, 4, 5])
        #expect(f.tensors[0].offset % 32 == 0 && f.tensors[1].offset % 32 == 0)
        #expect(throws: LKError.self) { try f.tensor("missing") }
    }

    /// Every truncation of a valid file is rejected with a format error (never a crash).
    @Test func truncatedFilesAreRejected() throws {
        let path = temporaryPath("full.gguf")
        defer { unlink(path) }
        try sampleWriter().write(to: path)
        let bytes = readBytes(path)
        #expect(bytes.count > 200)
        let cut = temporaryPath("cut.gguf")
        defer { unlink(cut) }
        var rejected = 0
        // Every prefix inside the header and a few inside the data.
        // The last tensor (5 f32 = 20 bytes) is followed by 12 bytes of padding: cutting 13 cuts its data.
        let lengths = Array(0..<min(bytes.count, 400)) + [bytes.count - 13, bytes.count - 40]
        for n in lengths where n < bytes.count {
            writeBytes(cut, Array(bytes[0..<n]))
            do {
                _ = try GGUFFile(path: cut)
                Issue.record("truncated to \(n) bytes was accepted")
            } catch {
                rejected += 1
                #expect(error.message.contains(cut) || error.message.contains("GGUF"), "\(error)")
            }
        }
        #expect(rejected == lengths.filter { $0 < bytes.count }.count)
    }

    @Test func corruptFieldsAreRejected() throws {
        let path = temporaryPath("c.gguf")
        defer { unlink(path) }
        try sampleWriter().write(to: path)
        let good = readBytes(path)
        func expectRejected(_ mutate: (inout [UInt8]) -> Void, _ contains: String) {
            var b = good
            mutate(&b)
            writeBytes(path, b)
            do {
                _ = try GGUFFile(path: path)
                Issue.record("corruption '\(contains)' accepted")
            } catch {
                #expect(error.message.contains(contains), "\(error.message)")
            }
        }
        expectRejected({ $0[0] = 0 }, "not a GGUF file")
        expectRejected({ $0[4] = 9 }, "version 9")
        expectRejected({ $0[8 + 7] = 0x7f }, "tensor_count")      // absurd tensor count
        expectRejected({ $0[16 + 7] = 0x7f }, "metadata_kv_count")
        // First key length (u64 at offset 24) made huge.
        expectRejected({ $0[24 + 6] = 0xff }, "corrupt length")
    }

    @Test func realModelMetadata() throws {
        guard let p = getenv("LORAKIT_MODEL"), !String(cString: p).isEmpty else {
            print("SKIPPED realModelMetadata: LORAKIT_MODEL is not set (model download failed?)")
            return
        }
        let f = try GGUFFile(path: String(cString: p))
        #expect(try f.string("general.architecture") == "llama")
        #expect(try f.int("llama.block_count") == 30)
        #expect(try f.int("llama.embedding_length") == 576)
        #expect(try f.int("llama.attention.head_count") == 9)
        #expect(try f.int("llama.attention.head_count_kv") == 3)
        #expect(f.metadata["tokenizer.ggml.tokens"]?.array?.count == 49152)
        #expect(try f.string("tokenizer.ggml.pre") == "smollm")
        let q = try f.tensor("blk.0.attn_q.weight")
        #expect(q.shape == [576, 576])
        #expect(q.dtype == .q4_1)
        #expect(try f.tensor("blk.0.attn_k.weight").shape == [192, 576])
    }
}
