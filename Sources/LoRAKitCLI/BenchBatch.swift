import ArgumentParser
#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif
import LoRAKit

/// `lorakit bench batch`: aggregate decode tokens/s of a `BatchContext` serving many sequences with a
/// different LoRA adapter each, beside one sequence with one adapter (a `LlamaContext`, today's path) and
/// the same batch without adapters; and prefill tokens/s of a batch beside a single-sequence prefill.
/// Everything runs in one process; every round measures every case once, in a rotating order, and the
/// figures are medians over rounds (other processes' load hits the cases of a round alike).
///
/// Cases (a: one sequence, one adapter; b: N sequences, no adapter; c: N sequences, each its own adapter):
/// each prefills a random prompt (untimed), then decodes `--decode` greedy steps (timed; aggregate
/// tokens/s = sequences · steps / seconds). Prefill: N prompts in one batch step against one prompt on a
/// `LlamaContext` (tokens/s each).
struct BenchBatch: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "batch",
        abstract: "Multi-sequence, multi-adapter batch decoding and prefill speed (BatchContext).")
    @Option(help: "GGUF file or Hugging Face folder.") var model: String
    @Option(help: "Sequences of the batch cases (each with its own adapter in case c).") var sequences: Int = 8
    @Option(help: "LoRA rank of the adapters.") var rank: Int = 8
    @Option(help: "Target modules of the adapters.") var targets: String = "q,v"
    @Option(help: "Prompt tokens per sequence.") var prompt: Int = 64
    @Option(help: "Timed decode steps per case and round.") var decode: Int = 32
    @Option(help: "Rounds (the figures are medians over rounds).") var rounds: Int = 5
    @Option(help: "Threads (default: all cores).") var threads: Int = ThreadPool.hardwareConcurrency
    @Option(help: "Random seed (prompts, adapters).") var seed: UInt64 = 7
    @Flag(help: "Print JSON.") var json = false
    @OptionGroup var kv: KVTypeOption
    @Flag(help: "Time with the process's CPU time instead of the wall clock: with --threads 1 on a shared machine the time slices of other processes do not count (with more threads the pool's waiting would).")
    var cpuTime = false
    @Flag(help: "After the timed rounds, decode once more with a profile attached to (a)'s context and to (c)'s batch context, and report where a token's (a) and a step's (c) time goes.")
    var profile = false

    func run() throws {
        try runReporting {
            guard sequences >= 1, rank >= 1, prompt >= 1, decode >= 1, rounds >= 1 else {
                throw LKError.invalidArgument("bench batch: sequences, rank, prompt, decode and rounds must be ≥ 1")
            }
            let m = try loadModel(model)
            let c = m.config
            let n = sequences
            let positions = prompt + decode + 1
            guard positions <= c.contextLength else {
                throw LKError.invalidArgument("bench batch: prompt + decode (\(positions - 1)) exceeds the model's context of \(c.contextLength)")
            }
            var cfg = LoRAConfig(rank: rank, alpha: 2 * Float(rank))
            cfg.targets = try LoRAConfig.parseTargets(targets)
            let adapters = try (0...n).map { i throws(LKError) in
                try LoRAAdapter.create(for: m, config: cfg, initialization: .random(seed: seed &+ UInt64(i)), name: "a\(i)")
            }
            var rng = SplitMix64(seed: seed)
            let span = UInt64(c.vocabSize - 200)
            let prompts = (0..<n).map { _ in (0..<prompt).map { _ in Int32(100 + Int(rng.next() % span)) } }

            // (a) one sequence, one adapter: a LlamaContext, as one would serve it today.
            let single = try LlamaContext(model: m, maxPositions: positions, threads: threads, kvType: kv.kvType)
            try single.attach(adapters[n])
            // (b) and (c): batch contexts of n sequences.
            let plain = try BatchContext(model: m, maxSequences: n, maxPositions: positions, threads: threads, kvType: kv.kvType)
            let mixed = try BatchContext(model: m, maxSequences: n, maxPositions: positions, threads: threads, kvType: kv.kvType)
            let plainIDs = try (0..<n).map { _ throws(LKError) in try plain.addSequence() }
            let mixedIDs = try (0..<n).map { _ throws(LKError) in try mixed.addSequence() }
            for (i, id) in mixedIDs.enumerated() { try mixed.setAdapters([(adapters[i], 1)], for: id) }
            // Prefill comparison: a LlamaContext without adapters and the plain batch.
            let prefillSingle = try LlamaContext(model: m, maxPositions: positions, threads: threads, kvType: kv.kvType)

            let useCPU = cpuTime
            func timer() -> Double {
                if !useCPU { return nowSeconds() }
                var ts = timespec()
                clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts)
                return Double(ts.tv_sec) + Double(ts.tv_nsec) * 1e-9
            }
            func decodeSingle() throws(LKError) -> Double {
                single.reset()
                var logits = try single.evaluate(.tokens(prompts[0]))
                let t0 = timer()
                for _ in 0..<decode { logits = try single.evaluate(.tokens([Sampler.argmax(logits)])) }
                return Double(decode) / (timer() - t0)
            }
            func decodeBatch(_ b: BatchContext, _ ids: [Int]) throws(LKError) -> Double {
                for id in ids { try b.truncate(id, to: 0) }
                var logits = try b.step(ids.enumerated().map { ($1, prompts[$0]) })
                let t0 = timer()
                for _ in 0..<decode {
                    logits = try b.step(ids.enumerated().map { ($1, [Sampler.argmax(logits[$0])]) })
                }
                return Double(decode * ids.count) / (timer() - t0)
            }
            func prefillOne() throws(LKError) -> Double {
                prefillSingle.reset()
                let t0 = timer()
                _ = try prefillSingle.evaluate(.tokens(prompts[0]))
                return Double(prompt) / (timer() - t0)
            }
            func prefillBatch() throws(LKError) -> Double {
                for id in plainIDs { try plain.truncate(id, to: 0) }
                let t0 = timer()
                _ = try plain.step(plainIDs.enumerated().map { ($1, prompts[$0]) })
                return Double(prompt * n) / (timer() - t0)
            }
            // One untimed round warms caches, pages and the adapters' prepared panels.
            _ = try decodeSingle(); _ = try decodeBatch(plain, plainIDs); _ = try decodeBatch(mixed, mixedIDs)
            _ = try prefillOne(); _ = try prefillBatch()
            var a: [Double] = [], b: [Double] = [], cc: [Double] = [], p1: [Double] = [], pn: [Double] = []
            for r in 0..<rounds {
                for k in 0..<5 {
                    switch (k + r) % 5 {
                    case 0: a.append(try decodeSingle())
                    case 1: b.append(try decodeBatch(plain, plainIDs))
                    case 2: cc.append(try decodeBatch(mixed, mixedIDs))
                    case 3: p1.append(try prefillOne())
                    default: pn.append(try prefillBatch())
                    }
                }
            }
            let ma = median(a), mb = median(b), mc = median(cc), mp1 = median(p1), mpn = median(pn)
            var profiles: [DecodeProfileReport] = []
            if profile {
                // (a): its context holds prompt + decode + 1 positions, so `decodeProfile` decodes `decode` tokens.
                profiles.append(try decodeProfile(single, prompt: prompts[0], weightBytes: m.weightBytes,
                                                  header: "(a) profile: \(decode) tokens after a \(prompt)-token prompt"))
                let pc = DecodeProfile()
                for id in mixedIDs { try mixed.truncate(id, to: 0) }
                var many = try mixed.step(mixedIDs.enumerated().map { ($1, prompts[$0]) })
                mixed.profile = pc
                for _ in 0..<decode { many = try mixed.step(mixedIDs.enumerated().map { ($1, [Sampler.argmax(many[$0])]) }) }
                mixed.profile = nil
                profiles.append(profileReport(pc, pool: mixed.pool, units: pc.evaluations, unit: "step",
                                              weightBytes: m.weightBytes,
                                              header: "(c) profile: \(decode) steps of \(n) sequences after \(prompt)-token prompts"))
            }
            func runs(_ v: [Double]) -> JSONValue { .array(v.map { .number($0) }) }
            if json {
                printJSON(.object([
                    ("model", .string(model)), ("threads", .number(Double(plain.pool.activeCount))),
                    ("sequences", .number(Double(n))), ("rank", .number(Double(rank))), ("targets", .string(targets)),
                    ("prompt_tokens", .number(Double(prompt))), ("decode_steps", .number(Double(decode))),
                    ("rounds", .number(Double(rounds))), ("clock", .string(cpuTime ? "process_cpu" : "wall")),
                    ("kv_cache_dtype", .string(kv.kvType.rawValue)),
                    ("kv_cache_bytes_per_token", .number(Double(c.kvBytesPerPosition(kv.kvType)))),
                    ("decode_single_adapter_tokens_per_s", .number(ma)),
                    ("decode_batch_no_adapter_tokens_per_s", .number(mb)),
                    ("decode_batch_own_adapters_tokens_per_s", .number(mc)),
                    ("prefill_single_tokens_per_s", .number(mp1)), ("prefill_batch_tokens_per_s", .number(mpn)),
                    ("ratio_c_over_a", .number(mc / ma)), ("ratio_c_over_b", .number(mc / mb)),
                    ("ratio_prefill_batch_over_single", .number(mpn / mp1)),
                    ("runs", .object([("a", runs(a)), ("b", runs(b)), ("c", runs(cc)), ("prefill_single", runs(p1)),
                                      ("prefill_batch", runs(pn))])),
                ] + kernelPathFields() + (profiles.isEmpty ? [] : [("profiles", .array(profiles.map(\.json)))])))
            } else {
                func f(_ x: Double) -> String { "\((x * 10).rounded() / 10)" }
                func f3(_ x: Double) -> String { "\((x * 1000).rounded() / 1000)" }
                print("decode, aggregate tok/s (median of \(rounds) rounds, \(decode) steps, \(plain.pool.activeCount) threads\(cpuTime ? ", per CPU second" : ""), \(kv.kvType.rawValue) KV cache, \(KernelPath.summary)):")
                print("  (a) 1 sequence, 1 r=\(rank) \(targets) adapter (LlamaContext): \(f(ma))")
                print("  (b) \(n) sequences, no adapter (BatchContext):            \(f(mb))")
                print("  (c) \(n) sequences, each its own r=\(rank) \(targets) adapter:      \(f(mc))")
                print("  (c)/(a) = \(f3(mc / ma))  (issue 13 asks ≥ 4)")
                print("  (c)/(b) = \(f3(mc / mb))  (issue 13 asks ≥ 0.9)")
                print("KV cache: \(c.kvBytesPerPosition(kv.kvType) / 1024) KiB per position and sequence (\(kv.kvType.rawValue))")
                print("prefill tok/s: single LlamaContext \(prompt) tokens \(f(mp1)); batch of \(n) × \(prompt) tokens \(f(mpn)); batch/single per token = \(f3(mpn / mp1))")
                for p in profiles { print(p.text) }
            }
        }
    }
}
