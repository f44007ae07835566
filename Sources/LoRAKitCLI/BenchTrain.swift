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
            let opt = BenchAdamW(parameters: trainer.parameters, lr: lr)
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
            for s in 0..<(warmupSteps + steps) {
                let b = nextBatch()
                let t0 = monotonicSeconds()
                trainer.zeroGradients()
                let r = try trainer.pass(b, gradients: true, step: s)
                opt.step()
                let t1 = monotonicSeconds()
                losses.append(r.meanNLL)
                if s >= warmupSteps { stepSeconds.append(t1 - t0) }
            }
            let total = stepSeconds.reduce(0, +)
            let tokensPerS = Double(batch * seq * steps) / total
            // The whole run's peak: ru_maxrss may follow the reset mark, so take the larger with the load's.
            let rss = max(peakRSSBytes(), loadRSS)
            let trainRSS = resetHWM ? vmHWMBytes() : nil
            let act = LoRATrainer.activationBytes(config: c, rows: batch * seq, maxRank: rank,
                                                  adapterModules: trainer.modules.count,
                                                  chunkRows: trainer.lossChunkRows)
            let stepMs = stepSeconds.map { $0 * 1000 }
            let median = stepMs.sorted()[stepMs.count / 2]
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
                ]))
            } else {
                print("train \(batch)×\(seq) r=\(rank) \(targets) threads=\(trainer.pool.activeCount): "
                      + "\(format6(tokensPerS)) tokens/s, median step \(format6(median)) ms, "
                      + "loss \(format6(losses.first!)) → \(format6(losses.last!)), peak RSS \(rss / 1_048_576) MiB, "
                      + "activations ≈ \(act / 1_048_576) MiB")
            }
        }
    }
}

/// A plain in-place AdamW (decoupled weight decay, bias-corrected moments) on the trainer's parameters,
/// with torch.optim.AdamW's defaults, so the benchmark's step includes an optimizer update like the
/// peer's. Local to the benchmark: the library's optimizer will replace it once merged.
final class BenchAdamW {
    let parameters: [TrainableTensor]
    let lr: Float, beta1: Float = 0.9, beta2: Float = 0.999, eps: Float = 1e-8, weightDecay: Float = 0.01
    private var m: [[Float]], v: [[Float]]
    private var t = 0

    init(parameters: [TrainableTensor], lr: Float) {
        self.parameters = parameters
        self.lr = lr
        m = parameters.map { [Float](repeating: 0, count: $0.count) }
        v = parameters.map { [Float](repeating: 0, count: $0.count) }
    }

    func step() {
        t += 1
        let bc1 = 1 - Float(Double(beta1).power(t)), bc2 = 1 - Float(Double(beta2).power(t))
        let (b1, b2, e, lr, wd) = (beta1, beta2, eps, lr, weightDecay)
        for (pi, p) in parameters.enumerated() {
            let x = p.values, g = p.grad
            m[pi].withUnsafeMutableBufferPointer { mb in
                v[pi].withUnsafeMutableBufferPointer { vb in
                    for i in 0..<p.count {
                        let gi = g[i]
                        mb[i] = b1 * mb[i] + (1 - b1) * gi
                        vb[i] = b2 * vb[i] + (1 - b2) * gi * gi
                        x[i] -= lr * wd * x[i]
                        x[i] -= lr * (mb[i] / bc1) / ((vb[i] / bc2).squareRoot() + e)
                    }
                }
            }
        }
    }
}

private extension Double {
    func power(_ n: Int) -> Double {
        var r = 1.0
        for _ in 0..<n { r *= self }
        return r
    }
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
