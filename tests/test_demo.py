"""`make demo` prints one row per layer, ending at the model's own prediction."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow


def _demo_module():
    path = Path(__file__).resolve().parents[1] / "demos" / "demo.py"
    spec = importlib.util.spec_from_file_location("demo", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_demo_table_has_every_layer_and_ends_at_the_model_prediction(capsys, tmp_path):
    demo = _demo_module()
    report = tmp_path / "report.html"
    text = "The capital of France is Paris. The capital of Germany is"
    demo.main(["--text", text, "--report", str(report)])
    out = capsys.readouterr().out
    assert report.stat().st_size > 1_000_000
    table = out[out.index("top-1 token") :].split("\n\n")[0].splitlines()[1:]
    assert [line.split()[0] for line in table] == [*map(str, range(30)), "output"]
    output_row = table[-1]
    assert "' Berlin'" in output_row
    assert float(output_row.split()[-1]) == 0.0  # KL of the output to itself
    assert f"wrote {report}" in out
