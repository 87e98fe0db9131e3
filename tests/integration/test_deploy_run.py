"""The artefacts of `deploy/`, run: the image built and started, the compose stack up, the
Kubernetes manifests played with podman. (`test_deploy.py` lints and cross-checks the same files.)

Rootful podman runs them (see `tests/integration/podman.py`: without podman the tests skip, except
under CI, where they fail). Base images are built from Debian's packages (`deploy/debian-base.sh`),
as no registry is reachable here; everything else is the files of `deploy/` as they are, apart from
what a test must choose: free loopback ports, an image tag, and the Secret's values.

What podman cannot show, a cluster would: see docs/deployment.md ("What was checked here").
"""

from __future__ import annotations

import base64
import copy
import json
import os
import re
import shutil
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import jwt
import psycopg
import pytest
import yaml
from cryptography.hazmat.primitives.asymmetric import ec
from jwt.algorithms import ECAlgorithm
from psycopg import sql
from sqlalchemy import make_url

from tests.cards_shown import shown_rules
from tests.integration import podman
from tests.support import FIXTURES, ROOT, hook_request

DEPLOY = ROOT / "deploy"
KUBE = DEPLOY / "kubernetes"
REQUEST = "patient-view-als-riluzole-lft-overdue"
FETCH_REQUEST = "patient-view-fetch-from-fhir-server"
START_SECONDS = 90
STOP_SECONDS = 30


def documented_cards(request_file: str) -> list[str]:
    """The rule ids fhir_fixtures/requests/README.md says a bundled request gets, in order."""
    table = (FIXTURES / "requests" / "README.md").read_text(encoding="utf-8")
    row = re.search(rf"^\| `{re.escape(request_file)}` \| `[^`]+` \| (.+?) \|$", table, re.M)
    assert row, f"{request_file} has no row in fhir_fixtures/requests/README.md"
    return re.findall(r"`([^`]+)`", row[1])


def feedback_on(card: dict[str, Any]) -> dict[str, Any]:
    return {
        "feedback": [
            {"card": card["uuid"], "outcome": "overridden", "outcomeTimestamp": "2026-12-01T10:00:00Z"}
        ]
    }


# -- images -------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def podman_ready() -> None:
    podman.check_available()
    podman.reap_abandoned()


@pytest.fixture(scope="session")
def python_base(podman_ready: None) -> str:
    return podman.base_image("python")


@pytest.fixture(scope="session")
def image(python_base: str) -> str:
    """The production image, built from deploy/Dockerfile on the Debian-built Python base."""
    podman.build(DEPLOY / "Dockerfile", podman.IMAGE, ROOT, python_base)
    return podman.IMAGE


@dataclass
class Running:
    name: str
    url: str


def start_container(image: str, name: str, *args: str, env: dict[str, str] | None = None) -> Running:
    port = podman.free_port()
    options = [f"--env={key}={value}" for key, value in (env or {}).items()]
    podman.run(
        ["podman", "run", "--detach", "--name", name, "--label", f"{podman.OWNER_LABEL}={podman.OWNER}",
         "--publish", f"127.0.0.1:{port}:8080", *options, image, *args]
    )  # fmt: skip
    return Running(name, f"http://127.0.0.1:{port}")


@pytest.fixture(scope="class")
def served(image: str) -> Iterator[Running]:
    """The image as a trial runs it: nothing set but authentication off, so its defaults show."""
    name = f"als-cds-test-image-{podman.OWNER}"
    podman.remove_container(name)
    try:
        running = start_container(image, name, env={"ALS_CDS_AUTH_REQUIRED": "false"})
        podman.wait_until_answers(f"{running.url}/healthz", START_SECONDS, container=name)
        yield running
    finally:
        podman.remove_container(name)


