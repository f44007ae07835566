// Fuzz target jsonl: a JSONL training file, through `TrainDataset.load(path:encoder:options:)` with the
// tokenizer and ChatML template of the tiny training fixture (Fixtures/train/model).
//
// Input: the bytes of a .jsonl file. The data options come from the input's length (so a mutation that
// changes the length also tries other options): seq ∈ {2, 5, 16, 256}, packing, completion-only loss and
// truncation on or off. Properties checked when the file loads:
// - every row has one target flag per token, 1...seq tokens (packed rows: exactly seq except the last),
//   no target on its first token, at least one target, and ids inside the vocabulary;
// - an epoch of shuffled batches visits every row exactly once; the iterator state survives a JSON round
//   trip and a restored iterator continues with the same batches.
import LoRAKit
import FuzzSupport
import FuzzDriver
#if canImport(Glibc)
import Glibc
#endif

let model = Fuzz.loadModel("train/model")
let encoder: TrainEncoder = {
    do { return try TrainEncoder(model: model) } catch { fatalError("fuzz: \(error)") }
}()
let path = Fuzz.scratch + "/train.jsonl"

func fuzzJSONL(_ data: UnsafePointer<UInt8>?, _ size: Int) -> Int32 {
    let input = Fuzz.buffer(data, size)
    Fuzz.write(input, to: path)
    let seqs = [2, 5, 16, 256]
    let opts = TrainDataOptions(seq: seqs[size % 4], completionOnlyLoss: (size / 4) % 2 == 0,
                                truncation: (size / 8) % 2 == 0 ? .keepFirst : .error, packing: (size / 16) % 2 == 1)
    let parsed = try? TrainRecord.parseJSONL(Array(input), path: path)
    if let p = parsed {
        for (a, b) in zip(p, p.dropFirst()) { Fuzz.check(a.line < b.line, "record lines \(a.line), \(b.line) are not increasing") }
    }
    guard let ds = try? TrainDataset.load(path: path, encoder: encoder, options: opts) else { return 0 }
    Fuzz.check(parsed != nil, "the dataset loaded but parseJSONL refused the file")
    Fuzz.check(ds.recordCount == parsed!.count, "recordCount \(ds.recordCount) vs \(parsed!.count) records")
    let vocab = model.config.vocabSize
    for (k, e) in ds.examples.enumerated() {
        Fuzz.check(e.tokens.count == e.isTarget.count, "row \(k): \(e.tokens.count) tokens, \(e.isTarget.count) flags")
        Fuzz.check(e.tokens.count >= 1 && e.tokens.count <= opts.seq, "row \(k): \(e.tokens.count) tokens with seq \(opts.seq)")
        Fuzz.check(!e.isTarget[0], "row \(k): its first token is a target")
        Fuzz.check(e.targetCount >= 1, "row \(k): no target")
        Fuzz.check(e.tokens.allSatisfy { $0 >= 0 && Int($0) < vocab }, "row \(k): a token id outside the vocabulary")
        if opts.packing && k < ds.examples.count - 1 {
            Fuzz.check(e.tokens.count == opts.seq, "packed row \(k) of \(ds.examples.count): \(e.tokens.count) tokens, seq \(opts.seq)")
        }
    }
    do {
        let n = ds.examples.count
        var it = try TrainDataIterator(examples: ds.examples, batchSize: 3, shuffle: true, seed: UInt64(size))
        var seen = [Int](repeating: 0, count: n)
        for _ in 0..<it.batchesPerEpoch {
            let b = it.next()
            Fuzz.check(b.epoch == 0, "epoch \(b.epoch) inside the first epoch")
            for i in b.exampleIndices { seen[i] += 1 }
            Fuzz.check(b.predictedCount == b.targets.reduce(0) { $0 + $1.filter { $0 }.count }, "predictedCount is not the number of targets")
        }
        Fuzz.check(seen.allSatisfy { $0 == 1 }, "an epoch did not visit every row exactly once")
        _ = it.next()
        let state = try TrainDataIteratorState(json: JSON.parse(JSON.serialize(it.state.json)))
        Fuzz.check(state == it.state, "iterator state changed in a JSON round trip")
        var resumed = try TrainDataIterator(examples: ds.examples, batchSize: 3, shuffle: true, seed: UInt64(size))
        try resumed.restore(state)
        for _ in 0..<3 { Fuzz.check(resumed.next() == it.next(), "a restored iterator gives other batches") }
    } catch {
        Fuzz.fail("iterating a loaded dataset failed: \(error)")
    }
    return 0
}

exit(lorakit_fuzz_run(CommandLine.argc, CommandLine.unsafeArgv, { fuzzJSONL($0, $1) }))
