import ArgumentParser
import LoRAKit
#if canImport(Glibc)
import Glibc
#endif

struct TrainCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "train",
        abstract: "Train a LoRA adapter on a frozen (possibly quantized) model from JSONL data.",
        discussion: """
        Data: one JSON object per line: {"text"}, {"prompt","completion"} (loss on the completion) or \
        {"messages":[...]} (rendered with the model's chat template; loss on the assistant turns). \
        Examples longer than --seq are cut to their first --seq tokens (--truncate error refuses them). \
        One step = --grad-accum micro-batches of --batch examples; the loss is the mean cross-entropy \
        over all predicted tokens of the step. --out DIR receives checkpoint-N/ folders (adapter, optimizer \
        state, trainer state; the last --keep kept, written atomically) and the final adapter: DIR/adapter/ \
        (PEFT) or DIR/adapter.gguf. --adapter-type NAME trains an adapter of a plugin type instead of LoRA \
        (e.g. ia3, dora: the shipped plugins load with no flag; others with --plugin PATH or LORAKIT_PLUGIN_PATH): \
        --targets and --layers choose the modules (and --rank, --alpha, --rslora for a LoRA-based type such as \
        dora), --adapter-config '{"feedforward_modules": ["down_proj"]}' sets any other PEFT config field; \
        it trains without dropout and is saved as PEFT. The loss curve (training and validation loss, learning rate) \
        is drawn as an SVG next to the log (--plot), redrawn at every checkpoint and validation.
        """)

    @Option(help: "GGUF file or Hugging Face folder.") var model: String
    @Option(help: "Training data (JSONL).") var data: String
    @Option(help: "Validation data (JSONL).") var valid: String?
    @Option(help: "LoRA rank.") var rank: Int = 8
    @Option(help: "LoRA alpha.") var alpha: Float = 16
    @Flag(help: "rsLoRA scaling alpha/√r.") var rslora = false
    @Option(help: "Target modules: q,k,v,o,gate,up,down or all-linear.") var targets: String = "q,v"
    @Option(help: "Layers to adapt, comma-separated (default: all).") var layers: String?
    @Option(help: "LoRA dropout.") var dropout: Float = 0
    @Option(help: "Start from this adapter (PEFT folder or GGUF LoRA) instead of a new one.") var `init`: String?
    @Option(help: "Train a new adapter of this plugin type (e.g. ia3, dora) instead of LoRA.") var adapterType: String?
    @Option(help: "PEFT config fields for --adapter-type, as a JSON object.") var adapterConfig: String?
    @OptionGroup var plugins: PluginOption
    @Option(help: "Peak learning rate.") var lr: Double = 2e-4
    @Option(help: "AdamW decoupled weight decay.") var weightDecay: Double = 0.01
    @Option(help: "AdamW beta1.") var adamBeta1: Double = 0.9
    @Option(help: "AdamW beta2.") var adamBeta2: Double = 0.999
    @Option(help: "AdamW epsilon.") var adamEpsilon: Double = 1e-8
    @Option(help: "Clip the global gradient norm to this (0: off).") var maxGradNorm: Double = 1.0
    @Option(help: "Learning-rate schedule: constant, linear or cosine.") var schedule: String = "constant"
    @Option(help: "Warm-up steps (linear from 0).") var warmup: Int = 0
    @Option(help: "The cosine schedule decays to lr × this instead of 0 (0...1).") var lrMinRatio: Double = 0
    @Option(help: "Optimizer steps (default: from --epochs).") var steps: Int?
    @Option(help: "Passes over the data when --steps is not given.") var epochs: Double = 1
    @Option(help: "Examples per micro-batch.") var batch: Int = 4
    @Option(help: "Tokens per example (longer ones are cut).") var seq: Int = 512
    @Option(help: "Micro-batches per optimizer step.") var gradAccum: Int = 1
    @Option(help: "Seed (data order, adapter init, dropout).") var seed: UInt64 = 0
    @OptionGroup var threadOpt: ThreadOption
    @OptionGroup var chatLimits: ChatLimitOptions
    @Option(help: "Shuffle the examples each epoch (true/false).") var shuffle: Bool = true
    @Option(help: "Loss only on completions / assistant turns (true/false).") var completionOnly: Bool = true
    @Flag(help: "Pack examples into rows of exactly --seq tokens.") var packing = false
    @Option(help: "Examples longer than --seq: cut or error.") var truncate: String = "cut"
    @Option(help: "Output folder.") var out: String?
    @Option(help: "Final adapter format: peft or gguf.") var format: String = "peft"
    @Option(help: "Checkpoint every N steps (0: only at the end).") var saveEvery: Int = 0
    @Option(help: "Checkpoints kept.") var keep: Int = 2
    @Option(help: "Validate every N steps (0: only at the end).") var validEvery: Int = 0
    @Option(help: "Resume from the latest checkpoint in this folder.") var resume: String?
    @Option(help: "Append one JSON line per step to this file.") var log: String?
    @OptionGroup var kept: KeepActivationsOption
    @Option(help: ArgumentHelp("Loss-curve picture (SVG: training and validation loss, learning rate), redrawn at every checkpoint, validation and at the end; 'none' to skip.",
                               discussion: "Default: next to --log (run/log.jsonl → run/log.svg), else OUT/loss.svg.",
                               valueName: "svg"))
    var plot: String?
    @Flag(help: "No progress bar (one plain line per step).") var quiet = false
    @Flag(help: "Print a JSON summary at the end.") var json = false

    func options() throws(LKError) -> TrainingOptions {
        var o = TrainingOptions()
        var lora = LoRAConfig(rank: rank, alpha: alpha, useRSLoRA: rslora, targets: try LoRAConfig.parseTargets(targets),
                              dropout: dropout)
        if let ls = layers {
            var list: [Int] = []
            for p in ls.split(separator: ",") {
                guard let v = Int(String(p.filter { !$0.isWhitespace })) else {
                    throw .invalidArgument("--layers: \"\(p)\" is not a layer number")
                }
                list.append(v)
            }
            lora.layers = list
        }
        o.lora = lora
        o.initAdapter = `init`
        o.adapterType = adapterType
        if let text = adapterConfig {
            do throws(LKError) { o.adapterConfig = try JSON.parse(text) } catch {
                throw .invalidArgument("--adapter-config: not JSON: \(error.message)")
            }
        }
        o.optimizer = OptimizerConfig(lr: lr, beta1: adamBeta1, beta2: adamBeta2, eps: adamEpsilon,
                                      weightDecay: weightDecay, maxGradNorm: maxGradNorm > 0 ? maxGradNorm : nil)
        o.schedule = try LRScheduleKind(parsing: schedule)
        o.warmupSteps = warmup
        o.lrMinRatio = lrMinRatio
        o.steps = steps
        o.epochs = epochs
        o.batchSize = batch
        o.gradAccum = gradAccum
        o.seed = seed
        o.threads = threadOpt.threads
        o.shuffle = shuffle
        let trunc: TrainTruncation
        switch truncate {
        case "cut", "keep-first": trunc = .keepFirst
        case "error": trunc = .error
        default: throw .invalidArgument("--truncate \(truncate): expected cut or error")
        }
        o.data = TrainDataOptions(seq: seq, completionOnlyLoss: completionOnly, truncation: trunc, packing: packing)
        o.outDir = out
        guard let f = AdapterFormat(rawValue: format) else { throw .invalidArgument("--format \(format): expected peft or gguf") }
        o.format = f
        o.saveEvery = saveEvery
        o.keep = keep
        o.validEvery = validEvery
        o.resume = resume
        o.logPath = log
        o.keptActivations = kept.keepActivations
        return o
    }

    /// Where the loss curve goes: --plot, else beside the log, else in the output folder.
    var plotPath: String? {
        if let p = plot { return p == "none" ? nil : p }
        if let l = log {
            let base = l.hasSuffix(".jsonl") ? String(l.dropLast(6)) : l.hasSuffix(".json") ? String(l.dropLast(5)) : l
            return base + ".svg"
        }
        return out.map { $0 + "/loss.svg" }
    }

    func run() throws {
        try runReporting {
            try plugins.load()
            let m = try loadModel(model)
            try chatLimits.apply(to: m)
            // The log may live in the output folder, which the session creates only at its first checkpoint.
            if let l = log, let slash = l.lastIndex(of: "/"), slash != l.startIndex { try makeDirectories(String(l[..<slash])) }
            let session = try TrainingSession(model: m, trainPath: data, validPath: valid, options: try options())
            for n in session.notes { writeStderr(n + "\n") }
            var initialValid: Double? = nil
            if session.step == 0, let v = try session.validationLoss() {
                initialValid = v
                writeStderr("valid loss before training: \(fixed(v, 4))\n")
            }
            // The curve's points: this log's earlier steps when resuming, then every step of this run.
            var points = session.step > 0 ? (log.map { lossPoints(logPath: $0) } ?? []).filter { $0.step <= session.step } : []
            let plotTo = plotPath
            let title = "LoRA training: " + (out ?? data)
            var plotError: LKError? = nil
            func drawPlot() {
                guard let path = plotTo, plotError == nil else { return }
                do throws(LKError) {
                    if let slash = path.lastIndex(of: "/"), slash != path.startIndex { try makeDirectories(String(path[..<slash])) }
                    try SVG.write(lossCurveSVG(points, totalSteps: session.totalSteps, initialValid: initialValid, title: title), to: path)
                } catch {
                    plotError = error  // reported once; training goes on
                    writeStderr("lorakit: warning: cannot write the loss curve: \(error.message)\n")
                }
            }
            let saveEvery = try options().saveEvery ?? 0
            let tty = isatty(2) != 0 && !quiet
            let summary = try session.run { p in
                points.append(LossPoint(step: p.step, loss: p.loss, lr: p.lr, validLoss: p.validLoss))
                if p.validLoss != nil || (saveEvery > 0 && p.step % saveEvery == 0) { drawPlot() }
                if tty {
                    writeStderr("\r" + progressBar(p) + "\u{1B}[K")
                    if p.step == p.totalSteps || p.validLoss != nil { writeStderr("\n") }
                } else if !quiet || p.validLoss != nil {
                    writeStderr(progressLine(p) + "\n")
                }
                return true
            }
            drawPlot()
            if let path = plotTo, plotError == nil, !json { writeStderr("loss curve: \(path)\n") }
            if json {
                var o: [(String, JSONValue)] = [("steps", .number(Double(summary.steps))),
                                                ("stopped", .bool(summary.stoppedByCallback))]
                if let l = summary.finalLoss { o.append(("final_loss", .number(l))) }
                if let v = summary.validLoss { o.append(("valid_loss", .number(v))) }
                if let a = summary.adapterPath { o.append(("adapter", .string(a))) }
                if let path = plotTo, plotError == nil { o.append(("plot", .string(path))) }
                o.append(("losses", .array(summary.losses.map { .number($0) })))
                printJSON(.object(o))
            } else if let a = summary.adapterPath {
                print("wrote \(a)")
            }
        }
    }
}


