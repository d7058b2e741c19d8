"""One adapter over HookedTransformer and TransformerBridge.

Everything hooklens needs from a model goes through `ModelAdapter`: sizes, the final
norm, the unembedding, the logit softcap, the tokenizer, the hook names of the residual
stream, what the model class can do (`can_stop_at_layer`, `can_start_at_layer`,
`has_kv_cache`), and a fingerprint (`hooklens.core.fingerprint`) that tells whether a
saved lens fits this model. This is the only module that spells a hook name or asks
which model class it holds.
"""

from __future__ import annotations

import hashlib
import json
import weakref
from functools import cached_property
from typing import Any, Literal, get_args

import torch
from jaxtyping import Float
from torch import Tensor, nn

from hooklens.core.fingerprint import (
    ModelFingerprint,
    WeightProcessing,
    fingerprint_differences,
)
from hooklens.core.output_transform import OutputTransform, read_output_transform
from hooklens.errors import InputError, InputTypeError, LayerIndexError, LensMismatchError

ResidualComponent = Literal["resid_pre", "resid_mid", "resid_post"]
RESIDUAL_COMPONENTS: tuple[str, ...] = get_args(ResidualComponent)
# Hooks of one block's parts that interventions act on (same names for both model classes).
ABLATION_COMPONENTS = {"head": "attn.hook_z", "attn": "hook_attn_out", "mlp": "hook_mlp_out"}

# Hashing walks W_U in vocabulary blocks so a 256k-vocab model never needs a second
# full copy of its unembedding in memory.
_HASH_BLOCK = 8192


def _is_hooked_transformer(model: object) -> bool:
    # HookedTransformer is gone in transformer-lens 4; import it lazily so 4.x users
    # can still use hooklens with TransformerBridge.
    try:
        from transformer_lens import HookedTransformer
    except ImportError:
        return False
    return isinstance(model, HookedTransformer)


def _is_transformer_bridge(model: object) -> bool:
    try:
        from transformer_lens.model_bridge import TransformerBridge
    except ImportError:
        return False
    return isinstance(model, TransformerBridge)


def _is_unit(t: Tensor | None, value: float) -> bool:
    return t is None or bool((t == value).all())


def _is_centred(matrix: Tensor) -> bool:
    """Whether every row of `matrix` has zero mean, up to float32 rounding."""
    scale = matrix.abs().mean().clamp_min(torch.finfo(torch.float32).tiny)
    return bool(matrix.float().mean(dim=-1).abs().max() <= 1e-4 * scale)


def _bf16_bytes(t: Tensor) -> bytes:
    # numpy has no bfloat16, so reinterpret the 16-bit payload as int16.
    return t.detach().to("cpu", torch.bfloat16).contiguous().view(torch.int16).numpy().tobytes()


