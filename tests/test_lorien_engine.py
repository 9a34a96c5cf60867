"""The model-aware ``lorien`` engine: tensor finders vs real files, codec round trips (property-based),
format-aware choices, hostile and fuzzed patches, bounded apply memory, and the patch CLI."""

from __future__ import annotations

import json
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lorien.modelgen import fine_tune, random_mlp, to_tflite
from lorien.repo.engine import (
    apply_patch,
    codecs,
    create_patch,
    patch_info,
    require_engine,
    segment_summary,
    shift_scan,
    varints,
)
from lorien.repo.engine.container import (
    DEFAULT_LIMITS,
    ENTRY_SIZE,
    HEADER_SIZE,
    READABLE_VERSIONS,
    Backend,
    Codec,
    Header,
    Segment,
    Transform,
    pack_header,
)
from lorien.repo.engine.formats import find_tensors
from lorien.repo.engine.lorien_engine import LorienEngine
from lorien.repo.engine.mallorn_adapter import load_mallorn
from lorien.repo.errors import LorienError, PatchError
from lorien.repo.hashing import sha256_file
from tests.support.model_files import mlp_tensors, nudged, write_gguf, write_onnx, write_safetensors
from tests.support.processes import run_lorien

WRITERS = {"safetensors": write_safetensors, "gguf": write_gguf, "onnx": write_onnx}
FAST = LorienEngine(level=3)


def _round_trip(old: Path, new: Path, tmp_path: Path, engine: LorienEngine | None = None) -> Path:
    patch = tmp_path / f"{new.name}.patch"
    if engine is None:
        create_patch(old, new, patch)
    else:
        engine.create(old, new, patch)
    out = tmp_path / f"{new.name}.out"
    result = apply_patch(old, patch, out)
    assert out.read_bytes() == new.read_bytes()
    assert result.target_sha256 == sha256_file(new)
    return patch


def _codecs_used(patch: Path) -> set[str]:
    return set(segment_summary(patch))


# --------------------------------------------------------------------------- tensor finders


@pytest.mark.parametrize("fmt", sorted(WRITERS))
def test_finders_locate_every_tensor_written_by_the_format_library(fmt: str, tmp_path: Path) -> None:
    tensors = mlp_tensors(1)
    path = tmp_path / f"model.{fmt}"
    WRITERS[fmt](path, tensors)
    data = path.read_bytes()
    found_format, regions = find_tensors(memoryview(data))
    assert found_format == fmt
    assert {r.name for r in regions} == set(tensors)
    for region in regions:
        expected = tensors[region.name].tobytes()
        assert data[region.offset : region.offset + len(expected)] == expected
        assert region.width == 4


def test_onnx_finder_descends_into_subgraphs(tmp_path: Path) -> None:
    inner = {"inner.weight": np.arange(1024, dtype=np.float32).reshape(32, 32)}
    path = tmp_path / "m.onnx"
    write_onnx(path, mlp_tensors(2), nested=inner)
    data = path.read_bytes()
    _, regions = find_tensors(memoryview(data))
    nested = [r for r in regions if r.name == "branch/inner.weight"]
    assert len(nested) == 1 and nested[0].shape == (32, 32)
    assert data[nested[0].offset : nested[0].end] == inner["inner.weight"].tobytes()


def test_tflite_finder_matches_the_independent_tflite_reader(tmp_path: Path) -> None:
    import tflite

    data = to_tflite(random_mlp((32, 64, 10), seed=4))
    model = tflite.Model.GetRootAsModel(data, 0)
    graph = model.Subgraphs(0)
    by_name = {}
    for index in range(graph.TensorsLength()):
        tensor = graph.Tensors(index)
        buffer = model.Buffers(tensor.Buffer())
        if buffer.DataLength():
            by_name[f"0:{tensor.Name().decode()}"] = buffer.DataAsNumpy().tobytes()
    found_format, regions = find_tensors(memoryview(data))
    assert found_format == "tflite"
    assert {r.name: data[r.offset : r.end] for r in regions} == by_name


@settings(max_examples=60, deadline=None)
@given(cut=st.integers(min_value=0, max_value=3000), flips=st.lists(st.integers(0, 2999), max_size=8))
def test_finders_never_raise_on_damaged_files(cut: int, flips: list[int]) -> None:
    originals = _damage_sources()
    for data in originals:
        damaged = bytearray(data[:cut] if cut < len(data) else data)
        for position in flips:
            if position < len(damaged):
                damaged[position] ^= 0x5A
        _, regions = find_tensors(memoryview(bytes(damaged)))
        for region in regions:
            assert 0 <= region.offset <= region.end <= len(damaged)


