"""Every hard limit lorien enforces on untrusted input, in one frozen dataclass.

Anything read from a repository, a patch, a server or an API client is bounded by a field here *before* memory
is allocated or bytes are written: a hostile or broken peer can make an operation fail with a clear error, never
make it read without end, allocate without bound or wait forever. ``DEFAULT_LIMITS`` is what every component
uses unless told otherwise; the device can tighten or loosen fields in its config (``[limits]`` table).
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import Any

KiB = 1024
MiB = 1024 * KiB


@dataclass(frozen=True)
class Limits:
    # repository documents (manifest.json, index.json and their .sig files)
    max_document_bytes: int = 16 * MiB
    max_signature_bytes: int = 64 * KiB
    max_versions: int = 10_000  # versions listed in one manifest
    max_patches: int = 100_000  # patches listed in one manifest (also: families in index.json)
    max_blob_bytes: int = 1 << 40  # a declared model or patch size above this is treated as hostile
    max_chain_length: int = 32  # patches applied in a row by one update
    # TUF metadata (tuf.ngclient's UpdaterConfig); targets.json is bounded by max_document_bytes
    max_root_bytes: int = 512 * KiB
    max_timestamp_bytes: int = 16 * KiB
    max_snapshot_bytes: int = 2 * MiB
    max_root_rotations: int = 256  # root versions walked in one refresh
    # network: a peer that stops sending, or sends too slowly, is cut off
    connect_timeout: float = 5.0  # seconds
    stall_timeout: float = 30.0  # seconds without a single byte
    head_timeout: float = 30.0  # seconds from sending a request to its complete status line and headers
    # seconds for a whole document (manifest, .sig, index.json), every attempt included; raise it for large
    # manifests on links near min_rate (120 s at 512 B/s is 60 KiB)
    document_timeout: float = 120.0
    min_rate: int = 512  # bytes per second, averaged over ``rate_window`` (slow-retrieval defence)
    rate_window: float = 60.0  # seconds
    # device HTTP API
    max_request_body: int = 64 * KiB
    # patch container (LRNPATCH): bound the applier's memory independent of model size
    max_segments: int = 1 << 20
    max_segment: int = 16 * MiB  # target bytes one non-COPY segment may produce
    max_reference: int = 16 * MiB  # source bytes one segment may read as reference (COPY excepted)
    max_payload: int = 17 * MiB  # payload bytes of one segment
    max_target: int = 1 << 40  # bytes one patch may produce (any engine); free space is checked as well
    max_window: int = 1 << 27  # zstd window the ``zstd`` engine's decoder may allocate (a power of two)

    def with_overrides(self, values: dict[str, Any], where: str) -> Limits:
        """A copy with ``values`` applied; unknown names and non-positive numbers raise ValueError naming them."""
        known = {f.name: f for f in fields(self)}
        changes: dict[str, Any] = {}
        for name, value in values.items():
            if name not in known:
                raise ValueError(f"{where}.{name}: unknown limit (known: {', '.join(sorted(known))})")
            integer = isinstance(getattr(self, name), int)
            kinds = (int,) if integer else (int, float)
            if isinstance(value, bool) or not isinstance(value, kinds) or value <= 0:
                kind = "a positive integer" if integer else "a positive number"
                raise ValueError(f"{where}.{name}: must be {kind}, got {value!r}")
            changes[name] = value if integer else float(value)
        return replace(self, **changes)


DEFAULT_LIMITS = Limits()
