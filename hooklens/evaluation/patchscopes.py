"""A Patchscope beside the lenses on held-out text: the same per-layer numbers.

A Patchscope costs a target run per (layer, position) cell where a lens costs a matmul,
so it reads a uniform sample of the held-out positions (`positions` of them, a seeded
draw over every position that has a next token): each per-layer mean is an unbiased
estimate of the mean over all positions, which the lenses beside it are averaged over.
The metrics are `per_layer.layer_sums`'s; `top1_agreement` is the paper's precision@1
(the reading's top token is the model's own top prediction).

Examples:
    >>> from hooklens.causal import target_prompt
    >>> prompt = target_prompt(model, "one two x", marker="x")
    >>> result = evaluate_patchscope(model, [tokens[0]], positions=3, target=prompt,
    ...                              progress=False)
    >>> result["positions"], len(result["metrics"]["kl_to_output"])  # 4 layers + output
    (3, 5)
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np
import torch
from jaxtyping import Int
from torch import Tensor
from tqdm.auto import tqdm

from hooklens.causal import TargetPrompt, patchscope, token_identity_prompt
from hooklens.errors import InputError
from hooklens.evaluation.per_layer import add_layer_sums

NAME = "token-identity patchscope"
"""The column `hooklens eval --patchscope` adds beside the lenses."""

MAX_POSITIONS_PER_CALL = 32
"""Positions read per `patchscope` call: `[layers + 1, 32, vocab]` log-probs at most."""


def evaluate_patchscope(
    model: Any,
    sequences: Iterable[Int[Tensor, " pos"]],
    *,
    positions: int,
    target: TargetPrompt | None = None,
    seed: int = 0,
    batch_size: int = 32,
    progress: bool = True,
) -> dict[str, Any]:
    """`{"positions", "target", "metrics": {metric: [per layer]}}`: the Patchscope's
    per-layer means over `positions` positions drawn from `sequences`.

    Args:
        model: the model whose states are read (and the target, patched into itself).
        sequences: held-out token sequences, `[pos]` each (rows of `[batch, pos]` too).
        positions: how many (sequence, position) cells to read, drawn without
            replacement; all of them where there are fewer.
        target: the target prompt (default: the token-identity prompt).
        seed: the draw's seed (the same seed and text read the same cells).
        batch_size: copies of the target prompt per forward (`patchscope_log_probs`).
        progress: show a progress bar over the positions read.
    """
    rows = [
        row
        for sequence in sequences
        for row in torch.as_tensor(sequence).reshape(-1, sequence.shape[-1])
    ]
    cells = [(i, p) for i, row in enumerate(rows) for p in range(row.shape[-1] - 1)]
    if positions < 1 or not cells:
        raise InputError(
            f"a Patchscope evaluation needs positions >= 1 and text with a next token; got "
            f"positions={positions} and {len(cells)} such positions"
        )
    target = token_identity_prompt(model) if target is None else target
    draw = torch.randperm(len(cells), generator=torch.Generator().manual_seed(seed))
    chosen: dict[int, list[int]] = {}
    for index in sorted(draw[:positions].tolist()):
        sequence, position = cells[index]
        chosen.setdefault(sequence, []).append(position)
    totals: dict[str, list[np.ndarray]] = {}
    n_read = sum(len(p) for p in chosen.values())
    with tqdm(total=n_read, desc="patchscope", unit="position", disable=not progress) as bar:
        for sequence, read in chosen.items():
            for start in range(0, len(read), MAX_POSITIONS_PER_CALL):
                some = read[start : start + MAX_POSITIONS_PER_CALL]
                trajectory = patchscope(
                    model, rows[sequence], target, positions=some, batch_size=batch_size,
                    progress=False,
                )  # fmt: skip
                add_layer_sums(totals, trajectory)
                bar.update(len(some))
    metrics = {
        metric: [round(float(v), 6) for v in total / np.maximum(count, 1)]
        for metric, (total, count) in totals.items()
    }
    return {"positions": n_read, "target": target.text, "seed": seed, "metrics": metrics}
