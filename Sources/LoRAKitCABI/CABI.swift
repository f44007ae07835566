import LoRAKit
