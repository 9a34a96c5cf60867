"""A built wheel is one top-level package, ``lorien``, with its data files, and works outside the source tree.

The wheel is installed (``--no-deps``) into a fresh virtual environment whose only other path is the test
environment's site-packages for the dependencies (a ``.pth`` line; the editable install's finder there is not
loaded, because ``.pth`` files in such a path are not processed). It then runs from a directory outside the
source tree, so nothing can come from the checkout.
"""

from __future__ import annotations

import subprocess
import sys
import sysconfig
import venv
import zipfile
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # builds and installs a wheel

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--wheel-dir", str(out), str(ROOT)],
        check=True,
        capture_output=True,
        timeout=600,
    )
    (built,) = out.glob("lorien-*.whl")
    return built


@pytest.mark.slow
def test_wheel_holds_exactly_one_top_level_package_and_its_data(wheel: Path) -> None:
    names = zipfile.ZipFile(wheel).namelist()
    top_level = {name.split("/")[0] for name in names if not name.split("/")[0].endswith(".dist-info")}
    assert top_level == {"lorien"}
    for data_file in (
        "lorien/repo/schemas/manifest.schema.json",
        "lorien/repo/schemas/index.schema.json",
        "lorien/publisher/templates/root.html",
        "lorien/nginx/nginx.conf.j2",
        "lorien/nginx/lorien-site.conf.j2",
    ):
        assert data_file in names, data_file
    assert not [name for name in names if name.startswith(("lorien/tests", "lorien/bench"))]


@pytest.mark.slow
def test_installed_wheel_renders_nginx_config_outside_the_source_tree(wheel: Path, tmp_path: Path) -> None:
    env_dir = tmp_path / "fresh"
    venv.create(env_dir, with_pip=False)
    python = env_dir / "bin" / "python"
    site_packages = Path(
        subprocess.run(
            [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
            check=True,
            capture_output=True,
            text=True,
        ).stdout.strip()
    )
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--quiet",
            "--no-deps",
            "--target",
            str(site_packages),
            str(wheel),
        ],
        check=True,
        capture_output=True,
        timeout=300,
    )
    (site_packages / "dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    repo = tmp_path / "repo"
    repo.mkdir()
    result = subprocess.run(
        [
            python,
            "-c",
            "import sys, lorien; print(lorien.__file__); from lorien.cli import main; sys.exit(main(sys.argv[1:]))",
            "nginx-config",
            "--repo",
            str(repo),
            "--prefix",
            str(tmp_path / "nginx"),
            "--listen",
            "127.0.0.1:8080",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[0].startswith(str(site_packages)), result.stdout
    config = (tmp_path / "nginx" / "lorien-site.conf").read_text()
    assert str(repo) in config and "127.0.0.1:8080" in config
