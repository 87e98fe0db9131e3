"""Podman for the deployment tests: is it there, the images they run, and cleaning up after them.

The tests build and run the real artefacts of `deploy/` with rootful podman (Debian's packages, as
`../shared/reference/containers.md` describes; `.ci/run` installs and configures it). No container
registry is reachable on the test machines, so every base image is built from Debian's packages by
`deploy/debian-base.sh` (mmdebstrap), once per machine and kept (`ALS_CDS_TEST_REBUILD_BASES=1`
builds them again); the service's own image is built once per test session.

Without podman (or mmdebstrap, or root) the tests are skipped with a message, except under CI
(CI=true) or with ALS_CDS_REQUIRE_PODMAN=1, where that fails the run.

Everything a test starts is labelled with the pid of the pytest process that started it and
removed when the test ends; a later session removes what a killed one left behind.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path

import httpx
import pytest

from tests.support import ROOT

OWNER_LABEL = "als-cds-test.owner"
OWNER = str(os.getpid())
#: Base images built from Debian's packages, by flavour of deploy/debian-base.sh.
BASES = {
    "python": "localhost/als-cds-test-base:bookworm",
    "node": "localhost/als-cds-test-node:bookworm",
    "postgres": "localhost/als-cds-test-postgres:bookworm",
}
IMAGE = "localhost/als-cds-test:latest"
COMPOSE_PREFIX = "als-cds-test-"
BUILD_SECONDS = 900  # one image or base; a cold mmdebstrap took 1-4 min here, a cold build 1 min
COMMAND_SECONDS = 120


def required() -> bool:
    return os.environ.get("CI", "").lower() == "true" or os.environ.get("ALS_CDS_REQUIRE_PODMAN") == "1"


def unavailable(message: str) -> None:
    if required():
        pytest.fail(f"{message} (required because CI=true or ALS_CDS_REQUIRE_PODMAN=1)")
    pytest.skip(message)


def check_available() -> None:
    """Skip (fail under CI) unless rootful podman and mmdebstrap can run here."""
    missing = [tool for tool in ("podman", "mmdebstrap") if shutil.which(tool) is None]
    if missing:
        unavailable(
            f"{' and '.join(missing)} not installed: apt-get install podman runc mmdebstrap, and "
            "configure podman as ../shared/reference/containers.md says (.ci/run does both)"
        )
    if os.geteuid() != 0:
        unavailable("the container tests run rootful podman and mmdebstrap: run them as root")
    info = subprocess.run(
        ["podman", "info"], capture_output=True, text=True, timeout=COMMAND_SECONDS, check=False
    )
    if info.returncode != 0:
        pytest.fail(f"podman is installed but does not work:\n{info.stderr[-2000:]}")


def run(
    args: Sequence[str],
    *,
    timeout: float = COMMAND_SECONDS,
    check: bool = True,
    env: dict[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run a command with a time limit; a failure (when checked) shows its output."""
    try:
        done = subprocess.run(
            list(args), capture_output=True, text=True, timeout=timeout, check=False, cwd=ROOT, env=env
        )
    except subprocess.TimeoutExpired as exc:
        pytest.fail(
            f"{' '.join(args)} did not finish within {timeout:.0f} s:\n{_tail(exc.stdout)}{_tail(exc.stderr)}"
        )
    if check and done.returncode != 0:
        pytest.fail(f"{' '.join(args)} failed ({done.returncode}):\n{_tail(done.stdout)}{_tail(done.stderr)}")
    return done


def _tail(text: str | bytes | None, size: int = 4000) -> str:
    if isinstance(text, bytes):
        text = text.decode("utf-8", "replace")
    return (text or "")[-size:]


def image_exists(image: str) -> bool:
    return run(["podman", "image", "exists", image], check=False).returncode == 0


def base_image(flavour: str) -> str:
    """The Debian-built base of one flavour, built now unless this machine already has it."""
    image = BASES[flavour]
    if os.environ.get("ALS_CDS_TEST_REBUILD_BASES") == "1" or not image_exists(image):
        run([str(ROOT / "deploy" / "debian-base.sh"), flavour, image], timeout=BUILD_SECONDS)
    return image


