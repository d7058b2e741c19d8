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


@pytest.fixture(scope="module")
def after_quickstart() -> dict:
    """The quickstart's names (model, tokens, cache, lens, ...), run once for the module:
    the blocks a reader pastes after it start from a copy. Loading the model is most of
    a block's time; `test_readme_quickstart_runs` still runs the quickstart on its own."""
    namespace: dict = {}
    exec(compile(_python_blocks()[0], str(README), "exec"), namespace)
    return namespace


def test_readme_quickstart_is_ten_lines():
    lines = [line for line in _python_blocks()[0].splitlines() if line.strip()]
    assert len(lines) <= 10


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


@pytest.mark.slow
def test_readme_interventions_block_runs(tmp_path, monkeypatch, after_quickstart):
    """The interventions example, run after the quickstart (which defines model, lens)."""
    monkeypatch.chdir(tmp_path)
    (interventions,) = [b for b in _python_blocks() if "patching_sweep" in b]
    namespace = dict(after_quickstart)
    exec(compile(interventions, str(README), "exec"), namespace)
    assert namespace["effect"].values.shape == (24, 31)
    assert namespace["sweep"].values.shape == (1, 10, 17, 31)  # every third patched layer


@pytest.mark.slow
def test_readme_inversion_and_generation_block_runs(after_quickstart):
    (block,) = [b for b in _python_blocks() if "unembed.invert" in b]
    namespace = dict(after_quickstart)
    exec(compile(block, str(README), "exec"), namespace)
    assert namespace["out"].kl < 1e-3
    assert namespace["ids"].shape[0] == 2
    assert len(namespace["model"].to_string(namespace["ids"][:, -8:])) == 2


def _block_with(blocks: list[str], marker: str) -> str:
    (block,) = [b for b in blocks if marker in b]
    return block


@pytest.mark.slow
def test_readme_labels_causal_and_stats_blocks_run(tmp_path, monkeypatch, after_quickstart):
    """The label options, causal-basis and `LogitStats` examples, pasted after the
    quickstart and the tuned-lens block (which define model, tokens, cache, lens, tuned)."""
    monkeypatch.chdir(tmp_path)
    blocks = _python_blocks()
    namespace = dict(after_quickstart)
    exec(compile(blocks[1], str(README), "exec"), namespace)
    exec(compile(_block_with(blocks, "min_prob_delta"), str(README), "exec"), namespace)

    exec(compile(_block_with(blocks, "extract_causal_bases"), str(README), "exec"), namespace)
    basis = namespace["basis"]
    assert (basis.layer, basis.k, basis.d_model) == (20, 4, 576)
    gram = basis.vectors.double().T @ basis.vectors.double()
    assert torch.allclose(gram, torch.eye(4, dtype=torch.float64), atol=1e-4)
    assert (basis.energies[:-1] >= basis.energies[1:]).all()
    # the ablation changed the model's run, and the hook was removed afterwards
    assert not torch.allclose(namespace["ablated_logits"], namespace["logits"], atol=1e-3)
    assert torch.allclose(namespace["model"](namespace["tokens"]), namespace["logits"], atol=1e-4)
    assert namespace["ablated"].forward_kl().stats.shape == (1, 31, 5)

    namespace["token_batches"] = [namespace["tokens"]]
    exec(compile(_block_with(blocks, "LogitStats()"), str(README), "exec"), namespace)
    stats = namespace["stats"]
    assert stats.n == namespace["tokens"].numel()
    assert abs(stats.marginal_probs.sum().item() - 1) < 1e-9
    expected = namespace["logits"].double().softmax(-1).reshape(-1, 49152).mean(0)
    assert torch.allclose(stats.marginal_probs, expected, atol=1e-6)
