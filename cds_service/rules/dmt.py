"""Edaravone, tofersen and sodium phenylbutyrate/taurursodiol (Relyvrio): regimens, eligibility, withdrawal."""

from __future__ import annotations

from cds_service.rules.base import Rule

RULES: tuple[Rule, ...] = ()
