"""Flat rows ↔ the input's `[..., pos]` shape: the one place a trajectory's batch axes
are removed (on the way in) and restored (on the way out), with einops `pack`/`unpack`.

The streaming pass works on flat rows, `rows = prod(batch) * pos` positions in
`input_ids` order, and keeps `[layer + 1, rows, ...]` arrays; users get
`[..., layer + 1, pos, ...]` back, the leading batch axes those of `input_ids`.
"""

from __future__ import annotations

import math

import numpy as np
from einops import pack, rearrange, unpack
from torch import Tensor

from hooklens.stats.reference import LN2


class RowLayout:
    """The batch shape and positions of a trajectory's input, and the moves between
    flat rows and `[..., pos]`."""

    def __init__(self, ids_shape: tuple[int, ...]):
        self.batch_shape = tuple(ids_shape[:-1])
        self.n_pos = int(ids_shape[-1])

    @property
    def n_rows(self) -> int:
        return math.prod(self.batch_shape) * self.n_pos

    def sequences(self, values: Tensor) -> Tensor:
        """`[..., pos, *rest]` → `[sequence, pos, *rest]` (batch axes flattened)."""
        rest = " ".join(f"r{i}" for i in range(values.ndim - len(self.batch_shape) - 1))
        packed, _ = pack([values], f"* pos {rest}")
        return packed

    def by_sequence(self, values: Tensor) -> Tensor:
        """`[layer, rows, *rest]` → `[layer, sequence, pos, *rest]`."""
        rest = " ".join(f"r{i}" for i in range(values.ndim - 2))
        return rearrange(values, f"l (s p) {rest} -> l s p {rest}", p=self.n_pos)

    def positions(self, values: Tensor) -> Tensor:
        """`[rows, *rest]` → `[..., pos, *rest]`."""
        rest = " ".join(f"r{i}" for i in range(values.ndim - 1))
        split = rearrange(values, f"(s p) {rest} -> s p {rest}", p=self.n_pos)
        return unpack(split, [self.batch_shape], f"* p {rest}")[0]

    def grid(self, values: Tensor) -> Tensor:
        """`[layer, rows, *rest]` → `[..., layer, pos, *rest]`."""
        rest = " ".join(f"r{i}" for i in range(values.ndim - 2))
        split = rearrange(values, f"l (s p) {rest} -> s l p {rest}", p=self.n_pos)
        return unpack(split, [self.batch_shape], f"* l p {rest}")[0]

    def statistic(
        self, values: Tensor, attention_mask: Tensor | None, units: str = "nats"
    ) -> np.ndarray:
        """`[layer, rows]` → `[..., layer, pos]` float32 numpy: NaN at padded cells,
        converted from nats when `units` is `"bits"`."""
        values = values.float()
        if attention_mask is not None:
            padded = ~attention_mask.reshape(-1)
            values = values.masked_fill(padded[None, : values.shape[1]], math.nan)
        stats = self.grid(values).numpy()
        return stats / LN2 if units == "bits" else stats