func duration(_ s: Double) -> String {
    guard s.isFinite, s >= 0 else { return "?" }
    let t = Int(s.rounded())
    return t >= 3600 ? "\(t / 3600)h\(format2(t % 3600 / 60))m" : "\(t / 60)m\(format2(t % 60))s"
}

func format2(_ v: Int) -> String { v < 10 ? "0\(v)" : "\(v)" }

/// `[#####.....] 12/100 loss 2.3456 lr 2.0e-04 412 tok/s ETA 3m12s`
func progressBar(_ p: TrainProgress) -> String {
    let width = 24
    let done = p.totalSteps > 0 ? min(width, width * p.step / p.totalSteps) : 0
    let bar = String(repeating: "#", count: done) + String(repeating: ".", count: width - done)
    let eta = p.step > 0 ? p.elapsed / Double(p.step) * Double(p.totalSteps - p.step) : .nan
    var s = "[\(bar)] \(p.step)/\(p.totalSteps) loss \(fixed(p.loss, 4)) lr \(sci(p.lr)) \(Int(p.tokensPerSecond)) tok/s ETA \(duration(eta))"
    if let v = p.validLoss { s += " valid \(fixed(v, 4))" }
    return s
}

func progressLine(_ p: TrainProgress) -> String {
    let eta = p.step > 0 ? p.elapsed / Double(p.step) * Double(p.totalSteps - p.step) : .nan
    var s = "step \(p.step)/\(p.totalSteps) loss \(fixed(p.loss, 4)) lr \(sci(p.lr)) grad_norm \(fixed(p.gradNorm, 3)) \(Int(p.tokensPerSecond)) tok/s ETA \(duration(eta))"
    if let v = p.validLoss { s += " valid_loss \(fixed(v, 4))" }
    return s
}

func sci(_ x: Double) -> String {
    guard x != 0, x.isFinite else { return "\(x)" }
    var e = 0
    var m = abs(x)
    while m >= 10 { m /= 10; e += 1 }
    while m < 1 { m *= 10; e -= 1 }
    if (m * 10).rounded() >= 100 { m /= 10; e += 1 }  // 9.96 prints as 1.0e+01, not 10.0e+00
    return "\(x < 0 ? "-" : "")\(fixed(m, 1))e\(e < 0 ? "-" : "+")\(format2(abs(e)))"
}
