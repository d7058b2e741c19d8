"""What a model does to its logits after `W_U`: a scale, then a softcap.

Most models stop at `h W_U + b_U`. Some do more, and a lens that reads only the final
norm and `W_U` mis-scales every entropy and KL on them:

| Family (Hugging Face class) | After the unembedding | Read from |
|---|---|---|
| Gemma 2 / 3 | `cap · tanh(z / cap)` | `final_logit_softcapping` |
| Cohere, Cohere 2 | `z · logit_scale` | the module's `logit_scale` |
| Granite, Granite MoE (hybrid) | `z / logits_scaling` | `config.logits_scaling` |
| Falcon-H1 (muP) | `z · lm_head_multiplier` | `model.lm_head_multiplier` |

hooklens reads what the model's forward reads, live: TransformerLens folds Cohere's
scale into `W_U` under `enable_compatibility_mode()` and sets the module's
`logit_scale` to 1, and this module then reads 1. (TransformerLens 3.9's own
`apply_output_logits_transform` still applies the scale after that fold; 4.x fixed
it.) A family that transforms its logits in a way hooklens cannot read is refused by
name (`UnsupportedModelError`) before any statistic is computed.

Examples:
    >>> read_output_transform(model)  # the doctest model: a plain Llama-style bridge
    OutputTransform(scale=1.0, softcap=None)
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from hooklens.errors import UnsupportedModelError

# Hugging Face causal LMs whose forward scales the logits, and how to read the factor
# their forward multiplies by (live attributes, so a fold into W_U reads as 1).
_SCALE_READERS: dict[str, Callable[[Any], float]] = {
    "CohereForCausalLM": lambda m: m.logit_scale,
    "Cohere2ForCausalLM": lambda m: m.logit_scale,
    "GraniteForCausalLM": lambda m: 1.0 / m.config.logits_scaling,
    "GraniteMoeForCausalLM": lambda m: 1.0 / m.config.logits_scaling,
    "GraniteMoeHybridForCausalLM": lambda m: 1.0 / m.config.logits_scaling,
    "FalconH1ForCausalLM": lambda m: m.model.lm_head_multiplier,
}
# Config fields that announce a post-unembedding transform on other families (MiniCPM's
# `dim_model_base` divides the hidden state by hidden_size / dim_model_base), with the
# value at which the field changes nothing.
_TRANSFORM_FIELDS: dict[str, Callable[[Any], Any]] = {
    "logit_scale": lambda config: 1.0,
    "logits_scaling": lambda config: 1.0,
    "lm_head_multiplier": lambda config: 1.0,
    "output_mult": lambda config: 1.0,
    "dim_model_base": lambda config: getattr(config, "hidden_size", None),
}


@dataclass(frozen=True)
class OutputTransform:
    """`logits = softcap(scale · (h W_U + b_U))`, `softcap(z) = cap · tanh(z / cap)`.

    `softcap` is None when the model has none. Both are linear in nothing but the
    scale, so `Unembed` folds `scale` into the normalised hidden state and `b_U`.
    """

    scale: float = 1.0
    softcap: float | None = None

    def __call__(self, logits: torch.Tensor) -> torch.Tensor:
        logits = logits * self.scale if self.scale != 1.0 else logits
        if self.softcap:
            return torch.tanh(logits / self.softcap) * self.softcap
        return logits


def read_output_transform(model: Any) -> OutputTransform:
    """The transform `model` applies after its unembedding (a HookedTransformer or a
    TransformerBridge), or `UnsupportedModelError` naming a family hooklens cannot read.
    """
    softcap = _softcap(model)
    hf_model = getattr(model, "original_model", None)
    tl_adapter = getattr(model, "adapter", None)
    if hf_model is None and tl_adapter is None:  # HookedTransformer: softcap only
        return OutputTransform(1.0, softcap)
    family = type(hf_model).__name__ if hf_model is not None else type(tl_adapter).__name__
    validate = getattr(tl_adapter, "validate_output_logits_transform", None)
    if callable(validate):
        try:
            validate()
        except Exception as error:  # TransformerLens's own refusal, said with our name
            raise _unsupported(family, str(error)) from error
    reader = _SCALE_READERS.get(type(hf_model).__name__)
    if reader is not None:
        return OutputTransform(float(reader(hf_model)), softcap)
    if hf_model is not None:
        _refuse_unknown_fields(family, getattr(hf_model, "config", None))
        if _overrides_transform(tl_adapter):
            scale = _probe_scale(tl_adapter, softcap, family)
            if scale != 1.0:
                raise _unsupported(
                    family,
                    f"its TransformerLens adapter scales the logits by {scale:g}, and "
                    "hooklens does not know where its forward reads that factor",
                )
        return OutputTransform(1.0, softcap)
    # A bridge without a Hugging Face model (TransformerLens's native models): its
    # adapter's transform is its forward's.
    return OutputTransform(_probe_scale(tl_adapter, softcap, family), softcap)


def _softcap(model: Any) -> float | None:
    cap = getattr(model.cfg, "output_logits_soft_cap", None)
    if cap is None or cap <= 0:
        hf_config = getattr(getattr(model, "original_model", None), "config", None)
        cap = getattr(hf_config, "final_logit_softcapping", None)
    return float(cap) if cap is not None and cap > 0 else None


def _overrides_transform(tl_adapter: Any) -> bool:
    method = getattr(type(tl_adapter), "apply_output_logits_transform", None)
    if method is None:
        return False
    from transformer_lens.model_bridge.architecture_adapter import ArchitectureAdapter

    return method is not ArchitectureAdapter.apply_output_logits_transform


def _probe_scale(tl_adapter: Any, softcap: float | None, family: str) -> float:
    """The factor TransformerLens's `apply_output_logits_transform` multiplies by,
    checked to be `softcap(scale · z)` over a range of logits."""
    transform = getattr(tl_adapter, "apply_output_logits_transform", None)
    if not callable(transform):
        return 1.0
    tiny = torch.tensor([1e-6], dtype=torch.float64)  # where a softcap is the identity
    scale = float(transform(tiny)[0] / tiny[0])
    probe = torch.linspace(-50.0, 50.0, 21, dtype=torch.float64)
    expected = OutputTransform(scale, softcap)(probe)
    if not torch.allclose(transform(probe), expected, rtol=1e-6, atol=1e-9):
        raise _unsupported(family, "its logits are not softcap(scale · z) for any scale")
    return scale


def _refuse_unknown_fields(family: str, config: Any) -> None:
    for name, neutral in _TRANSFORM_FIELDS.items():
        value = getattr(config, name, None)
        if value is not None and value != neutral(config):
            raise _unsupported(family, f"its config sets {name}={value!r}")


def _unsupported(family: str, why: str) -> UnsupportedModelError:
    return UnsupportedModelError(
        f"hooklens cannot read what {family} does to its logits after the unembedding: "
        f"{why}. A lens would mis-scale every entropy and KL on it. Families it reads: "
        f"{', '.join(sorted(_SCALE_READERS))}, and softcaps (Gemma 2/3); open an issue "
        "with the model name to add this one."
    )
