#!/usr/bin/env python3
"""Generate the LoRA training reference fixtures under Tests/LoRAKitTests/Fixtures/train/.

NOT needed at CI time: the tests only read the committed outputs. Re-run only when the fixtures must
change; every output is documented in Tests/LoRAKitTests/Fixtures/train/README.md.

Needs: Python >= 3.10, torch (CPU), transformers (written against 5.x), peft (written against 0.21),
tokenizers, safetensors, numpy, jinja2 (for transformers' apply_chat_template).
    python3 -m pip install torch transformers peft tokenizers safetensors numpy jinja2
Independent of the other fixture folders: the tiny model and its tokenizer are built here.

Run:
    python3 scripts/gen_train_fixture.py
    python3 scripts/gen_train_fixture.py --cli .build-x/release/lorakit-cli   # only the LoRAKit cross-check
(~25 s on 2 cores, ~1 GB RAM; output is deterministic: the script re-executes itself with PYTHONHASHSEED=0
and RAYON_NUM_THREADS=1, and runs torch on 1 thread.) With --cli it generates nothing: it tokenizes every
string the tokenization rules encode (from the committed fixtures) with
`lorakit-cli tokenize --model Fixtures/train/model --file F --json` and requires the same ids as the
`tokenizers` library (exit status 1 otherwise).

Outputs (in Fixtures/train/):
    model/           tiny LlamaForCausalLM (config.json, model.safetensors F32, tied embeddings) with a
                     byte-level BPE tokenizer trained here (tokenizer.json, tokenizer_config.json + ChatML template)
    data/            text.jsonl, pc.jsonl, chat.jsonl, bad.jsonl
    examples.json    token ids + target flags of every example of every data file
    <run>/init/      PEFT adapter the run starts from (seeded A and B, B != 0)
    <run>/final/     PEFT adapter after the run
    reference.json   per-step losses, learning rates, gradient norms, ... of the 3 training runs
"""
from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
OUT = REPO / "Tests" / "LoRAKitTests" / "Fixtures" / "train"
MODEL_SEED = 20240610
ADAPTER_SEED = 20240611
VOCAB = 512
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]

MODEL_CFG = dict(vocab_size=VOCAB, hidden_size=64, intermediate_size=160, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, head_dim=16, max_position_embeddings=256, rope_theta=10000.0,
                 rms_norm_eps=1e-5, hidden_act="silu", bos_token_id=1, eos_token_id=2, tie_word_embeddings=True,
                 initializer_range=0.12, attention_dropout=0.0)
# Weight init (our own seeded generator, not transformers' _init_weights): see init_weights().
EMBED_STD, LINEAR_STD = 0.2, 0.12

# SmolLM2-135M-Instruct's chat template, verbatim (ChatML; inserts a default system prompt when the first
# message is not a system message).
CHAT_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\n"
    "You are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}{% endif %}"
    "{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

# ----------------------------------------------------------------------------------------------
# texts (written for this fixture; public domain)
# ----------------------------------------------------------------------------------------------

CORPUS = """\
The small model reads a sentence one token at a time and tries to guess the next token. At first its guesses
are random, because its weights are random. Training changes the weights a little at every step so that the
right token becomes more likely. A low-rank adapter does not change the weights of the model itself: it adds
two thin matrices to a layer, and only those matrices are trained. The product of the two matrices has the
same shape as the weight it sits next to, but it has far fewer numbers, so training is fast and the saved
adapter is small.

The gardener woke early on a cold morning in March. She made a cup of tea, put on her boots and walked down
to the greenhouse. The tomatoes were still small, but the beans had grown overnight and the first leaves of the
lettuce were open. She watered the pots, opened the windows to let in the fresh air, and wrote the date and the
temperature in her notebook. Outside, a blackbird was singing on the fence, and the sky over the hills was
turning from grey to a pale and clear blue.

In the evening the town was quiet. The shops had closed, the last bus had left the square, and the only light
came from the windows of the old library, where a few students were still reading. One of them was learning
about rivers: where they begin, how they carve their valleys, and why they flood in the spring when the snow
melts in the mountains. Another was writing a letter to her brother, who lived by the sea and worked on a
fishing boat.

Question: What is the capital of France? Answer: Paris.
Question: How many legs does a spider have? Answer: Eight.
Translate to French: good morning. Answer: bonjour.
What is two plus three? Five. What is ten minus four? Six. Count from one to five: one, two, three, four, five.
Please write a short poem about the sea. Thank you for your help. You are welcome. Hello! Hi there. Good night.
The system prompt says: you are a helpful assistant. Be brief and friendly. Answer in one word.
The user asks a question and the assistant gives an answer. The assistant is polite and clear.
You are a helpful AI assistant named SmolLM, trained by Hugging Face.
Numbers: 0 1 2 3 4 5 6 7 8 9 10 12 24 100 2024 3.14
The café on the corner serves crème brûlée and a very good naïve espresso — or so they say.
def add(a, b):
    return a + b
"""

