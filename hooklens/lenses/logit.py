"""The logit lens: decode every layer with the model's own final norm and W_U."""

from __future__ import annotations

from jaxtyping import Float
from torch import Tensor, nn

from hooklens.core import ModelAdapter
from hooklens.core.unembed import Unembed
from hooklens.errors import InputError
from hooklens.lenses.base import Lens


class LogitLens(Lens):
    """Read each layer's residual stream as if it were the final one.

    Examples:
        >>> from hooklens import LogitLens
        >>> logits, cache = model.run_with_cache(tokens)
        >>> lens = LogitLens.from_model(model)
        >>> for layer, log_probs in lens.iter_log_probs(cache):  # 4: the model's own output
        ...     print(layer, model.to_string(log_probs[0, -1].argmax()))
        0 7
        1 years
        2 years
        3 years
        4 9
    """

    def __init__(self, unembed: Unembed, n_layers: int | None = None):
        if n_layers is None:
            if unembed.adapter is None:
                raise InputError("pass n_layers, or build the lens with LogitLens.from_model")
            n_layers = unembed.adapter.n_layers
        super().__init__(unembed, n_layers)

    @classmethod
    def from_model(cls, model: nn.Module | ModelAdapter) -> LogitLens:
        """The logit lens of a HookedTransformer or TransformerBridge."""
        return cls(Unembed.from_model(model))

    def __repr__(self) -> str:
        name = self.unembed.adapter.model_name if self.unembed.adapter else "?"
        return f"LogitLens(model={name!r}, layers={self.n_layers}, d_model={self.unembed.d_model})"

    def transform_hidden(
        self, h: Float[Tensor, "... d_model"], idx: int
    ) -> Float[Tensor, "... d_model"]:
        """The identity: the logit lens reads every layer as it is."""
        return h
