"""The three CDS services this server offers, one per hook, and what each one needs.

A service is its hook, its words for the discovery document, and its rules. Its prefetch templates
are not written by hand: they follow from what its rules read (`Rule.reads`), so discovery always
asks for exactly the data the rules use, and no more.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass, replace
from datetime import date
from functools import cached_property

from cds_service.hooks import ServiceDescriptor
from cds_service.prefetch import TYPE_BY_KEY, prefetch_templates
from cds_service.record import Interest
from cds_service.rules import CATALOGUE, Rule, als, rules_for_hook
from cds_service.settings import Settings


@dataclass(frozen=True)
class ServiceDefinition:
    id: str
    hook: str
    title: str
    description: str
    rules: tuple[Rule, ...]

    @cached_property
    def interest(self) -> Interest:
        """Everything the rules (and the ALS gate in front of them) read from the chart."""
        return Interest.merge([als.READS, *(rule.reads for rule in self.rules)])

    def prefetch(self, settings: Settings, today: date) -> dict[str, str]:
        return prefetch_templates(self.interest, settings, today)

    def descriptor(self, settings: Settings, today: date) -> ServiceDescriptor:
        prefetch = self.prefetch(settings, today)
        return ServiceDescriptor(
            hook=self.hook,
            id=self.id,
            title=self.title,
            description=self.description,
            prefetch=prefetch,
            usageRequirements=usage_requirements(self.hook, prefetch),
        )


def read_scopes(prefetch: dict[str, str]) -> list[str]:
    """SMART (App Launch 1.0, as CDS Hooks 2.0 uses) read scopes for what the templates ask for."""
    return sorted({f"patient/{TYPE_BY_KEY[key]}.read" for key in prefetch})


def usage_requirements(hook: str, prefetch: dict[str, str]) -> str:
    text = (
        "Prefetch every template, or send fhirServer with a fhirAuthorization token granting these scopes "
        f"for the patient in context: {' '.join(read_scopes(prefetch))}. Data that can be had neither way "
        "makes the service answer 412."
    )
    if hook in ("order-select", "order-sign"):
        text += " The orders are read from context.draftOrders (R4 resources)."
    return text


def _switched_off_note(service_rules: tuple[Rule, ...], disabled: Collection[str]) -> str:
    """The sentence discovery adds for the rules of a service this site switched off (governance)."""
    off = [rule.title for rule in service_rules if rule.id in disabled]
    return f" Switched off at this site: {'; '.join(off)}." if off else ""


def build_services(
    catalogue: tuple[Rule, ...] = CATALOGUE, *, disabled: Collection[str] = ()
) -> dict[str, ServiceDefinition]:
    """The three services. Rules in `disabled` (ALS_CDS_DISABLED_RULES) are left out: they never
    run, their data leaves the prefetch, and the description names them as switched off, so that
    whoever configures the EHR sees what this site does not check."""
    services = (
        ServiceDefinition(
            id="als-patient-view",
            hook="patient-view",
            title="ALS/MND care review",
            description=(
                "Guideline-based care for amyotrophic lateral sclerosis / motor neurone disease when a "
                "chart is opened: disease-modifying treatment and its monitoring, symptoms, nutrition, "
                "breathing, multidisciplinary review and advance care planning (NICE NG42, drug labels)."
            ),
            rules=rules_for_hook("patient-view", catalogue),
        ),
        ServiceDefinition(
            id="als-order-select",
            hook="order-select",
            title="ALS/MND order check (select)",
            description=(
                "Checks orders for a patient with ALS/MND as they are selected: riluzole, edaravone, "
                "tofersen, quinine, antimuscarinics, physiotherapy and massage."
            ),
            rules=rules_for_hook("order-select", catalogue),
        ),
        ServiceDefinition(
            id="als-order-sign",
            hook="order-sign",
            title="ALS/MND order check (sign)",
            description=(
                "Checks the complete orders for a patient with ALS/MND before they are signed: dose, "
                "contraindications and monitoring."
            ),
            rules=rules_for_hook("order-sign", catalogue),
        ),
    )
    if disabled:
        services = tuple(
            replace(
                service,
                rules=tuple(rule for rule in service.rules if rule.id not in disabled),
                description=service.description + _switched_off_note(service.rules, disabled),
            )
            for service in services
        )
    return {service.id: service for service in services}
