"""The README and the integration guide explain jku pinning with one text, and its examples work.

The explanation and the sandbox's offline configuration are written once and kept identical in
README.md and docs/integration.md (between `<!-- jku pinning ... -->` markers): a change to one
that is not made to the other fails here. The configurations it shows are checked as the service
reads them, and the sandbox key it prints must be the key the sandbox publishes.
"""

from __future__ import annotations

import json
import re
import textwrap
from pathlib import Path

from cds_service.security import parse_key_set
from cds_service.settings import Settings
from tests.support import ROOT

SANDBOX_ISS = "https://sandbox.cds-hooks.org"
SANDBOX_JKU = "https://sandbox.cds-hooks.org/.well-known/jwks.json"
PUBLISHED = ROOT / "tests" / "spec_examples" / "jwks-cds-hooks-sandbox.json"  # see PROVENANCE.md
SANDBOX_BUILD_JWKS = ROOT.parent / "shared" / "clients" / "cds-hooks-sandbox" / ".well-known" / "jwks.json"


def block(page: Path) -> str:
    text = page.read_text(encoding="utf-8")
    found = re.search(r"^[ \t]*<!-- jku pinning:.*?-->\n(.*?)^[ \t]*<!-- /jku pinning -->", text, re.S | re.M)
    assert found, f"{page.relative_to(ROOT)} has no jku pinning block"
    return textwrap.dedent(found.group(1))


def configurations(text: str) -> list[dict]:
    """Each ALS_CDS_TRUSTED_CLIENTS value the block shows (the quoted one and the inline ones)."""
    values = re.findall(r"ALS_CDS_TRUSTED_CLIENTS='(\{.*?\})'", text)
    values += re.findall(r"`(\{\"https://sandbox\.cds-hooks\.org\".*?\})`", text)
    return [json.loads(value) for value in values]


def test_the_readme_and_the_integration_guide_say_the_same() -> None:
    assert block(ROOT / "README.md") == block(ROOT / "docs" / "integration.md")


def test_the_sandbox_key_shown_is_the_one_the_sandbox_publishes() -> None:
    [inline] = [
        c
        for c in configurations(block(ROOT / "README.md"))
        if isinstance(c[SANDBOX_ISS].get("jku_keys", {}).get(SANDBOX_JKU), dict)
    ]
    shown = inline[SANDBOX_ISS]["jku_keys"][SANDBOX_JKU]
    assert shown == json.loads(PUBLISHED.read_text(encoding="utf-8"))
    if SANDBOX_BUILD_JWKS.is_file():  # the build beside the clone, when there
        assert shown == json.loads(SANDBOX_BUILD_JWKS.read_text(encoding="utf-8"))
    assert list(parse_key_set(shown)) == ["44823f3d-0b01-4a6c-a80e-b9d3e8a7226f"]
    assert all("d" not in key for key in shown["keys"])  # public only


def test_every_configuration_shown_is_one_the_service_accepts(tmp_path: Path) -> None:
    text = block(ROOT / "README.md")
    assert "never in production" in text
    shown = configurations(text)
    assert len(shown) == 3  # inline, from a file, fetched
    keys_file = tmp_path / "sandbox-jwks.json"
    keys_file.write_text(PUBLISHED.read_text(encoding="utf-8"), encoding="utf-8")
    for configuration in shown:
        pinned = configuration[SANDBOX_ISS].get("jku_keys", {})
        if isinstance(pinned.get(SANDBOX_JKU), str):  # the example path, here a real file
            pinned[SANDBOX_JKU] = str(keys_file)
        client = Settings(_env_file=None, trusted_clients=configuration).trusted_clients[SANDBOX_ISS]
        assert SANDBOX_JKU in client.jku_keys or SANDBOX_JKU in client.jku


def test_the_default_cors_origins_are_documented() -> None:
    """The settings table gives the default as it is; the guide names each origin."""
    defaults = Settings.model_fields["cors_origins"].get_default(call_default_factory=True)
    assert f"| `ALS_CDS_CORS_ORIGINS` | `{','.join(defaults)}` |" in (ROOT / "README.md").read_text(
        encoding="utf-8"
    )
    guide = (ROOT / "docs" / "integration.md").read_text(encoding="utf-8")
    assert all(f"`{origin}`" in guide for origin in defaults)