class TestTheImage:
    """deploy/Dockerfile built on the Debian-built Python base and run with `podman run`."""

    def test_the_image_runs_as_its_non_root_user(self, served: Running) -> None:
        assert podman.inspect(served.name, "{{.Config.User}}") == "10001"
        assert podman.run(["podman", "exec", served.name, "id", "-u"]).stdout.strip() == "10001"
        # Every process of the container, the uvicorn workers included, runs as that user.
        users = podman.run(["podman", "top", served.name, "user"]).stdout.split()[1:]
        assert users and set(users) == {"als-cds"}, users

    def test_the_image_answers_healthz_discovery_and_a_patient_view_with_the_documented_cards(
        self,
        served: Running,
    ) -> None:
        assert httpx.get(f"{served.url}/healthz", timeout=10).json() == {"status": "ok"}
        discovery = httpx.get(f"{served.url}/cds-services", timeout=10).json()
        assert {s["id"] for s in discovery["services"]} == {
            "als-patient-view",
            "als-order-select",
            "als-order-sign",
        }
        answer = httpx.post(
            f"{served.url}/cds-services/als-patient-view", json=hook_request(REQUEST), timeout=30
        )
        assert answer.status_code == 200, answer.text
        assert shown_rules(answer.json()) == documented_cards(f"{REQUEST}.json")

    def test_the_image_keeps_feedback_in_its_default_sqlite_file_which_only_its_user_may_write(
        self,
        served: Running,
    ) -> None:
        cards = httpx.post(
            f"{served.url}/cds-services/als-patient-view", json=hook_request(REQUEST), timeout=30
        )
        stored = httpx.post(
            f"{served.url}/cds-services/als-patient-view/feedback",
            json=feedback_on(cards.json()["cards"][0]),
            timeout=30,
        )
        assert stored.status_code == 200 and stored.json()["stored"] == 1, stored.text
        owner = podman.run(
            ["podman", "exec", served.name, "stat", "-c", "%u %a", "/app/data", "/app/data/als-cds.db"]
        )
        assert (
            owner.stdout.split("\n")[0].split()[0] == "10001"
            and owner.stdout.split("\n")[1].split()[0] == "10001"
        )
        # The code and card files stay root's: the service user cannot write beside them.
        refused = podman.run(["podman", "exec", served.name, "touch", "/app/cards/x", "/app/x"], check=False)
        assert refused.returncode != 0 and "Permission denied" in refused.stderr, refused.stderr

    def test_the_image_passes_its_own_healthcheck(self, served: Running, image: str) -> None:
        assert "/healthz" in " ".join(
            json.loads(
                podman.run(
                    ["podman", "image", "inspect", "--format", "{{json .Config.Healthcheck.Test}}", image]
                ).stdout
            )
        )
        assert podman.run(["podman", "healthcheck", "run", served.name], check=False).returncode == 0

    def test_the_images_healthcheck_fails_when_the_service_does_not_answer(self, image: str) -> None:
        """The same check, in a container of the image where the service is not running."""
        name = f"als-cds-test-idle-{podman.OWNER}"
        try:
            podman.run(
                ["podman", "run", "--detach", "--name", name,
                 "--label", f"{podman.OWNER_LABEL}={podman.OWNER}",
                 "--entrypoint", "python", image, "-c", "import time; time.sleep(120)"]
            )  # fmt: skip
            checked = podman.run(["podman", "healthcheck", "run", name], check=False, timeout=60)
            assert checked.returncode != 0, checked.stdout + checked.stderr
        finally:
            podman.remove_container(name)

    def test_the_image_stops_cleanly_on_sigterm(self, image: str) -> None:
        name = f"als-cds-test-stop-{podman.OWNER}"
        podman.remove_container(name)
        try:
            running = start_container(image, name, env={"ALS_CDS_AUTH_REQUIRED": "false"})
            podman.wait_until_answers(f"{running.url}/healthz", START_SECONDS, container=name)
            assert (
                httpx.post(
                    f"{running.url}/cds-services/als-patient-view", json=hook_request(REQUEST), timeout=30
                ).status_code
                == 200
            )
            started = time.monotonic()
            podman.run(["podman", "kill", "--signal", "TERM", name])
            status = podman.wait_exit(name, STOP_SECONDS)
            took = time.monotonic() - started
            log = podman.logs(name)
            assert status == 0, log  # 143 would be a process killed by the signal, 137 by SIGKILL
            assert took < 15, f"{took:.1f} s to stop"
            assert "Application shutdown complete" in log and "Traceback" not in log, log
        finally:
            podman.remove_container(name)


# -- Kubernetes manifests, played ---------------------------------------------------------------

EHR = "https://ehr.example.org"
KEY = ec.generate_private_key(ec.SECP384R1())
KEY_SET = {
    "keys": [{**ECAlgorithm.to_jwk(KEY.public_key(), as_dict=True), "kid": "deploy-test", "alg": "ES384"}]
}


def manifest(name: str) -> dict[str, Any]:
    return yaml.safe_load((KUBE / name).read_text(encoding="utf-8"))


def with_image(spec: dict[str, Any], image: str) -> dict[str, Any]:
    """A pod spec with the tested image in place of the registry's, and our owner label."""
    for container in spec["containers"]:
        container["image"] = image
    return spec


def owned(metadata: dict[str, Any]) -> dict[str, Any]:
    return {**metadata, "labels": {**metadata.get("labels", {}), podman.OWNER_LABEL: podman.OWNER}}


@dataclass
class Played:
    url: str
    database_url: str
    deployment: dict[str, Any]
    public_base: str


def token(public_base: str, path: str) -> str:
    now = int(time.time())
    claims = {"iss": EHR, "aud": public_base + path, "iat": now, "exp": now + 300, "jti": str(uuid.uuid4())}
    return jwt.encode(claims, KEY, algorithm="ES384", headers={"kid": "deploy-test", "typ": "JWT"})


def pod_container(deployment: dict[str, Any]) -> str:
    """The name podman gives the container of a Deployment's (one) pod."""
    name = deployment["spec"]["template"]["spec"]["containers"][0]["name"]
    return f"{deployment['metadata']['name']}-pod-0-{name}"


def libpq(url: str, database: str | None = None) -> str:
    parsed = make_url(url).set(drivername="postgresql")
    return (parsed.set(database=database) if database else parsed).render_as_string(hide_password=False)


@pytest.fixture(scope="class")
def played(image: str, postgres_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Played]:
    """The migration Job's pod, then the Deployment's, played with `podman kube play` on the host's
    network against a PostgreSQL listening on loopback (the test suite's own server)."""
    folder = tmp_path_factory.mktemp("kube")
    database = f"als_cds_kube_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(libpq(postgres_url, "postgres"), autocommit=True) as admin:
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(database)))
    database_url = make_url(postgres_url).set(database=database).render_as_string(hide_password=False)

    config = manifest("configmap.yaml")
    port = podman.free_port()
    # The one change to the settings: the pod shares the host's network here, so it listens on a
    # free loopback port rather than on every interface at 8080.
    config["data"].update({"ALS_CDS_HOST": "127.0.0.1", "ALS_CDS_PORT": str(port)})
    job, deployment = manifest("migration-job.yaml"), manifest("deployment.yaml")
    # A Job is not something podman plays: its pod template is, as the pod a Job would start.
    job_pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": owned({"name": job["metadata"]["name"], **job["spec"]["template"]["metadata"]}),
        "spec": with_image(job["spec"]["template"]["spec"], image),
    }
    deployment["spec"]["template"]["metadata"] = owned(deployment["spec"]["template"]["metadata"])
    with_image(deployment["spec"]["template"]["spec"], image)
    # On the host's network a container port means nothing, and podman 4.3 refuses to play one
    # there ("PortMappings can only be used with Bridge or slirp4netns networking").
    played_deployment = copy.deepcopy(deployment)
    # podman starts every replica; on one network namespace they would all need the one port.
    played_deployment["spec"]["replicas"] = 1
    for container in played_deployment["spec"]["template"]["spec"]["containers"]:
        container.pop("ports", None)
    job_file, deployment_file = folder / "job.yaml", folder / "deployment.yaml"
    job_file.write_text(yaml.safe_dump_all([config, job_pod]), encoding="utf-8")
    deployment_file.write_text(yaml.safe_dump_all([config, played_deployment]), encoding="utf-8")

    # The Secret of secret.example.yaml with real values, created out of band as the manifests
    # ask. podman 4.3 reads a Secret's keys from a podman secret holding JSON (key → base64).
    secret_name = manifest("secret.example.yaml")["metadata"]["name"]
    values = {
        "ALS_CDS_DATABASE_URL": database_url,
        "ALS_CDS_TRUSTED_CLIENTS": json.dumps({EHR: {"jwks": KEY_SET}}),
    }
    assert set(values) == set(manifest("secret.example.yaml")["stringData"])
    secret_file = folder / "secret.json"
    secret_file.write_text(json.dumps({k: base64.b64encode(v.encode()).decode() for k, v in values.items()}))
    podman.run(["podman", "secret", "rm", secret_name], check=False)
    container = pod_container(deployment)
    try:
        podman.run(["podman", "secret", "create", secret_name, str(secret_file)])
        secret_file.unlink()
        podman.run(["podman", "kube", "play", "--network", "host", str(job_file)])
        migrate = f"{job_pod['metadata']['name']}-{job_pod['spec']['containers'][0]['name']}"
        status = podman.wait_exit(migrate, START_SECONDS)
        assert status == 0, podman.logs(migrate)
        podman.run(["podman", "kube", "down", str(job_file)])
        podman.run(["podman", "kube", "play", "--network", "host", str(deployment_file)])
        podman.wait_until_answers(f"http://127.0.0.1:{port}/healthz", START_SECONDS, container=container)
        yield Played(
            f"http://127.0.0.1:{port}", database_url, deployment, config["data"]["ALS_CDS_PUBLIC_BASE_URL"]
        )
    finally:
        for played_file in (deployment_file, job_file):
            podman.run(["podman", "kube", "down", str(played_file)], check=False)
        podman.run(["podman", "secret", "rm", secret_name], check=False)
        with psycopg.connect(libpq(postgres_url, "postgres"), autocommit=True) as admin:
            admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(database)))


