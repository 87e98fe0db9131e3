"""The body of a hook call: bytes in, a validated `CDSRequest` out, without stalling the server.

A hook call with full prefetch of a large chart is megabytes of JSON. Decoding it with `json.loads`
and validating it with pydantic (as FastAPI would) is one long call that holds the GIL: 50,000
Observations stalled every other request of the worker for over a second. Here:

* A body up to 2 MB (a thousand results or so) is decoded whole, its prefetch values each in one
  pass, but for the results among them (`reader/lazy.py`, `decode_for_reading`): each is decoded
  by msgspec straight into the Structs the reader's well-formed path reads
  (`reader/observations.py`), no dict built, and kept with its bytes; one of another shape is
  decoded plainly and read the long way. The first pass (the request, its prefetch values as
  `msgspec.Raw`) only finds where values end; a Bundle of results only is then decoded in one typed
  pass, and one holding anything else split into its entries' bytes first. Decoding a body costs
  some 55 % of the instructions `json.loads` does, and reading its results about as much again.
  Up to HANDOFF_BODY_BYTES on the event loop, larger in a worker thread (app.py: the hand-off
  costs more than it spares below that). What it decodes, some five times its size, lives until
  the call ends, so beyond ALWAYS_WHOLE_BYTES a process holds at most WHOLE_BUDGET_BYTES of bodies
  so decoded at once (`room_to_decode`); the rest are read as larger bodies are.
* A larger body is scanned by msgspec (a fast C pass that only finds where each value starts and
  ends, `msgspec.Raw`, and checks that the JSON is well formed), then each prefetch Bundle entry
  is split on its own and its resource left in its bytes (`reader/lazy.py`): decoded only when the
  reader reaches it, so tens of thousands of resources are never alive as dicts at once. Run in a
  worker thread, no step holds the GIL for long, so `/healthz` and other calls keep answering.
* pydantic validates only the request's own fields (hook, hookInstance, fhirServer, context...);
  prefetch stays plain JSON for the tolerant reader, which checks each field it reads.
* msgspec refuses what JSON forbids (NaN, Infinity, numbers out of range, lone surrogates). Such
  a body is read again with Python's `json`, which accepts them, so that a defect costs only the
  field it is in (as the reader promises), and the Unicode check then runs over prefetch as well.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from typing import Any

import msgspec
from msgspec import UNSET, UnsetType
from pydantic import ValidationError

from cds_service.engine import RequestError, issue, validation_issues
from cds_service.hooks import CDSRequest, _not_unicode_at
from cds_service.reader.lazy import decode_bundle_lazily, decode_for_reading

#: Bodies up to this size are always decoded whole, outside the budget below (a typical chart is 5
#: to 30 kB).
ALWAYS_WHOLE_BYTES = 64_000
#: Bodies up to this size are decoded on the event loop, larger ones in a worker thread (app.py),
#: and the engine decides the same for the record and the rules (`engine.INLINE_READ_RESOURCES`).
#: The hand-off is dear below this: served by uvicorn, a call with 100 Observations (107 kB) took
#: 4.3-5.2 ms on the loop against 7.2-8.1 ms with its body and record handed to worker threads (data
#: built in one thread and read in another), 300 Observations 9.2-11.9 against 13.9-16.1 ms; at 1,000
#: the same either way. What the loop gives up: a 500 kB call holds it some 15 to 20 ms, a fifth
#: of the issue's bound (bench/run.py prints the longest stall).
HANDOFF_BODY_BYTES = 512_000
#: Bodies up to this size are decoded whole; larger ones entry by entry, each resource left in its
#: bytes until read (`reader/lazy.py`). Decoding holds the GIL about 6 ms a MB, so the event loop
#: of a worker decoding 2 MB waits some 13 ms; decoded, 1 MB of resources is some 5 MB of objects.
WHOLE_BODY_BYTES = 2_000_000
#: Body bytes over ALWAYS_WHOLE_BYTES that one process holds decoded whole at once (`room_to_decode`).
#: The dicts of a body read whole live until its call ends: 64 calls of 1 MB at once took a worker
#: from 120 to 580 MB read whole, 280 MB read entry by entry. Past this budget, entry by entry.
WHOLE_BUDGET_BYTES = 8_000_000
_DECODER = msgspec.json.Decoder()
_OBJECT = msgspec.json.Decoder(dict[str, msgspec.Raw])


class _Budget:
    """Body bytes decoded whole and still held by their calls, in this process. Taken and given
    back on the event loop only (`room_to_decode`), so it needs no lock."""

    def __init__(self) -> None:
        self.held = 0


_WHOLE = _Budget()


@contextlib.contextmanager
def room_to_decode(size: int) -> Iterator[bool]:
    """Whether a body of `size` bytes may be decoded whole (`read_request(whole=...)`), for as long
    as the call that holds it lasts: always up to ALWAYS_WHOLE_BYTES, never over WHOLE_BODY_BYTES,
    in between while the process holds less than WHOLE_BUDGET_BYTES so decoded."""
    if size <= ALWAYS_WHOLE_BYTES or size > WHOLE_BODY_BYTES:
        yield size <= ALWAYS_WHOLE_BYTES
        return
    if _WHOLE.held + size > WHOLE_BUDGET_BYTES:
        yield False
        return
    _WHOLE.held += size
    try:
        yield True
    finally:
        _WHOLE.held -= size


def read_request(body: bytes, *, whole: bool | None = None) -> CDSRequest:
    """Decode and validate a hook call body; RequestError (400) says what was wrong and where.

    `whole`: decode it in one pass (True) or entry by entry (False); by default, one pass up to
    WHOLE_BODY_BYTES. A server asks `room_to_decode` first."""
    if not body.strip():
        raise RequestError.single(400, "The request body: a JSON object is required (the body is empty)")
    try:
        data, prefetch = _fast(body, len(body) <= WHOLE_BODY_BYTES if whole is None else whole)
        checked = True
    except (msgspec.DecodeError, msgspec.ValidationError, RecursionError):
        data, prefetch = _tolerant(body)
        checked = False
    if not isinstance(data, dict):
        return _validate(data)  # raises: the body must be an object
    request = _validate(data)
    if prefetch is not None and not isinstance(prefetch, dict):
        raise RequestError.single(400, "prefetch must be a JSON object (or null)", where=["prefetch"])
    if prefetch is not None and not checked:
        where = _not_unicode_at(prefetch)
        if where is not None:
            at = f" at {where}" if where else ""
            raise RequestError.single(
                400,
                f"prefetch holds text that is not valid Unicode (a lone surrogate){at}",
                where=["prefetch"],
            )
    # Assigned after validation: prefetch is the reader's to check, field by field.
    request.prefetch = prefetch
    return request


def _validate(data: Any) -> CDSRequest:
    try:
        return CDSRequest.model_validate(data)
    except ValidationError as exc:
        raise RequestError(400, validation_issues(exc.errors(include_input=False))) from exc


class _Request(msgspec.Struct, forbid_unknown_fields=True, gc=False):
    """A hook call's body with its prefetch values left in their bytes, for a first pass that does
    not decode them; the fields of CDS Hooks 2.0, `extension` among them (the name the spec keeps
    for extensions on every object: Epic sends its own there, after `prefetch`, so without it here
    every Epic call took the general way below and scanned its prefetch three times over). Any
    other field: `_OBJECT`, which keeps it."""

    hook: Any = UNSET
    hookInstance: Any = UNSET
    fhirServer: Any = UNSET
    fhirAuthorization: Any = UNSET
    context: Any = UNSET
    prefetch: dict[str, msgspec.Raw] | UnsetType | None = UNSET
    extension: Any = UNSET


_REQUEST = msgspec.json.Decoder(_Request)


def _fast(body: bytes, whole: bool) -> tuple[Any, Any]:
    """(the request without prefetch, prefetch) by msgspec: whole, or one Bundle entry at a time."""
    try:
        request = _REQUEST.decode(body)
    except msgspec.ValidationError:
        pass  # not an object, another field, or a prefetch that is not an object: the general way
    else:
        data = {
            name: value
            for name in ("hook", "hookInstance", "fhirServer", "fhirAuthorization", "context", "extension")
            if (value := getattr(request, name)) is not UNSET
        }
        if request.prefetch is UNSET or request.prefetch is None:
            return data, None
        decode = decode_for_reading if whole else decode_bundle_lazily
        return data, {key: decode(value) for key, value in request.prefetch.items()}
    try:
        top = _OBJECT.decode(body)
    except msgspec.ValidationError:
        return _DECODER.decode(body), None  # valid JSON but not an object: pydantic will say so
    data: dict[str, Any] = {}
    prefetch: Any = None
    for key, raw in top.items():
        if key == "prefetch":
            prefetch = _prefetch(raw, whole)
        else:
            data[key] = _DECODER.decode(raw)
    return data, prefetch


def _prefetch(raw: msgspec.Raw, whole: bool) -> Any:
    """Each prefetch value decoded whole, but for its well-formed Observations (decoded once, for
    the reader: `decode_for_reading`), or its Bundle's resources left in their bytes."""
    try:
        keys = _OBJECT.decode(raw)
    except msgspec.ValidationError:
        return _DECODER.decode(raw)  # null, or not an object (refused by the caller)
    decode = decode_for_reading if whole else decode_bundle_lazily
    return {key: decode(value) for key, value in keys.items()}


