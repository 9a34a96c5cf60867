"""Real model pairs from public releases: models that Python packages ship in their wheels, version to version.

Nothing here is generated: each pair is one model file as two published releases of a package carry it (a
re-trained model under the same name), or two variants a release ships side by side (``lite`` and ``full``).
The wheels are fetched from the package registry by exact name and version with ``pip download`` — the only
download — and the model files are read out of them (a wheel is a zip archive)::

    .venv/bin/python -m bench.public_releases make --out /tmp/public-releases    # pip download, ~100 MB of wheels
    .venv/bin/python -m bench.public_releases run --corpus /tmp/public-releases [--tools …] [--only silero]

``make`` writes ``<pair>/old.<ext>``, ``<pair>/new.<ext>`` and ``pairs.json`` (``bench.corpus.Pair`` records
with the package, versions and member paths); ``run`` measures every tool on every pair with
``bench.pairs_file.run`` and writes ``results/public-releases-<UTC timestamp>.json``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

SILERO = "silero_vad/data/"
RAPIDOCR = "rapidocr_onnxruntime/models/"
MEDIAPIPE = "mediapipe/modules/"
OPENWAKEWORD = "openwakeword/resources/models/"


@dataclass(frozen=True)
class Release:
    """One model file inside one wheel: ``package==version``, member path in the archive."""

    package: str
    version: str
    member: str

    def spec(self) -> str:
        return f"{self.package}=={self.version}"


@dataclass(frozen=True)
class ReleasePair:
    name: str
    format: str  # the bench's format column (pt for TorchScript)
    scenario: str  # "release": the same model in two releases; "variant": two models of one release
    old: Release
    new: Release


def _silero(member: str, old: str, new: str) -> tuple[Release, Release]:
    return Release("silero-vad", old, SILERO + member), Release("silero-vad", new, SILERO + member)


PAIRS = (
    ReleasePair("silero-vad-onnx-5.1.2-6.0.0", "onnx", "release", *_silero("silero_vad.onnx", "5.1.2", "6.0.0")),
    ReleasePair("silero-vad-onnx-6.0.0-6.2.0", "onnx", "release", *_silero("silero_vad.onnx", "6.0.0", "6.2.0")),
    ReleasePair(
        "silero-vad-16k-op15-6.0.0-6.2.0", "onnx", "release", *_silero("silero_vad_16k_op15.onnx", "6.0.0", "6.2.0")
    ),
    ReleasePair("silero-vad-jit-5.1.2-6.0.0", "pt", "release", *_silero("silero_vad.jit", "5.1.2", "6.0.0")),
    ReleasePair("silero-vad-jit-6.0.0-6.2.0", "pt", "release", *_silero("silero_vad.jit", "6.0.0", "6.2.0")),
    *(
        ReleasePair(
            f"openwakeword-{name}-0.4.0-0.5.1",
            "onnx",
            "release",
            Release("openwakeword", "0.4.0", OPENWAKEWORD + member),
            Release("openwakeword", "0.5.1", OPENWAKEWORD + member),
        )
        for name, member in (("embedding", "embedding_model.onnx"), ("hey-mycroft", "hey_mycroft_v0.1.onnx"))
    ),
    *(
        ReleasePair(
            f"rapidocr-{stage}-ppocr-v3-v4",
            "onnx",
            "release",
            Release("rapidocr-onnxruntime", "1.2.3", f"{RAPIDOCR}ch_PP-OCRv3_{stage}_infer.onnx"),
            Release("rapidocr-onnxruntime", "1.4.4", f"{RAPIDOCR}ch_PP-OCRv4_{stage}_infer.onnx"),
        )
        for stage in ("det", "rec")  # the text detector and recogniser
    ),
    *(
        ReleasePair(
            f"mediapipe-{name}",
            "tflite",
            "variant",
            Release("mediapipe", "0.10.14", MEDIAPIPE + old),
            Release("mediapipe", "0.10.14", MEDIAPIPE + new),
        )
        for name, old, new in (
            ("hand-landmark-lite-full", "hand_landmark/hand_landmark_lite.tflite", "hand_landmark/hand_landmark_full.tflite"),
            ("palm-detection-lite-full", "palm_detection/palm_detection_lite.tflite", "palm_detection/palm_detection_full.tflite"),
            ("selfie-segmentation-landscape", "selfie_segmentation/selfie_segmentation.tflite", "selfie_segmentation/selfie_segmentation_landscape.tflite"),
            ("face-landmark-attention", "face_landmark/face_landmark.tflite", "face_landmark/face_landmark_with_attention.tflite"),
        )
    ),
)  # fmt: skip


def _wheel(spec: str, into: Path) -> Path:
    """``pip download`` one wheel (this interpreter's platform, no dependencies) into ``into``."""
    target = into / spec.replace("==", "-")
    wheels = sorted(target.glob("*.whl"))
    if not wheels:
        command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary", ":all:", "-q"]
        subprocess.run([*command, "-d", str(target), spec], check=True)
        wheels = sorted(target.glob("*.whl"))
    if len(wheels) != 1:
        raise SystemExit(f"{target}: expected one wheel of {spec}, found {len(wheels)}")
    return wheels[0]


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def make(out: Path, wheels: Path) -> list[dict[str, object]]:
    """Write every pair under ``out`` and its ``pairs.json``; wheels are kept in ``wheels`` for a re-run."""
    from bench.corpus import write_bytes_atomic

    index = []
    for pair in PAIRS:
        folder = out / pair.name
        folder.mkdir(parents=True, exist_ok=True)
        record: dict[str, object] = {"name": pair.name, "format": pair.format, "size": "public"}
        record["scenario"] = pair.scenario
        for role, release in (("old", pair.old), ("new", pair.new)):
            with zipfile.ZipFile(_wheel(release.spec(), wheels)) as wheel:
                data = wheel.read(release.member)
            path = folder / f"{role}{Path(release.member).suffix}"
            write_bytes_atomic(path, data)
            record[role] = str(path.relative_to(out))
            record[f"{role}_bytes"] = len(data)
            record[f"{role}_sha256"] = _sha256(data)
            record[f"{role}_release"] = f"{release.spec()}:{release.member}"
        if record["old_sha256"] == record["new_sha256"]:
            raise SystemExit(f"{pair.name}: both releases carry the same file; the pair measures nothing")
        index.append(record)
        print(f"{pair.name}: {record['old_bytes']:,} → {record['new_bytes']:,} B", flush=True)
    made = {"made_with": "model files read out of public wheels (pip download)", "pairs": index}
    write_bytes_atomic(out / "pairs.json", (json.dumps(made, indent=2) + "\n").encode())
    return index


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.public_releases", description=__doc__.split("\n")[0])
    actions = parser.add_subparsers(dest="action", required=True)
    made = actions.add_parser("make", help="download the wheels and write the pairs")
    made.add_argument("--out", type=Path, required=True)
    made.add_argument("--wheels", type=Path, help="where to keep the wheels (default: a temporary directory)")
    from bench.pairs_file import add_run_command, run_command

    add_run_command(
        actions, "lorien,bsdiff4,xdelta3,zstd-patch-from,zstd-full,hdiffpatch,hdiffpatch-lite,z4ai,detools"
    )
    args = parser.parse_args(argv)
    if args.action == "make":
        if args.wheels:
            make(args.out, args.wheels)
        else:
            with tempfile.TemporaryDirectory() as wheels:
                make(args.out, Path(wheels))
        return 0
    return run_command(parser, args, "public-releases")


if __name__ == "__main__":
    raise SystemExit(main())
