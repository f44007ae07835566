import ArgumentParser
import LoRAKit
#if canImport(Glibc)
import Glibc
#endif

struct BenchCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "bench",
        abstract: "Measure kernels and models (figures for BENCHMARKS.md; not a test).",
        subcommands: [BenchGEMM.self, BenchGenerate.self, BenchTrain.self, BenchBatch.self, BenchPlot.self]
    )
}

func nowSeconds() -> Double {
    var ts = timespec()
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return Double(ts.tv_sec) + Double(ts.tv_nsec) * 1e-9
}

func fillRandom(_ p: UnsafeMutablePointer<Float>, _ n: Int, seed: UInt64) {
    var rng = SplitMix64(seed: seed)
    for i in 0..<n { p[i] = rng.nextFloat() * 2 - 1 }
}

struct BenchGEMM: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "gemm",
        abstract: "C[M×N] = A[M×K] · B[K×N] with f32 A and B f32 (or a quantized weight Wᵀ with --dtype).")

    @Option(help: "Rows of A and C.") var m: Int = 512
    @Option(help: "Columns of B and C.") var n: Int = 1536
    @Option(help: "Inner dimension.") var k: Int = 576
    @Option(help: "Threads (default: all cores).") var threads: Int = ThreadPool.hardwareConcurrency
    @Option(help: "Storage type of B: f32, f16, bf16, q8_0, q4_0, q4_1. Quantized B is a weight [N, K] used transposed.")
    var dtype: String = "f32"
    @Option(help: "Minimum seconds to run.") var seconds: Double = 1.0
    @Option(help: "A CBLAS library (e.g. numpy's OpenBLAS) to time beside ours call by call, alternating, with the same threads (f32 only); reports the median of the per-pair speed ratios.")
    var blas: String?
    @Flag(help: "Print JSON.") var json = false

    func run() throws {
        guard m > 0, n > 0, k > 0 else { throw ValidationError("sizes must be positive") }
        if let blas {
            guard dtype == "f32", m > 1 else { throw ValidationError("--blas compares f32 products with m > 1 only") }
            return try compareBLAS(path: blas)
        }
        guard let dt = DType(name: dtype) else { throw ValidationError("unknown dtype \(dtype)") }
        let pool = ThreadPool(threads: threads)
        let a = try Tensor(zeros: [m, k])
        let c = try Tensor(zeros: [m, n])
        fillRandom(a.f32, m * k, seed: 1)
        let bOperand: GEMMRight
        let bTensor: Tensor
        if dt == .f32 && m > 1 {
            bTensor = try Tensor(zeros: [k, n])
            fillRandom(bTensor.f32, k * n, seed: 2)
            bOperand = .f32(UnsafePointer(bTensor.f32), ld: n)
        } else {
            let w = try Tensor(zeros: [n, k])
            fillRandom(w.f32, n * k, seed: 2)
            bTensor = try w.converted(to: dt)
            bOperand = .weight(UnsafeRawPointer(bTensor.rawPointer), dtype: dt, rows: n, cols: k, transposed: true)
        }
        let run = {
            if m == 1 {
                try matVec(weight: bTensor, x: UnsafePointer(a.f32), y: c.f32, pool: pool)
            } else {
                try GEMM.multiply(m: m, n: n, k: k, a: GEMMLeft(UnsafePointer(a.f32), rowStride: k), b: bOperand,
                                  c: c.f32, ldc: n, pool: pool)
            }
        }
        try run()  // warm-up
        var iters = 0
        let t0 = nowSeconds()
        var t = t0
        repeat {
            try run()
            iters += 1
            t = nowSeconds()
        } while t - t0 < seconds
        let per = (t - t0) / Double(iters)
        let gflops = 2.0 * Double(m) * Double(n) * Double(k) / per / 1e9
        let bBytes = Double(try Tensor.byteCount(shape: [n, k], dtype: dt))
        let gbps = bBytes / per / 1e9
        if json {
            printJSON(.object([
                ("m", .number(Double(m))), ("n", .number(Double(n))), ("k", .number(Double(k))),
                ("dtype", .string("\(dt)")), ("threads", .number(Double(pool.activeCount))),
                ("seconds_per_call", .number(per)), ("gflops", .number(gflops)), ("weight_gbps", .number(gbps)),
            ] + kernelPathFields()))
        } else {
            print("gemm \(m)x\(k)x\(n) \(dt) threads=\(pool.activeCount): \(String(format6(gflops))) GFLOP/s, weights read at \(format6(gbps)) GB/s; \(KernelPath.summary)")
        }
    }
}

