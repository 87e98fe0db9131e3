"""Every setting of the service, read from `ALS_CDS_*` environment variables (or a `.env` file).

The defaults are the embedded quickstart: a SQLite file in the working directory, the card data and
fixtures bundled in this repository, CORS open to the CDS Hooks sandbox. Production deployments
override them; the README lists each one.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

_REPO_ROOT = Path(__file__).resolve().parent.parent


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="ALS_CDS_", env_file=".env", env_file_encoding="utf-8", extra="ignore"
    )

    # -- serving ---------------------------------------------------------------------------------
    host: str = Field("127.0.0.1", description="Interface `als-cds serve` binds to.")
    port: int = Field(8080, ge=1, le=65535, description="Port `als-cds serve` listens on.")
    workers: int = Field(1, ge=1, description="Uvicorn worker processes for `als-cds serve`.")
    log_level: Literal["debug", "info", "warning", "error"] = Field("info", description="Log level.")

    # -- storage ---------------------------------------------------------------------------------
    database_url: str = Field(
        "sqlite:///./als-cds.db",
        description="SQLAlchemy URL of the feedback store: a SQLite file by default, "
        "`postgresql+psycopg://user:pass@host/db` in production.",
    )
    migrate_on_start: bool = Field(
        True,
        description="Apply Alembic migrations when the service starts. Switch off where a separate "
        "migration job runs `als-cds migrate` (Kubernetes).",
    )

    # -- content ---------------------------------------------------------------------------------
    cards_dir: Path = Field(
        _REPO_ROOT / "cards", description="Folder of card definitions, one TOML file per rule id."
    )
    profile: Literal["nice", "us"] = Field(
        "nice",
        description="Guideline profile for the cards where UK (NICE) and US guidance differ.",
    )
    riluzole_lft_interval_after_year1_days: int = Field(
        365,
        ge=28,
        le=730,
        description="Interval between ALT checks after the first year of riluzole. The SmPC says "
        "'periodically'; NICE TA20 3.3 says annually, hence 365.",
    )

    alt_uln_default_male: float = Field(
        33,
        gt=0,
        description="ALT upper limit of normal (U/L) for men, used only when a result carries no "
        "reference range. ACG 2017 (Kwo et al.): a healthy ALT is up to 29-33 IU/L in men.",
    )
    alt_uln_default_female: float = Field(
        25,
        gt=0,
        description="ALT upper limit of normal (U/L) for women and for patients whose sex is not "
        "recorded (the lower limit errs towards flagging). ACG 2017: up to 19-25 IU/L in women.",
    )
    neutrophil_lower_limit: float = Field(
        1.5,
        gt=0,
        description="Neutrophil lower limit (10^9/L) used when a result carries no reference range.",
    )
    mdt_interval_days: int = Field(
        92,
        ge=28,
        le=365,
        description="Multidisciplinary review interval: NICE NG42 1.5.2 'usually every 2 to 3 months'.",
    )
    mdt_encounter_codes: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Extra `system|code` encounter type codes (comma-separated) that count as an MND "
        "multidisciplinary clinic visit, for sites with local clinic codes.",
    )
    respiratory_interval_days: int = Field(
        92,
        ge=28,
        le=365,
        description="Respiratory assessment interval: NICE NG42 1.14.10 / QS126 'every 2 to 3 months'.",
    )

    # -- talking to the EHR's FHIR server --------------------------------------------------------
    fhir_budget_seconds: float = Field(
        4.0,
        gt=0,
        le=60,
        description="Time budget for all FHIR fetches of one hook call (missing prefetch keys, "
        "next pages). What has not arrived by then counts as unavailable.",
    )
    fhir_max_pages: int = Field(
        20, ge=1, le=1000, description="Most `next` pages followed for one prefetch key."
    )
    fhir_max_connections: int = Field(
        50, ge=1, description="Connection pool size of the shared FHIR HTTP client."
    )

    max_body_bytes: int = Field(
        5_000_000,
        ge=10_000,
        le=100_000_000,
        description="Largest request body accepted (413 above it). A hook call with full prefetch of a "
        "large chart is a few hundred kB; 5 MB leaves ample room.",
    )

    # -- browsers --------------------------------------------------------------------------------
    cors_origins: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: ["https://sandbox.cds-hooks.org", "http://localhost:8080"],
        description="Origins allowed by CORS, comma-separated (`*` for any). Preflight OPTIONS "
        "requests never need a token.",
    )

    @field_validator("cors_origins", "mdt_encounter_codes", mode="before")
    @classmethod
    def _split_origins(cls, value: object) -> object:
        if isinstance(value, str):
            return [o.strip() for o in value.split(",") if o.strip()]
        return value

    @property
    def encounter_lookback_days(self) -> int:
        """How far back the Encounter prefetch reaches: one MDT interval plus a month."""
        return self.mdt_interval_days + 31

    @property
    def observation_lookback_days(self) -> int:
        """How far back the Observation prefetch reaches.

        The longest look-back any rule needs (the ALT interval after the first year of riluzole,
        or the 12 months of weight history for weight loss), plus one month so that a result taken
        just before the interval ends is seen.
        """
        return max(self.riluzole_lft_interval_after_year1_days, 365) + 31


def get_settings() -> Settings:
    return Settings()
