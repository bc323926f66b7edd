"""A search's settings from three places, in this order, each overriding the one before: a search file
(`--config search.yaml`, .toml or .json), then keywords (`tune.api.search(num_samples=4)`) or the command line's
flags. All three speak the flags' language: a key is a flag's name with underscores (`num_samples` for
`--num-samples`, `lr` or `learning_rate` for `--learning-rate`), a value what the flag takes (`"1:2"`, `"3m"`,
`"8e12flops"`; a list is a set of choices, `[4, 8]` for `4,8`). A file may keep the hyperparameters' ranges
in a `space` table. Every layer goes through `python -m tune.search`'s own parser, so every flag works, and a
bad key or value is a UserError naming it (the file and the key, or the keyword).
"""

from __future__ import annotations

import argparse
import difflib
import json
import re
from pathlib import Path
from typing import Any

from nanogpt.errors import UserError
from tune.config import build_parser
from tune.space import HPARAMS

FORMATS = (".yaml", ".yml", ".toml", ".json")
# flags one of which replaces the other: a later layer's --max-steps drops an earlier --trial-budget
ONE_OF = (("dataset", "data_file"), ("trial_budget", "max_steps"))
_UNSET = object()


def parser(exit_on_error: bool = True) -> argparse.ArgumentParser:
    """tune.search's parser with --config; with exit_on_error=False its errors are UserErrors, not SystemExit."""
    p = build_parser()
    where = next(g for g in p._action_groups if g.title == "where")
    where.add_argument("--config", metavar="FILE", default=None,
                       help="read settings from a search file (.yaml, .toml or .json; keys are the flags' names with "
                            "underscores, e.g. num_samples: 8, n_layer: '1:4'); flags given here override it")
    for action in p._actions:  # a flag's own check (parse_duration) says what is wrong, not 'invalid value'
        if callable(action.type) and action.type not in (int, float, str):
            action.type = _typed(action.type)
    if not exit_on_error:
        def error(message: str):
            raise UserError(message)
        p.error = error
    return p


def _typed(convert):
    def typed(text):
        try:
            return convert(text)
        except UserError as e:
            raise argparse.ArgumentTypeError(str(e)) from None
    typed.__name__ = getattr(convert, "__name__", "value")
    return typed


