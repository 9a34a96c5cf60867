"""HTML pages for people inspecting a repository, rendered with jinja2 from the manifests.

Pages are a pure function of the manifests (their ``generated_at`` included; given the root, also of the TUF root
metadata's roles and keys), so re-publishing with no change renders identical bytes and nothing is rewritten. Links
are relative, so the pages work from any base URL.

Both pages flag every group of versions that share a Mallorn identity (a ``short_id``; often the whole
fingerprint): a Mallorn client cannot tell them apart (docs/fingerprint.md). They show each manifest's
sequence, expiry and, given the repository root, the TUF roles (keys, thresholds) and the targets keys that sign
what devices may install — only what the files say: whether a device would trust it is decided on the device, never here. A family page draws full versus
patch bytes per version pair as inline SVG (no script, nothing fetched).
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

from jinja2 import Environment, PackageLoader, select_autoescape

from lorien.publisher.tuf_writer import TufWriter
from lorien.repo.errors import LorienError
from lorien.repo.fingerprint import AMBIGUOUS_SHORT_ID
from lorien.repo.inspect import human_size
from lorien.repo.manifest import Index, Manifest, VersionEntry
from lorien.repo.tufmeta import summarize

_environment = Environment(
    loader=PackageLoader("lorien.publisher", "templates"),
    autoescape=select_autoescape(["html"]),
    trim_blocks=True,
    lstrip_blocks=True,
    keep_trailing_newline=True,
)
_environment.filters["size"] = human_size
_environment.filters["short"] = lambda digest: digest[:12] + "…"

_CHART_ROW = 46  # px per version pair in the bytes chart: a label above two bars
_CHART_BARS = 560  # px for the longest bar; the chart is 120 px wider for the sizes after the bars
_CHART_LABEL_CHARS = 90  # longer "from → to" labels are cut (the full one is the label's tooltip)


def _trust_roles(root: Path | None) -> list[dict[str, Any]] | None:
    """The TUF roles the repository's newest root names (keys, thresholds; the root's own version and expiry):
    ``None`` without a root directory or TUF metadata. Read, not verified: devices verify."""
    if root is None:
        return None
    writer = TufWriter(root)
    if not writer.exists():
        return None
    try:
        signed = writer.read_root().signed
    except LorienError:
        return []
    return [row.to_dict() for row in summarize(signed, {})]


def _targets_key_ids(roles: list[dict[str, Any]] | None) -> list[str] | None:
    """Who signs what devices may install: the targets role's key ids."""
    if roles is None:
        return None
    return next((role["keyids"] for role in roles if role["role"] == "targets"), [])


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


def _bytes_chart(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Geometry of the inline SVG chart: per version pair, the full target's bar and the patch's bar, both scaled
    to the largest full size of the family."""
    largest = max((row["full_size"] for row in rows), default=1)
    bars = []
    for index, row in enumerate(rows):
        label = f"{row['patch'].source} → {row['patch'].target}"
        bars.append(
            {
                "row": row,
                "label": label if len(label) <= _CHART_LABEL_CHARS else label[: _CHART_LABEL_CHARS - 1] + "…",
                "y": index * _CHART_ROW,
                "full": max(1.0, _CHART_BARS * row["full_size"] / largest),
                "patch": max(1.0, _CHART_BARS * row["patch"].size / largest),
            }
        )
    return {"bars": bars, "width": _CHART_BARS + 120, "height": len(bars) * _CHART_ROW}


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


def render_family_page(manifest: Manifest, root: Path | None = None) -> str:
    """The family's ``index.html``; ``root`` (the repository) lets it show the targets role's key ids."""
    groups = identity_groups((entry.version, entry) for entry in manifest.versions)
    patch_rows = _patch_rows(manifest)
    return _environment.get_template("family.html").render(
        manifest=manifest,
        patch_rows=patch_rows,
        chart=_bytes_chart(patch_rows),
        show_signers=root is not None,
        key_ids=_targets_key_ids(_trust_roles(root)),
        groups=groups,
        shared={group["short_id"]: group for group in groups},
    )


def render_root_page(index: Index, manifests: list[Manifest], root: Path | None = None) -> str:
    """The repository's ``index.html``; ``root`` lets it show the TUF roles and the targets keys."""
    by_name = {m.family: m for m in manifests}
    roles = _trust_roles(root)
    families = [
        {
            "entry": entry,
            "manifest": by_name[entry.name],
            "latest": by_name[entry.name].latest_entry(),
            "key_ids": _targets_key_ids(roles),
        }
        for entry in index.families
    ]
    groups = identity_groups((f"{m.family} {e.version}", e) for m in manifests for e in m.versions)
    return _environment.get_template("root.html").render(
        families=families, groups=groups, show_signers=root is not None, roles=roles
    )
