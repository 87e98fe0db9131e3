"""CDS Hooks 2.0 wire models: discovery, requests and hook contexts, cards, feedback.

These models are the contract with the EHR. They follow CDS Hooks 2.0.1 (HL7 STU2) and the hook
definitions of the CDS Hooks Library STU1. Two rules shape every choice here:

* Requests are read leniently where real clients differ from the spec (unknown fields and
  `extension` tolerated, `draftOrders` Bundles without `type`, `fhirAuthorization.expires_in`
  missing, `overrideReason.reason` without `system` or `display`), and strictly where the spec is
  normative and the service would otherwise guess (required fields, hook names, outcome values).
* Responses are built strictly: every invariant of the 2.0 response model is checked when a card
  is constructed (summary under 140 characters, `selectionBehavior` whenever there are suggestions,
  `display` on override reasons, `description` on actions, `appContext` only on SMART links), and
  optional fields are never emitted as null or empty (`to_json()`).

This module depends on nothing else in the service.
"""

from __future__ import annotations

import json
from typing import Any, Literal
from urllib.parse import urlsplit

import msgspec
from pydantic import (
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    field_validator,
    model_validator,
)

HookName = Literal["patient-view", "order-select", "order-sign"]

#: Context fields that the CDS Hooks Library STU1 marks "Prefetch Token: Yes", per hook.
PREFETCH_CONTEXT_TOKENS: dict[str, frozenset[str]] = {
    "patient-view": frozenset({"userId", "patientId", "encounterId"}),
    "order-select": frozenset({"userId", "patientId", "encounterId"}),
    "order-sign": frozenset({"userId", "patientId", "encounterId"}),
}

#: The user identifier tokens that CDS Hooks 2.0 allows in every prefetch template.
USER_TOKENS: dict[str, str] = {
    "userPractitionerId": "Practitioner",
    "userPractitionerRoleId": "PractitionerRole",
    "userPatientId": "Patient",
    "userRelatedPersonId": "RelatedPerson",
}


