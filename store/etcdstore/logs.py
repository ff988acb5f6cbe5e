"""Structured JSON logs in etcd's (zap) shape: one object per line with level, ts, caller, msg.

    log = get_logger(__name__)
    log.info("serving client traffic", address="127.0.0.1:2379")

Fields whose names suggest secrets (password, token, key material) are redacted, so a
careless call cannot leak them.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from typing import Any

_LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warn": logging.WARNING,
    "error": logging.ERROR,
    "panic": logging.CRITICAL,
    "fatal": logging.CRITICAL,
}
_NAMES = {
    logging.DEBUG: "debug",
    logging.INFO: "info",
    logging.WARNING: "warn",
    logging.ERROR: "error",
    logging.CRITICAL: "fatal",
}
_SECRET_WORDS = ("password", "passwd", "token", "secret", "private")


def _redact(fields: dict[str, Any]) -> dict[str, Any]:
    out = {}
    for k, v in fields.items():
        low = k.lower()
        out[k] = "[REDACTED]" if any(w in low for w in _SECRET_WORDS) else v
    return out


class JSONFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        ts = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
        doc: dict[str, Any] = {
            "level": _NAMES.get(record.levelno, record.levelname.lower()),
            "ts": f"{ts}.{int(record.msecs):03d}Z",
            "caller": f"{os.path.basename(os.path.dirname(record.pathname))}/{os.path.basename(record.pathname)}:"
            f"{record.lineno}",
            "msg": record.getMessage(),
        }
        fields = getattr(record, "fields", None)
        if fields:
            doc.update(_redact(fields))
        if record.exc_info:
            doc["error"] = self.formatException(record.exc_info)
        return json.dumps(doc, default=str, separators=(",", ":"))


class Logger:
    """A thin wrapper that turns keyword arguments into structured fields."""

    __slots__ = ("_log",)

    def __init__(self, log: logging.Logger) -> None:
        self._log = log

    def _emit(self, level: int, msg: str, exc_info: Any, fields: dict[str, Any]) -> None:
        if self._log.isEnabledFor(level):
            self._log.log(level, msg, extra={"fields": fields}, exc_info=exc_info, stacklevel=3)

    def debug(self, msg: str, *, exc_info: Any = None, **fields: Any) -> None:
        self._emit(logging.DEBUG, msg, exc_info, fields)

    def info(self, msg: str, *, exc_info: Any = None, **fields: Any) -> None:
        self._emit(logging.INFO, msg, exc_info, fields)

    def warning(self, msg: str, *, exc_info: Any = None, **fields: Any) -> None:
        self._emit(logging.WARNING, msg, exc_info, fields)

    def warn(self, msg: str, *, exc_info: Any = None, **fields: Any) -> None:
        """The old name of `warning` (ruff's G010 asks for `warning`, as the standard library does)."""
        self._emit(logging.WARNING, msg, exc_info, fields)

    def error(self, msg: str, *, exc_info: Any = None, **fields: Any) -> None:
        self._emit(logging.ERROR, msg, exc_info, fields)

    def enabled(self, level: str) -> bool:
        return self._log.isEnabledFor(_LEVELS[level])


def get_logger(name: str) -> Logger:
    return Logger(logging.getLogger(name))


def setup(level: str = "info", stream: Any = None) -> None:
    """Send every log record, ours and libraries', to stderr as JSON at the given level."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JSONFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(_LEVELS[level])
    # Libraries' own debug output (gRPC's event-loop notices) is noise in a member's log.
    for noisy in ("grpc", "asyncio", "aiohttp"):
        logging.getLogger(noisy).setLevel(max(_LEVELS[level], logging.INFO))
