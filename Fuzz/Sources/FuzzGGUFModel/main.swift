// Fuzz target gguf-model: a GGUF model file, through the loader (`LlamaModel.load(path:)`).
//
// Input: the bytes of a .gguf file. Properties checked when it opens:
// - every tensor `GGUFFile.tensor(_:)` returns lies inside the memory map (checked explicitly: maps are
//   invisible to AddressSanitizer) and can be read whole; a tensor of a type LoRAKit does not support is
//   refused with `.unsupported`;
// - the tokenizer stored in the metadata, when it loads, gives ids inside its vocabulary and decodes them;
// - a model that loads runs two tokens through a context and returns one logit per vocabulary entry.
import LoRAKit
import FuzzSupport
import FuzzDriver
#if canImport(Glibc)
import Glibc
#endif

let path = Fuzz.scratch + "/model.gguf"
let texts = ["Hello world", " <|im_start|>user\nHi<|im_end|>\n", "x\u{00e9}\u{4e2d}\u{1F600} 123  \t\n", ""]

func fuzzGGUFModel(_ data: UnsafePointer<UInt8>?, _ size: Int) -> Int32 {
    Fuzz.write(Fuzz.buffer(data, size), to: path)
    if let f = try? GGUFFile(path: path) {
        for info in f.tensors {
            do {
                let t = try f.tensor(info.name)
                Fuzz.check(t.shape == info.shape, "tensor \(info.name): shape \(t.shape) differs from its info \(info.shape)")
                Fuzz.checkTensor(t, "tensor \(info.name)")
            } catch {
                Fuzz.check(info.dtype == nil, "tensor \(info.name) of a supported type (\(GGMLType.name(info.ggmlType))) passed the open checks but cannot be viewed: \(error)")
            }
        }
        if f.metadata["tokenizer.ggml.model"] != nil, let tok = try? Tokenizer(gguf: f) {
            for t in texts {
                _ = Fuzz.checkTokenizer(tok, t, parseSpecial: true, what: "GGUF tokenizer")
            }
        }
    }
    if let m = try? LlamaModel.load(path: path) {
        Fuzz.checkTensor(m.tokenEmbedding, "token_embd.weight")
        Fuzz.checkTensor(m.output, "output.weight")
        Fuzz.forward(m, what: "model")
        if let tok = m.tokenizer {
            Fuzz.check(tok.vocabSize <= m.config.vocabSize, "tokenizer vocabulary \(tok.vocabSize) > model vocabulary \(m.config.vocabSize)")
        }
    }
    return 0
}

exit(lorakit_fuzz_run(CommandLine.argc, CommandLine.unsafeArgv, { fuzzGGUFModel($0, $1) }))
