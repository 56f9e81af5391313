"""One progress bar for every long loop: tqdm on a terminal, nothing in a redirected log.

A bar redrawn ten times a second is what a person at a terminal wants and what a log file (CI, ``nohup``,
``> run.log 2>&1``) does not: there every redraw is another line. So the bar shows only when it is asked for
and stderr is a terminal; ``INTERP_PROGRESS=1`` forces it on, ``INTERP_PROGRESS=0`` off.
"""

from __future__ import annotations

import os
import sys


def progress_wanted(enabled: bool = True) -> bool:
    """Whether a bar asked for (``enabled``) is drawn here."""
    forced = os.environ.get("INTERP_PROGRESS", "").strip()
    if forced in ("0", "1"):
        return enabled and forced == "1"
    stream = sys.stderr
    return bool(enabled and stream is not None and hasattr(stream, "isatty") and stream.isatty())


def progress_bar(iterable=None, *, enabled: bool = True, **kwargs):
    """``tqdm(iterable, **kwargs)``, disabled unless :func:`progress_wanted` (a disabled bar costs nothing)."""
    from tqdm.auto import tqdm

    return tqdm(iterable, disable=not progress_wanted(enabled), **kwargs)
