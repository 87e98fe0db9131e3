"""The command line: `als-cds evaluate`, `als-cds docs`, `als-cds serve`, and its mistakes."""

from __future__ import annotations

import datetime as dt
import ipaddress
import json
import os
import re
import socket
import ssl
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from cds_service.catalogue_doc import render_catalogue
from cds_service.cli import main
from cds_service.settings import Settings
from tests.support import FIXTURES, ROOT

NOW = "2026-11-22T12:00:00+00:00"


def test_committed_rule_catalogue_page_matches_the_rules() -> None:
    committed = (ROOT / "docs" / "rules.md").read_text(encoding="utf-8")
    assert committed == render_catalogue(Settings(_env_file=None).cards_dir), (
        "docs/rules.md is out of date: run `als-cds docs`"
    )


def test_evaluate_a_patient_bundle_prints_its_cards(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["evaluate", str(FIXTURES / "patients" / "als-riluzole-lft-overdue.json"), "--now", NOW])
    out = capsys.readouterr().out
    assert code == 0
    assert "als-patient-view (patient-view) at 2026-11-22" in out
    assert "rule: riluzole-lft-due" in out


def test_evaluate_a_hook_request_as_json(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(
        [
            "evaluate",
            str(FIXTURES / "requests" / "patient-view-no-als-on-riluzole.json"),
            "--now",
            NOW,
            "--json",
        ]
    )
    assert code == 0
    assert json.loads(capsys.readouterr().out) == {"cards": []}


def test_evaluate_reports_what_the_service_would_refuse(capsys: pytest.CaptureFixture[str], tmp_path) -> None:
    request = json.loads((FIXTURES / "requests" / "patient-view-als-riluzole-lft-overdue.json").read_text())
    del request["prefetch"]
    path = tmp_path / "no-prefetch.json"
    path.write_text(json.dumps(request))
    assert main(["evaluate", str(path), "--now", NOW]) == 1
    assert "HTTP 412" in capsys.readouterr().err


def test_evaluate_refuses_a_file_that_is_not_a_request_or_bundle(
    capsys: pytest.CaptureFixture[str], tmp_path
) -> None:
    path = tmp_path / "x.json"
    path.write_text('{"resourceType": "Patient"}')
    assert main(["evaluate", str(path)]) == 2
    assert "neither" in capsys.readouterr().err


def test_evaluate_strict_lists_each_deviation_with_what_was_done_and_exits_1(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The CDS Hooks sandbox's Rx View body: category sent as one object."""
    path = FIXTURES / "requests" / "sandbox-rx-view-order-select.json"
    code = main(["evaluate", str(path), "--now", NOW, "--strict"])
    out = capsys.readouterr().out
    assert code == 1
    assert "rule: riluzole-order-liver" in out  # the cards are still there
    assert "repaired         MedicationRequest/request-123 category: one value where a list belongs" in out
    assert "not valid R4     MedicationRequest/request-123 category: Input should be a valid list" in out


def test_evaluate_strict_on_clean_data_says_so_and_exits_0(capsys: pytest.CaptureFixture[str]) -> None:
    path = FIXTURES / "requests" / "patient-view-als-riluzole-lft-overdue.json"
    assert main(["evaluate", str(path), "--now", NOW, "--strict"]) == 0
    clean = "Strict check: every resource is valid R4, and the reader repaired nothing."
    assert clean in capsys.readouterr().out


def test_evaluate_strict_with_json_keeps_stdout_the_response(capsys: pytest.CaptureFixture[str]) -> None:
    path = FIXTURES / "requests" / "sandbox-rx-view-order-select.json"
    assert main(["evaluate", str(path), "--now", NOW, "--strict", "--json"]) == 1
    captured = capsys.readouterr()
    assert "riluzole-order-liver" in [c["source"]["topic"]["code"] for c in json.loads(captured.out)["cards"]]
    assert "Strict check:" in captured.err


# -- mistakes in the settings and arguments: one line, the setting, an example, exit status 2 ------

JWKS_URL = "https://ehr.example.org/jwks.json"


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _cli(
    args: list[str], env: dict[str, str], cwd: Path, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    """`als-cds ARGS` in a fresh process, with only the ALS_CDS_* settings given here."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("ALS_CDS_")}
    return subprocess.run(
        [sys.executable, "-m", "cds_service.cli", *args],
        env={**clean, "ALS_CDS_PORT": str(_free_port()), **env},  # a start that should fail is harmless
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def _one_line(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("als-cds: ")
    return lines[0]


@pytest.mark.parametrize(
    ("args", "env", "expected"),
    [
        pytest.param(
            ["serve"],
            {"ALS_CDS_AUTH_REQUIRED": "true"},
            ["ALS_CDS_TRUSTED_CLIENTS is empty", "ALS_CDS_AUTH_REQUIRED", "e.g. ALS_CDS_TRUSTED_CLIENTS='{"],
            id="auth-on-without-trusted-clients",
        ),
        pytest.param(
            ["serve"],
            {"ALS_CDS_TRUSTED_CLIENTS": " "},
            ["ALS_CDS_TRUSTED_CLIENTS: set but empty", "e.g. ALS_CDS_TRUSTED_CLIENTS='{"],
            id="trusted-clients-set-but-empty",
        ),
        pytest.param(
            ["migrate"],
            {"ALS_CDS_PORT": "abc"},
            ["ALS_CDS_PORT", "valid integer", "'abc'", "e.g. ALS_CDS_PORT=8080"],
            id="port-not-a-number",
        ),
        pytest.param(
            ["serve"],
            {
                "ALS_CDS_TRUSTED_CLIENTS": json.dumps(
                    {"https://ehr.example.org": {"jwks_url": JWKS_URL, "jwk": {}}}
                )
            },
            [
                "ALS_CDS_TRUSTED_CLIENTS",
                "'https://ehr.example.org'",
                "'jwk'",
                "unknown member",
                "jwks_url, jwks",
                "e.g.",
            ],
            id="unknown-member-in-a-trusted-client",
        ),
        pytest.param(
            ["serve"],
            {
                "ALS_CDS_TRUSTED_CLIENTS": json.dumps(
                    {
                        "https://ehr.example.org": {
                            "jwks": {"keys": [{"kty": "EC", "kid": "k1", "crv": "P-256"}]}
                        }
                    }
                )
            },
            ["ALS_CDS_TRUSTED_CLIENTS", "'https://ehr.example.org'", "(README, Authentication)"],
            id="trusted-client-key-that-does-not-load",
        ),
        pytest.param(
            ["docs", "--output", "-"],
            {"ALS_CDS_TRUSTED_CLIENTS": "{'https://ehr.example.org': {}}"},
            ["ALS_CDS_TRUSTED_CLIENTS", "not valid JSON", "e.g. ALS_CDS_TRUSTED_CLIENTS='{"],
            id="trusted-clients-not-json",
        ),
        pytest.param(
            ["evaluate", str(FIXTURES / "requests" / "order-select-riluzole.json"), "--now", "notadate"],
            {},
            ["--now", "'notadate'", "ISO 8601", "e.g. --now 2026-11-22"],
            id="evaluate-now-not-a-date",
        ),
        pytest.param(
            ["check-fhir", "http://127.0.0.1:9/fhir", "--patient", "p1", "--now", "notadate"],
            {},
            ["--now", "'notadate'", "ISO 8601", "e.g. --now 2026-11-22"],
            id="check-fhir-now-not-a-date",
        ),
        pytest.param(
            ["serve", "--ssl-certfile", "cert.pem"],
            {"ALS_CDS_AUTH_REQUIRED": "false"},
            ["--ssl-certfile (ALS_CDS_SSL_CERTFILE) is set", "ALS_CDS_SSL_KEYFILE", "e.g."],
            id="certificate-without-key",
        ),
        pytest.param(
            ["serve"],
            {
                "ALS_CDS_AUTH_REQUIRED": "false",
                "ALS_CDS_SSL_CERTFILE": "cert.pem",
                "ALS_CDS_SSL_KEYFILE": "key.pem",
            },
            ["ALS_CDS_SSL_CERTFILE: no such file 'cert.pem'", "e.g. ALS_CDS_SSL_CERTFILE="],
            id="certificate-file-missing",
        ),
    ],
)
def test_a_configuration_mistake_is_one_line_with_the_setting_and_an_example(
    args: list[str], env: dict[str, str], expected: list[str], tmp_path: Path
) -> None:
    line = _one_line(_cli(args, env, tmp_path))
    for part in expected:
        assert part in line, line


def test_a_port_in_use_is_one_line_naming_the_setting_and_what_to_do(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        line = _one_line(
            _cli(["serve"], {"ALS_CDS_AUTH_REQUIRED": "false", "ALS_CDS_PORT": str(port)}, tmp_path)
        )
    assert f"port {port} on 127.0.0.1 is already in use" in line
    assert "ALS_CDS_PORT" in line and "--port" in line and "e.g. --port" in line
    assert "serving on" not in line and "starting" not in line


# -- HTTPS for a local trial ------------------------------------------------------------------------


def _self_signed(tmp_path: Path) -> tuple[Path, Path]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return cert_path, key_path


def test_serve_answers_https_with_the_certificate_given(tmp_path: Path) -> None:
    cert, key = _self_signed(tmp_path)
    port = _free_port()
    clean = {k: v for k, v in os.environ.items() if not k.startswith("ALS_CDS_")}
    env = {
        **clean,
        "ALS_CDS_AUTH_REQUIRED": "false",
        "ALS_CDS_HOST": "127.0.0.1",
        "ALS_CDS_PORT": str(port),
        "ALS_CDS_DATABASE_URL": f"sqlite:///{tmp_path / 'als-cds.db'}",
    }
    log = tmp_path / "serve.log"
    command = [
        sys.executable,
        "-m",
        "cds_service.cli",
        "serve",
        "--ssl-certfile",
        str(cert),
        "--ssl-keyfile",
        str(key),
    ]
    with log.open("wb") as sink:
        proc = subprocess.Popen(command, cwd=tmp_path, env=env, stdout=sink, stderr=sink)
    trust = ssl.create_default_context(cafile=str(cert))
    answer = None
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and proc.poll() is None and answer is None:
            try:
                answer = httpx.get(f"https://127.0.0.1:{port}/healthz", verify=trust, timeout=2)
            except httpx.HTTPError:
                time.sleep(0.1)
        with pytest.raises(httpx.HTTPError):  # plain http on the same port is not answered
            httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2)
    finally:
        proc.terminate()
        proc.wait(30)
    text = log.read_text(encoding="utf-8", errors="replace")
    assert answer is not None and answer.status_code == 200, text[-3000:]
    assert answer.json() == {"status": "ok"}
    # The server's own lines: readable, in order, with no placeholder and no colour code.
    starting = text.index(f"als-cds: starting on https://127.0.0.1:{port}/cds-services")
    listening = text.index(f"Uvicorn running on https://127.0.0.1:{port} (Press CTRL+C to quit)")
    assert starting < listening
    assert re.search(r'"event": "Started server process \[\d+\]"', text)
    assert "%d" not in text and "%s" not in text
    assert "\\u001b" not in text and "\x1b" not in text and "color_message" not in text


def test_a_now_without_a_zone_is_the_sites_time_not_this_machines() -> None:
    from datetime import UTC, datetime
    from zoneinfo import ZoneInfo

    from cds_service.cli import _parse_now

    new_york = ZoneInfo("America/New_York")
    assert _parse_now("2026-11-22T12:00", new_york) == datetime(2026, 11, 22, 17, 0, tzinfo=UTC)
    assert _parse_now("2026-11-22", new_york) == datetime(2026, 11, 22, 5, 0, tzinfo=UTC)
    assert _parse_now("2026-11-22T12:00+01:00", new_york) == datetime(2026, 11, 22, 11, 0, tzinfo=UTC)
    assert _parse_now("2026-11-22T12:00") == datetime(2026, 11, 22, 12, 0, tzinfo=UTC)  # site default UTC


def test_the_catalogue_prints_each_cards_length() -> None:
    """Issue 10: card length per rule in the catalogue (the target: every detail under 120 words)."""
    from cds_service.catalogue_doc import word_count
    from cds_service.rules import CATALOGUE

    page = render_catalogue(Settings(_env_file=None).cards_dir)
    sections = page.split("\n## ")[1:]
    assert len(sections) == len(CATALOGUE)
    for section in sections:
        assert "\n- Length: summary " in section and " words in " in section, section.splitlines()[0]
    assert word_count("**Stop** riluzole: see [SmPC](https://x) {drug}") == 5