/// The kernel paths of this build on this machine, as JSON fields (every bench result carries them).
func kernelPathFields() -> [(String, JSONValue)] {
    [("kernel_path", .string(KernelPath.vector)), ("gemm_tile", .string(KernelPath.gemmTile)),
     ("qdot_path", .string(KernelPath.qdot))]
}

extension BenchGEMM {
    /// `--blas`: alternate one call of ours and one of the library's (which goes first alternates), until
    /// `seconds` have passed; per-call GFLOP/s medians and the median (min, max) of the per-pair ratios.
    func compareBLAS(path: String) throws {
        let pool = ThreadPool(threads: threads)
        let lib = try LoadedBLAS(path: path, threads: pool.activeCount)
        let a = try Tensor(zeros: [m, k]), b = try Tensor(zeros: [k, n])
        let c = try Tensor(zeros: [m, n]), c2 = try Tensor(zeros: [m, n])
        fillRandom(a.f32, m * k, seed: 1)
        fillRandom(b.f32, k * n, seed: 2)
        func ours() throws {
            try GEMM.multiply(m: m, n: n, k: k, a: GEMMLeft(UnsafePointer(a.f32), rowStride: k),
                              b: .f32(UnsafePointer(b.f32), ld: n), c: c.f32, ldc: n, pool: pool)
        }
        func theirs() { lib.multiply(m: m, n: n, k: k, a: a.f32, b: b.f32, c: c2.f32) }
        try ours(); theirs()  // warm-up
        var ourTimes: [Double] = [], theirTimes: [Double] = []
        let t0 = nowSeconds()
        repeat {
            let first = ourTimes.count % 2 == 0
            for side in (first ? [0, 1] : [1, 0]) {
                let s = nowSeconds()
                if side == 0 { try ours() } else { theirs() }
                let e = nowSeconds() - s
                if side == 0 { ourTimes.append(e) } else { theirTimes.append(e) }
            }
        } while nowSeconds() - t0 < seconds || ourTimes.count < 3
        // The two results agree (a sanity check that both computed the same product).
        var maxDiff: Float = 0
        for i in 0..<(m * n) { maxDiff = max(maxDiff, abs(c.f32[i] - c2.f32[i])) }
        let flop = 2.0 * Double(m) * Double(n) * Double(k)
        let ratios = zip(ourTimes, theirTimes).map { $1 / $0 }
        let ourG = flop / median(ourTimes) / 1e9, theirG = flop / median(theirTimes) / 1e9
        if json {
            printJSON(.object([
                ("m", .number(Double(m))), ("n", .number(Double(n))), ("k", .number(Double(k))),
                ("threads", .number(Double(pool.activeCount))), ("pairs", .number(Double(ratios.count))),
                ("gflops", .number(ourG)), ("blas_gflops", .number(theirG)),
                ("ratio_median", .number(median(ratios))), ("ratio_min", .number(ratios.min()!)),
                ("ratio_max", .number(ratios.max()!)), ("blas", .string(lib.name)),
                ("max_abs_difference", .number(Double(maxDiff))),
            ] + kernelPathFields()))
        } else {
            print("gemm \(m)x\(k)x\(n) f32 threads=\(pool.activeCount), \(ratios.count) alternating pairs: LoRAKit \(format6(ourG)) GFLOP/s, BLAS \(format6(theirG)) GFLOP/s (medians); ratio median \(format6(median(ratios))) (min \(format6(ratios.min()!)), max \(format6(ratios.max()!))); max |difference| \(maxDiff); \(KernelPath.summary); BLAS: \(lib.name)")
        }
    }
}

