"""Breathing: respiratory assessment, non-invasive ventilation, hypercapnia (NICE NG42 1.14, QS126)."""

from __future__ import annotations

from cds_service.rules.base import Rule

RULES: tuple[Rule, ...] = ()
