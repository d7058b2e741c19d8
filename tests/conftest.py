"""Tiny random models built from configs, in every flavour a lens must read.

Norm gains and unembedding biases are randomised so that folding, centring and the
unembedding hash have something to act on (fresh inits have unit gains and zero biases).
"""

from __future__ import annotations

import contextlib
import copy
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from tests.notebook_report import NOTEBOOK_REPORT

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--skip-notebooks",
        action="store_true",
        help="do not execute demos/*.ipynb (for quick local runs; refused under CI=true)",
    )


def pytest_configure(config: pytest.Config) -> None:
    if config.getoption("--skip-notebooks") and os.environ.get("CI"):
        raise pytest.UsageError("--skip-notebooks is for local runs: CI executes every notebook")
    config.stash[NOTEBOOK_REPORT] = []


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if config.getoption("--skip-notebooks"):
        skip = pytest.mark.skip(reason="--skip-notebooks")
        for item in items:
            if "notebook" in item.keywords:
                item.add_marker(skip)


def pytest_terminal_summary(terminalreporter, config: pytest.Config) -> None:
    """One line per executed notebook, so the CI log shows that each one ran."""
    if lines := config.stash.get(NOTEBOOK_REPORT, []):
        terminalreporter.section("notebooks executed")
        for line in lines:
            terminalreporter.write_line(line)


@contextlib.contextmanager
def outside_annotations() -> Iterator[None]:
    """Within this block jaxtyping's runtime check of hooklens is off.

    `make test` runs the suite under that check (`--jaxtyping-packages`): every shape
    and type annotation is checked on every call. A test that passes a wrong type on
    purpose, to see the library's own error (what was expected, what was found, what
    to do), wraps that call in this block, or is marked `outside_annotations` as a
    whole: there the checker would answer first.
    """
    import jaxtyping

    jaxtyping.config.update("jaxtyping_disable", True)
    try:
        yield
    finally:
        jaxtyping.config.update("jaxtyping_disable", False)


@pytest.fixture(autouse=True)
def _runtime_type_checks(request: pytest.FixtureRequest) -> Iterator[None]:
    """A test marked `outside_annotations` runs with the runtime check off."""
    if request.node.get_closest_marker("outside_annotations") is None:
        yield
    else:
        with outside_annotations():
            yield


VOCAB = 96
N_LAYERS = 3
D_MODEL = 32


def _randomise_norms_and_biases(module: torch.nn.Module, seed: int) -> None:
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in module.named_parameters():
            leaf = name.rsplit(".", 1)[-1]
            is_norm = any(part in name for part in ("ln", "norm"))
            if is_norm and leaf in ("w", "weight"):
                param.copy_(1 + 0.3 * torch.randn(param.shape, generator=generator))
            elif leaf in ("b", "bias", "b_U") and param.ndim == 1:
                param.copy_(0.1 * torch.randn(param.shape, generator=generator))


def randomised(lens, seed: int = 0):
    """`lens` with every parameter drawn from N(0, 0.1²), so it differs from the logit
    lens at every layer; returned for chaining."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in lens.parameters():
            param.copy_(0.1 * torch.randn(param.shape, generator=generator))
    return lens


NO_HOOKED_TRANSFORMER = (
    "needs HookedTransformer, which TransformerLens 4.0 removed (this venv has "
    "transformer-lens {version}); the TransformerBridge cases run here"
)


def skip_without_hooked_transformer() -> None:
    """Skip the calling test where the installed TransformerLens (4.x) has no
    HookedTransformer; everything else of the test file still runs."""
    from importlib.metadata import version

    from hooklens.models import has_hooked_transformer

    if not has_hooked_transformer():
        pytest.skip(NO_HOOKED_TRANSFORMER.format(version=version("transformer-lens")))


def make_hooked(
    normalization: str = "RMS", processing: bool = False, seed: int = 0, **overrides
) -> torch.nn.Module:
    """A 3-layer HookedTransformer; `processing` applies TransformerLens's defaults."""
    skip_without_hooked_transformer()
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    torch.manual_seed(seed)
    settings = dict(
        n_layers=N_LAYERS,
        d_model=D_MODEL,
        d_head=8,
        n_heads=4,
        d_mlp=64,
        d_vocab=VOCAB,
        n_ctx=32,
        act_fn="gelu",
        normalization_type=normalization,
        positional_embedding_type="rotary" if normalization == "RMS" else "standard",
        model_name=f"tiny-{normalization.lower()}",
        seed=seed,
    )
    settings.update(overrides)
    model = HookedTransformer(HookedTransformerConfig(**settings))
    _randomise_norms_and_biases(model, seed)
    if processing:
        model.process_weights_()
    return model.eval()


