"""What every command line of the toolkit shares: option types checked at parse time, and one
way to end: a clear message and an exit code, never a traceback. Pure Python (no torch).
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import tempfile
import traceback
from typing import Callable, Sequence


#: The program name parsers show, when a front end runs under another name (``mmearth embed``
#: runs ``python -m mpmae_core.runtime embed``): set by the ``mmearth`` command, else None.
PROGRAM: "str | None" = None


def program(default: str) -> str:
    """The name a parser's usage line shows: ``PROGRAM`` when set, else ``default``."""
    return PROGRAM or default


def _number(text: str, kind, what: str):
    try:
        value = kind(text)
    except (TypeError, ValueError):
        raise argparse.ArgumentTypeError(f"{text!r} is not {what}") from None
    if isinstance(value, float) and not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"{text!r} is not a finite number")
    return value


def _bounded(kind, what: str, low: float, strict: bool, rule: str, doc: str):
    """An argparse type: a number of ``kind`` at least ``low`` (above it when ``strict``)."""

    def parse(text: str):
        value = _number(text, kind, what)
        if value < low or (strict and value == low):
            raise argparse.ArgumentTypeError(f"must be {rule}, got {value:g}")
        return value

    parse.__doc__ = doc
    return parse


positive_int = _bounded(int, "a whole number", 1, False, "at least 1", "A whole number >= 1.")
non_negative_int = _bounded(int, "a whole number", 0, False, "0 or more", "A whole number >= 0.")
positive_float = _bounded(float, "a number", 0, True, "greater than 0", "A finite number > 0.")
non_negative_float = _bounded(float, "a number", 0, False, "0 or more", "A finite number >= 0.")


def fraction(text: str) -> float:
    """An argparse type: a number in [0, 1)."""
    value = _number(text, float, "a number")
    if not 0 <= value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 0 and below 1, got {value:g}")
    return value


def int_list(text: str) -> list[int]:
    """An argparse type: comma-separated whole numbers >= 1, e.g. '1,5,10'."""
    parts = [p.strip() for p in str(text).split(",") if p.strip()]
    if not parts:
        raise argparse.ArgumentTypeError("give comma-separated whole numbers such as 1,5,10")
    try:
        values = [int(p) for p in parts]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a list of whole numbers such as 1,5,10") from None
    if any(v < 1 for v in values):
        raise argparse.ArgumentTypeError(f"every number must be at least 1, got {text!r}")
    return values


def dn_offset(text: str):
    """An argparse type: 'auto' or a finite number (the DN offset)."""
    if str(text).strip().lower() == "auto":
        return "auto"
    return _number(text, float, "'auto' or a number such as 0 or 1000")


def choice_of(choices: Sequence[str], what: str) -> Callable[[str], str]:
    """An argparse type accepting one of ``choices`` (case-insensitive), naming them when wrong."""
    lookup = {c.lower(): c for c in choices}

    def parse(text: str) -> str:
        value = lookup.get(str(text).strip().lower())
        if value is None:
            raise argparse.ArgumentTypeError(f"unknown {what} {text!r}: choose one of {', '.join(choices)}")
        return value

    parse.__name__ = what
    return parse


def list_of(choices: Sequence[str], what: str) -> Callable[[str], list]:
    """An argparse type: comma-separated entries of ``choices`` (case-insensitive), e.g. 'a,b'."""
    one = choice_of(choices, what)

    def parse(text: str) -> list:
        parts = [p for p in str(text).replace(" ", "").split(",") if p]
        if not parts:
            raise argparse.ArgumentTypeError(f"give one or more of {', '.join(choices)}, comma-separated")
        return list(dict.fromkeys(one(p) for p in parts))

    parse.__name__ = what
    return parse


def crash_log(exc: BaseException) -> str:
    """Save the traceback of an unexpected error to a file; its path ('' when it cannot be saved)."""
    try:
        fd, path = tempfile.mkstemp(prefix="mmearth-error-", suffix=".log")
        with os.fdopen(fd, "w") as f:
            traceback.print_exception(type(exc), exc, exc.__traceback__, file=f)
        return path
    except OSError:
        return ""


def run_main(fn: Callable[[], int], known: tuple = (), interrupted: Callable[[], str] = lambda: "",
             prog: str = "mmearth") -> int:
    """Run a command's body: known errors print 'error: MESSAGE' (exit 2), Ctrl-C prints what was
    kept (exit 130), anything else prints one line and where the details were saved (exit 1)."""
    from mpmae_core.runtime.io.files import OutputError, describe_os_error

    try:
        return fn()
    except KeyboardInterrupt:
        note = interrupted()
        print(f"\ninterrupted{': ' + note if note else ''}", file=sys.stderr)
        return 130
    except (OutputError,) + tuple(known) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"error: {describe_os_error(exc, getattr(exc, 'filename', None) or '', 'use')}", file=sys.stderr)
        return 2
    except MemoryError:
        print("error: out of memory: use smaller tiles (--tile) or batches, or a machine with more memory",
              file=sys.stderr)
        return 2
    except Exception as exc:  # noqa: BLE001 - the last line of defence: never a traceback
        log = crash_log(exc)
        where = f"; the details were saved to {log}" if log else ""
        print(f"error: unexpected {type(exc).__name__}: {exc}. This is a bug in {prog}: please report it{where}",
              file=sys.stderr)
        return 1
