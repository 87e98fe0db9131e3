"""Nutrition: weight loss, dysphagia and gastrostomy (NICE NG42 1.10, ProGas, AAN 2009)."""

from __future__ import annotations

from cds_service.rules.base import Rule

RULES: tuple[Rule, ...] = ()
