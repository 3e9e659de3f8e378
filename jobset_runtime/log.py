"""One line per event, prefixed with the pod and rank; JSON for log pipelines."""

from __future__ import annotations

import logging
import os
import re
import sys
import time

from . import contract

FORMATS = ("text", "json")
MAX_LINE = 16 * 1024  # characters of one logged message

# Line breaks and other control characters (C0, DEL, C1, and Unicode's own line and paragraph
# separators): what could end a line early or forge one in a log or termination message.
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")
_ESCAPES = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def one_line(text, limit: int | None = None) -> str:
    """Any text or bytes in, one line of valid UTF-8 out: bytes that are not UTF-8 (and the
    surrogates Python decodes them to in argv and paths) become \\xNN, control characters
    \\n, \\r, \\t or \\xNN / \\uNNNN; longer than `limit` characters, cut with a trailing "...".
    For causes and messages that came from elsewhere (a peer, a child, a command line)."""
    if isinstance(text, str):
        try:
            text = text.encode("utf-8", "surrogateescape")
        except UnicodeEncodeError:  # surrogates that do not stand for bytes
            text = text.encode("utf-8", "backslashreplace")
    elif not isinstance(text, (bytes, bytearray)):
        text = str(text).encode("utf-8", "backslashreplace")
    out = _CONTROL.sub(_escape, bytes(text).decode("utf-8", "backslashreplace"))
    if limit is not None and len(out) > limit:
        out = out[: max(0, limit - 3)] + "..."
    return out


def _escape(m: re.Match) -> str:
    c = m.group()
    return _ESCAPES.get(c) or (f"\\x{ord(c):02x}" if ord(c) < 0x100 else f"\\u{ord(c):04x}")


class _Formatter(logging.Formatter):
    def __init__(self, fmt: str, program: str):
        super().__init__()
        self.fmt, self.program, self.pod, self.rank = fmt, program, None, None

    def format(self, record: logging.LogRecord) -> str:
        # One event, one line, whatever the message carries (a peer's cause, a path).
        msg = one_line(record.getMessage(), MAX_LINE)
        if record.exc_info:
            msg += "\n" + self.formatException(record.exc_info)
        if self.fmt == "json":
            import json  # only for this format: every wrapper start imports this module

            return json.dumps({
                "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
                "level": record.levelname.lower(),
                "program": self.program,
                "pod": self.pod,
                "rank": self.rank,
                "logger": record.name,
                "message": msg,
            })
        where = self.pod or ""
        if self.rank is not None:
            where += f" rank {self.rank}"
        prefix = f"{self.program}[{where}]" if where else self.program
        level = "" if record.levelno == logging.INFO else f"{record.levelname.lower()}: "
        return f"{prefix} {level}{msg}"


_formatter: _Formatter | None = None


def setup(program: str, fmt: str | None = None, level: str = "INFO") -> None:
    global _formatter
    fmt = fmt or os.environ.get(contract.LOG_FORMAT_ENV) or "text"
    if fmt not in FORMATS:
        fmt = "text"
    _formatter = _Formatter(fmt, program)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_formatter)
    root = logging.getLogger("jobset_runtime")
    root.handlers[:] = [handler]
    root.setLevel(level)
    root.propagate = False


def set_pod(pod: str | None, rank: int | None) -> None:
    """Once the identity is known, every line names the pod and rank."""
    if _formatter is not None:
        _formatter.pod, _formatter.rank = pod, rank
