"""Helpers shared by the bench peers (run as scripts from bench/, which is on sys.path)."""


def splitmix64(seed):
    """The SplitMix64 stream LoRAKit's benchmarks use (Sources/LoRAKitCore/Random.swift), so both sides
    draw the same random tokens."""
    state = seed
    mask = (1 << 64) - 1
    while True:
        state = (state + 0x9E3779B97F4A7C15) & mask
        z = state
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & mask
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & mask
        yield z ^ (z >> 31)
