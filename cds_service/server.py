"""The HTTP server's own defences, under `als-cds serve`: what uvicorn does not bound by itself.

uvicorn times out only an idle keep-alive connection, and only between requests: a connection that
sends nothing, or its headers or its body 10 bytes every 2 s, is held for ever (seen in the fault
tests, unauthenticated ones included after their 401), and it accepts connections without limit.
Its `limit_concurrency` answers 503 in plain text, where this service answers JSON. So `als-cds
serve` runs uvicorn with this protocol, a subclass of its httptools protocol that adds:

* a header deadline (`ALS_CDS_HTTP_HEADER_TIMEOUT_SECONDS`): from the moment a connection opens, or
  a keep-alive request begins, its request line and headers must be in within it;
* a body deadline (`ALS_CDS_HTTP_BODY_TIMEOUT_SECONDS`): from the end of the headers, the whole
  body must be in within it, also when the answer has already gone (a 401 is answered before the
  body is read, and the body may keep coming);
* a connection limit per worker (`ALS_CDS_MAX_CONNECTIONS`): one more is answered 503 at once,
  with `Retry-After` and a JSON body, and closed.

A deadline that passes before the answer has started is answered 408 (JSON), after it the
connection is simply closed. Progress does not extend a deadline: that is what a slow sender
exploits. Nothing here reads or logs the request: a line says what happened, with counts only.

And the processes: with several workers, `run_workers` supervises them as uvicorn does, but says
whether they started (uvicorn's supervisor returned normally when a worker failed to start, so
`als-cds serve` exited 0, and restarted a worker that died before serving without end); each
worker dies with its master (`die_with_parent`), so a killed master leaves no orphan serving.
"""

from __future__ import annotations

import asyncio
import ctypes
import functools
import json
import logging
import multiprocessing
import os
import signal
import sys
import threading
import time
from typing import Any

import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.supervisors.multiprocess import Multiprocess

from cds_service import metrics
from cds_service.settings import Settings

log = logging.getLogger("cds_service.server")


@functools.cache
def _limits() -> tuple[float, float, int, int]:
    """(header timeout, body timeout, most connections, Retry-After seconds) from the settings,
    read once per worker process (the protocol is built by uvicorn, not by us)."""
    settings = Settings()
    return (
        settings.http_header_timeout_seconds,
        settings.http_body_timeout_seconds,
        settings.max_connections,
        settings.retry_after_seconds,
    )


def _raw_response(status: str, diagnostics: str, code: str, extra: dict[str, str] | None = None) -> bytes:
    issue = {"severity": "error", "code": code, "diagnostics": diagnostics}
    body = json.dumps({"resourceType": "OperationOutcome", "issue": [issue]}).encode()
    headers = {
        "content-type": "application/json",
        "content-length": str(len(body)),
        "connection": "close",
        **(extra or {}),
    }
    head = f"HTTP/1.1 {status}\r\n" + "".join(f"{k}: {v}\r\n" for k, v in headers.items()) + "\r\n"
    return head.encode("latin-1") + body


class GuardedHttpProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with read deadlines and a connection limit (module docstring)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._header_timeout, self._body_timeout, self._max_connections, self._retry_after = _limits()
        self._read_deadline: asyncio.TimerHandle | None = None

    # -- the connection limit ---------------------------------------------------------------------

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        if len(self.connections) > self._max_connections:
            metrics.CONNECTIONS_REFUSED.inc()
            log.warning(
                "connection refused: too many open",
                extra={"open_connections": len(self.connections) - 1, "limit": self._max_connections},
            )
            transport.write(
                _raw_response(
                    "503 Service Unavailable",
                    "The service has too many open connections; retry shortly.",
                    "throttled",
                    {"retry-after": str(self._retry_after)},
                )
            )
            transport.close()
            return
        self._arm(self._header_timeout, "headers")

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    # -- read deadlines ---------------------------------------------------------------------------

    def on_message_begin(self) -> None:
        super().on_message_begin()
        if self._read_deadline is None:  # a keep-alive request: its headers now have the deadline
            self._arm(self._header_timeout, "headers")

    def on_headers_complete(self) -> None:
        super().on_headers_complete()
        self._arm(self._body_timeout, "body")

    def on_message_complete(self) -> None:
        super().on_message_complete()
        self._disarm()

    def _arm(self, seconds: float, what: str) -> None:
        self._disarm()
        self._read_deadline = self.loop.call_later(seconds, self._read_timed_out, what)

    def _disarm(self) -> None:
        if self._read_deadline is not None:
            self._read_deadline.cancel()
            self._read_deadline = None

    def _read_timed_out(self, what: str) -> None:
        self._read_deadline = None
        if self.transport is None or self.transport.is_closing():
            return
        answered = self.cycle is not None and self.cycle.response_started
        metrics.READ_TIMEOUTS.labels(what).inc()
        log.warning(
            "request read timed out",
            extra={"read_timeout": what, "answered_before": answered},
        )
        if not answered:
            seconds = self._header_timeout if what == "headers" else self._body_timeout
            self.transport.write(
                _raw_response(
                    "408 Request Timeout",
                    f"The request's {what} did not arrive within {seconds:g} s.",
                    "timeout",
                )
            )
        if self.cycle is not None and not self.cycle.response_complete:
            # The app may be waiting for the body: it sees a disconnect, and anything it would
            # still send is dropped (the 408 has gone).
            self.cycle.disconnected = True
            self.cycle.message_event.set()
        self.transport.close()


# -- processes ----------------------------------------------------------------------------------------

#: Exit status of a worker, and of `als-cds serve`, when the service could not start (uvicorn's).
STARTUP_FAILURE = 3
_PR_SET_PDEATHSIG = 1


class _Supervisor(Multiprocess):
    """uvicorn's supervisor, with one difference: a worker that ends before it ever served is a
    start-up failure, whatever its exit status, and stops the whole service (`startup_failed`)."""

    def __init__(self, config: uvicorn.Config, sockets: list[Any]) -> None:
        super().__init__(config, sockets)
        self.startup_failed = False
        self._served: set[int | None] = set()

    def keep_subprocess_alive(self) -> None:
        if self.should_exit.is_set():
            return
        timeout = self.config.timeout_worker_healthcheck
        for index, process in enumerate(self.processes):
            if process.process.is_alive() and process.ping(timeout):
                if process.pid not in self._served and process.is_ready(timeout=1):
                    self._served.add(process.pid)
                continue
            process.kill()  # hung, or gone
            process.join()
            if process.exitcode == STARTUP_FAILURE or process.pid not in self._served:
                logging.getLogger("uvicorn.error").error(
                    "a worker ended before it served: the service cannot start",
                    extra={"worker_pid": process.pid, "exit_code": process.exitcode},
                )
                self.startup_failed = True
                self.should_exit.set()
                return
            if self.should_exit.is_set():
                return
            logging.getLogger("uvicorn.error").warning(
                "a worker died; starting another", extra={"worker_pid": process.pid}
            )
            replacement = type(process)(self.config, self.sockets)
            replacement.start()
            self.processes[index] = replacement


def run_workers(config: uvicorn.Config) -> bool:
    """Serve with `config.workers` worker processes until told to stop; False if they could not
    start (the caller then exits non-zero)."""
    supervisor = _Supervisor(config, sockets=[config.bind_socket()])
    supervisor.run()
    return not supervisor.startup_failed


def die_with_parent() -> None:
    """In a worker process (spawned by the supervisor): be sent SIGTERM when the master dies.

    Without it, a master killed with SIGKILL (an OOM kill, `kill -9`) left its workers serving on
    the inherited socket, orphans that no deployment tooling knew of. Linux delivers the signal
    (prctl PR_SET_PDEATHSIG); elsewhere, or if that is refused, a thread watches the parent's pid.
    SIGTERM makes the worker shut down gracefully, as on a normal stop.
    """
    parent = multiprocessing.parent_process()
    if parent is None or parent.pid is None:
        return  # the master itself, or a single-process server: nothing to watch
    parent_pid = parent.pid
    armed = False
    if sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            armed = libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0) == 0
        except (OSError, AttributeError):
            armed = False
    if os.getppid() != parent_pid:  # it died before the signal was armed
        os.kill(os.getpid(), signal.SIGTERM)
        return
    if armed:
        return

    def watch() -> None:
        while os.getppid() == parent_pid:
            time.sleep(1.0)
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()