def _tolerant(body: bytes) -> tuple[Any, Any]:
    """Python's json, which reads NaN, Infinity and out-of-range numbers; 400 for what is not JSON."""
    try:
        data = json.loads(body)
    except UnicodeDecodeError as exc:
        raise RequestError.single(
            400, f"The request body is not UTF-8 at byte {exc.start}", code="structure"
        ) from exc
    except RecursionError as exc:
        raise RequestError.single(400, "The request body is nested too deeply", code="structure") from exc
    except ValueError as exc:
        if "Exceeds the limit" in str(exc):  # Python's guard against costly integer conversion
            raise RequestError.single(
                400, "The request body holds an integer too long to read (over 4300 digits)", code="structure"
            ) from exc
        position = getattr(exc, "pos", None)
        at = f" at character {position}" if position is not None else ""
        detail = getattr(exc, "msg", "invalid JSON")
        raise RequestError(
            400, [issue(f"The request body is not valid JSON{at}: {detail}", code="structure")]
        ) from exc
    if not isinstance(data, dict):
        return data, None
    return data, data.pop("prefetch", None)


__all__ = [
    "ALWAYS_WHOLE_BYTES",
    "HANDOFF_BODY_BYTES",
    "WHOLE_BODY_BYTES",
    "WHOLE_BUDGET_BYTES",
    "read_request",
    "room_to_decode",
]
