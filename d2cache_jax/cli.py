"""Command-line plumbing shared by the entry points: bad input is one `error: ...` line and exit status 2.

A script calls `run(main)` instead of `absl.app.run(main)`. Unparsable flags, `app.UsageError` and
`InputError` (a bad file or value the user gave; `CheckpointError` is one) then end the process with
one line on stderr naming the file, field or flag, and exit status 2, never a traceback.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any, NoReturn

USAGE_EXIT = 2


class InputError(ValueError):
    """A file or value given by the user that cannot be used; the message names it and what is allowed."""


def fail(message: str) -> NoReturn:
    """Print `error: message` on stderr and exit with the usage status."""
    sys.stderr.write(f"error: {message}\n")
    sys.stderr.flush()
    sys.exit(USAGE_EXIT)


def _parse_flags(argv: list[str]) -> list[str]:
    from absl import flags

    try:
        return flags.FLAGS(argv)
    except flags.Error as e:
        fail(str(e).splitlines()[0] if str(e) else repr(e))


def run(main: Callable[[list[str]], Any]) -> None:
    """`absl.app.run(main)` with every bad-input error reported as one line and exit status 2."""
    from absl import app

    def wrapped(argv: list[str]) -> Any:
        try:
            return main(argv)
        except (app.UsageError, InputError, FileExistsError, FileNotFoundError) as e:
            fail(str(e))

    app.run(wrapped, flags_parser=_parse_flags)
