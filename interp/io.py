"""Safe file writes: a reader never sees a half-written file, Ctrl-C leaves the old one intact, and the path a
user named keeps being what it was.

* A regular file (or a new name) is written to a temporary file beside it and renamed over it in one step.
* A symbolic link is written *through*: its final target is replaced atomically and the link stays a link
  (replacing the link itself would leave the file it points at stale).
* ``-`` means standard output; ``/dev/stdout``, ``/dev/fd/N`` and ``/proc/self/fd/N`` name a stream this process
  already holds, and an existing FIFO or character device (a named pipe, ``/dev/null``, a terminal) is written
  to directly — renaming over it would replace the device node with a regular file. Nothing else is written in
  place: a regular file under ``/dev/shm`` or ``/proc`` is a file like any other (atomic, ``--force`` to
  replace). A FIFO nobody reads is refused at once instead of blocking forever.
* Anything else (a folder, a socket, a folder we may not write into, a name too long for the file system)
  fails with one clear :class:`InterpError`.

Inputs: :func:`check_input_path` admits only regular files and folders (never a FIFO, device or socket, which
would block or stream forever), with the same one-line errors for a missing path, a symbolic-link loop or a
name too long.
"""

from __future__ import annotations

import errno
import os
import re
import stat
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from interp.errors import InterpError

STDOUT = "-"


# names of a stream this process already holds (its standard streams, its open descriptors): written through
_FD_NAMES = re.compile(r"^/(dev/(stdout|stderr|fd/\d+)|proc/(self|thread-self|\d+)/fd/\d+)$")


def path_stat(path: str | Path, flag: str = "path", follow: bool = True) -> os.stat_result | None:
    """``os.stat`` (``lstat`` with ``follow=False``) of ``path``, None when nothing is there; a name too long
    for the file system, a symbolic-link loop or a path through a non-folder is one clear :class:`InterpError`."""
    try:
        return os.stat(path) if follow else os.lstat(path)
    except FileNotFoundError:  # (also a dangling link's target: it does not exist yet)
        return None
    except OSError as e:
        reason = {errno.ENAMETOOLONG: "the name is too long for the file system",
                  errno.ELOOP: "it is a loop of symbolic links",
                  errno.ENOTDIR: "a part of the path is a file, not a folder",
                  errno.EACCES: "permission denied"}.get(e.errno, e.strerror or str(e))
        raise InterpError(f"{flag}: cannot use {_short(path)} ({reason}); give another path.") from None


def _short(path: str | Path, limit: int = 80) -> str:
    """``repr`` of a path, shortened in the middle: a 300-character name should not fill the terminal."""
    s = str(path)
    return repr(s if len(s) <= limit else f"{s[:40]}...{s[-30:]}")