# text.jsonl: 16 lines of varied length
TEXT = [
    "The gardener woke early on a cold morning in March and walked down to the greenhouse to water the beans.",
    "Hello there.",
    "A low-rank adapter adds two thin matrices to a layer, and only those matrices are trained while the model "
    "itself stays the same.",
    "The sky over the hills was turning from grey to a pale and clear blue, and a blackbird was singing on the fence.",
    "Good night.",
    "Rivers begin in the mountains, carve their valleys, and flood in the spring when the snow melts.",
    "She wrote the date and the temperature in her notebook.",
    "The café on the corner serves crème brûlée — or so they say.",
    "In the evening the town was quiet: the shops had closed and the last bus had left the square.",
    "Count from one to five: one, two, three, four, five.",
    "Training changes the weights a little at every step so that the right token becomes more likely.",
    "def add(a, b):\n    return a + b\n",
    "Her brother lived by the sea and worked on a fishing boat; every morning he left before the sun was up, and "
    "every evening he came back with the fish, the nets and a story.",
    "The year 2024 had 366 days.",
    "The students were still reading in the old library when the lights went out.",
    "Thank you for your help!",
]

# pc.jsonl: 13 prompt/completion pairs (13, not 12: with batch 2 the last micro-batch of an epoch is short,
# and with grad_accum 2 optimizer steps straddle the epoch boundary).
PC = [
    ("Question: What is the capital of France?\nAnswer:", " Paris."),
    ("Question: How many legs does a spider have?\nAnswer:", " Eight."),
    ("Translate to French: good morning.\nAnswer:", " bonjour."),
    ("What is two plus three?", " Five."),
    ("What is ten minus four?", " Six."),
    ("Count from one to five:", " one, two, three, four, five."),
    ("Write a short poem about the sea.\n", "The sea is grey,\nthe boats are out,\nthe gulls are singing all about."),
    ("Say hello.", " Hello!"),
    ("Question: Where does a river begin?\nAnswer:", " In the mountains, where the snow melts in the spring."),
    ("The gardener opened the windows of the greenhouse. What did she open?",
     " The windows, to let in the fresh air."),
    ("Complete: The product of the two matrices has", " the same shape as the weight."),
    ("Answer in one word. What colour is a clear sky?", " Blue."),
    ("def add(a, b):\n", "    return a + b\n"),
]

SYS = "You are a helpful assistant. Be brief."
# chat.jsonl: 6 conversations
CHAT = [
    [{"role": "system", "content": SYS},
     {"role": "user", "content": "What is the capital of France?"},
     {"role": "assistant", "content": "Paris."}],
    [{"role": "system", "content": SYS},
     {"role": "user", "content": "Hello!"},
     {"role": "assistant", "content": "Hi there."},
     {"role": "user", "content": "What is two plus three?"},
     {"role": "assistant", "content": "Five."}],
    [{"role": "user", "content": "Say hello."},
     {"role": "assistant", "content": "Hello!"}],
    [{"role": "system", "content": "Answer in one word."},
     {"role": "user", "content": "How many legs does a spider have?"},
     {"role": "assistant", "content": "Eight."},
     {"role": "user", "content": "And how many does a bird have? Please write a short poem about it."},
     {"role": "assistant", "content": "Two legs to hop,\ntwo legs to stand,\ntwo legs to walk along the sand."}],
    [{"role": "system", "content": "Be friendly."},
     {"role": "user", "content": "Thank you for your help."},
     {"role": "assistant", "content": "You are welcome! Good night."}],
    [{"role": "system", "content": SYS},
     {"role": "user", "content": "Write a short poem about the sea."},
     {"role": "assistant", "content": "The sea is grey,\nthe boats are out."}],
]

# bad.jsonl: text-format file with malformed lines. (line text, is_good)
BAD = [
    (json.dumps({"text": "Hello there."}), True),
    ("this line is not JSON", False),
    (json.dumps({"text": "Good night."}), True),
    (json.dumps({"txt": "a misspelled key"}), False),
    (json.dumps({"text": 42}), False),
    (json.dumps({"text": "The year 2024 had 366 days."}), True),
    ('{"text": "unterminated string', False),
    (json.dumps(["text", "a JSON array, not an object"]), False),
    (json.dumps({"text": ["a", "list", "of", "strings"]}), False),
    (json.dumps({"text": "Thank you for your help!"}), True),
]

