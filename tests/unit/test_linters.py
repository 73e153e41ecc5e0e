"""Strict from line one: ruff (lint and format) and mypy --strict run as tests.

The tools come from the environment tests/setup builds (.venv); a missing
tool is a failure, not a skip, so CI cannot pass without checking.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def tool(name: str) -> str:
    beside = Path(sys.executable).parent / name
    found = str(beside) if beside.exists() else shutil.which(name)
    if found is None:
        pytest.fail(f"{name} is not installed: run tests/setup (it installs it into .venv)")
    return found


@pytest.mark.parametrize(
    "argv",
    [
        ["ruff", "check", "podunit", "tests", "generators"],
        ["ruff", "format", "--check", "podunit", "tests", "generators"],
        ["mypy"],
    ],
    ids=["ruff-check", "ruff-format", "mypy-strict"],
)
def test_linter(argv: list[str]) -> None:
    result = subprocess.run(
        [tool(argv[0]), *argv[1:]], cwd=REPO, capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr
