"""The `Lens` interface: decode a hidden state of layer `idx` into logits."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator
from typing import Any, SupportsIndex

import torch
from jaxtyping import Float, Int
from torch import Tensor, nn

from hooklens._checks import layer_index, validate_hidden
from hooklens.artifacts.provenance import (
    check_provenance,
    current_provenance,
    describe_provenance,
)
from hooklens.core import ModelAdapter, normalize_component
from hooklens.core.residuals import check_cache, get_residual
from hooklens.core.unembed import Unembed
from hooklens.errors import InputError
from hooklens.lenses import _generate
from hooklens.lenses._generate import Prompts


class Lens(nn.Module, ABC):
    """Abstract lens over a model with `n_layers` blocks.

    Layer indices are rows `0..n_layers` of the residual stream, as the table in
    `hooklens.core.residuals` states (row `n_layers`, or `-1`, is the final residual,
    which every lens decodes exactly as the model does).
    """

    unembed: Unembed
    component: str = "resid_pre"
    provenance: dict[str, Any] | None = None
    """What wrote the file this lens was loaded from: library versions, model, fit
    settings (`hooklens.artifacts.provenance`); None for a lens made in this process or
    read from a file that records none."""

    def __init__(self, unembed: Unembed, n_layers: int):
        super().__init__()
        self.unembed = unembed  # a plain object: not registered, so never trained or saved
        self.n_layers = n_layers
        self.fit_settings: dict[str, Any] = {}
        """How the lens was fitted or trained (a training run's config, the fast fit's
        alpha and token count), recorded in the provenance of the files it is saved to."""

    def provenance_to_write(self, revision: str | None = None) -> dict[str, Any]:
        """The provenance a file saved now records: this environment's versions, the
        model (at `revision`, else the one its config records), and `fit_settings`."""
        return current_provenance(
            self.unembed.adapter, settings=self.fit_settings, revision=revision
        )

    def _loaded_with(self, provenance: dict[str, Any] | None, source: str) -> None:
        """Keep what a file records about its making (warning once where the installed
        transformers or TransformerLens differs from the recorded one)."""
        check_provenance(provenance, source)
        self.provenance = provenance
        settings = (provenance or {}).get("settings")
        self.fit_settings = dict(settings) if isinstance(settings, dict) else {}

    def _written_by(self) -> str:
        """`", written by hooklens 0.1.0, torch 2.5.1"` for a `repr` (empty for none)."""
        described = describe_provenance(self.provenance)
        return f", written by {described}" if described else ""

    @property
    def adapter(self) -> ModelAdapter:
        if self.unembed.adapter is None:
            raise InputError("this lens was built without a model; use from_model(model)")
        return self.unembed.adapter

    def layer_index(self, idx: SupportsIndex) -> int:
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

    def resolve_component(self, component: str | None = None) -> str:
        """The residual component this lens reads when asked for `component` (None: its
        own, `self.component`); `"hook_resid_pre"` spellings are accepted. A lens trained
        on one component refuses another (`LensMismatchError`)."""
        return self._check_component(component)

    def _check_component(self, component: str | None) -> str:
        # The rule `resolve_component` applies; lenses that read only their own component
        # extend it. Callers outside the class use `resolve_component`.
        return normalize_component(component or self.component)

    def _check_cache(self, cache: Any) -> None:
        check_cache(self.adapter, cache)

    def log_probs(
        self, cache: Any, layer: SupportsIndex, component: str | None = None
    ) -> Float[Tensor, "... pos d_vocab"]:
        """Log-probabilities the lens reads at `layer` from an `ActivationCache`.

        Examples:
            >>> from hooklens import LogitLens
            >>> logits, cache = model.run_with_cache(tokens)
            >>> lens = LogitLens.from_model(model)
            >>> lens.log_probs(cache, layer=2).shape  # [batch, pos, d_vocab]
            torch.Size([1, 6, 96])
        """
        component = self.resolve_component(component)
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

    def generate(
        self,
        model: Any,
        layer: int,
        input_ids: Prompts,
        do_sample: bool = True,
        temp: float = 1.0,
        max_new_tokens: int = 100,
        *,
        attention_mask: Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> Int[Tensor, "batch pos_and_new"]:
        """Continue prompts by decoding layer `layer`'s residual with this lens.

        Each step runs the model up to block `layer` (its `resid_pre`; `n_layers` or -1
        for the final residual), reads the lens's next-token distribution at the last
        position, and samples from it (`do_sample=True`, at temperature `temp`) or
        takes its argmax. With the logit lens at the last layer and `do_sample=False`
        this is the model's own greedy decoding.

        Args:
            model: the HookedTransformer or TransformerBridge the lens reads.
            layer: which layer's residual to decode.
            input_ids: a string, a list of strings or of token-id lists (of any
                lengths: they are left-padded and masked), or a `[batch, pos]` tensor
                (with `attention_mask` if it is left-padded).
            do_sample: sample (True) or decode greedily (False).
            temp: sampling temperature.
            max_new_tokens: how many tokens to add (always that many; no stop at EOS).
            attention_mask: `[batch, pos]`, 0 on left padding, for a tensor `input_ids`.
            generator: a `torch.Generator` for reproducible sampling.

        Returns:
            `[batch, pos + max_new_tokens]`: the left-padded prompts and the new tokens;
            `model.to_string(out[:, -max_new_tokens:])` decodes the continuations.

        Examples:
            >>> out = lens.generate(model, 2, ["The capital of France is"], max_new_tokens=4)
            >>> out.shape  # BOS, 5 prompt tokens, 4 new ones
            torch.Size([1, 10])
            >>> model.to_string(out[:, -4:])  # a random tiny model's words
            ['famine went voyage w88']
        """
        return _generate.generate(
            self,
            model,
            layer,
            input_ids,
            do_sample,
            temp,
            max_new_tokens,
            attention_mask=attention_mask,
            generator=generator,
        )