_DAMAGE_CACHE: list[bytes] = []


def _damage_sources() -> list[bytes]:
    if not _DAMAGE_CACHE:
        import tempfile

        with tempfile.TemporaryDirectory() as scratch:
            for fmt, writer in WRITERS.items():
                path = Path(scratch) / f"m.{fmt}"
                writer(path, mlp_tensors(5, (8, 16, 4)))
                _DAMAGE_CACHE.append(path.read_bytes())
        _DAMAGE_CACHE.append(to_tflite(random_mlp((8, 16, 4), seed=5)))
    return _DAMAGE_CACHE


# --------------------------------------------------------------------------- codecs


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    width=st.sampled_from([1, 2, 4, 8]),
    count=st.integers(min_value=0, max_value=300),
    seed=st.integers(min_value=0, max_value=2**32 - 1),
    changed=st.floats(min_value=0.0, max_value=1.0),
)
def test_every_codec_round_trips_exactly(width: int, count: int, seed: int, changed: float) -> None:
    rng = np.random.default_rng(seed)
    reference = rng.integers(0, 256, count * width, dtype=np.uint8).tobytes()
    mask = rng.random(count * width) < changed
    target = bytes(
        np.where(mask, rng.integers(0, 256, count * width, dtype=np.uint8), np.frombuffer(reference, np.uint8))
    )

    def segment(codec: Codec, payload: bytes, ref_length: int, backend: Backend = Backend.ZSTD) -> Segment:
        return Segment(
            codec, width, Transform.NONE, len(target), 0, ref_length, len(payload), zlib.crc32(payload), backend
        )

    residuals = [
        (Codec.ZSTD, target, b""),
        (Codec.XOR_PLANES, codecs.xor_residual(target, reference, width), reference),
        (Codec.XOR_PLANES, codecs.xor_residual(target, None, width), b""),
        (Codec.DIFF_PLANES, codecs.diff_residual(target, reference, width), reference),
    ]
    raw_sparse = codecs.sparse_residual(target, reference, width)
    if raw_sparse is not None:
        residuals.append((Codec.SPARSE, raw_sparse, reference))
    payload = codecs.zstd_compress(target, 3, reference)
    assert codecs.decode(segment(Codec.ZSTD_REF, payload, len(reference)), payload, reference) == target
    for codec, raw, ref in residuals:  # every residual stream through every entropy backend
        for backend in Backend:
            payload = codecs.pack(raw, 3, backend)
            assert codecs.decode(segment(codec, payload, len(ref), backend), payload, ref) == target, codec


def test_float32_to_float16_prediction_makes_a_cast_nearly_free(tmp_path: Path) -> None:
    tensors = mlp_tensors(7, (128, 512, 256, 10))
    write_safetensors(tmp_path / "old.safetensors", tensors)
    write_safetensors(tmp_path / "new.safetensors", {k: v.astype(np.float16) for k, v in tensors.items()})
    patch = _round_trip(tmp_path / "old.safetensors", tmp_path / "new.safetensors", tmp_path)
    segments = LorienEngine().segments(patch)
    assert any(s.transform == Transform.F32_TO_F16 for s in segments)
    assert patch.stat().st_size < 0.02 * (tmp_path / "new.safetensors").stat().st_size


# --------------------------------------------------------------------------- format-aware behaviour


@pytest.mark.slow
@pytest.mark.parametrize("fmt", sorted(WRITERS))
def test_dense_fine_tune_uses_byte_planes_and_beats_whole_file_zstd(fmt: str, tmp_path: Path) -> None:
    tensors = mlp_tensors(3, (256, 512, 512, 10))
    old, new = tmp_path / f"old.{fmt}", tmp_path / f"new.{fmt}"
    WRITERS[fmt](old, tensors)
    WRITERS[fmt](new, nudged(tensors, 4))
    patch = _round_trip(old, new, tmp_path)
    assert _codecs_used(patch) & {"XOR_PLANES", "DIFF_PLANES"}
    generic = create_patch(old, new, tmp_path / "generic.patch", engine="zstd")
    assert patch.stat().st_size < 0.8 * generic.patch_size


