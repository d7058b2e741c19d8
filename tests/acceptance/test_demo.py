"""`make demo` reads with the logit lens, trains a tuned lens, evaluates and reports."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.slow


def _demo_module():
    path = Path(__file__).resolve().parents[2] / "demos" / "demo.py"
    spec = importlib.util.spec_from_file_location("demo", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_demo_fits_evaluates_and_reports(capsys, tmp_path, monkeypatch):
    """The demo end to end on the smallest budget its flags take: one fit batch, no KL
    step (a float32 step of 1,024 tokens is most of a minute on an AVX2-only CPU; the
    fine-tune loop has its own tests), one 512-token held-out chunk. `make demo` uses
    the defaults."""
    from hooklens import TunedLens, models

    demo = _demo_module()
    loaded = []  # the demo's model, to load its lens with (a second load costs seconds)
    real_load = models.load

    def load(*args, **kwargs):
        loaded.append(real_load(*args, **kwargs))
        return loaded[-1]

    monkeypatch.setattr(models, "load", load)
    text = "The capital of France is Paris. The capital of Germany is"
    demo.main(
        ["--text", text, "--output", str(tmp_path), "--fit-tokens", "1024", "--steps", "0",
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
    logit, fast_fit, tuned = (np.array([float(row[i]) for row in rows]) for i in (1, 2, 3))
    assert (fast_fit < logit).all()  # even 1,024 tokens beat the logit lens everywhere
    assert (tuned == fast_fit).all()  # no KL step: the saved lens is the fast fit
    assert (tmp_path / "report.html").stat().st_size > 1_000_000
    (model,) = loaded
    TunedLens.load(tmp_path / "lens", model=model)
    assert f"hooklens serve --lens {tmp_path / 'lens'}" in out  # what to try next