class TestTheKubernetesManifestsPlayed:
    """The migration Job's pod, then the Deployment's, played with `podman kube play`."""

    def test_the_migration_jobs_pod_brings_the_schema_up_to_date(self, played: Played) -> None:
        with psycopg.connect(libpq(played.database_url)) as db:
            tables = {
                row[0] for row in db.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
            }
            version = db.execute("SELECT version_num FROM alembic_version").fetchall()
        assert {"issued_cards", "feedback", "jwt_replay", "alembic_version"} <= tables
        assert len(version) == 1

    def test_the_deployments_pod_answers_its_probes_paths(self, played: Played) -> None:
        container = played.deployment["spec"]["template"]["spec"]["containers"][0]
        for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
            answer = httpx.get(played.url + container[probe]["httpGet"]["path"], timeout=10)
            assert answer.status_code == 200, (probe, answer.text)

    def test_the_deployments_pod_answers_a_signed_hook_call_with_cards_and_keeps_feedback_in_postgresql(
        self,
        played: Played,
    ) -> None:
        service = "/cds-services/als-patient-view"
        refused = httpx.post(played.url + service, json=hook_request(REQUEST), timeout=30)
        assert refused.status_code == 401  # authentication is on, as the ConfigMap says
        answer = httpx.post(
            played.url + service,
            json=hook_request(REQUEST),
            headers={"Authorization": f"Bearer {token(played.public_base, service)}"},
            timeout=30,
        )
        assert answer.status_code == 200, answer.text
        assert shown_rules(answer.json()) == documented_cards(f"{REQUEST}.json")
        card = answer.json()["cards"][0]
        stored = httpx.post(
            played.url + service + "/feedback",
            json=feedback_on(card),
            headers={"Authorization": f"Bearer {token(played.public_base, service + '/feedback')}"},
            timeout=30,
        )
        assert stored.status_code == 200 and stored.json()["stored"] == 1, stored.text
        with psycopg.connect(libpq(played.database_url)) as db:
            rows = db.execute("SELECT outcome FROM feedback WHERE card_uuid = %s", (card["uuid"],)).fetchall()
        assert rows == [("overridden",)]

    def test_the_deployments_pod_runs_as_its_security_context_says(self, played: Played) -> None:
        spec = played.deployment["spec"]["template"]["spec"]
        container = pod_container(played.deployment)
        assert podman.run(["podman", "exec", container, "id", "-u"]).stdout.strip() == str(
            spec["securityContext"]["runAsUser"]
        )
        assert podman.inspect(container, "{{.HostConfig.ReadonlyRootfs}}") == "true"
        refused = podman.run(["podman", "exec", container, "touch", "/app/data/x"], check=False)
        assert refused.returncode != 0 and "Read-only file system" in refused.stderr, refused.stderr
        podman.run(["podman", "exec", container, "touch", "/tmp/x"])  # the emptyDir volume


# -- the compose stack --------------------------------------------------------------------------


@dataclass
class Stack:
    project: str
    url: str
    env: dict[str, str]

    def container(self, service: str) -> str:
        found = podman.run(
            ["podman", "ps", "--all", "--quiet",
             "--filter", f"label=io.podman.compose.project={self.project}",
             "--filter", f"label=io.podman.compose.service={service}"]
        ).stdout.split()  # fmt: skip
        assert len(found) == 1, (service, found)
        return found[0]


def compose_order(services: dict[str, Any]) -> list[str]:
    """The services in an order that starts each after what it depends on."""
    order: list[str] = []

    def visit(name: str, path: tuple[str, ...]) -> None:
        assert name not in path, f"compose.yaml: a dependency cycle through {name}"
        for dependency in services[name].get("depends_on", {}):
            visit(dependency, (*path, name))
        if name not in order:
            order.append(name)

    for name in services:
        visit(name, ())
    return order


@pytest.fixture(scope="class")
def stack(python_base: str) -> Iterator[Stack]:
    """deploy/compose.yaml up with podman-compose, each service started once its depends_on holds.

    podman 4.3 cannot wait for compose's conditions itself (podman-compose ignores service_healthy
    before podman 4.6, and podman runs healthchecks from systemd timers, which these machines lack),
    so the test waits for each one: a service_healthy dependency's own healthcheck is run until it
    passes, a service_completed_successfully one must have exited 0.
    """
    compose_tool = shutil.which("podman-compose") or str(Path(sys.executable).parent / "podman-compose")
    if not Path(compose_tool).exists():
        pytest.fail("podman-compose is not installed (it is in the test extras of pyproject.toml)")
    project = podman.compose_project()
    port = podman.free_port()
    env = {
        **os.environ,
        "STACK_BASE_IMAGE": python_base,
        "STACK_NODE_BASE_IMAGE": podman.base_image("node"),
        "STACK_POSTGRES_IMAGE": podman.base_image("postgres"),
        "STACK_PORT": str(port),
        "STACK_FHIR_PORT": str(podman.free_port()),
        "BUILDAH_FORMAT": "docker",
    }
    compose = [compose_tool, "--project-name", project, "--file", str(DEPLOY / "compose.yaml")]
    services = yaml.safe_load((DEPLOY / "compose.yaml").read_text(encoding="utf-8"))["services"]
    running = Stack(project, f"http://127.0.0.1:{port}", env)
    podman.remove_compose_project(project)
    try:
        podman.run([*compose, "build"], env=env, timeout=podman.BUILD_SECONDS)
        for name in compose_order(services):
            for dependency, rule in services[name].get("depends_on", {}).items():
                wait_for_condition(running, dependency, rule["condition"])
            podman.run([*compose, "up", "--detach", "--no-deps", name], env=env)
        podman.wait_until_answers(
            f"{running.url}/readyz", START_SECONDS, container=running.container("als-cds")
        )
        yield running
    finally:
        podman.run([*compose, "down", "--volumes", "--timeout", "10"], env=env, check=False, timeout=180)
        podman.remove_compose_project(project)