class ModelAdapter:
    """The parts of a TransformerLens model that a lens reads.

    Works for `HookedTransformer` (with or without weight processing) and
    `TransformerBridge` (raw, or after `enable_compatibility_mode()`).

    Examples:
        >>> from hooklens.core import ModelAdapter
        >>> adapter = ModelAdapter(model)
        >>> adapter.kind, adapter.n_layers, adapter.d_model, adapter.d_vocab
        ('TransformerBridge', 4, 32, 96)
        >>> adapter.hook_name("resid_pre", 3)
        'blocks.3.hook_resid_pre'
        >>> adapter.residual_hook_names()[-2:]  # resid_pre of every block, the final residual
        ['blocks.3.hook_resid_pre', 'blocks.3.hook_resid_post']
        >>> _, cache = model.run_with_cache(
        ...     tokens, names_filter=adapter.residual_hook_names())
        >>> "blocks.3.hook_resid_post" in cache
        True
    """

    def __init__(self, model: nn.Module):
        if isinstance(model, ModelAdapter):
            model = model.model
        if _is_hooked_transformer(model):
            self.kind = "HookedTransformer"
        elif _is_transformer_bridge(model):
            self.kind = "TransformerBridge"
        else:
            raise InputTypeError(
                "hooklens reads TransformerLens models: expected a HookedTransformer or a "
                f"TransformerBridge, got {type(model).__name__}. Wrap a Hugging Face model "
                "with TransformerBridge.boot_transformers(name, hf_model=model)."
            )
        # TransformerLens models are only partly typed; treat them as dynamic objects.
        self.model: Any = model
        self.cfg: Any = model.cfg

    def __repr__(self) -> str:
        return (
            f"ModelAdapter({self.kind}, model={self.model_name!r}, n_layers={self.n_layers}, "
            f"d_model={self.d_model}, d_vocab={self.d_vocab})"
        )

    # --- sizes -------------------------------------------------------------------------

    @property
    def model_name(self) -> str:
        return str(getattr(self.cfg, "model_name", "") or type(self.model).__name__)

    @property
    def n_layers(self) -> int:
        return int(self.cfg.n_layers)

    @property
    def d_model(self) -> int:
        return int(self.cfg.d_model)

    @property
    def d_vocab(self) -> int:
        return int(self.W_U.shape[-1])

    @property
    def device(self) -> torch.device:
        return self.W_U.device

    @property
    def tokenizer(self) -> Any:
        return getattr(self.model, "tokenizer", None)

    # --- what the model class can do --------------------------------------------------

    @property
    def can_stop_at_layer(self) -> bool:
        """Whether `model(tokens, stop_at_layer=l)` runs blocks `0..l-1` only and returns
        block `l`'s `resid_pre` (HookedTransformer; a TransformerBridge always runs whole,
        so there the caller caches what it needs and ignores the rest)."""
        return self.kind == "HookedTransformer"

    @property
    def can_start_at_layer(self) -> bool:
        """Whether `model(residual, start_at_layer=l)` runs blocks `l..` on a given
        `resid_pre` of block `l` (HookedTransformer; a TransformerBridge cannot start
        mid-network, so there a hook overwrites the residual in a whole run)."""
        return self.kind == "HookedTransformer"

    @property
    def has_kv_cache(self) -> bool:
        """Whether decoding can extend TransformerLens's key-value cache one token at a
        time (`past_kv_cache=`, with `stop_at_layer`); a TransformerBridge has none through
        TransformerLens, so each step reruns the whole sequence."""
        return self.kind == "HookedTransformer"

    # --- the unembedding ---------------------------------------------------------------

    @property
    def final_norm(self) -> nn.Module:
        """The model's own final norm module, without TransformerLens hook wrappers.

        For a bridge this is the wrapped Hugging Face module, so lens readouts never
        fire the user's `ln_final.*` hooks and match the model's arithmetic exactly.
        """
        norm = getattr(self.model, "ln_final", None)
        if norm is None:
            return nn.Identity()
        return getattr(norm, "original_component", None) or norm

    @property
    def W_U(self) -> Float[Tensor, "d_model d_vocab"]:
        return self.model.W_U

    @property
    def b_U(self) -> Float[Tensor, " d_vocab"] | None:
        return getattr(self.model, "b_U", None)

    @property
    def output_transform(self) -> OutputTransform:
        """What the model does to `h W_U + b_U`: a scale (Cohere, Granite, Falcon-H1),
        then a softcap (Gemma 2/3); `UnsupportedModelError` for a family hooklens cannot
        read (`hooklens.core.output_transform`)."""
        return read_output_transform(self.model)

    @property
    def logit_softcap(self) -> float | None:
        """`cap` in `logits = cap * tanh(logits / cap)`, or None when the model has none."""
        return self.output_transform.softcap

    @property
    def logit_scale(self) -> float:
        """The factor the model multiplies `h W_U + b_U` by before any softcap (1 for
        most models)."""
        return self.output_transform.scale

    def final_norm_gain_and_bias(self) -> tuple[Tensor | None, Tensor | None]:
        """The final norm's gain (with a Gemma-style `1 +` offset applied) and bias;
        None for each the norm does not have."""
        norm = self.final_norm
        gain = getattr(norm, "w", None)
        if gain is None:
            gain = getattr(norm, "weight", None)
        bias = getattr(norm, "b", None)
        if bias is None:
            bias = getattr(norm, "bias", None)
        if gain is not None and getattr(self.cfg, "rmsnorm_uses_offset", False):
            gain = gain + 1.0  # Gemma-style norms multiply by (1 + weight).
        return gain, bias

    # --- hook names --------------------------------------------------------------------

    def hook_name(self, component: str, layer: int) -> str:
        """Hook of `component` entering (`resid_pre`) or inside block `layer`."""
        component = normalize_component(component)
        if not 0 <= layer < self.n_layers:
            raise LayerIndexError(
                f"layer {layer} is out of range: the model has blocks 0..{self.n_layers - 1}"
            )
        if component == "resid_mid" and getattr(self.cfg, "parallel_attn_mlp", False):
            raise InputError(
                "this model runs attention and MLP in parallel, so it has no resid_mid; "
                "use component='resid_pre' or 'resid_post'"
            )
        return f"blocks.{layer}.hook_{component}"

    def activation_hook_name(self, component: str, layer: int) -> str:
        """Hook of an intervenable activation of block `layer`.

        `component`: "head" (`attn.hook_z`, `[batch, pos, head, d_head]`: one slice per
        head, before the output projection), "attn" (`hook_attn_out`), "mlp"
        (`hook_mlp_out`), or a residual component.
        """
        if component in ABLATION_COMPONENTS:
            self.hook_name("resid_pre", layer)  # checks the layer
            return f"blocks.{layer}.{ABLATION_COMPONENTS[component]}"
        try:
            return self.hook_name(component, layer)
        except ValueError:
            known = ", ".join([*ABLATION_COMPONENTS, *RESIDUAL_COMPONENTS])
            raise InputError(f"component must be one of {known}; got {component!r}") from None

    def cached_names(self, component: str, layer: int) -> tuple[str, ...]:
        """Every name a cache may hold `hook_name(component, layer)` under.

        A TransformerBridge (TransformerLens 3.9 and 4.x) also calls a block's input and
        output by their canonical names, `blocks.{i}.hook_in` and `blocks.{i}.hook_out`,
        which a `names_filter` may have kept instead of the `hook_resid_*` aliases.
        """
        name = self.hook_name(component, layer)
        canonical = {"resid_pre": "hook_in", "resid_post": "hook_out"}
        component = normalize_component(component)
        if self.kind == "TransformerBridge" and component in canonical:
            return name, f"blocks.{layer}.{canonical[component]}"
        return (name,)

    @property
    def final_hook_name(self) -> str:
        """The residual after the last block, which the final norm and W_U read."""
        return self.hook_name("resid_post", self.n_layers - 1)

    def residual_hook_names(self, component: str = "resid_pre") -> list[str]:
        """Every hook a lens reads for `component`: one per block plus the final residual.

        Pass it as `names_filter` to `run_with_cache` to cache nothing else.
        """
        names = [self.hook_name(component, layer) for layer in range(self.n_layers)]
        if self.final_hook_name not in names:
            names.append(self.final_hook_name)
        return names

    # --- fingerprint -------------------------------------------------------------------

    @property
    def processing(self) -> WeightProcessing:
        gain, bias = self.final_norm_gain_and_bias()
        return WeightProcessing(
            fold_ln=_is_unit(gain, 1.0) and _is_unit(bias, 0.0),
            center_writing_weights=_is_centred(self.model.W_E),
            center_unembed=_is_centred(self.W_U),
        )

    def unembedding_hash(self) -> str:
        """SHA-256 of the whole unembedding: final norm, every entry of W_U, b_U, and what
        the model does after it (scale, softcap)."""
        gain, bias = self.final_norm_gain_and_bias()
        transform = self.output_transform
        norm_type = str(getattr(self.cfg, "normalization_type", None) or "none")
        header: dict[str, Any] = {
            "norm": norm_type.removesuffix("Pre"),
            "d_model": self.d_model,
            "d_vocab": self.d_vocab,
            "softcap": transform.softcap,
        }
        if transform.scale != 1.0:  # absent at 1, so files from before it still match
            header["logit_scale"] = transform.scale
        digest = hashlib.sha256(json.dumps(header, sort_keys=True).encode())
        # An absent gain or bias is the same map as ones or zeros: a folded norm and an
        # unfolded one with unit gain must hash alike.
        d = self.d_model
        digest.update(_bf16_bytes(gain if gain is not None else torch.ones(d)))
        digest.update(_bf16_bytes(bias if bias is not None else torch.zeros(d)))
        b_U = self.b_U if self.b_U is not None else torch.zeros(self.d_vocab)
        digest.update(_bf16_bytes(b_U))
        for block in self.W_U.T.split(_HASH_BLOCK):
            digest.update(_bf16_bytes(block))
        return digest.hexdigest()

    @cached_property
    def fingerprint(self) -> ModelFingerprint:
        """Identity of this model as far as a lens is concerned (computed once)."""
        processing = self.processing
        return ModelFingerprint(
            model_name=self.model_name,
            d_model=self.d_model,
            n_layers=self.n_layers,
            d_vocab=self.d_vocab,
            unembedding_hash=self.unembedding_hash(),
            fold_ln=processing.fold_ln,
            center_writing_weights=processing.center_writing_weights,
            center_unembed=processing.center_unembed,
        )