def build(dockerfile: Path, tag: str, context: Path, base: str) -> None:
    """podman build in Docker's format: the OCI format drops HEALTHCHECK (podman warns and ignores it)."""
    run(
        [
            "podman",
            "build",
            "--format",
            "docker",
            "--build-arg",
            f"BASE={base}",
            "-f",
            str(dockerfile),
            "-t",
            tag,
            str(context),
        ],
        timeout=BUILD_SECONDS,
    )


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def wait_until_answers(url: str, seconds: float, *, container: str | None = None) -> None:
    """Poll `url` until it answers 200; on time out, fail with the container's log."""
    deadline = time.monotonic() + seconds
    last = ""
    while time.monotonic() < deadline:
        try:
            response = httpx.get(url, timeout=3)
            if response.status_code == 200:
                return
            last = f"{response.status_code} {response.text[:300]}"
        except httpx.HTTPError as exc:
            last = repr(exc)
        if container and inspect(container, "{{.State.Status}}") == "exited":
            break
        time.sleep(0.5)
    log = logs(container) if container else ""
    pytest.fail(f"{url} did not answer 200 within {seconds:.0f} s (last: {last})\n{log}")


def inspect(container: str, template: str) -> str:
    return run(["podman", "inspect", "--format", template, container], check=False).stdout.strip()


def logs(container: str) -> str:
    done = run(["podman", "logs", container], check=False)
    return _tail(done.stdout + done.stderr, 6000)


def wait_exit(container: str, seconds: float) -> int:
    """The container's exit status once it has stopped; fails if it runs longer than `seconds`."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if inspect(container, "{{.State.Status}}") in ("exited", "stopped"):
            return int(inspect(container, "{{.State.ExitCode}}"))
        time.sleep(0.5)
    pytest.fail(f"{container} still running after {seconds:.0f} s:\n{logs(container)}")
    raise AssertionError("unreachable")


def remove_container(name: str) -> None:
    run(["podman", "rm", "--force", "--time", "5", name], check=False, timeout=60)


def _alive(pid: str) -> bool:
    try:
        os.kill(int(pid), 0)
    except (ValueError, ProcessLookupError):
        return False
    except PermissionError:
        return True
    return True


def compose_project() -> str:
    """This session's compose project name: its containers, network and volume carry it."""
    return f"{COMPOSE_PREFIX}{OWNER}"


def remove_compose_project(project: str) -> None:
    """What `podman-compose down -v` removes, by the project's labels and names, whatever state it is in."""
    label = f"label=io.podman.compose.project={project}"
    ids = run(["podman", "ps", "--all", "--quiet", "--filter", label], check=False).stdout.split()
    if ids:
        run(["podman", "rm", "--force", "--time", "5", *ids], check=False, timeout=120)
    for volume in run(["podman", "volume", "ls", "--quiet", "--filter", label], check=False).stdout.split():
        run(["podman", "volume", "rm", "--force", volume], check=False)
    run(["podman", "network", "rm", "--force", f"{project}_default"], check=False)


def reap_abandoned() -> None:
    """Remove what a pytest process left behind when it was killed before cleaning up."""
    for kind in ("pod", "container"):
        template = f'{{{{.ID}}}} {{{{index .Labels "{OWNER_LABEL}"}}}}'
        listed = run(
            ["podman", kind, "ps", "--all", "--filter", f"label={OWNER_LABEL}", "--format", template],
            check=False,
        ).stdout
        for line in listed.splitlines():
            ident, _, owner = line.partition(" ")
            if ident and not _alive(owner):
                run(["podman", kind, "rm", "--force", ident], check=False, timeout=60)
    template = '{{index .Labels "io.podman.compose.project"}}'
    projects = set(run(["podman", "ps", "--all", "--format", template], check=False).stdout.split())
    for project in projects:
        if project.startswith(COMPOSE_PREFIX) and not _alive(project.removeprefix(COMPOSE_PREFIX)):
            remove_compose_project(project)
