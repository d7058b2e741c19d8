"""`make demo`: read the embedded SmolLM2-135M layer by layer, print a table, write a report.

Runs a paragraph through `run_with_cache`, builds the logit lens's
`PredictionTrajectory` (one streaming pass), prints one row per layer — the top-1 next
token at a chosen position, its entropy there, and the KL divergence from the model's
final distribution averaged over all positions — and writes the self-contained HTML
report (`demo-output/report.html`, opens offline).

    python demos/demo.py [--text "..."] [--position -1] [--model-class bridge]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

from hooklens import LogitLens, ModelAdapter, models
from hooklens.report import trajectory_report
from hooklens.trajectory import PredictionTrajectory

PARAGRAPH = (
    "The Eiffel Tower is a wrought-iron lattice tower on the Champ de Mars in Paris, "
    "France. It is named after the engineer Gustave Eiffel, whose company designed and "
    "built the tower from 1887 to 1889. The tower is the tallest structure in the city "
    "of"
)


def layer_table(model, text: str, position: int = -1) -> list[dict]:
    """One row per lens layer: top-1 token at `position`, entropy there, mean KL to final."""
    adapter = ModelAdapter(model)
    tokens = model.to_tokens(text)
    names = set(adapter.residual_hook_names())
    logits, cache = model.run_with_cache(tokens, names_filter=lambda name: name in names)
    trajectory = PredictionTrajectory.from_lens_and_cache(
        LogitLens.from_model(adapter), tokens, cache, logits
    )
    entropy = trajectory.entropy().stats[0]  # [layer, pos]
    forward_kl = trajectory.forward_kl().stats[0]
    top_ids, top_probs = trajectory.top_predictions()  # [batch, layer, pos, k]
    top_ids, top_probs = top_ids[0, :, position, 0], top_probs[0, :, position, 0]
    rows = []
    for layer in range(adapter.n_layers + 1):
        rows.append(
            {
                "layer": "output" if layer == adapter.n_layers else str(layer),
                "top1": adapter.tokenizer.decode([int(top_ids[layer])]),
                "p_top1": float(top_probs[layer]),
                "entropy": float(entropy[layer, position]),
                "kl_to_final": float(np.mean(forward_kl[layer])),
            }
        )
    return rows


def format_table(rows: list[dict]) -> str:
    lines = [f"{'layer':>6}  {'top-1 token':<16} {'p':>6} {'entropy':>8} {'KL→final':>9}"]
    for row in rows:
        lines.append(
            f"{row['layer']:>6}  {row['top1']!r:<16} {row['p_top1']:6.3f} "
            f"{row['entropy']:8.3f} {row['kl_to_final']:9.3f}"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--text", default=PARAGRAPH)
    parser.add_argument("--position", type=int, default=-1, help="token position for top-1")
    parser.add_argument("--model", default=models.DEFAULT_MODEL)
    parser.add_argument("--model-class", choices=["hooked", "bridge"], default="hooked")
    parser.add_argument("--report", default="demo-output/report.html", help="'' to skip")
    args = parser.parse_args(argv)
    with torch.no_grad():
        run(args)


def run(args: argparse.Namespace) -> None:
    start = time.perf_counter()
    model = models.load(args.model, model_class=args.model_class)
    print(f"loaded {args.model} as {type(model).__name__} in {time.perf_counter() - start:.1f}s")

    rows = layer_table(model, args.text, args.position)
    tokens = model.to_str_tokens(args.text)
    print(f"\n{len(tokens)} tokens; top-1 at position {args.position} ({tokens[args.position]!r})")
    print("entropy in nats at that position; KL(final ‖ layer) in nats, mean over positions\n")
    print(format_table(rows))
    if args.report:
        start = time.perf_counter()
        path = trajectory_report(model, args.text, path=Path(args.report))
        print(f"\nwrote {path} in {time.perf_counter() - start:.1f}s (open it in a browser)")


if __name__ == "__main__":
    main()
