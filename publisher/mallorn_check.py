"""``POST /check-update``: the request, the match of a device's fingerprint against the published versions, and
the answer in the shape of Mallorn's ``UpdateCheckResponse``.

Request (Mallorn's ``FingerprintRequest``): ``short_id`` (string, required), ``file_size`` (integer or null;
read as pydantic's lax mode reads an int: ``"2114064"`` and ``2114064.0`` are that integer).
lorien-aware clients may add, to tell apart versions Mallorn's fingerprint cannot: ``header_hash`` and
``tail_hash`` (32 hex, from the same fingerprint), ``sampled_sha256`` (64 hex, lorien's sampled hash,
docs/fingerprint.md) and ``sha256`` (64 hex, of the whole model file). Every field sent must agree with a
version for it to match; unknown keys are ignored, as FastAPI does. Anything malformed answers 422.

Answer: all six fields of ``UpdateCheckResponse`` always (``current_version`` is ``"unknown"`` when nothing
matches), plus lorien's ``family``, ``patch_id``, ``full_url``, ``full_size`` and ``expected_md5``. Several
matching versions answer 409 naming them and saying which field would settle it — never a guess.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import bottle

from lorien.publisher.http_json import Problem, error_response, validation_error
from lorien.repo.fingerprint import AMBIGUOUS_SHORT_ID
from lorien.repo.manifest import Manifest, VersionEntry

MAX_JSON_BODY = 64 * 1024
HEX_FIELDS = {"header_hash": 32, "tail_hash": 32, "sampled_sha256": 64, "sha256": 64}
MALLORN_IDENTITY = ("file_size", "header_hash", "tail_hash")

Candidate = tuple[Manifest, VersionEntry]


@dataclass(frozen=True)
class UpdateQuery:
    short_id: str
    file_size: int | None = None
    header_hash: str | None = None
    tail_hash: str | None = None
    sampled_sha256: str | None = None
    sha256: str | None = None


def read_json_body() -> Any:
    """The request's JSON document; 413 past 64 KiB, 422 (FastAPI's ``json_invalid``/``missing``) otherwise."""
    raw = bottle.request.body.read(MAX_JSON_BODY + 1)
    if len(raw) > MAX_JSON_BODY:
        raise error_response(413, f"request body is over the {MAX_JSON_BODY}-byte limit")
    if not raw.strip():
        raise validation_error([Problem("missing", ("body",), "Field required")])
    try:
        return json.loads(raw)
    except json.JSONDecodeError as error:
        raise validation_error(
            [Problem("json_invalid", ("body", error.pos), f"JSON decode error: {error.msg}")]
        ) from None
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise validation_error([Problem("json_invalid", ("body", 0), "JSON decode error")]) from None


def _hex_problem(name: str, value: Any) -> Problem | None:
    length = HEX_FIELDS[name]
    if not isinstance(value, str):
        return Problem("string_type", ("body", name), "Input should be a valid string", value)
    if len(value) != length or any(c not in "0123456789abcdef" for c in value.lower()):
        return Problem("string_pattern_mismatch", ("body", name), f"String should be {length} hex digits", value)
    return None


_INT_TEXT = re.compile(r"[+-]?[0-9]+(?:_[0-9]+)*(?:\.0+)?")


def _lax_int(value: Any, loc: tuple[str, ...]) -> tuple[int | None, Problem | None]:
    """``Optional[int]`` as pydantic v2 validates it in lax mode (FastAPI's default): a bool, a float without a
    fraction and a numeric string (surrounding spaces, ``+``, ``_`` between digits, a ``.0`` tail) are ints."""
    if value is None or isinstance(value, int):  # bool included: pydantic takes True as 1
        return (None if value is None else int(value)), None
    if isinstance(value, float):
        if not math.isfinite(value):
            return None, Problem("finite_number", loc, "Input should be a finite number", value)
        if not value.is_integer():
            message = "Input should be a valid integer, got a number with a fractional part"
            return None, Problem("int_from_float", loc, message, value)
        return int(value), None
    if isinstance(value, str):
        text = value.strip()
        if _INT_TEXT.fullmatch(text):
            return int(text.split(".")[0].replace("_", "")), None
        message = "Input should be a valid integer, unable to parse string as an integer"
        return None, Problem("int_parsing", loc, message, value)
    return None, Problem("int_type", loc, "Input should be a valid integer", value)


def parse_update_query(body: Any) -> UpdateQuery:
    """Validate like FastAPI would (all problems at once); raises the 422 response."""
    if not isinstance(body, dict):
        message = "Input should be a valid dictionary or object to extract fields from"
        raise validation_error([Problem("model_attributes_type", ("body",), message, body)])
    problems: list[Problem] = []
    fields: dict[str, Any] = {}
    short_id = body.get("short_id")
    if "short_id" not in body:
        problems.append(Problem("missing", ("body", "short_id"), "Field required", body))
    elif not isinstance(short_id, str):
        problems.append(Problem("string_type", ("body", "short_id"), "Input should be a valid string", short_id))
    size, problem = _lax_int(body.get("file_size"), ("body", "file_size"))
    problems += [problem] if problem else []
    fields["file_size"] = size
    for name in HEX_FIELDS:
        if body.get(name) is not None:
            problem = _hex_problem(name, body[name])
            problems += [problem] if problem else []
            fields[name] = body[name].lower() if problem is None else None
    if problems:
        raise validation_error(problems)
    return UpdateQuery(short_id=short_id.lower(), **fields)


def match_versions(
    manifests: Iterable[Manifest], query: UpdateQuery, sampled_of: Callable[[VersionEntry], str | None]
) -> list[Candidate]:
    """Distinct published models (by sha256; the first family wins) that agree with every field sent."""
    found: dict[str, Candidate] = {}
    for manifest in manifests:
        for entry in manifest.versions:
            if entry.sha256 not in found and _agrees(entry, query, sampled_of):
                found[entry.sha256] = (manifest, entry)
    return list(found.values())


def _agrees(entry: VersionEntry, query: UpdateQuery, sampled_of: Callable[[VersionEntry], str | None]) -> bool:
    fp = entry.fingerprint
    pairs = (
        (query.short_id, fp.short_id),
        (query.file_size, fp.file_size),
        (query.header_hash, fp.header_hash),
        (query.tail_hash, fp.tail_hash),
        (query.sha256, entry.sha256),
    )
    if any(sent is not None and sent != have for sent, have in pairs):
        return False
    if query.sampled_sha256 is None:
        return True
    have = sampled_of(entry)  # None: unknown (blob missing) — it cannot be ruled out
    return have is None or have == query.sampled_sha256


def ambiguity(query: UpdateQuery, candidates: list[Candidate]) -> bottle.HTTPResponse:
    """409 naming the candidates and the field that would settle it, with the true reason."""
    names = ", ".join(f"{m.family} {e.version}" for m, e in candidates)
    identities = {tuple(getattr(e.fingerprint, k) for k in MALLORN_IDENTITY) for _, e in candidates}
    missing = [k for k in MALLORN_IDENTITY if getattr(query, k) is None]
    if len(identities) > 1:  # their Mallorn fingerprints differ: the Mallorn fields the client left out settle it
        why = (
            "files under 68 KiB all have this short_id"
            if query.short_id == AMBIGUOUS_SHORT_ID
            else "their short_ids collide although their fingerprints differ"
        )
        ask, accepts = (
            f"send {', '.join(missing)} from the same fingerprint",
            [*missing, "sampled_sha256", "sha256"],
        )
    elif query.sampled_sha256 is None and query.sha256 is None:
        why = (
            "they have the same Mallorn fingerprint (same size, first 64 KiB and last 4 KiB, as releases of one "
            "architecture or fine-tunes of one base do), so no Mallorn request can tell them apart"
        )
        ask = "a lorien-aware client adds sampled_sha256 (docs/fingerprint.md) or sha256 of its model file"
        accepts = ["sampled_sha256", "sha256"]
    else:
        why = "their Mallorn fingerprints and sampled hashes are equal: they differ only between the samples"
        ask, accepts = "send sha256 of the whole model file", ["sha256"]
    return error_response(
        409,
        f"short_id {query.short_id} matches {len(candidates)} published versions ({names}): {why}. "
        f"lorien does not guess: {ask}",
        candidates=[{"family": m.family, "version": e.version} for m, e in candidates],
        accepts=accepts,
    )


def update_answer(candidate: Candidate | None) -> dict[str, Any]:
    """``UpdateCheckResponse`` (every field, null when unset) plus lorien's keys."""
    answer: dict[str, Any] = {
        "update_available": False,
        "current_version": "unknown",
        "latest_version": None,
        "patch_url": None,
        "patch_size": None,
        "expected_hash": None,
        "family": None,
        "patch_id": None,
        "full_url": None,
        "full_size": None,
        "expected_md5": None,
    }
    if candidate is None:
        return answer
    manifest, current = candidate
    latest = manifest.latest_entry()
    answer.update(
        update_available=current.version != latest.version,
        current_version=current.version,
        latest_version=latest.version,
        expected_hash=latest.sha256,
        family=manifest.family,
        full_url=f"/{latest.blob}",
        full_size=latest.size,
        expected_md5=latest.md5,
    )
    patch = manifest.patch(current.version, latest.version)
    if answer["update_available"] and patch is not None:
        answer.update(patch_url=f"/patch/{patch.id}", patch_size=patch.size, patch_id=patch.id)
    return answer
