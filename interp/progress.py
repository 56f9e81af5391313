"""One progress bar for every long loop: tqdm on a terminal, a line per step in a redirected log.

A bar redrawn ten times a second is what a person at a terminal wants and what a log file (CI, ``nohup``,
``> run.log 2>&1``) does not: there every redraw is another line. So the bar shows only when it is asked for
and stderr is a terminal; ``INTERP_PROGRESS=1`` forces it on, ``INTERP_PROGRESS=0`` off (no bar, no lines).

Where no bar is drawn, a step that is still running after ``INTERP_PROGRESS_AFTER`` seconds (default 2)
says so in one line on stderr (``activations blocks.0.hook_resid_post...``), and when it ends, one more
(``...: done in 12.3 s``). Steps that end sooner say nothing, so a command that fails fast still prints
its one-line error alone.
"""

from __future__ import annotations

import contextlib
import contextvars
import os
import sys
import threading
import time


def progress_wanted(enabled: bool = True) -> bool:
    """Whether a bar asked for (``enabled``) is drawn here."""
    forced = os.environ.get("INTERP_PROGRESS", "").strip()
    if forced in ("0", "1"):
        return enabled and forced == "1"
    stream = sys.stderr
    return bool(enabled and stream is not None and hasattr(stream, "isatty") and stream.isatty())


_SILENT = contextvars.ContextVar("interp_progress_silent", default=False)


@contextlib.contextmanager
def silenced(silent: bool = True):
    """No step lines inside (a command run with ``--quiet``), whatever the library code below asks for."""
    token = _SILENT.set(bool(silent) or _SILENT.get())
    try:
        yield
    finally:
        _SILENT.reset(token)


def lines_wanted(enabled: bool = True) -> bool:
    """Whether a step asked to show progress (``enabled``) says what it does in lines (no bar drawn here)."""
    return bool(enabled and not _SILENT.get() and os.environ.get("INTERP_PROGRESS", "").strip() != "0"
                and sys.stderr is not None)


def _line_delay() -> float:
    try:
        return max(float(os.environ.get("INTERP_PROGRESS_AFTER", "2")), 0.0)
    except ValueError:
        return 2.0


class StepLine:
    """``"{text}..."`` on stderr once the step has run ``INTERP_PROGRESS_AFTER`` seconds (at once for 0), and
    ``"{text}: done in X s"`` from :meth:`done` if the first line was said; nothing for a shorter step."""

    def __init__(self, text: str, enabled: bool = True):
        self.text, self.said, self.start = text, False, time.perf_counter()
        self._timer = None
        if not lines_wanted(enabled):
            return
        delay = _line_delay()
        if delay == 0:
            self._say()
        else:
            self._timer = threading.Timer(delay, self._say)
            self._timer.daemon = True  # never keeps the interpreter alive
            self._timer.start()

    def _say(self) -> None:
        self.said = True
        print(f"{self.text}...", file=sys.stderr, flush=True)

    def cancel(self) -> None:
        """End the step without its end line (it failed: the error says what happened)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self.said = False

    def __enter__(self):
        return self

    def __exit__(self, exc_type, *_) -> None:
        if exc_type is None:
            self.done()
        else:
            self.cancel()

    def done(self, what: str = "") -> None:
        said = self.said
        self.cancel()  # the timer stops and the end line is said once
        if said:
            extra = f" ({what})" if what else ""
            print(f"{self.text}: done in {time.perf_counter() - self.start:.1f} s{extra}", file=sys.stderr, flush=True)


class _LineBar:
    """What :func:`progress_bar` gives where no bar is drawn: tqdm's surface, a :class:`StepLine` behind it."""

    def __init__(self, iterable=None, desc: str = "working", total=None, initial: int = 0, unit: str = "it", **_):
        self.iterable, self.total, self.n, self.unit = iterable, total, initial, unit
        self.line = StepLine(desc or "working")

    def __iter__(self):
        try:
            for item in self.iterable:
                yield item
                self.n += 1
        finally:  # also when the loop breaks early (the generator is closed)
            self.close()

    def update(self, n: int = 1) -> None:
        self.n += n

    def set_postfix(self, *args, **kwargs) -> None:
        pass

    def set_description(self, desc: str = "", refresh: bool = True) -> None:
        pass

    @staticmethod
    def write(s: str, file=None, end: str = "\n") -> None:
        print(s, file=file or sys.stdout, end=end, flush=True)

    def close(self) -> None:
        self.line.done(f"{self.n:,} {self.unit}" + (f" of {self.total:,}" if self.total else ""))

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def progress_bar(iterable=None, *, enabled: bool = True, **kwargs):
    """``tqdm(iterable, **kwargs)`` where :func:`progress_wanted`; elsewhere, if ``enabled`` and not
    ``INTERP_PROGRESS=0``, a stand-in that says the step (its ``desc``) in a line once it has run 2 s."""
    if not progress_wanted(enabled) and lines_wanted(enabled):
        return _LineBar(iterable, **kwargs)
    from tqdm.auto import tqdm

    return tqdm(iterable, disable=not progress_wanted(enabled), **kwargs)


class PhaseClock:
    """A command's phases, timed: each one still running after 2 s says what it does on stderr (a
    :class:`StepLine`, terminal or log file), and :meth:`table` lists what each spent. With a ``budget`` (seconds from the clock's start),
    :meth:`left` tells the command how much remains to share among the phases still to run.
    """

    def __init__(self, command: str, budget: float | None = None, quiet: bool = False):
        self._now = time.perf_counter
        self.command, self.budget, self.quiet = command, budget, quiet
        self.start = self._now()
        self.rows: list[dict] = []

    def elapsed(self) -> float:
        return self._now() - self.start

    def left(self) -> float | None:
        """Seconds of the budget not yet spent (never negative), or None without a budget."""
        return None if self.budget is None else max(self.budget - self.elapsed(), 0.0)

    def phase(self, name: str, doing: str):
        """``with clock.phase("train", "training 2,000 steps") as row: ...; row["done"] = "1,204 steps"``."""
        @contextlib.contextmanager
        def timed():
            line = StepLine(f"{self.command}: {doing}", enabled=not self.quiet)
            row = {"phase": name, "seconds": 0.0, "done": ""}
            t = self._now()
            try:
                yield row
            except BaseException:
                line.cancel()
                raise
            row["seconds"] = self._now() - t
            self.rows.append(row)
            line.done(row["done"])

        return timed()

    def table(self):
        """``phase, seconds, done`` per phase, then a ``total`` row (its ``done`` names the budget, if any)."""
        import pandas as pd

        total = {"phase": "total", "seconds": self.elapsed(),
                 "done": "" if self.budget is None else f"budget {self.budget:g} s"}
        return pd.DataFrame([*self.rows, total], columns=["phase", "seconds", "done"])
