"""Built-in corpora (deterministic, held-out numbers held out) and the pattern probes."""

import re

import pytest
import torch

from nanogpt import corpora
from nanogpt.dataset import load_dataset
from nanogpt.model import GPT, GPTConfig
from nanogpt.sample import abc_probe, counting_probe, generate_text, greedy_continuations, probe_numbers
from nanogpt.tokenizer import CharTokenizer

SENTENCE = re.compile(r"Number (\d+) comes before (\d+)\.\n")


@pytest.mark.parametrize("name", sorted(corpora.BUILTIN_CORPORA))
def test_corpus_is_deterministic(name):
    assert corpora.BUILTIN_CORPORA[name]() == corpora.BUILTIN_CORPORA[name]()
    a, b = load_dataset(name), load_dataset(name)
    assert (a.train_text, a.val_text) == (b.train_text, b.val_text)


def test_counting_docs_are_runs_and_each_sentence_sits_in_one_document():
    docs = corpora.counting_docs()
    owner = {}
    for i, doc in enumerate(docs):
        pairs = [(int(k), int(n)) for k, n in SENTENCE.findall(doc)]
        assert SENTENCE.sub("", doc) == "" and all(n == k + 1 for k, n in pairs)
        for k, _ in pairs:
            assert owner.setdefault(k, i) == i, f"Number {k} is in documents {owner[k]} and {i}"
        ks = sorted(set(k for k, _ in pairs))
        assert ks == list(range(ks[0], ks[0] + len(ks))) and len(ks) == corpora.COUNTING_RUN  # a run
    assert sorted(owner) == list(range(corpora.COUNTING_MAX))
    assert docs[0].count("Number 7 comes before 8.\n") == corpora.SHORT_RUN_REPEATS[1]


def test_abc_docs_are_runs_and_short_numbers_are_not_rare():
    docs = corpora.abc_docs()
    owner, lines_by_length = {}, {}
    for i, doc in enumerate(docs):
        ks = [int(a) for a, b, c in re.findall(r"A(\d+)B(\d+)C(\d+)\.\n", doc) if a == b == c]
        assert "".join(f"A{k}B{k}C{k}.\n" for k in ks) == doc
        for k in ks:
            assert owner.setdefault(k, i) == i, f"A{k}B{k} is in documents {owner[k]} and {i}"
            lines_by_length[len(str(k))] = lines_by_length.get(len(str(k)), 0) + 1
    assert sorted(owner) == list(range(1000))
    # one- and two-digit numbers are a few hundred lines each, not 10 and 90 against 900
    assert min(lines_by_length.values()) >= 200, lines_by_length
    counting = {}
    for k, _ in SENTENCE.findall("".join(corpora.counting_docs())):
        counting[len(k)] = counting.get(len(k), 0) + 1
    assert min(counting.values()) >= 300, counting


@pytest.mark.parametrize("name", ["counting", "mixed"])
def test_held_out_numbers_are_never_training_sentences(name):
    ds = load_dataset(name)
    in_train = {int(k) for k in re.findall(r"Number (\d+) comes before ", ds.train_text)}
    in_val = {int(k) for k in re.findall(r"Number (\d+) comes before ", ds.val_text)}
    assert in_train and in_val and not in_train & in_val
    seen, held_out = probe_numbers(ds.train_text, ds.val_text, n=10**6)
    assert set(held_out) == in_val and set(seen) == in_train
    assert len(held_out) >= 0.08 * corpora.COUNTING_MAX  # whole runs go to validation
    for k in held_out:
        assert f"Number {k} comes before " not in ds.train_text


