#!/usr/bin/env python3
"""Generate the tokenizer test fixtures under Tests/LoRAKitTests/Fixtures/tokenizer/.

    pip install transformers tokenizers gguf regex   # torch is not needed
    python3 scripts/gen_tokenizer_fixtures.py [path/to/SmolLM2-135M-Instruct.Q4_1.gguf]

Writes (committed):
  smollm2_cases.json  every case string with Hugging Face's ids for it, built from the same GGUF as
                      the Swift tests use: add_special_tokens default (True) and False, and with
                      special tokens split as text (`split_special_tokens=True`, our parseSpecial:false).
  pretok_cases.json   pre-tokenizer splits of tricky strings for each named pre-tokenizer, from the
                      Python `regex` module's findall with the real patterns (and checked against the
                      `tokenizers` library's own pre-tokenizers, which use Oniguruma).
  tiny_spm.gguf       a tiny SentencePiece BPE vocabulary (tokenizer.ggml.model = "llama") trained here with
                      the `sentencepiece` library (identity normalization, byte fallback), no tensors;
  tiny_spm_cases.json the `sentencepiece` library's own ids for strings encoded with it;
  tiny_cases.json     expectations for the hand-written tiny tokenizer.json (tiny_tokenizer.json),
                      computed by the `tokenizers` library.
and (not committed) /tmp/lorakit-smollm2-tokenizer/tokenizer.json: the HF tokenizer.json of the same
tokenizer, used by the Swift tests when LORAKIT_HF_TOKENIZER_JSON points at it.

The HF tokenizer is loaded with `AutoTokenizer.from_pretrained(dir, gguf_file=name)`. Recent transformers
import torch in their GGUF reader; without torch the script reads the metadata with the `gguf` package and
calls the same transformers converter (`convert_gguf_tokenizer`) that AutoTokenizer uses.
"""
import json
import os
import subprocess
import sys

import regex

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "Tests", "LoRAKitTests", "Fixtures", "tokenizer")
HF_JSON_DIR = "/tmp/lorakit-smollm2-tokenizer"

# ---------------------------------------------------------------------------------------------------
# Pre-tokenizer patterns (llama.cpp src/llama-vocab.cpp and the models' tokenizer.json files).
GPT2 = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"
LLAMA3 = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
          r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
QWEN2 = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
         r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")


def isolate(pattern, text):
    """Split `text` around every match of `pattern`, keeping matches and the text between them."""
    out, last = [], 0
    for m in regex.finditer(pattern, text):
        if m.start() > last:
            out.append(text[last:m.start()])
        out.append(m.group())
        last = m.end()
    if last < len(text):
        out.append(text[last:])
    return out


def split(pre, text):
    if pre in ("gpt2", "default"):
        return regex.findall(GPT2, text)
    if pre in ("smollm", "starcoder"):  # Digits(individual_digits) then the GPT-2 ByteLevel regex
        return [p for seg in isolate(r"\p{N}", text) for p in regex.findall(GPT2, seg)]
    if pre == "llama3":
        return regex.findall(LLAMA3, text)
    if pre == "qwen2":
        return regex.findall(QWEN2, text)
    raise ValueError(pre)


def hf_split(pre, text):
    """The same split done by the `tokenizers` library (Oniguruma), for a cross-check."""
    from tokenizers import Regex, pre_tokenizers as pt
    if pre in ("gpt2", "default"):
        p = pt.Split(Regex(GPT2), behavior="isolated")
    elif pre in ("smollm", "starcoder"):
        p = pt.Sequence([pt.Digits(individual_digits=True), pt.Split(Regex(GPT2), behavior="isolated")])
    else:
        p = pt.Split(Regex(LLAMA3 if pre == "llama3" else QWEN2), behavior="isolated")
    return [s for s, _ in p.pre_tokenize_str(text)]


