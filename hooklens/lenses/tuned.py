"""The tuned lens: one learned affine translator per layer before the unembedding."""

from __future__ import annotations

import inspect
import os
from dataclasses import asdict, dataclass, fields
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor, nn

from hooklens.artifacts import (
    FIX_CONFIG,
    LensFiles,
    MapLocation,
    check_fingerprint,
    check_json_fields,
    parameter_device,
    read_lens_dir,
    read_lens_files,
    write_lens_dir,
)
from hooklens.artifacts.hub import load_artifacts
from hooklens.artifacts.provenance import PROVENANCE_KEY
from hooklens.core import (
    ModelAdapter,
    ModelFingerprint,
    normalize_component,
    same_model_name,
)
from hooklens.core.unembed import Unembed
from hooklens.errors import InputError, InputTypeError, LensFileError, LensMismatchError, warn
from hooklens.lenses._translators import LowRankTranslator as LowRankTranslator  # re-exported
from hooklens.lenses._translators import check_rank
from hooklens.lenses.base import Lens
from hooklens.models import hub_model_name


@dataclass
class TunedLensConfig:
    """Configuration of a `TunedLens`; the first seven fields are tuned-lens's own."""

    base_model_name_or_path: str
    d_model: int
    num_hidden_layers: int
    bias: bool = True
    base_model_revision: str | None = None
    unembed_hash: str | None = None
    lens_type: str = "linear_tuned_lens"
    # hooklens additions: which residual the translators read, and the model check.
    component: str = "resid_pre"
    fingerprint: dict[str, Any] | None = None
    # None: full translators (d² + d parameters each); r: `U Vᵀ h + b`, U, V ∈ R^{d×r}.
    rank: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, config: dict[str, Any], *, source: str = "lens config") -> TunedLensConfig:
        """The config of a `config.json`; unknown keys are ignored with a warning.

        Raises:
            LensFileError: a required key is missing or a value has the wrong type; the
                message names `source` (the file) and the key.
        """
        check_json_fields(cls, config, source)
        unknown = sorted(set(config) - {f.name for f in fields(cls)})
        if unknown:
            warn(f"ignoring unknown lens config keys {unknown}")
        values = {k: v for k, v in config.items() if k not in unknown}
        for name in ("d_model", "num_hidden_layers"):
            if values[name] < 1:
                raise LensFileError(
                    f"{source}: key {name!r} should be a positive integer, found "
                    f"{values[name]}. {FIX_CONFIG}"
                )
        try:
            normalize_component(values.get("component", "resid_pre"))
        except (InputError, InputTypeError) as error:
            raise LensFileError(f"{source}: key 'component': {error}. {FIX_CONFIG}") from None
        if values.get("fingerprint") is not None:
            check_json_fields(ModelFingerprint, values["fingerprint"], source, "fingerprint.")
        rank = values.get("rank")
        if rank is not None and not 1 <= rank < values["d_model"]:
            raise LensFileError(
                f"{source}: key 'rank' should be null (full translators) or an integer from 1 "
                f"to d_model - 1 = {values['d_model'] - 1}, found {rank}. {FIX_CONFIG}"
            )
        return cls(**values)


