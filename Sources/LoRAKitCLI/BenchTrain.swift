import ArgumentParser
import LoRAKit
#if canImport(Glibc)
import Glibc
#endif

/// `lorakit bench train`: speed and peak memory of LoRA training steps on random token batches, the
/// LoRAKit side of bench/peft_train.py (PEFT + PyTorch on the same GGUF dequantized to f32).
///
/// Every step: zero the gradients, one forward + backward over a batch of `batch` rows of exactly `seq`
/// random tokens (every token after the first is a target), and an in-place AdamW update. The token
/// stream is the one bench/peft_train.py draws (SplitMix64 seeded with `--seed`, step-major, then row,
/// then token; ids 100 + next % (V − 200), so no control tokens), so both sides see the same batches and
/// their first-step losses (B = 0: the base model's loss) agree.
struct BenchTrain: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "train",
        abstract: "LoRA training speed (tokens/s) and peak memory on random batches (compare with bench/peft_train.py).")
    @Option(help: "GGUF file or Hugging Face folder.") var model: String
    @Option(help: "LoRA rank.") var rank: Int = 8
    @Option(help: "LoRA alpha.") var alpha: Float = 16
    @Option(help: "Target modules (e.g. q,v or all-linear).") var targets: String = "q,v"
    @Option(help: "Sequences per step.") var batch: Int = 4
    @Option(help: "Tokens per sequence.") var seq: Int = 128
    @Option(help: "Timed steps.") var steps: Int = 5
    @Option(help: "Untimed steps before the timed ones.") var warmupSteps: Int = 1
    @Option(help: "Threads (default: all cores).") var threads: Int = ThreadPool.hardwareConcurrency
    @Option(help: "Learning rate of the AdamW update.") var lr: Float = 2e-4
    @Option(help: "Seed of the random tokens (and of the adapter's A initialisation).") var seed: UInt64 = 42
    @Option(help: "Rows of the output head and loss computed at once (default: the trainer's).") var lossChunkRows: Int?
    @Option(help: "Vocabulary entries of the output head and loss computed at once; 0 = whole rows (default: the trainer's, \(LoRATrainer.defaultLossVocabBlock)).")
    var lossVocabBlock: Int?
    @OptionGroup var keptOption: KeepActivationsOption
    @Flag(help: "Also time every part of the timed steps (forward, backward, head, loss, optimizer) and print where the time goes.")
    var profile = false
    @Flag(help: "Print JSON.") var json = false

    func run() throws {
        try runReporting {
            guard rank >= 1, batch >= 1, seq >= 2, steps >= 1, warmupSteps >= 0 else {
                throw LKError.invalidArgument("bench train: rank, batch, steps must be ≥ 1, seq ≥ 2, warmup-steps ≥ 0")
            }
            let m = try loadModel(model)
            let c = m.config
            guard seq <= c.contextLength else {
                throw LKError.invalidArgument("bench train: seq \(seq) exceeds the model's context of \(c.contextLength)")
            }
            var cfg = LoRAConfig(rank: rank, alpha: alpha)
            cfg.targets = try LoRAConfig.parseTargets(targets)
            let adapter = try LoRAAdapter.create(for: m, config: cfg, initialization: .peft, seed: seed, name: "bench")
            let trainer = try LoRATrainer(model: m, adapter: adapter, threads: threads, dropout: 0)
            if let r = lossChunkRows {
                guard r >= 1 else { throw LKError.invalidArgument("bench train: loss-chunk-rows \(r) must be ≥ 1") }
                trainer.lossChunkRows = r
            }
            if let b = lossVocabBlock {
                guard b >= 0 else { throw LKError.invalidArgument("bench train: loss-vocab-block \(b) must be ≥ 0 (0: whole rows)") }
                trainer.lossVocabBlock = b
            }
            let kept = keptOption.keepActivations
            trainer.keptActivations = kept
            var params: [OptimizerParameter] = []
            for p in trainer.parameters {
                let (v, g) = try p.tensors()
                params.append(try OptimizerParameter(name: p.name, value: v, grad: g))
            }
            // torch.optim.AdamW's defaults (the peer's optimizer), no clipping.
            let opt = try AdamW(parameters: params, config: OptimizerConfig(lr: Double(lr), maxGradNorm: nil))
            let trainable = trainer.parameters.reduce(0) { $0 + $1.count }

            var rng = SplitMix64(seed: seed)
            let span = UInt64(c.vocabSize - 200)
            func nextBatch() -> [TrainSequence] {
                (0..<batch).map { _ in
                    let toks = (0..<seq).map { _ in Int32(100 + Int(rng.next() % span)) }
                    return TrainSequence(tokens: toks, isTarget: (0..<seq).map { $0 > 0 })
                }
            }

            let loadRSS = peakRSSBytes()
            let resetHWM = resetPeakRSS()
            var stepSeconds: [Double] = [], losses: [Double] = []
            let prof = TrainProfile()
            var optimizerSeconds = 0.0
            for s in 0..<(warmupSteps + steps) {
                let b = nextBatch()
                if profile && s == warmupSteps { trainer.profile = prof }
                let t0 = monotonicSeconds()
                trainer.zeroGradients()
                let tp = monotonicSeconds()
                let r = try trainer.pass(b, gradients: true, step: s)
                let tq = monotonicSeconds()
                try opt.step(lr: Double(lr))
                let t1 = monotonicSeconds()
                losses.append(r.meanNLL)
                if s >= warmupSteps {
                    stepSeconds.append(t1 - t0)
                    optimizerSeconds += (tp - t0) + (t1 - tq)
                }
            }
            trainer.profile = nil
            let total = stepSeconds.reduce(0, +)
            let tokensPerS = Double(batch * seq * steps) / total
            // The whole run's peak: ru_maxrss may follow the reset mark, so take the larger with the load's.
            let rss = max(peakRSSBytes(), loadRSS)
            let trainRSS = resetHWM ? vmHWMBytes() : nil
            let act = LoRATrainer.activationBytes(config: c, rows: batch * seq, maxRank: rank,
                                                  adapterModules: trainer.modules.count,
                                                  chunkRows: trainer.lossChunkRows, vocabBlock: trainer.lossVocabBlock,
                                                  kept: kept)
            let stepMs = stepSeconds.map { $0 * 1000 }
            let median = stepMs.sorted()[stepMs.count / 2]
            // The profile: per part, ms per step, share of the step and GFLOP/s where counted.
            var parts: [(String, Double, Double)] = []
            if profile {
                for p in TrainProfile.Part.allCases {
                    parts.append((p.label, prof.seconds[p.rawValue], prof.flops[p.rawValue]))
                }
                parts.append(("zero gradients + AdamW", optimizerSeconds, 0))
                parts.append(("not attributed", max(0, total - prof.totalSeconds - optimizerSeconds), 0))
            }
            if json {
                printJSON(.object([
                    ("model", .string(model)), ("threads", .number(Double(trainer.pool.activeCount))),
                    ("rank", .number(Double(rank))), ("alpha", .number(Double(alpha))), ("targets", .string(targets)),
                    ("batch", .number(Double(batch))), ("seq", .number(Double(seq))),
                    ("steps", .number(Double(steps))), ("warmup_steps", .number(Double(warmupSteps))),
                    ("trainable_parameters", .number(Double(trainable))),
                    ("tokens_per_s", .number(tokensPerS)),
                    ("step_ms", .array(stepMs.map { .number($0) })), ("step_ms_median", .number(median)),
                    ("loss_first", .number(losses.first!)), ("loss_last", .number(losses.last!)),
                    ("losses", .array(losses.map { .number($0) })),
                    ("peak_rss_bytes", .number(Double(rss))), ("peak_rss_mib", .number(Double(rss) / 1_048_576)),
                    ("peak_rss_after_load_bytes", .number(Double(loadRSS))),
                    ("peak_rss_training_bytes", trainRSS.map { .number(Double($0)) } ?? .null),
                    ("activation_bytes_estimate", .number(Double(act))),
                    ("loss_chunk_rows", .number(Double(trainer.lossChunkRows))),
                    ("loss_vocab_block", .number(Double(trainer.lossVocabBlock))),
                    ("kept_activations", .string(kept.rawValue)),
                ] + kernelPathFields() + (profile ? [("profile", .array(parts.map { p in
                    .object([("part", .string(p.0)), ("ms_per_step", .number(p.1 * 1000 / Double(steps))),
                             ("share", .number(p.1 / total)),
                             ("gflop_per_s", p.2 > 0 ? .number(p.2 / p.1 / 1e9) : .null)])
                }))] : [])))
            } else {
                print("train \(batch)×\(seq) r=\(rank) \(targets) threads=\(trainer.pool.activeCount): "
                      + "\(format6(tokensPerS)) tokens/s, median step \(format6(median)) ms, "
                      + "loss \(format6(losses.first!)) → \(format6(losses.last!)), peak RSS \(rss / 1_048_576) MiB, "
                      + "activations ≈ \(act / 1_048_576) MiB (kept in \(kept.rawValue)); \(KernelPath.summary)")
                if profile {
                    print(padded("part", 36) + padded("ms/step", 10, left: true) + padded("share", 8, left: true)
                          + padded("GFLOP/s", 9, left: true))
                    for p in parts {
                        let name = padded(p.0, 36)
                        let ms = padded(fixed(p.1 * 1000 / Double(steps), 1), 10, left: true)
                        let share = padded(fixed(100 * p.1 / total, 1) + "%", 8, left: true)
                        let gf = padded(p.2 > 0 ? fixed(p.2 / p.1 / 1e9, 1) : "", 9, left: true)
                        print("\(name) \(ms) \(share) \(gf)")
                    }
                }
            }
        }
    }
}

