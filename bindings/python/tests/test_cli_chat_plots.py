"""`lorakit chat` under a pseudo-terminal, the training loss curve and `lorakit bench plot`.

The chat's answers are compared with the binding's greedy generation of the same conversation (same
model, same adapter, same rendered history), so the test checks the streaming, the history kept in the
context, /reset and the /adapter hot-swap against real values.
"""
import json
import os
import pty
import re
import select
import subprocess
import termios
import sys
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import lorakit  # noqa: E402

ROOT = Path(__file__).resolve().parents[3]
FIX = ROOT / "Tests" / "LoRAKitTests" / "Fixtures"
CLI = os.environ.get("LORAKIT_CLI", str(ROOT / ".build" / "release" / "lorakit-cli"))
MODEL = os.environ.get("LORAKIT_MODEL", "")
PEFT_ADAPTER = FIX / "lora_real" / "smollm2_qv"  # made by PEFT for SmolLM2-135M-Instruct
DEMO = ROOT / "examples" / "demo" / "data"
SVG_NS = "{http://www.w3.org/2000/svg}"

needs_model = pytest.mark.skipif(not MODEL or not Path(MODEL).exists(),
                                 reason="LORAKIT_MODEL not set (model download failed?)")


class Terminal:
    """A process on a pseudo-terminal (echo off), read until its "> " prompt."""

    def __init__(self, args):
        self.master, slave = pty.openpty()
        attrs = termios.tcgetattr(slave)
        attrs[3] &= ~termios.ECHO
        termios.tcsetattr(slave, termios.TCSANOW, attrs)
        self.proc = subprocess.Popen(args, stdin=slave, stdout=slave, stderr=slave, close_fds=True)
        os.close(slave)
        self.buf = ""

    def read_until_prompt(self, timeout=180.0) -> str:
        """Everything printed up to the next prompt ("> " at the start of a line), prompt excluded."""
        deadline = time.monotonic() + timeout
        while True:
            text = self.buf.replace("\r\n", "\n")
            m = re.search(r"(^|\n)> ", text)
            if m:
                self.buf = text[m.end():]
                return text[: m.start()]
            left = deadline - time.monotonic()
            assert left > 0, f"no prompt within {timeout} s; output so far: {text!r}"
            r, _, _ = select.select([self.master], [], [], left)
            if r:
                try:
                    chunk = os.read(self.master, 4096)
                except OSError:  # the process closed the terminal
                    chunk = b""
                assert chunk, f"the chat ended early; output: {text!r}"
                self.buf += chunk.decode("utf-8", "replace")

    def send(self, line: str) -> str:
        os.write(self.master, (line + "\n").encode())
        return self.read_until_prompt()

    def close(self) -> int:
        os.write(self.master, b"\x04")  # Ctrl-D: end of input
        try:
            return self.proc.wait(timeout=60)
        finally:
            os.close(self.master)


def reference_answer(model, messages, adapter=None, scale=1.0, max_tokens=24):
    """The binding's greedy answer to `messages` on a fresh context."""
    with lorakit.Context(model, n_ctx=1024) as ctx:
        if adapter is not None:
            ctx.attach(adapter, scale)
        ids = model.tokenize(model.chat(messages), add_special=False)
        return lorakit.generate(ctx, ids, max_tokens=max_tokens, temperature=0).text.strip()


@needs_model
def test_chat_streams_keeps_history_resets_and_hot_swaps_adapters():
    q1, q2 = "What is the capital of France?", "And what is the capital of Italy?"
    term = Terminal([CLI, "chat", "--model", MODEL, "--temp", "0", "--max-tokens", "24", "--threads", "2"])
    try:
        banner = term.read_until_prompt()
        assert "lorakit chat" in banner and "no adapter" in banner
        a1 = term.send(q1).strip()
        assert "Paris" in a1
        swapped = term.send(f"/adapter {PEFT_ADAPTER} 2.5")
        assert f"(adapter {PEFT_ADAPTER}, scale 2.5)" in swapped
        a2 = term.send(q2).strip()
        assert term.send("/reset").strip() == "(conversation cleared)"
        assert term.send("/adapter none").strip() == "(no adapter)"
        a3 = term.send(q1).strip()
        assert "unknown command" in term.send("/nonsense")
        rc = term.close()
    finally:
        if term.proc.poll() is None:
            term.proc.kill()
    assert rc == 0
    with lorakit.Model(MODEL) as model, lorakit.Adapter.load(model, PEFT_ADAPTER) as adapter:
        # Turn 1: the base model; turn 2: the whole history, answered with the swapped-in adapter;
        # after /reset and /adapter none: turn 1 again, from an empty history.
        assert a1 == reference_answer(model, [{"role": "user", "content": q1}])
        assert a2 == reference_answer(model, [{"role": "user", "content": q1}, {"role": "assistant", "content": a1},
                                              {"role": "user", "content": q2}], adapter, 2.5)
        assert a3 == a1


