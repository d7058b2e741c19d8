"""`make demo` reads with the logit lens, trains a tuned lens, evaluates and reports."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.slow


def _demo_module():
    path = Path(__file__).resolve().parents[1] / "demos" / "demo.py"
    spec = importlib.util.spec_from_file_location("demo", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_demo_trains_evaluates_and_reports(capsys, tmp_path):
    """The demo end to end with a small budget (`make demo` uses the defaults)."""
    from hooklens import TunedLens, models

    demo = _demo_module()
    text = "The capital of France is Paris. The capital of Germany is"
    demo.main(
        ["--text", text, "--output", str(tmp_path), "--fit-tokens", "2048", "--steps", "1",
         "--eval-tokens", "512"]
    )  # fmt: skip
    out = capsys.readouterr().out
    table = out[out.index("top-1 token") :].split("\n\n")[0].splitlines()[1:]
    assert [line.split()[0] for line in table] == [*map(str, range(30)), "output"]
    output_row = table[-1]
    assert "' Berlin'" in output_row
    assert float(output_row.split()[-1]) == 0.0  # KL of the output to itself

    comparison = out[out.index("logit lens       fast fit") :].split("\n\n")[0].splitlines()
    rows = [line.split() for line in comparison[1:]]
    assert [row[0] for row in rows] == [*map(str, range(30)), "mean"]
    logit, fast_fit = (np.array([float(row[i]) for row in rows]) for i in (1, 2))
    assert (fast_fit < logit).all()  # even 2,048 tokens beat the logit lens everywhere
    assert (tmp_path / "report.html").stat().st_size > 1_000_000
    TunedLens.load(tmp_path / "lens", model=models.load("smollm2-135m"))
