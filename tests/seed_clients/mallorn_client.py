"""A client of Mallorn's example patch server, written only from its public reference.

Source of the shapes: ``examples/server/patch_server.py`` in gar-ai/mallorn (FastAPI): the pydantic models
``FingerprintRequest``, ``FingerprintResponse``, ``UpdateCheckResponse``, ``PatchManifest``, the dicts returned
by ``/health``, ``/create-patch`` and ``/manifest``'s patches, and FastAPI's error bodies (``{"detail": str}``
for ``HTTPException``, ``{"detail": [{"loc", "msg", "type"}, …]}`` for request validation, status 422).

Strict: every field the reference serializes must be present with the reference's type (FastAPI writes every
field of a response model, ``null`` for unset optional ones), or :class:`ShapeError`. Extra keys are allowed,
as a client of the reference would ignore them.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass
from typing import Any, Optional, TypeVar, Union

import requests

T = TypeVar("T")


class ShapeError(AssertionError):
    """The server's JSON does not have the reference's shape."""


class MallornHTTPError(Exception):
    def __init__(self, status: int, detail: Any) -> None:
        super().__init__(f"HTTP {status}: {detail}")
        self.status, self.detail = status, detail


@dataclass
class Health:  # GET /health (a dict in the reference)
    status: str
    mallorn_available: bool
    models_count: int
    patches_count: int


@dataclass
class PatchInfo:  # one item of PatchManifest.patches, as get_manifest() builds it
    id: str
    url: str
    size: int


@dataclass
class PatchManifest:
    model_family: str
    latest_version: str
    patches: list[PatchInfo]


@dataclass
class UpdateCheckResponse:
    update_available: bool
    current_version: Optional[str]  # noqa: UP045 — spelled as in the reference
    latest_version: Optional[str]  # noqa: UP045
    patch_url: Optional[str]  # noqa: UP045
    patch_size: Optional[int]  # noqa: UP045
    expected_hash: Optional[str]  # noqa: UP045


@dataclass
class FingerprintResponse:
    format: str
    file_size: int
    header_hash: str
    tail_hash: str
    short_id: str


@dataclass
class CreatePatchResponse:  # the dict create_patch() returns
    patch_id: str
    patch_size: int
    compression_ratio: float
    url: str


@dataclass
class ValidationItem:  # FastAPI's request-validation error item
    loc: list[Union[str, int]]  # noqa: UP007
    msg: str
    type: str


def _check(value: Any, kind: Any, where: str) -> Any:
    origin = typing.get_origin(kind)
    if origin in (Union, types.UnionType):
        for option in typing.get_args(kind):
            try:
                return _check(value, option, where)
            except ShapeError:
                continue
        raise ShapeError(f"{where}: {value!r} is none of {kind}")
    if kind is type(None):
        if value is not None:
            raise ShapeError(f"{where}: expected null, got {value!r}")
        return None
    if origin is list:
        if not isinstance(value, list):
            raise ShapeError(f"{where}: expected a list, got {value!r}")
        (item,) = typing.get_args(kind)
        return [_check(v, item, f"{where}[{i}]") for i, v in enumerate(value)]
    if dataclasses.is_dataclass(kind):
        return parse(kind, value, where)
    if kind is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    elif kind is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    else:
        ok = isinstance(value, kind)
    if not ok:
        raise ShapeError(f"{where}: expected {kind.__name__}, got {value!r}")
    return value


def parse(cls: type[T], data: Any, where: str = "response") -> T:
    """``cls`` from JSON ``data``; every field required and type-checked, extra keys ignored."""
    if not isinstance(data, dict):
        raise ShapeError(f"{where}: expected a JSON object, got {data!r}")
    hints = typing.get_type_hints(cls)
    values = {}
    for field in dataclasses.fields(cls):  # type: ignore[arg-type]
        if field.name not in data:
            raise ShapeError(f"{where}: missing field {field.name!r} in {sorted(data)}")
        values[field.name] = _check(data[field.name], hints[field.name], f"{where}.{field.name}")
    return cls(**values)


class MallornClient:
    """What a device or an operator script written against Mallorn's README does."""

    def __init__(self, base_url: str, timeout: float = 30) -> None:
        self.base_url, self.timeout = base_url.rstrip("/"), timeout

    def _json(self, response: requests.Response) -> Any:
        if response.status_code != 200:
            body = response.json()
            if "detail" not in body:
                raise ShapeError(f"error {response.status_code} without 'detail': {body}")
            detail = body["detail"]
            if response.status_code == 422:
                detail = _check(detail, list[ValidationItem], "detail")
            else:
                _check(detail, str, "detail")
            raise MallornHTTPError(response.status_code, detail)
        return response.json()

    def health(self) -> Health:
        return parse(Health, self._json(requests.get(f"{self.base_url}/health", timeout=self.timeout)))

    def manifest(self, params: dict[str, str] | None = None) -> PatchManifest:
        response = requests.get(f"{self.base_url}/manifest", params=params, timeout=self.timeout)
        return parse(PatchManifest, self._json(response))

    def check_update(self, short_id: str, file_size: int | None = None, **extra: Any) -> UpdateCheckResponse:
        body: dict[str, Any] = {"short_id": short_id, **extra}
        if file_size is not None:
            body["file_size"] = file_size
        response = requests.post(f"{self.base_url}/check-update", json=body, timeout=self.timeout)
        return parse(UpdateCheckResponse, self._json(response))

    def post_raw(self, path: str, data: bytes, headers: dict[str, str] | None = None) -> MallornHTTPError:
        """POST a body as is; the error the server answers (a 200 is a ShapeError here)."""
        headers = {"Content-Type": "application/json", **(headers or {})}
        response = requests.post(f"{self.base_url}{path}", data=data, headers=headers, timeout=self.timeout)
        try:
            self._json(response)
        except MallornHTTPError as error:
            return error
        raise ShapeError(f"{path}: expected an error, got {response.status_code} {response.text[:200]}")

    def download_patch(self, patch_url: str, start: int = 0) -> tuple[int, bytes]:
        """(status, bytes) of ``patch_url`` from byte ``start`` (README: resume with ``Range: bytes=N-``)."""
        headers = {"Range": f"bytes={start}-"} if start else {}
        response = requests.get(f"{self.base_url}{patch_url}", headers=headers, timeout=self.timeout)
        if response.status_code not in (200, 206):
            self._json(response)
        if response.headers.get("Accept-Ranges") != "bytes":
            raise ShapeError(f"{patch_url}: no 'Accept-Ranges: bytes'")
        return response.status_code, response.content

    def fingerprint(self, model_name: str) -> FingerprintResponse:
        response = requests.get(f"{self.base_url}/fingerprint/{model_name}", timeout=self.timeout)
        return parse(FingerprintResponse, self._json(response))

    def create_patch(self, source: str, target: str, headers: dict[str, str] | None = None) -> CreatePatchResponse:
        params = {"source_version": source, "target_version": target}
        response = requests.post(
            f"{self.base_url}/create-patch", params=params, headers=headers or {}, timeout=self.timeout
        )
        return parse(CreatePatchResponse, self._json(response))
