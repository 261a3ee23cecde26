"""Finding markers in streamed text, and how much of its end could be the start of one."""

from __future__ import annotations

from collections.abc import Iterable


def find_first(text: str, markers: Iterable[str], start: int = 0) -> tuple[int, str]:
    """(index, marker) of the earliest marker in ``text[start:]`` (the longest on a tie), or (-1, "")."""
    best, found = -1, ""
    for marker in markers:
        index = text.find(marker, start) if marker else -1
        if index >= 0 and (best < 0 or index < best or (index == best and len(marker) > len(found))):
            best, found = index, marker
    return best, found


def locate(text: str, markers: Iterable[str], final: bool = False) -> tuple[int, str, int]:
    """(index, marker, 0) of the earliest marker in ``text``, or (-1, "", hold) with ``hold`` the
    length of the end of ``text`` to keep back (a partial marker, or a marker that a longer
    one starting with it may still extend)."""
    markers = tuple(markers)
    index, marker = find_first(text, markers)
    if index < 0:
        return -1, "", 0 if final else partial_suffix(text, markers)
    rest = text[index:]
    if not final and any(len(m) > len(rest) and m.startswith(rest) for m in markers):
        return -1, "", len(rest)
    return index, marker, 0


def partial_suffix(text: str, markers: Iterable[str]) -> int:
    """Length of the longest end of ``text`` that is a proper prefix of some marker: the text a
    stream must hold back because the next piece may complete a marker."""
    longest = 0
    for marker in markers:
        for size in range(min(len(marker) - 1, len(text)), longest, -1):
            if text.endswith(marker[:size]):
                longest = size
                break
    return longest


def split_marker(text: str, marker: str, start: int = 0, final: bool = False) -> tuple[int, int]:
    """Where ``marker`` is in ``text[start:]``: (its index, index past it); (-1, safe) when absent,
    ``safe`` being where a partial marker at the end begins (the end of text when ``final``)."""
    index = text.find(marker, start)
    if index >= 0:
        return index, index + len(marker)
    hold = 0 if final else partial_suffix(text[start:], (marker,))
    return -1, len(text) - hold


def could_start(text: str, prefix: str) -> bool:
    """Whether ``text`` and ``prefix`` agree so far (one is a prefix of the other)."""
    return text.startswith(prefix) or prefix.startswith(text)