RUNS = {
    "text_all": dict(
        data="text.jsonl", kind="text",
        lora=dict(r=4, lora_alpha=8, target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj",
                                                     "down_proj"]),
        batch=2, grad_accum=1, seq=24, steps=20, lr=2e-3, weight_decay=0.01,
        schedule=dict(type="cosine", warmup_steps=3, total_steps=20), max_grad_norm=1.0),
    "pc_qv_rslora": dict(
        data="pc.jsonl", kind="pc",
        lora=dict(r=8, lora_alpha=16, use_rslora=True, target_modules=["q_proj", "v_proj"], layers_to_transform=[1]),
        batch=2, grad_accum=2, seq=32, steps=12, lr=5e-3, weight_decay=0.0,
        schedule=dict(type="linear", warmup_steps=0, total_steps=12), max_grad_norm=0.5),
    "chat_ov": dict(
        data="chat.jsonl", kind="chat",
        lora=dict(r=4, lora_alpha=4, target_modules=["o_proj", "down_proj"]),
        batch=3, grad_accum=1, seq=48, steps=8, lr=1e-2, weight_decay=0.1,
        schedule=dict(type="constant"), max_grad_norm=0.0),
}
EMBED_CHECK_RUN, EMBED_CHECK_EXAMPLE = "text_all", 0


# ----------------------------------------------------------------------------------------------
# compact JSON (as in gen_model_fixtures.py): dicts indented, lists of scalars on one line
# ----------------------------------------------------------------------------------------------

def dump_json(obj, indent: int = 0) -> str:
    pad = " " * indent
    if isinstance(obj, dict):
        if not obj:
            return "{}"
        items = [f'{pad} {json.dumps(str(k), ensure_ascii=False)}: {dump_json(v, indent + 1)}' for k, v in obj.items()]
        return "{\n" + ",\n".join(items) + "\n" + pad + "}"
    if isinstance(obj, (list, tuple)):
        if all(not isinstance(v, (dict, list, tuple)) for v in obj):
            return "[" + ",".join(json.dumps(v, ensure_ascii=False, allow_nan=False) for v in obj) + "]"
        items = [pad + " " + dump_json(v, indent + 1) for v in obj]
        return "[\n" + ",\n".join(items) + "\n" + pad + "]"
    return json.dumps(obj, ensure_ascii=False, allow_nan=False)


def write_json(path: Path, obj) -> None:
    path.write_text(dump_json(obj) + "\n", encoding="utf-8")


def sig(x: float, digits: int = 7) -> float:
    """Round to `digits` significant digits."""
    return float(f"{float(x):.{digits}g}")


def dir_size(p: Path) -> int:
    return sum(f.stat().st_size for f in p.rglob("*") if f.is_file()) if p.is_dir() else p.stat().st_size


# ----------------------------------------------------------------------------------------------
# tokenizer + model
# ----------------------------------------------------------------------------------------------

