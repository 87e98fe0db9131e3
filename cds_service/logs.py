"""Structured logs: one JSON object per line, built from the `extra` fields the code passes.

Log calls in this service pass counts, ids of our own making (rule ids, service ids, the EHR's
hookInstance) and error types in `extra`, never patient data or tokens. This formatter prints
exactly those fields and the message template, never its interpolated arguments, an exception's
message or a traceback, so nothing else can slip into a line: a library that logs
"... %s" % url prints the template only.
"""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime

_STANDARD = set(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {"message", "asctime", "taskName"}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "event": record.msg if isinstance(record.msg, str) else type(record.msg).__name__,
        }
        line.update({k: v for k, v in record.__dict__.items() if k not in _STANDARD})
        if record.exc_info and record.exc_info[0] is not None:
            # The exception's type only: its message and traceback can quote patient data.
            line.setdefault("error_type", record.exc_info[0].__name__)
        return json.dumps(line, default=str)


def configure(level: str = "info") -> dict:
    """A logging dictConfig for the service and uvicorn (also handed to uvicorn as log_config)."""
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"json": {"()": JsonFormatter}},
        "handlers": {"stderr": {"class": "logging.StreamHandler", "formatter": "json"}},
        "loggers": {
            "cds_service": {"handlers": ["stderr"], "level": level.upper(), "propagate": False},
            "uvicorn": {"handlers": ["stderr"], "level": level.upper(), "propagate": False},
            # Access logs carry the request line; the service's own line per call replaces them.
            "uvicorn.access": {"handlers": [], "level": "WARNING", "propagate": False},
        },
    }
