"""argparse types shared by the `interp` command and the probe scripts: a bad value is refused by argparse
with one line naming the flag, before any model loads. Light on purpose: no torch import here."""

from __future__ import annotations

import argparse
import math


def _int_at_least(low: int, words: str):
    def parse(text: str) -> int:
        try:
            v = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {words}; given {text!r}") from None
        if v < low:
            raise argparse.ArgumentTypeError(f"expected {words}; given {v}")
        return v

    return parse


positive_int = _int_at_least(1, "a positive integer")
nonnegative_int = _int_at_least(0, "an integer >= 0")


SEED_MAX = 2**32 - 1  # what every generator we seed takes (numpy and scikit-learn stop at 2**32 - 1)


def seed(text: str) -> int:
    """A random seed: an integer in [0, 2**32 - 1] (torch would overflow past 2**64, numpy past 2**32)."""
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer seed; given {text!r}") from None
    if not 0 <= v <= SEED_MAX:
        shown = text if len(text) <= 24 else f"{text[:10]}...({len(text)} digits)"
        raise argparse.ArgumentTypeError(f"expected an integer in [0, {SEED_MAX}]; given {shown}")
    return v


def check_utf8_argv(argv: list[str], prog: str = "interp") -> None:
    """Exit 2 with one line if an argument is not valid UTF-8 text. Python hands undecodable bytes of the
    command line over as lone surrogates (surrogateescape); they would reach a tokenizer and fail deep inside it."""
    import sys

    for i, arg in enumerate(argv, 1):
        try:
            arg.encode("utf-8")
        except UnicodeEncodeError as e:
            bad = arg[e.start:e.end].encode("utf-8", "surrogateescape")
            shown = arg.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
            shown = shown if len(shown) <= 60 else shown[:57] + "..."
            print(f"{prog}: error: argument {i} ({shown!r}) is not valid UTF-8 (byte {bad[:4]!r} at character "
                  f"{e.start}); pass text in UTF-8 (check the terminal's or file's encoding).", file=sys.stderr)
            raise SystemExit(2) from None


def finite_float(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number; given {text!r}") from None
    if not math.isfinite(v):
        raise argparse.ArgumentTypeError(f"expected a finite number; given {text!r}")
    return v


def nonnegative_float(text: str) -> float:
    v = finite_float(text)
    if v < 0:
        raise argparse.ArgumentTypeError(f"expected a number >= 0; given {v:g}")
    return v


class OneLineParser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (the problem and where to read more), exit status 2 — the same
    shape as every other `interp` error, instead of a usage block followed by the message."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")