@pytest.fixture(scope="session")
def word_tokenizer(tmp_path_factory):
    """A word-level tokenizer of `VOCAB` words, saved and reloaded like a hub one."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    vocab = {f"w{i}": i for i in range(VOCAB)}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="w0"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, unk_token="w0", eos_token="w1", bos_token="w2", pad_token="w3"
    )
    folder = tmp_path_factory.mktemp("tokenizer")
    tokenizer.save_pretrained(folder)
    return AutoTokenizer.from_pretrained(folder)


def _tiny_hf(architecture: str, seed: int = 0, n_layers: int = N_LAYERS) -> torch.nn.Module:
    from transformers import (
        Gemma2Config,
        Gemma2ForCausalLM,
        GPT2Config,
        GPT2LMHeadModel,
        LlamaConfig,
        LlamaForCausalLM,
    )

    torch.manual_seed(seed)
    if architecture == "llama":
        config = LlamaConfig(
            vocab_size=VOCAB,
            hidden_size=D_MODEL,
            intermediate_size=64,
            num_hidden_layers=n_layers,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=64,
            tie_word_embeddings=False,
        )
        model = LlamaForCausalLM(config)
    elif architecture == "gpt2":
        config = GPT2Config(vocab_size=VOCAB, n_embd=D_MODEL, n_layer=n_layers, n_head=4)
        model = GPT2LMHeadModel(config)
    elif architecture == "gemma2":  # RMSNorm with (1 + w) gains and a logit softcap
        config = Gemma2Config(
            vocab_size=VOCAB,
            hidden_size=D_MODEL,
            intermediate_size=64,
            num_hidden_layers=n_layers,
            num_attention_heads=4,
            num_key_value_heads=2,
            head_dim=8,
            max_position_embeddings=64,
            final_logit_softcapping=3.0,
        )
        model = Gemma2ForCausalLM(config)
    else:
        raise ValueError(architecture)
    _randomise_norms_and_biases(model, seed)
    if architecture == "gemma2":  # (1 + w) gains: keep them near one, not two
        with torch.no_grad():
            for name, param in model.named_parameters():
                if "norm" in name:
                    param.sub_(1.0)
    return model.eval()


def make_bridge(
    tokenizer,
    architecture: str = "llama",
    processing: bool = False,
    seed: int = 0,
    n_layers: int = N_LAYERS,
):
    """A TransformerBridge around a tiny random HF model (raw, or compatibility mode)."""
    from transformer_lens.model_bridge import TransformerBridge

    hf_model = _tiny_hf(architecture, seed, n_layers)
    bridge = TransformerBridge.boot_transformers(
        f"tiny-{architecture}", hf_model=copy.deepcopy(hf_model), tokenizer=tokenizer, device="cpu"
    )
    if processing:
        bridge.enable_compatibility_mode(disable_warnings=True)
    return bridge


MODEL_KINDS = [
    "hooked-rms",
    "hooked-rms-processed",
    "hooked-ln",
    "hooked-ln-processed",
    "hooked-softcap",
    "bridge-llama",
    "bridge-llama-compat",
    "bridge-gpt2",
    "bridge-gpt2-compat",
    "bridge-gemma2",
]


def build_model(kind: str, tokenizer):
    if kind.startswith("hooked"):
        processing = kind.endswith("processed")
        if kind == "hooked-softcap":
            return make_hooked("RMS", output_logits_soft_cap=2.0)
        return make_hooked("LN" if "-ln" in kind else "RMS", processing=processing)
    architecture = kind.split("-")[1]
    return make_bridge(tokenizer, architecture, processing=kind.endswith("compat"))


class _ModelZoo(dict):
    """Tiny models by kind, each built on first use (a HookedTransformer kind skips the
    test that asks for it on TransformerLens 4.x)."""

    def __init__(self, tokenizer):
        super().__init__()
        self.tokenizer = tokenizer

    def __missing__(self, kind: str) -> torch.nn.Module:
        if kind not in MODEL_KINDS:
            raise KeyError(kind)
        self[kind] = build_model(kind, self.tokenizer)
        return self[kind]


def flip_in_zip_member(path, member_suffix: str, offset: int = 3, mask: int = 0x10) -> None:
    """XOR `mask` into byte `offset` of the data of the zip member (of a `torch.save`
    file) whose name ends with `member_suffix`: a tensor's bytes, or the pickle."""
    import zipfile

    with zipfile.ZipFile(path) as archive:
        info = next(i for i in archive.infolist() if i.filename.endswith(member_suffix))
    data = bytearray(Path(path).read_bytes())
    header = info.header_offset  # local header: 30 bytes, then the name and extra field
    name_length = int.from_bytes(data[header + 26 : header + 28], "little")
    extra_length = int.from_bytes(data[header + 28 : header + 30], "little")
    data[header + 30 + name_length + extra_length + offset] ^= mask
    Path(path).write_bytes(bytes(data))


@pytest.fixture
def tiny_models(monkeypatch, word_tokenizer) -> list[str]:
    """`hooklens.models.load` builds a tiny random bridge (what the CLI loads in tests);
    returns the names it was asked for."""
    from hooklens import models

    loaded: list[str] = []

    def load(name, **_):
        loaded.append(name)
        return make_bridge(word_tokenizer)

    monkeypatch.setattr(models, "load", load)
    return loaded


@pytest.fixture(scope="session")
def model_zoo(word_tokenizer):
    """Every tiny model kind, built once per session; tests must not modify them."""
    return _ModelZoo(word_tokenizer)


@pytest.fixture(params=MODEL_KINDS)
def any_model(request, model_zoo):
    return model_zoo[request.param]


@pytest.fixture(scope="session")
def hooked(model_zoo):
    return model_zoo["hooked-rms-processed"]


@pytest.fixture
def tokens():
    return torch.randint(4, VOCAB, (2, 7), generator=torch.Generator().manual_seed(1))
