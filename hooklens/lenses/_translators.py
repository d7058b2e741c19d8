"""Internal: the low-rank translator of a `TunedLens` built with `rank=r`.

A full translator is an `nn.Linear` (`W h + b`, d² + d parameters). A rank-r one is
`U (Vᵀ h) + b` with `U, V ∈ R^{d×r}`: 2·d·r + d parameters, and two thin matmuls
instead of one square one.
"""

from __future__ import annotations

import math

import torch
from jaxtyping import Float
from torch import Tensor, nn

from hooklens.errors import InputError


class LowRankTranslator(nn.Module):
    """`h ↦ U (Vᵀ h) + b` with `U, V` of shape `[d_model, rank]` (the `TunedLens` adds h).

    `U` starts at zero, so the translator starts at zero (the lens at the logit lens);
    `V` starts random (scale 1/√d), so that the gradient of `U` is not zero and a KL
    fine-tune from the identity moves. `weight` is the dense `U Vᵀ`, computed on each
    read (for inspection; the forward pass never forms it).

    Examples:
        >>> translator = LowRankTranslator(8, 2)
        >>> translator(torch.ones(3, 8)).abs().max().item()  # U = 0: the zero map
        0.0
        >>> translator.weight.shape, sum(p.numel() for p in translator.parameters())
        (torch.Size([8, 8]), 40)
    """

    def __init__(
        self,
        d_model: int,
        rank: int,
        *,
        bias: bool = True,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ):
        super().__init__()
        self.d_model, self.rank = d_model, rank
        self.U = nn.Parameter(torch.zeros(d_model, rank, device=device, dtype=dtype))
        self.V = nn.Parameter(torch.empty(d_model, rank, device=device, dtype=dtype))
        nn.init.normal_(self.V, std=1 / math.sqrt(d_model))
        self.bias = nn.Parameter(torch.zeros(d_model, device=device, dtype=dtype)) if bias else None

    @property
    def weight(self) -> Float[Tensor, "d_model d_model"]:
        """The dense `U Vᵀ` (the `W` of `h ↦ W h + b`)."""
        return self.U @ self.V.T

    def forward(self, h: Float[Tensor, "... d_model"]) -> Float[Tensor, "... d_model"]:
        out = (h @ self.V) @ self.U.T
        return out if self.bias is None else out + self.bias

    def extra_repr(self) -> str:
        return f"d_model={self.d_model}, rank={self.rank}, bias={self.bias is not None}"


def check_rank(rank: int | None, d_model: int) -> int | None:
    """The config's `rank` for `from_model(rank=...)`: None for full translators."""
    if rank is None:
        return None
    if isinstance(rank, bool) or not isinstance(rank, int) or not 1 <= rank <= d_model:
        raise InputError(
            f"rank must be None (full translators) or an integer from 1 to d_model = "
            f"{d_model}, got {rank!r}"
        )
    return None if rank == d_model else rank
