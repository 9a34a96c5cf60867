"""JSON bodies of ``lorien serve``, shaped so clients of lorien and of Mallorn's FastAPI server both read them.

* Every error body carries lorien's ``error`` (a sentence) and FastAPI's ``detail`` (the same sentence), plus
  optional extra keys (e.g. the candidates of an ambiguous fingerprint).
* Malformed requests answer **422** like FastAPI's request validation: ``detail`` is a list of
  ``{"type", "loc", "msg", "input"}`` objects (pydantic v2 names), ``error`` one sentence summing them up.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import bottle

JSON_HEADERS = {"Content-Type": "application/json"}
# an error is about one request, never a file's content: no cache keeps it (a 404 of metadata/N+1.root.json ends
# a TUF client's root walk; cached, it would hide the next key rotation)
ERROR_HEADERS = {**JSON_HEADERS, "Cache-Control": "no-store"}


def json_response(document: Any, status: int = 200) -> bottle.HTTPResponse:
    return bottle.HTTPResponse(json.dumps(document, indent=2) + "\n", status=status, headers=JSON_HEADERS)


def error_body(message: str, **extra: Any) -> dict[str, Any]:
    return {"error": message, "detail": message, **extra}


def error_response(status: int, message: str, **extra: Any) -> bottle.HTTPResponse:
    return bottle.HTTPResponse(
        json.dumps(error_body(message, **extra)) + "\n", status=status, headers=ERROR_HEADERS
    )


@dataclass(frozen=True)
class Problem:
    """One request-validation error, as pydantic v2 / FastAPI report it."""

    type: str
    loc: tuple[str | int, ...]
    msg: str
    input: Any = None

    def to_dict(self) -> dict[str, Any]:
        return {"type": self.type, "loc": list(self.loc), "msg": self.msg, "input": self.input}

    def sentence(self) -> str:
        where = ".".join(part for part in self.loc[1:] if isinstance(part, str)) or str(self.loc[0])
        return f"{where}: {self.msg}"


def validation_error(problems: list[Problem]) -> bottle.HTTPResponse:
    """422 with FastAPI's ``detail`` list and lorien's one-line ``error``."""
    body = {"error": "; ".join(p.sentence() for p in problems), "detail": [p.to_dict() for p in problems]}
    return bottle.HTTPResponse(json.dumps(body) + "\n", status=422, headers=ERROR_HEADERS)
