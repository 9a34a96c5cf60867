"""The real device ``Updater`` in-process, on the in-memory repository (``tests/support/simulator.py``): what the
in-process device tests (plain, compressed, bundle, TUF) build their device from."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lorien.device.config import check_environment, load_config
from lorien.device.updater import Updater
from tests.support.simulator import RepositorySimulator


def inprocess_updater(
    sim: RepositorySimulator, family: str, model_path: Path, state_dir: Path, **settings: Any
) -> Updater:
    """A checked device config for ``family`` at ``model_path`` over ``sim``; unsigned (``insecure_allow_unsigned``)
    unless ``settings`` give a ``trusted_root``."""
    config = {"repo_url": sim.BASE, "family": family, "model_path": str(model_path), "state_dir": str(state_dir)}
    if "trusted_root" not in settings:
        config["insecure_allow_unsigned"] = True
    loaded = load_config(None, {**config, **settings})
    check_environment(loaded)
    return Updater(loaded, transport=sim)


def update_and_wait(updater: Updater, timeout: float = 60) -> dict[str, Any]:
    """``update-latest`` in the background, waited for; the ``/status`` document after it."""
    updater.update_latest()
    updater.wait(timeout)
    return updater.status()
