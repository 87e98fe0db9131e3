"""The als-cds service as a subprocess on loopback, and its processes as /proc shows them.

Shared by the load test (`scripts/loadtest.py`) and the bench (`bench/run.py`), so that both start,
measure and stop the service the same way. Only the standard library and httpx: a client of the
service need not import the service (the bench measures revisions whose package it cannot import).
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _stat_fields(pid: int) -> list[str]:
    text = Path(f"/proc/{pid}/stat").read_text()
    return text[text.rindex(")") + 2 :].split()  # fields from 3 (state) on; comm may hold spaces


def process_tree(pid: int) -> list[int]:
    """`pid` and all its descendants that are alive now."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError, ValueError, IndexError):
                children.setdefault(int(_stat_fields(int(entry.name))[1]), []).append(int(entry.name))
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        if Path(f"/proc/{current}").exists():
            found.append(current)
            todo.extend(children.get(current, []))
    return sorted(found)


def rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def status_kb(pid: int, names: tuple[str, ...] = ("VmRSS", "VmHWM")) -> dict[str, int]:
    """Memory figures of `pid` from /proc/PID/status, in kB: VmRSS now, VmHWM its peak (since the
    process started, or since `reset_peak_rss`)."""
    values = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, rest = line.partition(":")
        if name in names:
            values[name] = int(rest.split()[0])
    return values


def reset_peak_rss(pid: int) -> bool:
    """Reset VmHWM to the current RSS (Linux 4.0+, a process of our own), so that a peak belongs to
    what ran after the reset. False where the kernel or a sandbox refuses: the peak then stays the
    peak since start."""
    try:
        Path(f"/proc/{pid}/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def cpu_seconds(pids: list[int]) -> float:
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for pid in pids:
        with contextlib.suppress(OSError, ValueError, IndexError):
            fields = _stat_fields(pid)
            total += (int(fields[11]) + int(fields[12])) / ticks  # utime, stime
    return total


def _role(pid: int, root: int) -> str:
    if pid == root:
        return "server"
    with contextlib.suppress(OSError):
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")
        if b"resource_tracker" in cmdline:
            return "resource-tracker"
        if b"spawn_main" in cmdline:
            return "worker"
    return "child"


def memory_snapshot(root: int | None) -> dict[str, Any] | None:
    if root is None:
        return None
    processes = []
    for pid in process_tree(root):
        with contextlib.suppress(OSError):
            processes.append(
                {
                    "pid": pid,
                    "role": _role(pid, root),
                    "rss_kb": rss_kb(pid),
                    "cpu_s": round(cpu_seconds([pid]), 2),
                }
            )
    return {"total_rss_kb": sum(p["rss_kb"] for p in processes), "processes": processes}


def serving_pid(root: int) -> int:
    """The process that serves requests. With one worker uvicorn serves in the `als-cds serve`
    process itself; with several, in its spawned children: then the first of them."""
    snapshot = memory_snapshot(root) or {"processes": []}
    workers = [p["pid"] for p in snapshot["processes"] if p["role"] == "worker"]
    return workers[0] if workers else root


def pid_listening_on(port: int) -> int | None:
    """The topmost process holding the loopback listening socket on `port` (for --url without a pid)."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError):
            for line in Path(table).read_text().splitlines()[1:]:
                cols = line.split()
                if int(cols[1].rsplit(":", 1)[1], 16) == port and cols[3] == "0A":  # LISTEN
                    inodes.add(f"socket:[{cols[9]}]")
    holders = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            for fd in (entry / "fd").iterdir():
                with contextlib.suppress(OSError):
                    if os.readlink(fd) in inodes:
                        holders.add(int(entry.name))
                        break
    for pid in sorted(holders):
        with contextlib.suppress(OSError, ValueError, IndexError):
            if int(_stat_fields(pid)[1]) not in holders:
                return pid
    return None


def start_server(
    workers: int,
    database_url: str,
    workdir: Path,
    log_path: Path,
    log_level: str,
    extra_env: dict[str, str] | None = None,
) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    env = dict(os.environ) | (extra_env or {})
    env.update(
        ALS_CDS_HOST="127.0.0.1",
        ALS_CDS_PORT=str(port),
        ALS_CDS_WORKERS=str(workers),
        ALS_CDS_DATABASE_URL=database_url,
        ALS_CDS_AUTH_REQUIRED="false",
        ALS_CDS_LOG_LEVEL=log_level,
    )
    command = [sys.executable, "-m", "cds_service.cli", "serve"]
    with log_path.open("ab") as log:
        proc = subprocess.Popen(command, cwd=workdir, env=env, stderr=log, stdout=log)  # noqa: S603
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 90
    with httpx.Client(timeout=2) as client:
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                break
            with contextlib.suppress(httpx.HTTPError):
                if client.get(f"{url}/readyz").status_code == 200:
                    return proc, url
            time.sleep(0.2)
    stop_process(proc, 10)
    tail = log_path.read_text(errors="replace")[-3000:]
    raise RuntimeError(f"the service did not become ready at {url}; its log ends:\n{tail}")


def stop_process(proc: subprocess.Popen[Any], timeout: float) -> int | None:
    """SIGTERM, wait up to `timeout`, then SIGKILL. The exit code (negative: killed by that signal)."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
    return proc.returncode
