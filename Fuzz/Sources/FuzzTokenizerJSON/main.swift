// Fuzz target tokenizer-json: a Hugging Face tokenizer.json, through `Tokenizer(tokenizerJSON:)`.
//
// Input: the bytes of tokenizer.json. Properties checked when it loads: every id `encode` returns for a
// few texts is inside the vocabulary, and decoding gives the concatenated token bytes.
import LoRAKit
import FuzzSupport
import FuzzDriver
#if canImport(Glibc)
import Glibc
#endif

let path = Fuzz.scratch + "/tokenizer.json"
let texts = ["Hello world", "<|im_start|>user\nHi there<|im_end|>\n", " a  b\t\n123 4567 x\u{00e9}\u{4e2d}\u{1F600}", "\u{FFFD}\u{0}"]

func fuzzTokenizerJSON(_ data: UnsafePointer<UInt8>?, _ size: Int) -> Int32 {
    Fuzz.write(Fuzz.buffer(data, size), to: path)
    guard let tok = try? Tokenizer(tokenizerJSON: path) else { return 0 }
    for t in texts {
        _ = Fuzz.checkTokenizer(tok, t, parseSpecial: true, what: "tokenizer.json")
        _ = Fuzz.checkTokenizer(tok, t, parseSpecial: false, what: "tokenizer.json")
    }
    return 0
}

exit(lorakit_fuzz_run(CommandLine.argc, CommandLine.unsafeArgv, { fuzzTokenizerJSON($0, $1) }))
