"""The Python API as a user calls it: `from tune.api import search, load`, keywords named as the flags are,
errors as UserError (never SystemExit); one tiny search on real local Ray, in this process."""

import json
from pathlib import Path

import pandas as pd
import pytest

from conftest import REPO
from nanogpt.errors import UserError
from tune.api import SearchResult, load, search
from tune.report import COLUMNS

# TINY (conftest) as keywords
TINY_KW = dict(dataset="counting", n_layer="1", n_head="2", head_dim="8", block_size="16", batch_size=[4, 8],
               dropout="0:0.1", schedule="cosine")


def _files(path: Path) -> dict[str, int]:
    return {str(p.relative_to(path)): p.stat().st_mtime_ns for p in path.rglob("*") if p.is_file()}


@pytest.fixture(scope="module")
def result(tmp_path_factory):
    results = tmp_path_factory.mktemp("api")
    return search(**TINY_KW, num_samples=3, max_steps=20, eval_every="5", lr="1e-3:1e-2", seed=2, compile="off",
                  report=False, results_dir=str(results), name="api")


@pytest.mark.slow
def test_search_returns_its_results(result):
    assert isinstance(result, SearchResult) and result.path.name == "api" and result.path.is_dir()
    assert list(result.trials.columns) == COLUMNS and len(result.trials) == 3
    assert list(result.trials["best_val_loss"]) == sorted(result.trials["best_val_loss"])
    assert {"trial_id", "step", "spend", "val_loss", "train_loss"} <= set(result.curves.columns)
    assert set(result.curves["trial_id"]) == set(result.trials["trial_id"])
    assert result.curves["step"].max() == 20
    assert result.best == result.path / "best" and (result.best / "model.pt").is_file()
    assert result.final is None  # no --final-budget
    assert result.config.num_samples == 3 and result.config.compile == "off" and result.config.name == "api"
    # the study Optuna kept, one trial a trial
    assert result.study.study_name == "api" and len(result.study.trials) == 3
    # report=False is --no-report: honoured, and recorded
    assert not (result.path / "report.md").exists()
    assert json.loads((result.path / "search.json").read_text())["report"] is False
    # the command that does the same, recorded for the exported model cards
    assert result.config.command.startswith("python -m tune.search --dataset=counting ")
    assert "--no-report" in result.config.command


@pytest.mark.slow
def test_best_model_generates(result):
    from nanogpt.sample import generate_text

    model, tokenizer = result.load_best()
    assert not model.training
    text = generate_text(model, tokenizer, "Number 7", max_new_tokens=10, temperature=0)
    assert text.startswith("Number 7") and len(text) > len("Number 7")
    with pytest.raises(UserError, match="final/"):
        result.load_final()


@pytest.mark.slow
def test_load_opens_a_results_dir_read_only(result):
    before = _files(result.path)
    again = load(result.path)
    pd.testing.assert_frame_equal(again.trials, result.trials)
    pd.testing.assert_frame_equal(again.curves, result.curves)
    assert again.best == result.best and again.final is None and again.config == result.config
    assert len(again.study.trials) == 3
    again.load_best()
    assert _files(result.path) == before  # nothing written, not even optuna.db touched
    assert "3 trials, best val_loss" in repr(again)


def test_load_of_a_directory_without_a_search(tmp_path):
    with pytest.raises(UserError, match="holds no search"):
        load(tmp_path)
    with pytest.raises(UserError, match="is not a directory"):
        load(tmp_path / "missing")


@pytest.mark.parametrize("settings, needle", [
    (dict(num_sample=4), "num_sample: unknown setting (did you mean num_samples?)"),
    (dict(num_samples="four"), "num_samples: invalid int value: 'four'"),
    (dict(num_samples=0), "num_samples must be an integer > 0, got 0"),
    (dict(scheduler="hyperband"), "scheduler: invalid choice: 'hyperband'"),
    (dict(dataset="counting", data_file="x.txt"), "dataset and data_file exclude each other"),
    (dict(report="no"), "report: true or false"),
    (dict(help=True), "help: not a setting"),
    (dict(n_layer={"low": 1}), "n_layer: expects a value"),
])
def test_bad_settings_raise_user_error_naming_them(tmp_path, settings, needle):
    with pytest.raises(UserError) as e:
        search(**settings, results_dir=str(tmp_path))
    assert needle in str(e.value)
    assert not list(tmp_path.iterdir())  # refused before anything was written


def test_dry_run_prints_and_returns_none(tmp_path, capsys):
    assert search(dataset="counting", max_steps=30, compile="off", dry_run=True, results_dir=str(tmp_path)) is None
    out = capsys.readouterr().out
    assert '"trial_budget": 30.0' in out and "nothing was written to" in out and "(--dry-run)" in out
    assert not list(tmp_path.iterdir())


def test_no_report_reaches_run_through_the_configuration():
    """config_from_args + run(config, resume=False), the library's own path: --no-report is in the configuration
    (run's report=None takes it from there)."""
    import inspect

    from tune.config import config_from_args
    from tune.options import parser
    from tune.search import run

    assert inspect.signature(run).parameters["report"].default is None
    assert config_from_args(parser().parse_args(["--no-report", "--dataset", "counting"])).report is False
    assert config_from_args(parser().parse_args(["--dataset", "counting"])).report is True


# --- in a Jupyter kernel -------------------------------------------------------------------------------------


@pytest.mark.slow
def test_quickstart_notebook_runs_in_a_kernel(tmp_path, monkeypatch):
    """examples/quickstart.ipynb, executed as Jupyter would from a results folder of its own: every cell runs, the
    search's progress is one output updated in place (no stream of printed lines), and the best model samples."""
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    pytest.importorskip("ipykernel")
    monkeypatch.setenv("PYTHONPATH", str(REPO))
    monkeypatch.setenv("PYTHONWARNINGS", "ignore")
    nb = nbformat.read(REPO / "examples" / "quickstart.ipynb", as_version=4)
    client = nbclient.NotebookClient(nb, timeout=600, kernel_name="python3",
                                     resources={"metadata": {"path": str(tmp_path)}})
    setup = client.setup_kernel()
    try:
        setup.__enter__()
    except Exception as e:  # no kernel on this machine: nothing of ours to test
        pytest.skip(f"no Jupyter kernel could start: {type(e).__name__}: {e}")
    try:
        for index, cell in enumerate(nb.cells):
            client.execute_cell(cell, index)
    finally:
        setup.__exit__(None, None, None)

    search_cell = next(c for c in nb.cells if c.source.startswith("result = search("))
    shown = [o for o in search_cell.outputs if o.output_type == "display_data"]
    assert len(shown) == 1, search_cell.outputs  # the live view, updated in place to the search's summary
    text = shown[0].data["text/plain"]
    assert "2 trials in " in text and "best checkpoint:" in text
    printed = "".join(o.get("text", "") for o in search_cell.outputs if o.output_type == "stream")
    assert " start " not in printed and "trials in" not in printed  # no print flood
    assert "SearchResult(" in search_cell.outputs[-1].data["text/plain"]
    sample_cell = next(c for c in nb.cells if "generate_text(model" in c.source)
    assert "Number 7 comes before" in "".join(o.get("text", "") for o in sample_cell.outputs)
    assert len(list((tmp_path / "results").glob("laptop-*/best/model.pt"))) == 1