class TunedLens(Lens):
    """A lens with an affine translator `h ↦ h + W h + b` for each layer.

    Translators start at zero, so a fresh `TunedLens` is exactly the `LogitLens`.
    The final residual (index `n_layers`) has no translator. With `rank=r`
    (`TunedLens.from_model(model, rank=r)`) each `W` is `U Vᵀ` with `U, V ∈ R^{d×r}`:
    2·d·r + d parameters a layer instead of d² + d.

    Examples:
        >>> from hooklens import TunedLens
        >>> lens = TunedLens.from_model(model)
        >>> lens
        TunedLens(model='tiny-llama', layers=4, d_model=32, bias=True, component='resid_pre')
        >>> lens.save("my-lens")  # a folder: config.json and params.safetensors
        >>> lens = TunedLens.load("my-lens", model=model)
        >>> lens.log_probs(cache, layer=2).shape
        torch.Size([1, 6, 96])
    """

    config: TunedLensConfig
    layer_translators: nn.ModuleList

    def __init__(self, unembed: Unembed, config: TunedLensConfig):
        super().__init__(unembed, config.num_hidden_layers)
        if unembed.d_model != config.d_model:
            raise LensMismatchError(
                f"lens config has d_model={config.d_model}, the unembedding {unembed.d_model}"
            )
        self.config = config
        self.component = normalize_component(config.component)
        if unembed.adapter is not None:
            config.unembed_hash = unembed.unembedding_hash()
        w = unembed.W_U
        dtype = w.dtype if w.is_floating_point() else torch.float32
        translators: list[nn.Module] = []
        for _ in range(config.num_hidden_layers):
            if config.rank is None:
                linear = nn.Linear(
                    config.d_model, config.d_model, bias=config.bias, device=w.device, dtype=dtype
                )
                for param in linear.parameters():
                    nn.init.zeros_(param)  # zero translators: a fresh lens is the logit lens
                translators.append(linear)
            else:  # U = 0: zero too
                translators.append(
                    LowRankTranslator(
                        config.d_model, config.rank, bias=config.bias, device=w.device, dtype=dtype
                    )
                )
        self.layer_translators = nn.ModuleList(translators)

    @classmethod
    def from_model(
        cls,
        model: nn.Module | ModelAdapter,
        *,
        bias: bool = True,
        component: str = "resid_pre",
        model_revision: str | None = None,
        rank: int | None = None,
    ) -> TunedLens:
        """An identity-initialised tuned lens for a HookedTransformer or TransformerBridge.

        `rank`: None (or d_model) for full translators `h ↦ h + W h + b`; r from 1 to
        d_model - 1 for low-rank ones, `W = U Vᵀ` with `U, V ∈ R^{d×r}`.

        Examples:
            >>> lens = TunedLens.from_model(model, rank=4)
            >>> lens.config.rank, sum(p.numel() for p in lens[0].parameters())  # 2·32·4 + 32
            (4, 288)
            >>> TunedLens.from_model(model, rank=32).config.rank is None  # rank d_model: full
            True
        """
        adapter = model if isinstance(model, ModelAdapter) else ModelAdapter(model)
        rank = check_rank(rank, adapter.d_model)
        config = TunedLensConfig(
            base_model_name_or_path=adapter.model_name,
            d_model=adapter.d_model,
            num_hidden_layers=adapter.n_layers,
            bias=bias,
            base_model_revision=model_revision,
            component=normalize_component(component),
            fingerprint=adapter.fingerprint.to_dict(),
            rank=rank,
        )
        return cls(Unembed.from_model(adapter), config)

    def __repr__(self) -> str:
        return (
            f"TunedLens(model={self.config.base_model_name_or_path!r}, "
            f"layers={self.n_layers}, d_model={self.config.d_model}, "
            f"bias={self.config.bias}, component={self.component!r}"
            + (f", rank={self.config.rank}" if self.config.rank is not None else "")
            + f"{self._written_by()})"
        )

    def __getitem__(self, idx: int) -> nn.Linear | LowRankTranslator:
        return self.layer_translators[idx]  # type: ignore[return-value]

    def __len__(self) -> int:
        return len(self.layer_translators)

    def transform_hidden(
        self, h: Float[Tensor, "... d_model"], idx: int
    ) -> Float[Tensor, "... d_model"]:
        """`h + W h + b` for layer `idx`; the final residual passes unchanged."""
        idx = self.layer_index(idx)
        if idx == self.n_layers:
            return h
        # Residual form: weight decay pulls the translator toward the identity, not zero.
        translator = self[idx]
        dtype = next(translator.parameters()).dtype  # W's (full) or U's (low rank)
        if h.dtype != dtype:  # e.g. a .half() lens on a float32 cache: its precision, h's dtype
            return h + translator(h.to(dtype)).to(h.dtype)
        return h + translator(h)

    def _check_component(self, component: str | None) -> str:
        component = super()._check_component(component)
        if component != self.component:
            raise LensMismatchError(
                f"this lens was trained on {self.component}, not {component}. "
                "(resid_post of block l is resid_pre of block l+1.)"
            )
        return component

    # --- files ------------------------------------------------------------------------

    def save(self, path: str | os.PathLike) -> None:
        """Write `config.json` and `params.safetensors` into directory `path`.

        A lens already there is replaced. The config records the SHA-256 of the
        parameters and is renamed into place last, so a save that fails or is killed
        leaves the previous lens, or a directory that `load` refuses with
        `LensFileError` (save again), never one lens's parameters under another's config.

        The config also records its `provenance`: the hooklens, torch, transformers and
        TransformerLens versions, the model's name (and revision where known) and the
        `fit_settings` (`hooklens.artifacts.provenance`).

        Raises:
            OutputExistsError: `path` (or a folder above it) is a file.
        """
        provenance = self.provenance_to_write(revision=self.config.base_model_revision)
        config = {**self.config.to_dict(), PROVENANCE_KEY: provenance}
        write_lens_dir(path, config, self.state_dict())

    @classmethod
    def load(
        cls,
        path: str | os.PathLike,
        model: nn.Module | ModelAdapter,
        *,
        strict: bool = True,
        map_location: MapLocation = None,
    ) -> TunedLens:
        """Load a lens saved by `save()`, or by the tuned-lens package, for `model`.

        The lens must fit the model: same model and sizes, the same final norm and
        unembedding (hashed entry by entry) and the same TransformerLens weight
        processing. A mismatch raises `LensMismatchError` saying what differs and how
        to load the model to match; `strict=False` turns that into a warning, except
        for the sizes (`d_model`, `n_layers`, `d_vocab`), which must always match.

        `map_location` (`"cpu"`, `"cuda:1"`, a `torch.device`) is the device the
        parameter file is read onto (safetensors' `device=`, or `torch.load`'s
        `map_location=` for a tuned-lens `params.pt`) and the translators stay on;
        by default they go where the model's unembedding is.

        Raises:
            LensNotFoundError: no lens at `path` (it does not exist, or is a file).
            LensFileError: a file is truncated, corrupt or incomplete, the parameters
                do not match the config (an interrupted save), or hold NaN / infinity.
            LensMismatchError: the lens was made for another model.
            InputError: `map_location` is no device of this machine.
        """
        device = parameter_device(map_location)
        files = read_lens_dir(path, map_location=device)
        return cls._from_files(files, model, strict=strict, device=device)

    @classmethod
    def from_model_and_pretrained(
        cls,
        model: nn.Module | ModelAdapter,
        lens_resource_id: str | None = None,
        *,
        map_location: MapLocation = None,
        **kwargs: Any,
    ) -> TunedLens:
        """A published lens for `model`, from the hub (or its cache, or a local folder).

        Args:
            model: the HookedTransformer or TransformerBridge to read.
            lens_resource_id: the lens's name; defaults to the model's Hugging Face name
                (`EleutherAI/pythia-160m-deduped` for TransformerLens's
                `pythia-160m-deduped`). A local folder holding a lens works too.
            map_location: the device the parameters are read onto and kept on (see
                `load`); by default the model's unembedding's.
            **kwargs: `repo_id`, `repo_type`, `revision`, `cache_dir`, `subfolder`,
                `config_file`, `ckpt_file` (see `hooklens.artifacts.load_artifacts`) and
                `strict` (see `load`).

        The lens is checked against the model like any other (`load`). Lenses of the
        tuned-lens repository were trained on raw Hugging Face hidden states: they load
        on a TransformerBridge, on `HookedTransformer.from_pretrained_no_processing`, and
        on RMSNorm models loaded with processing (folding norms and centring the
        unembedding leave the residual stream as it was), but a LayerNorm model whose
        writing weights TransformerLens centred is refused with advice: its residual
        stream lost the component along the all-ones direction, which a translator may
        read, so no exact conversion exists.

        Examples:
            >>> from transformer_lens import HookedTransformer                  # doctest: +SKIP
            >>> model = HookedTransformer.from_pretrained_no_processing("gpt2")  # doctest: +SKIP
            >>> lens = TunedLens.from_model_and_pretrained(model)               # doctest: +SKIP

            A local folder needs no hub (here: a lens saved for the examples' tiny model):

            >>> TunedLens.from_model(model).save("lenses/tiny")
            >>> TunedLens.from_model_and_pretrained(model, "lenses/tiny")  # doctest: +ELLIPSIS
            TunedLens(model='tiny-llama', ..., component='resid_pre', written by hooklens ...)
        """
        adapter = model if isinstance(model, ModelAdapter) else ModelAdapter(model)
        if lens_resource_id is None:
            lens_resource_id = hub_model_name(adapter)
        return cls.from_unembed_and_pretrained(
            Unembed.from_model(adapter), lens_resource_id, map_location=map_location, **kwargs
        )

    @classmethod
    def from_unembed_and_pretrained(
        cls,
        unembed: Unembed,
        lens_resource_id: str,
        *,
        map_location: MapLocation = None,
        **kwargs: Any,
    ) -> TunedLens:
        """A published lens, read with `unembed` (which must come from a model).

        Takes the same keyword arguments as `from_model_and_pretrained`.
        """
        strict = kwargs.pop("strict", True)
        allowed = set(inspect.signature(load_artifacts).parameters) - {"resource_id"}
        if unknown := sorted(set(kwargs) - allowed):
            raise InputTypeError(
                f"unexpected arguments {unknown}; expected some of "
                f"{sorted(allowed | {'map_location', 'strict'})} (of torch.load's arguments "
                "only map_location is taken: the parameters are read with weights_only=True)"
            )
        if unembed.adapter is None:
            raise InputError("the unembedding must come from a model: Unembed.from_model(model)")
        device = parameter_device(map_location)  # refused before anything downloads
        config_path, params_path = load_artifacts(lens_resource_id, **kwargs)
        files = read_lens_files(config_path, params_path, map_location=device)
        return cls._from_files(files, unembed.adapter, strict=strict, device=device)

    @classmethod
    def _from_files(
        cls,
        files: LensFiles,
        model: nn.Module | ModelAdapter,
        *,
        strict: bool,
        device: torch.device | None = None,
    ) -> TunedLens:
        adapter = model if isinstance(model, ModelAdapter) else ModelAdapter(model)
        _full_rank_of_tuned_lens(files)
        config = TunedLensConfig.from_dict(files.config, source=str(files.config_path))
        fingerprint = _saved_fingerprint(config, files)
        _check_parameters(config, files)  # the files agree with each other before the model
        if fingerprint is not None:
            check_fingerprint(fingerprint, adapter, strict=strict)
        else:
            _check_tuned_lens_artifact(config, adapter, strict=strict)
        lens = cls(Unembed.from_model(adapter), config)
        if device is not None:  # the translators only: the unembedding is the model's
            lens.layer_translators.to(device)
        lens.load_state_dict(files.tensors)  # keys and shapes checked above
        lens._loaded_with(files.provenance, str(files.config_path))
        return lens


