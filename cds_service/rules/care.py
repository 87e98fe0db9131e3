"""Organisation of care: multidisciplinary review and advance care planning (NICE NG42 1.5, 1.7)."""

from __future__ import annotations

from cds_service.rules.base import Rule

RULES: tuple[Rule, ...] = ()