def test_tflite_fine_tune_round_trips_and_beats_whole_file_zstd(tmp_path: Path) -> None:
    base = random_mlp((128, 256, 256, 10), seed=8)
    old, new = tmp_path / "old.tflite", tmp_path / "new.tflite"
    old.write_bytes(to_tflite(base))
    new.write_bytes(to_tflite(fine_tune(base, seed=9)))
    patch = _round_trip(old, new, tmp_path)
    generic = create_patch(old, new, tmp_path / "generic.patch", engine="zstd")
    assert patch.stat().st_size <= generic.patch_size


def test_tensors_align_by_name_across_a_removed_layer_and_by_shape_after_renames(tmp_path: Path) -> None:
    tensors = mlp_tensors(11, (128, 256, 256, 256, 10))
    removed = {k: v for k, v in tensors.items() if not k.startswith("layer1.")}
    renamed = {k.replace("layer", "block"): v for k, v in tensors.items()}
    write_safetensors(tmp_path / "old.safetensors", tensors)
    write_safetensors(tmp_path / "removed.safetensors", removed)
    write_safetensors(tmp_path / "renamed.safetensors", renamed)
    for new in ("removed", "renamed"):
        patch = _round_trip(tmp_path / "old.safetensors", tmp_path / f"{new}.safetensors", tmp_path)
        size = (tmp_path / f"{new}.safetensors").stat().st_size
        assert patch.stat().st_size < 0.05 * size, new  # every tensor found its twin: copies, no new data


def test_identical_files_are_one_copy(tmp_path: Path) -> None:
    path = tmp_path / "m.gguf"
    write_gguf(path, mlp_tensors(12))
    patch = _round_trip(path, path, tmp_path)
    assert segment_summary(patch) == {
        "COPY": {"count": 1, "target_bytes": path.stat().st_size, "payload_bytes": 0}
    }
    size = len(varints.encode(path.stat().st_size))
    # compact layout: magic + version, count, source size, two 8-byte digests; the copy; the CRC-32
    assert patch.stat().st_size == 4 + 1 + size + 16 + (1 + size + 1) + 4
    classic = _round_trip(path, path, tmp_path, LorienEngine(max_version=4))
    assert classic.stat().st_size == HEADER_SIZE + ENTRY_SIZE


@pytest.mark.slow
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    edits=st.lists(
        st.tuples(
            st.sampled_from(["insert", "delete", "replace"]), st.integers(0, 70_000), st.binary(max_size=300)
        ),
        max_size=6,
    )
)
def test_random_byte_edits_of_a_model_round_trip(edits: list[tuple[str, int, bytes]], tmp_path: Path) -> None:
    old = tmp_path / "old.safetensors"
    if not old.exists():
        write_safetensors(old, mlp_tensors(13, (64, 256, 64)))
    data = bytearray(old.read_bytes())
    for kind, position, blob in edits:
        position = min(position, len(data))
        if kind == "insert":
            data[position:position] = blob
        elif kind == "delete":
            del data[position : position + len(blob)]
        else:
            data[position : position + len(blob)] = blob
    new = tmp_path / "new.bin"
    new.write_bytes(bytes(data))
    _round_trip(old, new, tmp_path, FAST)


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(seed=st.integers(0, 10_000), rows=st.integers(1, 64), grow=st.integers(-32, 32))
def test_tensor_value_and_shape_changes_round_trip(seed: int, rows: int, grow: int, tmp_path: Path) -> None:
    rng = np.random.default_rng(seed)
    tensors = mlp_tensors(seed % 97, (32, 64, 16))
    changed = dict(tensors)
    changed["layer0.weight"] = tensors["layer0.weight"].copy()
    changed["layer0.weight"][:rows] += rng.standard_normal((rows, 32)).astype(np.float32) * 1e-3
    changed["layer1.weight"] = rng.standard_normal((max(1, 16 + grow), 64)).astype(np.float32)
    changed["extra"] = rng.integers(-128, 127, 5000, dtype=np.int8)
    write_gguf(tmp_path / "old.gguf", tensors)
    write_gguf(tmp_path / "new.gguf", changed)
    _round_trip(tmp_path / "old.gguf", tmp_path / "new.gguf", tmp_path, FAST)


