"""File names as written in the results: valid UTF-8 on one line, whatever the file system holds.

A POSIX name is bytes. One that is not valid UTF-8 reaches Python with surrogate escapes, which no UTF-8
file can hold; one with a carriage return or a newline would split a CSV row for many readers. Such
names are written with Python's escapes (``\\xff``, ``\\r``, ``\\n``, ``\\t``): the same name always gives
the same text, so ``--resume`` and ``merge`` find their rows again, and the file stays findable. Names
that are valid UTF-8 without control characters (nearly all) are written unchanged.
"""

from __future__ import annotations

_ESCAPES = {"\r": "\\r", "\n": "\\n", "\t": "\\t"}


def has_undecodable_bytes(text: str) -> bool:
    """Whether ``text`` holds bytes that were not valid UTF-8 (as surrogate escapes), which no UTF-8
    file can hold."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def printable_name(name: str) -> str:
    """``name`` (as os.fsdecode gives it) as one line of valid UTF-8."""
    if name.isprintable() and not has_undecodable_bytes(name):
        return name
    text = name.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    return "".join(_ESCAPES.get(c, f"\\x{ord(c):02x}") if _is_control(c) else c for c in text)


def _is_control(char: str) -> bool:
    code = ord(char)
    return code < 0x20 or 0x7F <= code < 0xA0
