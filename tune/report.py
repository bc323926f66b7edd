"""What a search leaves behind, rebuilt from disk: `python -m tune.report RESULTS_DIR/NAME`.

Reads the experiment through Ray's own result API (ExperimentAnalysis -> ResultGrid), so no
Ray cluster is needed. Writes trials.csv, best/, report.md and plots/*.png. A search kept at a URI
(`--results-dir s3://...`) is read through a local copy and the files are uploaded back. For notebooks:

    from tune import report
    df = report.load("results/NAME")          # one row per trial
    curves = report.load_curves("results/NAME")  # every evaluation of every trial
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import shutil
from pathlib import Path

import pandas as pd

from tune.storage import Mirror, is_uri

log = logging.getLogger(__name__)

HPARAMS = ["n_layer", "n_head", "head_dim", "n_embd", "dropout", "learning_rate", "batch_size", "block_size", "weight_decay"]
CURVE_COLS = ["step", "train_loss", "val_loss", "val_bpc", "tokens_seen", "tokens_per_s", "elapsed_s"]
COLUMNS = ["trial_id", "status", "node", *HPARAMS, "n_params", "best_val_loss", "best_step", "val_bpc", "last_val_loss",
           "steps", "max_steps", "tokens_seen", "seconds", "tokens_per_s", "sampler", "error", "checkpoint"]


class ReportError(ValueError):
    pass


def _settings(path: Path) -> dict:
    f = path / "search.json"
    try:
        return json.loads(f.read_text()) if f.is_file() else {}
    except json.JSONDecodeError:
        log.warning("%s is corrupt; the report goes on without the search settings", f)
        return {}


def _trials_and_results(path: Path):
    from ray.tune import ExperimentAnalysis, ResultGrid

    logging.getLogger("ray.tune.analysis.experiment_analysis").setLevel(logging.ERROR)
    try:
        ea = ExperimentAnalysis(str(path), default_metric="val_loss", default_mode="min")
    except (ValueError, FileNotFoundError) as e:
        raise ReportError(f"{path} holds no Ray Tune experiment ({str(e).splitlines()[0]}); "
                          f"pass RESULTS_DIR/NAME of a search") from None
    grid = ResultGrid(ea)
    return ea.trials, [grid[i] for i in range(len(grid))]


def _rungs(settings: dict) -> set[int]:
    if settings.get("scheduler") != "asha":
        return set()
    rungs, r = set(), settings["grace_period"]
    while r < settings["max_steps"]:
        rungs.add(r)
        r *= settings["reduction_factor"]
    return rungs


def _status(trial_status: str, last: dict, rungs: set[int]) -> str:
    if trial_status == "ERROR":
        return "errored"
    s, step = last.get("status"), last.get("step")
    if s in ("diverged", "finished"):
        return s
    if s == "time_budget":
        return "stopped by its time budget"
    if trial_status == "TERMINATED" and step is not None:
        if step in rungs:
            return f"stopped early by ASHA at step {step}"
        return f"stopped at step {step} (search time budget)"
    if step is None:
        return "not started" if trial_status == "PENDING" else "no results"
    return f"interrupted at step {step}"


def _local(path: str | Path, mirror: Mirror | None = None) -> tuple[Path, Mirror | None]:
    """(local directory, mirror): a URI is first downloaded into its local copy, checkpoints left at the URI."""
    if mirror is None and is_uri(path):
        mirror = Mirror(str(path))
        mirror.pull()
        return mirror.local, mirror
    return Path(path), mirror


def _best_checkpoint(result, mirror: Mirror | None = None) -> str | None:
    """Path of the trial's best checkpoint by val_loss, if it is on disk (or, for a URI, at the URI)."""
    candidates = []
    for ckpt, metrics in result.best_checkpoints or []:
        val = metrics.get("val_loss", math.inf)
        model = Path(ckpt.path, "model.pt")
        if mirror.has(model) if mirror else model.is_file():
            candidates.append((val if val == val else math.inf, ckpt.path))
    return min(candidates)[1] if candidates else None


