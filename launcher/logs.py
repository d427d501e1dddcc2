"""Logging set-up: one line per event, as text or JSON."""

from __future__ import annotations

import json
import logging
import sys
import time

_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {"message", "asctime"}
# The Kubernetes client logs whole response bodies at DEBUG (kubernetes.client.rest up to release 30;
# "client" is its Configuration's package logger) and urllib3 every request line: pods, Events, tokens
# in URLs. Whatever -v says, these stop at INFO.
CLIENT_LOGGERS = ("kubernetes", "client", "urllib3")


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        entry.update({k: v for k, v in vars(record).items() if k not in _STANDARD})
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


def _not_client_debug(record: logging.LogRecord) -> bool:
    if record.levelno >= logging.INFO:
        return True
    return not any(record.name == name or record.name.startswith(name + ".") for name in CLIENT_LOGGERS)


def setup(log_format: str = "text", verbosity: int = 0) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(_not_client_debug)
    if log_format == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.DEBUG if verbosity > 0 else logging.INFO)
