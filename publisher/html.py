"""HTML pages for people inspecting a repository, rendered with jinja2 from the manifests.

Pages are a pure function of the manifests (their ``generated_at`` included), so re-publishing with no change
renders identical bytes and nothing is rewritten. Links are relative, so the pages work from any base URL.
"""

from __future__ import annotations

from typing import Any

from jinja2 import Environment, PackageLoader, select_autoescape

from lorien.repo.inspect import human_size
from lorien.repo.manifest import Index, Manifest

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


def render_family_page(manifest: Manifest) -> str:
    return _environment.get_template("family.html").render(manifest=manifest, patch_rows=_patch_rows(manifest))


def render_root_page(index: Index, manifests: list[Manifest]) -> str:
    by_name = {m.family: m for m in manifests}
    families = [
        {"entry": entry, "manifest": by_name[entry.name], "latest": by_name[entry.name].latest_entry()}
        for entry in index.families
    ]
    return _environment.get_template("root.html").render(families=families)
