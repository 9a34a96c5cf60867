"""The built-in LiteRT health check (``health_check_litert``) with the real ``ai-edge-litert`` interpreter:
generated TFLite models that load, and ones that do not (truncated, not a model, layers that do not fit
together) — called directly, and through a real ``lorien device`` update that is rolled back when the new model
does not load."""

from __future__ import annotations

import importlib.util
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

from lorien.device.config import DeviceConfig
from lorien.device.service import health_check
from lorien.modelgen import Mlp, fine_tune, random_mlp, to_tflite
from lorien.publisher.publish import publish
from lorien.repo.engine.completeness import incomplete_reason
from tests.support.device_harness import DeviceProcess, sha256
from tests.support.processes import require, start_server

LAYERS = (16, 32, 4)


@pytest.fixture(autouse=True)
def _litert_installed() -> None:
    require(
        importlib.util.find_spec("ai_edge_litert") is not None, "ai-edge-litert is not installed (the dev extra)"
    )


def misfit(model: Mlp) -> bytes:
    """A complete, well-formed TFLite file whose second layer expects 99 inputs from a 32-wide first layer: every
    parser accepts it, only an interpreter that prepares the graph refuses it."""
    weights = [model.weights[0], np.zeros((model.weights[1].shape[0], 99), np.float32)]
    return to_tflite(Mlp(weights, model.biases))


def _config(model: Path, tmp_path: Path) -> DeviceConfig:
    return DeviceConfig(
        repo_url="http://127.0.0.1:1/",
        family="cls",
        model_path=model,
        state_dir=tmp_path,
        health_check_litert=True,
    )


def test_litert_check_loads_a_generated_model_and_refuses_broken_ones(tmp_path: Path) -> None:
    good = to_tflite(random_mlp(LAYERS, seed=1))
    cases = {
        "good": good,
        "truncated": good[: len(good) // 2],
        "not a model": b"TFL3 but nothing else" * 10,
        "misfit": misfit(random_mlp(LAYERS, seed=1)),
    }
    verdicts = {}
    for name, data in cases.items():
        model = tmp_path / f"{name}.tflite"
        model.write_bytes(data)
        verdicts[name] = health_check(_config(model, tmp_path))
    assert verdicts["good"] == (True, "LiteRT loaded the model")
    for name in ("truncated", "not a model", "misfit"):
        healthy, why = verdicts[name]
        assert not healthy and why.startswith("LiteRT could not load the model: "), (name, why)
    assert incomplete_reason(tmp_path / "misfit.tflite") is None, "the publisher would publish it"
    healthy, why = health_check(_config(tmp_path / "absent.tflite", tmp_path))
    assert not healthy and "LiteRT could not load the model" in why


def test_litert_check_without_the_package_says_so(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    model = tmp_path / "model.tflite"
    model.write_bytes(to_tflite(random_mlp(LAYERS, seed=1)))
    monkeypatch.setitem(sys.modules, "ai_edge_litert.interpreter", None)  # import fails as if not installed
    healthy, why = health_check(_config(model, tmp_path))
    assert not healthy and "ai-edge-litert" in why and "not installed" in why


@pytest.mark.slow
def test_device_update_rolls_back_a_model_litert_cannot_load(tmp_path: Path, devices: list) -> None:
    base = random_mlp(LAYERS, seed=7)
    models = tmp_path / "models" / "cls"
    models.mkdir(parents=True)
    (models / "1.0.0.tflite").write_bytes(to_tflite(base))
    (models / "1.1.0.tflite").write_bytes(to_tflite(fine_tune(base, seed=8)))
    assert publish(tmp_path / "models", tmp_path / "repo").ok
    server = start_server(tmp_path / "repo")
    try:
        installed = tmp_path / "app" / "model.tflite"
        installed.parent.mkdir()
        shutil.copy(models / "1.0.0.tflite", installed)
        device = DeviceProcess(tmp_path / "device", server.url, installed, "--health-check-litert")
        devices.append(device)
        device.api("POST", "update-latest")
        status = device.wait_until_done()
        assert status["last_result"]["ok"] and status["installed_version"] == "1.1.0", status

        (models / "1.2.0.tflite").write_bytes(misfit(fine_tune(base, seed=9)))
        assert publish(tmp_path / "models", tmp_path / "repo").ok
        before = sha256(installed)
        device.api("POST", "update-latest")
        status = device.wait_until_done()
        assert status["stage"] == "failed" and not status["last_result"]["ok"], status
        message = status["last_result"]["message"]
        assert "rolled back: health check failed: LiteRT could not load the model" in message, message
        assert sha256(installed) == before and status["installed_version"] == "1.1.0"
    finally:
        server.process.terminate()
        server.process.wait(10)
