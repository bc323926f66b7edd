"""Amounts of a budget (steps, tokens, FLOPs, seconds) as people read them, and back: `format_amount(3e11, "flops")`
is "3e11 FLOPs", `format_amount(2000, "steps")` "2,000 steps", `format_amount(900, "s")` "15 min"; `parse_amount`
reads those, and the short forms (`3e11flops`, `2000steps`, `900s`, `15m`)."""

from __future__ import annotations

import math
import re

from nanogpt.errors import UserError

UNITS = ("steps", "tokens", "flops", "s")  # what a budget can count
UNIT_NAMES = {"steps": "steps", "tokens": "tokens", "flops": "FLOPs", "s": "seconds"}  # as a label says them
# spellings of a unit (case-insensitive) -> (unit, factor to it)
_SPELLINGS = {"step": ("steps", 1), "steps": ("steps", 1), "token": ("tokens", 1), "tokens": ("tokens", 1),
              "flop": ("flops", 1), "flops": ("flops", 1),
              **{k: ("s", 1) for k in ("s", "sec", "secs", "second", "seconds")},
              **{k: ("s", 60) for k in ("m", "min", "mins", "minute", "minutes")},
              **{k: ("s", 3600) for k in ("h", "hr", "hour", "hours")}}
_AMOUNT = re.compile(r"^\s*([0-9.,eE+-]+)\s*([A-Za-z]+)?\s*$")
_GROUPED = re.compile(r"^[0-9]{1,3}(,[0-9]{3})+(\.[0-9]*)?$")  # 2,000 or 1,500.5: a comma only between thousands


def number(x: float) -> str:
    """A number as people write it: whole numbers below a million with thousands separators (2,000), others in
    three significant digits with a plain exponent (3e11, 6.3e11, 1.5e6), never 'e+11' or '356.0'."""
    x = float(x)
    if x.is_integer() and abs(x) < 1e6:
        return f"{int(x):,}"
    text = f"{x:.3g}"
    if "e" not in text:  # 0.005, 0.00015 (Python writes up to 1e-4 plainly), 6.3e5 is written with its exponent
        return text
    mantissa, exp = text.split("e")
    return f"{mantissa}e{int(exp)}"


def format_seconds(seconds: float) -> str:
    """45 s, 2.5 min, 15 min, 1.5 h."""
    if not math.isfinite(seconds):
        return "? s"
    if seconds < 120:
        return f"{seconds:.0f} s" if seconds >= 10 else f"{seconds:.2g} s"
    if seconds < 7200:
        return f"{seconds / 60:.3g} min"
    return f"{seconds / 3600:.3g} h"


def format_amount(amount: float, unit: str) -> str:
    """An amount in a budget's unit, for people: '3e11 FLOPs', '2,000 steps', '5.12e6 tokens', '15 min'."""
    if unit == "s":
        return format_seconds(amount)
    name = "step" if unit == "steps" and amount == 1 else UNIT_NAMES.get(unit, unit)
    return f"{number(amount)} {name}"


def parse_amount(text: str, flag: str, unit: str | None = None, what: str = "the trial budget") -> tuple[float, str]:
    """'8e12flops', '8e12 FLOPs', '2,000 steps', '15 min' -> (amount, unit). A bare number takes `unit` (the
    budget's); a unit that differs from `unit` is refused."""
    m = _AMOUNT.match(str(text))
    spelled = m.group(2).lower() if m and m.group(2) else None
    if not m or (spelled is not None and spelled not in _SPELLINGS):
        raise UserError(f"{flag} {text!r}: write a number with a unit, one of {', '.join(UNITS)} "
                        f"(e.g. 8e12flops, 2000steps, 120s, 15min)")
    digits = m.group(1)
    if "," in digits and not _GROUPED.match(digits):
        raise UserError(f"{flag} {text!r}: {digits!r} is not a number (a comma only between thousands: 2,000)")
    try:
        amount = float(digits.replace(",", ""))
    except ValueError:
        raise UserError(f"{flag} {text!r}: {digits!r} is not a number") from None
    given, factor = _SPELLINGS[spelled] if spelled else (unit, 1)
    if given is None:
        raise UserError(f"{flag} {text!r} needs a unit: {', '.join(UNITS)} (e.g. 8e12flops, 120s)")
    amount *= factor
    if unit is not None and given != unit:
        raise UserError(f"{flag} {text!r} is in {given}, but {what} is in {unit}: use one unit")
    if not (amount > 0 and math.isfinite(amount)):
        raise UserError(f"{flag} must be > 0, got {text!r}")
    if given == "steps" and not amount.is_integer():
        raise UserError(f"{flag} {text!r}: steps are whole numbers")
    return amount, given


def parse_duration(text: str, flag: str = "--time-budget") -> float:
    """'900', '900s', '15m', '15 min', '1.5h' -> seconds."""
    try:
        return parse_amount(text, flag, "s")[0]
    except UserError:
        raise UserError(f"{flag} {text!r}: give a duration > 0 in seconds, minutes or hours, e.g. 900, 900s, 15m, "
                        f"1h") from None
