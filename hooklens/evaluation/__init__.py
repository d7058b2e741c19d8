"""Which lens to trust, per layer: the same numbers for every lens, on held-out text.

Its modules, one sentence each:

- per_layer: each lens's per-layer KL to the output, cross-entropy, entropy and top-1
  agreement from one `PredictionTrajectory` (`layer_sums`, `layer_means`), and their
  Markdown and HTML tables and figure (was `hooklens.comparison`).
- held_out: `evaluate_lenses` over batches of held-out text (with the marginals of
  `LayerMarginals`), the tuned lens's `layer_transfer` matrix, their figures, and the
  held-out split of a text source (`held_out_chunks`; was `hooklens.training.evaluate`).
- patchscopes: `evaluate_patchscope`, the token-identity Patchscope's same per-layer
  numbers on a seeded sample of held-out positions (`hooklens eval --patchscope N`).

`figure` (from `held_out`) draws the results of `evaluate_lenses`; `per_layer.figure` draws
any `{lens: {metric: [per layer]}}`. The command line (`hooklens eval`) lives in
`hooklens.cli`, which this package does not import.

Examples:
    >>> from hooklens import LogitLens, TunedLens, evaluation
    >>> lenses = {"logit lens": LogitLens.from_model(model),
    ...           "tuned lens": TunedLens.from_model(model)}  # load or fit one in practice
    >>> chunks = evaluation.held_out_chunks("texts.jsonl", model.tokenizer, 16)
    >>> results = evaluation.evaluate_lenses(model, lenses, [next(chunks)[None]])
    >>> results["tokens"]
    16
    >>> print(evaluation.markdown_table(results["lenses"], "kl_to_output"))
    | layer | logit lens | tuned lens |
    |---:|---:|---:|
    | 0 | ... |
    | 1 | ... |
    | 2 | ... |
    | 3 | ... |
    | output | 0.000 | 0.000 |
"""

from hooklens.errors import FewerTokensWarning
from hooklens.evaluation.held_out import (
    LayerMarginals,
    evaluate_lenses,
    figure,
    held_out_chunks,
    held_out_token_count,
    layer_transfer,
    texts_of,
    transfer_figure,
)
from hooklens.evaluation.patchscopes import evaluate_patchscope
from hooklens.evaluation.per_layer import (
    METRICS,
    SHOWN,
    TITLES,
    PerLayer,
    html_table,
    layer_means,
    layer_sums,
    markdown_table,
)

__all__ = [
    "METRICS",
    "SHOWN",
    "TITLES",
    "FewerTokensWarning",
    "LayerMarginals",
    "PerLayer",
    "evaluate_lenses",
    "evaluate_patchscope",
    "figure",
    "held_out_chunks",
    "held_out_token_count",
    "html_table",
    "layer_means",
    "layer_sums",
    "layer_transfer",
    "markdown_table",
    "texts_of",
    "transfer_figure",
]
