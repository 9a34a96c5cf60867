"""HTML pages for people (their content; their layout in a real browser: tests/test_pages_browser.py), and
the TFLite generator read back by the independent `tflite` package."""

from __future__ import annotations

import json
import re
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import tflite

from lorien.modelgen import fine_tune, random_mlp, to_tflite
from lorien.publisher.html import render_family_page, render_root_page
from lorien.publisher.tuf_writer import TufWriter, serialize
from lorien.repo.fingerprint import detect_format
from lorien.repo.manifest import parse_index, parse_manifest
from lorien.repo.signing import generate_keypair, load_signing_key
from lorien.repo.tufmeta import signer, tuf_key


class _Links(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.links: list[str] = []
        self.downloads: list[str | None] = []  # the download attribute of each link into blobs/
        self.bars: list[str] = []  # classes of the chart's bars

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        named = dict(attrs)
        if tag == "a" and named.get("href"):
            self.links.append(named["href"] or "")
            if "blobs/" in (named["href"] or ""):
                self.downloads.append(named.get("download"))
        if tag == "rect":
            self.bars.append(named.get("class") or "")


def _links(page: Path) -> list[str]:
    parser = _Links()
    parser.feed(page.read_text())
    return parser.links


def test_pages_show_versions_sizes_savings_and_links_resolve(published: Path) -> None:
    manifest = json.loads((published / "classifier" / "manifest.json").read_text())
    page = (published / "classifier" / "index.html").read_text()
    for version in manifest["versions"]:
        assert (
            version["version"] in page and version["fingerprint"]["short_id"] in page and version["sha256"] in page
        )
    for patch in manifest["patches"]:
        assert patch["id"] in page
    assert re.search(r"\d+\.\d% *</td>", page), "savings percentages are shown"
    for root_page in (published / "index.html", published / "classifier" / "index.html"):
        for link in _links(root_page):
            assert (root_page.parent / link).resolve().is_file(), f"{root_page}: broken link {link}"
    assert "classifier/index.html" in _links(published / "index.html")


def test_family_page_shows_expiry_sequence_chart_and_download_names(published: Path) -> None:
    manifest = parse_manifest((published / "classifier" / "manifest.json").read_bytes())
    page = render_family_page(manifest)
    parser = _Links()
    parser.feed(page)
    assert manifest.expires and manifest.expires in page
    assert f'<dd class="sequence">{manifest.sequence}</dd>' in page
    assert "signed by" not in page, "without the repository root the page cannot know the signers"
    compressed = [entry.compressed for entry in manifest.versions if entry.compressed is not None]
    assert compressed and all(f'href="../{c.blob}"' in page for c in compressed)  # the compressed full downloads
    assert len(parser.downloads) == len(manifest.versions) + len(manifest.patches) + len(compressed)
    assert all(parser.downloads)
    assert sorted(parser.bars) == sorted(["full", "patch"] * len(manifest.patches))
    for entry in manifest.versions:
        assert f'title="sha256 {entry.sha256}">{entry.sha256[:12]}…</code>' in page


def test_pages_show_the_tuf_roles_and_targets_keys_without_verifying(published: Path, tmp_path: Path) -> None:
    manifest = parse_manifest((published / "classifier" / "manifest.json").read_bytes())
    index = parse_index((published / "index.json").read_bytes())
    assert ">unsigned</span>" in render_family_page(manifest, published)
    keys = [load_signing_key(generate_keypair(tmp_path / f"k{n}")[0]) for n in range(2)]
    writer = TufWriter(published)
    root = writer.initial_root(
        {"root": keys[:1], "targets": keys, "snapshot": keys[:1], "timestamp": keys[:1]}, {}
    )
    root.sign(signer(keys[0]))  # not signed by the targets keys' threshold: the page shows, never verifies
    (published / "metadata").mkdir()
    for name in ("1.root.json", "root.json"):
        (published / "metadata" / name).write_bytes(serialize(root))
    targets_ids = [tuf_key(key).keyid for key in keys]
    for page in (render_family_page(manifest, published), render_root_page(index, [manifest], published)):
        assert all(f'title="{keyid}">{keyid[:12]}…</code>' in page for keyid in targets_ids)
    root_page = render_root_page(index, [manifest], published)
    assert "Trust (TUF)" in root_page and "1 of 2" in root_page  # the targets role: threshold 1 of its 2 keys
    (published / "metadata" / "1.root.json").write_bytes(b"{not json")
    assert "unreadable root.json" in render_family_page(manifest, published)


def test_generated_tflite_reads_back_with_the_tflite_package() -> None:
    model = random_mlp((16, 32, 4), seed=2)
    data = to_tflite(model)
    assert data[4:8] == b"TFL3" and detect_format(data) == "tflite"
    parsed = tflite.Model.GetRootAsModel(data, 0)
    assert parsed.Version() == 3 and parsed.SubgraphsLength() == 1
    graph = parsed.Subgraphs(0)
    assert graph.OperatorsLength() == 3  # two FULLY_CONNECTED + SOFTMAX
    assert [parsed.OperatorCodes(i).BuiltinCode() for i in range(2)] == [9, 25]
    kernel = graph.Tensors(1)
    assert kernel.Name() == b"dense_0/kernel" and list(kernel.ShapeAsNumpy()) == [32, 16]
    raw = parsed.Buffers(kernel.Buffer()).DataAsNumpy()
    assert np.array_equal(raw.view(np.float32).reshape(32, 16), model.weights[0])
    offset = raw.ctypes.data - np.frombuffer(data, np.uint8).ctypes.data
    assert offset % 16 == 0, "weight buffers are 16-byte aligned like the converter's"


def test_fine_tune_keeps_backbone_and_changes_head() -> None:
    base = random_mlp((16, 32, 32, 4), seed=1)
    tuned = fine_tune(base, seed=5)
    assert np.array_equal(base.weights[0], tuned.weights[0])
    assert not np.array_equal(base.weights[-1], tuned.weights[-1])
    changed_rows = np.any(base.weights[1] != tuned.weights[1], axis=1)
    assert 0 < changed_rows.sum() < len(changed_rows)
