"""A bundle family on disk for tests: each version a directory with an ONNX model whose weights are external
data (``model.onnx`` + ``model.onnx.data``, written by the ``onnx`` library), ``labels.txt`` and
``tokenizer/vocab.json``. Successive versions are dense fine-tunes; labels change only where asked."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from tests.support.model_files import mlp_tensors, nudged, write_onnx_external

BUNDLE_FILES = ["labels.txt", "model.onnx", "model.onnx.data", "tokenizer/vocab.json"]


def bundle_tensors(step: int) -> dict[str, np.ndarray]:
    tensors = {
        name: array.astype(np.float16) if name.endswith("weight") else array
        for name, array in mlp_tensors(7, sizes=(128, 256, 128, 10)).items()
    }
    for index in range(step):
        tensors = nudged(tensors, 100 + index)
    return tensors


def write_bundle_version(directory: Path, step: int, labels: int = 10) -> Path:
    """Version ``step`` of the bundle in ``directory`` (created); ``labels`` names the label set."""
    write_onnx_external(directory, bundle_tensors(step))
    (directory / "labels.txt").write_text("".join(f"class-{i}-{labels}\n" for i in range(10)))
    (directory / "tokenizer").mkdir(exist_ok=True)
    (directory / "tokenizer" / "vocab.json").write_text(json.dumps({f"tok{i}": i for i in range(200)}))
    return directory


def write_bundle_family(models: Path, family: str = "bundle", versions: int = 3) -> list[Path]:
    """``models/<family>/1.0.0/`` … ``1.<versions-1>.0/``; the last version also changes its labels."""
    paths = []
    for step in range(versions):
        labels = 20 if step == versions - 1 and versions > 1 else 10
        paths.append(write_bundle_version(models / family / f"1.{step}.0", step, labels))
    return paths
