"""Queued audit lines that are not one offered record (loss events, the service's own notes).

Apart from writer.py so that writer.py holds no subclass of a builtin type: a ``str`` subclass
cannot be compiled by mypyc (``make compiled``), and this module stays Python either way.
"""

from __future__ import annotations

Counts = tuple[int, int]


class _Line(str):
    """A queued line that is not one offered record: ``acc`` is what it accounts for."""

    acc: Counts = (0, 0)


def accounting_line(body: str, allowed: int = 0, denied: int = 0) -> str:
    """``body`` to queue as a line that stands for (allowed, denied) offered records (a loss
    event: its counts; a note of the service's own: none) instead of one."""
    line = _Line(body)
    line.acc = (allowed, denied)
    return line


def weigh(items: list[tuple[bool, str]]) -> Counts:
    """The offered records ``items`` account for once written (see shared.py)."""
    a = d = 0
    for allowed, body in items:
        if body.__class__ is str:
            if allowed:
                a += 1
            else:
                d += 1
        else:
            acc = body.acc  # type: ignore[attr-defined]
            a += acc[0]
            d += acc[1]
    return a, d
