"""Deployment artefacts: linted here, and consistent with the code they deploy.

The Dockerfiles pass hadolint, every manifest validates against the Kubernetes schemas, the YAML is
clean, and every setting, probe path and command the artefacts use exists in the service. Running
them (the image built and started, the compose stack up, the manifests played with podman) is
`test_deploy_run.py`; no cluster runs here.
"""

from __future__ import annotations

import posixpath
import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import pytest
import yaml

from cds_service.app import create_app
from cds_service.settings import Settings
from tests.support import ROOT

DEPLOY = ROOT / "deploy"
MANIFESTS = sorted(p for p in (DEPLOY / "kubernetes").glob("*.yaml") if p.name != "kustomization.yaml")
BIN = Path(sys.executable).parent


def _tool(name: str) -> str:
    path = shutil.which(name) or (str(BIN / name) if (BIN / name).exists() else None)
    if path is None:
        pytest.fail(f"{name} is not installed (it is in the test extras of pyproject.toml)")
    return path


DOCKERFILES = [DEPLOY / "Dockerfile", ROOT / "fhir-server" / "Dockerfile"]


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_dockerfile_passes_hadolint(dockerfile: Path) -> None:
    result = subprocess.run(
        [_tool("hadolint"), "--failure-threshold", "warning", str(dockerfile)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("manifest", MANIFESTS, ids=lambda p: p.name)
def test_kubernetes_manifest_validates_against_the_schemas(manifest: Path) -> None:
    result = subprocess.run(
        [_tool("kubernetes-validate"), "--strict", "-k", "1.31.0", str(manifest)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_yaml_is_clean() -> None:
    config = (
        "{extends: default, rules: {line-length: {max: 140}, document-start: disable, "
        "truthy: {check-keys: false}}}"
    )
    result = subprocess.run(
        [_tool("yamllint"), "-d", config, str(DEPLOY)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout


def test_kustomization_lists_every_manifest_but_the_secret_example() -> None:
    listed = set(yaml.safe_load((DEPLOY / "kubernetes" / "kustomization.yaml").read_text())["resources"])
    assert listed == {p.name for p in MANIFESTS} - {"secret.example.yaml"}


def test_every_setting_the_artefacts_use_exists() -> None:
    known = {f"ALS_CDS_{name.upper()}" for name in Settings.model_fields}
    texts = [p.read_text() for p in [DEPLOY / "Dockerfile", DEPLOY / "compose.yaml", *MANIFESTS]]
    used = {name for text in texts for name in re.findall(r"\bALS_CDS_[A-Z0-9_]+", text)}
    assert used, "the artefacts configure the service through ALS_CDS_* settings"
    assert used <= known, f"unknown settings: {sorted(used - known)}"


def test_probe_and_healthcheck_paths_exist_in_the_app() -> None:
    paths = {route.path for route in create_app(Settings(_env_file=None)).routes}  # type: ignore[attr-defined]
    deployment = yaml.safe_load((DEPLOY / "kubernetes" / "deployment.yaml").read_text())
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
        assert container[probe]["httpGet"]["path"] in paths
    assert "/healthz" in (DEPLOY / "Dockerfile").read_text() and "/healthz" in paths


def test_commands_the_artefacts_run_exist_in_the_cli() -> None:
    from cds_service.cli import main

    job = yaml.safe_load((DEPLOY / "kubernetes" / "migration-job.yaml").read_text())
    deployment = yaml.safe_load((DEPLOY / "kubernetes" / "deployment.yaml").read_text())
    commands = {
        job["spec"]["template"]["spec"]["containers"][0]["args"][0],
        deployment["spec"]["template"]["spec"]["containers"][0]["args"][0],
    }
    assert commands == {"migrate", "serve"}
    for command in commands:
        with pytest.raises(SystemExit) as exit_info:
            main([command, "--help"])
        assert exit_info.value.code == 0


# -- the image's filesystem, as far as the Dockerfile says, without a container engine ------------


@dataclass
class Layout:
    """What the runtime stage leaves: settings, working directory, user, and who owns which folder."""

    env: dict[str, str] = field(default_factory=dict)
    workdir: str = "/"
    user: str = "root"
    uids: dict[str, str] = field(default_factory=lambda: {"root": "0"})
    #: folder -> (owner uid, mode); the base image's folders are root's, /tmp is everyone's.
    folders: dict[str, tuple[str, int]] = field(
        default_factory=lambda: {"/": ("0", 0o755), "/tmp": ("0", 0o1777)}
    )

    def uid(self, user: str) -> str:
        name = user.split(":", 1)[0]
        return self.uids.get(name, name)

    def make(self, path: str, owner: str = "0", mode: int = 0o755) -> None:
        parts = PurePosixPath(path).parts
        for depth in range(2, len(parts) + 1):
            self.folders.setdefault(str(PurePosixPath(*parts[:depth])), ("0", 0o755))
        self.folders[str(PurePosixPath(path))] = (owner, mode)

    def writable_by(self, folder: str, uid: str) -> bool:
        owner, mode = self.folders[folder]
        return uid == "0" or (owner == uid and bool(mode & 0o200)) or bool(mode & 0o002)


def _instructions(dockerfile: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of the last stage, continuation lines joined, comments dropped."""
    lines = [line for line in dockerfile.splitlines() if not line.lstrip().startswith("#")]
    joined = re.sub(r"\\\n\s*", " ", "\n".join(lines))
    steps = [tuple(line.strip().split(None, 1)) for line in joined.splitlines() if line.strip()]
    last_from = max(i for i, step in enumerate(steps) if step[0].upper() == "FROM")
    return [(step[0].upper(), step[1] if len(step) > 1 else "") for step in steps[last_from:]]


def _run(layout: Layout, command: str) -> None:
    """The folder-making parts of a RUN: useradd, mkdir, install -d, chown, chmod."""
    for part in command.split("&&"):
        words = shlex.split(part)
        if not words:
            continue
        tool, options = words[0], words[1:]
        if tool == "useradd":
            uid = options[options.index("--uid") + 1] if "--uid" in options else "1000"
            layout.uids[options[-1]] = uid
            if {"-m", "--create-home"} & set(options) and "--home-dir" in options:
                layout.make(options[options.index("--home-dir") + 1], uid, 0o755)
        elif tool == "mkdir":
            mode = int(options[options.index("-m") + 1], 8) if "-m" in options else 0o755
            for path in (w for w in options if w.startswith("/")):
                layout.make(path, "0", mode)
        elif tool == "install" and "-d" in options:
            owner = layout.uid(options[options.index("-o") + 1]) if "-o" in options else "0"
            mode = int(options[options.index("-m") + 1], 8) if "-m" in options else 0o755
            for path in (w for w in options if w.startswith("/")):
                layout.make(path, owner, mode)
        elif tool == "chown":
            owner = layout.uid(next(w for w in options if not w.startswith("-")))
            for path in (w for w in options if w.startswith("/")):
                layout.folders[path] = (owner, layout.folders.get(path, ("0", 0o755))[1])
        elif tool == "chmod":
            mode = int(next(w for w in options if not w.startswith("-")), 8)
            for path in (w for w in options if w.startswith("/")):
                layout.folders[path] = (layout.folders.get(path, ("0", 0o755))[0], mode)


def image_layout(dockerfile: str) -> Layout:
    layout = Layout()
    for instruction, arguments in _instructions(dockerfile):
        if instruction == "ENV":
            layout.env.update(dict(pair.split("=", 1) for pair in shlex.split(arguments)))
        elif instruction == "WORKDIR":
            path = str(PurePosixPath(layout.workdir, arguments))
            if path not in layout.folders:
                layout.make(path)  # made by the builder, as root
            layout.workdir = path
        elif instruction == "USER":
            layout.user = arguments.strip()
        elif instruction == "RUN":
            _run(layout, arguments)
        elif instruction == "COPY":
            words = shlex.split(arguments)
            chown = next((w.split("=", 1)[1] for w in words if w.startswith("--chown=")), "0")
            target = str(PurePosixPath(layout.workdir, words[-1]))
            layout.make(target, layout.uid(chown), 0o755)
    return layout


def _sqlite_folder(url: str, workdir: str) -> str:
    assert url.startswith("sqlite:///"), url
    return str(
        PurePosixPath(posixpath.normpath(posixpath.join(workdir, url.removeprefix("sqlite:///")))).parent
    )


def test_the_images_default_sqlite_database_is_writable_by_its_user() -> None:
    """The runtime stage replayed without a container engine (test_deploy_run.py runs the image
    itself where podman is installed). SQLite writes the database and its journal beside it, so the
    folder, not only the file, must be the non-root user's."""
    layout = image_layout((DEPLOY / "Dockerfile").read_text())
    uid = layout.uid(layout.user)
    assert uid != "0", "the image runs as a non-root user"
    url = layout.env.get("ALS_CDS_DATABASE_URL") or Settings.model_fields["database_url"].default
    folder = _sqlite_folder(url, layout.workdir)
    assert folder in layout.folders, f"{folder} (for {url}) is not made by the image"
    assert layout.writable_by(folder, uid), f"{folder} is {layout.folders[folder]}, user {uid}"
    assert not layout.writable_by(layout.workdir, uid) or layout.workdir == folder  # the code stays root's


def test_the_layout_replay_sees_a_folder_the_user_cannot_write() -> None:
    """The check above can fail: the image before this fix kept the database in root's /app."""
    before = (DEPLOY / "Dockerfile").read_text()
    before = re.sub(r" \\\n\s+ALS_CDS_DATABASE_URL=\S+", "", before)
    before = re.sub(r" \\\n\s+&& install -d [^\n]+", "", before)
    layout = image_layout(before)
    folder = _sqlite_folder(Settings.model_fields["database_url"].default, layout.workdir)
    assert "ALS_CDS_DATABASE_URL" not in layout.env and folder == "/app"
    assert not layout.writable_by(folder, layout.uid(layout.user))
