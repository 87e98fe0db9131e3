"""Structured logs: one JSON object per line, built from the `extra` fields the code passes.

Log calls in this service pass counts, ids of our own making (rule ids, service ids, the EHR's
hookInstance) and error types in `extra`, never patient data or tokens. This formatter prints
exactly those fields and the message template, never its interpolated arguments, an exception's
message or a traceback, so nothing else can slip into a line: a library that logs
"... %s" % url prints the template only.

One exception, by name: uvicorn's own server lines (`SERVER_LINES`), whose arguments are the
process id, the scheme, the host and the port the server listens on. They hold no patient data, and
a line saying "Uvicorn running on %s://%s:%d" is no use to anyone, so these are filled in. Nothing
else is. ANSI escape sequences (uvicorn's colours, or any a library or a sender slips in) never
reach a line, and uvicorn's `color_message` copy of its message is dropped.
"""

from __future__ import annotations

import json
import logging
import re
from datetime import UTC, datetime
from typing import Any

_STANDARD = set(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {"message", "asctime", "taskName"}

#: Extra fields never printed: uvicorn's coloured copy of the message (ANSI codes, and the same
#: template again).
_DROPPED = frozenset({"color_message"})

#: (logger, message template) of the lines whose arguments are printed: uvicorn's start and stop
#: lines. Their arguments are a process id, or the scheme, host and port the server listens on.
SERVER_LINES = frozenset(
    {
        ("uvicorn.error", "Started server process [%d]"),
        ("uvicorn.error", "Finished server process [%d]"),
        ("uvicorn.error", "Uvicorn running on %s://%s:%d (Press CTRL+C to quit)"),
        ("uvicorn.error", "Uvicorn running on %s://[%s]:%d (Press CTRL+C to quit)"),
    }
)

#: ANSI escape sequences (CSI such as colours, and any other ESC sequence), and stray ESC bytes.
_ANSI = re.compile(r"\x1b(?:\[[0-?]*[ -/]*[@-~]|[@-Z\\-_])|\x1b|\x9b[0-?]*[ -/]*[@-~]")

#: A message that is itself a Python traceback (Starlette hands uvicorn the text of a failed
#: start-up that way): only the exception's type is kept.
_TRACEBACK = "Traceback (most recent call last):"
_EXCEPTION_LINE = re.compile(r"^([A-Za-z_][\w.]*)(?::|$)")


def _plain(value: Any) -> Any:
    """`value` with every ANSI escape sequence removed from its strings, however deep."""
    if isinstance(value, str):
        # Every escape sequence begins with one of these two: most strings have neither.
        return _ANSI.sub("", value) if "\x1b" in value or "\x9b" in value else value
    if isinstance(value, dict):
        return {_plain(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [_plain(v) for v in value]
    return value


def _event(record: logging.LogRecord) -> tuple[str, str | None]:
    """The line's `event`, and the error type a traceback message names (if it is one)."""
    if not isinstance(record.msg, str):
        return type(record.msg).__name__, None
    if (record.name, record.msg) in SERVER_LINES and record.args:
        try:
            return record.getMessage(), None
        except (TypeError, ValueError):  # arguments that do not fit the template: the template
            return record.msg, None
    if record.msg.lstrip().startswith(_TRACEBACK):
        # The exception's own line: the last that starts with a dotted name and a colon (or ends
        # there). Not simply the last line: SQLAlchemy's errors end with "[SQL: ...]" and
        # "(Background on this error at: ...)" lines.
        named = [m.group(1) for m in map(_EXCEPTION_LINE.match, record.msg.strip().splitlines()) if m]
        return "traceback withheld", named[-1].rsplit(".", 1)[-1] if named else None
    return record.msg, None


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        event, traceback_type = _event(record)
        line = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "event": event,
        }
        line.update({k: v for k, v in record.__dict__.items() if k not in _STANDARD and k not in _DROPPED})
        if record.exc_info and record.exc_info[0] is not None:
            # The exception's type only: its message and traceback can quote patient data.
            line.setdefault("error_type", record.exc_info[0].__name__)
        if traceback_type:
            line.setdefault("error_type", traceback_type)
        return json.dumps(_plain(line), default=lambda value: _plain(str(value)))


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
