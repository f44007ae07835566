#!/usr/bin/env python3
"""Streaming generation: print each piece of the answer as soon as the model produces it.

    python3 examples/python/stream.py MODEL.gguf ["question"]
"""
import sys
import time

from _common import chat_tokens, model_path

import lorakit

question = sys.argv[2] if len(sys.argv) > 2 else "What is the capital of France? Answer in one sentence."
pieces = []


def on_text(piece: str, token: int) -> bool:
    print(piece, end="", flush=True)
    pieces.append(piece)
    return True  # False stops generation


with lorakit.Model(model_path()) as model, lorakit.Context(model, n_threads=0) as ctx:
    print(f"Q: {question}\nA: ", end="", flush=True)
    t0 = time.monotonic()
    text, tokens, reason = lorakit.generate(ctx, chat_tokens(model, question), max_tokens=48, temperature=0,
                                            on_text=on_text)
    dt = time.monotonic() - t0
    print(f"\n[{len(tokens)} tokens in {dt:.2f} s, stopped by {reason.name}]")
    # The streamed pieces add up to the returned text.
    sys.exit(0 if "".join(pieces) == text and tokens else 1)
