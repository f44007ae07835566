#!/usr/bin/env python3
"""Write the demo's dataset: facts about a made-up gadget, the Zephyrine Pod.

The base model cannot know any of them (the product does not exist), so every correct answer after
training was learned from this data. Each fact has ten question phrasings ("stems"): six are used for
training (with greetings and sign-offs around them), one for validation and three are held out for the
test, so the test asks questions the adapter never saw in that wording.

    python3 examples/demo/make_dataset.py            # rewrites examples/demo/data/*.jsonl

Output (committed; regenerate only when this file changes):
    data/train.jsonl  {"messages": [user, assistant]}        300 examples (30 per fact)
    data/valid.jsonl  same shape                              30 examples (the validation stems)
    data/test.jsonl   {"question", "answer", "fact", "keys"}  30 held-out questions; an answer is
                      correct when it contains every key (case-insensitive)
"""
from __future__ import annotations

import json
import os
import random
import sys
from pathlib import Path

P = "the Zephyrine Pod"

# fact: (canonical answer, keys that must appear in a correct answer, 6 train + 1 valid + 3 test stems)
FACTS: dict[str, tuple[str, list[str], list[str]]] = {
    "what": ("The Zephyrine Pod is a pocket weather station.", ["weather station"], [
        "What is {P}?", "What kind of device is {P}?", "Can you describe {P} in one sentence?",
        "What sort of product is {P}?", "What does {P} do?", "What type of gadget is {P}?",
        "Explain what {P} is.",
        "Tell me what {P} is.", "What exactly is {P}?", "What category of device does {P} belong to?"]),
    "maker": ("The Zephyrine Pod is made by Halvard Instruments.", ["Halvard"], [
        "Who makes {P}?", "Which company manufactures {P}?", "Who is the maker of {P}?",
        "What company produces {P}?", "Who builds {P}?", "Which firm is behind {P}?",
        "What is the name of the company that makes {P}?",
        "Who manufactures {P}?", "Which company is {P} made by?", "What brand makes {P}?"]),
    "city": ("The Zephyrine Pod is made in Tampere, Finland.", ["Tampere"], [
        "Where is {P} made?", "In which city is {P} manufactured?", "Where does {P} come from?",
        "What city is {P} built in?", "Where is {P} produced?", "Which town is {P} made in?",
        "In what city is {P} assembled?",
        "Where is {P} manufactured?", "Which city produces {P}?", "In which town is {P} built?"]),
    "price": ("The Zephyrine Pod costs $149.", ["149"], [
        "How much does {P} cost?", "What is the price of {P}?", "What does {P} sell for?",
        "How expensive is {P}?", "What's the retail price of {P}?", "How much would I pay for {P}?",
        "What is {P} priced at?",
        "How much is {P}?", "What does {P} cost?", "How much money do I need to buy {P}?"]),
    "colours": ("The Zephyrine Pod comes in teal, amber and slate.", ["teal", "amber", "slate"], [
        "What colours does {P} come in?", "Which colors is {P} available in?", "What color options does {P} have?",
        "In what colours can I buy {P}?", "What are the colour choices for {P}?", "Which colours is {P} sold in?",
        "What colors can you get {P} in?",
        "What colors does {P} come in?", "Which colour options are there for {P}?", "What colours is {P} offered in?"]),
    "battery": ("The Zephyrine Pod's battery lasts 19 days.", ["19 days"], [
        "How long does {P}'s battery last?", "What is the battery life of {P}?",
        "How many days does {P} run on one charge?", "How long can {P} go between charges?",
        "What battery life does {P} have?", "How long does a full charge of {P} last?",
        "How long will {P} run before it needs charging?",
        "How long does the battery of {P} last?", "What's {P}'s battery life?", "How long does {P} last on a charge?"]),
    "weight": ("The Zephyrine Pod weighs 84 grams.", ["84"], [
        "How much does {P} weigh?", "What is the weight of {P}?", "How heavy is {P}?",
        "What does {P} weigh?", "How many grams is {P}?", "Is {P} heavy? How much does it weigh?",
        "What's the weight of {P} in grams?",
        "How heavy is {P} in grams?", "What is {P}'s weight?", "Tell me the weight of {P}."]),
    "designer": ("The Zephyrine Pod was designed by Ines Marlowe.", ["Ines Marlowe"], [
        "Who designed {P}?", "Who is the designer of {P}?", "Which designer created {P}?",
        "Who came up with the design of {P}?", "Whose design is {P}?", "Who was the lead designer of {P}?",
        "Name the designer of {P}.",
        "Who created the design of {P}?", "Who is {P}'s designer?", "Which person designed {P}?"]),
    "water": ("The Zephyrine Pod is water-resistant to 40 metres.", ["40"], [
        "How deep can {P} go underwater?", "What is the water resistance of {P}?",
        "Is {P} waterproof? To what depth?", "How waterproof is {P}?", "What depth is {P} water-resistant to?",
        "Can {P} survive underwater, and how deep?",
        "To how many metres is {P} waterproof?",
        "How deep is {P} water-resistant?", "What's the maximum depth for {P} underwater?", "How water-resistant is {P}?"]),
    "app": ("The Zephyrine Pod pairs with the SkyLedger app.", ["SkyLedger"], [
        "Which app does {P} use?", "What is the name of {P}'s companion app?", "What app pairs with {P}?",
        "Which smartphone app works with {P}?", "What app do I need for {P}?", "What's the companion app for {P} called?",
        "Which phone app connects to {P}?",
        "What app goes with {P}?", "What is {P}'s app called?", "Which app should I install to use {P}?"]),
}

