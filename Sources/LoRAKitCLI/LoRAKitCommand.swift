import ArgumentParser
import LoRAKit

@main
struct LoRAKitCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "lorakit",
        abstract: "LoRA fine-tuning and inference for LLMs on the CPU.",
        version: LoRAKitVersion.string,
        subcommands: [InfoCommand.self, TokenizeCommand.self, GenerateCommand.self, ScoreCommand.self, MergeCommand.self, ConvertCommand.self, CombineCommand.self, PluginsCommand.self, TrainCommand.self, ChatCommand.self, BenchCommand.self, ServeCommand.self]
    )
}
