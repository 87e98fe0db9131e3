"""Saliva: sialorrhoea, antimuscarinics with impaired cognition, thick saliva (NICE NG42 1.8.10-1.8.15)."""

from __future__ import annotations

from cds_service.rules.base import Rule

RULES: tuple[Rule, ...] = ()