func format6(_ x: Double) -> String {
    let r = (x * 100).rounded() / 100
    return "\(r)"
}

struct BenchGenerate: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "generate",
        abstract: "Prefill and decode speed on a model, and peak memory (compare with llama-bench -p/-n).",
        discussion: """
        With --compare-adapters (and --lora-adapters N ≥ 1) the base model and the model with the N adapters \
        attached are measured in this one process on the same context, interleaved: every round evaluates the \
        same prompt once with the adapters detached and once attached, then for every decode step evaluates \
        the step's token at the same position both ways (truncating the cache in between; which goes first \
        alternates), detaching and attaching the adapters as needed (outside the timed calls). A round's ratio \
        is base time / adapted time over its steps (= adapted/base tokens/s); the median and spread of the \
        per-round ratios are reported. Load from other processes hits both halves of a pair alike, so this is \
        far steadier than comparing separate runs.
        """)
    @Option(help: "GGUF file or Hugging Face folder.") var model: String
    @Option(help: "Prompt tokens (evaluated as one batch).") var promptTokens: Int = 128
    @Option(help: "Tokens generated one at a time after the prompt.") var genTokens: Int = 64
    @Option(help: "Threads (default: all cores).") var threads: Int = ThreadPool.hardwareConcurrency
    @Option(help: "Repetitions (the best is reported, as llama-bench reports a mean; see --json fields).") var repeats: Int = 3
    @Option(help: "Attach this many random LoRA adapters (stacked) to measure their cost.") var loraAdapters: Int = 0
    @Option(help: "Rank of the random adapters.") var loraRank: Int = 8
    @Option(help: "Targets of the random adapters (e.g. q,v or all-linear).") var loraTargets: String = "q,v"
    @Flag(help: "Measure the base model and the adapted one interleaved in this process and report per-round speed ratios (needs --lora-adapters ≥ 1).")
    var compareAdapters = false
    @Option(help: "Type of the measured adapters: lora, or a plugin adapter type (ia3, dora, …; rank and targets as for LoRA).")
    var adapterType: String = "lora"
    @Flag(help: "With --compare-adapters: the base side has one r=--lora-rank LoRA on the same targets attached (a plugin type vs LoRA).")
    var baselineLora = false
    @OptionGroup var plugins: PluginOption
    @OptionGroup var kv: KVTypeOption
    @Option(help: "Rounds (prompt + decode steps, each measured base and adapted) with --compare-adapters.")
    var rounds: Int = 8
    @Flag(help: "Print JSON.") var json = false
    @Flag(help: "After the timed runs, decode --gen-tokens tokens after the prompt once more with a profile attached and report where each token's time goes: base mat-vecs, adapters, attention, norms, RoPE, residual adds, SwiGLU, output head, sampling, the rest; thread hand-outs per token and their estimated cost.")
    var profile = false

    func run() throws {
        try runReporting {
            guard promptTokens >= 1, genTokens >= 0, repeats >= 1, rounds >= 1, loraAdapters >= 0 else {
                throw LKError.invalidArgument("sizes must be positive")
            }
            if compareAdapters && (loraAdapters < 1 || genTokens < 1) {
                throw LKError.invalidArgument("--compare-adapters needs --lora-adapters 1 or more and --gen-tokens 1 or more")
            }
            if baselineLora && !compareAdapters { throw LKError.invalidArgument("--baseline-lora needs --compare-adapters") }
            try plugins.load()
            let m = try loadModel(model)
            let ctx = try LlamaContext(model: m, maxPositions: promptTokens + genTokens + 1, threads: threads,
                                       kvType: kv.kvType)
            var attachSeconds: [Double] = [], detachSeconds: [Double] = [], swapSeconds: [Double] = []
            var made: [AnyAdapter] = [], baseline: [AnyAdapter] = []
            var attached = false
            /// Attach or detach all adapters (and the other way round the baseline's), recording the time per
            /// measured adapter.
            func setAttached(_ on: Bool) throws(LKError) {
                if on == attached { return }
                if on { for a in baseline { try ctx.detach(a) } }
                let t0 = monotonicSeconds()
                if on { for a in made { try ctx.attach(a) } } else { for a in made { try ctx.detach(a) } }
                let per = (monotonicSeconds() - t0) / Double(made.count)
                if !on { for a in baseline { try ctx.attach(a) } }
                if on { attachSeconds.append(per) } else { detachSeconds.append(per) }
                attached = on
            }
            if loraAdapters > 0 {
                var cfg = LoRAConfig(rank: loraRank, alpha: Float(2 * loraRank))
                cfg.targets = try LoRAConfig.parseTargets(loraTargets)
                for i in 0...loraAdapters {
                    made.append(try makeBenchAdapter(type: adapterType, model: m, config: cfg, seed: UInt64(i + 1),
                                                      name: "bench\(i)"))
                }
                if baselineLora {
                    baseline = [try makeBenchAdapter(type: "lora", model: m, config: cfg, seed: 99, name: "baseline")]
                    for a in baseline { try ctx.attach(a) }
                }
                // The last one is the spare for the swap measurement.
                let spare = made.removeLast()
                // Hot-swap cost: attach all, detach all, a few times; swap the last for the spare (detach +
                // attach) a few times; then leave them attached.
                for _ in 0..<5 {
                    try setAttached(true)
                    for (out, inn) in [(made[made.count - 1], spare), (spare, made[made.count - 1])] {
                        let t0 = monotonicSeconds()
                        try ctx.detach(out)
                        try ctx.attach(inn)
                        swapSeconds.append(monotonicSeconds() - t0)
                    }
                    try setAttached(false)
                }
                try setAttached(true)
            }
            // Deterministic pseudo-random prompt tokens (as llama-bench does), avoiding control tokens.
            var rng = SplitMix64(seed: 42)
            let vocab = m.config.vocabSize
            let prompt: [Int32] = (0..<promptTokens).map { _ in Int32(100 + Int(rng.next() % UInt64(vocab - 200))) }
            var prefill: [Double] = [], decode: [Double] = []
            var basePrefill: [Double] = [], baseDecode: [Double] = []
            var decodeRatios: [Double] = [], prefillRatios: [Double] = []
            if compareAdapters {
                // Warm-up: one prompt each way.
                for on in [true, false] {
                    try setAttached(on)
                    ctx.reset()
                    _ = try ctx.evaluate(.tokens(prompt))
                }
                for r in 0..<rounds {
                    // Prompt, both ways (base first on even rounds); decode continues from the adapted one.
                    var pTime = (base: 0.0, adapted: 0.0)
                    var logits: [Float] = []
                    for on in (r % 2 == 0 ? [false, true] : [true, false]) {
                        try setAttached(on)
                        ctx.reset()
                        let t0 = monotonicSeconds()
                        let l = try ctx.evaluate(.tokens(prompt))
                        let dt = monotonicSeconds() - t0
                        if on { pTime.adapted = dt; logits = l } else { pTime.base = dt }
                    }
                    // Decode steps: each token at the same position both ways, starting with the current
                    // state (so the order alternates per step and there is one attach or detach per step);
                    // the adapted logits pick the next token. (Which way the cache was filled does not
                    // change the work.)
                    var dTime = (base: 0.0, adapted: 0.0)
                    for _ in 0..<genTokens {
                        let next = Sampler.argmax(logits)
                        let pos = ctx.position
                        for (k, on) in [attached, !attached].enumerated() {
                            try setAttached(on)
                            if k == 1 { try ctx.truncate(to: pos) }
                            let t0 = monotonicSeconds()
                            let l = try ctx.evaluate(.tokens([next]))
                            let dt = monotonicSeconds() - t0
                            if on { dTime.adapted += dt; logits = l } else { dTime.base += dt }
                        }
                    }
                    basePrefill.append(Double(promptTokens) / pTime.base)
                    prefill.append(Double(promptTokens) / pTime.adapted)
                    baseDecode.append(Double(genTokens) / dTime.base)
                    decode.append(Double(genTokens) / dTime.adapted)
                    prefillRatios.append(pTime.base / pTime.adapted)
                    decodeRatios.append(dTime.base / dTime.adapted)
                }
                try setAttached(true)
            } else {
                for _ in 0..<repeats {
                    ctx.reset()
                    let t0 = monotonicSeconds()
                    var logits = try ctx.evaluate(.tokens(prompt))
                    let t1 = monotonicSeconds()
                    for _ in 0..<genTokens {
                        let next = Sampler.argmax(logits)
                        logits = try ctx.evaluate(.tokens([next]))
                    }
                    let t2 = monotonicSeconds()
                    prefill.append(Double(promptTokens) / (t1 - t0))
                    if genTokens > 0 { decode.append(Double(genTokens) / (t2 - t1)) }
                }
            }
            let pMean = prefill.reduce(0, +) / Double(prefill.count)
            let dMean = decode.isEmpty ? 0 : decode.reduce(0, +) / Double(decode.count)
            let prof = profile && genTokens > 0 ? try decodeProfile(ctx, prompt: prompt, weightBytes: m.weightBytes) : nil
            let rss = peakRSSBytes()
            func stat(_ v: [Double], _ f: ([Double]) -> Double) -> JSONValue { v.isEmpty ? .null : .number(f(v)) }
            if json {
                var fields: [(String, JSONValue)] = [
                    ("model", .string(model)), ("threads", .number(Double(ctx.pool.activeCount))),
                    ("prompt_tokens", .number(Double(promptTokens))), ("gen_tokens", .number(Double(genTokens))),
                    ("prefill_tokens_per_s", .number(pMean)), ("decode_tokens_per_s", .number(dMean)),
                    ("prefill_runs", .array(prefill.map { .number($0) })), ("decode_runs", .array(decode.map { .number($0) })),
                    ("peak_rss_bytes", .number(Double(rss))),
                    ("lora_adapters", .number(Double(loraAdapters))), ("lora_rank", .number(Double(loraRank))),
                    ("lora_targets", .string(loraTargets)), ("adapter_type", .string(adapterType)),
                    ("baseline", .string(baselineLora ? "lora r=\(loraRank) \(loraTargets)" : "none")),
                    // Per adapter: the best, the median and the worst of all attach/detach calls made.
                    ("attach_seconds", stat(attachSeconds) { $0.min()! }),
                    ("detach_seconds", stat(detachSeconds) { $0.min()! }),
                    ("attach_seconds_median", stat(attachSeconds, median)),
                    ("detach_seconds_median", stat(detachSeconds, median)),
                    ("attach_seconds_max", stat(attachSeconds) { $0.max()! }),
                    ("detach_seconds_max", stat(detachSeconds) { $0.max()! }),
                    // Detach one adapter and attach another in its place (N − 1 others stay attached).
                    ("swap_seconds_median", stat(swapSeconds, median)),
                    ("swap_seconds_max", stat(swapSeconds) { $0.max()! }),
                    ("activations", .string("\(ctx.activations)")),
                    // The KV cache holds keys and values for every layer.
                    ("kv_cache_bytes_per_token", .number(Double(m.config.kvBytesPerPosition(ctx.kvType)))),
                    ("kv_cache_dtype", .string(ctx.kvType.rawValue)),
                ] + kernelPathFields()
                if let p = prof { fields.append(("profile", p.json)) }
                if compareAdapters {
                    func spread(_ v: [Double]) -> JSONValue {
                        v.isEmpty ? .null : .object([("min", .number(v.min()!)), ("median", .number(median(v))),
                                                     ("max", .number(v.max()!))])
                    }
                    fields += [
                        ("rounds", .number(Double(rounds))),
                        ("base_prefill_runs", .array(basePrefill.map { .number($0) })),
                        ("base_decode_runs", .array(baseDecode.map { .number($0) })),
                        ("base_decode_tokens_per_s", .number(median(baseDecode))),
                        ("adapted_decode_tokens_per_s", .number(median(decode))),
                        ("decode_ratios", .array(decodeRatios.map { .number($0) })),
                        ("decode_ratio", spread(decodeRatios)),
                        ("prefill_ratios", .array(prefillRatios.map { .number($0) })),
                        ("prefill_ratio", spread(prefillRatios)),
                    ]
                }
                printJSON(.object(fields))
            } else if compareAdapters {
                func f3(_ x: Double) -> String { "\((x * 1000).rounded() / 1000)" }
                print("decode adapted/base over \(rounds) rounds: median \(f3(median(decodeRatios))) (min \(f3(decodeRatios.min()!)), max \(f3(decodeRatios.max()!))); base \(format6(median(baseDecode))) tok/s, adapted \(format6(median(decode))) tok/s; prefill ratio median \(f3(median(prefillRatios))); attach \(f3(median(attachSeconds) * 1000)) ms, detach \(f3(median(detachSeconds) * 1000)) ms, swap \(f3(median(swapSeconds) * 1000)) ms; \(KernelPath.summary), activations \(ctx.activations)")
            } else {
                print("prefill \(promptTokens) tokens: \(format6(pMean)) tok/s; decode \(genTokens) tokens: \(format6(dMean)) tok/s; peak RSS \(rss / 1_048_576) MiB; \(KernelPath.summary), activations \(ctx.activations), KV cache \(ctx.kvType.rawValue)")
            }
            if let p = prof, !json { print(p.text) }
        }
    }
}