def _saved_fingerprint(config: TunedLensConfig, files: LensFiles) -> ModelFingerprint | None:
    """The fingerprint a hooklens config records, which must agree with its own sizes."""
    if config.fingerprint is None:
        return None
    fingerprint = ModelFingerprint.from_dict(config.fingerprint)
    for key, size, recorded in (
        ("d_model", config.d_model, fingerprint.d_model),
        ("num_hidden_layers", config.num_hidden_layers, fingerprint.n_layers),
    ):
        if size != recorded:
            raise LensFileError(
                f"{files.config_path}: key {key!r} is {size}, but the fingerprint records "
                f"{recorded}; the file contradicts itself. {FIX_CONFIG}"
            )
    return fingerprint


def _full_rank_of_tuned_lens(files: LensFiles) -> None:
    """A tuned-lens config (no fingerprint) with a `rank` key over full `d × d` weights:
    the lens is full, whatever the key says (the package's early configs carried it)."""
    config = files.config
    if config.get("fingerprint") is not None or config.get("rank") is None:
        return
    if any(key.endswith(".weight") for key in files.tensors):
        warn(
            f"{files.config_path}: key 'rank' is {config['rank']!r}, but the parameters are "
            "full translators (layer_translators.*.weight); loaded as a full tuned lens"
        )
        files.config = {**config, "rank": None}