def test_probe_numbers_are_a_fixed_sample_of_each_split():
    train = "".join(f"Number {k} comes before {k + 1}.\n" for k in range(100)) + "A5B5C5.\nA6B6C6.\n"
    val = "Number 200 comes before 201.\nNumber 7 comes before 8.\nA9B9C9.\nA5B5C5.\nA12B13C14.\n"
    seen, held_out = probe_numbers(train, val, n=10)
    assert held_out == [200]  # 7 is in training too: seen, not held out
    assert len(set(seen)) == 10 and seen == sorted(seen) and set(seen) <= set(range(100))
    assert probe_numbers(train, val, n=10) == (seen, held_out) and probe_numbers(train, val, n=100)[0] == list(range(100))
    assert probe_numbers(train, val, "abc") == ([5, 6], [9])
    assert probe_numbers("no patterns", "here") == ([], [])
    mixed = load_dataset("mixed")
    seen, held_out = probe_numbers(mixed.train_text, mixed.val_text)
    assert len(seen) == len(held_out) == 25 and max(seen) > 500 and max(held_out) > 500 and min(seen) < 500
    a_seen, a_held = probe_numbers(mixed.train_text, mixed.val_text, "abc")
    assert len(a_seen) == 25 and a_held and not set(a_seen) & set(a_held)


class Oracle(torch.nn.Module):
    """Stands in for a trained GPT: continues a prompt with `answer(prompt)`."""

    def __init__(self, tokenizer, answer):
        super().__init__()
        self.dummy = torch.nn.Parameter(torch.zeros(1))
        self.tokenizer, self.answer = tokenizer, answer

    def generate(self, idx, max_new_tokens, temperature=1.0, top_k=None, generator=None):
        rows = []
        for row in idx.tolist():
            new = self.tokenizer.encode(self.answer(self.tokenizer.decode(row)))[:max_new_tokens]
            rows.append(row + new + self.tokenizer.encode("\n") * (max_new_tokens - len(new)))
        return torch.tensor(rows, dtype=torch.long)


def test_probes_score_right_and_wrong_answers():
    tok = CharTokenizer.from_text("0123456789ABCNumbercomesbefore .\n")

    def answer(prompt):
        if m := re.fullmatch(r"Number (\d+) comes before", prompt):
            k = int(m.group(1))
            return f" {k + 1 if k % 2 else k}.\n"  # right for odd k only
        k = re.fullmatch(r"A(\d+)B\d+", prompt).group(1)
        return f"C{k}.\n" if int(k) < 50 else f"C{k}7.\n"  # an extra digit is wrong

    model = Oracle(tok, answer)
    rows = counting_probe(model, tok, [7, 8, 1999])
    assert [r["correct"] for r in rows] == [True, False, True] and rows[0]["output"].startswith(" 8.")
    rows = abc_probe(model, tok, [3, 42, 123])
    assert [r["correct"] for r in rows] == [True, True, False] and rows[2]["predicted"] == 1237


def test_probes_run_on_a_tiny_gpt():
    ds = load_dataset("mixed")
    tok = CharTokenizer.from_text(ds.text)
    torch.manual_seed(0)
    model = GPT(GPTConfig(block_size=32, vocab_size=tok.vocab_size, n_layer=1, n_head=2, n_embd=16))
    for probe, prompt in ((counting_probe, "Number 7 comes before"), (abc_probe, "A7B7")):
        rows = probe(model, tok, [7, 123])
        assert [r["k"] for r in rows] == [7, 123] and rows[0]["prompt"] == prompt
        assert all(isinstance(r["correct"], bool) and r["output"] for r in rows)
        assert probe(model, tok, [7, 123]) == rows  # greedy: the same every time


def test_probes_decode_a_batch_as_one_at_a_time():
    """greedy_continuations decodes prompts of one length together: each row as generate_text gives it alone."""
    ds = load_dataset("mixed")
    tok = CharTokenizer.from_text(ds.text)
    torch.manual_seed(1)
    model = GPT(GPTConfig(block_size=16, vocab_size=tok.vocab_size, n_layer=2, n_head=2, n_embd=16))
    prompts = ["Number 7 comes before", "A12B12", "Number 8 comes before", "A3B3", "Number 123 comes before", "A45B45"]
    new = [4, 4, 6, 3, 5, 2]  # lengths past the block too (16): the context is cropped as generate crops it
    alone = [generate_text(model, tok, p, n, temperature=0)[len(p):] for p, n in zip(prompts, new)]
    assert greedy_continuations(model, tok, prompts, new) == alone
    assert [len(t) for t in alone] == new and model.training  # left as it was found
