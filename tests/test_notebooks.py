"""Every notebook in demos/ runs top to bottom and draws its figures.

Executed headlessly with nbclient in a fresh kernel from the repository root; skip
locally with `-m "not slow"` (CI never does).
"""

from __future__ import annotations

from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "demos").glob("*.ipynb"))
FIGURE_TYPES = ("application/vnd.plotly.v1+json", "text/html")


def execute(path: Path):
    import nbformat
    from nbclient import NotebookClient

    notebook = nbformat.read(path, as_version=4)
    client = NotebookClient(
        notebook, timeout=900, kernel_name="python3", resources={"metadata": {"path": str(ROOT)}}
    )
    client.execute()
    return notebook


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_notebook_runs_and_draws_its_figures(path):
    notebook = execute(path)
    outputs = [o for cell in notebook.cells if cell.cell_type == "code" for o in cell.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    figures = [
        o for o in outputs
        if o.output_type in ("display_data", "execute_result")
        and any(kind in o.get("data", {}) for kind in FIGURE_TYPES)
    ]  # fmt: skip
    expected = sum("figure(" in cell.source for cell in notebook.cells if cell.cell_type == "code")
    assert len(figures) >= expected > 0
    print(f"{path.name}: {len(notebook.cells)} cells executed, {len(figures)} figures")


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
