"""The README's promises: every setting documented, and the quickstart works as written."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import httpx
import pytest

from cds_service.settings import Settings
from tests.cards_shown import shown_rules
from tests.support import ROOT

README = (ROOT / "README.md").read_text(encoding="utf-8")


def bash_blocks() -> list[str]:
    return re.findall(r"```bash\n(.*?)\n```", README, re.S)


def test_every_setting_is_documented_in_the_readme() -> None:
    for name in Settings.model_fields:
        assert f"`ALS_CDS_{name.upper()}`" in README, name


def test_every_relative_link_in_the_readme_and_the_docs_leads_to_a_file() -> None:
    pages = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), ROOT / "fhir-server" / "README.md"]
    broken = []
    for page in pages:
        text = page.read_text(encoding="utf-8")
        for target in re.findall(r"\]\(([^)\s]+)\)", text):
            if re.match(r"[a-z]+:", target) or target.startswith("#"):
                continue  # a URL or an anchor in the same page
            if not (page.parent / target.split("#")[0]).exists():
                broken.append(f"{page.relative_to(ROOT)}: {target}")
    assert broken == []
    for doc in ("docs/integration.md", "docs/deployment.md", "docs/performance.md"):
        assert f"]({doc})" in README, f"the README links {doc}"


def test_readme_test_command_is_what_ci_runs() -> None:
    test_command = bash_blocks()[2]
    assert test_command in (ROOT / ".ci" / "run").read_text()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _copy_of_the_repository(target: Path) -> Path:
    ignore = shutil.ignore_patterns(
        ".venv", ".git", "*.db", "__pycache__", ".pytest_cache", ".ruff_cache", "*.egg-info"
    )
    shutil.copytree(ROOT, target, ignore=ignore)
    return target


@pytest.mark.skipif(shutil.which("curl") is None, reason="the README's second command uses curl")
def test_readme_quickstart_in_a_fresh_virtualenv_returns_the_documented_cards(tmp_path: Path) -> None:
    serve, curl = bash_blocks()[0], bash_blocks()[1]
    assert curl.count("8080") == 1
    work = _copy_of_the_repository(tmp_path / "als-cds")
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ALS_CDS_", "VIRTUAL_ENV"))}
    env["ALS_CDS_PORT"] = str(port)  # the one change: a free port instead of 8080
    log = (tmp_path / "serve.log").open("w")
    server = subprocess.Popen(
        ["bash", "-c", serve], cwd=work, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
    )
    try:
        deadline = time.monotonic() + 600  # includes `pip install` into a fresh venv
        while time.monotonic() < deadline:
            assert server.poll() is None, (tmp_path / "serve.log").read_text()[-3000:]
            try:
                if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(1)
        else:
            pytest.fail("the service did not start: " + (tmp_path / "serve.log").read_text()[-3000:])
        out = subprocess.run(
            ["bash", "-c", curl.replace("8080", str(port))],
            cwd=work,
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )
        cards = json.loads(out.stdout)["cards"]
        # As the README says: the riluzole warning first, then the care review of three reminders.
        assert shown_rules({"cards": cards}) == [
            "riluzole-lft-due",
            "care-review-digest",
            "respiratory-assessment-due",
            "mdt-review-overdue",
            "advance-care-planning",
        ]
        assert [c["indicator"] for c in cards] == ["warning", "info"]
        assert cards[1]["summary"] == "ALS care review: 3 items due"
        assert cards[0]["summary"].startswith("Order an ALT: due on riluzole")
        assert (work / "als-cds.db").exists()  # the embedded SQLite default
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)
        log.close()


def test_the_readme_lists_the_prefetch_keys_discovery_asks_for(tmp_path: Path) -> None:
    from fastapi.testclient import TestClient

    from cds_service.app import create_app

    section = README.split("## Prefetch and the FHIR server", 1)[1].split("\n## ", 1)[0]
    rows = re.findall(r"^\| `(als-[a-z-]+)` \| (`.+`) \|$", section, re.M)
    documented = {service: re.findall(r"`([^`]+)`", keys) for service, keys in rows}
    settings = Settings(_env_file=None, database_url=f"sqlite:///{tmp_path / 'db'}", auth_required=False)
    with TestClient(create_app(settings)) as client:
        discovery = client.get("/cds-services").json()
    assert documented == {s["id"]: list(s["prefetch"]) for s in discovery["services"]}
