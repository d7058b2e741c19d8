"""Draw the README's picture: a tuned lens's forward KL on the embedded SmolLM2-135M.

    .venv/bin/python scripts/readme_figure.py [--lens demo-output/lens] [--output PATH]

Uses the lens `make demo` wrote if there is one, else fits one in closed form on 8,192
tokens (about 30 s). The figure is rendered by headless Chromium (the browser the tests
use; `scripts/install-browser.sh`) from a self-contained plotly page.
"""

from __future__ import annotations

import argparse
import itertools
import shutil
import subprocess
import tempfile
from pathlib import Path

import torch

from hooklens import PredictionTrajectory, TunedLens, models, next_token_targets
from hooklens.training.data import batches, load_texts, pack, split_texts
from hooklens.training.fast_fit import fit_tuned_lens

ROOT = Path(__file__).resolve().parents[1]
TEXT = "The Eiffel Tower is a wrought-iron lattice tower in Paris, the capital of France."
WIDTH, HEIGHT = 1200, 820


def tuned_lens(model, path: Path) -> TunedLens:
    if (path / "config.json").is_file():
        return TunedLens.load(path, model=model)
    texts = load_texts("wikipedia-summaries")["text"]
    chunks = pack(split_texts(texts, held_out=False), model.tokenizer, seq_len=512)
    return fit_tuned_lens(model, itertools.islice(batches(chunks, 2), 8))


def screenshot(html: Path, png: Path) -> None:
    browser = shutil.which("chromium")
    if browser is None:
        raise SystemExit("chromium is missing: bash scripts/install-browser.sh")
    with tempfile.TemporaryDirectory() as profile:
        subprocess.run(
            [
                browser, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                f"--user-data-dir={profile}", f"--window-size={WIDTH},{HEIGHT}",
                "--virtual-time-budget=10000", f"--screenshot={png}", html.resolve().as_uri(),
            ],
            check=True,
            capture_output=True,
            timeout=120,
        )  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lens", type=Path, default=ROOT / "demo-output" / "lens")
    parser.add_argument("--output", type=Path, default=ROOT / "docs" / "images" / "trajectory.png")
    args = parser.parse_args()

    torch.set_grad_enabled(False)
    model = models.load("smollm2-135m")
    lens = tuned_lens(model, args.lens)
    tokens = model.to_tokens(TEXT)
    logits, cache = model.run_with_cache(tokens)
    trajectory = PredictionTrajectory.from_lens_and_cache(
        lens, tokens, cache, logits, targets=next_token_targets(tokens)
    )
    figure = trajectory.forward_kl().figure(title="tuned lens on SmolLM2-135M: KL(output ‖ layer)")
    figure.update_layout(width=WIDTH - 20, height=HEIGHT - 20, margin={"t": 50, "b": 10})
    with tempfile.TemporaryDirectory() as workdir:
        html = Path(workdir) / "figure.html"
        figure.write_html(html, include_plotlyjs=True, config={"displayModeBar": False})
        args.output.parent.mkdir(parents=True, exist_ok=True)
        screenshot(html, args.output)
    print(f"wrote {args.output} ({args.output.stat().st_size / 1e3:.0f} kB)")


if __name__ == "__main__":
    main()