/// `s` padded with spaces to `width` characters (on the left when `left`).
func padded(_ s: String, _ width: Int, left: Bool = false) -> String {
    let pad = String(repeating: " ", count: max(0, width - s.count))
    return left ? pad + s : s + pad
}

/// `x` with `digits` decimals.
func fixed(_ x: Double, _ digits: Int) -> String {
    guard x.isFinite else { return "\(x)" }
    var p = 1.0
    for _ in 0..<digits { p *= 10 }
    let v = (abs(x) * p).rounded()
    let ip = Int(v / p), fp = Int(v) - ip * Int(p)
    let frac = String(fp)
    let body = digits > 0 ? "\(ip)." + String(repeating: "0", count: digits - frac.count) + frac : "\(ip)"
    return (x < 0 && v != 0 ? "-" : "") + body
}

/// Reset the kernel's peak-RSS mark of this process (VmHWM) so that `vmHWMBytes` then reports the peak
/// of what follows (Linux: write "5" to /proc/self/clear_refs). False where that is not possible.
func resetPeakRSS() -> Bool {
    #if os(Linux)
    let fd = open("/proc/self/clear_refs", O_WRONLY)
    guard fd >= 0 else { return false }
    defer { close(fd) }
    return write(fd, "5", 1) == 1
    #else
    return false
    #endif
}

/// VmHWM (peak resident set since the process started or since `resetPeakRSS`) in bytes, or nil.
func vmHWMBytes() -> Int? {
    guard let bytes = try? readFile("/proc/self/status") else { return nil }
    for line in String(decoding: bytes, as: UTF8.self).split(separator: "\n") where line.hasPrefix("VmHWM:") {
        let kb = line.dropFirst(6).split(whereSeparator: { $0 == " " || $0 == "\t" }).first.flatMap { Int($0) }
        return kb.map { $0 * 1024 }
    }
    return nil
}
