// Fuzz target tokenizer: arbitrary bytes in, ids out, and back.
//
// Tokenizers: the byte-level BPE of Fixtures/train/model/tokenizer.json and of
// Fixtures/tokenizer/tiny_tokenizer.json, the SentencePiece BPE of Fixtures/tokenizer/tiny_spm.gguf, and
// SmolLM2-135M's (GGUF metadata) when LORAKIT_MODEL names the real model.
// Input: byte 0 picks the tokenizer (low bits) and whether special tokens written in the text are parsed
// (bit 4); the rest is the text (invalid UTF-8 becomes U+FFFD, as a Swift String). Properties:
// - ids are inside the vocabulary; `decode` equals the concatenated token bytes and a `UTF8StreamDecoder`
//   fed token by token;
// - round trip, where it is defined: without BOS/EOS, when every byte of the text has a byte token
//   (so nothing becomes <unk> or is dropped) and no added token strips spaces, decode(encode(text)) == text
//   (special tokens parsed or not); for SentencePiece only when no added token was matched (llama.cpp
//   puts a space before the text after one) and without a literal "▁" in the text (SentencePiece spells
//   spaces "▁", so that character decodes as a space).
import LoRAKit
import FuzzSupport
import FuzzDriver
#if canImport(Glibc)
import Glibc
#endif

struct Subject {
    let name: String
    let tok: Tokenizer
    /// Bytes that have their own token (byte-level: a normal token of one byte; SentencePiece: <0xAB>).
    let covered: [Bool]
    let stripsSpaces: Bool
}

func subject(_ name: String, _ tok: Tokenizer, stripsSpaces: Bool = false) -> Subject {
    var covered = [Bool](repeating: false, count: 256)
    for id in 0..<Int32(tok.vocabSize) {
        let b = tok.tokenBytes(id)
        let k = tok.kind(id)
        if b.count == 1 && (k == .normal || k == .byte) { covered[Int(b[0])] = true }
    }
    return Subject(name: name, tok: tok, covered: covered, stripsSpaces: stripsSpaces)
}

let subjects: [Subject] = {
    var out: [Subject] = []
    do {
        out.append(subject("train/model", try Tokenizer(tokenizerJSON: Fuzz.fixtures + "/train/model/tokenizer.json")))
        out.append(subject("tiny_tokenizer", try Tokenizer(tokenizerJSON: Fuzz.fixtures + "/tokenizer/tiny_tokenizer.json")))
        out.append(subject("tiny_spm", try Tokenizer(gguf: GGUFFile(path: Fuzz.fixtures + "/tokenizer/tiny_spm.gguf"))))
        if let m = getenv("LORAKIT_MODEL"), m[0] != 0 {
            out.append(subject("smollm2", try Tokenizer(gguf: GGUFFile(path: String(cString: m)))))
        }
    } catch {
        fatalError("fuzz: cannot load a fixture tokenizer: \(error)")
    }
    for s in out {
        Fuzz.printError("tokenizer \(s.name): \(s.tok.vocabSize) tokens, \(s.covered.filter { $0 }.count)/256 bytes with a byte token")
    }
    return out
}()

func fuzzTokenizer(_ data: UnsafePointer<UInt8>?, _ size: Int) -> Int32 {
    guard let d = data, size >= 1 else { return 0 }
    let s = subjects[Int(d[0] & 0x0F) % subjects.count]
    let parseSpecial = d[0] & 0x10 != 0
    let text = String(decoding: UnsafeBufferPointer(start: d + 1, count: size - 1), as: UTF8.self)
    _ = Fuzz.checkTokenizer(s.tok, text, parseSpecial: parseSpecial, what: s.name)
    let ids = s.tok.encode(text, addBOS: false, addEOS: false, parseSpecial: parseSpecial)
    let isSPM = s.tok.model == .sentencePiece
    // SentencePiece (as llama.cpp) puts a space before the text that follows an added token.
    let defined = text.utf8.allSatisfy { s.covered[Int($0)] } && !s.stripsSpaces
        && (!isSPM || (!text.unicodeScalars.contains("\u{2581}") && ids.allSatisfy { s.tok.kind($0) == .normal || s.tok.kind($0) == .byte }))
    if defined {
        let back: String
        do { back = try s.tok.decode(ids) } catch { Fuzz.fail("\(s.name): decode failed: \(error)") }
        Fuzz.check(Array(back.utf8) == Array(text.utf8),
                   "\(s.name) (parseSpecial \(parseSpecial)): \(Array(text.utf8)) → \(ids) → \(Array(back.utf8))")
    }
    return 0
}

exit(lorakit_fuzz_run(CommandLine.argc, CommandLine.unsafeArgv, { fuzzTokenizer($0, $1) }))
