"""Stopping and starting the program that uses the model, and the post-deploy health check.

Two kinds of service, as configured: a systemd unit (``systemctl stop/start``), or a command we start
ourselves with its pid recorded in a pid file (stop = SIGTERM, wait up to ``stop_timeout``, then SIGKILL —
the TOPE rule). With neither, stop/start do nothing. The health check is a command (exit 0 = healthy, run with
``LORIEN_MODEL_PATH`` set) and/or the built-in LiteRT load of a TFLite model (``litert`` extra).
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import time
from pathlib import Path

from lorien.device.config import DeviceConfig
from lorien.repo.atomic import atomic_write_bytes
from lorien.repo.errors import ServiceError

log = logging.getLogger(__name__)

NO_SERVICE = "no service configured"  # what stop_service/start_service say when they have nothing to do


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    with contextlib.suppress(ChildProcessError):
        done, _ = os.waitpid(pid, os.WNOHANG)  # reap our own child so it does not linger as a zombie
        if done == pid:
            return False
    return True


def _read_pid(pid_file: Path) -> int | None:
    try:
        pid = int(pid_file.read_text().strip())
    except (OSError, ValueError):
        return None
    return pid if pid > 1 else None


def _by_unit_or_nothing(config: DeviceConfig, verb: str) -> str | None:
    """Do ``verb`` with systemd when a unit is configured; say so when no service is. None: a command + pid file
    is configured, which the caller manages itself."""
    service = config.service
    if service.unit:
        _systemctl(verb, service.unit)
        return f"systemctl {verb} {service.unit}"
    if not service.command or service.pid_file is None:
        return NO_SERVICE
    return None


def stop_service(config: DeviceConfig) -> str:
    if (done := _by_unit_or_nothing(config, "stop")) is not None:
        return done
    service = config.service
    pid = _read_pid(service.pid_file)
    if pid is None or not _alive(pid):
        return "service was not running"
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + config.stop_timeout
    while time.monotonic() < deadline:
        if not _alive(pid):
            service.pid_file.unlink(missing_ok=True)  # a stale pid could be reused by another process
            return f"stopped pid {pid} with SIGTERM"
        time.sleep(0.05)
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    for _ in range(100):
        if not _alive(pid):
            break
        time.sleep(0.02)
    service.pid_file.unlink(missing_ok=True)
    log.warning("service pid %d ignored SIGTERM for %.0f s; killed", pid, config.stop_timeout)
    return f"killed pid {pid} after {config.stop_timeout:.0f} s"


def start_service(config: DeviceConfig) -> str:
    if (done := _by_unit_or_nothing(config, "start")) is not None:
        return done
    service = config.service
    running = _read_pid(service.pid_file)
    if running is not None and _alive(running):
        return f"already running as pid {running}"  # e.g. started before a crash of the updater
    try:
        process = subprocess.Popen(
            service.command,
            start_new_session=True,
            stdin=subprocess.DEVNULL,
            env={**os.environ, "LORIEN_MODEL_PATH": str(config.model_path)},
        )
    except OSError as error:
        raise ServiceError(f"service.command: cannot start {service.command[0]}: {error.strerror}") from None
    atomic_write_bytes(service.pid_file, f"{process.pid}\n".encode())
    return f"started pid {process.pid}"


def _systemctl(action: str, unit: str) -> None:
    try:
        result = subprocess.run(["systemctl", action, unit], capture_output=True, text=True, timeout=120)
    except (OSError, subprocess.TimeoutExpired) as error:
        raise ServiceError(f"systemctl {action} {unit} failed: {error}") from None
    if result.returncode != 0:
        raise ServiceError(f"systemctl {action} {unit} failed: {result.stderr.strip() or result.returncode}")


def health_check(config: DeviceConfig) -> tuple[bool, str]:
    """(healthy, explanation). No check configured counts as healthy."""
    if config.health_check_litert:
        ok, why = _litert_check(config.model_path)
        if not ok:
            return ok, why
    if not config.health_check:
        return True, "no health check configured" if not config.health_check_litert else "LiteRT loaded the model"
    try:
        result = subprocess.run(
            config.health_check,
            capture_output=True,
            text=True,
            timeout=config.health_timeout,
            env={**os.environ, "LORIEN_MODEL_PATH": str(config.model_path)},
        )
    except subprocess.TimeoutExpired:
        return False, f"health check timed out after {config.health_timeout:.0f} s"
    except OSError as error:
        return False, f"health check could not run: {error.strerror}"
    output = (result.stdout + result.stderr).strip().splitlines()
    detail = f": {output[-1][:200]}" if output else ""
    if result.returncode == 0:
        return True, f"health check passed{detail}"
    return False, f"health check exited {result.returncode}{detail}"


def _litert_check(model_path: Path) -> tuple[bool, str]:
    try:
        from ai_edge_litert.interpreter import Interpreter  # type: ignore[import-not-found]
    except ImportError:
        return False, "health_check_litert is set but the litert extra (ai-edge-litert) is not installed"
    try:
        interpreter = Interpreter(model_path=str(model_path))
        interpreter.allocate_tensors()
    except Exception as error:
        return False, f"LiteRT could not load the model: {error}"
    return True, "LiteRT loaded the model"
