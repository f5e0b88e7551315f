"""How file names and other untrusted text are shown on a terminal: one line each, never raw control bytes.

Linux file names are bytes: they may be invalid UTF-8 (Python carries those bytes as surrogate escapes) and may
contain newlines, tabs or escape sequences. Like a file manager (GLib's display names, `ls` on a terminal), a name
is shown with U+FFFD in place of each undecodable byte and with control characters escaped, while the program keeps
the exact name for opening the file. Machine-readable outputs (paths files, CSV) keep the exact bytes instead.
"""

from __future__ import annotations

import os

_ESCAPES = {"\n": "\\n", "\r": "\\r", "\t": "\\t", "\\": "\\\\"}


def shown(text: str | os.PathLike) -> str:
    """``text`` as a printable single line: undecodable bytes as U+FFFD, control characters as \\n, \\t, \\x1b...

    A backslash is doubled only when the text needs escaping, so ordinary Windows paths print unchanged.
    """
    value = os.fspath(text)
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    elif _has_surrogates(value):
        try:
            raw = value.encode("utf-8", "surrogateescape")
        except UnicodeEncodeError:  # a surrogate that no file name's bytes decode to
            raw = value.encode("utf-8", "replace")
        value = raw.decode("utf-8", "replace")
    if value.isprintable():
        return value
    return "".join(_escape(ch) for ch in value)


def _has_surrogates(value: str) -> bool:
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def _escape(ch: str) -> str:
    if ch in _ESCAPES:
        return _ESCAPES[ch]
    if ch.isprintable():
        return ch
    code = ord(ch)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}"