PRETOK_STRINGS = [
    "Hello world", "Hello  world", "Hello   world  ", "  leading", "trailing   ", " ", "  ", "\t", "\n", "",
    "a\tb", "a\t\tb", "a \tb", "a\t b", "a \n b", "a\n\n\nb", "a \n\n b", " \n ", "x\r\ny", "x \r\n\r\n y",
    "don't", "DON'T", "I'LL", "it's", "we'Re", "she'd've", "'s", "''s", "rock'n'roll", "l'été",
    "123", "1234567", " 12345", "3.14159", "1,000,000", "a1b2c3", "x² + y³", "Ⅻ and ½", "٣٤٥",
    "foo.bar(baz)", "  if (x) {\n    return y;\n  }\n", "\"quoted\"", "...!!!???", " !!", "a!!b", "!!\n\n",
    "café", "naïve résumé", "e\u0301te\u0301", "Ελληνικά κείμενα", "Русский текст", "中文字符测试", "日本語のテキスト",
    "한국어 텍스트", "مرحبا بالعالم", "שלום", "हिन्दी", "ไทย", "👋🏽 hi 👨‍👩‍👧‍👦!", "🎉🎉", "a\u00a0b", "a\u3000b",
    "a\u2028b", "tab\there\t\t", "\u200bzero", "mixed123abc!!!   \n\n\tend", "$100.00 (approx.)",
    "<|im_start|>user", "snake_case_name = 42", "email@example.com", "http://x.y/z?q=1&r=2",
]
PRETOKS = ["gpt2", "smollm", "llama3", "qwen2"]


def random_strings(count=250, seed=1234):
    """Fixed-seed random strings over an alphabet chosen to hit every regex branch: spaces, tabs, CR/LF,
    other Unicode spaces, apostrophes and contraction letters in both cases, digits and other numbers,
    punctuation, accents and combining marks, several scripts, emoji with ZWJ and skin tones."""
    import random
    rnd = random.Random(seed)
    atoms = [" ", " ", " ", "  ", "\t", "\n", "\r\n", "\n\n", "\u00a0", "\u3000", "'", "'", "s", "t", "re", "VE",
             "M", "ll", "D", "a", "Z", "word", "Hello", "0", "7", "42", "1234", "½", "²", "٣", ".", ",", "!", "?",
             "(", ")", "{", "}", "_", "-", "+", "=", "#", "\"", "é", "e\u0301", "ß", "Ω", "ж", "中", "文", "の",
             "한", "م", "👋", "🏽", "\u200d", "👨", "❤", "\ufe0f", "<|im_end|>", "<", "|", ">"]
    out = []
    for _ in range(count):
        out.append("".join(rnd.choice(atoms) for _ in range(rnd.randint(1, 14))))
    return out

# ---------------------------------------------------------------------------------------------------
# Case strings for the real vocabulary.
CASES = [
    # prose
    "Hello world", "Hello, world!", "The quick brown fox jumps over the lazy dog.",
    "Tokenizers split text into pieces, then merge bytes by rank.",
    "In 1969, Apollo 11 landed on the Moon; Neil Armstrong said: \"That's one small step for [a] man.\"",
    "Hello world", "hello World HELLO wOrLd",
    # code
    "def fib(n):\n    if n < 2:\n        return n\n    return fib(n - 1) + fib(n - 2)\n",
    "#include <stdio.h>\n\nint main(void) {\n\tprintf(\"%d\\n\", 42);\n\treturn 0;\n}\n",
    "{\n  \"name\": \"LoRAKit\",\n  \"version\": [1, 2, 3],\n  \"ok\": true\n}",
    "for (int i = 0; i < n; ++i) { a[i] += b[i] * c; }",
    "x = [i**2 for i in range(10) if i % 2 == 0]  # squares",
    "SELECT * FROM users WHERE id = 42;",
    "    indented with four spaces", "\t\ttabs\tinside\t", "<div class=\"x\">&nbsp;</div>",
    # whitespace
    "", " ", "  ", "   ", "\t", "\n", "\n\n\n", " \n ", "trailing spaces   ", "   leading spaces",
    "a  b   c    d", "line1\nline2\r\nline3\rline4", "a\t\tb", "mixed \t \n \t end", "\n \n  \n",
    # digits
    "12345678901234567890", "3.14159", "1,000,000", "0.001 and -42 and +7", "2024-05-09T13:34:43Z",
    "x1y22z333", " 1 22 333", "½ ² Ⅻ ٣",
    # punctuation
    "!!!???...", "Wait... what?!", "(a) [b] {c} <d>", "@user #tag $5 %10 ^ & * ~ `code` | \\ /",
    "--- *** ___ === +++", "«quotes» „low“ ‘single’ — dash – en",
    # contractions
    "don't", "I'LL", "it's", "They're we've I'm you'd she'll", "DON'T WON'T CAN'T", "rock 'n' roll",
    # accents and other scripts
    "café naïve résumé coöperate", "Ærøskøbing Straße Œuvre", "e\u0301 composed vs é",
    "Ελληνικά: Γειά σου Κόσμε", "Русский: Привет, мир!", "中文：你好，世界！", "日本語のテキストです。",
    "한국어 문장입니다", "العربية: مرحبا بالعالم", "עברית", "हिन्दी पाठ", "ภาษาไทย",
    # emoji
    "👋", "👋🏽 Hi! 👍🏿", "👨‍👩‍👧‍👦 family", "🏳️‍🌈 flag", "❤️🔥✨", "🇫🇷🇯🇵",
    # special tokens in text
    "<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n4<|im_end|>\n",
    "<|endoftext|>", "text<|endoftext|>more", "<|im_start|><|im_end|>", "<|im_start", "< |im_start|>",
    "<|im_start|>system\nYou are helpful.<|im_end|>", "<filename>main.py<file_sep>", "<|im_end|><|im_end|>",
    # misc
    "a", "ab", "abc", "\u200b", "a\u00a0b", "mañana", "https://huggingface.co/HuggingFaceTB/SmolLM2-135M?x=1",
    "C:\\Users\\name\\file.txt", "snake_case camelCase PascalCase kebab-case",
]