def _keys(p: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    """Setting name (a long flag without its dashes, underscores for hyphens) -> its parser action."""
    keys = {}
    for action in p._actions:
        for opt in action.option_strings:
            if opt.startswith("--") and opt != "--help":
                keys[opt[2:].replace("-", "_")] = action
    return keys


def _suggest(key: str, known) -> str:
    close = difflib.get_close_matches(key, list(known), n=1)
    return f" (did you mean {close[0]}?)" if close else ""


def to_argv(key: str, value: Any, action: argparse.Action, label: str) -> list[str]:
    """One setting as the command line would give it; [] for unset (None, or False for an on/off flag)."""
    opt = "--" + key.replace("_", "-")
    if action.nargs == 0:  # --resume, --no-report, --dry-run, -v ...
        if not isinstance(value, bool):
            raise UserError(f"{label}: true or false, got {value!r}")
        return [opt] if value else []
    if value is None:
        return []
    if isinstance(value, bool):  # YAML reads on/off as booleans: --compile on|off
        if action.choices and {"on", "off"} <= set(action.choices):
            value = "on" if value else "off"
        else:
            raise UserError(f"{label}: expects a value like the flag's {opt} VALUE, got {value}")
    if isinstance(value, (list, tuple)):
        if not value or any(isinstance(v, (list, tuple, dict)) for v in value):
            raise UserError(f"{label}: a list is a set of choices (e.g. [4, 8]), got {value!r}")
        value = ",".join(str(v) for v in value)
    elif isinstance(value, dict):
        raise UserError(f"{label}: expects a value like the flag's {opt} VALUE, got a table")
    return [f"{opt}={value}"]  # '=': a value starting with '-' stays a value


def _given(p: argparse.ArgumentParser, argv: list[str]) -> dict[str, Any]:
    """The settings argv gives (argparse dest -> value), and nothing for the flags it leaves out."""
    dests = {a.dest for a in p._actions if a.dest != "help"}
    ns = p.parse_args(argv, namespace=argparse.Namespace(**{d: _UNSET for d in dests}))
    return {d: v for d, v in vars(ns).items() if v is not _UNSET}


class Settings:
    """The layers so far: every setting's value, and where each came from (for the errors)."""

    def __init__(self, p: argparse.ArgumentParser):
        self.parser = p
        self.values = vars(p.parse_args([]))  # the defaults
        self.origin: dict[str, str] = {}  # dest -> "search.yaml: num_samples" or "num_samples"

    def add(self, given: dict[str, Any], origin: dict[str, str]) -> None:
        for group in ONE_OF:
            if set(given) & set(group):
                for dest in group:
                    if dest not in given:
                        self.values[dest] = None
                        self.origin.pop(dest, None)
        self.values.update(given)
        for dest in given:
            self.origin.pop(dest, None)
        self.origin.update(origin)

    def add_settings(self, settings: dict[str, Any], where: str, label) -> None:
        """`settings` (key -> value) as one layer from `where`; `label(key)` names a key in errors. Each key is
        parsed on its own, so a bad one is named; then all of them together (flags that exclude each other)."""
        keys = _keys(self.parser)
        argv, origin = [], {}
        if "report" in settings:  # report: false is --no-report
            settings = dict(settings)
            report = settings.pop("report")
            if not isinstance(report, bool):
                raise UserError(f"{label('report')}: true or false, got {report!r}")
            settings["no_report"] = not report
        for key, value in settings.items():
            if key not in keys:
                raise UserError(f"{label(key)}: unknown setting{_suggest(key, keys)}; the settings are "
                                f"tune.search's flags with underscores (python -m tune.search --help)")
            part = to_argv(key, value, keys[key], label(key))
            try:
                _given(self.parser, part)
            except UserError as e:
                raise UserError(_named(str(e), label(key), keys[key])) from None
            argv += part
            origin[keys[key].dest] = label(key)
        try:
            given = _given(self.parser, argv)
        except UserError as e:
            raise UserError(f"{where}: {_together(str(e))}") from None
        self.add(given, {d: o for d, o in origin.items() if d in given})

    def namespace(self) -> argparse.Namespace:
        return argparse.Namespace(**self.values)


def _strip_argument(message: str) -> str:
    return re.sub(r"^argument [^:]+: ", "", message)


def _named(message: str, label: str, action: argparse.Action) -> str:
    """argparse's 'argument --time-budget: --time-budget '3x': give a duration...' as 'search.yaml: time_budget
    '3x': give a duration...'."""
    message = _strip_argument(message)
    m = re.match(r"--[a-z0-9-]+", message)
    return label + message[m.end():] if m and m.group(0) in action.option_strings else f"{label}: {message}"


def _together(message: str) -> str:
    """argparse's 'argument --data-file: not allowed with argument --dataset' in the settings' names."""
    m = re.fullmatch(r"argument (\S+): not allowed with argument (\S+)", message)
    if not m:
        return message
    a, b = (flag.split("/")[-1].lstrip("-").replace("-", "_") for flag in m.groups())
    return f"{b} and {a} exclude each other: give one"


# --- the search file ------------------------------------------------------------------------------


def read_file(path: str | Path) -> dict[str, Any]:
    """A search file's settings (key -> value; `space`: a table of hyperparameter ranges)."""
    path = Path(path).expanduser()
    suffix = path.suffix.lower()
    if suffix not in FORMATS:
        raise UserError(f"--config {path}: a search file is {', '.join(FORMATS)}, not {suffix or 'without a suffix'}")
    try:
        text = path.read_bytes().decode("utf-8")
    except FileNotFoundError:
        raise UserError(f"--config {path}: no such file") from None
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"--config {path}: cannot be read ({getattr(e, 'strerror', None) or e})") from None
    data = _parse(path, suffix, text)
    if not isinstance(data, dict):
        raise UserError(f"{path}: expected a table of settings (key: value), got {type(data).__name__}")
    for key in ("config", "help"):
        if key in data:
            raise UserError(f"{path}: {key}: not a setting a search file can hold")
    return data


def _space(path: Path, data: dict[str, Any]) -> tuple[dict[str, Any], set[str]]:
    """The file's settings with its `space` table's ranges among them, and the keys that came from that table."""
    data = dict(data)
    space = data.pop("space", None)
    if space is None:
        return data, set()
    if not isinstance(space, dict):
        raise UserError(f"{path}: space: expected a table of hyperparameter ranges (n_layer: '1:4'), got {space!r:.60}")
    keys = _keys(build_parser())
    for key, value in space.items():
        if key not in keys or keys[key].dest not in HPARAMS:
            raise UserError(f"{path}: space.{key}: not a hyperparameter{_suggest(key, HPARAMS)} (one of "
                            f"{', '.join(HPARAMS)})")
        if key in data:
            raise UserError(f"{path}: {key} is given twice, at the top and in space")
        data[key] = value
    return data, set(space)


