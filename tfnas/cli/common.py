"""Shared CLI conventions: quiet TensorFlow, one-line errors, exit codes.

Exit code 0 on success, 2 on bad input with ``error: ...`` on stderr and no
traceback.  Library code raises ordinary exceptions; a CLI maps the ones that
mean "the user gave something wrong" to :class:`UsageError`.
"""

from __future__ import annotations

import argparse
import sys
from typing import Callable, Sequence

from tfnas.files import to_json


class UsageError(Exception):
    """Bad input from the user: reported as one line, exit code 2."""


def bad_input_errors() -> tuple:
    """Exception types that mean bad user input (not a bug)."""
    from tfnas.genotypes import GenotypeError
    errors = [UsageError, GenotypeError, FileNotFoundError, NotADirectoryError]
    try:
        from tfnas.data import DatasetError  # noqa: F401
        errors.append(DatasetError)
    except ImportError:
        pass
    try:
        from tfnas.rundir import CheckpointError  # noqa: F401
        errors.append(CheckpointError)
    except ImportError:
        pass
    return tuple(errors)


def run_cli(main: Callable[[Sequence[str] | None], int | None],
            argv: Sequence[str] | None = None) -> int:
    """Run ``main(argv)``, turning bad-input exceptions into ``error: ...``
    and exit code 2, and Ctrl-C into exit code 130."""
    try:
        code = main(argv)
        return 0 if code is None else int(code)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except bad_input_errors() as err:
        msg = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        if isinstance(err, FileNotFoundError) and err.filename and err.filename not in msg:
            msg = f"{msg}: {err.filename}"
        print(f"error: {msg}", file=sys.stderr)
        return 2


class ArgumentParser(argparse.ArgumentParser):
    """argparse with the house error format (``error: ...``, exit code 2)."""

    def error(self, message):  # noqa: D401 - argparse API
        self.print_usage(sys.stderr)
        print(f"error: {message}", file=sys.stderr)
        raise SystemExit(2)


def flags_set(parser: argparse.ArgumentParser, args: argparse.Namespace,
              ignore: Sequence[str] = ()) -> list:
    """The ``--flags`` of ``args`` given a value other than their default,
    except the destinations in ``ignore`` (e.g. to name the flags that
    ``--resume`` would not apply)."""
    # a destination's unset value is its first action's default (argparse sets
    # them in order); --auxiliary/--no-auxiliary share one, with defaults None/True
    unset = {}
    for action in parser._actions:
        unset.setdefault(action.dest, action.default)
    names = {}   # dest -> its long flags
    for action in parser._actions:
        if not action.option_strings or action.dest in ignore or action.dest == "help":
            continue
        if getattr(args, action.dest, None) != unset[action.dest]:
            names.setdefault(action.dest, []).append(max(action.option_strings, key=len))
    return sorted("/".join(flags) for flags in names.values())


def print_json(obj) -> None:
    print(to_json(obj, indent=2))


def parse_seed_range(text: str) -> list:
    """``"1-10"`` -> [1..10]; ``"1,3,5"`` -> [1, 3, 5]; ``"7"`` -> [7]."""
    seeds = []
    try:
        for part in text.split(","):
            part = part.strip()
            if "-" in part:
                lo, hi = part.split("-", 1)
                lo, hi = int(lo), int(hi)
                if hi < lo:
                    raise ValueError
                seeds.extend(range(lo, hi + 1))
            elif part:
                seeds.append(int(part))
    except ValueError:
        raise UsageError(f"bad seed list {text!r}; use e.g. 1-10 or 1,3,5") from None
    if not seeds:
        raise UsageError(f"bad seed list {text!r}; use e.g. 1-10 or 1,3,5")
    return seeds
