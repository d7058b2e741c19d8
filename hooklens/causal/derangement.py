"""Derangements: permutations with no fixed point, for resample ablation.

Resample ablation replaces each row's activation by another row's. A plain shuffle
leaves about one row in place (the expected number of fixed points of a random
permutation is 1), and that row is then not ablated at all; a derangement moves every
row. Drawing uniform permutations until one has no fixed point gives a *uniform*
derangement, and takes e ≈ 2.72 draws on average for any n (the fraction of
permutations that are derangements tends to 1/e).

Examples:
    >>> import torch
    >>> from hooklens.causal.derangement import derange, sample_derangement
    >>> permutation = sample_derangement(5, generator=torch.Generator().manual_seed(0))
    >>> bool((permutation != torch.arange(5)).all())
    True
    >>> derange(torch.arange(3.0)[:, None], generator=torch.Generator().manual_seed(0)).shape
    torch.Size([3, 1])
"""

from __future__ import annotations

import operator

import torch
from jaxtyping import Int
from torch import Tensor

from hooklens.errors import InputError, InputTypeError


def sample_derangement(
    n: int,
    device: torch.device | str = "cpu",
    generator: torch.Generator | None = None,
) -> Int[Tensor, " n"]:
    """A uniformly random permutation of `0..n-1` with no fixed point (`n ≥ 2`).

    Drawn on the generator's device (the CPU default generator when none is given, so
    `torch.manual_seed` makes it reproducible) and returned on `device`.
    """
    if isinstance(n, bool):
        raise InputTypeError(f"n must be an int, got {n!r}")
    try:
        n = operator.index(n)
    except TypeError:
        raise InputTypeError(f"n must be an int, got {type(n).__name__} {n!r}") from None
    if n < 2:
        raise InputError(
            f"a derangement needs at least 2 items (every one must move), got n={n}; "
            "resample ablation needs at least two rows to draw from"
        )
    draw_device = generator.device if generator is not None else torch.device("cpu")
    identity = torch.arange(n, device=draw_device)
    while True:  # rejection sampling; ends after e draws on average
        permutation = torch.randperm(n, device=draw_device, generator=generator)
        if not bool((permutation == identity).any()):
            return permutation.to(device)


def derange(batch: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """The rows of `batch` (its first axis) shuffled so that no row stays in place."""
    if not isinstance(batch, Tensor):
        raise InputTypeError(f"batch must be a torch.Tensor, got {type(batch).__name__}")
    if batch.ndim == 0:
        raise InputError("batch is a 0-d tensor: it has no rows to derange")
    return batch[sample_derangement(batch.shape[0], device=batch.device, generator=generator)]