@needs_model
def test_chat_drops_the_oldest_turns_when_the_context_is_full():
    term = Terminal([CLI, "chat", "--model", MODEL, "--temp", "0", "--max-tokens", "16", "--ctx", "160",
                     "--threads", "2"])
    try:
        term.read_until_prompt()
        outputs = [term.send(f"Tell me a fact about the number {n}.") for n in range(1, 6)]
        rc = term.close()
    finally:
        if term.proc.poll() is None:
            term.proc.kill()
    assert rc == 0
    assert any("earliest turn(s) dropped to fit the context" in o for o in outputs[1:]), outputs
    assert not any("error" in o for o in outputs), outputs


def svg_root(path: Path):
    return ET.parse(path).getroot()


def polyline_points(el) -> list:
    return [tuple(map(float, p.split(","))) for p in el.get("points").split()]


# A sanitizer build (scripts/sanitize.sh sets LORAKIT_SANITIZER) trains 5–15× slower.
TRAIN_TIMEOUT = 600 * (4 if os.environ.get("LORAKIT_SANITIZER") else 1)


@needs_model
def test_train_draws_the_loss_curve_beside_the_log_and_keeps_it_across_resume(tmp_path):
    out, log = tmp_path / "run", tmp_path / "run" / "log.jsonl"
    common = ["train", "--model", MODEL, "--data", DEMO / "train.jsonl", "--valid", DEMO / "valid.jsonl",
              "--rank", "4", "--batch", "2", "--seq", "64", "--valid-every", "2", "--save-every", "2",
              "--threads", "2", "--out", out, "--log", log]
    r = subprocess.run([CLI, *map(str, common), "--steps", "3"], capture_output=True, text=True, timeout=TRAIN_TIMEOUT)
    assert r.returncode == 0, r.stderr
    svg = tmp_path / "run" / "log.svg"  # beside the log, same name
    assert f"loss curve: {svg}" in r.stderr
    entries = [json.loads(line) for line in log.read_text().splitlines()]
    root = svg_root(svg)
    lines = root.findall(f"{SVG_NS}polyline")
    train = [pl for pl in lines if pl.get("stroke") == "#1f77b4"][0]
    assert len(polyline_points(train)) == 3 == len(entries)
    # Validation: before training (step 0), at step 2 and at the last step.
    assert len(root.findall(f"{SVG_NS}circle")) == 3
    text = " ".join(t.text or "" for t in root.iter(f"{SVG_NS}text"))
    assert f"training loss {entries[-1]['loss']:.4f}" in text and f"validation loss {entries[-1]['valid_loss']:.4f}" in text
    assert "step 3/3" in text
    # Higher loss is drawn higher (smaller y): the polyline follows the logged losses.
    ys = [y for _, y in polyline_points(train)]
    losses = [e["loss"] for e in entries]
    assert all((ys[i] < ys[j]) == (losses[i] > losses[j]) for i in range(3) for j in range(3) if losses[i] != losses[j])

    r = subprocess.run([CLI, *map(str, common), "--steps", "5", "--resume", out], capture_output=True, text=True, timeout=TRAIN_TIMEOUT)
    assert r.returncode == 0, r.stderr
    root = svg_root(svg)
    train = [pl for pl in root.findall(f"{SVG_NS}polyline") if pl.get("stroke") == "#1f77b4"][0]
    assert len(polyline_points(train)) == 5  # the resumed run's curve includes the steps before the resume
    assert "step 5/5" in " ".join(t.text or "" for t in root.iter(f"{SVG_NS}text"))
    assert not list(out.glob(".lorakit-tmp-*"))  # written atomically: no temporary left behind


BENCH_MD = """# Benchmarks

<!-- speed:begin -->
### Speed: LoRAKit vs peer

| size | threads | LoRAKit tok/s | peer tok/s | ratio |
|---|---:|---:|---:|---:|
| small | 1 | 100.0 (90.0, 110.0) | 50.0 | 2.00 |
| large | 2 | 300.0 | 150.0 | 2.00 |
<!-- speed:end -->

| not | in | a block |
|---|---|---|
| 1 | 2 | 3 |
"""


def test_bench_plot_draws_the_comparison_tables_and_links_them(tmp_path):
    md = tmp_path / "BENCHMARKS.md"
    md.write_text(BENCH_MD)
    for _ in range(2):  # idempotent: the link line is replaced, not added again
        r = subprocess.run([CLI, "bench", "plot", "--markdown", md, "--link"], capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, r.stderr
    chart = tmp_path / "bench" / "plots" / "speed-1.svg"
    assert chart.is_file() and len(list((tmp_path / "bench" / "plots").iterdir())) == 1
    text = md.read_text()
    assert text.count("speed-1.svg") == 1
    assert "Bar charts: [tok/s](bench/plots/speed-1.svg)" in text
    assert text.index("<!-- speed:end -->") < text.index("Bar charts:")
    root = svg_root(chart)
    bars = [r for r in root.findall(f"{SVG_NS}rect") if r.get("height") == "16"]
    widths = [float(b.get("width")) for b in bars]
    assert len(widths) == 4  # 2 rows × (LoRAKit, peer)
    # Bar lengths are proportional to the values: 100, 50, 300, 150.
    for w, v in zip(widths, [100, 50, 300, 150]):
        assert w / widths[2] == pytest.approx(v / 300, abs=0.01)
    labels = [t.text for t in root.iter(f"{SVG_NS}text")]
    assert "small, 1 thr" in labels and "large, 2 thr" in labels and "LoRAKit" in labels and "peer" in labels
