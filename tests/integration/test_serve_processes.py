"""`als-cds serve` as a process tree: it exits non-zero whenever the service cannot serve, whatever
the worker count, and its workers never outlive it.

Start-up is made to fail after the command's own checks have passed: the database URL is a
well-formed PostgreSQL URL where nothing listens, so every worker's start-up (the migration) fails.
Before, two workers exited 0 in that case (uvicorn's supervisor returned normally) and one worker 3.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from scripts.service_process import free_port, process_tree, stop_process
from tests.support import hook_request


def _serve(workdir: Path, workers: int, database_url: str) -> tuple[subprocess.Popen[bytes], str, Path]:
    port = free_port()
    log = workdir / f"serve-{workers}.log"
    env = {
        **os.environ,
        "ALS_CDS_HOST": "127.0.0.1",
        "ALS_CDS_PORT": str(port),
        "ALS_CDS_WORKERS": str(workers),
        "ALS_CDS_DATABASE_URL": database_url,
        "ALS_CDS_AUTH_REQUIRED": "false",
    }
    with log.open("wb") as sink:
        proc = subprocess.Popen(
            [sys.executable, "-m", "cds_service.cli", "serve"], cwd=workdir, env=env, stdout=sink, stderr=sink
        )
    return proc, f"http://127.0.0.1:{port}", log


@pytest.mark.parametrize("workers", [1, 2])
def test_serve_exits_non_zero_when_the_service_cannot_start(tmp_path: Path, workers: int) -> None:
    unreachable = f"postgresql+psycopg://als:secret@127.0.0.1:{free_port()}/als"
    proc, _, log = _serve(tmp_path, workers, unreachable)
    try:
        code = proc.wait(90)
    finally:
        stop_process(proc, 10)

    text = log.read_text(errors="replace")
    assert code not in (0, None), text[-2000:]
    assert "the service did not start" in text
    assert "secret" not in text  # the database password is never printed


def test_workers_do_not_outlive_a_master_killed_with_sigkill(tmp_path: Path) -> None:
    proc, url, log = _serve(tmp_path, 2, f"sqlite:///{tmp_path / 'als-cds.db'}")
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        workers = [pid for pid in process_tree(proc.pid) if pid != proc.pid]
        assert len(workers) >= 2, log.read_text(errors="replace")[-2000:]

        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and any(Path(f"/proc/{pid}").exists() for pid in workers):
            time.sleep(0.2)
        survivors = [pid for pid in workers if Path(f"/proc/{pid}").exists() and _not_zombie(pid)]
    finally:
        for pid in [proc.pid, *workers] if "workers" in locals() else [proc.pid]:
            if _not_zombie(pid):
                os.kill(pid, signal.SIGKILL)

    assert survivors == []
    with pytest.raises(httpx.HTTPError):
        httpx.get(f"{url}/healthz", timeout=2)


def _not_zombie(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2] != "Z"


def test_metrics_add_up_the_calls_of_every_worker(tmp_path: Path) -> None:
    proc, url, log = _serve(tmp_path, 2, f"sqlite:///{tmp_path / 'als-cds.db'}")
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        body = hook_request("patient-view-als-riluzole-lft-overdue")
        for _ in range(20):  # a connection each: the calls spread over the workers
            with httpx.Client(timeout=30) as client:
                assert client.post(f"{url}/cds-services/als-patient-view", json=body).status_code == 200
        counts = set()
        for _ in range(6):  # whichever worker answers the scrape, it reports every worker's calls
            with httpx.Client(timeout=30) as client:
                text = client.get(f"{url}/metrics").text
            counts.add(_sample(text, "als_cds_request_duration_seconds_count", 'endpoint="hook"'))
    finally:
        stop_process(proc, 30)

    assert counts == {20.0}, log.read_text(errors="replace")[-2000:]


def _sample(text: str, name: str, label: str) -> float:
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith(name + "{") and label in line
    )
