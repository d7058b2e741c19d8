"""The `Lens` interface: decode a hidden state of layer `idx` into logits."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor, nn

from hooklens.errors import InputError
from hooklens.generation import generate as generate_from_layer
from hooklens.model import ModelAdapter, normalize_component
from hooklens.residuals import check_cache, get_residual
from hooklens.unembed import Unembed
from hooklens.validation import layer_index, validate_hidden


class Lens(nn.Module, ABC):
    """Abstract lens over a model with `n_layers` blocks.

    Layer indices run over `0..n_layers`: index `l < n_layers` reads the residual
    stream at block `l` (by default `resid_pre`, the input of the block), and index
    `n_layers` (or `-1`) reads the final residual, which every lens decodes exactly as
    the model does.
    """

    unembed: Unembed
    component: str = "resid_pre"

    def __init__(self, unembed: Unembed, n_layers: int):
        super().__init__()
        self.unembed = unembed  # a plain object: not registered, so never trained or saved
        self.n_layers = n_layers

    @property
    def adapter(self) -> ModelAdapter:
        if self.unembed.adapter is None:
            raise InputError("this lens was built without a model; use from_model(model)")
        return self.unembed.adapter

    def layer_index(self, idx: int) -> int:
        """Validate `idx` (negative counts from the end; numpy and 0-d tensor integers
        too) and return it as an int in `0..n_layers`."""
        return layer_index(idx, self.n_layers)

    @abstractmethod
    def transform_hidden(
        self, h: Float[Tensor, "... d_model"], idx: int
    ) -> Float[Tensor, "... d_model"]:
        """Map a hidden state of layer `idx` to one the unembedding can read."""

    def forward(self, h: Float[Tensor, "... d_model"], idx: int) -> Float[Tensor, "... d_vocab"]:
        """Logits the lens reads from hidden state `h` of layer `idx`."""
        validate_hidden(h, self.unembed.d_model)
        return self.unembed(self.transform_hidden(h, self.layer_index(idx)))

    # --- reading an ActivationCache ----------------------------------------------------

    def _check_component(self, component: str | None) -> str:
        return normalize_component(component or self.component)

    def _check_cache(self, cache: Any) -> None:
        check_cache(self.adapter, cache)

    def log_probs(
        self, cache: Any, layer: int, component: str | None = None
    ) -> Float[Tensor, "... pos d_vocab"]:
        """Log-probabilities the lens reads at `layer` from an `ActivationCache`.

        Examples:
            >>> logits, cache = model.run_with_cache(tokens)          # doctest: +SKIP
            >>> lens = LogitLens.from_model(model)                     # doctest: +SKIP
            >>> lens.log_probs(cache, layer=5).shape                   # doctest: +SKIP
            torch.Size([1, 12, 49152])
        """
        component = self._check_component(component)
        self._check_cache(cache)
        row = self.layer_index(layer)
        h = get_residual(cache, row, component, self.adapter)
        with torch.no_grad():
            return torch.log_softmax(self(h, row), dim=-1)

    def iter_log_probs(
        self, cache: Any, component: str | None = None, layers: Iterable[int] | None = None
    ) -> Iterator[tuple[int, Float[Tensor, "... pos d_vocab"]]]:
        """Yield `(layer, log_probs)` for each layer (all of `0..n_layers` by default).

        Only one layer's log-probabilities exist at a time.
        """
        rows = range(self.n_layers + 1) if layers is None else layers
        for layer in rows:
            yield self.layer_index(layer), self.log_probs(cache, layer, component)

    # Lens.generate(model, layer, input_ids, do_sample=True, temp=1.0, max_new_tokens=100)
    generate = generate_from_layer
