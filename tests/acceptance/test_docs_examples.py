"""Every Python block of the guides runs as written, so a guide cannot rot.

Each page's blocks run in order in one namespace (a reader pastes them one after the
other), in a fresh working directory, offline. README.md's two quickstart blocks run in
`test_readme.py`; `docs/index.md` includes them rather than repeating them.
"""

from __future__ import annotations

import functools
import os
import re
import tempfile
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"
GUIDES = sorted((DOCS / "guides").glob("*.md"))
# A page whose blocks need TransformerLens 4 says so in this comment at its top.
TL4_MARK = "run under TransformerLens 4"


def _python_blocks(page: Path) -> list[str]:
    return re.findall(r"^```python\n(.*?)^```", page.read_text(), flags=re.DOTALL | re.M)


PAGES = [page for page in sorted(DOCS.rglob("*.md")) if _python_blocks(page)]


def _needs_tl4(page: Path) -> bool:
    return TL4_MARK in page.read_text()


@functools.cache
def _run(relative: str) -> dict:
    """The page's namespace after running all its blocks (once per test session)."""
    page = DOCS / relative
    namespace: dict = {"__name__": f"docs.{relative}"}
    here = os.getcwd()
    with tempfile.TemporaryDirectory() as workdir:
        os.chdir(workdir)
        try:
            for number, block in enumerate(_python_blocks(page), 1):
                exec(compile(block, f"{page}, block {number}", "exec"), namespace)
        finally:
            os.chdir(here)
    return namespace


def _page(relative: str, monkeypatch) -> dict:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    return _run(relative)


def test_every_guide_starts_with_its_smallest_example():
    """The guides' shape: a title, what it is for, the smallest example (Python or a
    command) first, then options and caveats."""
    assert GUIDES, "no guide pages found"
    for guide in GUIDES:
        text = guide.read_text()
        headings = re.findall(r"^## (.+)$", text, flags=re.M)
        assert text.startswith("# "), guide.name
        assert headings[0] == "The smallest example", (guide.name, headings)
        assert "Options" in headings and "Caveats" in headings, (guide.name, headings)
        after = text.split("## The smallest example", 1)[1]
        assert re.match(r"\s*```(python|bash)\n", after), guide.name


def test_the_readme_and_the_home_page_link_every_guide():
    readme = (ROOT / "README.md").read_text()
    home = (DOCS / "index.md").read_text()
    for page in [*GUIDES, DOCS / "performance.md"]:
        relative = page.relative_to(DOCS).as_posix()
        assert f"(docs/{relative})" in readme, relative
        assert f"({relative})" in home, relative


@pytest.mark.slow
@pytest.mark.parametrize("page", [p.relative_to(DOCS).as_posix() for p in PAGES])
def test_page_examples_run(page, monkeypatch):
    if _needs_tl4(DOCS / page):
        pytest.importorskip("transformer_lens.tools.analysis.logit_lens")
    assert _page(page, monkeypatch)


@pytest.mark.slow
@pytest.mark.tl4
def test_transformer_lens_tools_page_runs_on_transformer_lens_4(monkeypatch):
    """The page's `logit_lens` result has one entry per trajectory row (TL 4 only)."""
    pytest.importorskip("transformer_lens.tools.analysis.logit_lens")
    namespace = _page("guides/transformer-lens-tools.md", monkeypatch)
    result, traj = namespace["result"], namespace["traj"]
    assert result.values.shape[0] == traj.num_layers + 1
    exact = torch.log_softmax(namespace["logits"].double(), -1)
    assert (result.values[-1].double() - exact).abs().max() < 1e-4


@pytest.mark.slow
def test_trajectories_page_reads_the_model_and_its_padding(monkeypatch):
    namespace = _page("guides/trajectories.md", monkeypatch)
    assert namespace["kl"].stats.shape == (1, 31, 5)
    assert abs(namespace["kl"].stats[..., -1, :]).max() < 1e-4  # the output row is 0
    probability = namespace["traj"].target_probability().stats
    assert torch.allclose(
        torch.as_tensor(probability),
        torch.exp(-torch.as_tensor(namespace["traj"].cross_entropy().stats)),
        equal_nan=True,
    )
    stats = namespace["stats"]
    assert abs(stats.marginal_probs.sum().item() - 1) < 1e-9


@pytest.mark.slow
def test_lenses_page_inverts_and_generates(monkeypatch):
    namespace = _page("guides/lenses.md", monkeypatch)
    assert namespace["out"].kl < 1e-3
    assert namespace["ids"].shape[0] == 2  # two prompts, each continued
    assert namespace["jlens"].fitted_layers == [28]
    assert namespace["traj"].forward_kl().stats.shape == (1, 31, 5)


@pytest.mark.slow
def test_interventions_page_measures_what_it_says(monkeypatch):
    namespace = _page("guides/interventions.md", monkeypatch)
    assert namespace["effect"].values.shape == (8, 31)
    assert namespace["sweep"].values.shape == (1, 5, 17, 31)
    basis = namespace["basis"]
    assert (basis.layer, basis.k, basis.d_model) == (20, 2, 576)
    gram = basis.vectors.double().T @ basis.vectors.double()
    assert torch.allclose(gram, torch.eye(2, dtype=torch.float64), atol=1e-4)
    model, tokens = namespace["model"], namespace["tokens"]
    clean_logits = model(tokens)  # the `with` block's ablation was removed afterwards
    assert not torch.allclose(namespace["ablated_logits"], clean_logits, atol=1e-3)


@pytest.mark.slow
def test_patchscopes_page_reads_what_it_says(monkeypatch):
    """The token-identity Patchscope finds the model's answer at an earlier layer than the
    logit lens on the page's prompt, and the mapped reading has the trajectory's shape."""
    namespace = _page("guides/patchscopes.md", monkeypatch)
    first = namespace["first"]
    assert first["patchscope"] < first["logit lens"], first
    shape = namespace["scope"].cross_entropy().stats.shape
    assert shape == namespace["gap"].stats.shape == namespace["mapped"].entropy().stats.shape
    assert shape[1] == 31
    assert namespace["said"].shape == (3, 8)
    assert sorted(namespace["state_map"].weights) == list(range(30))
