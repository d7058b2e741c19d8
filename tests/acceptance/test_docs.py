"""The guides and the API reference build offline, strictly, into a site that needs no
network to read."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_docs_build_strictly_and_document_the_api(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path)],
        cwd=ROOT,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
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
    for guide in (ROOT / "docs" / "guides").glob("*.md"):
        assert (tmp_path / "guides" / guide.stem / "index.html").is_file(), guide.name
    assert (tmp_path / "performance" / "index.html").is_file()
    # the theme's web fonts would need the network: the site uses the reader's own
    for page in tmp_path.rglob("*.html"):
        assert "fonts.googleapis" not in page.read_text(), page