def load_hf_tokenizer(gguf_path):
    from transformers import AutoTokenizer, PreTrainedTokenizerFast
    d, name = os.path.split(os.path.abspath(gguf_path))
    try:
        return AutoTokenizer.from_pretrained(d, gguf_file=name), "AutoTokenizer.from_pretrained(gguf_file=...)"
    except (ImportError, ModuleNotFoundError) as e:
        print(f"note: AutoTokenizer GGUF loading needs torch here ({e}); using transformers' converter directly",
              file=sys.stderr)
    from gguf import GGUFReader
    from transformers.integrations.gguf.gguf_tokenizer_mapping import (
        GGUF_TOKENIZER_MAPPING, _SPECIAL_TOKENS, convert_gguf_tokenizer)
    r = GGUFReader(gguf_path)
    md = {k: f.contents() for k, f in r.fields.items() if k.startswith("tokenizer.") or k.startswith("general.")}
    grouped = {group: {name: md[f"tokenizer.{key}"] for key, name in renames.items() if f"tokenizer.{key}" in md}
               for group, renames in GGUF_TOKENIZER_MAPPING.items()}
    tdict, tconfig = grouped["tokenizer"], grouped["tokenizer_config"]
    for nm, key in _SPECIAL_TOKENS.items():
        tid = md.get(f"tokenizer.ggml.{key}")
        tconfig[nm] = tdict["tokens"][tid] if tid is not None else None
    backend, _ = convert_gguf_tokenizer(md["general.architecture"], tdict)
    tconfig.pop("chat_template", None)
    tok = PreTrainedTokenizerFast(tokenizer_object=backend, **tconfig)
    return tok, "transformers convert_gguf_tokenizer (no torch)"