# --------------------------------------------------------------------------- hostile and corrupt patches


_GOOD_PATCH: list[tuple[Path, bytes]] = []


def _good_patch(directory: Path) -> tuple[Path, bytes]:
    """A real patch (dense change, one unchanged tensor) to damage; made once per session."""
    if not _GOOD_PATCH:
        tensors = mlp_tensors(21, (64, 128, 64))
        write_safetensors(directory / "old.safetensors", tensors)
        changed = nudged(tensors, 22)
        changed["layer0.bias"] = tensors["layer0.bias"]
        write_safetensors(directory / "new.safetensors", changed)
        create_patch(directory / "old.safetensors", directory / "new.safetensors", directory / "p")
        _GOOD_PATCH.append((directory / "old.safetensors", (directory / "p").read_bytes()))
    return _GOOD_PATCH[0]


@pytest.fixture(scope="module")
def fuzz_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("fuzz")


def _assert_refused(old: Path, data: bytes, tmp_path: Path) -> None:
    patch = tmp_path / "bad.patch"
    patch.write_bytes(data)
    out = tmp_path / "out.bin"
    with pytest.raises(LorienError):
        apply_patch(old, patch, out)
    assert not out.exists()
    assert not [p for p in tmp_path.iterdir() if ".tmp-" in p.name]


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_fuzzed_patches_always_fail_cleanly(fuzz_dir: Path, tmp_path: Path, data: st.DataObject) -> None:
    old, original = _good_patch(fuzz_dir)
    damaged = bytearray(original)
    action = data.draw(st.sampled_from(["flip", "truncate", "splice", "extend"]))
    if action == "flip":
        for position in data.draw(st.lists(st.integers(0, len(damaged) - 1), min_size=1, max_size=5)):
            damaged[position] ^= data.draw(st.integers(1, 255))
    elif action == "truncate":
        damaged = damaged[: data.draw(st.integers(0, len(damaged) - 1))]
    elif action == "splice":
        start = data.draw(st.integers(0, len(damaged) - 1))
        damaged[start : start + 16] = data.draw(st.binary(min_size=16, max_size=16))
    else:
        damaged += data.draw(st.binary(min_size=1, max_size=64))
    if bytes(damaged) == original:  # two flips of one byte can cancel out
        damaged[0] ^= 1
    _assert_refused(old, bytes(damaged), tmp_path)


def _hostile(segments: list[Segment], payloads: bytes, source: Path, target_size: int) -> bytes:
    """A patch whose checksums are all valid but whose numbers lie."""
    table = b"".join(s.pack() for s in segments)
    header = Header(
        len(segments), source.stat().st_size, target_size, bytes.fromhex(sha256_file(source)), b"\0" * 32
    )
    return pack_header(header, table) + table + payloads


@pytest.mark.parametrize(
    "case",
    [
        "ref-outside-source",
        "xz-bomb",
        "bz2-bomb",
        "segment-too-large",
        "payload-too-large",
        "frame-lies-about-size",
        "sparse-out-of-range",
        "width-mismatch",
        "count-too-large",
    ],
)
def test_hostile_tables_are_refused_before_allocating(case: str, tmp_path: Path) -> None:
    old = tmp_path / "old.bin"
    old.write_bytes(bytes(range(256)) * 16)
    size = old.stat().st_size
    limit = DEFAULT_LIMITS.max_segment
    payload = b""
    if case == "ref-outside-source":
        segments = [Segment(Codec.COPY, 0, Transform.NONE, 100, size - 10, 100, 0, 0)]
        target = 100
    elif case == "xz-bomb":  # an xz stream that inflates far past its segment
        payload = codecs.xz_compress(b"\0" * 4_000_000)
        segments = [
            Segment(Codec.ZSTD, 0, Transform.NONE, 100, 0, 0, len(payload), zlib.crc32(payload), Backend.XZ)
        ]
        target = 100
    elif case == "bz2-bomb":
        payload = codecs.pack(b"\0" * 4_000_000, 3, Backend.BZ2)
        segments = [
            Segment(Codec.ZSTD, 0, Transform.NONE, 100, 0, 0, len(payload), zlib.crc32(payload), Backend.BZ2)
        ]
        target = 100
    elif case == "segment-too-large":
        payload = codecs.zstd_compress(b"x", 3)
        segments = [Segment(Codec.ZSTD, 0, Transform.NONE, limit + 1, 0, 0, len(payload), zlib.crc32(payload))]
        target = limit + 1
    elif case == "payload-too-large":
        segments = [Segment(Codec.ZSTD, 0, Transform.NONE, 10, 0, 0, DEFAULT_LIMITS.max_payload + 1, 0)]
        target = 10
    elif case == "frame-lies-about-size":
        payload = codecs.zstd_compress(b"a" * 1000, 3)
        segments = [Segment(Codec.ZSTD, 0, Transform.NONE, 10, 0, 0, len(payload), zlib.crc32(payload))]
        target = 10
    elif case == "sparse-out-of-range":
        raw = np.uint32(1).tobytes() + np.uint32(10_000).tobytes() + b"\1\2\3\4"
        payload = codecs.zstd_compress(raw, 3)
        segments = [Segment(Codec.SPARSE, 4, Transform.NONE, 64, 0, 64, len(payload), zlib.crc32(payload))]
        target = 64
    elif case == "width-mismatch":
        payload = codecs.zstd_compress(b"\0" * 10, 3)
        segments = [Segment(Codec.XOR_PLANES, 4, Transform.NONE, 10, 0, 10, len(payload), zlib.crc32(payload))]
        target = 10
    else:
        data = _hostile([], b"", old, 0)
        data = data[:12] + struct.pack("<I", 0xFFFFFFFF) + data[16:]
        _assert_refused(old, data, tmp_path)
        return
    _assert_refused(old, _hostile(segments, payload, old, target), tmp_path)


