"""The device tests' repository: one family, three versions, published so that the only way from the oldest to
the newest by patches is a two-hop chain.

``tests/test_device.py`` serves it with real processes; ``tests/test_updater_inprocess.py`` loads it into the
in-memory repository.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from lorien.modelgen import write_family
from lorien.publisher.publish import publish

FAMILY = "cls"
VERSIONS = ["1.0.0", "1.1.0", "1.2.0"]


def publish_two_hop_family(root: Path, layer_sizes: tuple[int, ...]) -> None:
    """``root/all/cls/<version>.tflite`` for every version, and ``root/repo`` with only the patches
    1.0.0→1.1.0 and 1.1.0→1.2.0 (1.2.0 is published with ``keep=1``)."""
    write_family(root / "all" / FAMILY, VERSIONS, layer_sizes=layer_sizes, seed=11)
    models = root / "models" / FAMILY
    models.mkdir(parents=True)
    for version in VERSIONS[:2]:
        shutil.copy(model_file(root, version), models)
    assert publish(root / "models", root / "repo").ok
    shutil.copy(model_file(root, VERSIONS[-1]), models)
    assert publish(root / "models", root / "repo", keep=1).ok


def model_file(root: Path, version: str) -> Path:
    return root / "all" / FAMILY / f"{version}.tflite"
