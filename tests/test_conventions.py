"""One spelling per flag across commands, installed command names, declared imports, help texts, --device mps,
--dry-run. No Ray needed."""

import importlib
import json
import subprocess
import sys
import tomllib

import pytest

from conftest import REPO, assert_one_line_error, run_cli
from nanogpt.errors import UserError
from nanogpt.model import resolve_device
from tune.config import build_parser


def _pyproject() -> dict:
    return tomllib.loads((REPO / "pyproject.toml").read_text())


def test_search_and_train_share_flag_spellings():
    search = build_parser()
    assert search.parse_args(["--lr", "5"]) == search.parse_args(["--learning-rate", "5"])
    proc = run_cli("nanogpt.train", "--help")
    assert "--learning-rate LEARNING_RATE, --lr LEARNING_RATE" in proc.stdout and "--eval-every" in proc.stdout
    for flag in ("--time-budget DURATION", "--max-new-tokens N", "--eval-every AMOUNT", "--eval-interval"):
        assert flag in proc.stdout, flag


def test_one_meaning_a_flag_across_commands(tmp_path):
    """Issue 30: --eval-interval was spend in tune.search and steps in nanogpt.train; --seed defaulted to 0 and 1337;
    --max-new-tokens and --sample-tokens, --time-budget 15m and --time-budget-s, named one idea twice. Now each idea has
    one spelling and one meaning (the older spellings stay as aliases)."""
    from nanogpt.train import TrainConfig, _eval_every_from_args, build_parser as train_parser
    from tune.config import config_from_args

    def search(*argv):
        return config_from_args(build_parser().parse_args([*argv, "--results-dir", str(tmp_path)]))

    # --eval-interval counts steps in both; in a search whose budget is not in steps it is refused in one line
    assert search("--max-steps", "100", "--eval-interval", "10").eval_every == 10
    assert search("--max-steps", "100", "--eval-every", "10steps").eval_every == 10
    with pytest.raises(UserError, match="--eval-interval counts steps .* give --eval-every in FLOPs"):
        search("--trial-budget", "3e11flops", "--eval-interval", "10")
    train = train_parser()
    args = train.parse_args(["--max-steps", "100", "--eval-every", "10steps"])
    _eval_every_from_args(args)
    assert (args.eval_interval, args.eval_every) == (10, None)
    args = train.parse_args(["--budget-unit", "flops", "--budget", "1e12", "--eval-every", "1e11 FLOPs"])
    _eval_every_from_args(args)
    assert args.eval_every == 1e11
    # one default seed: nanoGPT's
    assert search().seed == TrainConfig().seed == 1337 == train.parse_args([]).seed
    # durations as the search takes them; the older spellings still work
    assert train.parse_args(["--time-budget", "15m"]).time_budget_s == 900
    assert train.parse_args(["--time-budget-s", "900"]).time_budget_s == 900
    assert train.parse_args(["--max-new-tokens", "7"]).sample_tokens == train.parse_args(["--sample-tokens", "7"]).sample_tokens


@pytest.mark.parametrize("module", ["tune.search", "tune.report", "nanogpt.train", "nanogpt.sample", "nanogpt.export",
                                    "nanogpt.attention"])
def test_every_flag_of_every_command_has_help(module):
    """Issue 30: `nanogpt.attention --help` explained one flag of five; nanogpt.train's --n-layer said only its default."""
    import re

    parser = _parser(module)
    for action in parser._actions:
        text = re.sub(r"\(default: [^)]*\)", "", action.help or "").strip()
        assert text and text != "==SUPPRESS==", f"{module} {'/'.join(action.option_strings) or action.dest} has no help"


def _parser(module: str):
    if module == "tune.search":
        return build_parser()
    mod = importlib.import_module(module)
    return mod.build_parser()


def test_installed_commands_clash_with_nothing_and_resolve():
    scripts = _pyproject()["project"]["scripts"]
    assert {"nanogpt-tune", "nanogpt-train", "nanogpt-sample", "nanogpt-export", "nanogpt-report"} <= set(scripts)
    assert "tune" not in scripts and all(name.startswith("nanogpt-") for name in scripts)
    for target in scripts.values():
        module, func = target.split(":")
        assert callable(getattr(importlib.import_module(module), func))


def test_a_command_runs_through_its_entry_point():
    """What the installed nanogpt-export does: bad input is one line, as with python -m nanogpt.export."""
    code = "import sys; sys.argv = ['nanogpt-export', 'nowhere', 'out']; from nanogpt.commands import export; export()"
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert_one_line_error(proc, "nowhere")


def test_direct_imports_are_declared():
    deps = " ".join(_pyproject()["project"]["dependencies"])
    for name in ("filelock", "pyarrow", "safetensors", "tokenizers"):
        assert name in deps


def test_help_texts():
    dashboard = run_cli("tune.dashboard", "--help").stdout
    assert "until Ctrl-C" in dashboard  # the whole description, not its first line
    cache = run_cli("nanogpt.cache", "--help").stdout
    assert "--storage" not in cache and "--results-dir" in cache


def test_report_of_a_non_search_says_it_once(tmp_path):
    proc = run_cli("tune.report", str(tmp_path))
    assert_one_line_error(proc, "holds no Ray Tune experiment")
    assert proc.stderr.count(str(tmp_path)) == 1


def test_device_mps_is_a_choice_and_a_clear_error_without_an_apple_gpu():
    import torch

    assert "mps" in build_parser().parse_args(["--device", "mps"]).device
    if torch.backends.mps.is_available():
        pytest.skip("this machine has an Apple GPU")
    with pytest.raises(UserError, match="MPS"):
        resolve_device("mps")


def test_dry_run_prints_settings_and_first_trial_and_writes_nothing(tmp_path):
    results = tmp_path / "results"
    proc = run_cli("tune.search", "--dataset", "counting", "--max-steps", "40", "--n-layer", "2", "--results-dir",
                   str(results), "--name", "dry", "--dry-run")
    assert proc.returncode == 0, proc.stderr
    settings, rest = proc.stdout.split("\n}\n", 1)
    saved = json.loads(settings + "}")
    assert saved["name"] == "dry" and saved["trial_budget"] == 40 and "--dry-run" in saved["command"]
    assert rest.startswith("first trial: n_layer=2 ") and " parameters, 40 steps of " in rest
    assert not results.exists()


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="with CUDA the benchmark would run")
def test_gpu_benchmark_without_a_gpu_leaves_results_as_they_were():
    """benchmarks.gpu on a machine without CUDA: one line, non-zero, RESULTS.md (a GPU's figures) untouched."""
    results = REPO / "benchmarks" / "RESULTS.md"
    before = results.read_bytes()
    proc = subprocess.run([sys.executable, "-m", "benchmarks.gpu"], cwd=REPO, capture_output=True, text=True)
    assert proc.returncode != 0 and results.read_bytes() == before
    assert_one_line_error(proc, "no CUDA device", "RESULTS.md left as it was")