# Fingerprints of models other than a lens's own, keyed by the model object and
# refreshed when the unembedding's storage or version counter moves (in-place edits).
_FINGERPRINTS: weakref.WeakKeyDictionary[Any, tuple[tuple[int, ...], ModelFingerprint]] = (
    weakref.WeakKeyDictionary()
)


def fingerprint_of(model: Any) -> ModelFingerprint:
    """`ModelAdapter(model).fingerprint`, computed once per model and unembedding state."""
    adapter = model if isinstance(model, ModelAdapter) else ModelAdapter(model)
    gain, bias = adapter.final_norm_gain_and_bias()
    tensors = [t for t in (adapter.W_U, adapter.b_U, gain, bias) if t is not None]
    key = tuple(v for t in tensors for v in (t.data_ptr(), t._version))
    cached = _FINGERPRINTS.get(adapter.model)
    if cached is None or cached[0] != key:
        cached = (key, adapter.fingerprint)
        _FINGERPRINTS[adapter.model] = cached
    return cached[1]


def check_same_model(expected: ModelAdapter, model: Any, what: str = "this cache") -> None:
    """Refuse `model` (the model behind a cache) unless it is `expected` or has the same
    fingerprint: sizes, weight processing and a hash of the whole unembedding.

    The same object passes at no cost; another object (a second load of the same
    checkpoint, or the other model class) is hashed once.
    """
    if model is None or model is expected.model:
        return
    try:
        other = ModelAdapter(model)
    except TypeError:
        return  # not a TransformerLens model: nothing to compare
    sizes = (other.n_layers, other.d_model, other.d_vocab)
    if sizes == (expected.n_layers, expected.d_model, expected.d_vocab):
        differences = fingerprint_differences(fingerprint_of(expected), fingerprint_of(other))
    else:
        differences = [
            f"{name}: lens has {mine}, {what} has {theirs}"
            for name, mine, theirs in zip(
                ("n_layers", "d_model", "d_vocab"),
                (expected.n_layers, expected.d_model, expected.d_vocab),
                sizes,
                strict=True,
            )
            if mine != theirs
        ]
    if differences:
        raise LensMismatchError(
            f"{what} comes from another model than the lens's ({other!r} vs {expected!r}):\n"
            "  - " + "\n  - ".join(differences) + "\nRun the lens's own model, or build the "
            "lens for this one (LogitLens.from_model(model), TunedLens.load(path, model))."
        )


def normalize_component(component: str) -> str:
    """Accept `"resid_pre"` and TransformerLens's `"hook_resid_pre"` spelling."""
    if not isinstance(component, str):
        raise InputTypeError(
            f"component must be one of {', '.join(RESIDUAL_COMPONENTS)}; got {component!r}"
        )
    name = component.removeprefix("hook_")
    if name not in RESIDUAL_COMPONENTS:
        raise InputError(
            f"component must be one of {', '.join(RESIDUAL_COMPONENTS)}; got {component!r}"
        )
    return name
