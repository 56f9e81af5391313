"""argparse types shared by the `interp` command and the probe scripts: a bad value is refused by argparse
with one line naming the flag, before any model loads. Light on purpose: no torch import here."""

from __future__ import annotations

import argparse
import math


def positive_int(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer; given {text!r}") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer; given {v}")
    return v


def nonnegative_int(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0; given {text!r}") from None
    if v < 0:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0; given {v}")
    return v


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
