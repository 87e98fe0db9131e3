"""Physiotherapy, exercise and massage orders (NICE NG42 1.8.5-1.8.6; exercise and massage literature)."""

from __future__ import annotations

from cds_service.rules.base import Rule

RULES: tuple[Rule, ...] = ()