def _read(path: str | Path, mirror: Mirror | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The trials table and the long learning-curve table, from one read of the experiment."""
    path, mirror = _local(path, mirror)
    settings = _settings(path)
    rungs = _rungs(settings) if settings else set()
    rows, frames = [], []
    for trial, result in zip(*_trials_and_results(path)):
        cfg = trial.config or {}
        row = {c: None for c in COLUMNS}
        row["trial_id"] = trial.trial_id
        row.update({k: cfg.get(k) for k in HPARAMS if k in cfg})
        if cfg.get("n_head") and cfg.get("head_dim"):
            row["n_embd"] = cfg["n_head"] * cfg["head_dim"]
        row["max_steps"] = cfg.get("max_steps")
        row["sampler"] = cfg.get("sampler")
        last = {}
        df = result.metrics_dataframe
        if df is not None and "val_loss" in df:
            df = df.dropna(subset=["val_loss"])
            if not df.empty:
                last = df.iloc[-1].to_dict()
                best = df.loc[df["val_loss"].astype(float).idxmin()]
                row.update(best_val_loss=float(best["val_loss"]), best_step=int(best["step"]),
                           val_bpc=float(best["val_bpc"]), last_val_loss=float(last["val_loss"]),
                           steps=int(last["step"]), n_params=int(last["n_params"]),
                           tokens_seen=int(last["tokens_seen"]), seconds=float(last["elapsed_s"]),
                           tokens_per_s=float(last["tokens_per_s"]), node=last.get("node_id") or last.get("node_ip"))
                part = df[[c for c in CURVE_COLS if c in df]].copy()
                part.insert(0, "trial_id", trial.trial_id)
                frames.append(part)
        row["status"] = _status(trial.status, last, rungs)
        if result.error is not None:
            row["error"] = str(result.error).strip().splitlines()[-1][:300]
        row["checkpoint"] = _best_checkpoint(result, mirror)
        rows.append(row)
    trials = pd.DataFrame(rows, columns=COLUMNS)
    trials = trials.sort_values("best_val_loss", na_position="last", kind="stable").reset_index(drop=True)
    curves = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=["trial_id", *CURVE_COLS])
    return trials, curves


def load(path: str | Path) -> pd.DataFrame:
    """One row per trial (the trials.csv columns), sorted by best val_loss."""
    return _read(path)[0]


def load_curves(path: str | Path) -> pd.DataFrame:
    """Every evaluation of every trial, long format: trial_id plus CURVE_COLS."""
    return _read(path)[1]


def export(path: str | Path, mirror: Mirror | None = None) -> pd.DataFrame:
    """Write trials.csv and best/ (the best trial's best checkpoint); return the trials table.
    `mirror`: the local copy `path` is of, when the search lives at a URI."""
    path, mirror = _local(path, mirror)
    df = _read(path, mirror)[0]
    _write_exports(path, df, mirror)
    return df


def _write_exports(path: Path, df: pd.DataFrame, mirror: Mirror | None = None) -> None:
    df.to_csv(path / "trials.csv", index=False)
    ok = df[df["checkpoint"].notna() & df["best_val_loss"].apply(lambda v: v is not None and math.isfinite(v))]
    if not ok.empty:
        best = ok.iloc[0]
        tmp = path / "best.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.copytree(mirror.fetch(best["checkpoint"]) if mirror else best["checkpoint"], tmp)
        (tmp / "trial.json").write_text(json.dumps(
            {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in best.to_dict().items()}, indent=2,
            default=str))
        shutil.rmtree(path / "best", ignore_errors=True)
        tmp.rename(path / "best")
    if mirror:
        mirror.push("trials.csv", "best")


def top_table(df: pd.DataFrame, n: int = 5) -> str:
    cols = ["trial_id", "n_layer", "n_head", "n_embd", "dropout", "learning_rate", "batch_size", "n_params",
            "best_val_loss", "val_bpc", "steps", "status"]
    view = df.head(n)[cols].rename(columns={"learning_rate": "lr", "batch_size": "batch", "best_val_loss": "val_loss"})
    return view.to_string(index=False, float_format=lambda v: f"{v:.4g}")


# --- report.md ------------------------------------------------------------------------------


def _md_table(df: pd.DataFrame) -> str:
    def fmt(v):
        if v is None or (isinstance(v, float) and math.isnan(v)):
            return ""
        if isinstance(v, float):
            return f"{v:.4g}"
        return str(v).replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(df.columns) + " |", "|" + "---|" * len(df.columns)]
    lines += ["| " + " | ".join(fmt(v) for v in row) + " |" for row in df.itertuples(index=False)]
    return "\n".join(lines)


def _fence(text: str) -> str:
    return "```\n" + text.replace("```", "` ` `") + "\n```"


def _data_file_text(settings: dict) -> str:
    """The searched file's text, for its default prompt; empty when it is gone or there was none."""
    try:
        return Path(settings["data_file"]).read_text(encoding="utf-8")
    except (OSError, KeyError, TypeError, UnicodeDecodeError):
        return ""


def _counting_numbers(dataset_name: str) -> dict[str, list[int]] | None:
    """Numbers whose "Number k comes before" sentence is in training, in validation only, or nowhere."""
    from nanogpt.corpora import COUNTING_MAX
    from nanogpt.data import load_dataset

    if dataset_name not in ("counting", "mixed"):
        return None
    ds = load_dataset(dataset_name)
    seen = [k for k in range(0, COUNTING_MAX, 7) if f"Number {k} comes before" in ds.train_text][:25]
    held_out = [k for k in range(COUNTING_MAX) if f"Number {k} comes before " in ds.val_text][:25]
    beyond = list(range(COUNTING_MAX + 1, COUNTING_MAX + 1000, 40))[:25]
    return {"seen in training": seen, "held out (validation)": held_out, f"beyond {COUNTING_MAX - 1}": beyond}


def write_report(path: str | Path, prompts: list[str] | None = None, top: int = 5, temperature: float = 0.8,
                 seed: int = 1337, max_new_tokens: int = 80, trials: pd.DataFrame | None = None,
                 mirror: Mirror | None = None) -> Path:
    """Rebuild trials.csv, best/, report.md and plots/ of a search from what it left on disk.

    `trials`: the table export() just returned, to skip exporting again. `mirror`: the local copy
    `path` is of, when the search lives at a URI (a URI `path` makes one)."""
    import torch

    from nanogpt.attention import attention_matrix, focus_summary, plot_attention
    from nanogpt.data import default_prompts
    from nanogpt.model import GPT, GPTConfig
    from nanogpt.sample import counting_probe, generate_text
    from nanogpt.checkpoint import CheckpointError, load_model
    from tune import plots

    path, mirror = _local(path, mirror)
    settings = _settings(path)
    if trials is None:
        df, curves = _read(path, mirror)
        _write_exports(path, df, mirror)
    else:
        df, curves = trials, _read(path, mirror)[1]
    plot_dir = path / "plots"
    plot_dir.mkdir(exist_ok=True)
    missing: list[str] = []
    md: list[str] = [f"# Search report: {path.name}", ""]

    # --- summary
    finite = df[df["best_val_loss"].apply(lambda v: v is not None and math.isfinite(v))]
    counts = {
        "run": int(df["status"].ne("not started").sum()),
        "finished": int(df["status"].eq("finished").sum()),
        "stopped early": int(df["status"].str.startswith("stopped").sum()),
        "errored": int(df["status"].eq("errored").sum()),
        "diverged": int(df["status"].eq("diverged").sum()),
        "interrupted": int(df["status"].str.startswith("interrupted").sum()),
    }
    md += ["## Summary", ""]
    if settings:
        data = settings.get("data_file") or settings.get("dataset")
        budget = f"{settings['num_samples']} trials x up to {settings['max_steps']} steps, " \
                 f"{settings['cpus_per_trial']:g} CPU" + (f" + {settings['gpus_per_trial']:g} GPU" if settings["gpus_per_trial"] else "") \
                 + " per trial" + (f", time budget {settings['time_budget_s']:g} s" if settings.get("time_budget_s") else "")
        md += [f"- data set: `{data}`, {settings['tokenizer']} tokenizer",
               f"- preset `{settings['preset']}`, searcher {settings['searcher']}, scheduler {settings['scheduler']}"
               + (f" (grace {settings['grace_period']} steps, reduction factor {settings['reduction_factor']})" if settings['scheduler'] == 'asha' else ""),
               f"- budget: {budget}"]
    else:
        missing.append("search.json is missing: data set and budget unknown")
    md.append("- trials: " + ", ".join(f"{v} {k}" for k, v in counts.items()))
    if not curves.empty and "elapsed_s" in curves:
        md.append(f"- training time summed over trials: {curves.groupby('trial_id')['elapsed_s'].max().sum():.0f} s")
    best = None
    if not finite.empty:
        best = finite.iloc[0]
        median = float(finite["best_val_loss"].median())
        cfg_text = ", ".join(f"{k}={best[k]:.3g}" if isinstance(best[k], float) else f"{k}={best[k]}"
                             for k in HPARAMS if best[k] is not None and not (isinstance(best[k], float) and math.isnan(best[k])))
        md += [f"- **best trial `{best['trial_id']}`**: val_loss **{best['best_val_loss']:.4f}** "
               f"({best['val_bpc']:.3f} bits/char) at step {best['best_step']}, {int(best['n_params']):,} parameters",
               f"- best config: {cfg_text}",
               f"- median trial: val_loss {median:.4f}; the best is {median - best['best_val_loss']:.4f} nats/token lower",
               f"- checkpoint: `best/` (`python -m nanogpt.sample --checkpoint {path / 'best'}`)"]
    else:
        missing.append("no trial reported a finite validation loss: no best trial")
    md.append("")

    # --- plots
    figures = [
        ("learning_curves.png", "Learning curves", lambda p: plots.learning_curves(curves, df, p)),
        ("val_loss_vs_params.png", "Validation loss against model size (Pareto front)", lambda p: plots.loss_vs_params(df, p)),
        ("val_loss_vs_hparams.png", "Validation loss against each hyperparameter", lambda p: plots.loss_vs_hparams(df, p)),
        ("importance.png", "Hyperparameter importance (Optuna, PED-ANOVA)", lambda p: plots.importance(path, settings, p)),
    ]
    plot_md = ["## Plots", ""]
    for fname, title, draw in figures:
        try:
            draw(plot_dir / fname)
            plot_md += [f"### {title}", "", f"![{title}](plots/{fname})", ""]
        except plots.PlotSkipped as e:
            missing.append(f"{title}: {e}")

    # --- all trials
    md += ["## All trials, by validation loss", ""]
    view = df.drop(columns=["checkpoint", "max_steps", "tokens_per_s", "node", "sampler"]).copy()
    view["error"] = view["error"].fillna("")
    md += [_md_table(view), ""]

    # --- generations
    dataset_name = settings.get("dataset") or ""
    prompts = prompts or default_prompts(dataset_name, _data_file_text(settings))
    models = []
    for _, row in finite.head(top).iterrows():  # diverged trials have nothing to say
        if pd.isna(row["checkpoint"]):
            missing.append(f"trial {row['trial_id']} has no checkpoint on disk: no generations")
            continue
        try:
            model, tok, meta = load_model(mirror.fetch(row["checkpoint"]) if mirror else row["checkpoint"])
            models.append((row, model, tok, meta))
        except CheckpointError as e:
            missing.append(f"trial {row['trial_id']}: {e}")
    if models:
        md += ["## Generations", "",
               f"Top {len(models)} trials, each from its best checkpoint; temperature {temperature}, seed {seed}, "
               f"{max_new_tokens} new tokens. The untrained model (same shape as the best, random weights) is shown first.", ""]
        _, best_model, tok, meta = models[0]
        torch.manual_seed(seed)
        untrained = GPT(GPTConfig(**meta["model"])).eval()
        for prompt in prompts:
            md += [f"### Prompt {prompt!r}", "", "**untrained:**", "",
                   _fence(generate_text(untrained, tok, prompt, max_new_tokens, temperature, seed=seed)), ""]
            for row, model, tok_i, _ in models:
                text = generate_text(model, tok_i, prompt, max_new_tokens, temperature, seed=seed)
                md += [f"**{row['trial_id']}** (val_loss {row['best_val_loss']:.4f}):", "", _fence(text), ""]

        # --- counting probe
        numbers = _counting_numbers(dataset_name)
        if numbers:
            md += ["## Counting probe", "",
                   'Greedy continuation of "Number k comes before": correct when the model says k+1.', "",
                   "| model | " + " | ".join(numbers) + " |", "|---|" + "---|" * len(numbers)]
            for label, model, tok_i in [("untrained", untrained, tok)] + [(r["trial_id"], m, t) for r, m, t, _ in models[:3]]:
                cells = []
                for ks in numbers.values():
                    res = counting_probe(model, tok_i, ks)
                    cells.append(f"{sum(r['correct'] for r in res)}/{len(res)}")
                md.append(f"| {label} | " + " | ".join(cells) + " |")
            examples = counting_probe(best_model, tok, [7, numbers["held out (validation)"][0], 2500])
            md += ["", "Best model, examples:", ""]
            md += [f"- {r['prompt']!r} -> {r['output'].strip()!r} ({'right' if r['correct'] else 'wrong'})" for r in examples]
            md.append("")

        # --- attention
        text = prompts[0]
        try:
            layer = best_model.config.n_layer - 1
            tokens, att = attention_matrix(best_model, tok, text, layer=layer, head=-1)
            plot_attention(tokens, att, plot_dir / "attention.png", f"best model, layer {layer}, mean of heads: {text!r}")
            plot_md += ["### Attention of the best model", "", f"Last layer ({layer}), mean over heads, on {text!r}.", "",
                        "![attention](plots/attention.png)", "", "What each token focuses on most:", ""]
            plot_md += [f"- {line}" for line in focus_summary(tokens, att)] + [""]
        except ValueError as e:
            missing.append(f"attention heatmap: {e}")
    else:
        missing.append("no checkpoint could be loaded: no generations, probe or attention heatmap")

    md += plot_md
    if missing:
        md += ["## Missing from this report", ""] + [f"- {m}" for m in missing] + [""]
    out = path / "report.md"
    out.write_text("\n".join(md))
    if mirror:
        mirror.push("report.md", "plots")
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tune.report", description="Rebuild the report of a search.")
    p.add_argument("path", help="RESULTS_DIR/NAME of a search (a directory, or a URI such as s3://bucket/results/NAME)")
    p.add_argument("--prompt", action="append", help="prompt for the generations (repeatable; default: data-set prompts)")
    p.add_argument("--top", type=int, default=5, help="trials whose generations are shown")
    p.add_argument("--temperature", type=float, default=0.8)
    p.add_argument("--seed", type=int, default=1337)
    p.add_argument("--max-new-tokens", type=int, default=80)
    args = p.parse_args(argv)
    if not is_uri(args.path) and not Path(args.path).is_dir():
        raise ReportError(f"{args.path} is not a directory: pass RESULTS_DIR/NAME of a search")
    if args.top < 1 or args.temperature < 0 or args.max_new_tokens < 1:
        raise ReportError("--top and --max-new-tokens must be >= 1 and --temperature >= 0")
    out = write_report(args.path, args.prompt, args.top, args.temperature, args.seed, args.max_new_tokens)
    df = pd.read_csv(out.parent / "trials.csv")
    print(top_table(df, args.top))
    print(f"report: {out}" + (f" (uploaded to {args.path.rstrip('/')}/report.md)" if is_uri(args.path) else ""))
    return 0


if __name__ == "__main__":
    from nanogpt.cli import run_main

    run_main(main)
