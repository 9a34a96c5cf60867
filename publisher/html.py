"""HTML pages for people inspecting a repository, rendered with jinja2 from the manifests.

Pages are a pure function of the manifests (their ``generated_at`` included), so re-publishing with no change
renders identical bytes and nothing is rewritten. Links are relative, so the pages work from any base URL.

Both pages flag every group of versions that share a Mallorn identity (a ``short_id``; often the whole
fingerprint): a Mallorn client cannot tell them apart (docs/fingerprint.md).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from jinja2 import Environment, PackageLoader, select_autoescape

from lorien.repo.fingerprint import AMBIGUOUS_SHORT_ID
from lorien.repo.inspect import human_size
from lorien.repo.manifest import Index, Manifest, VersionEntry

_environment = Environment(
    loader=PackageLoader("lorien.publisher", "templates"),
    autoescape=select_autoescape(["html"]),
    trim_blocks=True,
    lstrip_blocks=True,
    keep_trailing_newline=True,
)
_environment.filters["size"] = human_size


def _patch_rows(manifest: Manifest) -> list[dict[str, Any]]:
    rows = []
    for patch in manifest.patches:
        full = manifest.version(patch.target).size
        rows.append(
            {
                "patch": patch,
                "full_size": full,
                "percent": 100 * patch.size / full,
                "saving": 100 * (1 - patch.size / full),
            }
        )
    return rows


def identity_groups(versions: Iterable[tuple[str, VersionEntry]]) -> list[dict[str, Any]]:
    """Groups of two or more versions (given as ``(label, entry)``) sharing a ``short_id``, first seen first,
    each with why they collide and which request fields of ``POST /check-update`` tell them apart."""
    by_id: dict[str, list[tuple[str, VersionEntry]]] = {}
    for label, entry in versions:
        by_id.setdefault(entry.fingerprint.short_id, []).append((label, entry))
    groups = []
    for short_id, members in by_id.items():
        if len(members) < 2:
            continue
        entries = [entry for _, entry in members]
        group = {"short_id": short_id, "labels": [label for label, _ in members]}
        if len({(e.size, e.fingerprint.header_hash, e.fingerprint.tail_hash) for e in entries}) > 1:
            small = short_id == AMBIGUOUS_SHORT_ID
            group["reason"] = "files under 68 KiB all have this short_id" if small else "short_id collision"
            group["remedy"] = "file_size, header_hash, tail_hash"
        else:
            group["reason"] = "same Mallorn fingerprint: same size, first 64 KiB and last 4 KiB"
            sampled = [e.sampled_sha256 for e in entries]
            shared_samples = None not in sampled and len(set(sampled)) < len(sampled)
            group["remedy"] = (
                "sha256 (some also share their sampled hash)" if shared_samples else "sampled_sha256, sha256"
            )
        groups.append(group)
    return groups


def render_family_page(manifest: Manifest) -> str:
    groups = identity_groups((entry.version, entry) for entry in manifest.versions)
    return _environment.get_template("family.html").render(
        manifest=manifest,
        patch_rows=_patch_rows(manifest),
        groups=groups,
        shared={group["short_id"]: group for group in groups},
    )


def render_root_page(index: Index, manifests: list[Manifest]) -> str:
    by_name = {m.family: m for m in manifests}
    families = [
        {"entry": entry, "manifest": by_name[entry.name], "latest": by_name[entry.name].latest_entry()}
        for entry in index.families
    ]
    groups = identity_groups((f"{m.family} {e.version}", e) for m in manifests for e in m.versions)
    return _environment.get_template("root.html").render(families=families, groups=groups)
