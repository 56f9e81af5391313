"""Safe file writes: a reader never sees a half-written file, Ctrl-C leaves the old one intact, and the path a
user named keeps being what it was.

* A regular file (or a new name) is written to a temporary file beside it and renamed over it in one step.
* A symbolic link is written *through*: its final target is replaced atomically and the link stays a link
  (replacing the link itself would leave the file it points at stale).
* ``-`` means standard output; an existing FIFO, character device or socket (``/dev/stdout``, a named pipe)
  is written to directly — renaming over it would replace the device node with a regular file.
* Anything else (a folder, a folder we may not write into) fails with one clear :class:`InterpError`.
"""

from __future__ import annotations

import os
import stat
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from interp.errors import InterpError

STDOUT = "-"


def is_stream(path: str | Path) -> bool:
    """True for ``-`` (stdout) and for an existing FIFO, character device or socket: written in place."""
    if str(path) == STDOUT:
        return True
    if os.path.abspath(Path(path).expanduser()).startswith(("/dev/", "/proc/")):
        # /dev/stdout, /dev/fd/N, /proc/self/fd/N name a process's stream even when it is redirected into a
        # regular file: replacing that file would lose what the shell already wrote there
        return os.path.exists(path)
    try:
        mode = os.stat(path).st_mode  # follows links: /dev/stdout -> /proc/self/fd/1 -> a pipe or tty
    except OSError:
        return False
    return stat.S_ISFIFO(mode) or stat.S_ISCHR(mode) or stat.S_ISSOCK(mode)


def real_destination(path: str | Path) -> Path:
    """Where bytes written to ``path`` end up: symbolic links followed (even a dangling one's target)."""
    return Path(os.path.realpath(Path(path).expanduser()))


def check_folder_writable(path: str | Path, flag: str = "path") -> Path:
    """Fail now, with the reason, if a file cannot be created beside ``path`` (after following links).

    A real probe (create and delete a temporary file) rather than ``os.access``: root passes access checks
    on read-only mounts and pseudo file systems such as /proc, where creating a file still fails."""
    dest = real_destination(path)
    folder = dest.parent
    if not folder.is_dir():
        raise InterpError(f"{flag}: folder {str(folder)!r} does not exist; create it or choose another path.")
    try:
        fd, probe = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".probe", dir=folder)
    except OSError as e:
        raise InterpError(f"{flag}: cannot create files in {str(folder)!r} ({e.strerror or e}); "
                          "choose a folder you can write to.") from None
    os.close(fd)
    os.unlink(probe)
    return dest


@contextmanager
def atomic_path(path: str | Path, flag: str = "path") -> Iterator[Path]:
    """Yield a temporary path beside ``path``'s real destination; on success it replaces that file in one
    rename. A symbolic link stays a link. Streams and folders are refused here: use :func:`atomic_write_bytes`
    for something that may be stdout or a pipe."""
    dest = real_destination(path)
    if dest.is_dir():
        raise InterpError(f"{flag}: {str(path)!r} is a folder; give a file name.")
    if is_stream(dest):
        raise InterpError(f"{flag}: {str(path)!r} is a pipe or device, not a file; give a file name.")
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent)
    except OSError as e:
        raise InterpError(f"{flag}: cannot write {str(path)!r} ({e.strerror or e}); "
                          "choose a folder you can write to.") from None
    os.close(fd)
    if dest.exists():  # keep the permissions the user gave the file
        mode = stat.S_IMODE(dest.stat().st_mode)
    else:  # mkstemp makes 0600; a new file should get the usual permissions
        umask = os.umask(0)
        os.umask(umask)
        mode = 0o666 & ~umask
    os.chmod(tmp, mode)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.replace(tmp_path, dest)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def atomic_write_bytes(path: str | Path, data: bytes, flag: str = "path") -> None:
    """Write ``data`` to ``path``: atomically for files (through links), in place for stdout (``-``) and pipes."""
    if str(path) == STDOUT:
        sys.stdout.flush()
        sys.stdout.buffer.write(data)
        sys.stdout.buffer.flush()
        return
    if is_stream(path):
        try:
            with open(path, "ab") as f:  # append: O_TRUNC means nothing on a pipe and is refused on some ttys
                f.write(data)
        except OSError as e:
            raise InterpError(f"{flag}: writing to {str(path)!r} failed ({e.strerror or e}).") from None
        return
    with atomic_path(path, flag) as tmp:
        tmp.write_bytes(data)


def atomic_write_text(path: str | Path, text: str, flag: str = "path") -> None:
    atomic_write_bytes(path, text.encode("utf-8"), flag)


def fresh_path(folder: str | Path, stem: str, suffix: str = ".json") -> Path:
    """A name in ``folder`` that does not exist yet: ``stem-YYYYmmdd-HHMMSS{suffix}`` (``-2``, ``-3`` … if
    taken), so a rerun of a benchmark never replaces a result somebody kept, committed or quoted."""
    from datetime import datetime, timezone

    folder = Path(folder)
    base = f"{stem}-{datetime.now(timezone.utc):%Y%m%d-%H%M%S}"
    candidate, n = folder / f"{base}{suffix}", 1
    while candidate.exists():
        n += 1
        candidate = folder / f"{base}-{n}{suffix}"
    return candidate


def check_writable(path: str | Path, force: bool = False, flag: str = "--out") -> Path:
    """Fail early (before minutes of analysis) if ``path`` cannot be written: it exists and ``force`` is off,
    it is a folder, or its folder does not exist or refuses new files."""
    if str(path) == STDOUT or is_stream(path):
        return Path(path)
    p = Path(path).expanduser()
    if p.is_dir():
        raise InterpError(f"{flag}: {str(path)!r} is a folder; give a file name.")
    if (p.exists() or p.is_symlink()) and not force:
        raise InterpError(f"{flag}: {str(path)!r} already exists; pass --force to overwrite it.")
    check_folder_writable(p, flag)
    return p


def write_text(path: str | Path, text: str, force: bool = False, flag: str = "--out") -> Path:
    """Write ``text`` atomically (temporary file, then one rename: Ctrl-C never leaves half a file)."""
    p = check_writable(path, force, flag)
    atomic_write_text(str(path) if str(path) == STDOUT else p, text, flag)
    return p


def write_bytes(path: str | Path, data: bytes, force: bool = False, flag: str = "--out") -> Path:
    p = check_writable(path, force, flag)
    atomic_write_bytes(str(path) if str(path) == STDOUT else p, data, flag)
    return p


def write_benchmark_json(data: dict, out: str | Path | None, stem: str, force: bool = False) -> Path:
    """A benchmark's JSON result: to ``out`` (never over an existing file without ``force``), or by default to a
    new timestamped file in benchmarks/results/ — the tracked results there are data somebody quoted."""
    import json

    if out is None:
        out = fresh_path(Path(__file__).resolve().parents[1] / "benchmarks" / "results", stem)
    if not is_stream(out):
        Path(out).expanduser().parent.mkdir(parents=True, exist_ok=True)
    return write_text(out, json.dumps(data, indent=1) + "\n", force=force)


def read_json(path: str | Path) -> dict:
    """A JSON object from ``path``, or one clear error naming the file and what is wrong with it."""
    import json

    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise InterpError(f"{path}: cannot read it ({getattr(e, 'strerror', None) or e}).") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise InterpError(f"{path}: not valid JSON ({e.msg} at line {e.lineno}, column {e.colno}); "
                          "fix the file or write it again (model.save(folder)).") from None
    if not isinstance(data, dict):
        raise InterpError(f"{path}: expected a JSON object {{...}}, found {type(data).__name__}.")
    return data
