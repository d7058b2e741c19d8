"""The Jacobian lens (J-lens): each layer's residual moved into the final block's basis by
the average Jacobian of the final residual with respect to it, then unembedded.

Gurnee et al., "Verbalizable Representations Form a Global Workspace in Language
Models" (Transformer Circuits, 2026); TransformerLens ships it as
`transformer_lens.tools.analysis.JacobianLens`. For a source layer ℓ,

    J_ℓ = E_prompt[ (1/|V|) Σ_{t∈V} Σ_{t'≥t} ∂h_final,t' / ∂h_ℓ,t ]

with `h_ℓ` the **output of block ℓ** and `h_final` the last block's output before the
final norm; the lens reads `W_U · norm(J_ℓ h_ℓ)`, and `J_ℓ = I` is the logit lens.

Layer convention. The reference (and TransformerLens) calls the output of block ℓ
"source layer ℓ" (`blocks.ℓ.hook_out` = `blocks.ℓ.hook_resid_post` = `resid_pre` of
block ℓ+1); `jacobian(ℓ)` and `fitted_layers` count that way. Our rows count like every
other hooklens lens, by `component`:

- `component="resid_pre"` (the default, like the logit and tuned lenses, so trajectories
  and tables of all three line up): row ℓ is the input of block ℓ and reads `J_{ℓ-1}`;
  row 0 (the embeddings) has no Jacobian and reads as the logit lens.
- `component="resid_post"` (the reference's own indexing): row ℓ reads `J_ℓ`.

Either way the last block's output is the final residual, read with the identity.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor, nn

from hooklens.artifacts import (
    LensNotFoundError,
    check_fingerprint,
    load_weights_only,
    read_lens_dir,
    write_lens_dir,
)
from hooklens.errors import InputError, LensFileError, LensMismatchError
from hooklens.files import atomic_write
from hooklens.hub import resolve_jacobian_lens
from hooklens.lenses.base import Lens
from hooklens.model import ModelAdapter, ModelFingerprint, _same_model_name, normalize_component
from hooklens.unembed import Unembed

LENS_TYPE = "jacobian_lens"
REFERENCE_SUFFIX = ".pt"
_NEEDS_RAW = (
    "Jacobian lenses are fitted on raw activations: load the model as a TransformerBridge "
    "without enable_compatibility_mode(), with "
    "HookedTransformer.from_pretrained_no_processing(name), or with "
    "hooklens.models.load(name, processing=False)."
)


class JacobianLens(Lens):
    """A lens that reads layer ℓ as `W_U · norm(J_ℓ h_ℓ)` (module docstring).

    Layers without a fitted matrix (and the last block's output, whose Jacobian is the
    identity) are read as the logit lens; `fitted_layers` lists the others.

    Examples:
        >>> from hooklens import JacobianLens, PredictionTrajectory
        >>> lens = JacobianLens.load("jlens.pt", model=model)          # doctest: +SKIP
        >>> traj = PredictionTrajectory.from_lens_and_cache(lens, tokens, cache, logits)
        ...                                                             # doctest: +SKIP
    """

    def __init__(
        self,
        unembed: Unembed,
        jacobians: dict[int, Float[Tensor, "d_model d_model"]] | None = None,
        *,
        n_layers: int | None = None,
        n_prompts: int = 0,
        metadata: dict[str, Any] | None = None,
        component: str = "resid_pre",
    ):
        if n_layers is None:
            if unembed.adapter is None:
                raise InputError("pass n_layers, or build the lens with JacobianLens.from_model")
            n_layers = unembed.adapter.n_layers
        super().__init__(unembed, n_layers)
        self.component = normalize_component(component)
        if self.component == "resid_mid":
            raise InputError(
                "a Jacobian lens reads block inputs (resid_pre) or outputs (resid_post), "
                "not resid_mid"
            )
        d_model = unembed.d_model
        self.n_prompts = int(n_prompts)
        self.metadata: dict[str, Any] = dict(metadata or {})
        for layer, matrix in sorted((jacobians or {}).items()):
            layer = int(layer)
            if not 0 <= layer < n_layers - 1:
                raise LensMismatchError(
                    f"a Jacobian lens for this model has source layers 0..{n_layers - 2} (the "
                    f"output of block {n_layers - 1} is the final residual); got layer {layer}: "
                    "was it fitted for another model?"
                )
            if tuple(matrix.shape) != (d_model, d_model):
                raise LensMismatchError(
                    f"J[{layer}] is {tuple(matrix.shape)}, the model needs ({d_model}, "
                    f"{d_model}): was the lens fitted for another model?"
                )
            # Buffers, not parameters: fitted by an estimator, not trained; and a
            # trajectory notices in-place changes through their version counters.
            self.register_buffer(_buffer_name(layer), matrix.detach().float().cpu().clone())
        missing = [layer for layer in range(n_layers - 1) if layer not in self.fitted_layers]
        if jacobians and missing:
            warnings.warn(
                f"this Jacobian lens has no matrix for layers {missing}: they are read as "
                "the logit lens",
                stacklevel=2,
            )

    # --- construction -------------------------------------------------------------

    @classmethod
    def from_model(
        cls,
        model: nn.Module | ModelAdapter,
        jacobians: dict[int, Tensor] | None = None,
        **kwargs: Any,
    ) -> JacobianLens:
        """A J-lens for a HookedTransformer or TransformerBridge; without `jacobians`,
        every `J_ℓ = I` (exactly the logit lens)."""
        return cls(Unembed.from_model(model), jacobians, **kwargs)

    @classmethod
    def fit(
        cls,
        model: nn.Module,
        prompts: Sequence[Any],
        *,
        source_layers: Sequence[int] | None = None,
        max_seq_len: int = 128,
        skip_first_positions: int = 16,
        dim_batch: int = 8,
        checkpoint: str | os.PathLike | None = None,
        checkpoint_every: int = 10,
        progress: bool = True,
        metadata: dict[str, Any] | None = None,
        component: str = "resid_pre",
    ) -> JacobianLens:
        """Fit `J_ℓ` on `prompts` (strings or token ids) with the exact estimator of
        TransformerLens's `JacobianLens.fit` (same signature, same matrices): see
        `hooklens.training.jacobian_fit`. `checkpoint` (a `.pt` path, written every
        `checkpoint_every` prompts in the reference's running-sum format) makes it
        resumable: the same call continues where it stopped. Under torchrun (the process
        group initialised, `hooklens.training.distributed.init_from_environment()`) every
        rank passes the same prompts and the ranks share them; see `fit_jacobians`.

        Examples:
            >>> lens = JacobianLens.fit(model, prompts, max_seq_len=64)   # doctest: +SKIP
        """
        from hooklens.training.jacobian_fit import fit_jacobians

        adapter = ModelAdapter(model)
        _require_raw_weights(adapter, source="JacobianLens.fit")
        jacobians, n_prompts = fit_jacobians(
            model,
            prompts,
            source_layers=source_layers,
            max_seq_len=max_seq_len,
            skip_first_positions=skip_first_positions,
            dim_batch=dim_batch,
            checkpoint=checkpoint,
            checkpoint_every=checkpoint_every,
            progress=progress,
        )
        fit_settings = {"max_seq_len": max_seq_len, "skip_first_positions": skip_first_positions}
        return cls(
            Unembed.from_model(adapter),
            jacobians,
            n_prompts=n_prompts,
            metadata={"model_name": adapter.model_name, **fit_settings, **(metadata or {})},
            component=component,
        )

    @classmethod
    def from_transformer_lens(
        cls, lens: Any, model: nn.Module | ModelAdapter, *, component: str = "resid_pre"
    ) -> JacobianLens:
        """Our lens from a `transformer_lens.tools.analysis.JacobianLens` (same matrices)."""
        adapter = model if isinstance(model, ModelAdapter) else ModelAdapter(model)
        result = cls(
            Unembed.from_model(adapter),
            dict(lens.jacobians),
            n_prompts=lens.n_prompts,
            metadata=dict(lens.metadata),
            component=component,
        )
        result._check_model(adapter, source="this TransformerLens JacobianLens")
        return result

    def to_transformer_lens(self) -> Any:
        """The same lens as a `transformer_lens.tools.analysis.JacobianLens`."""
        from transformer_lens.tools.analysis import JacobianLens as TLJacobianLens

        return TLJacobianLens(
            {layer: self.jacobian(layer) for layer in self.fitted_layers},
            n_prompts=self.n_prompts,
            d_model=self.unembed.d_model,
            metadata=self._provenance(),
        )

    def _provenance(self) -> dict[str, Any]:
        """The metadata to hand on, naming the model (what TransformerLens checks)."""
        metadata = dict(self.metadata)
        if self.unembed.adapter is not None:
            metadata.setdefault("model_name", self.unembed.adapter.model_name)
        return metadata

    # --- reading -----------------------------------------------------------------

    @property
    def fitted_layers(self) -> list[int]:
        """Source layers with a fitted `J_ℓ` (the others read as the logit lens)."""
        return sorted(int(name.removeprefix("J_")) for name, _ in self.named_buffers())

    def jacobian(self, layer: int) -> Float[Tensor, "d_model d_model"]:
        """`J_ℓ` of source layer `layer` (the output of block ℓ, the reference's index);
        the identity where none was fitted."""
        name = _buffer_name(self.layer_index(layer))
        if name in self._buffers:
            return self._buffers[name]  # type: ignore[return-value]
        return torch.eye(self.unembed.d_model)

    def __repr__(self) -> str:
        name = self.unembed.adapter.model_name if self.unembed.adapter else "?"
        fitted = self.fitted_layers
        span = f"{fitted[0]}..{fitted[-1]} ({len(fitted)})" if fitted else "none (logit lens)"
        return (
            f"JacobianLens(model={name!r}, layers={self.n_layers}, fitted={span}, "
            f"d_model={self.unembed.d_model}, n_prompts={self.n_prompts}, "
            f"component={self.component!r})"
        )

    def transform_hidden(
        self, h: Float[Tensor, "... d_model"], idx: int
    ) -> Float[Tensor, "... d_model"]:
        """`J_ℓ h` for the source layer ℓ of row `idx` (float32 matmul, `h`'s dtype
        back); the identity where no `J_ℓ` was fitted."""
        row = self.layer_index(idx)
        source = row - 1 if self.component == "resid_pre" else row
        name = _buffer_name(source)
        if name not in self._buffers:
            return h
        matrix: Tensor = self._buffers[name]  # type: ignore[assignment]
        return (h.to(matrix.dtype) @ matrix.T).to(h.dtype)

    def _check_component(self, component: str | None) -> str:
        component = super()._check_component(component)
        if component != self.component:
            raise LensMismatchError(
                f"this Jacobian lens reads {self.component}, not {component}: leave the "
                "component out (the lens's own is the default), or build the lens with "
                f"component={component!r}"
            )
        return component

    # --- files -------------------------------------------------------------------

    def save(self, path: str | os.PathLike, *, dtype: torch.dtype = torch.float16) -> Path:
        """Save to `path`: a `.pt` file in the reference / TransformerLens format (keys
        `J`, `n_prompts`, `source_layers`, `d_model`, `metadata`; `dtype` fp16 as the
        reference stores it), or else a directory in ours (`config.json` with the
        model's fingerprint, `params.safetensors` in float32)."""
        path = Path(path)
        if path.suffix == REFERENCE_SUFFIX:
            payload = self._reference_payload(dtype)
            return atomic_write(path, lambda tmp: torch.save(payload, tmp))
        config = {
            "lens_type": LENS_TYPE,
            "d_model": self.unembed.d_model,
            "num_hidden_layers": self.n_layers,
            "n_prompts": self.n_prompts,
            "source_layers": self.fitted_layers,
            "metadata": self.metadata,
            "component": self.component,
            "fingerprint": self.adapter.fingerprint.to_dict(),
        }
        return write_lens_dir(
            path, config, {f"J.{k}": self.jacobian(k) for k in self.fitted_layers}
        )

    def _reference_payload(self, dtype: torch.dtype) -> dict[str, Any]:
        return {
            "J": {layer: self.jacobian(layer).to(dtype) for layer in self.fitted_layers},
            "n_prompts": self.n_prompts,
            "source_layers": self.fitted_layers,
            "d_model": self.unembed.d_model,
            "metadata": self._provenance(),
        }

    @classmethod
    def load(
        cls,
        source: str | os.PathLike | None,
        model: nn.Module | ModelAdapter,
        *,
        strict: bool = True,
        component: str | None = None,
        repo_id: str | None = None,
        filename: str | None = None,
        revision: str | None = None,
    ) -> JacobianLens:
        """Load a J-lens for `model`: a reference / TransformerLens `.pt` artifact (`J`) or
        fit checkpoint (`jacobian_sum`, `n_done`), read with `weights_only=True`, or a
        directory saved by `save`. `component` (rows as block inputs, `"resid_pre"`, or
        outputs, `"resid_post"`; see the module docstring) defaults to what a directory
        recorded, else `"resid_pre"`.

        `source` is a local path, a published lens's short name from TransformerLens's
        registry (`"gpt2-small"`, or a model id such as `"google/gemma-2-2b"`), or a hub
        file: `repo_id=` and `filename=` (optionally `revision=`), or
        `"owner/repo/path/in/repo.pt"`. Hub files download through huggingface_hub's
        cache (`HF_HUB_OFFLINE=1` reads only the cache); `hooklens.hub.jacobian_lens_file`
        says how the arguments combine.

        Refused with `LensMismatchError`: a lens for another model (the registry's entry,
        before anything downloads; the file's name, width, layers) and a model whose
        weights TransformerLens processed (published J-lenses are fitted on raw
        activations). Refused with `LensFileError`: a truncated file, a pickle that would
        run code, or a file of neither format. `LensNotFoundError`: no such path, registry
        name or hub file; `HubUnreachableError`: a hub file not cached while offline.

        Examples:
            >>> JacobianLens.load("gpt2-small", model)                      # doctest: +SKIP
            >>> JacobianLens.load(None, model, repo_id="neuronpedia/jacobian-lens",
            ...     filename="gpt2-small/jlens/Salesforce-wikitext/gpt2_jacobian_lens.pt")
            ...                                                             # doctest: +SKIP
        """
        adapter = model if isinstance(model, ModelAdapter) else ModelAdapter(model)
        path = resolve_jacobian_lens(
            source,
            repo_id=repo_id,
            filename=filename,
            revision=revision,
            model_name=adapter.model_name,
            strict=strict,
        )
        if path.is_dir():
            return cls._from_dir(path, adapter, strict=strict, component=component)
        if not path.is_file():
            raise LensNotFoundError(f"no Jacobian lens at {path}")
        payload = load_weights_only(path, "a Jacobian lens (.pt artifact or fit checkpoint)")
        jacobians, n_prompts, metadata = _parse_reference(payload, path)
        lens = cls(
            Unembed.from_model(adapter),
            jacobians,
            n_prompts=n_prompts,
            metadata=metadata,
            component=component or "resid_pre",
        )
        lens._check_model(adapter, source=str(path), strict=strict)
        return lens

    @classmethod
    def _from_dir(
        cls, path: Path, adapter: ModelAdapter, *, strict: bool, component: str | None
    ) -> JacobianLens:
        files = read_lens_dir(path)
        config = files.config
        if config.get("lens_type") != LENS_TYPE:
            raise LensFileError(
                f"{files.config_path}: lens_type is {config.get('lens_type')!r}, not "
                f"{LENS_TYPE!r}; load a tuned lens with TunedLens.load"
            )
        check_fingerprint(ModelFingerprint.from_dict(config["fingerprint"]), adapter, strict=strict)
        jacobians = {}
        for key, value in files.tensors.items():
            layer = key.removeprefix("J.")
            if not key.startswith("J.") or not layer.isdigit():
                raise LensFileError(f"{files.params_path}: unexpected tensor {key!r}")
            jacobians[int(layer)] = value
        lens = cls(
            Unembed.from_model(adapter),
            jacobians,
            n_prompts=int(config.get("n_prompts", 0)),
            metadata=config.get("metadata") or {},
            component=component or config.get("component", "resid_pre"),
        )
        lens._check_model(adapter, source=str(path), strict=strict)
        return lens

    def _check_model(self, adapter: ModelAdapter, *, source: str, strict: bool = True) -> None:
        """Refuse a model the lens was not fitted on, or one with processed weights."""
        fitted_for = self.metadata.get("model_name")
        if fitted_for and not _same_model_name(str(fitted_for), adapter.model_name):
            message = (
                f"{source} was fitted for {fitted_for!r}; the model is "
                f"{adapter.model_name!r}. Load that model (or pass strict=False for a "
                "fine-tune of the same base)."
            )
            if strict:
                raise LensMismatchError(message)
            warnings.warn(message, stacklevel=3)
        _require_raw_weights(adapter, source=source)
        target = self.metadata.get("target_layer")
        if target is not None and int(target) != self.n_layers - 1:
            raise LensMismatchError(
                f"{source} targets layer {target}, but a lens reads into the final block "
                f"({self.n_layers - 1}); refit it without a custom target layer"
            )


def _require_raw_weights(adapter: ModelAdapter, *, source: str) -> None:
    """Refuse a model whose weights TransformerLens processed: J-lenses live in the raw
    residual basis."""
    processing = adapter.processing
    if processing.fold_ln or processing.center_writing_weights or processing.center_unembed:
        raise LensMismatchError(
            f"{source}: this model's weights were processed by TransformerLens "
            f"({processing}), which changes the residual basis the lens was fitted in. "
            + _NEEDS_RAW
        )


def _buffer_name(layer: int) -> str:
    return f"J_{layer}"


def _parse_reference(payload: Any, path: Path) -> tuple[dict[int, Tensor], int, dict[str, Any]]:
    """`(jacobians, n_prompts, metadata)` of a reference artifact or fit checkpoint."""
    if not isinstance(payload, dict):
        raise LensFileError(f"{path} holds a {type(payload).__name__}, not a Jacobian lens")
    if "J" in payload:
        matrices, n_prompts = payload["J"], int(payload.get("n_prompts", 0))
        divide = 1
    elif "jacobian_sum" in payload:  # running sums of a fit in progress
        matrices = payload["jacobian_sum"]
        n_prompts = int(payload.get("n_done") or payload.get("n_prompts") or 0)
        if n_prompts <= 0:
            raise LensFileError(f"{path} is a fit checkpoint of {n_prompts} prompts: nothing yet")
        divide = n_prompts
    else:
        raise LensFileError(
            f"{path} is not a Jacobian lens: expected a 'J' key (artifact) or "
            f"'jacobian_sum' (fit checkpoint), found {sorted(map(str, payload))[:6]}"
        )
    if not isinstance(matrices, dict) or not matrices:
        raise LensFileError(f"{path}: the matrices must be a non-empty {{layer: tensor}} dict")
    jacobians: dict[int, Tensor] = {}
    for layer, matrix in matrices.items():
        if not isinstance(matrix, Tensor) or not matrix.is_floating_point():
            raise LensFileError(f"{path}: J[{layer!r}] is not a floating-point tensor")
        if not bool(torch.isfinite(matrix).all()):
            raise LensFileError(f"{path}: J[{layer!r}] holds NaN or infinite entries")
        jacobians[int(layer)] = matrix.float() / divide
    metadata = payload.get("metadata") or {}
    if "target_layer" in payload:
        metadata = {**metadata, "target_layer": payload["target_layer"]}
    d_model = payload.get("d_model")
    first = next(iter(jacobians.values()))
    if d_model is not None and int(d_model) != first.shape[0]:
        raise LensFileError(f"{path}: d_model is {d_model}, but J is {tuple(first.shape)}")
    return jacobians, n_prompts, dict(metadata)
