"""The API reference builds offline from the docstrings without a warning."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_docs_build_strictly_and_document_the_api(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    assert "WARNING" not in result.stderr
    reference = (tmp_path / "reference" / "trajectory" / "index.html").read_text()
    assert "from_lens_and_cache" in reference and "next_token_targets" in reference
    # `Examples:` sections render as code blocks, one line per doctest line
    text = re.sub(r"<[^>]+>", "", reference)
    assert "&gt;&gt;&gt; logits, cache = model.run_with_cache(tokens)\n" in text
    home = (tmp_path / "index.html").read_text()
    assert "run_with_cache" in home  # the README quickstart, included by snippet
    assert (tmp_path / "images" / "trajectory.png").is_file()
