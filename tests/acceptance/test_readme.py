"""The README's quickstart runs as written."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

README = Path(__file__).resolve().parents[2] / "README.md"


def _python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.DOTALL)


def test_readme_shows_the_two_setup_commands():
    text = README.read_text()
    assert "make demo" in text and "make test" in text


def test_readme_quickstart_is_fifteen_lines():
    """Both quickstart blocks together: the logit lens, then the tuned lens."""
    lines = [line for block in _python_blocks()[:2] for line in block.splitlines()]
    assert len([line for line in lines if line.strip()]) <= 15


def test_readme_is_a_front_door():
    """At most 150 lines, no timing tables (they live in docs/performance.md), and only
    the quickstart's Python: the guides hold the rest, and tests/acceptance/
    test_docs_examples.py runs theirs."""
    text = README.read_text()
    assert len(text.splitlines()) <= 150
    assert len(_python_blocks()) == 2
    assert not [line for line in text.splitlines() if line.startswith("|")]


@pytest.mark.slow
@pytest.mark.tl4
def test_readme_quickstart_runs(tmp_path, monkeypatch, capsys):
    """The quickstart and the tuned-lens block after it, as a new user pastes them."""
    monkeypatch.chdir(tmp_path)  # the second block saves a lens into the working directory
    quickstart, tuned_block = _python_blocks()[:2]
    namespace: dict = {}
    exec(compile(quickstart, str(README), "exec"), namespace)
    printed = capsys.readouterr().out.splitlines()
    assert printed[0].startswith("PredictionTrajectory(layers=30, pos=5, batch=(1,)")
    assert printed[1] == "(1, 31, 5)"
    assert namespace["fig"].data[0].type == "heatmap"
    # The output row is the model's own prediction (the documented 1e-4), in either class.
    lens, cache, logits = namespace["lens"], namespace["cache"], namespace["logits"]
    exact = torch.log_softmax(logits.double(), -1)
    assert (lens.log_probs(cache, layer=-1).double() - exact).abs().max() < 1e-4
    assert abs(namespace["traj"].forward_kl().stats[..., -1, :]).max() < 1e-4
    exec(compile(tuned_block, str(README), "exec"), namespace)
    assert (tmp_path / "my-lens" / "params.safetensors").is_file()
    # identity translators: the tuned lens reads exactly what the logit lens reads
    logit_kl = namespace["traj"].forward_kl().stats
    assert abs(namespace["tuned_traj"].forward_kl().stats - logit_kl).max() < 1e-4
