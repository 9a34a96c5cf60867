"""ONNX external-data pair: lorien with and without companion hints against bsdiff4, xdelta3 and zstd.

    python -m bench.external_data [--mib 10] [--out bench/results]

Builds one old/new bundle pair (``model.onnx`` + ``model.onnx.data`` written by the ``onnx`` library): float16
weights, float32 biases and an int8 table in one data file; the new version is a dense fine-tune (every float
weight × (1 + N(0, 1e-3))) with one float32 tensor inserted near the start (every later offset shifts). Each
tool diffs the data file; every patch is applied and checked byte for byte. Writes
``results/external-data-<UTC timestamp>.json``.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np

from lorien.repo.engine import apply_patch, create_patch
from lorien.repo.engine.companions import companion_regions

FILES = ["model.onnx", "model.onnx.data"]


def _tensors(mib: int, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    width = 1024
    layers = max(1, (mib << 20) // (width * width * 2))
    tensors: dict[str, np.ndarray] = {}
    for index in range(layers):
        tensors[f"layer{index}.weight"] = (rng.standard_normal((width, width)) / 32).astype(np.float16)
        tensors[f"layer{index}.bias"] = (rng.standard_normal(width) * 0.01).astype(np.float32)
        if index == 0:
            tensors["table"] = rng.integers(-128, 127, size=65536).astype(np.int8)
    return tensors


def _write(directory: Path, tensors: dict[str, np.ndarray]) -> Path:
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    directory.mkdir(parents=True, exist_ok=True)
    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, None)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(array, name) for name, array in tensors.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.save_model(
        model,
        str(directory / FILES[0]),
        save_as_external_data=True,
        all_tensors_to_one_file=True,
        location=FILES[1],
        size_threshold=0,
    )
    return directory / FILES[1]


def _run(commands: list[list[str]]) -> None:
    for command in commands:
        subprocess.run(command, check=True, capture_output=True)


def _bundle_update(work: Path) -> dict:
    """Both versions as bundle directories (plus labels.txt and tokenizer.json, unchanged) published by
    ``publish``: what a device on the old version downloads for the new one, per file, vs the full bundle."""
    from lorien.publisher.publish import publish
    from lorien.repo.inspect import bundle_costs
    from lorien.repo.manifest import parse_manifest

    models = work / "models" / "bundle"
    for version, side in (("1.0.0", "old"), ("1.1.0", "new")):
        directory = models / version
        directory.mkdir(parents=True)
        for name in FILES:
            (directory / name).write_bytes((work / side / name).read_bytes())
        (directory / "labels.txt").write_text("".join(f"class-{i}\n" for i in range(1000)))
        (directory / "tokenizer.json").write_text(json.dumps({f"token{i}": i for i in range(30000)}))
    report = publish(work / "models", work / "repo")
    assert report.ok, report.all_problems()
    manifest = parse_manifest((work / "repo" / "bundle" / "manifest.json").read_bytes())
    (cost,) = bundle_costs(manifest)
    return cost


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mib", type=int, default=10)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="lorien-extdata-"))
    old_tensors = _tensors(args.mib, 1)
    rng = np.random.default_rng(2)
    changed = {
        name: array
        if array.dtype == np.int8
        else (array * (1 + rng.standard_normal(array.shape) * 1e-3)).astype(array.dtype)
        for name, array in old_tensors.items()
    }
    items = list(changed.items())
    items.insert(1, ("inserted", rng.standard_normal(4096).astype(np.float32)))
    old, new = _write(work / "old", old_tensors), _write(work / "new", dict(items))
    hints = tuple(companion_regions({n: work / side / n for n in FILES}, FILES[1]) for side in ("old", "new"))
    expected = new.read_bytes()
    results: dict[str, dict[str, float]] = {}

    def measure(tool: str, create, apply) -> None:
        patch, out = work / f"{tool}.patch", work / f"{tool}.out"
        started = time.perf_counter()
        create(patch)
        created = time.perf_counter() - started
        started = time.perf_counter()
        apply(patch, out)
        applied = time.perf_counter() - started
        assert out.read_bytes() == expected, tool
        results[tool] = {
            "patch_bytes": patch.stat().st_size,
            "create_s": round(created, 2),
            "apply_s": round(applied, 2),
        }
        print(f"{tool:24} {patch.stat().st_size:>10} bytes  create {created:6.1f} s  apply {applied:5.2f} s")

    measure(
        "lorien+companion", lambda p: create_patch(old, new, p, hints=hints), lambda p, o: apply_patch(old, p, o)
    )
    measure("lorien", lambda p: create_patch(old, new, p), lambda p, o: apply_patch(old, p, o))
    try:
        import bsdiff4

        measure(
            "bsdiff4",
            lambda p: bsdiff4.file_diff(str(old), str(new), str(p)),
            lambda p, o: bsdiff4.file_patch(str(old), str(o), str(p)),
        )
    except ImportError:
        print("bsdiff4 not installed (pip install -e '.[bench]'): skipped")
    measure(
        "xdelta3",
        lambda p: _run([["xdelta3", "-9", "-e", "-f", "-s", str(old), str(new), str(p)]]),
        lambda p, o: _run([["xdelta3", "-d", "-f", "-s", str(old), str(p), str(o)]]),
    )
    measure(
        "zstd-patch-from",
        lambda p: _run([["zstd", "-19", "--long=27", f"--patch-from={old}", str(new), "-o", str(p), "-f", "-q"]]),
        lambda p, o: _run([["zstd", "-d", "--long=27", f"--patch-from={old}", str(p), "-o", str(o), "-f", "-q"]]),
    )
    measure(
        "zstd-full",
        lambda p: _run([["zstd", "-19", "--long=27", str(new), "-o", str(p), "-f", "-q"]]),
        lambda p, o: _run([["zstd", "-d", "--long=27", str(p), "-o", str(o), "-f", "-q"]]),
    )
    bundle = _bundle_update(work)
    print(f"bundle update (publish → per-file plan): {bundle['bytes']} of {bundle['full']} bytes")
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    args.out.mkdir(parents=True, exist_ok=True)
    document = {
        "pair": "onnx external data: fp16 weights + fp32 biases + int8 table, dense 1e-3 fine-tune, tensor inserted",
        "old_bytes": old.stat().st_size,
        "new_bytes": new.stat().st_size,
        "machine": platform.platform(),
        "results": results,
        "bundle_update": bundle,
    }
    (args.out / f"external-data-{stamp}.json").write_text(json.dumps(document, indent=2) + "\n")


if __name__ == "__main__":
    main()
