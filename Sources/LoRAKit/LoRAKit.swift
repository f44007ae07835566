// The Swift API of LoRAKit: one import for the layers (see ARCHITECTURE.md).
@_exported import LoRAKitCore
@_exported import LoRAKitKernels
@_exported import LoRAKitFormats
@_exported import LoRAKitTokenizer
@_exported import LoRAKitTemplates
@_exported import LoRAKitModel
@_exported import LoRAKitTraining
