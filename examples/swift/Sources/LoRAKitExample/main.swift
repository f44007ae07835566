// The Swift API in one program: load a model, stream an answer, train a LoRA adapter for a few steps with
// a progress callback, attach it, and ask again.
//   swift run -c release --package-path examples/swift lorakit-example MODEL.gguf [STEPS] [DATA_DIR]
import LoRAKit
#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// Unbuffered output, so streamed pieces appear at once (Swift 6 forbids touching C's `stdout` global).
func put(_ s: String) {
    var bytes = Array(s.utf8)
    _ = write(1, &bytes, bytes.count)
}

let args = CommandLine.arguments
guard args.count >= 2 else {
    put("usage: lorakit-example MODEL.gguf [STEPS] [DATA_DIR]   (scripts/fetch_model.sh prints MODEL)\n")
    exit(2)
}
let steps = args.count > 2 ? Int(args[2]) ?? 20 : 20
let dataDir = args.count > 3 ? args[3] : "examples/demo/data"

/// Render one user message with the model's chat template and tokenize it.
func chatPrompt(_ model: LlamaModel, _ question: String) throws -> [Int32] {
    let tok = try model.requireTokenizer()
    let template = try ChatTemplate(model.chatTemplate ?? "")
    let text = try template.render(messages: [ChatMessage(role: "user", content: question)],
                                   addGenerationPrompt: true, extra: [:])
    return tok.encode(text, addSpecial: false)
}

/// Greedy answer, streamed to standard output as it is generated.
func ask(_ context: LlamaContext, _ question: String) throws -> String {
    context.reset()
    var params = GenerateParams()
    params.maxTokens = 32
    params.sampler.temperature = 0
    put("Q: \(question)\nA: ")
    let r = try generate(context: context, prompt: try chatPrompt(context.model, question), params: params) { piece, _ in
        put(piece)
        return true  // false stops generation
    }
    put("\n")
    return r.text
}

do {
    let model = try LlamaModel.load(path: args[1])
    put("\(model.architecture), \(model.config.nLayers) layers, vocabulary \(model.config.vocabSize)\n")
    let context = try LlamaContext(model: model, maxPositions: 512, threads: nil)
    let question = "How much does the Zephyrine Pod cost?"
    let before = try ask(context, question)

    var options = TrainingOptions()
    options.lora = LoRAConfig(rank: 16, alpha: 32, targets: try LoRAConfig.parseTargets("all-linear"))
    options.optimizer = OptimizerConfig(lr: 1e-3, weightDecay: 0.01, maxGradNorm: 1.0)
    options.schedule = .cosine
    options.warmupSteps = steps / 4
    options.steps = steps
    options.batchSize = 8
    options.data = TrainDataOptions(seq: 128)
    let session = try TrainingSession(model: model, trainPath: dataDir + "/train.jsonl",
                                      validPath: dataDir + "/valid.jsonl", options: options)
    let validBefore = try session.validationLoss() ?? .nan
    let summary = try session.run { p in
        put("step \(p.step)/\(p.totalSteps) loss \(p.loss)" + (p.validLoss.map { " valid \($0)" } ?? "") + "\n")
        return true  // false stops training
    }
    let validAfter = summary.validLoss ?? .nan
    put("validation loss \(validBefore) -> \(validAfter)\n")

    try context.attach(try session.adapter(), scale: 1)
    let after = try ask(context, question)
    // The adapter learned something that generalizes (validation loss) and changed the answer.
    guard validAfter < validBefore, after != before else {
        put("example: FAILED (validation loss \(validBefore) -> \(validAfter))\n")
        exit(1)
    }
} catch let e as LKError {
    put("error: \(e.message)\n")
    exit(1)
}
