// Fuzz target hf-config: a Hugging Face model folder's config.json, through
// `LlamaModel.load(path:)` on a folder.
//
// Input: the bytes of config.json. It is placed in three folders beside the tiny fixtures' weights
// (single file f32, tied embeddings bf16, two shards with model.safetensors.index.json), with the
// tokenizer files of Fixtures/train/model in the first. Properties checked when a folder loads: the
// config's numbers validate, the weights lie inside their maps, and two tokens run through a context.
import LoRAKit
import FuzzSupport
import FuzzDriver
#if canImport(Glibc)
import Glibc
#endif


let folders: [String] = {
    let fx = Fuzz.fixtures + "/model"
    let layouts: [(String, [String])] = [
        ("tiny-llama-hf", ["model.safetensors"]),
        ("tiny-llama-hf-tied-bf16", ["model.safetensors"]),
        ("tiny-llama-hf-sharded", ["model.safetensors.index.json", "model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"]),
    ]
    var out: [String] = []
    for (i, (name, files)) in layouts.enumerated() {
        let d = Fuzz.folder("hf\(i)")
        for f in files { symlink(fx + "/" + name + "/" + f, d + "/" + f) }
        if i == 0 {
            for f in ["tokenizer.json", "tokenizer_config.json"] {
                symlink(Fuzz.fixtures + "/train/model/" + f, d + "/" + f)
            }
        }
        out.append(d)
    }
    return out
}()

func fuzzHFConfig(_ data: UnsafePointer<UInt8>?, _ size: Int) -> Int32 {
    let input = Fuzz.buffer(data, size)
    for d in folders {
        Fuzz.write(input, to: d + "/config.json")
        guard let m = try? LlamaModel.load(path: d) else { continue }
        do { try m.config.validate(source: d) } catch { Fuzz.fail("a loaded config does not validate: \(error)") }
        Fuzz.checkTensor(m.tokenEmbedding, "embed_tokens")
        Fuzz.checkTensor(m.output, "lm_head")
        for (l, layer) in m.layers.enumerated() {
            for (k, t) in layer.linear.enumerated() { Fuzz.checkTensor(t, "layer \(l) linear \(k)") }
        }
        Fuzz.forward(m, what: "model of \(d)")
    }
    return 0
}

exit(lorakit_fuzz_run(CommandLine.argc, CommandLine.unsafeArgv, { fuzzHFConfig($0, $1) }))