def _expected_shapes(config: TunedLensConfig) -> dict[str, tuple[int, ...]]:
    d = config.d_model
    shapes: dict[str, tuple[int, ...]] = {}
    for i in range(config.num_hidden_layers):
        if config.rank is not None:
            shapes[f"layer_translators.{i}.U"] = (d, config.rank)
            shapes[f"layer_translators.{i}.V"] = (d, config.rank)
        else:
            shapes[f"layer_translators.{i}.weight"] = (d, d)
        if config.bias:
            shapes[f"layer_translators.{i}.bias"] = (d,)
    return shapes


def _check_parameters(config: TunedLensConfig, files: LensFiles) -> None:
    """Refuse parameters that are not the ones the config describes, or not finite."""
    expected = _expected_shapes(config)
    described = (
        f"the {config.num_hidden_layers}-layer tuned lens with d_model={config.d_model} and "
        f"bias={config.bias}{f' and rank={config.rank}' if config.rank else ''} that "
        f"{files.config_path.name} describes"
    )
    missing = [k for k in expected if k not in files.tensors]
    unexpected = [k for k in files.tensors if k not in expected]
    if missing or unexpected:
        raise LensFileError(
            f"{files.params_path} does not hold the parameters of {described}: missing "
            f"{missing[:4]}{' …' * (len(missing) > 4)}, unexpected "
            f"{unexpected[:4]}{' …' * (len(unexpected) > 4)}. The two files come from "
            f"different lenses, or one is damaged. {_SAVE_AGAIN}"
        )
    for key, shape in expected.items():
        tensor = files.tensors[key]
        if tuple(tensor.shape) != shape:
            raise LensFileError(
                f"{files.params_path}: {key} has shape {list(tensor.shape)}, expected "
                f"{list(shape)} for {described}. {_SAVE_AGAIN}"
            )
        if not tensor.is_floating_point():
            raise LensFileError(
                f"{files.params_path}: {key} has dtype {tensor.dtype}, expected floating "
                f"point. {_SAVE_AGAIN}"
            )
        if bad := int((~torch.isfinite(tensor)).sum()):
            raise LensFileError(
                f"{files.params_path}: {key} holds {bad} NaN or infinite value(s), so the "
                "lens reads nothing at that layer. The training diverged (train again with "
                f"a lower learning rate) or the file is damaged. {_SAVE_AGAIN}"
            )