/// A per-token decode profile (`bench generate --profile`).
struct DecodeProfileReport {
    let json: JSONValue
    let text: String
}

/// Decode greedily after `prompt` until the context is full, with a `DecodeProfile` attached, then time
/// empty thread hand-outs to estimate what the profile's hand-outs cost. `header` starts the report (default:
/// "decode profile: N tokens after a P-token prompt").
func decodeProfile(_ ctx: LlamaContext, prompt: [Int32], weightBytes: Int,
                   header: String? = nil) throws(LKError) -> DecodeProfileReport {
    let n = ctx.maxPositions - prompt.count - 1
    ctx.reset()
    var logits = try ctx.evaluate(.tokens(prompt))
    let p = DecodeProfile()
    ctx.profile = p
    defer { ctx.profile = nil }
    for _ in 0..<max(n, 1) {
        let s0 = monotonicSeconds()
        let next = Sampler.argmax(logits)
        p.addOutside(.sampling, seconds: monotonicSeconds() - s0)
        logits = try ctx.evaluate(.tokens([next]))
    }
    ctx.profile = nil
    return profileReport(p, pool: ctx.pool, units: p.tokens, unit: "token", weightBytes: weightBytes,
                         header: header ?? "decode profile: \(p.tokens) tokens after a \(prompt.count)-token prompt")
}

