"""Command-line plumbing shared by the entry points: bad input is one `error: ...` line and exit status 2.

A script calls `run(main)` instead of `absl.app.run(main)`. Unparsable flags, `app.UsageError` and
`InputError` (a bad file or value the user gave; `CheckpointError` is one) then end the process with
one line on stderr naming the file, field or flag, and exit status 2, never a traceback.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable
from typing import Any, NoReturn

USAGE_EXIT = 2
# The tiny trained models ship inside the package (package data): true in a checkout and when installed.
ASSETS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "assets")


class InputError(ValueError):
    """A file or value given by the user that cannot be used; the message names it and what is allowed."""


def fail(message: str) -> NoReturn:
    """Print `error: message` on stderr and exit with the usage status at once: no interpreter
    teardown, whose finalizers (orbax/TensorStore reads abandoned by a failed load) can print noise,
    and background threads are silenced before the line is written."""
    sys.stdout.flush()
    sys.stderr.flush()
    err = os.dup(2)
    null = os.open(os.devnull, os.O_WRONLY)
    os.dup2(null, 1)
    os.dup2(null, 2)
    os.write(err, f"error: {message}\n".encode())
    os._exit(USAGE_EXIT)


def _parse_flags(argv: list[str]) -> list[str]:
    from absl import flags

    try:
        return flags.FLAGS(argv)
    except flags.Error as e:
        fail(str(e).splitlines()[0] if str(e) else repr(e))


def _quiet_unraisable(unraisable: Any) -> None:
    """Drop the "Exception ignored" reports of orbax read coroutines abandoned after a failed read (the
    error itself is reported as one line); anything else goes to the default hook."""
    code = getattr(unraisable.object, "cr_code", None)
    if code is not None and "orbax" in code.co_filename:
        return
    if isinstance(unraisable.exc_value, RuntimeError) and "Event loop is closed" in str(unraisable.exc_value):
        return
    sys.__unraisablehook__(unraisable)


def run(main: Callable[[list[str]], Any]) -> None:
    """`absl.app.run(main)` with every bad-input error reported as one line and exit status 2."""
    from absl import app

    sys.unraisablehook = _quiet_unraisable
    logging.getLogger("asyncio").setLevel(logging.CRITICAL)  # abandoned read tasks after a failed load

    def wrapped(argv: list[str]) -> Any:
        try:
            return main(argv)
        except (app.UsageError, InputError, FileExistsError, FileNotFoundError) as e:
            fail(str(e))

    app.run(wrapped, flags_parser=_parse_flags)
