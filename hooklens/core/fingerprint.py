"""What a lens must agree with to be valid for a model: its fingerprint, and how two differ.

`ModelAdapter.fingerprint` (in `hooklens.core.adapter`) reads these off a model; lens
files store them (`ModelFingerprint.to_dict`), and `fingerprint_differences` says in
words what differs when a lens meets another model.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any


@dataclass(frozen=True)
class WeightProcessing:
    """TransformerLens weight processing, as read off the weights themselves.

    Neither model class records which processing it was loaded with, so each flag is
    detected from what that processing leaves behind:

    - `fold_ln`: the final norm has unit gain and no bias (they were folded into W_U).
    - `center_writing_weights`: every row of W_E has zero mean (LayerNorm models only;
      TransformerLens never centres RMSNorm models).
    - `center_unembed`: every row of W_U has zero mean over the vocabulary.
    """

    fold_ln: bool
    center_writing_weights: bool
    center_unembed: bool


@dataclass(frozen=True)
class ModelFingerprint:
    """What a lens must agree with to be valid for a model.

    `unembedding_hash` covers the *whole* final norm (gain, bias), W_U, b_U, the logit
    scale and the softcap, rounded to bfloat16 so a float32 and a bfloat16 load of the same
    checkpoint agree.
    """

    model_name: str
    d_model: int
    n_layers: int
    d_vocab: int
    unembedding_hash: str
    fold_ln: bool
    center_writing_weights: bool
    center_unembed: bool

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelFingerprint:
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})

    @property
    def processing(self) -> WeightProcessing:
        return WeightProcessing(self.fold_ln, self.center_writing_weights, self.center_unembed)


def same_model_name(a: str, b: str) -> bool:
    """Whether two model names name the same checkpoint: `"gpt2"` and
    `"openai-community/gpt2"` do (the organisation and the case are ignored).

    >>> same_model_name("gpt2", "openai-community/GPT2")
    True
    """
    return a.rsplit("/", 1)[-1].lower() == b.rsplit("/", 1)[-1].lower()


def fingerprint_differences(expected: ModelFingerprint, actual: ModelFingerprint) -> list[str]:
    """Human-readable list of what differs between two fingerprints (empty if none)."""
    found = []
    if not same_model_name(expected.model_name, actual.model_name):
        found.append(f"model: lens has {expected.model_name!r}, model is {actual.model_name!r}")
    for name in ("d_model", "n_layers", "d_vocab"):
        if getattr(expected, name) != getattr(actual, name):
            found.append(
                f"{name}: lens has {getattr(expected, name)}, model has {getattr(actual, name)}"
            )
    for name in ("fold_ln", "center_writing_weights", "center_unembed"):
        if getattr(expected, name) != getattr(actual, name):
            found.append(
                f"weight processing {name}: lens has {getattr(expected, name)}, "
                f"model has {getattr(actual, name)}"
            )
    if expected.unembedding_hash != actual.unembedding_hash:
        found.append(
            "unembedding (final norm, W_U, b_U, scale, softcap): hash "
            f"{expected.unembedding_hash[:12]}… in the lens, {actual.unembedding_hash[:12]}… "
            "in the model"
        )
    return found
