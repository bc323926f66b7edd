"""The built-in corpora, made in code (no download): the notebook's patterns and simple text.

Each corpus is a dict of document groups; `nanogpt.data` splits every group 90/10 by document,
so each kind of document also lands in validation (held out from training).
"""

from __future__ import annotations

import random

COUNTING_MAX = 2000  # "Number i comes before i+1." for i < COUNTING_MAX


def counting_docs() -> list[str]:
    return [f"Number {i} comes before {i + 1}.\n" for i in range(COUNTING_MAX)]


def abc_docs() -> list[str]:
    return [f"A{i}B{i}C{i}.\n" for i in range(1000)]


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


BUILTIN_CORPORA = {
    "counting": lambda: {"counting": counting_docs()},
    "abc": lambda: {"abc": abc_docs()},
    "stories": lambda: {"stories": stories_docs()},
    "code": lambda: {"code": code_docs()},
    "mixed": lambda: {"counting": counting_docs(), "abc": abc_docs(), "stories": stories_docs(), "code": code_docs()},
}