/// A profile's parts per unit (a decoded token, or a batch step of several sequences), with the weights'
/// read speed and the estimated cost of the thread hand-outs (an empty hand-out timed on `pool`).
func profileReport(_ p: DecodeProfile, pool: ThreadPool, units: Int, unit: String, weightBytes: Int,
                   header: String) -> DecodeProfileReport {
    var hs: [Double] = []
    for _ in 0..<5000 {
        let t0 = monotonicSeconds()
        pool.run { _, _ in }
        hs.append(monotonicSeconds() - t0)
    }
    let handOut = pool.activeCount > 1 ? median(hs) : 0
    let tokens = Double(max(units, 1))
    let perToken = p.wallSeconds / tokens
    let parts = DecodeProfile.Part.allCases.map { ($0, p.seconds[$0.rawValue] / tokens) }
    let rest = perToken - parts.reduce(0) { $0 + $1.1 }
    let handOutsPerToken = Double(p.handOuts) / tokens
    let sync = handOutsPerToken * handOut
    let readSeconds = (p.seconds[DecodeProfile.Part.baseProducts.rawValue] + p.seconds[DecodeProfile.Part.head.rawValue]) / tokens
    let gbps = Double(weightBytes) / readSeconds / 1e9
    func pad(_ s: String, _ n: Int) -> String { String(repeating: " ", count: max(0, n - s.count)) + s }
    func left(_ s: String, _ n: Int) -> String { s + String(repeating: " ", count: max(0, n - s.count)) }
    func ms(_ s: Double) -> String { pad(fixed(s * 1000, 3), 7) + " ms" }
    func pct(_ s: Double) -> String { pad(fixed(100 * s / perToken, 1), 5) + "%" }
    var lines = ["\(header), \(pool.activeCount) threads: \(fixed(perToken * 1000, 3)) ms/\(unit) (\(fixed(1 / perToken, 1)) \(unit)s/s)"]
    for (part, s) in parts { lines.append("  \(left(part.label, 20)) \(ms(s))  \(pct(s))") }
    lines.append("  \(left("rest (checks, calls)", 20)) \(ms(rest))  \(pct(rest))")
    lines.append("  weights read by the mat-vecs and the head: \(fixed(Double(weightBytes) / 1e6, 1)) MB/\(unit) at \(fixed(gbps, 2)) GB/s")
    lines.append("  thread hand-outs: \(fixed(handOutsPerToken, 0)) per \(unit); an empty hand-out takes \(fixed(handOut * 1e6, 2)) µs: ≈ \(fixed(sync * 1000, 3)) ms/\(unit) (\(fixed(100 * sync / perToken, 1))%) of synchronisation, inside the parts above")
    let json: JSONValue = .object([
        ("\(unit)s", .number(Double(units))), ("ms_per_\(unit)", .number(perToken * 1000)),
        ("parts_ms_per_\(unit)", .object(parts.map { ("\($0.0)", .number($0.1 * 1000)) } + [("rest", .number(rest * 1000))])),
        ("weight_bytes_per_\(unit)", .number(Double(weightBytes))), ("weight_read_gbps", .number(gbps)),
        ("hand_outs_per_\(unit)", .number(handOutsPerToken)), ("hand_out_seconds", .number(handOut)),
        ("sync_ms_per_\(unit)_estimate", .number(sync * 1000)),
    ])
    return DecodeProfileReport(json: json, text: lines.joined(separator: "\n"))
}

/// An adapter the generate bench attaches: LoRA (random A and B) or of a plugin type (created by its type's
/// own initialisation: the values do not change the work).
func makeBenchAdapter(type: String, model: LlamaModel, config: LoRAConfig, seed: UInt64, name: String) throws(LKError) -> AnyAdapter {
    if type == "lora" {
        return .lora(try LoRAAdapter.create(for: model, config: config, initialization: .random(seed: seed), name: name))
    }
    let t = try PluginAdapter.resolveType(named: type)
    let options = try PluginAdapter.peftOptions(type: t, targets: config.targets, layers: nil, rank: config.rank,
                                                alpha: config.alpha, useRSLoRA: false, extra: nil)
    return .plugin(try PluginAdapter.create(type: t, model: model, options: options, seed: seed, name: name))
}

/// The median (mean of the two middle values for an even count; 0 for none).
func median(_ v: [Double]) -> Double {
    if v.isEmpty { return 0 }
    let s = v.sorted()
    return s.count % 2 == 1 ? s[s.count / 2] : (s[s.count / 2 - 1] + s[s.count / 2]) / 2
}
