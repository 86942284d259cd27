"""Shared helpers: run the `mmrl` CLI in a subprocess inside a temporary directory."""

import os
import subprocess
import sys

import pytest


@pytest.fixture
def run_mmrl(tmp_path):
    """Run `mmrl <args>` with cwd = a fresh temp dir; return the CompletedProcess."""

    def run(*args, timeout=240, env=None):
        full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
        return subprocess.run(
            [sys.executable, "-m", "mmrl_cli.cli", *args], cwd=tmp_path, capture_output=True, text=True,
            timeout=timeout, env=full_env,
        )

    run.cwd = tmp_path
    return run