def _kind(mode: int) -> str:
    for test, name in ((stat.S_ISDIR, "a folder"), (stat.S_ISREG, "a file"), (stat.S_ISFIFO, "a FIFO (named pipe)"),
                       (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
                       (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return name
    return "a special file"


def is_stream(path: str | Path) -> bool:
    """True for ``-`` (stdout), for a name of a descriptor this process holds (``/dev/stdout``, ``/dev/fd/N``,
    ``/proc/self/fd/N``) and for an existing FIFO or character device: written in place, never renamed over.
    A regular file is never a stream, wherever it lives (``/dev/shm/x.html`` is written atomically)."""
    if str(path) == STDOUT:
        return True
    if _FD_NAMES.match(os.path.abspath(Path(path).expanduser())):
        # /dev/stdout -> /proc/self/fd/1 names the shell's redirection even when it is a regular file: replacing
        # that file would lose what the shell already wrote there, so the descriptor is written through
        return os.path.exists(path)
    try:
        mode = os.stat(path).st_mode
    except (OSError, ValueError):
        return False
    return stat.S_ISFIFO(mode) or stat.S_ISCHR(mode)


def check_input_path(path: str | Path, flag: str = "path", folder: bool = True) -> Path:
    """``path`` as a :class:`Path` if it is a regular file (or, with ``folder``, a folder); otherwise one line
    naming ``flag``: missing, a FIFO, device or socket (reading one blocks or never ends), a link loop, a name
    too long. Links are followed. The one gate for every file a user names as input."""
    p = Path(path).expanduser()
    st = path_stat(p, flag)
    if st is None:
        raise InterpError(f"{flag}: no such file or folder {_short(path)}.")
    if stat.S_ISREG(st.st_mode) or (folder and stat.S_ISDIR(st.st_mode)):
        return p
    want = "a regular file or a folder" if folder else "a regular file"
    raise InterpError(f"{flag}: {_short(path)} is {_kind(st.st_mode)}, not {want}; give {want}.")


def open_stream(path: str | Path, flag: str = "path"):
    """A binary file object appending to the stream ``path`` (see :func:`is_stream`). A FIFO is opened without
    blocking: with no process reading it, opening would wait forever, so that is refused in one line."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_NONBLOCK)  # O_TRUNC means nothing on a pipe
    except OSError as e:
        if e.errno == errno.ENXIO:
            raise InterpError(f"{flag}: {_short(path)} is a pipe no process is reading; start the reader "
                              "first (e.g. `cat PIPE &`) or give a file name.") from None
        raise InterpError(f"{flag}: cannot write to {_short(path)} ({e.strerror or e}).") from None
    os.set_blocking(fd, True)  # a reader is there: a full pipe now waits for it, as a pipe should
    return os.fdopen(fd, "ab")


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
        fd, probe = tempfile.mkstemp(prefix=f".{dest.name[:64]}.", suffix=".probe", dir=folder)
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
    st = path_stat(dest, flag)
    if st is not None and not stat.S_ISREG(st.st_mode):  # a folder, FIFO or device is never renamed over
        raise InterpError(f"{flag}: {_short(path)} is {_kind(st.st_mode)}, not a file; give a file name.")
    if len(dest.name.encode()) > 255:
        raise InterpError(f"{flag}: cannot write {_short(path)} (the name is too long for the file system); "
                          "give a shorter name.")
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{dest.name[:64]}.", suffix=".tmp", dir=dest.parent)
    except OSError as e:
        raise InterpError(f"{flag}: cannot write {str(path)!r} ({e.strerror or e}); "
                          "choose a folder you can write to.") from None
    os.close(fd)
    if st is not None:  # keep the permissions the user gave the file
        mode = stat.S_IMODE(st.st_mode)
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
            with open_stream(path, flag) as f:
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
    st = path_stat(p, flag)
    if st is not None and stat.S_ISDIR(st.st_mode):
        raise InterpError(f"{flag}: {_short(path)} is a folder; give a file name.")
    if st is not None and not stat.S_ISREG(st.st_mode):  # a socket or block device: never replaced by a file
        raise InterpError(f"{flag}: {_short(path)} is {_kind(st.st_mode)}; give a file name.")
    if (st is not None or path_stat(p, flag, follow=False) is not None) and not force:
        raise InterpError(f"{flag}: {_short(path)} already exists; pass --force to overwrite it.")
    check_folder_writable(p, flag)
    return p


def check_output_folder(path: str | Path, flag: str = "--out") -> Path:
    """Fail early (before any work) unless ``path`` is an existing folder or a name under which one can be
    created: not an existing file, FIFO or device, not a name too long, inside a folder we can write to."""
    p = Path(path).expanduser()
    st = path_stat(p, flag)
    if st is not None:
        if not stat.S_ISDIR(st.st_mode):
            raise InterpError(f"{flag}: {_short(path)} is {_kind(st.st_mode)}; this command writes a folder there "
                              "(give a new name or an existing folder).")
        return p
    if len(p.name.encode()) > 255:  # checked here: the missing folder would only fail when first written
        raise InterpError(f"{flag}: cannot use {_short(path)} (the name is too long for the file system); "
                          "give another path.")
    parent = p.absolute().parent
    while path_stat(parent, flag) is None and parent != parent.parent:  # the nearest folder that exists
        parent = parent.parent
    check_folder_writable(parent / p.name, flag)
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