def main():
    gguf_path = sys.argv[1] if len(sys.argv) > 1 else os.environ.get("LORAKIT_MODEL") or subprocess.check_output(
        ["bash", os.path.join(ROOT, "scripts", "fetch_model.sh")], text=True).strip()
    os.makedirs(OUT, exist_ok=True)

    # Pre-tokenizer splits, checked against Oniguruma.
    pretok = {"patterns": {"gpt2": GPT2, "llama3": LLAMA3, "qwen2": QWEN2,
                           "smollm": "Digits(individual_digits) then gpt2"},
              "cases": []}
    for s in PRETOK_STRINGS + random_strings(150, seed=99):
        entry = {"text": s}
        for pre in PRETOKS:
            pieces = split(pre, s)
            assert "".join(pieces) == s, (pre, s, pieces)
            hp = hf_split(pre, s)
            if hp != pieces:
                print(f"warning: regex and tokenizers disagree for {pre} on {s!r}: {pieces} vs {hp}", file=sys.stderr)
            entry[pre] = pieces
        pretok["cases"].append(entry)
    with open(os.path.join(OUT, "pretok_cases.json"), "w", encoding="utf-8") as f:
        json.dump(pretok, f, ensure_ascii=False, indent=1)

    # The real vocabulary.
    tok, how = load_hf_tokenizer(gguf_path)
    os.makedirs(HF_JSON_DIR, exist_ok=True)
    # transformers' GGUF converter ignores tokenizer.ggml.pre = "smollm" and pre-tokenizes with plain
    # ByteLevel, while SmolLM2's own tokenizer.json (and llama.cpp's "smollm") isolate each \p{N} first:
    # Sequence[Digits(individual_digits=True), ByteLevel]. We use the model's real pre-tokenizer and keep
    # the converter's ids where they differ ("ids_gguf_converter"), which happens for non-ASCII numbers.
    from tokenizers import Regex, pre_tokenizers as pt
    import copy
    conv = copy.deepcopy(tok.backend_tokenizer)
    pre_type = None
    try:
        from gguf import GGUFReader
        f = GGUFReader(gguf_path).fields.get("tokenizer.ggml.pre")
        pre_type = f.contents() if f is not None else None
    except Exception as e:  # pragma: no cover
        print(f"warning: cannot read tokenizer.ggml.pre: {e}", file=sys.stderr)
    if pre_type in ("smollm", "starcoder"):
        tok.backend_tokenizer.pre_tokenizer = pt.Sequence(
            [pt.Digits(individual_digits=True), pt.ByteLevel(add_prefix_space=False, use_regex=True)])
    tok.backend_tokenizer.save(os.path.join(HF_JSON_DIR, "tokenizer.json"))
    # The same vocabulary with the llama3 and qwen2 splits (as transformers' GGUF converter sets them up,
    # llama3 with ignore_merges as llama.cpp does), to test those pre-tokenizers end to end.
    variants = {}
    for name, pattern, ignore in (("llama3", LLAMA3, True), ("qwen2", QWEN2, False)):
        v = copy.deepcopy(tok.backend_tokenizer)
        v.pre_tokenizer = pt.Sequence([pt.Split(Regex(pattern), behavior="isolated"),
                                       pt.ByteLevel(add_prefix_space=False, use_regex=False)])
        v.model.ignore_merges = ignore
        variants[name] = v
    cases = []
    n_hand = len(CASES)
    for s in CASES + random_strings():
        ids = tok(s)["input_ids"]
        ids_ns = tok(s, add_special_tokens=False)["input_ids"]
        ids_split = tok(s, add_special_tokens=False, split_special_tokens=True)["input_ids"]
        entry = {"text": s, "ids": ids, "ids_no_special": ids_ns, "ids_split_special": ids_split,
                 "decoded": tok.decode(ids_ns)}
        for name, v in variants.items():
            entry[f"ids_{name}"] = v.encode(s, add_special_tokens=False).ids
        conv_ids = conv.encode(s, add_special_tokens=False).ids
        if conv_ids != ids_ns:
            print(f"note: transformers' GGUF converter pre-tokenizer gives other ids for {s!r}", file=sys.stderr)
            entry["ids_gguf_converter"] = conv_ids
        if len(cases) >= n_hand:
            entry["random"] = True
        cases.append(entry)
    import transformers
    import tokenizers
    doc = {"source": os.path.basename(gguf_path), "loader": how,
           "versions": {"transformers": transformers.__version__, "tokenizers": tokenizers.__version__},
           "pre_tokenizer": pre_type, "bos_token_id": tok.bos_token_id, "eos_token_id": tok.eos_token_id, "vocab_size": len(tok),
           "cases": cases}
    with open(os.path.join(OUT, "smollm2_cases.json"), "w", encoding="utf-8") as f:
        json.dump(doc, f, ensure_ascii=False, indent=1)

    # The tiny hand-written tokenizer.json.
    from tokenizers import Tokenizer
    tiny = Tokenizer.from_file(os.path.join(OUT, "tiny_tokenizer.json"))
    tiny_strings = ["hello world", "hello", "abc", "ab", "bc", "café", "hello<|im_end|>", "<think>hello</think>",
                    "hello é!", "日", " hello", "hellohello", "abcabc", "", "ll", "ZZZ"]
    tcases = []
    for s in tiny_strings:
        e = tiny.encode(s)
        e2 = tiny.encode(s, add_special_tokens=False)
        tcases.append({"text": s, "ids": e.ids, "ids_no_special": e2.ids, "tokens": e.tokens,
                       "decoded": tiny.decode(e2.ids, skip_special_tokens=False)})
    with open(os.path.join(OUT, "tiny_cases.json"), "w", encoding="utf-8") as f:
        json.dump({"cases": tcases}, f, ensure_ascii=False, indent=1)
    n_spm = make_spm_fixture()
    print(f"wrote {len(cases)} cases, {len(pretok['cases'])} pre-tokenizer cases, {len(tcases)} tiny cases, {n_spm} SentencePiece cases "
          f"({how}); HF tokenizer.json in {HF_JSON_DIR}")


