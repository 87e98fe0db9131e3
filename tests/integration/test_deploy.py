"""Deployment artefacts: linted here, and consistent with the code they deploy.

No container engine or cluster runs on the test machines, so the image is not built and the
manifests are not applied here; what can be checked is: the Dockerfile passes hadolint, every
manifest validates against the Kubernetes schemas, the YAML is clean, and every setting, probe
path and command the artefacts use exists in the service.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

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


def test_dockerfile_passes_hadolint() -> None:
    result = subprocess.run(
        [_tool("hadolint"), "--failure-threshold", "warning", str(DEPLOY / "Dockerfile")],
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
