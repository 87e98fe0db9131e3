"""Muscle problems: cramps, spasticity and quinine (NICE NG42 1.8.1-1.8.4; FDA and MHRA quinine safety)."""

from __future__ import annotations

from cds_service.rules.base import Rule

RULES: tuple[Rule, ...] = ()
