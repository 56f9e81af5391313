"""What every benchmark records about the machine it ran on, and how it times two contenders fairly.

A timing taken while other work shares the cores is not a figure a reader can reproduce (issue 25: the
published patching speed-ups came from a 2-core machine at load 13-14). So each benchmark

* records the CPU, the core count, the 1/5/15-minute load averages and the machine's and its own CPU seconds
  **before and after** it runs, and marks its result ``contended`` when other work used the cores meanwhile
  (see :func:`is_contended`), and
* times contenders **interleaved** (A, B, A, B, ...) and reports the median of each, so a burst of outside load
  falls on both rather than on whichever ran second.

Nothing here imports torch: ``run_all.py`` uses it before any benchmark starts.
"""

from __future__ import annotations

import os
import platform
import resource
import statistics
import threading
import time
from collections.abc import Callable
from typing import Self


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
    """A snapshot: load averages (1, 5, 15 min), usable cores, the CPU's name, and two CPU-second counters.

    ``cpu_busy_s`` is the non-idle CPU time of the whole machine since boot (``/proc/stat``), ``own_cpu_s`` this
    process's and its waited-for children's (``getrusage``). Their differences between two snapshots tell how
    much of the machine's work in between was somebody else's (:func:`others_busy_cores`).
    """
    try:
        load = [round(x, 2) for x in os.getloadavg()]
    except OSError:  # not available on this platform
        load = None
    own = sum(getattr(resource.getrusage(who), f) for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)
              for f in ("ru_utime", "ru_stime"))
    return {"loadavg": load, "cpus": usable_cpus(), "cpu": cpu_model(), "time": time.time(),
            "cpu_busy_s": _machine_busy_seconds(), "own_cpu_s": round(own, 3)}


def _machine_busy_seconds() -> float | None:
    """Non-idle CPU seconds of every core since boot, from /proc/stat's first line; None where there is none."""
    try:
        with open("/proc/stat") as f:
            fields = [int(x) for x in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    # user nice system idle iowait irq softirq steal ...: idle and iowait are the idle ones; guest time is
    # already inside user/nice, so only the first eight count
    busy = sum(fields[:8]) - fields[3] - (fields[4] if len(fields) > 4 else 0)
    return round(busy / os.sysconf("SC_CLK_TCK"), 3)



class SessionCPU:
    """CPU seconds used by every process of one session (``os.setsid``), sampled from /proc while it runs.

    A benchmark that starts a browser does not wait for all of the browser's processes (Chromium's zygote
    children are reaped by init), so their CPU time never reaches our ``getrusage``: without this, a quiet
    run that drives Chromium would look like somebody else's load. Processes keep the session of the one
    ``run_all`` starts with ``start_new_session=True``, so whatever carries that session id is ours. A process
    that lives less than one sampling interval is missed (counted as others': the error is on the careful side).
    """

    def __init__(self, sid: int, interval: float = 0.25):
        self.sid, self.interval = sid, interval
        self.seen: dict[int, float] = {}  # pid -> its last-read utime+stime (seconds)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._tick = os.sysconf("SC_CLK_TCK")

    def _sample(self) -> None:
        for entry in os.scandir("/proc"):
            if not entry.name.isdigit():
                continue
            try:
                with open(f"/proc/{entry.name}/stat") as f:
                    # the name (field 2) may hold spaces: fields after its closing parenthesis are fixed
                    rest = f.read().rsplit(")", 1)[1].split()
            except (OSError, IndexError):
                continue
            if int(rest[3]) == self.sid:  # rest[3] is field 6, the session id; utime/stime are fields 14/15
                self.seen[int(entry.name)] = (int(rest[11]) + int(rest[12])) / self._tick

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self._sample()

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    @property
    def seconds(self) -> float:
        return sum(self.seen.values())


def others_busy_cores(before: dict, after: dict) -> float | None:
    """Cores' worth of CPU that *other* processes used on average between two snapshots (None if unknown).

    The machine's busy seconds minus this process's (and its children's) over the wall time between the two: a
    load average lags by a minute, so it blames a benchmark for the one that ran just before it; this does not.
    """
    keys = ("cpu_busy_s", "own_cpu_s", "time")
    if any(before.get(k) is None or after.get(k) is None for k in keys):
        return None
    wall = after["time"] - before["time"]
    if wall <= 0:
        return None
    others = (after["cpu_busy_s"] - before["cpu_busy_s"]) - (after["own_cpu_s"] - before["own_cpu_s"])
    return max(0.0, others / wall)


# other processes may use this many cores' worth on average and the run still counts as quiet (a shell, the
# kernel's own threads); a second job running flat out on a core is four times more
OTHERS_QUIET_CORES = 0.25


def is_contended(before: dict, after: dict, own_threads: int | None = None) -> bool:
    """Was the machine busy with other work while the benchmark ran?

    Where both snapshots carry CPU counters: did other processes use more than ``OTHERS_QUIET_CORES`` cores on
    average in between. Otherwise (older records, no /proc) the load averages decide: before the run a 1-minute
    load above half the cores means someone else is busy, and afterwards anything more than one extra core's
    worth on top of our own ``own_threads`` (default: every core).
    """
    others = others_busy_cores(before, after)
    if others is not None:
        return others > OTHERS_QUIET_CORES
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
    others = others_busy_cores(b, a)
    others = "" if others is None else f"; other processes used {others:.2f} cores on average"
    return (f"{b.get('cpu', '?')}, {b.get('cpus', '?')} cores; load average {lb} before, {la} after{others}: "
            f"{verdict}")
