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

`fit` calls the estimator (`hooklens.lenses.jacobian_estimator`); `save` and `load`
write and read through `hooklens.lenses._jacobian_files`.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor, nn

from hooklens.artifacts import atomic_write, resolve_jacobian_lens, write_lens_dir
from hooklens.artifacts.jlens_pt import REFERENCE_SUFFIX as REFERENCE_SUFFIX  # re-exported
from hooklens.artifacts.provenance import PROVENANCE_KEY
from hooklens.core import ModelAdapter, normalize_component, same_model_name
from hooklens.core.unembed import Unembed
from hooklens.errors import HooklensError, InputError, LensMismatchError, LensNotFoundError, warn
from hooklens.lenses._jacobian_files import LENS_TYPE as LENS_TYPE  # re-exported
from hooklens.lenses._jacobian_files import SAVE_DTYPES as SAVE_DTYPES  # re-exported
from hooklens.lenses._jacobian_files import (
    check_save_dtype,
    read_jacobian_dir,
    read_jacobian_pt,
    reference_payload,
    require_raw_weights,
)
from hooklens.lenses.base import Lens
from hooklens.lenses.jacobian_estimator import fit_jacobians


class JacobianLens(Lens):
    """A lens that reads layer ℓ as `W_U · norm(J_ℓ h_ℓ)` (module docstring).

    Layers without a fitted matrix (and the last block's output, whose Jacobian is the
    identity) are read as the logit lens; `fitted_layers` lists the others.

    Examples:
        >>> from hooklens import JacobianLens, PredictionTrajectory
        >>> prompts = ["The cat sat on the mat", "The dog ran to the store"]
        >>> path = JacobianLens.fit(model, prompts, skip_first_positions=1).save("jlens.pt")
        >>> lens = JacobianLens.load("jlens.pt", model=model)
        >>> lens.fitted_layers  # the last block's output is the final residual
        [0, 1, 2]
        >>> traj = PredictionTrajectory.from_lens_and_cache(lens, tokens, cache, logits)
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
            # On the unembedding's device, where the residuals it multiplies are read.
            matrix = matrix.detach().to(device=unembed.W_U.device, dtype=torch.float32)
            self.register_buffer(_buffer_name(layer), matrix.clone())
        missing = [layer for layer in range(n_layers - 1) if layer not in self.fitted_layers]
        if jacobians and missing:
            warn(
                f"this Jacobian lens has no matrix for layers {missing}: they are read as "
                "the logit lens",
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
        `hooklens.lenses.jacobian_estimator`. `checkpoint` (a `.pt` path, written every
        `checkpoint_every` prompts in the reference's running-sum format) makes it
        resumable: the same call continues where it stopped. Under torchrun (the process
        group initialised, `hooklens.training.distributed.init_from_environment()`) every
        rank passes the same prompts and the ranks share them; see `fit_jacobians`.

        Examples:
            >>> prompts = ["The cat sat on the mat", "The dog ran to the store"]
            >>> lens = JacobianLens.fit(model, prompts, max_seq_len=64,
            ...                         skip_first_positions=1)  # short prompts here
            >>> lens
            JacobianLens(model='tiny-llama', layers=4, fitted=0..2 (3), d_model=32, ...)
        """
        adapter = ModelAdapter(model)
        require_raw_weights(adapter, source="JacobianLens.fit")
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
        lens = cls(
            Unembed.from_model(adapter),
            jacobians,
            n_prompts=n_prompts,
            metadata={"model_name": adapter.model_name, **fit_settings, **(metadata or {})},
            component=component,
        )
        lens.fit_settings = {**fit_settings, "n_prompts": n_prompts, "dim_batch": dim_batch}
        return lens

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
            {layer: self.jacobian(layer).cpu() for layer in self.fitted_layers},  # as TL fits
            n_prompts=self.n_prompts,
            d_model=self.unembed.d_model,
            metadata=self._provenance(),
        )

    def _provenance(self) -> dict[str, Any]:
        """The metadata to hand on, naming the model (what TransformerLens checks)."""
        metadata = dict(self.metadata)
        if self.unembed.adapter is not None:
            metadata.setdefault("model_name", self.unembed.adapter.model_name)
        # TransformerLens's validate_model refuses a lens whose target is not the
        # model's last block: a model of another depth, even of the same name.
        metadata.setdefault("target_layer", self.n_layers - 1)
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
        return torch.eye(self.unembed.d_model, device=self.unembed.W_U.device)

    def __repr__(self) -> str:
        name = self.unembed.adapter.model_name if self.unembed.adapter else "?"
        fitted = self.fitted_layers
        span = f"{fitted[0]}..{fitted[-1]} ({len(fitted)})" if fitted else "none (logit lens)"
        return (
            f"JacobianLens(model={name!r}, layers={self.n_layers}, fitted={span}, "
            f"d_model={self.unembed.d_model}, n_prompts={self.n_prompts}, "
            f"component={self.component!r}{self._written_by()})"
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
        """Save to `path`: a `.pt` file in the reference / TransformerLens format, or else
        a directory in ours (`config.json` with the model's fingerprint and the SHA-256
        of `params.safetensors`, float32).

        The `.pt` file holds the reference's keys (`J` in `dtype`, float16 by default as
        the reference stores it; `n_prompts`, `source_layers`, `d_model`, `metadata`,
        which records `model_name` and `target_layer`), so TransformerLens's
        `JacobianLens.load` reads it; and two of ours: `hooklens` (the model's layer
        count, the target layer, the lens's component and the model's fingerprint) and
        `hooklens_sha256` (the SHA-256 of every other entry's content), which `load`
        verifies.

        Raises:
            InputError, InputTypeError: `dtype` is not float16, bfloat16, float32 or
                float64 (before anything is written).
        """
        check_save_dtype(dtype)
        path = Path(path)
        if path.suffix == REFERENCE_SUFFIX:
            payload = reference_payload(
                {layer: self.jacobian(layer) for layer in self.fitted_layers},
                dtype=dtype,
                d_model=self.unembed.d_model,
                n_prompts=self.n_prompts,
                metadata=self._provenance(),
                n_layers=self.n_layers,
                component=self.component,
                fingerprint=self.adapter.fingerprint,
                provenance=self.provenance_to_write(),
            )
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
            PROVENANCE_KEY: self.provenance_to_write(),
        }
        return write_lens_dir(
            path, config, {f"J.{k}": self.jacobian(k) for k in self.fitted_layers}
        )

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
        outputs, `"resid_post"`; see the module docstring) defaults to what the file
        recorded, else `"resid_pre"`.

        `source` is a local path, a published lens's short name from TransformerLens's
        registry (`"gpt2-small"`, or a model id such as `"google/gemma-2-2b"`), or a hub
        file: `repo_id=` and `filename=` (optionally `revision=`), or
        `"owner/repo/path/in/repo.pt"`. Hub files download through huggingface_hub's
        cache (`HF_HUB_OFFLINE=1` reads only the cache); `hooklens.artifacts.jacobian_lens_file`
        says how the arguments combine.

        What is verified. Every `.pt` file written by `torch.save` (a zip archive) is
        checked against the CRC-32 of each member. A `.pt` saved by hooklens records
        its checksum (every entry's content), the model's layer count and fingerprint:
        all are checked, the fingerprint as for a directory (`strict=False` relaxes the
        name, unembedding and weight processing, never the sizes). A hooklens fit
        checkpoint records a checksum over its sums, count and settings, checked too.
        Files without our entries (the reference's and TransformerLens's artifacts,
        `.pt` lenses of hooklens before them) load as foreign files: checked by the
        model name, width, source layers and target layer their metadata gives.

        Refused with `LensMismatchError`: a lens for another model (the registry's entry,
        before anything downloads; the file's name, width, layers) and a model whose
        weights TransformerLens processed (published J-lenses are fitted on raw
        activations). Refused with `LensFileError`: a truncated or damaged file, one whose
        checksum does not match, a pickle that would run code, an entry of the wrong type,
        or a file of neither format. `LensNotFoundError`: no such path, registry name or
        hub file; `HubUnreachableError`: a hub file not cached while offline.

        Examples:
            >>> JacobianLens.load("gpt2-small", model)                      # doctest: +SKIP
            >>> JacobianLens.load(None, model, repo_id="neuronpedia/jacobian-lens",
            ...     filename="gpt2-small/jlens/Salesforce-wikitext/gpt2_jacobian_lens.pt")
            ...                                                             # doctest: +SKIP

            A local file (here: fitted on the examples' tiny model):

            >>> path = JacobianLens.fit(model, ["The cat sat on the mat"],
            ...                         skip_first_positions=1).save("jlens.pt")
            >>> JacobianLens.load(path, model)
            JacobianLens(model='tiny-llama', layers=4, fitted=0..2 (3), ..., n_prompts=1, ...)
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
            loaded = read_jacobian_dir(path, adapter, strict=strict)
        elif not path.is_file():
            raise LensNotFoundError(f"no Jacobian lens at {path}")
        else:
            loaded = read_jacobian_pt(path, adapter, strict=strict)
        try:
            lens = cls(
                Unembed.from_model(adapter),
                loaded.jacobians,
                n_prompts=loaded.n_prompts,
                metadata=loaded.metadata,
                component=component or loaded.component,
            )
        except HooklensError as error:  # say which file holds what this model refuses
            raise type(error)(f"{path}: {error}") from None
        lens._check_model(
            adapter, source=str(path), strict=strict, name_checked=loaded.name_checked
        )
        lens._loaded_with(loaded.provenance, str(path))
        return lens

    def _check_model(
        self,
        adapter: ModelAdapter,
        *,
        source: str,
        strict: bool = True,
        name_checked: bool = False,
    ) -> None:
        """Refuse a model the lens was not fitted on, or one with processed weights
        (`name_checked`: a recorded fingerprint has already judged the name)."""
        fitted_for = self.metadata.get("model_name")
        if (
            not name_checked
            and fitted_for
            and not same_model_name(str(fitted_for), adapter.model_name)
        ):
            message = (
                f"{source} was fitted for {fitted_for!r}; the model is "
                f"{adapter.model_name!r}. Load that model (or pass strict=False for a "
                "fine-tune of the same base)."
            )
            if strict:
                raise LensMismatchError(message)
            warn(message)
        require_raw_weights(adapter, source=source)
        target = self.metadata.get("target_layer")
        if target is not None and target != self.n_layers - 1:
            raise LensMismatchError(
                f"{source} targets layer {target}, but this model's final block is "
                f"{self.n_layers - 1}: it was fitted on a model of another depth, or with "
                "a custom target layer. Load the model it was fitted on, or fit a lens for "
                "this one (JacobianLens.fit or `hooklens fit-jlens`)"
            )


def _buffer_name(layer: int) -> str:
    return f"J_{layer}"
