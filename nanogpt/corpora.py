"""The built-in corpora, made in code (no download): the notebook's patterns and simple text.

Each corpus is a dict of document groups; `nanogpt.dataset` splits every group 90/10 by document,
so each kind of document also lands in validation (held out from training).

The counting documents are runs of consecutive sentences ("Number 40 comes before 41.\nNumber 41
comes before 42.\n..."): a context window then shows each number three times (after "before", after
"Number", and plus one after the next "before"), so most digits are predictable by copying with an
increment, and a small model learns the rule (copy the prefix, add one to the last digit, carry)
in a few hundred steps instead of memorising 1,000 unrelated lines. A run in validation holds its
numbers out: their "Number k comes before" sentences are nowhere in training, so a model that
completes them has learned to count, not remembered.
"""

from __future__ import annotations

import random

# Numbers below 1,000, as the ABC lines: four-digit numbers were learned worse (benchmarks/RESULTS.md, "Presets").
COUNTING_MAX = 1000  # "Number i comes before i+1." for 0 <= i < COUNTING_MAX
COUNTING_RUN = 10  # consecutive sentences per counting document
# There are 10 one-digit and 90 two-digit numbers against 900 three-digit ones: written once, the model
# learns that numbers have three digits ("Number 7 comes before 78", "A12B12" -> "C122"), and the short
# numbers are the ones a newcomer tries first. Their runs are repeated inside their own document (so a
# number's sentences still sit in one document, on one side of the split), until each length has a few
# hundred lines (the effect, measured: benchmarks/RESULTS.md, "Presets").
SHORT_RUN_REPEATS = {1: 30, 2: 6}  # digits of the run's first number -> times the run is written
ABC_SHORT_RUN_REPEATS = {1: 20, 2: 4}  # the same for the ABC runs
ABC_RUN = 5  # "AkBkCk." lines per ABC document


def counting_docs() -> list[str]:
    docs = []
    for start in range(0, COUNTING_MAX, COUNTING_RUN):
        stop = min(start + COUNTING_RUN, COUNTING_MAX)
        run = "".join(f"Number {i} comes before {i + 1}.\n" for i in range(start, stop))
        docs.append(run * SHORT_RUN_REPEATS.get(len(str(start)), 1))
    return docs


def abc_docs() -> list[str]:
    """Runs of ABC_RUN lines "A{i}B{i}C{i}." for 0 <= i < 1000, the short runs repeated: the model learns to
    copy a number twice; one line a document left it copying 110 as 1110 now and then."""
    docs = []
    for start in range(0, 1000, ABC_RUN):
        run = "".join(f"A{i}B{i}C{i}.\n" for i in range(start, start + ABC_RUN))
        docs.append(run * ABC_SHORT_RUN_REPEATS.get(len(str(start)), 1))
    return docs


def stories_docs() -> list[str]:
    names = ["Alice", "Bob", "Charlie", "Diana", "Emma", "Finn", "Grace", "Hugo", "Ivy", "Jack"]
    animals = ["cat", "dog", "bird", "rabbit", "fish", "horse", "duck", "mouse"]
    actions = ["played", "ran", "sang", "danced", "jumped", "slept", "swam"]
    places = ["in the park", "by the river", "in the garden", "at home", "under a tree"]
    feelings = ["happy", "sleepy", "proud", "excited", "calm"]
    rng = random.Random(7)
    docs = [
        "Once upon a time, there was a little cat. The cat was very happy. The cat liked to play with yarn. The end.\n",
        "There was a big dog. The dog was brown. The dog loved to run in the park. The dog made many friends.\n",
        "A small bird lived in a tree. The bird could sing beautiful songs. All the animals loved to listen.\n",
        "The sun was shining bright. The flowers were blooming. It was a perfect day for a picnic.\n",
        "A young boy found a magic stone. The stone could grant wishes. He wished for happiness for everyone.\n",
    ]
    for name in names:
        for animal in animals:
            for action in actions:
                place, feeling = rng.choice(places), rng.choice(feelings)
                docs.append(
                    f"{name} had a pet {animal}. The {animal} {action} {place} every day. "
                    f"{name} was very {feeling}. The end.\n"
                )
    return docs


def code_docs() -> list[str]:
    docs = []
    for i in range(1, 200):
        docs.append(f"def add_numbers(a, b):\n    return a + b\n\nresult = add_numbers({i}, {i + 1})\nprint(result)\n\n")
    for i in range(1, 100):
        docs.append(f'for i in range({i}):\n    print(f"Number: {{i}}")\n\n')
    for i in range(1, 200):
        limit = 5 + i % 7
        docs.append(
            f'x = {i}\nif x > {limit}:\n    print("Big number")\nelse:\n    print("Small number")\n\n'
        )
    return docs


def mixed_docs() -> dict[str, list[str]]:
    """Mostly counting and ABC, a third of the stories and code: with those whole, they take half the
    steps and a laptop-sized model learns to count hundreds of steps later."""
    return {"counting": counting_docs(), "abc": abc_docs(), "stories": stories_docs()[::3], "code": code_docs()[::3]}


BUILTIN_CORPORA = {
    "counting": lambda: {"counting": counting_docs()},
    "abc": lambda: {"abc": abc_docs()},
    "stories": lambda: {"stories": stories_docs()},
    "code": lambda: {"code": code_docs()},
    "mixed": mixed_docs,
}
