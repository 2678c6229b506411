"""Text a partner wrote, made inert for a terminal, a log line or a JSON document.

docs/spec.md §12, "Output". A partner chooses many strings this node prints:
its name and endpoint, a document's ``ref``, lines, note, ``user`` and plugin
fields, an ack's ``reason``, the body of an HTTP error it answers with. Printed
raw, a carriage return or an escape sequence rewrites the line it is on ("ack
rejected" becomes a green "ack received"), a newline forges a line of its
own, a direction override makes text read as other text. Every output path
(CLI text and ``--json``, log lines, ``usagi serve``'s activity, tracebacks)
passes such text through :func:`printable`, the one escaping rule:

* escaped: every character of the Unicode categories ``Cc`` (C0 controls with
  tab, newline, carriage return and ESC; DEL; the C1 controls, CSI ``\\x9b``
  among them), ``Cf`` (format characters: direction marks, embeddings,
  overrides and isolates U+202A–202E and U+2066–2069, zero-width space and
  joiners, word joiner, byte order mark, soft hyphen, tag characters: all
  invisible, which is what a spoof needs), ``Zl``/``Zp`` (U+2028/U+2029, a
  line break to some viewers) and ``Cs`` (a lone surrogate, which no encoder
  writes);
* the escape is Python's (``\\x1b``, ``\\r``, ``\\u202e``, ``\\U000e0001``):
  visible, unambiguous, and idempotent (escaped text passes unchanged);
* everything else is kept, so 六角ナット, 株式会社 and the ideographic space
  print as written.

Rich is used only with ``markup=False`` and ``emoji=False`` on ``Text``
objects (see ``usagi_p2p.company.cli.common.table``), so ``[green]…[/]`` and ``:warning:`` a partner
wrote stay text; :func:`printable` does not touch brackets, which are
ordinary characters everywhere else.
"""

from __future__ import annotations

import json
import logging
import sys
import traceback
import unicodedata
from types import TracebackType
from typing import Any, Final

__all__ = ["printable", "is_unsafe", "json_text", "format_exception", "LogFormatter",
           "excepthook"]

#: Unicode categories that never reach an output unescaped.
UNSAFE: Final = frozenset({"Cc", "Cf", "Zl", "Zp", "Cs"})


def is_unsafe(ch: str) -> bool:
    """Whether one character must be escaped before it is printed."""
    return unicodedata.category(ch) in UNSAFE


def _escape(ch: str) -> str:
    return ch.encode("unicode_escape").decode("ascii")


def printable(text: object) -> str:
    """``text`` safe to print on a terminal or in a log line: one line, with
    control, format and line-separator characters as visible escapes
    (``\\x1b``), so text a partner wrote can neither colour, move the cursor,
    reverse its direction, nor forge a line."""
    text = str(text)
    if text.isprintable():  # the fast path: no Other, no Separator but space
        return text
    return "".join(_escape(ch) if unicodedata.category(ch) in UNSAFE else ch for ch in text)


def _json_escape(ch: str) -> str:
    code = ord(ch)
    if code > 0xFFFF:  # a surrogate pair, as JSON spells a character beyond the BMP
        code -= 0x10000
        return f"\\u{0xD800 + (code >> 10):04x}\\u{0xDC00 + (code & 0x3FF):04x}"
    return f"\\u{code:04x}"


def json_text(value: Any, *, indent: int | None = 2) -> str:
    """``value`` as JSON whose every string is exact and whose bytes are inert.

    ``json.dumps`` escapes C0 controls but writes DEL, the C1 controls and
    direction overrides raw when ``ensure_ascii`` is off (kept off so that
    Japanese stays readable). Outside strings a JSON text holds only
    structural characters, spaces and the newlines of ``indent``, so every
    other unsafe character is inside a string and becomes its ``\\uXXXX``
    escape: a script reads the partner's value unchanged, a terminal shows
    nothing it would act on.
    """
    text = json.dumps(value, indent=indent, ensure_ascii=False)
    if all(ch == "\n" or ch.isprintable() for ch in text):
        return text
    return "".join(_json_escape(ch) if ch != "\n" and unicodedata.category(ch) in UNSAFE
                   else ch for ch in text)


def _exception_only(exc: traceback.TracebackException) -> set[str]:
    """The ``Type: message`` parts of an exception and of every one it chains to."""
    seen: set[int] = set()
    parts: set[str] = set()
    todo = [exc]
    while todo:
        current = todo.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        parts.update(current.format_exception_only())
        todo.extend(e for e in (current.__cause__, current.__context__) if e is not None)
        todo.extend(getattr(current, "exceptions", None) or ())
    return parts


def format_exception(exc_info: tuple[type[BaseException] | None, BaseException | None,
                                     TracebackType | None]) -> str:
    """A traceback fit for a log: frames (our source) keep their lines, each
    escaped; an exception's message (which may carry a partner's text) is
    escaped whole, so a newline in it cannot start a line of its own."""
    kind, value, tb = exc_info
    if kind is None or value is None:
        return ""
    exc = traceback.TracebackException(kind, value, tb)
    only = _exception_only(exc)
    out = []
    for chunk in exc.format():
        body = chunk[:-1] if chunk.endswith("\n") else chunk
        if chunk in only:
            out.append(printable(body))
        else:
            out.extend(printable(line) for line in body.split("\n"))
    return "\n".join(out)


class LogFormatter(logging.Formatter):
    """A log record as one line: the message escaped (:func:`printable`)
    whatever its arguments held; a traceback as :func:`format_exception`."""

    def formatMessage(self, record: logging.LogRecord) -> str:  # noqa: N802 (logging's name)
        message = record.message
        record.message = printable(message)
        try:
            return super().formatMessage(record)
        finally:
            record.message = message

    def formatException(self, ei: Any) -> str:  # noqa: N802 (logging's name)
        return format_exception(ei)

    def formatStack(self, stack_info: str) -> str:  # noqa: N802 (logging's name)
        return "\n".join(printable(line) for line in stack_info.split("\n"))


def excepthook(kind: type[BaseException], value: BaseException,
               tb: TracebackType | None) -> None:
    """``sys.excepthook`` for the CLI: an unexpected error's traceback, escaped."""
    sys.stderr.write(format_exception((kind, value, tb)) + "\n")
