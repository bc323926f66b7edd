"""The one base class for what a user can fix: flags, data, checkpoints, results directories.

Entry points (`nanogpt.cli.run_main`) show a UserError as one line and exit 2. Any other exception
is a bug and keeps its traceback (exit 1).
"""

from __future__ import annotations


class UserError(ValueError):
    """Bad input the user can fix; the message says what is wrong and what to do.

    A ValueError, so library code that validates arguments keeps the usual contract."""


class DataError(UserError):
    """Bad or unavailable data (a data set, a text file, the cache). The message says what to do."""
