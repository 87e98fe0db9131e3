"""A resource still in its JSON bytes, decoded only when it is read.

Why: a hook call with full prefetch of a large chart holds tens of thousands of resources. Decoded
up front, all of them are alive at once as millions of dicts, lists and strings: several times the
body's size in memory, and every full garbage collection walks them all while holding the GIL (the
worker's other requests stalled for over a second at 50,000 Observations). Kept as `msgspec.Raw`
(a view into the request body, not a copy), a resource costs one small object until the reader
reaches it; the reader decodes it, reads the facts it needs and lets the dict go.

Only what is needed before reading is decoded at once, the *header*: `resourceType` and `id` (to
skip types no rule reads and to de-duplicate) and `meta.versionId` / `meta.lastUpdated` (to keep
the latest version of a duplicate). Everything else is decoded on access. Code on the hot path
calls `materialise()` once and reads the dict; the Mapping interface is there so that any other
code that receives a resource (prefetch checks, the medication index) reads it correctly, just
more slowly.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from typing import Any

import msgspec
from msgspec import UNSET, UnsetType

from cds_service.reader.observations import TypeRequired, WellFormedResult, decode_well_formed


class _Header(msgspec.Struct):
    resourceType: Any = None  # FHIR's element names
    id: Any = None
    meta: Any = None


_HEADER = msgspec.json.Decoder(_Header)
_DECODER = msgspec.json.Decoder()
_OBJECT = msgspec.json.Decoder(dict[str, msgspec.Raw])
_ARRAY = msgspec.json.Decoder(list[msgspec.Raw])


class UnreadableResource(ValueError):
    """The bytes of a resource could not be decoded (e.g. a lone surrogate the scan let through)."""


class LazyResource(msgspec.Struct, gc=False):
    """A FHIR resource as JSON bytes; `resource_type`, `id` and the version decoded at once.

    A msgspec Struct with `gc=False`: it holds only bytes, strings and Structs of them (`_InBundle`,
    the result's decoded Structs), so it can be in no reference cycle, and the garbage collector
    need not track it (nor the entry dicts that hold it, which CPython then stops tracking too).
    A Mapping (registered below) for any code that reads it.
    """

    #: The resource's bytes: a view into the body; or, for a result decoded with its whole Bundle
    #: (`decode_for_reading`), where to find them (`_InBundle`), split out only if ever asked for.
    raw: Any
    resource_type: Any = None
    id: Any = None
    version_id: Any = None
    last_updated: Any = None
    #: The resource already decoded for the reader's well-formed path, when the body's decoding
    #: found it in that shape (`wire.py`; `observations.WellFormedObservation`): a tree of Structs,
    #: strings and lists that holds no reference back, so it can be in no cycle either.
    typed: Any = None

    @classmethod
    def of(cls, raw: msgspec.Raw) -> Any:
        """A LazyResource for a JSON object; anything else (not a resource) decoded as it is."""
        try:
            header = _HEADER.decode(raw)
        except msgspec.ValidationError:
            return _DECODER.decode(raw)
        meta = header.meta if isinstance(header.meta, dict) else {}
        return cls(
            raw,
            _atomic(header.resourceType),
            _atomic(header.id),
            _atomic(meta.get("versionId")),
            _atomic(meta.get("lastUpdated")),
        )

    def bytes(self) -> msgspec.Raw:
        """The resource's JSON (split out of its Bundle now if it was decoded with it)."""
        raw = self.raw
        return raw if type(raw) is msgspec.Raw else raw.resource_bytes()

    def decode(self) -> dict[str, Any]:
        """The whole resource as a fresh dict (not kept: the caller holds it while it reads)."""
        raw = self.bytes()
        try:
            return _DECODER.decode(raw)  # type: ignore[no-any-return]
        except msgspec.DecodeError:
            pass
        # msgspec's scan of the body accepts a number out of range (1e999), its decoding does not:
        # Python's json reads it (as infinity), so the defect costs that field, not the resource.
        try:
            decoded = json.loads(bytes(raw))
        except (ValueError, RecursionError) as exc:
            raise UnreadableResource("the resource's JSON could not be decoded") from exc
        if not isinstance(decoded, dict):
            raise UnreadableResource("the resource is not a JSON object")
        return decoded

    def __getitem__(self, key: str) -> Any:
        if key == "resourceType" and isinstance(self.resource_type, str):
            return self.resource_type
        if key == "id" and isinstance(self.id, str):
            return self.id
        return self.decode()[key]

    def get(self, key: str, default: Any = None) -> Any:
        if key == "resourceType" and isinstance(self.resource_type, str):
            return self.resource_type  # the common question, answered without decoding
        try:
            return self[key]
        except (KeyError, UnreadableResource):
            return default

    def __iter__(self) -> Iterator[str]:
        return iter(self.decode())

    def __len__(self) -> int:
        return len(self.decode())

    def __contains__(self, key: object) -> bool:
        return key in self.decode()

    def keys(self) -> Any:
        return self.decode().keys()

    def items(self) -> Any:
        return self.decode().items()

    def values(self) -> Any:
        return self.decode().values()

    def __eq__(self, other: object) -> bool:
        return dict(self.items()) == other if isinstance(other, Mapping) else NotImplemented

    __hash__ = None  # type: ignore[assignment]  # equal to a dict, so unhashable like one

    def __repr__(self) -> str:
        # Never the content: a resource is patient data.
        size = len(self.raw) if type(self.raw) is msgspec.Raw else "?"
        return f"<LazyResource {self.resource_type!s}, {size} bytes>"


Mapping.register(LazyResource)


def _atomic(value: Any) -> Any:
    """A header value kept only if it is a string or a number (a container could form a cycle,
    which an untracked object must never be part of); the reader finds other shapes on decoding."""
    return value if isinstance(value, (str, int, float)) and not isinstance(value, bool) else None


def materialise(resource: Mapping[str, Any]) -> Mapping[str, Any]:
    """The resource as a plain mapping: a LazyResource decoded, anything else as it is.

    Raises UnreadableResource when the bytes cannot be decoded.
    """
    return resource.decode() if isinstance(resource, LazyResource) else resource


def decode_bundle_lazily(raw: bytes | bytearray | msgspec.Raw) -> Any:
    """Like decoding the JSON whole, but each Bundle entry's resource stays a `LazyResource`,
    decoded only when the reader reaches it: a large Bundle (a prefetch value, a FHIR server's
    page) is never alive as dicts all at once. Anything that is not a JSON object is decoded as is
    (the caller refuses what it cannot use)."""
    try:
        fields = _OBJECT.decode(raw)
    except msgspec.ValidationError:
        return _DECODER.decode(raw)
    resource: dict[str, Any] = {}
    for name, value in fields.items():
        if name != "entry":
            resource[name] = _DECODER.decode(value)
            continue
        try:
            items = _ARRAY.decode(value)
        except msgspec.ValidationError:
            resource[name] = _DECODER.decode(value)
            continue
        resource[name] = [_lazy_entry(item) for item in items]
    return resource


class _Entry(msgspec.Struct, forbid_unknown_fields=True, gc=False):
    """A Bundle entry, every element of R4's (an unknown one: decoded the plain way)."""

    resource: msgspec.Raw | UnsetType = UNSET
    fullUrl: Any = UNSET
    search: Any = UNSET
    id: Any = UNSET
    extension: Any = UNSET
    modifierExtension: Any = UNSET
    link: Any = UNSET
    request: Any = UNSET
    response: Any = UNSET


class _Bundle(msgspec.Struct, tag_field="resourceType", tag="Bundle", forbid_unknown_fields=True):
    """A Bundle, every element of R4's, its entries split (an unknown element: decoded plainly)."""

    entry: list[_Entry] | UnsetType | None = UNSET
    id: Any = UNSET
    meta: Any = UNSET
    implicitRules: Any = UNSET
    language: Any = UNSET
    identifier: Any = UNSET
    type: Any = UNSET
    timestamp: Any = UNSET
    total: Any = UNSET
    link: Any = UNSET
    signature: Any = UNSET


_BUNDLE = msgspec.json.Decoder(_Bundle | TypeRequired)


def decode_for_reading(raw: bytes | msgspec.Raw) -> Any:
    """Like decoding the JSON whole, but each Observation in a Bundle's entries that has the
    well-formed shape is a LazyResource holding that decode (`observations.WellFormedObservation`)
    and where its bytes are, so the reader reads it without a dict. A body small enough to decode
    whole (`wire.py`) has its prefetch values decoded here. A Bundle of such results only (the
    common case) is decoded in one typed pass, its bytes split only if a result is read the long
    way; any other Bundle naming an Observation is split into its entries first, each decoded on its
    own. Anything else is decoded as plain JSON, as before: other resources, an Observation of
    another shape, a value that is not a Bundle, a Bundle with an element R4 does not have."""
    if b'"Observation"' not in bytes(raw):
        # No result in it (a byte search, some microseconds): one pass is cheapest. A result whose
        # type is spelled with escapes is only read the long way.
        return _DECODER.decode(raw)
    try:
        results = _RESULTS_BUNDLE.decode(raw)
    except msgspec.DecodeError:  # ValidationError included: any entry of another type or shape
        pass
    else:
        if type(results) is _ResultsBundle:
            return _results_for_reading(results, _Split(raw))
    try:
        bundle = _BUNDLE.decode(raw)
    except msgspec.ValidationError:
        return _DECODER.decode(raw)
    decoded: dict[str, Any] = {"resourceType": "Bundle"}
    for name in _BUNDLE_ELEMENTS:
        if (value := getattr(bundle, name)) is not UNSET:
            decoded[name] = value
    if bundle.entry is not UNSET:
        decoded["entry"] = None if bundle.entry is None else [_entry_for_reading(e) for e in bundle.entry]
    return decoded


_BUNDLE_ELEMENTS = tuple(name for name in _Bundle.__struct_fields__ if name != "entry")


def _entry_for_reading(entry: _Entry) -> dict[str, Any]:
    decoded: dict[str, Any] = {}
    if entry.fullUrl is not UNSET:
        decoded["fullUrl"] = entry.fullUrl
    raw = entry.resource
    if raw is not UNSET:
        typed = decode_well_formed(raw)
        if typed is None:
            decoded["resource"] = _DECODER.decode(raw)
        else:
            meta = typed.meta
            if type(meta) is dict:
                version, updated = _atomic(meta.get("versionId")), _atomic(meta.get("lastUpdated"))
            else:
                version = updated = None
            decoded["resource"] = LazyResource(raw, "Observation", typed.id, version, updated, typed)
    if entry.search is not UNSET:
        decoded["search"] = entry.search
    _rest_of_entry(entry, decoded)
    return decoded


class _ResultEntry(_Entry):
    """An entry of a Bundle of well-formed results only: `_Entry`, its resource decoded."""

    resource: WellFormedResult | UnsetType = UNSET  # type: ignore[assignment]


class _ResultsBundle(_Bundle):
    """`_Bundle` (every R4 element, the same tag) whose every entry holds a well-formed result
    (`WellFormedObservation`): the common prefetch value of results, decoded in one pass without
    splitting it first."""

    entry: list[_ResultEntry] | UnsetType | None = UNSET  # type: ignore[assignment]


_RESULTS_BUNDLE = msgspec.json.Decoder(_ResultsBundle | TypeRequired)


class _Split(msgspec.Struct, gc=False):
    """A Bundle's bytes, split into its entries' resources at the first question (then kept)."""

    raw: Any
    resources_: list[Any] | None = None

    def resources(self) -> list[Any]:
        if self.resources_ is None:
            entries = _BUNDLE.decode(self.raw).entry  # decoded whole already: it cannot fail now
            self.resources_ = [e.resource for e in entries or ()]
        return self.resources_


class _InBundle(msgspec.Struct, gc=False):
    """Where a result decoded with its Bundle is: the Bundle (`_Split`) and the entry's place.

    The reader reads such a result from its Structs; only one it sends the long way (a date
    without its zone, a result of another patient...) needs its own bytes, so the Bundle is split
    then, once for all its entries, and never for a Bundle whose results all read the fast way.
    Neither Struct is tracked by the garbage collector, as LazyResource: they refer to bytes and
    to a list of bytes, never back to anything that holds them, so they can be in no cycle."""

    split: _Split
    index: int

    def resource_bytes(self) -> msgspec.Raw:
        return self.split.resources()[self.index]  # type: ignore[no-any-return]


def _results_for_reading(bundle: _ResultsBundle, split: _Split) -> dict[str, Any]:
    """The Bundle as `decode_for_reading` gives it, each entry's result a LazyResource holding its
    Structs and where its bytes are."""
    decoded: dict[str, Any] = {"resourceType": "Bundle"}
    for name in _BUNDLE_ELEMENTS:
        if (value := getattr(bundle, name)) is not UNSET:
            decoded[name] = value
    if bundle.entry is UNSET:
        return decoded
    if bundle.entry is None:
        decoded["entry"] = None
        return decoded
    entries = []
    for index, entry in enumerate(bundle.entry):
        item: dict[str, Any] = {}
        if entry.fullUrl is not UNSET:
            item["fullUrl"] = entry.fullUrl
        typed = entry.resource
        if typed is not UNSET:
            meta = typed.meta
            if type(meta) is dict:
                version, updated = _atomic(meta.get("versionId")), _atomic(meta.get("lastUpdated"))
            else:
                version = updated = None
            where = _InBundle(split, index)
            item["resource"] = LazyResource(where, "Observation", typed.id, version, updated, typed)
        if entry.search is not UNSET:
            item["search"] = entry.search
        _rest_of_entry(entry, item)
        entries.append(item)
    decoded["entry"] = entries
    return decoded


def _rest_of_entry(entry: _Entry | _ResultEntry, decoded: dict[str, Any]) -> None:
    """An entry's elements no reader asks for, kept as they came (rare: all absent is one test)."""
    if not (
        entry.id is UNSET
        and entry.extension is UNSET
        and entry.modifierExtension is UNSET
        and entry.link is UNSET
        and entry.request is UNSET
        and entry.response is UNSET
    ):
        for name in ("id", "extension", "modifierExtension", "link", "request", "response"):
            if (value := getattr(entry, name)) is not UNSET:
                decoded[name] = value


def _lazy_entry(raw: msgspec.Raw) -> Any:
    try:
        fields = _OBJECT.decode(raw)
    except msgspec.ValidationError:
        return _DECODER.decode(raw)
    entry: dict[str, Any] = {}
    for name, value in fields.items():
        if name == "resource":
            entry[name] = LazyResource.of(value)
            continue
        decoded = _DECODER.decode(value)
        if name == "search" and decoded == {"mode": "match"}:
            # What nearly every search entry says, and all a reader asks of `search` is whether it
            # is an outcome. Left out, the entry holds only strings and an untracked LazyResource,
            # so CPython does not track the dict: 50,000 entries were 50,000 more objects for every
            # full garbage collection to walk (a nested dict, even empty, makes its holder tracked).
            continue
        entry[name] = decoded
    return entry
