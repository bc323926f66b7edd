"""The search's configuration is declared once (SearchConfig's field metadata): the parser, the checks and the
--resume comparison come from it, and a search.json written by earlier versions still resumes."""

import json

import pytest

from nanogpt.errors import UserError
from tune.algorithms import SCHEDULERS, SEARCHERS
from tune.config import SearchConfig, build_parser, config_from_args

OLD = ["--name", "old", "--max-steps", "40", "--lr", "1e-3:1e-2", "--scheduler", "asha", "--seed", "3",
       "--final-budget", "80steps"]


def _old_search(tmp_path):
    """The search.json of a search started before the configuration was declarative (made by that version)."""
    from pathlib import Path

    exp = tmp_path / "old"
    exp.mkdir()
    saved = json.loads((Path(__file__).parent / "data" / "search_before_redesign.json").read_text())
    saved["results_dir"] = str(tmp_path)
    (exp / "search.json").write_text(json.dumps(saved))
    return saved


def test_search_json_written_before_the_redesign_still_resumes(tmp_path):
    saved = _old_search(tmp_path)
    # the original command plus --resume is accepted, and the search goes on with its own settings
    config = config_from_args(build_parser().parse_args([*OLD, "--resume", "--results-dir", str(tmp_path)]))
    for key, value in saved.items():
        assert getattr(config, key) == value, key
    assert type(config.make_sampler()).__name__ == "TPESampler"
    # the architecture it never recorded is nanoGPT's: saying so is no change, asking for another is
    config_from_args(build_parser().parse_args([*OLD, "--pos-emb", "learned", "--qk-norm", "false", "--resume",
                                                "--results-dir", str(tmp_path)]))
    with pytest.raises(UserError, match="--pos-emb: old was searched with learned, this command says rope"):
        config_from_args(build_parser().parse_args([*OLD, "--pos-emb", "rope", "--resume", "--results-dir",
                                                    str(tmp_path)]))
    assert set(config.space_sampler().space_json) >= {"pos_emb", "mlp", "qk_norm", "zero_init", "parametrization"}
    assert config.space_sampler().space_json["parametrization"] == "sp"
    with pytest.raises(UserError, match="--parametrization: old was searched with sp, this command says mup"):
        config_from_args(build_parser().parse_args([*OLD, "--parametrization", "mup", "--resume", "--results-dir",
                                                    str(tmp_path)]))
    # a changed setting is still refused, naming its flag
    with pytest.raises(UserError, match="--seed: old was searched with 3, this command says 4"):
        config_from_args(build_parser().parse_args([*OLD[:-4], "--seed", "4", "--resume", "--results-dir",
                                                    str(tmp_path)]))


def test_help_shows_every_default():
    assert "90% train" in build_parser().format_help()
    assert "--parametrization" in build_parser().format_help() and "muP" in build_parser().format_help()  # and formats: a '%' in a setting's help is no format code
    actions = [a for a in build_parser()._actions if a.help and a.option_strings != ["-h", "--help"]]
    flags = {a.option_strings[0] for a in actions}
    for f in SearchConfig.__dataclass_fields__.values():
        if f.metadata.get("flag"):
            assert f.metadata["flag"] in flags
    for a in actions:
        if a.option_strings[0] not in ("--resume", "--dashboard", "--no-report", "--max-steps", "--dry-run", "-v"):
            assert "default" in a.help, a.option_strings


def test_searchers_and_schedulers_come_from_their_tables():
    parser = build_parser()
    choices = {a.dest: a.choices for a in parser._actions}
    assert list(choices["searcher"]) == list(SEARCHERS) and list(choices["scheduler"]) == list(SCHEDULERS)


def test_an_unknown_sampler_in_search_json_is_refused_not_replaced(tmp_path):
    saved = _old_search(tmp_path)
    saved["sampler"]["kind"] = "cmaes-from-the-future"
    (tmp_path / "old" / "search.json").write_text(json.dumps(saved))
    config = SearchConfig.load(tmp_path / "old")
    with pytest.raises(UserError, match="cmaes-from-the-future"):
        config.make_sampler()


def test_train_help_shows_every_default():
    from nanogpt.train import build_parser as train_parser

    for a in train_parser()._actions:
        if a.option_strings and a.option_strings[0] not in ("-h", "--resume", "--data-file"):
            assert a.help and "default" in a.help, a.option_strings
