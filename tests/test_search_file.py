"""A search file: `python -m tune.search --config search.yaml` (or .toml, .json) holds what the flags hold, the
flags given with it override it, and a bad key or value is one line naming the file and the key."""

import json

import pytest

from conftest import assert_one_line_error, run_cli
from nanogpt.errors import UserError
from tune.config import config_from_args
from tune.options import from_command_line, from_keywords

YAML = """\
# a tiny search
preset: laptop
dataset: counting
num_samples: 3
max_steps: 40
eval_every: 10
time_budget: 3m
compile: off            # the flag's 'off' (YAML 1.1 reads it as false)
resume: false
schedule: cosine
space:
  n_layer: 1:2           # a range (YAML 1.1 reads it as 62)
  batch_size: [4, 8]
  lr: 1e-3:1e-2
"""

TOML = """\
preset = "laptop"
dataset = "counting"
num_samples = 3
max_steps = 40
eval_every = 10
time_budget = "3m"
compile = "off"
schedule = "cosine"

[space]
n_layer = "1:2"
batch_size = [4, 8]
lr = "1e-3:1e-2"
"""

JSON = json.dumps({"preset": "laptop", "dataset": "counting", "num_samples": 3, "max_steps": 40, "eval_every": 10,
                   "time_budget": "3m", "compile": "off", "schedule": "cosine",
                   "space": {"n_layer": "1:2", "batch_size": [4, 8], "lr": "1e-3:1e-2"}})


def _resolved(*argv):
    args, _ = from_command_line(list(argv))
    config = config_from_args(args)
    return {k: getattr(config, k) for k in ("preset", "dataset", "num_samples", "trial_budget", "budget_unit",
                                            "eval_every", "time_budget_s", "compile", "schedule", "space")}


@pytest.fixture
def files(tmp_path):
    out = {}
    for suffix, text in ((".yaml", YAML), (".toml", TOML), (".json", JSON)):
        out[suffix] = tmp_path / f"search{suffix}"
        out[suffix].write_text(text)
    return out


def test_each_format_holds_the_flags(files, tmp_path):
    flags = _resolved("--preset", "laptop", "--dataset", "counting", "--num-samples", "3", "--max-steps", "40",
                      "--eval-every", "10", "--time-budget", "3m", "--compile", "off", "--schedule", "cosine",
                      "--n-layer", "1:2", "--batch-size", "4,8", "--lr", "1e-3:1e-2", "--results-dir", str(tmp_path))
    for path in files.values():
        assert _resolved("--config", str(path), "--results-dir", str(tmp_path)) == flags, path.suffix


def test_flags_override_the_file(files, tmp_path):
    got = _resolved("--config", str(files[".yaml"]), "--num-samples", "5", "--n-layer", "3", "--trial-budget",
                    "2e6tokens", "--eval-every", "5e5", "--results-dir", str(tmp_path))
    assert got["num_samples"] == 5 and got["space"]["n_layer"] == 3
    # --trial-budget replaces the file's --max-steps (they exclude each other), in its own unit
    assert (got["trial_budget"], got["budget_unit"], got["eval_every"]) == (2e6, "tokens", 5e5)
    assert got["space"]["batch_size"]["attributes"]["choices"] == [4, 8]  # the rest as the file says
    # --data-file replaces the file's dataset
    text = tmp_path / "t.txt"
    text.write_text("hello world\n" * 2000)
    args, _ = from_command_line(["--config", str(files[".toml"]), "--data-file", str(text)])
    assert config_from_args(args).data_file == str(text) and config_from_args(args).dataset is None


def test_api_takes_a_file_under_its_keywords(files, tmp_path):
    args, _ = from_keywords({"num_samples": 7, "report": False, "results_dir": str(tmp_path)}, files[".json"])
    config = config_from_args(args)
    assert config.num_samples == 7 and config.report is False and config.compile == "off"
    assert config.space["n_layer"]["attributes"]["high"] == 2


def test_search_json_is_the_resolved_record(files, tmp_path):
    proc = run_cli("tune.search", "--config", str(files[".toml"]), "--num-samples", "4", "--dry-run",
                   "--results-dir", str(tmp_path))
    assert proc.returncode == 0, proc.stderr
    record = json.loads(proc.stdout[:proc.stdout.index("\nfirst trial")])
    assert record["num_samples"] == 4 and record["trial_budget"] == 40 and record["time_budget_s"] == 180
    assert record["compile"] == "off" and record["space"]["n_layer"]["attributes"] == {"log": False, "step": 1,
                                                                                         "low": 1, "high": 2}
    assert record["command"].endswith(f"--config {files['.toml']} --num-samples 4 --dry-run --results-dir {tmp_path}")


@pytest.mark.parametrize("name, text, needle", [
    ("s.yaml", "num_sample: 3\n", "s.yaml: num_sample: unknown setting (did you mean num_samples?)"),
    ("s.toml", 'scheduler = "hyperband"\n', "s.toml: scheduler: invalid choice: 'hyperband'"),
    ("s.json", '{"num_samples": -2}', "s.json: num_samples must be an integer > 0, got -2"),
    ("s.yaml", "space:\n  n_layers: '1:2'\n", "s.yaml: space.n_layers: not a hyperparameter"),
    ("s.yaml", "space:\n  n_layer: '2:1'\n", "s.yaml: space.n_layer"),
    ("s.toml", 'max_steps = "many"\n', "s.toml: max_steps: invalid int value: 'many'"),
    ("s.yaml", "dataset: counting\ndata_file: x.txt\n", "s.yaml: dataset and data_file exclude each other"),
    ("s.yaml", "num_samples: [3\n", "s.yaml: not valid YAML"),
    ("s.toml", "num_samples = \n", "s.toml: not valid TOML"),
    ("s.json", "{", "s.json: not valid JSON"),
    ("s.yaml", "- 3\n", "s.yaml: expected a table of settings"),
    ("s.yaml", "config: other.yaml\n", "s.yaml: config: not a setting a search file can hold"),
    ("s.ini", "x=1\n", "a search file is .yaml, .yml, .toml, .json"),
])
def test_a_bad_key_or_value_names_file_and_key(tmp_path, name, text, needle):
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(UserError) as e:
        args, origin = from_command_line(["--config", str(path), "--results-dir", str(tmp_path)])
        try:
            config_from_args(args)
        except UserError as err:
            from tune.options import attributed

            raise attributed(err, origin) from None
    assert needle in str(e.value) and "\n" not in str(e.value)


@pytest.mark.parametrize("name, text, needle", [
    ("bad.yaml", "num_sample: 3\n", "bad.yaml: num_sample: unknown setting"),
    ("bad.toml", "num_samples = 0\n", "bad.toml: num_samples must be an integer > 0, got 0"),
])
def test_command_line_bad_file_is_one_line(tmp_path, name, text, needle):
    (tmp_path / name).write_text(text)
    proc = run_cli("tune.search", "--config", str(tmp_path / name), "--dry-run", "--results-dir", str(tmp_path))
    assert_one_line_error(proc, needle)
    assert proc.returncode == 2


def test_missing_file_is_one_line(tmp_path):
    proc = run_cli("tune.search", "--config", str(tmp_path / "none.yaml"), "--results-dir", str(tmp_path))
    assert_one_line_error(proc, "none.yaml: no such file")


def test_report_false_in_a_file_is_no_report(tmp_path):
    path = tmp_path / "s.yaml"
    path.write_text("dataset: counting\nreport: false\n")
    args, _ = from_command_line(["--config", str(path), "--results-dir", str(tmp_path)])
    assert args.no_report is True and config_from_args(args).report is False
