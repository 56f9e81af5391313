"""Paths typed by someone we do not trust (a browser user of a shared dashboard), confined to allowed folders.

A server that reads any path its users type serves its own secrets (``/proc/self/environ``, SSH keys) and can
be hung by a FIFO. :func:`confine` lets through only what lies inside an allow-list of root folders, after
every symbolic link and ``..`` is resolved (``os.path.realpath``), and only regular files or folders holding
nothing but regular files and folders (a FIFO, device or socket would block or stream forever). Nothing is
opened: it looks with ``stat`` only.

Every refusal — outside the roots, missing, a FIFO, a link leading out — is the same message, so the answer
never tells a user whether a path exists on the server.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from pathlib import Path

from interp.errors import InterpError

__all__ = ["Confined", "confine", "real_roots"]

# A folder is walked entry by entry before anything in it is read; past this many entries it is refused
# (a walk of a huge tree is itself a way to keep a server busy).
MAX_ENTRIES = 10_000


@dataclass(frozen=True)
class Confined:
    """A path that passed :func:`confine`: its real location, and what a reader will find there."""

    path: Path  # symbolic links and .. resolved
    is_dir: bool
    n_bytes: int  # size of the file, or of every regular file under the folder
    n_files: int


def real_roots(*folders) -> tuple[Path, ...]:
    """The existing folders among ``folders`` (None skipped), symbolic links resolved, without repeats."""
    out: list[Path] = []
    for f in folders:
        if f is None or str(f) == "":
            continue
        real = Path(os.path.realpath(Path(f).expanduser()))
        if real.is_dir() and real not in out:
            out.append(real)
    return tuple(out)


def _inside(real: str, roots: tuple[Path, ...]) -> bool:
    return any(real == str(r) or real.startswith(str(r).rstrip(os.sep) + os.sep) for r in roots)


def _refused(label: str, text: str, where: str) -> InterpError:
    # One message for every refusal: "not allowed" and "not found" must read the same.
    return InterpError(f"{label}: {text!r} is not a file or folder this dashboard may read; it reads only {where} "
                       "(relative paths are looked up there).")


def confine(text: str, roots: tuple[Path, ...], label: str, *, want: str = "any",
            where: str = "files under its data and model folders", max_entries: int = MAX_ENTRIES) -> Confined:
    """``text`` as a :class:`Confined` path inside one of ``roots`` (from :func:`real_roots`), else InterpError.

    A relative path is looked up in each root in turn. ``want``: ``"file"``, ``"dir"`` or ``"any"``. A folder
    is accepted when every entry under it (followed through links, each of which must stay inside the roots)
    is a regular file or folder, and it has at most ``max_entries`` entries. ``where`` describes the roots in
    the message (never their absolute paths)."""
    text = str(text).strip()
    if not text:
        raise InterpError(f"{label}: enter a path ({where}).")
    if "\0" in text or not roots:
        raise _refused(label, text, where)
    candidates = [text] if os.path.isabs(text) else [os.path.join(r, text) for r in roots]
    for cand in candidates:
        real = os.path.realpath(cand)
        if not _inside(real, roots):
            continue
        try:
            mode = os.stat(real).st_mode
        except (OSError, ValueError):
            continue
        if stat.S_ISREG(mode) and want in ("file", "any"):
            return Confined(Path(real), False, os.stat(real).st_size, 1)
        if stat.S_ISDIR(mode) and want in ("dir", "any"):
            n_bytes, n_files = _walk(real, roots, label, text, where, max_entries)
            return Confined(Path(real), True, n_bytes, n_files)
    raise _refused(label, text, where)


def _walk(folder: str, roots, label: str, text: str, where: str, max_entries: int) -> tuple[int, int]:
    """(bytes, regular files) under ``folder``; refuse the whole folder for one entry that is not a regular file
    or folder inside the roots. Links to folders are followed once (a loop is visited once)."""
    seen, todo, n_bytes, n_files, n_entries = {folder}, [folder], 0, 0, 0
    while todo:
        try:
            entries = list(os.scandir(todo.pop()))
        except OSError:
            raise _refused(label, text, where) from None
        for e in entries:
            n_entries += 1
            if n_entries > max_entries:
                raise InterpError(f"{label}: {text!r} holds more than {max_entries:,} files and folders; give a "
                                  "smaller folder.")
            real = os.path.realpath(e.path)
            if not _inside(real, roots):
                raise _refused(label, text, where)
            try:
                st = os.stat(real)
            except OSError:
                raise _refused(label, text, where) from None
            if stat.S_ISREG(st.st_mode):
                n_bytes, n_files = n_bytes + st.st_size, n_files + 1
            elif stat.S_ISDIR(st.st_mode):
                if real not in seen:
                    seen.add(real)
                    todo.append(real)
            else:  # FIFO, device, socket: reading it would block or never end
                raise _refused(label, text, where)
    return n_bytes, n_files