def make_spm_fixture():
    """Train a tiny SentencePiece BPE model, store it as a GGUF the way llama.cpp's converter does, and
    record sentencepiece's ids."""
    import random
    import tempfile
    import gguf
    import sentencepiece as spm
    from sentencepiece import sentencepiece_model_pb2 as pb
    rnd = random.Random(5)
    words = ("the quick brown fox jumps over lazy dog hello world tokenizer merges pieces score byte fallback "
             "café naïve über straße 123 4567 don't it's I'm we'll").split()
    lines = [" ".join(rnd.choice(words) for _ in range(rnd.randint(3, 12))) for _ in range(3000)]
    with tempfile.TemporaryDirectory() as d:
        with open(f"{d}/train.txt", "w") as f:
            f.write("\n".join(lines))
        spm.SentencePieceTrainer.train(
            input=f"{d}/train.txt", model_prefix=f"{d}/tiny", vocab_size=420, model_type="bpe", byte_fallback=True,
            character_coverage=1.0, normalization_rule_name="identity", add_dummy_prefix=True,
            remove_extra_whitespaces=False, user_defined_symbols=["<think>"], unk_id=0, bos_id=1, eos_id=2,
            pad_id=-1, num_threads=1, minloglevel=2)
        sp = spm.SentencePieceProcessor(model_file=f"{d}/tiny.model")
        m = pb.ModelProto()
        with open(f"{d}/tiny.model", "rb") as f:
            m.ParseFromString(f.read())
    # sentencepiece piece types: 1 normal, 2 unknown, 3 control, 4 user defined, 5 unused, 6 byte (= GGUF's).
    w = gguf.GGUFWriter(os.path.join(OUT, "tiny_spm.gguf"), "llama")
    w.add_tokenizer_model("llama")
    w.add_token_list([p.piece for p in m.pieces])
    w.add_token_scores([p.score for p in m.pieces])
    w.add_token_types([p.type for p in m.pieces])
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_unk_token_id(0)
    w.add_add_bos_token(True)
    w.add_add_eos_token(False)
    w.add_add_space_prefix(True)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    texts = ["hello world", "Hello World", "the quick brown fox", "  two  spaces", " leading", "trailing ", "日本",
             "café naïve über straße", "don't it's I'm we'll", "x<think>y", "1234567", "tokenizer merges pieces",
             "", " ", "a", "\n", "emoji 👋🏽!", "über-café\tstraße", "ZZZ qqq", "lazy dogs jumped"]
    for _ in range(40):
        texts.append(" ".join(rnd.choice(words + ["日", "👋", "x", "Q", "!"]) for _ in range(rnd.randint(1, 6))))
    cases = [{"text": t, "ids": sp.encode(t), "pieces": sp.encode(t, out_type=str)} for t in texts
             if "<think>" not in t]
    # sentencepiece itself does not cut user-defined symbols out of text; llama.cpp and HF do.
    # llama.cpp cuts added tokens out first and gives the text after one a dummy prefix again.
    cases.append({"text": "x<think>y", "ids": sp.encode("x") + [sp.piece_to_id("<think>")] + sp.encode("y"),
                  "note": "user-defined token cut out of the text (llama.cpp): text after it gets the dummy prefix"})
    with open(os.path.join(OUT, "tiny_spm_cases.json"), "w", encoding="utf-8") as f:
        json.dump({"vocab_size": sp.get_piece_size(), "cases": cases}, f, ensure_ascii=False, indent=1)
    return len(cases)


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--spm-only":
        print(f"wrote {make_spm_fixture()} SentencePiece cases")
        sys.exit(0)
    main()