_SAVE_AGAIN = "Save (or download) the lens again."


def _check_tuned_lens_artifact(
    config: TunedLensConfig, adapter: ModelAdapter, *, strict: bool
) -> None:
    """Checks possible for a tuned-lens artifact, which records no fingerprint.

    Its translators were trained on the Hugging Face model's hidden states. Folding
    norms and centring W_U leave those unchanged (the lens output is the same), but
    centring the writing weights (LayerNorm models) shifts the residual stream itself.
    """
    if not same_model_name(config.base_model_name_or_path, adapter.model_name):
        message = (
            f"this tuned-lens artifact was trained on {config.base_model_name_or_path!r}; "
            f"the model is {adapter.model_name!r}. Load that model, or pass strict=False to "
            "use the lens anyway (a fine-tune of the same base, say)."
        )
        if strict:
            raise LensMismatchError(message)
        warn(message)
    found = (config.d_model, config.num_hidden_layers)
    expected = (adapter.d_model, adapter.n_layers)
    if found != expected:
        raise LensMismatchError(
            f"this tuned-lens artifact is for {config.base_model_name_or_path!r} with "
            f"d_model={found[0]} and {found[1]} layers; the model has d_model={expected[0]} "
            f"and {expected[1]} layers"
        )
    if adapter.processing.center_writing_weights:
        message = (
            "tuned-lens artifacts are trained on the raw Hugging Face residual stream, but "
            "this model's writing weights were centred by TransformerLens. Load it with "
            "HookedTransformer.from_pretrained_no_processing(name) or as a TransformerBridge."
        )
        if strict:
            raise LensMismatchError(message)
        warn(message)
