"""The wheel ships the Hydra configs, so a non-editable install works."""

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def test_wheel_contains_every_config(tmp_path):
    pytest.importorskip("setuptools")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", str(ROOT), "--no-deps", "--no-build-isolation",
                    "-w", str(tmp_path)], check=True, capture_output=True)
    (wheel,) = tmp_path.glob("mmrl-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for config in (ROOT / "conf").rglob("*.yaml"):
        assert f"mmrl_cli/conf/{config.relative_to(ROOT / 'conf')}" in names


def test_no_code_ever_sets_trust_remote_code():
    """Loading a model must never run code shipped with it."""
    from pathlib import Path

    package = Path(__file__).resolve().parent.parent / "mmrl_cli"
    offenders = [p for p in package.rglob("*.py") if "trust_remote_code=True" in p.read_text()]
    assert offenders == []