def train_tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE())  # no unk token, no byte fallback (every byte is in the base alphabet)
    tok.normalizer = None
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(vocab_size=VOCAB, min_frequency=2, special_tokens=SPECIALS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    # The corpus, then the data texts 3 times so that they compress well (the chat examples must fit in
    # seq = 48 tokens). The trainer does not split out special tokens: chats are given as "role\ncontent\n".
    default_system = [{"role": "system", "content": "You are a helpful AI assistant named SmolLM, trained by "
                                                    "Hugging Face"}]
    chats = ["".join(f"{m['role']}\n{m['content']}\n"
                     for m in (c if c[0]["role"] == "system" else default_system + c) + [{"role": "assistant",
                                                                                           "content": ""}])
             for c in CHAT]
    texts = [CORPUS] + 3 * (TEXT + [p + c for p, c in PC] + chats)
    tok.train_from_iterator(texts, trainer=trainer)
    assert tok.get_vocab_size() == VOCAB, tok.get_vocab_size()
    for i, s in enumerate(SPECIALS):
        assert tok.token_to_id(s) == i, (s, tok.token_to_id(s))
    return tok


def tokenizer_config() -> dict:
    added = {str(i): {"content": s, "lstrip": False, "normalized": False, "rstrip": False, "single_word": False,
                      "special": True} for i, s in enumerate(SPECIALS)}
    return {
        "add_bos_token": False,
        "add_eos_token": False,
        "add_prefix_space": False,
        "added_tokens_decoder": added,
        "additional_special_tokens": ["<|im_start|>", "<|im_end|>"],
        "bos_token": "<|im_start|>",
        "chat_template": CHAT_TEMPLATE,
        "clean_up_tokenization_spaces": False,
        "eos_token": "<|im_end|>",
        "model_max_length": 256,
        "pad_token": "<|im_end|>",
        "tokenizer_class": "PreTrainedTokenizerFast",
        "unk_token": "<|endoftext|>",
    }


def init_weights(model) -> None:
    """Seeded random float32 weights: embed_tokens (= tied lm_head) N(0, EMBED_STD²), linear weights
    N(0, LINEAR_STD²), RMSNorm weights U[0.8, 1.2]; drawn in state_dict order from one generator."""
    import torch

    g = torch.Generator().manual_seed(MODEL_SEED)
    with torch.no_grad():
        for k, v in model.state_dict().items():
            if k == "lm_head.weight":
                continue  # tied to embed_tokens
            if k.endswith("norm.weight"):
                t = 0.8 + 0.4 * torch.rand(v.shape, generator=g)
            elif k == "model.embed_tokens.weight":
                t = EMBED_STD * torch.randn(v.shape, generator=g)
            else:
                t = LINEAR_STD * torch.randn(v.shape, generator=g)
            v.copy_(t)


def build_model_dir(tok) -> None:
    from transformers import LlamaConfig, LlamaForCausalLM

    d = OUT / "model"
    shutil.rmtree(d, ignore_errors=True)
    d.mkdir(parents=True)
    cfg = LlamaConfig(**MODEL_CFG)
    cfg._attn_implementation = "eager"
    model = LlamaForCausalLM(cfg).float()
    init_weights(model)
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
    model.save_pretrained(d)
    (d / "generation_config.json").unlink(missing_ok=True)
    tok.save(str(d / "tokenizer.json"), pretty=True)
    write_json(d / "tokenizer_config.json", tokenizer_config())


def load_base():
    import torch
    from transformers import LlamaForCausalLM

    m = LlamaForCausalLM.from_pretrained(str(OUT / "model"), dtype=torch.float32, attn_implementation="eager")
    m.eval()
    return m


# ----------------------------------------------------------------------------------------------
# data + tokenization rules
# ----------------------------------------------------------------------------------------------

def write_data() -> None:
    d = OUT / "data"
    shutil.rmtree(d, ignore_errors=True)
    d.mkdir(parents=True)

    def lines(name, objs):
        (d / name).write_text("".join(o + "\n" for o in objs), encoding="utf-8")

    dumps = lambda o: json.dumps(o, ensure_ascii=False)  # noqa: E731
    lines("text.jsonl", [dumps({"text": t}) for t in TEXT])
    lines("pc.jsonl", [dumps({"prompt": p, "completion": c}) for p, c in PC])
    lines("chat.jsonl", [dumps({"messages": m}) for m in CHAT])
    lines("bad.jsonl", [s for s, _ in BAD])


class Rules:
    """The tokenization rules of the README, with the `tokenizers` tokenizer of model/ and transformers'
    apply_chat_template (both loaded from the saved folder)."""

    def __init__(self):
        from tokenizers import Tokenizer
        from transformers import AutoTokenizer

        self.tok = Tokenizer.from_file(str(OUT / "model" / "tokenizer.json"))
        self.hf = AutoTokenizer.from_pretrained(str(OUT / "model"))
        self.eos = self.hf.eos_token_id
        assert self.eos == 2 and self.hf.bos_token_id == 1
        self.encoded: list[str] = []  # every string passed to encode(), for the CLI cross-check

    def encode(self, s: str) -> list[int]:
        ids = self.tok.encode(s, add_special_tokens=True).ids  # "as the model says": adds nothing here
        assert ids == self.tok.encode(s, add_special_tokens=False).ids
        assert ids == self.hf(s).input_ids == self.hf(s, add_special_tokens=False).input_ids, s
        self.encoded.append(s)
        return ids

    def text(self, t: str):
        ids = self.encode(t) + [self.eos]
        return ids, [0] + [1] * (len(ids) - 1)

    def pc(self, p: str, c: str):
        a, b = self.encode(p), self.encode(c)
        ids = a + b + [self.eos]
        return ids, [0] * len(a) + [1] * (len(b) + 1)

    def render(self, msgs, gen: bool) -> str:
        return self.hf.apply_chat_template(msgs, tokenize=False, add_generation_prompt=gen)

    def chat(self, msgs):
        full = self.render(msgs, False)
        spans = []
        for i, m in enumerate(msgs):
            if m["role"] != "assistant":
                continue
            pre, upto = self.render(msgs[:i], True), self.render(msgs[:i + 1], False)
            assert upto.startswith(pre) and full.startswith(upto)
            spans.append((len(pre), len(upto)))
        segs, pos = [], 0
        for a, b in spans:
            if a > pos:
                segs.append((full[pos:a], False))
            segs.append((full[a:b], True))
            pos = b
        if pos < len(full):
            segs.append((full[pos:], False))
        ids, flags = [], []
        for s, t in segs:
            e = self.encode(s)
            ids += e
            flags += [int(t)] * len(e)
        flags[0] = 0
        whole = self.encode(full)
        return ids, flags, full, segs, ids == whole


def build_examples(rules: Rules) -> dict:
    ex = {}
    ex["text.jsonl"] = {"format": "text", "examples": []}
    for i, t in enumerate(TEXT):
        ids, fl = rules.text(t)
        ex["text.jsonl"]["examples"].append({"line": i + 1, "ids": ids, "targets": fl})
    ex["pc.jsonl"] = {"format": "prompt_completion", "examples": []}
    for i, (p, c) in enumerate(PC):
        ids, fl = rules.pc(p, c)
        ex["pc.jsonl"]["examples"].append({"line": i + 1, "prompt_token_count": fl.count(0), "ids": ids,
                                           "targets": fl})
    ex["chat.jsonl"] = {"format": "messages", "examples": []}
    for i, msgs in enumerate(CHAT):
        ids, fl, full, segs, same = rules.chat(msgs)
        ex["chat.jsonl"]["examples"].append({
            "line": i + 1, "rendered": full,
            "segments": [{"text": s, "target": t} for s, t in segs],
            "segmented_equals_whole_text": same, "ids": ids, "targets": fl})
    ex["bad.jsonl"] = {"format": "text", "bad_lines": [i + 1 for i, (_, ok) in enumerate(BAD) if not ok],
                       "examples": []}
    for i, (s, ok) in enumerate(BAD):
        if ok:
            ids, fl = rules.text(json.loads(s)["text"])
            ex["bad.jsonl"]["examples"].append({"line": i + 1, "ids": ids, "targets": fl})
    for f in ex.values():
        for e in f["examples"]:
            assert len(e["ids"]) == len(e["targets"]) and e["targets"][0] == 0
    return ex


# ----------------------------------------------------------------------------------------------
# training
# ----------------------------------------------------------------------------------------------

def lora_layers(model):
    from peft.tuners.lora import LoraLayer
    return [(n, m) for n, m in model.named_modules() if isinstance(m, LoraLayer)]


def adapter_key(param_name: str) -> str:
    """PEFT live parameter name -> key in adapter_model.safetensors."""
    return param_name.replace(".default.weight", ".weight")


def make_initial_adapter(run: str, spec: dict, index: int) -> Path:
    import torch
    from peft import LoraConfig, get_peft_model

    model = get_peft_model(load_base(), LoraConfig(task_type="CAUSAL_LM", lora_dropout=0.0, **spec["lora"]))
    g = torch.Generator().manual_seed(ADAPTER_SEED + index)
    with torch.no_grad():
        for _, m in lora_layers(model):  # named_modules order; A then B per module
            A, B = m.lora_A["default"].weight, m.lora_B["default"].weight
            torch.nn.init.kaiming_uniform_(A, a=math.sqrt(5), generator=g)  # PEFT's own A init: U(±1/√in)
            B.copy_((torch.rand(B.shape, generator=g) * 2 - 1) * 0.05)
    d = OUT / run / "init"
    shutil.rmtree(OUT / run, ignore_errors=True)
    model.peft_config["default"].base_model_name_or_path = "model"
    model.save_pretrained(str(d))
    (d / "README.md").unlink(missing_ok=True)
    return d


def micro_batches(n_examples: int, batch: int):
    """Endless stream of micro-batches: consecutive examples in file order, the last one of an epoch may be
    shorter, then the next epoch starts again at example 0."""
    while True:
        for s in range(0, n_examples, batch):
            yield list(range(s, min(s + batch, n_examples)))


def make_scheduler(opt, sch: dict):
    from transformers import get_constant_schedule, get_cosine_schedule_with_warmup, get_linear_schedule_with_warmup

    if sch["type"] == "cosine":
        return get_cosine_schedule_with_warmup(opt, sch["warmup_steps"], sch["total_steps"])
    if sch["type"] == "linear":
        return get_linear_schedule_with_warmup(opt, sch["warmup_steps"], sch["total_steps"])
    assert sch["type"] == "constant"
    return get_constant_schedule(opt)


def row_nll_sum(model, ids: list[int], flags: list[int]):
    """Σ NLL over the target tokens of one row, the row evaluated alone (batch 1, no padding), in the model's
    dtype."""
    import torch
    import torch.nn.functional as F

    x = torch.tensor([ids])
    logits = model(input_ids=x).logits[0]  # [L, V]
    nll = F.cross_entropy(logits[:-1], x[0, 1:], reduction="none")  # nll[i] predicts token i+1
    mask = torch.tensor(flags[1:], dtype=torch.bool)
    return nll[mask].sum()


def padded_hf_loss(model, rows, n_items: int) -> float:
    """The same micro-batch the transformers way: right-padded batch + attention mask, labels -100 where not a
    target, `num_items_in_batch` = targets of the whole optimizer step (ForCausalLMLoss, reduction sum / N)."""
    import torch

    L = max(len(r[0]) for r in rows)
    ids = torch.full((len(rows), L), 0, dtype=torch.long)
    att = torch.zeros((len(rows), L), dtype=torch.long)
    lab = torch.full((len(rows), L), -100, dtype=torch.long)
    for i, (r, f) in enumerate(rows):
        ids[i, :len(r)] = torch.tensor(r)
        att[i, :len(r)] = 1
        lab[i, :len(r)] = torch.tensor([t if fl else -100 for t, fl in zip(r, f)])
    with torch.no_grad():
        out = model(input_ids=ids, attention_mask=att, labels=lab, num_items_in_batch=torch.tensor(n_items))
    return float(out.loss)


def embedding_grad_check(model, ids: list[int], flags: list[int]) -> dict:
    import torch
    import torch.nn.functional as F

    x = torch.tensor([ids])
    emb = model.get_input_embeddings()(x).detach().clone().requires_grad_(True)  # [1, L, 64]
    logits = model(inputs_embeds=emb).logits[0]
    nll = F.cross_entropy(logits[:-1], x[0, 1:], reduction="none")
    mask = torch.tensor(flags[1:], dtype=torch.bool)
    loss = nll[mask].sum() / int(mask.sum())
    loss.backward()
    model.zero_grad(set_to_none=True)
    g = emb.grad[0]
    return {"ids": ids, "targets": flags, "loss": sig(loss.item(), 8),
            "token_nll": [sig(v, 7) for v in nll.detach().tolist()],
            "grad_inputs_embeds": [[sig(v, 7) for v in row] for row in g.tolist()],
            "grad_inputs_embeds_max_abs": sig(g.abs().max().item(), 7),
            "grad_inputs_embeds_frobenius": sig(g.norm().item(), 7)}


def load_trainable(init_dir: Path, dtype):
    from peft import PeftModel

    model = PeftModel.from_pretrained(load_base().to(dtype), str(init_dir), is_trainable=True).to(dtype)
    model.train()  # no dropout anywhere: attention_dropout 0, lora_dropout 0
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    assert named and all(".lora_" in n and p.dtype == dtype for n, p in named)
    return model, named


def train_loop(model, named, spec: dict, cut, log: str | None, padded_check: bool):
    """The training loop of the README. Returns the per-step records, the step-0 gradient norms per adapter
    tensor and the worst relative difference between the row-wise and the padded transformers loss."""
    import torch

    params = [p for _, p in named]
    mg = spec["max_grad_norm"]
    opt = torch.optim.AdamW(params, lr=spec["lr"], betas=(0.9, 0.999), eps=1e-8, weight_decay=spec["weight_decay"])
    sched = make_scheduler(opt, spec["schedule"])
    stream = micro_batches(len(cut), spec["batch"])
    steps, g0, worst_pad = [], None, 0.0
    for step in range(spec["steps"]):
        mbs = [next(stream) for _ in range(spec["grad_accum"])]
        n_tgt = sum(sum(cut[i][1][1:]) for mb in mbs for i in mb)
        lr = opt.param_groups[0]["lr"]
        loss = 0.0
        opt.zero_grad(set_to_none=True)
        for mb in mbs:
            mb_loss = 0.0
            for i in mb:
                s = row_nll_sum(model, *cut[i]) / n_tgt
                s.backward()  # gradients accumulate: Σ_rows ∂(nll_sum_row / N)
                mb_loss += s.item()
            loss += mb_loss
            if padded_check:
                hf = padded_hf_loss(model, [cut[i] for i in mb], n_tgt)
                worst_pad = max(worst_pad, abs(hf - mb_loss) / abs(mb_loss))
        if step == 0:
            g0 = {adapter_key(n): p.grad.norm().item() for n, p in named}
        if mg > 0:
            gn = float(torch.nn.utils.clip_grad_norm_(params, mg))  # clip_coef = mg / (gn + 1e-6), if < 1
        else:
            gn = float(torch.nn.utils.get_total_norm([p.grad for p in params]))
        opt.step()
        sched.step()
        steps.append({"step": step, "loss": loss, "lr": lr, "grad_norm": gn, "clipped": bool(mg > 0 and gn > mg),
                      "n_target_tokens": n_tgt, "examples": mbs})
        if log:
            print(f"[{log}] step {step:2d} loss {loss:.6f} lr {lr:.6g} grad_norm {gn:.5f} targets {n_tgt}", flush=True)
    return steps, g0, worst_pad


def run_training(run: str, spec: dict, index: int, examples: list[dict]) -> dict:
    import torch
    from safetensors.torch import load_file

    init_dir = make_initial_adapter(run, spec, index)
    init_sd = load_file(str(init_dir / "adapter_model.safetensors"))
    seq = spec["seq"]
    cut = [(e["ids"][:seq], e["targets"][:seq]) for e in examples]
    assert all(sum(f) > 0 for _, f in cut), "an example has no target token inside seq"

    # The reference: float32, training the adapter as loaded back from the saved folder (what the Swift side
    # starts from).
    model, named = load_trainable(init_dir, torch.float32)
    assert set(init_sd) == {adapter_key(n) for n, _ in named}
    for n, p in named:
        assert torch.equal(init_sd[adapter_key(n)], p.detach())
    result = {"settings": None}
    if run == EMBED_CHECK_RUN:
        ids, fl = cut[EMBED_CHECK_EXAMPLE]
        result["embedding_grad_check"] = {"example": EMBED_CHECK_EXAMPLE, **embedding_grad_check(model, ids, fl)}
    steps, g0, worst_pad = train_loop(model, named, spec, cut, run, padded_check=True)
    final_dir = OUT / run / "final"
    model.save_pretrained(str(final_dir))
    (final_dir / "README.md").unlink(missing_ok=True)
    final_sd = load_file(str(final_dir / "adapter_model.safetensors"))
    assert set(final_sd) == set(init_sd)
    for n, p in named:
        assert torch.equal(final_sd[adapter_key(n)], p.detach())
    scalings = sorted({float(m.scaling["default"]) for _, m in lora_layers(model)})
    modules = [n.split("base_model.model.", 1)[1] for n, _ in lora_layers(model)]

    # The same run in float64 (same initial values): how far float32 rounding alone moves the results.
    m64, named64 = load_trainable(init_dir, torch.float64)
    steps64, g0_64, _ = train_loop(m64, named64, spec, cut, None, padded_check=False)
    final64 = {adapter_key(n): p.detach() for n, p in named64}

    def max_abs(sd, which):
        return sig(max(float(v.abs().max()) for k, v in sd.items() if f".lora_{which}." in k), 7)

    def max_delta(a, b, which):
        return max(float((a[k].double() - b[k].double()).abs().max()) for k in a if f".lora_{which}." in k)

    def rel(a, b):
        return abs(a - b) / abs(b)

    result["steps"] = [{**s, "loss": sig(s["loss"], 8), "grad_norm": sig(s["grad_norm"], 7)} for s in steps]
    if run == EMBED_CHECK_RUN:
        result["step0_grad_norms"] = {k: sig(v, 7) for k, v in g0.items()}
    result["final"] = {"max_abs_A": max_abs(final_sd, "A"), "max_abs_B": max_abs(final_sd, "B"),
                       "max_abs_delta_A_vs_init": sig(max_delta(final_sd, init_sd, "A"), 4),
                       "max_abs_delta_B_vs_init": sig(max_delta(final_sd, init_sd, "B"), 4),
                       "init_max_abs_A": max_abs(init_sd, "A"), "init_max_abs_B": max_abs(init_sd, "B")}
    result["validation"] = {
        "padded_hf_loss_vs_rowwise_max_rel_diff": sig(worst_pad, 3),
        "float64_run": {
            "loss_max_rel_diff": sig(max(rel(a["loss"], b["loss"]) for a, b in zip(steps, steps64)), 3),
            "grad_norm_max_rel_diff": sig(max(rel(a["grad_norm"], b["grad_norm"]) for a, b in zip(steps, steps64)), 3),
            "step0_grad_norms_max_rel_diff": sig(max(rel(g0[k], g0_64[k]) for k in g0), 3),
            "final_A_max_abs_diff": sig(max_delta(final_sd, final64, "A"), 3),
            "final_B_max_abs_diff": sig(max_delta(final_sd, final64, "B"), 3),
        },
    }
    saved_cfg = json.loads((init_dir / "adapter_config.json").read_text())
    result["settings"] = {
        "data": f"data/{spec['data']}", "kind": spec["kind"], "examples": len(cut),
        "lora_config": spec["lora"], "target_modules_saved": saved_cfg["target_modules"],
        "lora_modules": modules, "scaling": scalings[0] if len(scalings) == 1 else scalings,
        "batch": spec["batch"], "grad_accum": spec["grad_accum"], "seq": seq, "steps": spec["steps"],
        "lr": spec["lr"], "betas": [0.9, 0.999], "eps": 1e-8, "weight_decay": spec["weight_decay"],
        "schedule": spec["schedule"], "max_grad_norm": spec["max_grad_norm"],
        "init": f"{run}/init", "final": f"{run}/final",
    }
    return result


# ----------------------------------------------------------------------------------------------
# LoRAKit tokenizer cross-check
# ----------------------------------------------------------------------------------------------

def check_cli(cli: str, rules: Rules) -> bool:
    texts = list(dict.fromkeys(rules.encoded))  # unique, first-seen order
    bad = 0
    with tempfile.TemporaryDirectory() as tmp:
        for k, s in enumerate(texts):
            f = Path(tmp) / f"t{k}.txt"
            f.write_bytes(s.encode("utf-8"))
            out = subprocess.run([cli, "tokenize", "--model", str(OUT / "model"), "--file", str(f), "--json"],
                                 capture_output=True, text=True)
            if out.returncode != 0:
                print(f"lorakit-cli failed on {s!r}: {out.stderr.strip()}", file=sys.stderr)
                bad += 1
                continue
            got = [int(v) for v in json.loads(out.stdout)["tokens"]]
            want = rules.tok.encode(s).ids
            if got != want:
                bad += 1
                print(f"MISMATCH {s!r}:\n  lorakit   {got}\n  tokenizers {want}", file=sys.stderr)
    print(f"tokenizer cross-check: {len(texts) - bad}/{len(texts)} texts tokenized identically by lorakit-cli")
    return bad == 0


# ----------------------------------------------------------------------------------------------

def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--cli", help="lorakit-cli binary: only cross-check the committed tokenizer against it")
    args = ap.parse_args()
    if os.environ.get("PYTHONHASHSEED") != "0" or os.environ.get("RAYON_NUM_THREADS") != "1":
        # PEFT saves target_modules as a list in set order (string hash seed); BPE training is threaded.
        os.execve(sys.executable, [sys.executable, *sys.argv],
                  {**os.environ, "PYTHONHASHSEED": "0", "RAYON_NUM_THREADS": "1"})
    import peft
    import tokenizers
    import torch
    import transformers

    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    torch.manual_seed(0)
    t0 = time.time()

    if args.cli:
        rules = Rules()
        build_examples(rules)
        sys.exit(0 if check_cli(args.cli, rules) else 1)

    OUT.mkdir(parents=True, exist_ok=True)
    build_model_dir(train_tokenizer())
    write_data()
    rules = Rules()
    examples = build_examples(rules)
    write_json(OUT / "examples.json", examples)

    # how peaked are the base model's predictions (logits must not be flat)
    base = load_base()
    with torch.no_grad():
        ids = torch.tensor([examples["text.jsonl"]["examples"][0]["ids"]])
        lg = base(input_ids=ids).logits[0].double()
        p = torch.softmax(lg, -1)
        entropy = float(-(p * p.log()).sum(-1).mean())
        nll0 = float(torch.nn.functional.cross_entropy(lg[:-1], ids[0, 1:]))

    ref = {
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__, "peft": peft.__version__,
                     "tokenizers": tokenizers.__version__, "python": sys.version.split()[0]},
        "model": {"dir": "model", **{k: v for k, v in MODEL_CFG.items()}, "seed": MODEL_SEED,
                  "embed_std": EMBED_STD, "linear_std": LINEAR_STD,
                  "base_mean_entropy_text0": round(entropy, 4), "base_mean_nll_text0": round(nll0, 4)},
        "runs": {},
    }
    for k, (run, spec) in enumerate(RUNS.items()):
        exs = examples[spec["data"]]["examples"]
        ref["runs"][run] = run_training(run, spec, k, exs)
    write_json(OUT / "reference.json", ref)

    print("\n=== summary ===")
    print(f"base model: mean entropy {entropy:.3f} nats (uniform {math.log(VOCAB):.3f}), NLL of text 0 {nll0:.3f}")
    for run, r in ref["runs"].items():
        s = r["steps"]
        print(f"{run}: loss {s[0]['loss']:.5f} -> {s[-1]['loss']:.5f}; {r['validation']}; final {r['final']}")
    for p in sorted(OUT.rglob("*")):
        if p.is_file():
            print(f"  {p.stat().st_size:>8,d}  {p.relative_to(OUT)}")
    print(f"total {dir_size(OUT):,d} bytes; time {time.time() - t0:.0f}s")


if __name__ == "__main__":
    main()
