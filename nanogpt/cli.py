"""Helpers shared by the command-line entry points: flags from dataclass fields, one-line errors."""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import logging
import re
import sys
import typing
from typing import Callable

from nanogpt.errors import UserError


def _parse_bool(s: str) -> bool:
    if s.lower() in ("1", "true", "yes", "on"):
        return True
    if s.lower() in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {s!r}")


class OneLineParser(argparse.ArgumentParser):
    """An ArgumentParser whose refusals are one line (a UserError: `run_main` prints it and exits 2), naming the
    flag and pointing at --help, instead of argparse's usage block."""

    def error(self, message: str):
        raise UserError(f"{message} ({self.prog} --help lists the flags)")


def user_type(parse: Callable[[str], object], flag: str) -> Callable[[str], object]:
    """A flag's argparse type from a parser that raises UserError: argparse shows the UserError's own words
    (without repeating the flag) instead of 'invalid <function> value'."""
    def convert(text: str):
        try:
            return parse(text)
        except UserError as e:
            raise argparse.ArgumentTypeError(str(e).removeprefix(f"{flag} ")) from None
    convert.__name__ = getattr(parse, "__name__", "value")
    return convert


def field_comments(cls) -> dict[str, str]:
    """Each field's comment in the class's source: the one after it on its line, else the block just above it.
    The field's documentation lives there once; `--help` shows it."""
    try:
        lines = inspect.getsource(cls).splitlines()
    except (OSError, TypeError):  # no source on disk (e.g. a frozen install): flags keep their defaults only
        return {}
    names = {f.name for f in dataclasses.fields(cls)}
    comments, above = {}, []
    for line in lines[1:]:
        stripped = line.strip()
        if stripped.startswith("#"):
            above.append(stripped.lstrip("#").strip())
            continue
        m = re.match(r"(\w+)\s*:", stripped)
        if m and m.group(1) in names:
            _, sep, trailing = line.partition("  # ")
            comments[m.group(1)] = " ".join([*above, trailing.strip()] if sep else above).strip()
        above = []
    return {k: v for k, v in comments.items() if v}


def add_dataclass_args(parser: argparse.ArgumentParser, cls, defaults: dict | None = None, skip=(),
                       aliases: dict[str, list[str]] | None = None, names: dict[str, str] | None = None,
                       types: dict[str, Callable] | None = None, metavars: dict[str, str] | None = None) -> None:
    """One flag per field (`--n-layer` for n_layer), typed from the field's annotation, its help the field's
    comment in the source. `aliases`: more spellings of a field's flag (another command's, e.g. --lr, or the
    field's own older one); `names`: a flag spelled otherwise than its field (--time-budget for time_budget_s);
    `types`: a parser for a field's text (a duration), in place of its annotation's type."""
    defaults = defaults or {}
    hints = typing.get_type_hints(cls)
    docs = field_comments(cls)
    group = parser.add_argument_group(cls.__name__)
    for f in dataclasses.fields(cls):
        if f.name in skip:
            continue
        hint = hints[f.name]
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        kwargs: dict = {}
        if typing.get_origin(hint) is typing.Literal:
            kwargs["choices"] = list(typing.get_args(hint))
        elif hint is bool:
            kwargs["type"] = _parse_bool
        elif args:  # Optional[X]
            kwargs["type"] = args[0]
        else:
            kwargs["type"] = hint
        if f.name in (metavars or {}):
            kwargs["metavar"] = metavars[f.name]
        if f.name in (types or {}):
            kwargs["type"] = user_type(types[f.name], (names or {}).get(f.name, "--" + f.name.replace("_", "-")))
        default = defaults.get(f.name, f.default)
        group.add_argument(
            (names or {}).get(f.name, "--" + f.name.replace("_", "-")), *(aliases or {}).get(f.name, []),
            dest=f.name, default=default,
            help=(docs[f.name].replace("%", "%%") + " " if f.name in docs else "") + f"(default: {default})", **kwargs
        )


def dataclass_from_args(cls, args: argparse.Namespace, **overrides):
    """The dataclass from its flags; a value its checks refuse is the user's to fix (UserError)."""
    values = {f.name: getattr(args, f.name) for f in dataclasses.fields(cls) if hasattr(args, f.name)}
    values.update(overrides)
    try:
        return cls(**values)
    except ValueError as e:
        raise UserError(str(e)) from None


def configure_logging(level: int = logging.INFO) -> None:
    """Our own loggers (nanogpt.*, tune.*) print their message to stderr; libraries keep theirs to themselves
    (matplotlib's font-cache note, Ray's and Optuna's chatter are nothing a user can act on)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(message)s"))
    for name in ("nanogpt", "tune"):
        logger = logging.getLogger(name)
        logger.handlers[:] = [handler]
        logger.setLevel(level)
        logger.propagate = False


def run_main(main: Callable[[list[str] | None], int | None], argv: list[str] | None = None) -> None:
    """Run an entry point: a UserError is one line on stderr and exit 2, Ctrl-C exit 130.
    Anything else is a bug in our code or a library's and keeps its traceback (exit 1)."""
    configure_logging()
    try:
        code = main(argv)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    sys.exit(code or 0)