def wait_for_condition(stack: Stack, service: str, condition: str) -> None:
    container = stack.container(service)
    if condition == "service_healthy":
        deadline = time.monotonic() + START_SECONDS
        while podman.run(["podman", "healthcheck", "run", container], check=False).returncode != 0:
            if time.monotonic() > deadline:
                pytest.fail(f"{service} not healthy after {START_SECONDS} s:\n{podman.logs(container)}")
            time.sleep(1)
    elif condition == "service_completed_successfully":
        status = podman.wait_exit(container, START_SECONDS)
        assert status == 0, f"{service} exited {status}:\n{podman.logs(container)}"
    else:
        assert condition == "service_started", condition
        assert podman.inspect(container, "{{.State.Status}}") == "running", podman.logs(container)


class TestTheComposeStack:
    """deploy/compose.yaml up with podman-compose."""

    def test_the_compose_stack_migrates_postgresql_and_loads_every_fixture_patient(
        self, stack: Stack
    ) -> None:
        assert podman.wait_exit(stack.container("migrate"), 10) == 0
        loader = stack.container("fhir-loader")
        assert podman.wait_exit(loader, START_SECONDS) == 0, podman.logs(loader)
        loaded = re.findall(r"^loaded (\S+) ", podman.logs(loader), re.M)
        assert sorted(loaded) == sorted(p.stem for p in (FIXTURES / "patients").glob("*.json"))

    def test_a_compose_hook_call_without_prefetch_reads_the_fhir_server_and_its_feedback_lands_in_postgresql(
        self,
        stack: Stack,
    ) -> None:
        assert podman.wait_exit(stack.container("fhir-loader"), START_SECONDS) == 0
        request = hook_request(FETCH_REQUEST)
        assert "prefetch" not in request
        patient = request["context"]["patientId"]
        request["fhirServer"] = f"http://fhir:8080/tenants/{patient}/fhir"  # as the service reaches it
        answer = httpx.post(f"{stack.url}/cds-services/als-patient-view", json=request, timeout=60)
        assert answer.status_code == 200, answer.text
        assert shown_rules(answer.json()) == documented_cards(f"{FETCH_REQUEST}.json")
        fetched = re.findall(
            rf"^GET /tenants/{re.escape(patient)}/fhir/(\w+)[/?]\S* 200",
            podman.logs(stack.container("fhir")),
            re.M,
        )
        assert {"Patient", "Condition", "MedicationRequest", "Observation"} <= set(fetched), fetched

        card = answer.json()["cards"][0]
        stored = httpx.post(
            f"{stack.url}/cds-services/als-patient-view/feedback", json=feedback_on(card), timeout=30
        )
        assert stored.status_code == 200 and stored.json()["stored"] == 1, stored.text
        query = f"SELECT outcome FROM feedback WHERE card_uuid = '{uuid.UUID(card['uuid'])}'"
        rows = podman.run(
            ["podman", "exec", stack.container("db"), "psql", "-U", "als_cds", "-d", "als_cds", "-tAc", query]
        )
        assert rows.stdout.strip() == "overridden"
