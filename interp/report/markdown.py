"""Text that came from users or models (prompts, tokens, model names, paths) placed in Markdown safely.

A Markdown reader renders raw HTML, so a prompt must never end its code block and go on as markup: a fence
or code span is made longer than any run of backticks inside it (CommonMark closes a fence only on a run at
least as long), and plain text has ``& < >`` escaped and link brackets neutralised.
"""

from __future__ import annotations

import html
import re

__all__ = ["md_code", "md_fence", "md_text"]


def _longest_backtick_run(s: str) -> int:
    return max((len(m) for m in re.findall(r"`+", s)), default=0)


def md_fence(text: str, info: str = "text") -> str:
    """``text`` as a fenced code block that no line of it can close."""
    fence = "`" * max(3, _longest_backtick_run(text) + 1)
    return f"{fence}{info}\n{text}\n{fence}"


def md_code(s: str) -> str:
    """``s`` as an inline code span that no backtick in it can close (padded, so one at an edge stays inside)."""
    s = str(s)
    if "`" not in s:
        return f"`{s}`"
    run = "`" * (_longest_backtick_run(s) + 1)
    return f"{run} {s} {run}"


def md_text(s) -> str:
    """``s`` as literal Markdown text: no HTML element, no link (``[..](..)``), no emphasis it did not ask for."""
    s = html.escape(str(s), quote=False)
    return re.sub(r"([\\`*_\[\]|])", r"\\\1", s)
