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


def installed_checkout() -> str:
    """Where this environment's `mmrl` runs from, as scripts/setup.sh finds it ('' if not installed)."""
    code = ("import importlib.util as u, pathlib as p; s = u.find_spec('mmrl_cli'); "
            "print(p.Path(s.origin).resolve().parent.parent if s and s.origin else '')")
    return subprocess.run([sys.executable, "-I", "-c", code], capture_output=True, text=True).stdout.strip()


def test_setup_refuses_an_active_environment_that_runs_another_checkout(tmp_path):
    """scripts/setup.sh of a second checkout, run with this environment active: one line, exit 2, and
    nothing installed (the environment still runs mmrl from where it did)."""
    import os
    import shutil

    before = installed_checkout()
    if not before:
        pytest.skip("mmrl is not installed in this environment (setup.sh would install it)")
    other = tmp_path / "other"
    (other / "scripts").mkdir(parents=True)
    shutil.copy(ROOT / "scripts/setup.sh", other / "scripts/setup.sh")
    env = {**os.environ, "VIRTUAL_ENV": sys.prefix, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    result = subprocess.run(["bash", str(other / "scripts/setup.sh")], env=env, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [result.stderr.strip()] and f"runs mmrl from {before}" in result.stderr
    assert installed_checkout() == before and not (other / ".venv").exists()
