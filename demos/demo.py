"""`make demo`: read the embedded SmolLM2-135M layer by layer with the logit lens.

Runs a paragraph through `run_with_cache`, then prints one row per layer: the logit
lens's top-1 next token at a chosen position, its entropy there, and the KL divergence
from the model's final distribution (the last row), averaged over all positions.

    python demos/demo.py [--text "..."] [--position -1] [--model-class bridge]
"""

from __future__ import annotations

import argparse
import time

import torch

from hooklens import LogitLens, ModelAdapter, models
from hooklens.stats import entropy, kl_divergence

PARAGRAPH = (
    "The Eiffel Tower is a wrought-iron lattice tower on the Champ de Mars in Paris, "
    "France. It is named after the engineer Gustave Eiffel, whose company designed and "
    "built the tower from 1887 to 1889. The tower is the tallest structure in the city "
    "of"
)


def layer_table(model, text: str, position: int = -1) -> list[dict]:
    """One row per lens layer: top-1 token at `position`, entropy there, mean KL to final."""
    adapter = ModelAdapter(model)
    tokens = model.to_tokens(text, prepend_bos=False)
    _, cache = model.run_with_cache(tokens, names_filter=adapter.residual_hook_names())
    lens = LogitLens.from_model(adapter)
    final = lens.log_probs(cache, layer=-1)[0]
    rows = []
    for layer, log_probs in lens.iter_log_probs(cache):
        log_probs = log_probs[0]
        top = int(log_probs[position].argmax())
        rows.append(
            {
                "layer": "output" if layer == adapter.n_layers else str(layer),
                "top1": adapter.tokenizer.decode([top]),
                "p_top1": float(log_probs[position, top].exp()),
                "entropy": float(entropy(log_probs[position])),
                "kl_to_final": float(kl_divergence(final, log_probs).mean()),
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
    args = parser.parse_args(argv)

    torch.set_grad_enabled(False)
    start = time.perf_counter()
    model = models.load(args.model, model_class=args.model_class)
    print(f"loaded {args.model} as {type(model).__name__} in {time.perf_counter() - start:.1f}s")

    rows = layer_table(model, args.text, args.position)
    tokens = model.to_str_tokens(args.text, prepend_bos=False)
    print(f"\n{len(tokens)} tokens; top-1 at position {args.position} ({tokens[args.position]!r})")
    print("entropy in nats at that position; KL(final ‖ layer) in nats, mean over positions\n")
    print(format_table(rows))


if __name__ == "__main__":
    main()
