"""What every benchmark records about the machine it ran on, and how it times two contenders fairly.

A timing taken while other work shares the cores is not a figure a reader can reproduce (issue 25: the
published patching speed-ups came from a 2-core machine at load 13-14). So each benchmark

* records the CPU, the core count and the 1/5/15-minute load averages **before and after** it runs, and marks
  its result ``contended`` when the machine was busy (see :func:`is_contended`), and
* times contenders **interleaved** (A, B, A, B, ...) and reports the median of each, so a burst of outside load
  falls on both rather than on whichever ran second.

Nothing here imports torch: ``run_all.py`` uses it before any benchmark starts.
"""

from __future__ import annotations

import os
import platform
import statistics
import time
from collections.abc import Callable


def cpu_model() -> str:
    """The CPU's marketing name from /proc/cpuinfo (Linux), else what ``platform`` knows."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def usable_cpus() -> int:
    """Cores this process may run on (the affinity mask, which containers set), not the host's count."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def machine_state() -> dict:
    """A snapshot: load averages (1, 5, 15 min), usable cores and the CPU's name."""
    try:
        load = [round(x, 2) for x in os.getloadavg()]
    except OSError:  # not available on this platform
        load = None
    return {"loadavg": load, "cpus": usable_cpus(), "cpu": cpu_model(), "time": time.time()}


def is_contended(before: dict, after: dict, own_threads: int | None = None) -> bool:
    """Was the machine busy with other work while the benchmark ran?

    Before the run nothing of ours is running, so a 1-minute load above half the cores means someone else is.
    During the run our own threads add up to ``own_threads`` (default: every core) to the load, so afterwards
    anything more than one extra core's worth on top of that is somebody else's work. Either marks the result.
    """
    if before.get("loadavg") is None or after.get("loadavg") is None:
        return False
    cpus = before["cpus"]
    own = cpus if own_threads is None else own_threads
    return before["loadavg"][0] > 0.5 * cpus or after["loadavg"][0] > own + 1.0


def contention_record(before: dict, after: dict) -> dict:
    """The fields every benchmark JSON carries: machine before/after and the verdict."""
    return {"machine_before": before, "machine_after": after, "contended": is_contended(before, after)}


def interleaved(contenders: dict[str, Callable[[], object]], repeats: int,
                sync: Callable[[], None] | None = None) -> tuple[dict[str, float], dict[str, list[float]],
                                                                  dict[str, object]]:
    """Run each contender ``repeats`` times, interleaved, and return (median seconds, every sample, last output).

    Interleaving (A, B, A, B ...) rather than (A, A, B, B) spreads any change in background load over both
    contenders, and the median discards the odd slow run either way.
    """
    if repeats < 1:
        raise ValueError(f"repeats must be at least 1, given {repeats}")
    samples: dict[str, list[float]] = {name: [] for name in contenders}
    outputs: dict[str, object] = {}
    for _ in range(repeats):
        for name, fn in contenders.items():
            if sync:
                sync()
            t = time.perf_counter()
            outputs[name] = fn()
            if sync:
                sync()
            samples[name].append(time.perf_counter() - t)
    return {name: statistics.median(s) for name, s in samples.items()}, samples, outputs


def contention_note(result: dict) -> str:
    """One line for a table's caption: where, how loaded, and the verdict."""
    b, a = result.get("machine_before") or {}, result.get("machine_after") or {}
    lb = (b.get("loadavg") or ["?"])[0]
    la = (a.get("loadavg") or ["?"])[0]
    verdict = "**contended** (other work shared the cores: ratios hold roughly, absolute times do not)" \
        if result.get("contended") else "quiet"
    return f"{b.get('cpu', '?')}, {b.get('cpus', '?')} cores; load average {lb} before, {la} after: {verdict}"
