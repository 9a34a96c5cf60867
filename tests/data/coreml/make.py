"""How weight-1.bin / weight-2.bin were made (coremltools 9.0 on Linux; not run by the tests, which do not need
coremltools): a two-layer MIL program converted to an ML program; version 2 is a dense 1e-3 fine-tune of
version 1. Each .mlpackage's Data/com.apple.CoreML/weights/weight.bin is copied here.

    python -m venv /tmp/cml && /tmp/cml/bin/pip install coremltools numpy
    /tmp/cml/bin/python tests/data/coreml/make.py OUT_DIR
"""

import shutil
import sys
from pathlib import Path

import coremltools as ct
import numpy as np
from coremltools.converters.mil import Builder as mb
from coremltools.converters.mil.mil import types


def weights(version: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(17)
    base = {
        "w1": (rng.standard_normal((128, 64)) / 8).astype(np.float16),
        "b1": (rng.standard_normal(128) / 100).astype(np.float16),
        "w2": (rng.standard_normal((10, 128)) / 11).astype(np.float32),
    }
    if version == 1:
        return base
    nudge = np.random.default_rng(18)
    return {k: (v * (1 + nudge.standard_normal(v.shape) * 1e-3)).astype(v.dtype) for k, v in base.items()}


def build(version: int, out: Path) -> None:
    w = weights(version)

    @mb.program(input_specs=[mb.TensorSpec(shape=(1, 64), dtype=types.fp16)], opset_version=ct.target.iOS16)
    def prog(x):
        y = mb.linear(x=x, weight=w["w1"], bias=w["b1"])
        y = mb.cast(x=y, dtype="fp32")
        return mb.linear(x=y, weight=w["w2"])

    model = ct.convert(
        prog,
        convert_to="mlprogram",
        minimum_deployment_target=ct.target.iOS16,
        compute_precision=ct.precision.FLOAT32,
    )
    package = out / f"v{version}.mlpackage"
    model.save(str(package))
    shutil.copy(package / "Data" / "com.apple.CoreML" / "weights" / "weight.bin", out / f"weight-{version}.bin")


if __name__ == "__main__":
    for v in (1, 2):
        build(v, Path(sys.argv[1]))
