"""One line per event, prefixed with the pod and rank; JSON for log pipelines."""

from __future__ import annotations

import logging
import os
import sys
import time

from . import contract

FORMATS = ("text", "json")


class _Formatter(logging.Formatter):
    def __init__(self, fmt: str, program: str):
        super().__init__()
        self.fmt, self.program, self.pod, self.rank = fmt, program, None, None

    def format(self, record: logging.LogRecord) -> str:
        msg = record.getMessage()
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