# --------------------------------------------------------------------------- bounded memory


@pytest.mark.slow
def test_apply_memory_stays_bounded_on_a_200_mb_model(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Peak RSS of a real `lorien apply` subprocess on a ~200 MB model, whatever the segments hold. The planner's
    shift scan is off here: it would reference the shifted rest at its new place (smaller patch, no dictionary),
    and this test is about the segments that decode with up to 128 MiB of old bytes as a zstd dictionary."""
    monkeypatch.setattr(shift_scan, "MIN_LENGTH", 1 << 62)
    rng = np.random.default_rng(99)
    size = 200 * 1024 * 1024
    old_data = bytearray(rng.integers(0, 256, size, dtype=np.uint8).tobytes())
    (tmp_path / "old.bin").write_bytes(old_data)
    for offset in range(0, size, 37 * 1024 * 1024):  # a few changed regions → large zstd+reference segments
        old_data[offset : offset + 4096] = rng.bytes(4096)
    old_data[50_000_000:50_000_000] = rng.bytes(3 * 1024 * 1024)  # an insertion shifts the rest
    (tmp_path / "new.bin").write_bytes(old_data)
    del old_data
    FAST.create(tmp_path / "old.bin", tmp_path / "new.bin", tmp_path / "p")
    assert _codecs_used(tmp_path / "p") >= {"COPY", "ZSTD_REF"}
    assert (tmp_path / "p").stat().st_size < 0.05 * size  # the shifted rest was found in the old file
    # VmHWM is read by the applying process itself: ru_maxrss of a child would include the pre-exec image of
    # this (large) test process.
    report = "import re; print(re.search(r'VmHWM:\\s+(\\d+)', open('/proc/self/status').read()).group(1))"
    code = f"import sys; from lorien.cli import main; rc = main(sys.argv[1:]); {report}; sys.exit(rc)"
    args = ["apply", tmp_path / "old.bin", tmp_path / "p", "-o", tmp_path / "out.bin"]
    result = subprocess.run(
        [sys.executable, "-c", code, *map(str, args)], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    peak_mib = int(result.stdout.split()[-1]) / 1024
    assert peak_mib <= 128, f"apply peaked at {peak_mib:.0f} MiB"
    assert sha256_file(tmp_path / "out.bin") == sha256_file(tmp_path / "new.bin")


# --------------------------------------------------------------------------- CLI and engines


@pytest.mark.slow
def test_patch_cli_round_trip_info_and_verify(tmp_path: Path) -> None:
    tensors = mlp_tensors(31)
    write_onnx(tmp_path / "old.onnx", tensors)
    write_onnx(tmp_path / "new.onnx", nudged(tensors, 32))
    made = run_lorien("diff", tmp_path / "old.onnx", tmp_path / "new.onnx", "-o", tmp_path / "p")
    assert made.returncode == 0 and "engine lorien" in made.stdout, made.stderr
    info = run_lorien("patch-info", tmp_path / "p", "--json")
    assert info.returncode == 0
    document = json.loads(info.stdout)
    assert document["engine"] == "lorien" and document["format_version"] in READABLE_VERSIONS
    # the compact layout (versions 5 and 6) keeps the first 8 bytes of each digest (the manifest has the whole one)
    digest = document["target_sha256"]
    assert len(digest) == (16 if document["format_version"] >= 5 else 64)
    assert sha256_file(tmp_path / "new.onnx").startswith(digest)
    assert sum(c["target_bytes"] for c in document["segments"].values()) == document["target_size"]
    assert run_lorien("verify-patch", tmp_path / "old.onnx", tmp_path / "p").returncode == 0
    applied = run_lorien("apply", tmp_path / "old.onnx", tmp_path / "p", "-o", tmp_path / "out.onnx")
    assert applied.returncode == 0, applied.stderr
    assert (tmp_path / "out.onnx").read_bytes() == (tmp_path / "new.onnx").read_bytes()


@pytest.mark.slow
def test_patch_cli_errors_are_one_line_and_exit_2(tmp_path: Path) -> None:
    tensors = mlp_tensors(33)
    write_safetensors(tmp_path / "a", tensors)
    write_safetensors(tmp_path / "b", nudged(tensors, 34))
    assert run_lorien("diff", tmp_path / "a", tmp_path / "b", "-o", tmp_path / "p").returncode == 0
    corrupt = bytearray((tmp_path / "p").read_bytes())
    corrupt[-10] ^= 0xFF
    (tmp_path / "corrupt").write_bytes(bytes(corrupt))
    cases = {
        "corrupt patch": ("apply", tmp_path / "a", tmp_path / "corrupt", "-o", tmp_path / "out"),
        "another source": ("apply", tmp_path / "b", tmp_path / "p", "-o", tmp_path / "out"),
        "unknown patch engine 'bsdiff'": (
            "diff",
            tmp_path / "a",
            tmp_path / "b",
            "-o",
            tmp_path / "q",
            "--engine",
            "bsdiff",
        ),
        "not a patch made by any engine": ("verify-patch", tmp_path / "a", tmp_path / "a"),
    }
    for expected, args in cases.items():
        result = run_lorien(*args)
        assert result.returncode == 2, (expected, result.stderr)
        assert expected in result.stderr and len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert not (tmp_path / "out").exists() and not (tmp_path / "q").exists()


def test_device_side_refuses_engines_it_does_not_have() -> None:
    assert require_engine("lorien").name == "lorien"
    with pytest.raises(PatchError, match=r"needs engine 'bsdiff'.*take the full model"):
        require_engine("bsdiff", "patch x")


@pytest.mark.skipif(load_mallorn() is not None, reason="mallorn is installed: the adapter tests below run instead")
def test_mallorn_engine_without_the_package_fails_clearly(tmp_path: Path) -> None:
    (tmp_path / "a").write_bytes(b"a" * 1000)
    result = run_lorien("diff", tmp_path / "a", tmp_path / "a", "-o", tmp_path / "p", "--engine", "mallorn")
    assert result.returncode == 2 and "mallorn Python package, which is not installed" in result.stderr
    with pytest.raises(PatchError, match="needs engine 'mallorn'"):
        require_engine("mallorn")


@pytest.mark.skipif(load_mallorn() is None, reason="the mallorn package is not installable here (not on PyPI)")
def test_mallorn_engine_round_trip(tmp_path: Path) -> None:  # pragma: no cover - needs the real package
    base = random_mlp((64, 128, 10), seed=41)
    (tmp_path / "old.tflite").write_bytes(to_tflite(base))
    (tmp_path / "new.tflite").write_bytes(to_tflite(fine_tune(base, seed=42)))
    stats = create_patch(tmp_path / "old.tflite", tmp_path / "new.tflite", tmp_path / "p.tflp", engine="mallorn")
    assert stats.engine == "mallorn" and patch_info(tmp_path / "p.tflp").engine == "mallorn"
    apply_patch(tmp_path / "old.tflite", tmp_path / "p.tflp", tmp_path / "out.tflite")
    assert (tmp_path / "out.tflite").read_bytes() == (tmp_path / "new.tflite").read_bytes()