def _parse(path: Path, suffix: str, text: str) -> Any:
    if suffix == ".json":
        try:
            return json.loads(text)
        except json.JSONDecodeError as e:
            raise UserError(f"{path}: not valid JSON ({e})") from None
    if suffix == ".toml":
        try:
            import tomllib
        except ImportError:  # Python 3.10: the same parser, as a package
            import tomli as tomllib
        try:
            return tomllib.loads(text)
        except tomllib.TOMLDecodeError as e:
            raise UserError(f"{path}: not valid TOML ({e})") from None
    try:
        import yaml
    except ImportError:
        raise UserError(f"{path}: reading YAML needs PyYAML (pip install pyyaml); or write the file as .toml or .json") from None
    try:
        return yaml.load(text, Loader=_yaml_loader(yaml)) or {}
    except yaml.YAMLError as e:
        raise UserError(f"{path}: not valid YAML ({' '.join(str(e).split())})") from None


def _yaml_loader(yaml):
    """YAML's safe loader, its scalars kept as written except true, false and null: every value becomes a flag's
    text anyway, and YAML 1.1 would read `n_layer: 1:4` as the number 64 (base 60) and `compile: off` as false."""

    class Loader(yaml.SafeLoader):
        pass

    typed = ("tag:yaml.org,2002:int", "tag:yaml.org,2002:float", "tag:yaml.org,2002:bool")
    Loader.yaml_implicit_resolvers = {first: [(tag, rx) for tag, rx in resolvers if tag not in typed]
                                      for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()}
    Loader.add_implicit_resolver("tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"),
                                 list("tTfF"))
    return Loader


def _file_layer(settings: Settings, path: str | Path) -> None:
    data, in_space = _space(Path(path), read_file(path))
    settings.add_settings(data, str(path), lambda key: f"{path}: {'space.' if key in in_space else ''}{key}")


# --- the two ways in ------------------------------------------------------------------------------


def from_command_line(argv: list[str]) -> tuple[argparse.Namespace, dict[str, str]]:
    """`python -m tune.search`'s flags, over the search file of --config when given. Flag errors exit as
    argparse's do; the file's errors are UserErrors. Returns the settings and where each file setting came from."""
    p = parser()
    args = p.parse_args(argv)
    if args.config is None:
        return args, {}
    settings = Settings(parser(exit_on_error=False))
    _file_layer(settings, args.config)
    settings.add(_given(p, argv), {})
    return settings.namespace(), settings.origin


def from_keywords(keywords: dict[str, Any], config: str | Path | None = None) -> tuple[argparse.Namespace, dict[str, str]]:
    """tune.api.search's keywords, over the search file `config` when given. `report=False` is --no-report."""
    settings = Settings(parser(exit_on_error=False))
    if config is not None:
        _file_layer(settings, config)
    keywords = dict(keywords)
    for key in ("config", "help"):
        if key in keywords:
            raise UserError(f"{key}: not a setting (unknown keyword)")
    settings.add_settings(keywords, "search()", lambda key: key)
    return settings.namespace(), settings.origin


def command_line(args: argparse.Namespace, keywords: dict[str, Any]) -> list[str]:
    """The command line that does what tune.api.search(**keywords) (and its file) did: --config FILE, then the
    keywords as flags."""
    p = parser(exit_on_error=False)
    keys = _keys(p)
    keywords = dict(keywords)
    if "report" in keywords:
        keywords["no_report"] = not keywords.pop("report")
    argv = ["--config", str(args.config)] if getattr(args, "config", None) else []
    for key, value in keywords.items():
        argv += to_argv(key, value, keys[key], key)
    return argv


def attributed(error: UserError, origin: dict[str, str]) -> UserError:
    """An error that begins with a flag (`--num-samples must be ...`) set by the file or a keyword, named as the
    user wrote it there (`search.yaml: num_samples must be ...`); any other error as it is."""
    m = re.match(r"(--[a-z0-9-]+)", str(error))
    if not m or not origin:
        return error
    keys = _keys(build_parser())
    action = keys.get(m.group(1)[2:].replace("-", "_"))
    where = origin.get(action.dest) if action else None
    if where is None:
        return error
    new = type(error)(where + str(error)[m.end():])
    return new