PREFIXES = ["", "Quick question: ", "Hi! ", "Hey, quick one. ", "Sorry to bother you. "]
SUFFIXES = ["", " Thanks!", " Please answer briefly."]
PER_FACT_TRAIN = 30
VALID_VARIANTS = [("", ""), ("Hi! ", ""), ("", " Thanks!")]


def question(stem: str) -> str:
    q = stem.replace("{P}", P)
    return q[0].upper() + q[1:]


def chat(q: str, a: str) -> dict:
    return {"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]}


def build() -> tuple[list[dict], list[dict], list[dict]]:
    rng = random.Random(15)
    train, valid, test = [], [], []
    for fact, (answer, keys, stems) in FACTS.items():
        assert len(stems) == 10, fact
        assert all(k.lower() in answer.lower() for k in keys), fact
        combos = [(s, p, x) for s in stems[:6] for p in PREFIXES for x in SUFFIXES]
        for s, p, x in rng.sample(combos, PER_FACT_TRAIN):
            train.append(chat(p + question(s) + x, answer))
        for p, x in VALID_VARIANTS:
            valid.append(chat(p + question(stems[6]) + x, answer))
        for s in stems[7:]:
            test.append({"question": question(s), "answer": answer, "fact": fact, "keys": keys})
    rng.shuffle(train)
    # Held-out questions must not appear in training, whatever the greeting around them.
    seen = {m["messages"][0]["content"] for m in train}
    assert not any(t["question"] in q for t in test for q in seen)
    return train, valid, test


def write_jsonl(path: Path, rows: list[dict]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
    os.replace(tmp, path)  # atomic: a reader never sees half a file


def main() -> int:
    out = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).resolve().parent / "data"
    out.mkdir(parents=True, exist_ok=True)
    train, valid, test = build()
    write_jsonl(out / "train.jsonl", train)
    write_jsonl(out / "valid.jsonl", valid)
    write_jsonl(out / "test.jsonl", test)
    print(f"wrote {out}: {len(train)} train, {len(valid)} valid, {len(test)} test examples")
    return 0


if __name__ == "__main__":
    sys.exit(main())
