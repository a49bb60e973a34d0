"""An exception as one line for messages, alerts and the audit log: database and HTTP errors
run to many lines (hints, context, the query), and the first is the one that says what failed."""

from __future__ import annotations


def first_line(e: BaseException, width: int | None = None) -> str:
    """The first line of the error's text, cut at `width`; its type name when it has no text."""
    return (str(e).strip().splitlines() or [""])[0][:width] or type(e).__name__


def typed_first_line(e: BaseException) -> str:
    """`Type: first line`, for messages where the kind of failure is news (timeout, refused)."""
    line = (str(e).strip().splitlines() or [""])[0]
    return f"{type(e).__name__}: {line}" if line else type(e).__name__
