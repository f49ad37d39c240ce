"""pyproject.toml: the wheel holds the mt-dnn layout, py.typed, the console scripts and the dependencies.

The wheel is built offline from a copy of the sources (setuptools from the environment, no build isolation,
so nothing is written into the work tree), then installed with ``--no-deps --target`` and run from another
folder: the packages import without the repository on the path and the console scripts start.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tomllib
import zipfile
from email.parser import Parser
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("data_utils", "module", "mt_dnn")
CLIS = ("train.py", "predict.py", "prepro_std.py")
SCRIPTS = {
    "smart-mtdnn-train": "mt_dnn.console:train",
    "smart-mtdnn-predict": "predict:main",
    "smart-mtdnn-prepro": "prepro_std:main",
    "smart-mtdnn-export": "mt_dnn.export:main",
}

pytest.importorskip("setuptools")


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    source = tmp_path_factory.mktemp("source")
    for name in ("pyproject.toml", "README.md", *CLIS):
        shutil.copy2(ROOT / name, source / name)
    for package in PACKAGES:
        shutil.copytree(ROOT / package, source / package, ignore=shutil.ignore_patterns("__pycache__"))
    dist = tmp_path_factory.mktemp("dist")
    command = [
        sys.executable,
        "-m",
        "pip",
        "wheel",
        "--no-deps",
        "--no-build-isolation",
        "-q",
        "-w",
        str(dist),
        ".",
    ]
    subprocess.run(command, cwd=source, check=True, capture_output=True, timeout=300)
    (built,) = dist.glob("smart_mtdnn-*.whl")
    return built


def test_the_wheel_holds_the_packages_the_clis_and_py_typed(wheel: Path) -> None:
    names = set(zipfile.ZipFile(wheel).namelist())
    assert set(CLIS) <= names
    for package in PACKAGES:
        assert f"{package}/__init__.py" in names and f"{package}/py.typed" in names
    for module in (
        "module/adversarial/registry.py",
        "module/adversarial/integrations/hf_trainer.py",
        "mt_dnn/export.py",
    ):
        assert module in names
    assert not any(name.startswith(("tests/", "experiments/", "scripts/")) for name in names)


def test_the_metadata_declares_dependencies_extras_and_scripts(wheel: Path) -> None:
    archive = zipfile.ZipFile(wheel)
    info = next(name for name in archive.namelist() if name.endswith(".dist-info/METADATA"))
    metadata = Parser().parsestr(archive.read(info).decode())
    requires = metadata.get_all("Requires-Dist") or []
    assert any(line.startswith("torch>=") for line in requires)
    assert not any(line.startswith("torch==") for line in requires)  # a range: an existing torch satisfies it
    assert {"hf", "fastai", "tensorboard"} <= set(metadata.get_all("Provides-Extra") or [])
    assert any(line.startswith("accelerate") and 'extra == "hf"' in line for line in requires)
    entry_points = archive.read(info.replace("METADATA", "entry_points.txt")).decode()
    for script, target in SCRIPTS.items():
        assert f"{script} = {target}" in entry_points


def test_requirements_keep_the_exact_torch_pin() -> None:
    lines = (ROOT / "requirements.txt").read_text(encoding="utf-8").splitlines()
    assert "torch==2.13.0" in lines
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    assert project["build-system"]["build-backend"] == "setuptools.build_meta"


def test_the_installed_wheel_imports_and_its_scripts_run_outside_the_repository(
    wheel: Path, tmp_path: Path
) -> None:
    target = tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(target), str(wheel)],
        check=True,
        capture_output=True,
        timeout=300,
    )
    environment = {**os.environ, "PYTHONPATH": str(target), "HF_HUB_OFFLINE": "1"}
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    code = "import module.adversarial, mt_dnn.export, train, predict, prepro_std; print(module.adversarial.__file__)"
    shown = subprocess.run(
        [sys.executable, "-c", code],
        cwd=elsewhere,
        env=environment,
        check=True,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert shown.stdout.strip().startswith(str(target))
    for script in ("smart-mtdnn-export", "smart-mtdnn-predict"):
        result = subprocess.run(
            [sys.executable, str(target / "bin" / script), "--help"],
            cwd=elsewhere,
            env=environment,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert result.returncode == 0 and "--checkpoint" in result.stdout, result.stderr
