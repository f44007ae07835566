"""Shared by the Python examples: the model path, and the binding from this checkout when it is not installed."""
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DEMO_DATA = ROOT / "examples" / "demo" / "data"

try:
    import lorakit  # noqa: F401  (pip install ./bindings/python)
except ImportError:
    sys.path.insert(0, str(ROOT / "bindings" / "python"))  # the checkout's binding and .build/release


def model_path() -> str:
    m = sys.argv[1] if len(sys.argv) > 1 and not sys.argv[1].startswith("-") else os.environ.get("LORAKIT_MODEL")
    if not m:
        sys.exit(f"usage: {sys.argv[0]} MODEL.gguf (or set LORAKIT_MODEL; scripts/fetch_model.sh prints it)")
    return m


def chat_tokens(model, question: str) -> list:
    """One user message rendered with the model's chat template, as token ids."""
    return model.tokenize(model.chat([{"role": "user", "content": question}]), add_special=False)
