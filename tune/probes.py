"""The pattern probes of a trained model on the built-in corpora that hold the notebook's patterns ("Number k
comes before" -> k+1, "AkBk" -> "Ck"): which numbers to ask, and the scores, for report.md and the terminal."""

from __future__ import annotations

PROBE_EXAMPLES = {"counting": 7, "abc": 12}  # the notebook's examples: "Number 7 comes before", "A12B12"


def probe_sets(dataset_name: str) -> dict[str, dict[str, list[int]]]:
    """pattern -> {"seen": numbers whose sentence is in training, "held out": in validation only}, for the
    built-in corpora that hold the notebook's patterns; empty for other data."""
    from nanogpt.corpora import BUILTIN_CORPORA
    from nanogpt.dataset import load_dataset
    from nanogpt.sample import PROBES, probe_numbers

    if dataset_name not in BUILTIN_CORPORA:
        return {}
    ds = load_dataset(dataset_name)
    sets = {}
    for pattern in PROBES:
        seen, held_out = probe_numbers(ds.train_text, ds.val_text, pattern)
        if seen or held_out:
            sets[pattern] = {"seen": seen, "held out": held_out}
    return sets


def probe_cells(model, tok, sets: dict) -> dict[str, str]:
    """"counting, seen" -> "24/25" for each pattern and split."""
    from nanogpt.sample import PROBES

    cells = {}
    for pattern, splits in sets.items():
        for split, ks in splits.items():
            if ks:
                rows = PROBES[pattern](model, tok, ks)
                cells[f"{pattern}, {split}"] = f"{sum(r['correct'] for r in rows)}/{len(rows)}"
    return cells


def probe_summary(model, tok, sets: dict, label: str) -> list[str]:
    """One line a pattern: the model's continuation of the notebook's example and its score on each split."""
    from nanogpt.sample import PROBES

    lines = []
    for pattern, splits in sets.items():
        r = PROBES[pattern](model, tok, [PROBE_EXAMPLES[pattern]])[0]
        scores = probe_cells(model, tok, {pattern: splits})
        lines.append(f"{r['prompt']} -> {r['output'].strip() or repr(r['output'])} ({'right' if r['correct'] else 'wrong'}); "
                     + ", ".join(f"{k.split(', ')[1]} {v}" for k, v in scores.items()) + f" [{label}/]")
    return lines