def _is_unicode(text: str) -> bool:
    """False for a str holding a lone surrogate: JSON's \\ud800 escapes can carry one, but it is
    not Unicode text and can be neither stored nor sent back as UTF-8."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _not_unicode_at(value: Any) -> str | None:
    """Where in a JSON value a string or a key holds a lone surrogate ('' for the value itself);
    None when nowhere. Quick for the usual case; the walk that finds the place has no recursion."""
    try:
        json.dumps(value, ensure_ascii=False).encode("utf-8")
        return None
    except (UnicodeEncodeError, RecursionError, TypeError, ValueError):
        pass
    stack: list[tuple[Any, str]] = [(value, "")]
    while stack:
        item, path = stack.pop()
        if isinstance(item, str):
            if not _is_unicode(item):
                return path
        elif isinstance(item, (dict, list)):
            for key, child in item.items() if isinstance(item, dict) else enumerate(item):
                if isinstance(key, str) and not _is_unicode(key):
                    return f"{path} (a key)" if path else "(a key)"
                name = str(key) if len(str(key)) <= 40 else f"{str(key)[:40]}..."
                stack.append((child, f"{path}.{name}" if path else name))
    return None


def _check_text(value: Any) -> None:
    """Strings a request model keeps must be Unicode text without NUL (they are logged, stored and
    sent back; PostgreSQL text cannot hold NUL). JSON held as is (prefetch, context, extensions) may
    carry NUL, which is harmless there, but no lone surrogate."""
    strings = [value] if isinstance(value, str) else value if isinstance(value, list) else None
    if strings and all(isinstance(s, str) for s in strings):
        for s in strings:
            if "\x00" in s or not _is_unicode(s):
                raise ValueError("must be valid Unicode text (no lone surrogate) without NUL characters")
    elif isinstance(value, (dict, list)):
        where = _not_unicode_at(value)
        if where is not None:
            at = f" at {where}" if where else ""
            raise ValueError(f"holds text that is not valid Unicode (a lone surrogate){at}")


class _Lenient(BaseModel):
    """Request-side base: unknown fields (extensions, newer spec versions) are kept, not refused.

    Text must be Unicode (see `_check_text`), in known and unknown fields alike: a request that
    breaks that is refused with a 400 naming the field, instead of failing later (500).
    """

    model_config = ConfigDict(extra="allow", populate_by_name=True)

    @field_validator("*")
    @classmethod
    def _text_is_unicode(cls, value: Any) -> Any:
        _check_text(value)
        return value

    @model_validator(mode="after")
    def _unknown_fields_are_unicode(self) -> Any:
        where = _not_unicode_at(self.model_extra) if self.model_extra else None
        if where is not None:
            raise ValueError(
                f"an unknown field holds text that is not valid Unicode (a lone surrogate) at {where}"
            )
        return self


class _Strict(BaseModel):
    """Response-side base: we only ever emit what the spec defines.

    `extension` is the one name the spec reserves on every object for extensions; it is allowed
    everywhere and must be a JSON object.
    """

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    extension: dict[str, Any] | None = None

    def to_json(self) -> dict[str, Any]:
        """Serialise for the wire: no null and no empty optional collections (spec 2.0 §JSON)."""
        return _prune(self.model_dump(mode="json", exclude_none=True, by_alias=True))

    def to_json_bytes(self) -> bytes:
        """`to_json()` as JSON bytes, by pydantic's own serializer (in Rust): a third of the time
        of dumping to dicts, pruning them in Python and encoding them, for a hook's answer. Only
        bytes that may hold an empty string, list or object need the prune; they may also hold
        one inside a text (a false alarm), and then take the long way, which is always right."""
        data: bytes = self.__pydantic_serializer__.to_json(self, exclude_none=True, by_alias=True)
        if b'""' in data or b"[]" in data or b"{}" in data:
            return msgspec.json.encode(self.to_json())
        return data


def _prune(value: Any) -> Any:
    """Drop null, "", [] and {} members from objects, at every depth (one pass).

    `value` is what `model_dump(mode="json")` made: only dicts, lists, strings, numbers, booleans
    and None, so exact type checks suffice (an isinstance check and a comparison of every number
    with "" were most of a typical answer's serialisation)."""
    if type(value) is dict:
        pruned = {}
        for key, member in value.items():
            kind = type(member)
            if kind is dict or kind is list:
                member = _prune(member)
                if not member:
                    continue
            elif member is None or (kind is str and not member):
                continue
            pruned[key] = member
        return pruned
    if type(value) is list:
        return [_prune(v) if type(v) is dict or type(v) is list else v for v in value]
    return value


# --------------------------------------------------------------------------------------------
# Requests


class FhirAuthorization(_Lenient):
    """OAuth 2.0 bearer token for `fhirServer`. The token is a secret: it never prints or logs."""

    access_token: SecretStr
    token_type: str = "Bearer"  # noqa: S105 - a token type, not a secret
    # The spec makes these REQUIRED, but real clients omit them (cds-hooks/sandbox#65); the
    # service never bases a decision on them, so their absence is not worth refusing a call over.
    expires_in: int | None = None
    scope: str | None = None
    subject: str | None = None
    patient: str | None = None

    @field_validator("access_token")
    @classmethod
    def _token_fits_a_header(cls, value: SecretStr) -> SecretStr:
        # It is sent as `Authorization: Bearer <token>`: a character outside visible ASCII cannot
        # be sent in a header (the HTTP client raises), and CR or LF would split it. RFC 6750's
        # b64token is narrower still. The message never quotes the token.
        if not all("!" <= ch <= "~" for ch in value.get_secret_value()):
            raise ValueError("access_token must be made of visible ASCII characters (RFC 6750)")
        return value

    def __repr__(self) -> str:  # pragma: no cover - defensive; SecretStr already masks
        return "FhirAuthorization(access_token=**********)"


class CDSRequest(_Lenient):
    """The body of `POST /cds-services/{id}`. `context` is validated per hook afterwards."""

    hook: str = Field(min_length=1)
    hookInstance: str = Field(min_length=1)
    fhirServer: str | None = None
    fhirAuthorization: FhirAuthorization | None = None
    context: dict[str, Any]
    prefetch: dict[str, Any] | None = None

    @field_validator("fhirServer")
    @classmethod
    def _server_is_http_url(cls, value: str | None) -> str | None:
        if value is None:
            return None
        if not value.startswith(("https://", "http://")):
            raise ValueError("fhirServer must be an absolute http(s) URL")
        parts = urlsplit(value)
        # A userinfo part ("https://ehr.example.org@evil.example/") would move the host, and with it
        # the access token, somewhere else: refused, as is a URL without a host.
        if "@" in parts.netloc or not parts.hostname:
            raise ValueError("fhirServer must be an http(s) URL with a host and no user information")
        return value.rstrip("/")

    @model_validator(mode="after")
    def _authorization_needs_server(self) -> CDSRequest:
        # Invariant cds-r-1: "if fhirAuthorization details are provided, a fhirServer SHALL be
        # specified".
        if self.fhirAuthorization is not None and self.fhirServer is None:
            raise ValueError("fhirServer is required when fhirAuthorization is given")
        return self


class PatientViewContext(_Lenient):
    userId: str = Field(min_length=1)
    patientId: str = Field(min_length=1)
    encounterId: str | None = None


class DraftOrdersBundle(_Lenient):
    """A FHIR Bundle of draft orders. `type` is optional: the 2.0 examples and the sandbox omit it."""

    resourceType: Literal["Bundle"]
    type: str | None = None
    entry: list[dict[str, Any]] = Field(default_factory=list)


class OrderSignContext(PatientViewContext):
    draftOrders: DraftOrdersBundle


class OrderSelectContext(OrderSignContext):
    selections: list[str] = Field(min_length=1)


HOOK_CONTEXTS: dict[str, type[PatientViewContext]] = {
    "patient-view": PatientViewContext,
    "order-select": OrderSelectContext,
    "order-sign": OrderSignContext,
}


# --------------------------------------------------------------------------------------------
# Discovery


class ServiceDescriptor(_Strict):
    hook: str
    title: str | None = None
    description: str
    id: str
    prefetch: dict[str, str] | None = None
    usageRequirements: str | None = None


class DiscoveryResponse(_Strict):
    services: list[ServiceDescriptor]


# --------------------------------------------------------------------------------------------
# Responses


class Coding(_Strict):
    system: str
    code: str
    display: str | None = None


class Source(_Strict):
    label: str = Field(min_length=1)
    url: str | None = None
    icon: str | None = None
    topic: Coding | None = None


class Action(_Strict):
    type: Literal["create", "update", "delete"]
    description: str = Field(min_length=1)
    resource: dict[str, Any] | None = None
    resourceId: str | None = None

    @model_validator(mode="after")
    def _payload_fits_type(self) -> Action:
        if self.type in ("create", "update") and not self.resource:
            raise ValueError(f"a {self.type} action needs a resource")
        if self.type == "delete" and (not self.resourceId or self.resource is not None):
            # cds-resp-2: a delete names the resource by resourceId and carries no resource.
            raise ValueError("a delete action needs resourceId and no resource")
        return self


class Suggestion(_Strict):
    label: str = Field(min_length=1)
    # OPTIONAL in the spec, but without it the EHR cannot report which suggestion was accepted:
    # this service always sets it (cards.render).
    uuid: str | None = None
    isRecommended: bool | None = None
    actions: list[Action] | None = None


class Link(_Strict):
    label: str = Field(min_length=1)
    url: str
    type: Literal["absolute", "smart"]
    appContext: str | None = None
    autolaunchable: bool | None = None

    @model_validator(mode="after")
    def _app_context_only_for_smart(self) -> Link:
        if self.appContext is not None and self.type != "smart":
            raise ValueError("appContext is only allowed on smart links (cds-resp-3)")
        return self


class OverrideReason(Coding):
    display: str = Field(min_length=1)  # cds-resp-4: REQUIRED on override reasons


Indicator = Literal["info", "warning", "critical"]
INDICATOR_ORDER: dict[str, int] = {"critical": 0, "warning": 1, "info": 2}


class Card(_Strict):
    # OPTIONAL in the spec; this service always sets it, as feedback needs it (cards.render).
    uuid: str | None = None
    summary: str = Field(min_length=1, max_length=139)  # spec: "<140-character"
    detail: str | None = None
    indicator: Indicator
    source: Source
    suggestions: list[Suggestion] | None = None
    selectionBehavior: Literal["at-most-one", "any"] | None = None
    overrideReasons: list[OverrideReason] | None = None
    links: list[Link] | None = None

    @model_validator(mode="after")
    def _suggestions_need_selection_behaviour(self) -> Card:
        if self.suggestions and self.selectionBehavior is None:
            raise ValueError("selectionBehavior is required when suggestions are present (cds-resp-6)")
        if self.suggestions and self.selectionBehavior == "at-most-one":
            recommended = sum(1 for s in self.suggestions if s.isRecommended)
            if recommended > 1:
                raise ValueError("at most one suggestion may be recommended with at-most-one (cds-resp-1)")
        return self


class CDSResponse(_Strict):
    cards: list[Card] = Field(default_factory=list)
    systemActions: list[Action] | None = None

    def to_json(self) -> dict[str, Any]:
        body = super().to_json()
        body.setdefault("cards", [])  # the one array that is sent even when empty
        return body


# --------------------------------------------------------------------------------------------
# Feedback


class FeedbackCoding(_Lenient):
    """A reason Coding as clients really send it: the sandbox omits `display` and often `system`."""

    code: str = Field(min_length=1)
    system: str | None = None
    display: str | None = None


class OverrideReasonFeedback(_Lenient):
    reason: FeedbackCoding | None = None
    userComment: str | None = None

    @model_validator(mode="before")
    @classmethod
    def _accept_flat_ballot_form(cls, value: Any) -> Any:
        # The 1.1 ballot (and older sandboxes) sent {code, system, userComment} without `reason`.
        if isinstance(value, dict) and "reason" not in value and "code" in value:
            flat = dict(value)
            reason = {k: flat.pop(k) for k in ("code", "system", "display") if k in flat}
            return {**flat, "reason": reason}
        return value

    @model_validator(mode="after")
    def _has_reason_or_comment(self) -> OverrideReasonFeedback:
        if self.reason is None and self.userComment is None:
            raise ValueError("overrideReason needs a reason or a userComment (cds-fb-3)")
        return self


class AcceptedSuggestion(_Lenient):
    id: str = Field(min_length=1)


class FeedbackItem(_Lenient):
    card: str = Field(min_length=1)
    outcome: Literal["accepted", "overridden"]
    acceptedSuggestions: list[AcceptedSuggestion] | None = None
    overrideReason: OverrideReasonFeedback | None = None
    # Epic sends the plural form; the spec defines the singular. Both are read.
    overrideReasons: list[OverrideReasonFeedback] | None = None
    outcomeTimestamp: AwareDatetime

    @model_validator(mode="after")
    def _accepted_needs_suggestions(self) -> FeedbackItem:
        if self.outcome == "accepted" and not self.acceptedSuggestions:
            raise ValueError("acceptedSuggestions is required for accepted outcomes (cds-fb-2)")
        return self

    def reasons(self) -> list[OverrideReasonFeedback]:
        found = [self.overrideReason] if self.overrideReason else []
        return found + list(self.overrideReasons or [])


#: Most feedback items accepted in one request: a CDS client batches the outcomes of one screen,
#: a handful of cards; anything far larger is a misbehaving client, not feedback.
MAX_FEEDBACK_ITEMS = 500


class FeedbackRequest(_Lenient):
    feedback: list[FeedbackItem] = Field(min_length=1, max_length=MAX_FEEDBACK_ITEMS)
